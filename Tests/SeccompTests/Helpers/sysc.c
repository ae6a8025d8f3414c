/*
 * sysc: make one raw system call and print what the kernel said.
 *
 *   sysc [--x32|--int80] NR [ARG...]
 *
 * NR and ARGs are numbers in any C base (0x.., 0..). --x32 sets the x32
 * bit (0x40000000) in the number; --int80 enters the kernel through the
 * i386 gate (`int $0x80`, up to five arguments). Prints "ret N" or
 * "errno N" and exits 0; a seccomp kill shows as death by signal.
 * Static, so it runs in an empty root.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/syscall.h>

static long int80(long nr, long a[6]) {
    long ret;
    __asm__ volatile("int $0x80"
                     : "=a"(ret)
                     : "a"(nr), "b"(a[0]), "c"(a[1]), "d"(a[2]), "S"(a[3]), "D"(a[4])
                     : "memory");
    return ret;
}

int main(int argc, char **argv) {
    int mode = 0, i = 1;
    if (i < argc && strcmp(argv[i], "--x32") == 0) { mode = 1; i++; }
    else if (i < argc && strcmp(argv[i], "--int80") == 0) { mode = 2; i++; }
    if (i >= argc) {
        fprintf(stderr, "usage: sysc [--x32|--int80] NR [ARG...]\n");
        return 2;
    }
    long nr = (long)strtoull(argv[i++], NULL, 0);
    long a[6] = {0};
    for (int k = 0; k < 6 && i < argc; k++, i++) a[k] = (long)strtoull(argv[i], NULL, 0);
    long r;
    if (mode == 2) {
        r = int80(nr, a);
        if (r < 0 && r > -4096) { printf("errno %ld\n", -r); return 0; }
        printf("ret %ld\n", r);
        return 0;
    }
    if (mode == 1) nr |= 0x40000000L;
    errno = 0;
    r = syscall(nr, a[0], a[1], a[2], a[3], a[4], a[5]);
    if (r == -1 && errno != 0) printf("errno %d\n", errno);
    else printf("ret %ld\n", r);
    return 0;
}
