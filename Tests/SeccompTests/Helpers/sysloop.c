/*
 * sysloop: time a system call in a tight loop.
 *
 *   sysloop getpid|read|write|futex|ioctl N
 *
 * getpid: raw syscall(SYS_getpid), a call whose verdict never depends on
 * its arguments (the kernel may cache it). read: one byte from /dev/zero;
 * write: one byte to /dev/null; futex: FUTEX_WAKE on a private word nobody
 * waits on (returns 0 at once): the calls a worker makes most. ioctl:
 * FIONREAD on a pipe, a call the filter must inspect argument by argument.
 * The calls run in batches of 1000, each timed on the monotonic clock;
 * prints the mean nanoseconds per call of the fastest batch. On a shared
 * machine a batch that was preempted, or whose caches another process
 * emptied, is slower and never the fastest, so the result is the cost of
 * the call itself (a mean over all calls carried the machine's load in
 * it: its run-to-run spread was larger than a filter's cost).
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <linux/futex.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>

int main(int argc, char **argv) {
    static const char *names[] = {"getpid", "read", "write", "futex", "ioctl"};
    int which = -1;
    for (int i = 0; argc == 3 && i < 5; i++)
        if (strcmp(argv[1], names[i]) == 0) which = i;
    if (which < 0) { fprintf(stderr, "usage: sysloop getpid|read|write|futex|ioctl N\n"); return 2; }
    long n = atol(argv[2]);
    int fds[2];
    if (pipe(fds) < 0) { perror("pipe"); return 1; }
    int zero = open("/dev/zero", O_RDONLY | O_CLOEXEC);
    int null = open("/dev/null", O_WRONLY | O_CLOEXEC);
    if (zero < 0 || null < 0) { perror("open /dev/zero or /dev/null"); return 1; }
    int avail = 0, word = 0;
    char byte = 0;
    enum { BATCH = 1000 };
    double best = -1;
    for (long done = 0; done < n; done += BATCH) {
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        for (int i = 0; i < BATCH; i++) {
            switch (which) {
            case 0: syscall(SYS_getpid); break;
            case 1: syscall(SYS_read, zero, &byte, 1); break;
            case 2: syscall(SYS_write, null, &byte, 1); break;
            case 3: syscall(SYS_futex, &word, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0); break;
            default: syscall(SYS_ioctl, fds[0], FIONREAD, &avail); break;
            }
        }
        clock_gettime(CLOCK_MONOTONIC, &t1);
        double ns = ((double)(t1.tv_sec - t0.tv_sec) * 1e9 + (double)(t1.tv_nsec - t0.tv_nsec)) / BATCH;
        if (best < 0 || ns < best) best = ns;
    }
    printf("%.2f\n", best);
    return 0;
}
