/*
 * denyloop: make one raw system call over and over, as a worker probing its
 * jail would, and report what the kernel answered.
 *
 *   denyloop [--threads T] NR N [ARG...]   T threads each call NR N times
 *   denyloop --fds                          list /proc/self/fd with targets
 *
 * Prints "errno E count C other O" (E: the errno of the first failure, C:
 * calls that failed with E, O: every other outcome) and
 * "ns p50 P p99 Q max M" over every call's latency. Static, so it runs in
 * an empty root.
 */
#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/syscall.h>

static long nr, n;
static long args[6];
static int first_errno;
static long same, other;
static long *lat;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

static long now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000L + t.tv_nsec;
}

static void *run(void *arg) {
    long *mine = arg;
    long s = 0, o = 0;
    int e0 = 0;
    for (long i = 0; i < n; i++) {
        long t0 = now_ns();
        long r = syscall(nr, args[0], args[1], args[2], args[3], args[4], args[5]);
        int e = errno;
        mine[i] = now_ns() - t0;
        if (r == -1 && (e0 == 0 || e == e0)) { e0 = e; s++; }
        else o++;
    }
    pthread_mutex_lock(&lock);
    if (first_errno == 0) first_errno = e0;
    if (e0 == first_errno) same += s; else other += s;
    other += o;
    pthread_mutex_unlock(&lock);
    return NULL;
}

static int cmp(const void *a, const void *b) {
    long x = *(const long *)a, y = *(const long *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
    if (argc == 2 && strcmp(argv[1], "--fds") == 0) {
        DIR *d = opendir("/proc/self/fd");
        if (!d) { perror("opendir /proc/self/fd"); return 1; }
        int self = dirfd(d);
        struct dirent *e;
        while ((e = readdir(d))) {
            if (e->d_name[0] == '.' || atoi(e->d_name) == self) continue;
            char path[64], target[256];
            snprintf(path, sizeof path, "/proc/self/fd/%s", e->d_name);
            ssize_t k = readlink(path, target, sizeof target - 1);
            target[k < 0 ? 0 : k] = 0;
            printf("fd %s %s\n", e->d_name, target);
        }
        return 0;
    }
    int i = 1, threads = 1;
    if (i + 1 < argc && strcmp(argv[i], "--threads") == 0) { threads = atoi(argv[i + 1]); i += 2; }
    if (i + 2 > argc || threads < 1 || threads > 64) {
        fprintf(stderr, "usage: denyloop [--threads T] NR N [ARG...] | --fds\n");
        return 2;
    }
    nr = strtol(argv[i++], NULL, 0);
    n = strtol(argv[i++], NULL, 0);
    for (int k = 0; k < 6 && i < argc; k++, i++) args[k] = (long)strtoull(argv[i], NULL, 0);
    lat = calloc((size_t)(n * threads), sizeof(long));
    pthread_t t[64];
    for (int k = 0; k < threads; k++) pthread_create(&t[k], NULL, run, lat + k * n);
    for (int k = 0; k < threads; k++) pthread_join(t[k], NULL);
    qsort(lat, (size_t)(n * threads), sizeof(long), cmp);
    long total = n * threads;
    printf("errno %d count %ld other %ld\n", first_errno, same, other);
    printf("ns p50 %ld p99 %ld max %ld\n", lat[total / 2], lat[total * 99 / 100], lat[total - 1]);
    return 0;
}
