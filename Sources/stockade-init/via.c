/*
 * stockade-init via FD: the waiting program of a jail built ahead
 * (`stockade run --via`).
 *
 * The trampoline's worker execs this once the jail is built, already under
 * the jail's Landlock domain and seccomp filter (the launcher checked that
 * the filter allows every call made here and by the C library's start:
 * ViaJail.callsUnderAnEarlyFilter), so that the waiting jail holds no copy
 * of the daemon's memory and the caller does not wait for that copy to be
 * torn down at the command's execve.
 *
 * What it is given (see via_exec_waiter in spawn.c):
 *   argv[2]  FD, the socket to the daemon (not close-on-exec);
 *   fds 0-2  /dev/null; every other fd was close-on-exec;
 *   an empty environment; the worker's signal mask (nothing blocked).
 *
 * What it does: waits on FD for the one command message (the caller's
 * stdin, stdout and stderr as SCM_RIGHTS; the execve candidates, argv and
 * envp, stk_via_header), puts those fds on 0, 1 and 2, marks FD
 * close-on-exec (the daemon sees the command start as end of file there)
 * and execs the first candidate that exists. A failed step goes to the
 * daemon as one stk_error record on FD, as the trampoline sends it.
 */
#define _GNU_SOURCE /* dup3 */
#include "../CStockadeSpawn/via_message.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <sys/socket.h>
#include <unistd.h>

static int via_fd = -1;
static char message[STK_VIA_MAX_MESSAGE];
static char *strings[STK_VIA_MAX_STRINGS + 3];

/* One stk_error record to the daemon (one packet), then exit 127. */
__attribute__((noreturn)) static void fail(int step, int err, const char *detail) {
    struct stk_error e = stk_error_record(step, err, detail);
    send(via_fd, &e, sizeof e, MSG_NOSIGNAL);
    _exit(127);
}

int via_main(const char *fd_text) {
    /* FD: a decimal fd number above 2. */
    int fd = 0;
    for (const char *c = fd_text; *c; c++) {
        if (*c < '0' || *c > '9' || fd > 1000000) return 127;
        fd = fd * 10 + (*c - '0');
    }
    if (fd <= 2) return 127;
    via_fd = fd;

    struct stk_via_command command;
    int err = 0;
    const char *detail = NULL;
    int got = stk_via_receive(via_fd, message, sizeof message, strings, &command, &err, &detail);
    /* End of file: the daemon gave the jail up (it is being torn down). */
    if (got == 0) _exit(1);
    if (got < 0) fail(STK_STEP_VIA_WAIT, err, detail);

    /* The caller's fds on 0, 1, 2 (nothing else above 2 but FD). */
    err = stk_via_place_fds(command.fds, 3, &detail);
    if (err) fail(STK_STEP_FDS, err, detail);
    if (fcntl(via_fd, F_SETFD, FD_CLOEXEC) != 0) fail(STK_STEP_VIA_WAIT, errno, "mark the command socket close-on-exec");

    char *const *argv = &strings[command.n_paths + 1];
    char *const *envp = &strings[command.n_paths + 1 + command.argc + 1];
    const char *failed = NULL;
    err = stk_exec_first((const char *const *)strings, command.n_paths, argv, envp, &failed);
    fail(STK_STEP_EXEC, err, failed ? failed : argv[0] ? argv[0] : "(no program)");
}
