/*
 * Raw-syscall shims for the Swift side. Swift cannot call variadic C
 * functions (syscall, fcntl), and some of these calls have no glibc wrapper
 * on Debian 12 (pidfd_send_signal, bpf, landlock); their numbers come from
 * <sys/syscall.h>, so the Swift side holds no per-architecture table.
 * Each shim is one system call; errors come back as -1 with errno set,
 * except where the comment says -errno.
 */
#include "stockade_spawn.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <unistd.h>
#include <linux/landlock.h>
#include <linux/openat2.h>
#include <linux/seccomp.h>

#ifndef SYS_openat2
#define SYS_openat2 437
#endif
#ifndef RENAME_EXCHANGE
#define RENAME_EXCHANGE (1 << 1)
#endif

#ifndef SYS_pidfd_send_signal
#define SYS_pidfd_send_signal 424
#endif
#ifndef SYS_landlock_create_ruleset
#define SYS_landlock_create_ruleset 444
#endif
#ifndef P_PIDFD
#define P_PIDFD 3
#endif

int stk_pidfd_send_signal(int pidfd, int sig) {
    return (int)syscall(SYS_pidfd_send_signal, pidfd, sig, NULL, 0);
}

/* A pidfd for `pid` (close-on-exec by the kernel's default), or -1. */
int stk_pidfd_open(int pid) {
    return (int)syscall(434 /* SYS_pidfd_open */, pid, 0);
}

int stk_memfd_create(const char *name, unsigned int flags) {
    return (int)syscall(SYS_memfd_create, name, flags);
}

int stk_fcntl_int(int fd, int cmd, int arg) { return fcntl(fd, cmd, arg); }

/* accept4 with SOCK_CLOEXEC: the connection is close-on-exec from the
 * start, so no jail another thread clones meanwhile inherits it. */
int stk_accept_cloexec(int fd) { return accept4(fd, NULL, NULL, SOCK_CLOEXEC); }

/* 1 on the process's main thread (its thread id is the process id). */
int stk_on_main_thread(void) { return syscall(SYS_gettid) == getpid(); }

/* ioctl with a pointer (or a small integer passed as one); the terminal
 * requests of PseudoTerminal use it. */
int stk_ioctl_ptr(int fd, unsigned long request, void *arg) { return ioctl(fd, request, arg); }

long stk_bpf(int cmd, void *attr, unsigned int size) { return syscall(SYS_bpf, cmd, attr, size); }

int stk_statfs_type(const char *path, long *type) {
    struct statfs st;
    if (statfs(path, &st) < 0) return -1;
    *type = (long)st.f_type;
    return 0;
}

/* fstatfs(fd): the same for an open fd (a directory the launcher resolved once). */
int stk_fstatfs_type(int fd, long *type) {
    struct statfs st;
    if (fstatfs(fd, &st) < 0) return -1;
    *type = (long)st.f_type;
    return 0;
}

long stk_getxattr_size(const char *path, const char *name) { return (long)getxattr(path, name, NULL, 0); }

int stk_wait_pidfd(int pidfd, int *status, int options) {
    siginfo_t info = {0};
    /* waitid fills siginfo; convert it back to the classic status word so
     * that callers can use WIFEXITED/WTERMSIG-style decoding. */
    if (syscall(SYS_waitid, P_PIDFD, pidfd, &info, options | WEXITED, NULL) < 0)
        return -errno;
    if (info.si_pid == 0) /* WNOHANG and still running */
        return -EAGAIN;
    switch (info.si_code) {
    case CLD_EXITED: *status = (info.si_status & 0xff) << 8; break;
    case CLD_KILLED: *status = info.si_status & 0x7f; break;
    case CLD_DUMPED: *status = (info.si_status & 0x7f) | 0x80; break;
    default: *status = 0; break;
    }
    return 0;
}

