/*
 * The command message of a jail built ahead (`stockade run --via`), read
 * the same way by the trampoline (spawn.c, via_receive) and by
 * stockade-init's waiting program (stockade-init/via.c). A private header:
 * Swift never sees it. The layout is stk_via_header's (stockade_spawn.h).
 */
#ifndef STOCKADE_VIA_MESSAGE_H
#define STOCKADE_VIA_MESSAGE_H

#include "include/stockade_spawn.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <sys/socket.h>
#include <unistd.h>

/*
 * Splits a received command message (the n bytes at msg) into strings:
 * the execve candidates, NULL, argv, NULL, envp, NULL (at most
 * STK_VIA_MAX_STRINGS + 3 slots). Every count and string is checked
 * against n; nothing is allocated. Returns NULL, or what is wrong with
 * the message. The trampoline and stockade-init's waiting program (a jail
 * built ahead) both read the message with it.
 */
static inline const char *stk_via_split(char *msg, size_t n, char **strings, uint32_t *n_paths, uint32_t *argc) {
    struct stk_via_header h;
    if (n < sizeof h) return "short command message";
    __builtin_memcpy(&h, msg, sizeof h);
    uint64_t total = (uint64_t)h.n_paths + h.argc + h.envc;
    if (h.magic != STK_VIA_MAGIC || h.n_paths == 0 || h.argc == 0 || total > STK_VIA_MAX_STRINGS)
        return "bad command header";
    size_t at = sizeof h;
    uint32_t k = 0;
    for (uint32_t i = 0; i < total; i++) {
        char *start = &msg[at];
        while (at < n && msg[at] != 0) at++;
        if (at >= n) return "unterminated string in the command";
        at++;
        strings[k++] = start;
        /* A NULL after the paths' and the argv's lists ends each of them. */
        if (i + 1 == h.n_paths || i + 1 == h.n_paths + h.argc) strings[k++] = NULL;
    }
    strings[k] = NULL;
    if (at != n) return "bytes after the command";
    *n_paths = h.n_paths;
    *argc = h.argc;
    return NULL;
}

/*
 * Execs the first of the n candidates that exists (ENOENT and ENOTDIR go
 * on to the next). Returns only on failure: the errno, with *failed the
 * candidate that failed otherwise (NULL when none existed).
 */
static inline int stk_exec_first(const char *const *paths, uint32_t n, char *const *argv, char *const *envp,
                                 const char **failed) {
    *failed = NULL;
    for (uint32_t i = 0; i < n; i++) {
        execve(paths[i], argv, envp);
        if (errno != ENOENT && errno != ENOTDIR) {
            *failed = paths[i];
            return errno;
        }
    }
    return ENOENT;
}

/*
 * The caller's three fds onto 0, 1 and 2: each moved to the lowest free
 * number >= park_min first (close-on-exec), so that no dup3 overwrites one
 * still to be placed; the copies on 0-2 stay open across execve. Returns
 * 0, or the errno with *detail saying which step failed.
 */
static inline int stk_via_place_fds(int fds[3], int park_min, const char **detail) {
    for (int i = 0; i < 3; i++) {
        int moved = fcntl(fds[i], F_DUPFD_CLOEXEC, park_min);
        if (moved < 0) {
            *detail = "move a caller's fd";
            return errno;
        }
        close(fds[i]);
        fds[i] = moved;
    }
    for (int i = 0; i < 3; i++) {
        if (dup3(fds[i], i, 0) != i) {
            *detail = "dup3 a caller's fd";
            return errno;
        }
        close(fds[i]);
    }
    return 0;
}

/* The record a failed step sends (the trampoline's fail, the waiting
 * program's): its step, errno and detail, cut to fit. */
static inline struct stk_error stk_error_record(int step, int err, const char *detail) {
    struct stk_error e;
    __builtin_memset(&e, 0, sizeof e);
    e.step = step;
    e.err = err;
    for (size_t i = 0; detail && detail[i] && i < sizeof e.detail - 1; i++) e.detail[i] = detail[i];
    return e;
}

/* The command a waiting jail received: the caller's stdin, stdout and
 * stderr (close-on-exec) and the counts of stk_via_split. */
struct stk_via_command {
    int fds[3];
    uint32_t n_paths;
    uint32_t argc;
};

/*
 * Waits on the socket fd for the one command message (into buf, cap
 * bytes; strings as stk_via_split). Returns 1 with *out filled, 0 at end
 * of file (the daemon gave the jail up), or -1 with *err and *detail
 * saying why (a received fd is closed then). Fds past the third are closed.
 */
static inline int stk_via_receive(int fd, char *buf, size_t cap, char **strings, struct stk_via_command *out,
                                  int *err, const char **detail) {
    struct iovec iov = {.iov_base = buf, .iov_len = cap};
    union {
        struct cmsghdr header;
        char bytes[CMSG_SPACE(3 * sizeof(int))];
    } control;
    __builtin_memset(&control, 0, sizeof control);
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.bytes,
                         .msg_controllen = sizeof control.bytes};
    ssize_t n;
    do n = recvmsg(fd, &msg, MSG_CMSG_CLOEXEC);
    while (n < 0 && errno == EINTR);
    if (n == 0) return 0;
    *err = errno;
    *detail = "recvmsg";
    if (n < 0) return -1;
    int n_fds = 0;
    out->fds[0] = out->fds[1] = out->fds[2] = -1;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c != NULL; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
        size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t i = 0; i < count; i++) {
            int received;
            __builtin_memcpy(&received, CMSG_DATA(c) + i * sizeof(int), sizeof received);
            if (n_fds < 3) out->fds[n_fds] = received;
            else close(received);
            n_fds++;
        }
    }
    *err = EPROTO;
    if (msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) {
        *err = EMSGSIZE;
        *detail = "command message truncated";
    } else if (n_fds != 3) {
        *detail = "expected stdin, stdout and stderr";
    } else {
        *detail = stk_via_split(buf, (size_t)n, strings, &out->n_paths, &out->argc);
        if (*detail == NULL) return 1;
    }
    for (int i = 0; i < 3; i++)
        if (out->fds[i] >= 0) close(out->fds[i]);
    return -1;
}

#endif
