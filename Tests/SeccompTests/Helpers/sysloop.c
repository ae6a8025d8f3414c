/*
 * sysloop: time a system call in a tight loop.
 *
 *   sysloop getpid|ioctl N
 *
 * getpid: raw syscall(SYS_getpid), a call whose verdict never depends on
 * its arguments (the kernel may cache it). ioctl: FIONREAD on a pipe, a
 * call the filter must inspect argument by argument. Prints the mean
 * nanoseconds per call.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>

int main(int argc, char **argv) {
    if (argc != 3) { fprintf(stderr, "usage: sysloop getpid|ioctl N\n"); return 2; }
    long n = atol(argv[2]);
    int fds[2];
    if (pipe(fds) < 0) { perror("pipe"); return 1; }
    int which = strcmp(argv[1], "ioctl") == 0;
    int avail = 0;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (long i = 0; i < n; i++) {
        if (which) syscall(SYS_ioctl, fds[0], FIONREAD, &avail);
        else syscall(SYS_getpid);
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double ns = (double)(t1.tv_sec - t0.tv_sec) * 1e9 + (double)(t1.tv_nsec - t0.tv_nsec);
    printf("%.2f\n", ns / (double)n);
    return 0;
}