/* The calling thread's session keyring serial, without creating one:
 * keyctl(KEYCTL_GET_KEYRING_ID = 0, KEY_SPEC_SESSION_KEYRING = -3, create 0). */
long stk_session_keyring(void) { return syscall(SYS_keyctl, 0, -3, 0); }

/* Opens the follower of pty leader `leader`: TIOCSPTLCK(0) unlocks it, then
 * TIOCGPTPEER opens it with `flags` without a path lookup. Two ioctls. */
int stk_pty_follower(int leader, int flags) {
    int unlock = 0;
    if (ioctl(leader, TIOCSPTLCK, &unlock) != 0)
        return -1;
    return ioctl(leader, TIOCGPTPEER, flags);
}

int stk_landlock_abi(void) {
    long v = syscall(SYS_landlock_create_ruleset, NULL, 0, LANDLOCK_CREATE_RULESET_VERSION);
    return v < 0 ? -errno : (int)v;
}

int stk_pipe2_cloexec(int fds[2]) { return pipe2(fds, O_CLOEXEC); }

/*
 * Signal forwarding for a launcher that waits on one jail. The handler
 * passes each signal on to the jail's PID 1 (which passes it to the worker)
 * through the jail's pidfd: pidfd_send_signal is async-signal-safe, and a
 * pidfd never reaches a recycled pid. No thread is started for it.
 */
static volatile sig_atomic_t forward_pidfd = -1;

static void forward_signal(int sig) {
    int saved = errno;
    int fd = forward_pidfd;
    if (fd >= 0) syscall(SYS_pidfd_send_signal, fd, sig, NULL, 0);
    errno = saved;
}

int stk_forward_signals(int pidfd, const int *signals, int count) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = forward_signal;
    sa.sa_flags = SA_RESTART;
    sigfillset(&sa.sa_mask); /* one forwarded signal at a time */
    forward_pidfd = pidfd;
    sigset_t set;
    sigemptyset(&set);
    for (int i = 0; i < count; i++) {
        if (sigaction(signals[i], &sa, NULL) < 0) return -1;
        sigaddset(&set, signals[i]);
    }
    /* A launcher may inherit these blocked (some supervisors spawn with a
     * full mask); blocked, they would never reach the handler. */
    return pthread_sigmask(SIG_UNBLOCK, &set, NULL) == 0 ? 0 : -1;
}

void stk_stop_forwarding(void) {
    /* The pidfd is about to be closed: later signals go nowhere rather than
     * to whatever descriptor takes its number. The handlers stay (ignoring
     * the signal now), so a late SIGTERM cannot kill stockade half-way
     * through its report. */
    forward_pidfd = -1;
}

int stk_openat2(int dirfd, const char *path, int flags, unsigned long long resolve) {
    struct open_how how;
    memset(&how, 0, sizeof how);
    how.flags = (uint64_t)(flags | O_CLOEXEC);
    how.resolve = resolve;
    return (int)syscall(SYS_openat2, dirfd, path, &how, sizeof how);
}

int stk_rename_exchange(const char *a, const char *b) {
    return (int)syscall(SYS_renameat2, AT_FDCWD, a, AT_FDCWD, b, RENAME_EXCHANGE);
}

/*
 * Keeps `fds` open in a forked process until the process behind `pidfd`
 * has exited, then exits. An OCI container outlives `stockade-runtime
 * create`, and its host id range must stay held (an flock on each lock
 * file) for exactly as long: this holder inherits the locks. It is no part
 * of the container (not in its namespaces or cgroup) and holds nothing
 * else: every other fd, stdio included, is closed at once. After fork in a
 * multithreaded parent it only makes system calls. Returns the holder's
 * pid, or -errno.
 */
