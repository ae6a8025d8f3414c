/*
 * Workloads for the cgroup tests, as a small static program so that it runs
 * the same on the host, in the qemu VM and inside a jail.
 *
 * Every mode first waits for one byte on stdin: the test places the process
 * in its cgroup, then lets it go, so no work happens outside the budget.
 *
 *   workload hog MIB        touch MIB MiB, 1 MiB at a time; prints "hog N" per 8 MiB
 *   workload forkbomb       fork until fork fails; prints "forked N errno E";
 *                           the children and the parent then sleep
 *   workload spin N         N processes spinning forever
 *   workload sleep          sleep forever
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

static void wait_go(void) {
    char c;
    while (read(0, &c, 1) < 0 && errno == EINTR) {}
}

static void say(const char *fmt, long a, long b) {
    char buf[128];
    int n = snprintf(buf, sizeof buf, fmt, a, b);
    if (n > 0) (void)!write(1, buf, (size_t)n);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: workload hog MIB | forkbomb | spin N | sleep\n");
        return 2;
    }
    wait_go();
    if (strcmp(argv[1], "hog") == 0 && argc > 2) {
        long mib = atol(argv[2]);
        for (long i = 1; i <= mib; i++) {
            char *p = mmap(NULL, 1 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            if (p == MAP_FAILED) { say("hog mmap failed at %ld errno %ld\n", i, errno); return 3; }
            for (long off = 0; off < (1 << 20); off += 4096) p[off] = (char)i;
            if (i % 8 == 0) say("hog %ld%.0ld\n", i, 0);
        }
        say("hog done %ld%.0ld\n", mib, 0);
        return 0;
    }
    if (strcmp(argv[1], "forkbomb") == 0) {
        long forked = 0;
        for (;;) {
            pid_t pid = fork();
            if (pid == 0) { for (;;) pause(); }
            if (pid < 0) {
                say("forked %ld errno %ld\n", forked, errno);
                for (;;) pause();
            }
            forked++;
        }
    }
    if (strcmp(argv[1], "spin") == 0 && argc > 2) {
        long n = atol(argv[2]);
        for (long i = 1; i < n; i++) {
            if (fork() == 0) break;
        }
        volatile unsigned long x = 0;
        for (;;) x++;
    }
    if (strcmp(argv[1], "sleep") == 0) {
        for (;;) pause();
    }
    fprintf(stderr, "workload: unknown mode %s\n", argv[1]);
    return 2;
}
