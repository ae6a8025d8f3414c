/*
 * stockade-init: PID 1 of every jail (in its pid namespace, or outside one
 * the root of the jail's Landlock domain, see confine_reaper in spawn.c).
 *
 * The trampoline execs this program (from an fd the launcher opened before
 * the jail's root was switched) after it has cloned the worker, so that PID
 * 1 holds nothing of the launcher: not its memory (keys, tokens), not its
 * argv or environment. It is static, so it runs in any jail root, even one
 * without a C library.
 *
 * `stockade-init via FD` is another program: see via.c.
 *
 * What it is given (see exec_init in spawn.c):
 *   argv[1]  the worker's pid (in the jail's pid namespace);
 *   fd 3     the status pipe: the worker's raw wait status goes here;
 *   fd 4     the go pipe: one byte releases the worker, written only once
 *            this process is non-dumpable;
 *   every signal blocked (inherited across execve).
 *
 * What it does: forwards every signal it receives to the worker, reaps
 * orphans (a pid namespace's init inherits them), and exits with the
 * worker's status once the worker is gone. Its exit tears down the pid
 * namespace: the kernel kills everything left in it.
 */
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

int via_main(const char *fd_text);

int main(int argc, char **argv) {
    /* `stockade-init via FD`: not PID 1 but the waiting program of a jail
     * built ahead (via.c); it holds nothing a process of the jail could
     * want, and the command it execs is the jail's own. */
    if (argc == 3 && argv[1][0] == 'v' && argv[1][1] == 'i' && argv[1][2] == 'a' && argv[1][3] == 0)
        return via_main(argv[2]);
    /* First: execve made this process dumpable again, and it runs with the
     * worker's uid. Non-dumpable, the worker cannot ptrace it, open
     * /proc/1/mem or /proc/1/exe, or read its environment. The worker runs
     * nothing of its own before the go byte below. */
    if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0) return 127;
    /* argv[2] "domain": outside a pid namespace, PID 1 is the root of a
     * Landlock domain that scopes signals; kill(-1) reaches the jail only. */
    if (argc != 2 && !(argc == 3 && argv[2][0] == 'd')) return 127;
    int domain = argc == 3;
    pid_t worker = 0;
    for (const char *c = argv[1]; *c; c++) {
        if (*c < '0' || *c > '9' || worker > 100000000) return 127;
        worker = worker * 10 + (*c - '0');
    }
    if (worker <= 1) return 127;

    /* Every signal stays blocked and is taken with sigwaitinfo, so none is
     * lost and none runs a handler. */
    sigset_t all;
    sigfillset(&all);
    sigprocmask(SIG_SETMASK, &all, NULL);

    /* Release the worker. */
    char go = 1;
    ssize_t n;
    do n = write(4, &go, 1);
    while (n < 0 && errno == EINTR);
    close(4);
    if (n != 1) return 127;

    for (;;) {
        siginfo_t info;
        int sig = sigwaitinfo(&all, &info);
        if (sig < 0) continue;
        if (sig == 64 /* STK_SIG_KILL_JAIL */ && domain) {
            /* The launcher died or ends the jail: every process of it. */
            kill(-1, SIGKILL);
            int32_t raw = SIGKILL; /* the wait status of a process killed by SIGKILL */
            do n = write(3, &raw, sizeof raw);
            while (n < 0 && errno == EINTR);
            _exit(128 + SIGKILL);
        }
        if (sig != SIGCHLD) {
            /* Forward what a supervisor sends: terminate, interrupt, hang up, ...
             * A key typed into the jail's terminal (SI_KERNEL) already reached
             * the worker, which shares PID 1's foreground process group. */
            if (info.si_code != SI_KERNEL) kill(worker, sig);
            continue;
        }
        for (;;) {
            int status = 0;
            pid_t r = waitpid(-1, &status, WNOHANG);
            if (r <= 0) break;
            if (r != worker) continue; /* an orphan: reaped, nothing more */
            int32_t raw = status;
            /* What the worker left behind (a setsid'd daemon) ends with it. */
            if (domain) kill(-1, SIGKILL);
            do n = write(3, &raw, sizeof raw);
            while (n < 0 && errno == EINTR);
            if (WIFEXITED(status)) _exit(WEXITSTATUS(status));
            _exit(128 + WTERMSIG(status));
        }
    }
}