int stk_hold_until_exit(int pidfd, const int *fds, int n) {
    pid_t pid = fork();
    if (pid < 0) return -errno;
    if (pid > 0) return pid;
    for (int fd = 0; fd < 1024; fd++) {
        int keep = fd == pidfd;
        for (int i = 0; i < n && !keep; i++) keep = fds[i] == fd;
        if (!keep) close(fd);
    }
    /* Signals the shim sends its process group are no concern of the holder. */
    sigset_t all;
    sigfillset(&all);
    sigprocmask(SIG_SETMASK, &all, NULL);
    for (;;) {
        struct pollfd p = {.fd = pidfd, .events = POLLIN};
        int r = poll(&p, 1, -1);
        if (r > 0 || (r < 0 && errno != EINTR)) _exit(0);
    }
}

/*
 * A detached copy of the mount tree at the O_PATH fd `fd` (open_tree with
 * OPEN_TREE_CLONE, recursive), made nosuid and nodev while detached. An OCI
 * container's rootfs is cloned so by the launcher, which may search the
 * directories above it (containerd's state is root-only); the jail's child
 * then attaches the copy in its own mount namespace with move_mount.
 * Returns the tree's fd (close-on-exec) or -errno.
 */
int stk_clone_tree(int fd) {
    return stk_clone_bind(fd, 0, 0);
}

/*
 * A devpts instance of its own for an OCI container's terminal, made by the
 * launcher before the container exists: the pty the launcher opens in it is
 * the container's /dev/pts/N once the child moves this mount there.
 * Returns the detached mount's fd (close-on-exec) or -errno.
 */
int stk_devpts_instance(void) {
    /* fsopen(2): a filesystem context for a new devpts superblock. */
    int fs = (int)syscall(430 /* fsopen */, "devpts", 1 /* FSOPEN_CLOEXEC */);
    if (fs < 0) return -errno;
    /* The options of every jail's own devpts (build_dev); then create it. */
    if (syscall(431 /* fsconfig */, fs, 1 /* FSCONFIG_SET_STRING */, "ptmxmode", "0666", 0) < 0 ||
        syscall(431, fs, 1, "mode", "0620", 0) < 0 ||
        syscall(431, fs, 6 /* FSCONFIG_CMD_CREATE */, NULL, NULL, 0) < 0) {
        int e = errno;
        close(fs);
        return -e;
    }
    /* fsmount(2): the superblock as a detached mount, nosuid and noexec. */
    int mnt = (int)syscall(432 /* fsmount */, fs, 1 /* FSMOUNT_CLOEXEC */, 0x2 /* MOUNT_ATTR_NOSUID */ | 0x8 /* MOUNT_ATTR_NOEXEC */);
    int e = errno;
    close(fs);
    return mnt < 0 ? -e : mnt;
}

/* ---- Seccomp user notification ---- */

int stk_seccomp_action_available(uint32_t action) {
    return (int)syscall(SYS_seccomp, SECCOMP_GET_ACTION_AVAIL, 0, &action);
}

/* The kernel insists on a zeroed buffer (the struct may grow). */
int stk_notify_recv(int listener, struct stk_notification *out) {
    struct seccomp_notif n;
    _Static_assert(sizeof n == sizeof *out, "struct stk_notification mirrors struct seccomp_notif");
    memset(&n, 0, sizeof n);
    if (ioctl(listener, SECCOMP_IOCTL_NOTIF_RECV, &n) < 0) return -1;
    out->id = n.id;
    out->pid = n.pid;
    out->flags = n.flags;
    out->nr = n.data.nr;
    out->arch = n.data.arch;
    out->ip = n.data.instruction_pointer;
    for (int i = 0; i < 6; i++) out->args[i] = n.data.args[i];
    return 0;
}

int stk_notify_send(int listener, uint64_t id, int64_t val, int32_t error, uint32_t flags) {
    struct seccomp_notif_resp r;
    memset(&r, 0, sizeof r);
    r.id = id;
    r.val = val;
    r.error = error;
    r.flags = flags;
    return ioctl(listener, SECCOMP_IOCTL_NOTIF_SEND, &r);
}

int stk_notify_id_valid(int listener, uint64_t id) {
    return ioctl(listener, SECCOMP_IOCTL_NOTIF_ID_VALID, &id);
}

