/*
 * sysbatch: many system calls under one filter, none of them carried out.
 *
 *   sysbatch FILTER_FILE CALLS_FILE
 *
 * CALLS holds one call a line: "NR A0 A1 A2 A3 A4 A5" (numbers in any base
 * strtoull reads). The filter must answer every call with an errno: the
 * test rewrites each return of the program under test into a distinct
 * errno (allow, kill and trap included), so the kernel's verdict is read
 * back without the call running and without the process dying.
 *
 * A second thread loads the filter (no_new_privs, then seccomp() without
 * TSYNC: only that thread is filtered) and makes the calls; the main
 * thread, unfiltered, waits for it and prints one line per call, in
 * order: "e ERRNO", or "r VALUE" if a call returned (the filter let it
 * run). The filtered thread cannot exit (exit is answered with an errno
 * too); it spins until exit_group from the main thread ends the process.
 * Exits 125 with a message when a step fails.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>

struct call { long nr; unsigned long a[6]; long ret; int err; };

static struct call *calls;
static size_t ncalls;
static struct sock_fprog fprog;
static atomic_int state;  /* 0 running, 1 done, 2 the filter failed to load */
static char failure[256];

static void *filtered(void *unused) {
    (void)unused;
    /* Both steps affect this thread only. */
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 ||
        syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &fprog) < 0) {
        snprintf(failure, sizeof failure, "no_new_privs or seccomp: %s", strerror(errno));
        atomic_store(&state, 2);
        return NULL;
    }
    for (size_t i = 0; i < ncalls; i++) {
        struct call *c = &calls[i];
        errno = 0;
        c->ret = syscall(c->nr, c->a[0], c->a[1], c->a[2], c->a[3], c->a[4], c->a[5]);
        c->err = errno;
    }
    atomic_store(&state, 1);
    /* No system call from here on: each would be answered with an errno. */
    for (;;) { }
}

int main(int argc, char **argv) {
    if (argc != 3) { fprintf(stderr, "usage: sysbatch FILTER_FILE CALLS_FILE\n"); return 2; }
    FILE *in = fopen(argv[2], "r");
    if (!in) { fprintf(stderr, "sysbatch: %s: %s\n", argv[2], strerror(errno)); return 125; }
    int fd = open(argv[1], O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0 || st.st_size <= 0 || st.st_size % 8 != 0 || st.st_size > 4096 * 8) {
        fprintf(stderr, "sysbatch: %s: not a BPF program\n", argv[1]);
        return 125;
    }
    struct sock_filter *prog = malloc(st.st_size);
    if (!prog || read(fd, prog, st.st_size) != st.st_size) { fprintf(stderr, "sysbatch: read filter\n"); return 125; }
    close(fd);
    fprog.len = (unsigned short)(st.st_size / 8);
    fprog.filter = prog;

    size_t cap = 1024;
    calls = malloc(cap * sizeof *calls);
    char line[512];
    while (calls && fgets(line, sizeof line, in)) {
        if (ncalls == cap) calls = realloc(calls, (cap *= 2) * sizeof *calls);
        if (!calls) break;
        struct call *c = &calls[ncalls];
        char *p = line, *end;
        c->nr = (long)strtoull(p, &end, 0);
        if (end == p) continue;  /* a blank line */
        for (int k = 0; k < 6; k++) { p = end; c->a[k] = strtoull(p, &end, 0); }
        ncalls++;
    }
    fclose(in);
    if (!calls) { fprintf(stderr, "sysbatch: out of memory\n"); return 125; }

    pthread_t t;
    if (pthread_create(&t, NULL, filtered, NULL) != 0) { fprintf(stderr, "sysbatch: pthread_create\n"); return 125; }
    while (atomic_load(&state) == 0) sched_yield();
    if (atomic_load(&state) == 2) { fprintf(stderr, "sysbatch: %s\n", failure); _exit(125); }
    for (size_t i = 0; i < ncalls; i++) {
        if (calls[i].ret == -1) printf("e %d\n", calls[i].err);
        else printf("r %ld\n", calls[i].ret);
    }
    fflush(stdout);
    _exit(0);  /* exit_group: ends the spinning thread too */
}
