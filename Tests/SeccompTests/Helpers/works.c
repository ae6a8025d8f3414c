/*
 * works: the ordinary things a worker does, each checked: threads, fork
 * and wait, exec, mmap, pipes, epoll, signals, a unix socketpair and a
 * loopback-free inet socket. Prints one line per check and exits 0 only
 * when all passed.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>

static int failures;
#define CHECK(name, cond) do { int ok_ = (cond); printf("%s %s\n", ok_ ? "ok" : "FAIL", name); \
    if (!ok_) { failures++; printf("  errno %d (%s)\n", errno, strerror(errno)); } } while (0)

static void *thread_main(void *arg) { *(int *)arg = 42; return NULL; }
static volatile sig_atomic_t got;
static void on_usr1(int s) { (void)s; got = 1; }

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "--exit7") == 0) return 7;
    int v = 0;
    pthread_t t;
    CHECK("thread", pthread_create(&t, NULL, thread_main, &v) == 0 && pthread_join(t, NULL) == 0 && v == 42);
    pid_t p = fork();
    if (p == 0) _exit(3);
    int st = 0;
    CHECK("fork", p > 0 && waitpid(p, &st, 0) == p && WIFEXITED(st) && WEXITSTATUS(st) == 3);
    p = fork();
    if (p == 0) { execl("/proc/self/exe", argv[0], "--exit7", (char *)NULL); _exit(99); }
    CHECK("exec", p > 0 && waitpid(p, &st, 0) == p && WIFEXITED(st) && WEXITSTATUS(st) == 7);
    void *m = mmap(NULL, 1 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK("mmap", m != MAP_FAILED && (memset(m, 1, 1 << 20), munmap(m, 1 << 20) == 0));
    int fds[2];
    char c = 0;
    CHECK("pipe", pipe(fds) == 0 && write(fds[1], "x", 1) == 1 && read(fds[0], &c, 1) == 1 && c == 'x');
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = { .events = EPOLLIN, .data.fd = fds[0] }, out;
    CHECK("epoll", ep >= 0 && epoll_ctl(ep, EPOLL_CTL_ADD, fds[0], &ev) == 0 && write(fds[1], "y", 1) == 1
          && epoll_wait(ep, &out, 1, 1000) == 1);
    /* The launcher may hand down a blocked mask; unblock the one we test. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGUSR1);
    sigprocmask(SIG_UNBLOCK, &set, NULL);
    signal(SIGUSR1, on_usr1);
    CHECK("signal", kill(getpid(), SIGUSR1) == 0 && got == 1);
    int sp[2];
    CHECK("socketpair", socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp) == 0);
    int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    CHECK("socket", s >= 0);
    return failures ? 1 : 0;
}