int stk_recv_listener(int sock, int *fd, int32_t *pid) {
    char byte = 0;
    struct iovec iov = {.iov_base = &byte, .iov_len = 1};
    /* Room for one fd and one struct ucred. */
    union {
        struct cmsghdr header;
        char bytes[CMSG_SPACE(sizeof(int)) + CMSG_SPACE(sizeof(struct ucred))];
    } control;
    memset(&control, 0, sizeof control);
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.bytes,
                         .msg_controllen = sizeof control.bytes};
    ssize_t n;
    do n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
    while (n < 0 && errno == EINTR);
    if (n < 0) return -1;
    int got_fd = -1, extra = 0;
    int32_t got_pid = -1;
    /* Collect every fd that arrived, so that none leaks whatever was sent. */
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level != SOL_SOCKET) continue;
        if (c->cmsg_type == SCM_RIGHTS) {
            size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
            for (size_t i = 0; i < count; i++) {
                int f;
                memcpy(&f, CMSG_DATA(c) + i * sizeof(int), sizeof f);
                if (got_fd < 0) got_fd = f;
                else { close(f); extra = 1; }
            }
        } else if (c->cmsg_type == SCM_CREDENTIALS && c->cmsg_len >= CMSG_LEN(sizeof(struct ucred))) {
            struct ucred cred;
            memcpy(&cred, CMSG_DATA(c), sizeof cred);
            got_pid = cred.pid;
        }
    }
    if (n == 0 && got_fd < 0) return 0;
    if (n != 1 || got_fd < 0 || extra || (msg.msg_flags & MSG_CTRUNC)) {
        if (got_fd >= 0) close(got_fd);
        errno = EPROTO;
        return -1;
    }
    *fd = got_fd;
    *pid = got_pid;
    return 1;
}

/* The raw system call: one thread joins the namespace behind `fd` (net, ipc
 * and uts are per thread; the launcher's spawner thread enters a pod's
 * namespaces around one clone3). */
int stk_setns(int fd, int nstype) {
    return (int)syscall(SYS_setns, fd, nstype);
}

/*
 * Like stk_clone_tree (which is this with neither flag), with a bind's own
 * flags: the launcher copies a source whose directories the jail's ids may
 * not search (a pod's files that containerd keeps below its root-only state
 * directory); the child only attaches the copy. Flags are set while the
 * copy is detached and owned by the launcher's user namespace, so the jail
 * cannot clear them.
 */
int stk_clone_bind(int fd, int readonly, int noexec) {
    int tree = (int)syscall(428 /* open_tree */, fd, "", 1 /* OPEN_TREE_CLONE */ | O_CLOEXEC | 0x1000 /* AT_EMPTY_PATH */ |
                                                          0x8000 /* AT_RECURSIVE */);
    if (tree < 0) return -errno;
    struct {
        uint64_t attr_set, attr_clr, propagation, userns_fd;
    } attr = {0x2 /* MOUNT_ATTR_NOSUID */ | 0x4 /* MOUNT_ATTR_NODEV */ | (readonly ? 0x1 /* MOUNT_ATTR_RDONLY */ : 0) |
                  (noexec ? 0x8 /* MOUNT_ATTR_NOEXEC */ : 0),
              0, 0, 0};
    if (syscall(442 /* mount_setattr */, tree, "", 0x1000 | 0x8000, &attr, sizeof attr) < 0) {
        int e = errno;
        close(tree);
        return -e;
    }
    return tree;
}

/* The raw system calls: the spawner thread makes a pod's ipc and uts
 * namespaces itself (so the launcher's user namespace owns them) and names
 * the uts one, around one clone3. */
int stk_unshare(int flags) {
    return (int)syscall(SYS_unshare, flags);
}

int stk_sethostname(const char *name, size_t len) {
    return (int)syscall(SYS_sethostname, name, len);
}
