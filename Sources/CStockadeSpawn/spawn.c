/*
 * The spawn trampoline: everything between clone3 and execve.
 *
 * The launcher is a multithreaded Swift process. After clone3 the child has
 * one thread and a copy of memory whose locks may be held by threads that no
 * longer exist, so the child may only make system calls and read the plan
 * the parent prepared. Rules for every function below `child_main`:
 *   - no malloc, no stdio, no locks, no Swift, no libseccomp;
 *   - strings are built in stack buffers with the helpers at the top;
 *   - every failing step reports (step, errno, detail) on error_fd and exits.
 *
 * The steps run in the order of docs/ARCHITECTURE.md "The spawn path"; each has a
 * comment saying what it protects against.
 */
#include "stockade_spawn.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <sched.h>
#include <linux/capability.h>
#include <linux/landlock.h>
#include <linux/sched.h>
#include <linux/seccomp.h>
#include <linux/securebits.h>

#ifndef SYS_clone3
#define SYS_clone3 435
#endif
#ifndef SYS_close_range
#define SYS_close_range 436
#endif
#ifndef SYS_mount_setattr
#define SYS_mount_setattr 442
#endif
#ifndef SYS_landlock_create_ruleset
#define SYS_landlock_create_ruleset 444
#define SYS_landlock_add_rule 445
#define SYS_landlock_restrict_self 446
#endif
#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif
#ifndef AT_RECURSIVE
#define AT_RECURSIVE 0x8000
#endif
#ifndef PR_CAP_AMBIENT
#define PR_CAP_AMBIENT 47
#define PR_CAP_AMBIENT_CLEAR_ALL 4
#endif

/* The fds the child keeps out of the worker's way while it arranges fds. */
#define STK_PARK_FD_MIN 256
#define STK_MAX_PASSED_FDS 64

static const char *const step_names[STK_STEP_COUNT] = {
    [STK_STEP_NONE] = "unknown step",
    [STK_STEP_SYNC] = "wait for the launcher",
    [STK_STEP_PDEATHSIG] = "set parent-death signal",
    [STK_STEP_SIGNALS] = "reset signals",
    [STK_STEP_BECOME_ROOT] = "become root in the user namespace",
    [STK_STEP_MAKE_PRIVATE] = "make mounts private",
    [STK_STEP_STAGING] = "staging root",
    [STK_STEP_NEW_ROOT] = "new root tmpfs",
    [STK_STEP_MOUNT] = "mount",
    [STK_STEP_PROC] = "mount /proc",
    [STK_STEP_DEV] = "build /dev",
    [STK_STEP_MASK] = "mask path",
    [STK_STEP_ROOT_READONLY] = "remount root read-only",
    [STK_STEP_PIVOT] = "pivot_root",
    [STK_STEP_HOSTNAME] = "sethostname",
    [STK_STEP_SETSID] = "setsid",
    [STK_STEP_RLIMIT] = "setrlimit",
    [STK_STEP_CHDIR] = "chdir",
    [STK_STEP_FDS] = "arrange fds",
    [STK_STEP_REAPER] = "fork worker under PID 1",
    [STK_STEP_SECUREBITS] = "lock securebits",
    [STK_STEP_BOUNDING] = "drop capability bounding set",
    [STK_STEP_AMBIENT] = "clear ambient capabilities",
    [STK_STEP_GROUPS] = "drop supplementary groups",
    [STK_STEP_SETGID] = "setgid",
    [STK_STEP_SETUID] = "setuid",
    [STK_STEP_CAPS] = "clear capabilities",
    [STK_STEP_NO_NEW_PRIVS] = "set no_new_privs",
    [STK_STEP_LANDLOCK] = "apply Landlock",
    [STK_STEP_SECCOMP] = "load seccomp filter",
    [STK_STEP_EXEC] = "execve",
};

const char *stk_step_name(int step) {
    if (step <= 0 || step >= STK_STEP_COUNT || step_names[step] == NULL)
        return step_names[STK_STEP_NONE];
    return step_names[step];
}

/* ------------------------------------------------------------------ */
/* Async-signal-safe helpers (no libc state, no allocation).            */
/* ------------------------------------------------------------------ */

static size_t s_len(const char *s) {
    size_t n = 0;
    while (s && s[n]) n++;
    return n;
}

/* Concatenates a and b into buf (size cap); returns buf, or NULL if too long. */
static char *s_join(char *buf, size_t cap, const char *a, const char *b) {
    size_t la = s_len(a), lb = s_len(b);
    if (la + lb + 1 > cap) return NULL;
    for (size_t i = 0; i < la; i++) buf[i] = a[i];
    for (size_t i = 0; i < lb; i++) buf[la + i] = b[i];
    buf[la + lb] = 0;
    return buf;
}

static void write_all(int fd, const void *data, size_t len) {
    const char *p = data;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return;
        p += n;
        len -= (size_t)n;
    }
}

/* Reports the failed step to the launcher and exits. Never returns. */
__attribute__((noreturn)) static void fail(const struct stk_plan *p, int step, int err, const char *detail) {
    struct stk_error e;
    memset(&e, 0, sizeof e);
    e.step = step;
    e.err = err;
    size_t n = s_len(detail);
    if (n > sizeof e.detail - 1) n = sizeof e.detail - 1;
    for (size_t i = 0; i < n; i++) e.detail[i] = detail[i];
    write_all(p->error_fd, &e, sizeof e);
    _exit(127);
}

#define CHECK(cond, step, detail) do { if (!(cond)) fail(p, (step), errno, (detail)); } while (0)

/* mkdir -p: creates every missing directory of `path` (mode for the last). */
static int mkdir_p(const char *path, mode_t mode) {
    char buf[4096];
    size_t n = s_len(path);
    if (n == 0 || n >= sizeof buf) { errno = ENAMETOOLONG; return -1; }
    memcpy(buf, path, n + 1);
    for (size_t i = 1; i <= n; i++) {
        if (buf[i] != '/' && buf[i] != 0) continue;
        char saved = buf[i];
        buf[i] = 0;
        if (mkdir(buf, saved == 0 ? mode : 0755) < 0 && errno != EEXIST) return -1;
        buf[i] = saved;
    }
    return 0;
}

/* Creates the parent directories of `path` and an empty file at it (a mount point for a file bind). */
static int touch_p(const char *path) {
    /* An existing node is already a mount point, and may sit in a read-only
     * bind where even opening it for writing fails (EROFS, EACCES). */
    struct stat st;
    if (lstat(path, &st) == 0 && !S_ISDIR(st.st_mode)) return 0;
    char buf[4096];
    size_t n = s_len(path);
    if (n == 0 || n >= sizeof buf) { errno = ENAMETOOLONG; return -1; }
    memcpy(buf, path, n + 1);
    for (size_t i = n; i > 0; i--) {
        if (buf[i] == '/') { buf[i] = 0; break; }
    }
    if (buf[0] && mkdir_p(buf, 0755) < 0) return -1;
    int fd = open(path, O_CREAT | O_WRONLY | O_CLOEXEC | O_NOFOLLOW, 0644);
    if (fd < 0) return errno == EEXIST ? 0 : -1;
    close(fd);
    return 0;
}

/*
 * Adds mount flags to the bind at `target`, recursively when the kernel has
 * mount_setattr (5.12+). Flags can only be added: a flag locked by the host
 * mount (e.g. nosuid on the source) stays, which is what we want.
 */
static int restrict_mount(const char *target, int readonly, int nodev, int noexec) {
    struct mount_attr attr;
    memset(&attr, 0, sizeof attr);
    attr.attr_set = MOUNT_ATTR_NOSUID | (readonly ? MOUNT_ATTR_RDONLY : 0) |
                    (nodev ? MOUNT_ATTR_NODEV : 0) | (noexec ? MOUNT_ATTR_NOEXEC : 0);
    if (syscall(SYS_mount_setattr, AT_FDCWD, target, AT_RECURSIVE, &attr, sizeof attr) == 0) return 0;
    if (errno != ENOSYS) return -1;
    /* Older kernels: remount the top of the bind, keeping the flags the
     * source mount already has (a user namespace may not clear them). */
    struct statfs st;
    if (statfs(target, &st) < 0) return -1;
    unsigned long flags = MS_REMOUNT | MS_BIND | MS_NOSUID;
    if (st.f_flags & ST_RDONLY) flags |= MS_RDONLY;
    if (st.f_flags & ST_NODEV) flags |= MS_NODEV;
    if (st.f_flags & ST_NOEXEC) flags |= MS_NOEXEC;
    if (st.f_flags & ST_NOATIME) flags |= MS_NOATIME;
    if (st.f_flags & ST_NODIRATIME) flags |= MS_NODIRATIME;
    if (st.f_flags & ST_RELATIME) flags |= MS_RELATIME;
    if (readonly) flags |= MS_RDONLY;
    if (nodev) flags |= MS_NODEV;
    if (noexec) flags |= MS_NOEXEC;
    return mount(NULL, target, NULL, flags, NULL);
}

/* Binds host `source` at `target`, creating a dir or file mount point to match. */
static int bind_path(const char *source, const char *target, int readonly, int nodev, int noexec) {
    struct stat st;
    if (stat(source, &st) < 0) return -1;
    if (S_ISDIR(st.st_mode) ? mkdir_p(target, 0755) : touch_p(target)) return -1;
    if (mount(source, target, NULL, MS_BIND | MS_REC, NULL) < 0) return -1;
    return restrict_mount(target, readonly, nodev, noexec);
}

/*
 * A minimal /dev: a small tmpfs with binds of the harmless host nodes (a
 * user namespace cannot mknod), a private devpts instance (so the jail
 * cannot reach the host's terminals), /dev/shm and the usual symlinks.
 */
static const char *const stk_dev_nodes[] = {"null", "zero", "full", "random", "urandom", "tty", NULL};

const char *stk_dev_node(int i) {
    return i >= 0 && (size_t)i < sizeof stk_dev_nodes / sizeof stk_dev_nodes[0] ? stk_dev_nodes[i] : NULL;
}

static void build_dev(const struct stk_plan *p, const char *dev) {
    char src[512], dst[512], buf[512];
    CHECK(mkdir_p(dev, 0755) == 0, STK_STEP_DEV, dev);
    CHECK(mount("tmpfs", dev, "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=0755,size=64k") == 0, STK_STEP_DEV, dev);
    for (size_t i = 0; stk_dev_nodes[i] != NULL; i++) {
        if (!s_join(src, sizeof src, "/oldroot/dev/", stk_dev_nodes[i]) || !s_join(buf, sizeof buf, dev, "/") ||
            !s_join(dst, sizeof dst, buf, stk_dev_nodes[i]))
            fail(p, STK_STEP_DEV, ENAMETOOLONG, stk_dev_nodes[i]);
        /* Device binds keep dev (the nodes must work) but get nosuid, noexec. */
        CHECK(bind_path(src, dst, 0, 0, 1) == 0, STK_STEP_DEV, dst);
    }
    CHECK(s_join(dst, sizeof dst, dev, "/pts") && mkdir_p(dst, 0755) == 0, STK_STEP_DEV, "/dev/pts");
    CHECK(mount("devpts", dst, "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620") == 0,
          STK_STEP_DEV, "/dev/pts");
    CHECK(s_join(dst, sizeof dst, dev, "/shm") && mkdir_p(dst, 01777) == 0, STK_STEP_DEV, "/dev/shm");
    CHECK(mount("tmpfs", dst, "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777,size=64m") == 0, STK_STEP_DEV, "/dev/shm");
    static const char *const links[][2] = {
        {"/ptmx", "pts/ptmx"}, {"/fd", "/proc/self/fd"}, {"/stdin", "/proc/self/fd/0"},
        {"/stdout", "/proc/self/fd/1"}, {"/stderr", "/proc/self/fd/2"},
    };
    for (size_t i = 0; i < sizeof links / sizeof links[0]; i++) {
        CHECK(s_join(dst, sizeof dst, dev, links[i][0]) && symlink(links[i][1], dst) == 0, STK_STEP_DEV, links[i][0]);
    }
}

/* Hides `target`: /dev/null over a file, an empty read-only tmpfs over a directory. */
static void mask_path(const struct stk_plan *p, const struct stk_mount *m) {
    struct stat st;
    if (lstat(m->target, &st) < 0) {
        if (errno == ENOENT) return; /* nothing to hide */
        fail(p, STK_STEP_MASK, errno, m->target);
    }
    if (S_ISDIR(st.st_mode)) {
        CHECK(mount("tmpfs", m->target, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=0,mode=0000") == 0,
              STK_STEP_MASK, m->target);
    } else {
        CHECK(mount(m->source, m->target, NULL, MS_BIND, NULL) == 0, STK_STEP_MASK, m->target);
        CHECK(restrict_mount(m->target, 1, 1, 1) == 0, STK_STEP_MASK, m->target);
    }
}

/* One entry of the plan's mount list. */
static void apply_mount(const struct stk_plan *p, const struct stk_mount *m) {
    int optional = (m->flags & STK_MF_OPTIONAL) != 0;
    switch (m->kind) {
    case STK_MOUNT_BIND:
    case STK_MOUNT_DEVNODE: {
        struct stat st;
        if (stat(m->source, &st) < 0 && errno == ENOENT && optional) return;
        int nodev = m->kind == STK_MOUNT_DEVNODE ? 0 : !(m->flags & STK_MF_DEV);
        int ro = !(m->flags & STK_MF_WRITABLE);
        CHECK(bind_path(m->source, m->target, ro, nodev, (m->flags & STK_MF_NOEXEC) != 0) == 0, STK_STEP_MOUNT, m->target);
        return;
    }
    case STK_MOUNT_TMPFS: {
        unsigned long flags = MS_NOSUID | MS_NODEV | ((m->flags & STK_MF_NOEXEC) ? MS_NOEXEC : 0);
        CHECK(mkdir_p(m->target, 0755) == 0, STK_STEP_MOUNT, m->target);
        CHECK(mount("tmpfs", m->target, "tmpfs", flags, m->data) == 0, STK_STEP_MOUNT, m->target);
        if (!(m->flags & STK_MF_WRITABLE))
            CHECK(mount(NULL, m->target, NULL, MS_REMOUNT | MS_RDONLY | flags, m->data) == 0, STK_STEP_MOUNT, m->target);
        return;
    }
    case STK_MOUNT_PROC:
        /* A fresh procfs shows only the jail's pid namespace. */
        CHECK(mkdir_p(m->target, 0555) == 0, STK_STEP_PROC, m->target);
        CHECK(mount("proc", m->target, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) == 0, STK_STEP_PROC, m->target);
        return;
    case STK_MOUNT_DEV:
        build_dev(p, m->target);
        return;
    case STK_MOUNT_DIR:
        CHECK(mkdir_p(m->target, m->mode ? m->mode : 0755) == 0, STK_STEP_MOUNT, m->target);
        return;
    case STK_MOUNT_SYMLINK: {
        char parent[4096];
        size_t n = s_len(m->target);
        if (n >= sizeof parent) fail(p, STK_STEP_MOUNT, ENAMETOOLONG, m->target);
        memcpy(parent, m->target, n + 1);
        while (n > 0 && parent[n] != '/') n--;
        parent[n] = 0;
        CHECK(parent[0] == 0 || mkdir_p(parent, 0755) == 0, STK_STEP_MOUNT, m->target);
        CHECK(symlink(m->source, m->target) == 0 || errno == EEXIST, STK_STEP_MOUNT, m->target);
        return;
    }
    case STK_MOUNT_MASK:
        mask_path(p, m);
        return;
    case STK_MOUNT_RO: {
        struct stat st;
        if (stat(m->target, &st) < 0 && errno == ENOENT) return;
        /* /proc/sys and friends: bind onto themselves, then read-only. */
        CHECK(mount(m->target, m->target, NULL, MS_BIND | MS_REC, NULL) == 0, STK_STEP_MASK, m->target);
        CHECK(restrict_mount(m->target, 1, 1, 1) == 0, STK_STEP_MASK, m->target);
        return;
    }
    default:
        fail(p, STK_STEP_MOUNT, EINVAL, m->target);
    }
}

/*
 * Builds the new root and moves into it. The old root stays reachable as
 * /oldroot only while the binds are made, then is detached, so no path in
 * the jail leads back to the host's tree.
 */
static void build_root(const struct stk_plan *p) {
    /* No mount event inside the jail propagates to the host, nor back. */
    CHECK(mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) == 0, STK_STEP_MAKE_PRIVATE, "/");

    /* A scratch tmpfs becomes the root for a moment, with the host's root
     * below it at /oldroot: the binds read their sources from there. */
    CHECK(mount("tmpfs", p->staging, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0700,size=64k") == 0, STK_STEP_STAGING, p->staging);
    CHECK(chdir(p->staging) == 0, STK_STEP_STAGING, p->staging);
    CHECK(mkdir("newroot", 0755) == 0 && mkdir("oldroot", 0755) == 0, STK_STEP_STAGING, "mkdir");
    CHECK(syscall(SYS_pivot_root, ".", "oldroot") == 0, STK_STEP_STAGING, "pivot_root");
    CHECK(chdir("/") == 0, STK_STEP_STAGING, "/");

    /* The jail's root: its own small tmpfs, nosuid and nodev. */
    CHECK(mount("tmpfs", "/newroot", "tmpfs", MS_NOSUID | MS_NODEV, p->root_options) == 0, STK_STEP_NEW_ROOT, "/newroot");

    for (uint32_t i = 0; i < p->n_mounts; i++) apply_mount(p, &p->mounts[i]);

    /* Nothing in the jail may create files in its root. */
    if (p->root_readonly)
        CHECK(mount(NULL, "/newroot", NULL, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, p->root_options) == 0,
              STK_STEP_ROOT_READONLY, "/");

    /* Detach the host's tree, then swap roots with the pivot_root(".", ".")
     * idiom and detach the staging tmpfs stacked on top. */
    CHECK(umount2("/oldroot", MNT_DETACH) == 0, STK_STEP_PIVOT, "detach host root");
    CHECK(chdir("/newroot") == 0, STK_STEP_PIVOT, "/newroot");
    CHECK(syscall(SYS_pivot_root, ".", ".") == 0, STK_STEP_PIVOT, "pivot_root");
    CHECK(umount2(".", MNT_DETACH) == 0, STK_STEP_PIVOT, "detach staging root");
    CHECK(chdir("/") == 0, STK_STEP_PIVOT, "/");
}

/* Raw rt_sigaction: glibc's wrapper refuses the signals it reserves. */
struct k_sigaction {
    void (*handler)(int);
    unsigned long flags;
    void (*restorer)(void);
    uint64_t mask;
};

/* Signal dispositions and mask are inherited from the launcher's thread:
 * reset both so the worker starts with a clean slate (an ignored SIGPIPE or
 * a blocked SIGTERM would change its behaviour). */
static void reset_signals(const struct stk_plan *p) {
    struct k_sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.handler = SIG_DFL;
    for (int sig = 1; sig < 65; sig++) {
        if (sig == SIGKILL || sig == SIGSTOP) continue;
        syscall(SYS_rt_sigaction, sig, &dfl, NULL, 8);
    }
    uint64_t empty = 0;
    CHECK(syscall(SYS_rt_sigprocmask, SIG_SETMASK, &empty, NULL, 8) == 0, STK_STEP_SIGNALS, "sigprocmask");
}

/*
 * Passed fds land at their numbers; every other fd (including the pipes to
 * the launcher, which are close-on-exec) is marked close-on-exec, so the
 * worker starts with stdio, the channel and nothing else.
 */
static void arrange_fds(const struct stk_plan *p) {
    int parked[STK_MAX_PASSED_FDS];
    if (p->n_fds > STK_MAX_PASSED_FDS) fail(p, STK_STEP_FDS, E2BIG, "too many passed fds");
    /* Park every source above the target range first so that no dup2
     * overwrites a source that is still to be moved. */
    for (uint32_t i = 0; i < p->n_fds; i++) {
        parked[i] = fcntl(p->fds[i].from, F_DUPFD_CLOEXEC, STK_PARK_FD_MIN);
        CHECK(parked[i] >= 0, STK_STEP_FDS, "park fd");
    }
    for (uint32_t i = 0; i < p->n_fds; i++)
        CHECK(dup3(parked[i], p->fds[i].to, 0) >= 0, STK_STEP_FDS, "dup3");
    if (syscall(SYS_close_range, 3, ~0U, CLOSE_RANGE_CLOEXEC) < 0) {
        /* Kernels before 5.11: mark them one by one. */
        for (int fd = 3; fd < 4096; fd++) fcntl(fd, F_SETFD, FD_CLOEXEC);
    }
    for (uint32_t i = 0; i < p->n_fds; i++)
        CHECK(fcntl(p->fds[i].to, F_SETFD, 0) == 0, STK_STEP_FDS, "clear cloexec");
    for (uint32_t i = 0; i < p->n_fds; i++) close(parked[i]);
}

/* The launcher holds the sync pipe's write end while it lives: POLLHUP on
 * our end means it is gone, and the jail must not outlive it. */
static void die_if_launcher_gone(const struct stk_plan *p) {
    struct pollfd pfd = {.fd = p->sync_fd, .events = POLLIN};
    if (poll(&pfd, 1, 0) > 0 && (pfd.revents & (POLLHUP | POLLERR))) _exit(1);
}

/*
 * Credentials: lock securebits, empty the bounding and ambient sets, drop
 * supplementary groups, switch to the unprivileged ids, clear every
 * capability set, and forbid gaining privileges through execve.
 */
static void drop_privileges(const struct stk_plan *p) {
    /* No setuid-root fixups, ever: uid 0 inside the jail grants nothing. */
    CHECK(prctl(PR_SET_SECUREBITS, SECBIT_NOROOT | SECBIT_NOROOT_LOCKED | SECBIT_NO_SETUID_FIXUP |
                                       SECBIT_NO_SETUID_FIXUP_LOCKED | SECBIT_KEEP_CAPS_LOCKED, 0, 0, 0) == 0,
          STK_STEP_SECUREBITS, "PR_SET_SECUREBITS");
    for (int cap = 0; cap <= p->cap_last_cap; cap++)
        CHECK(prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) == 0 || errno == EINVAL, STK_STEP_BOUNDING, "PR_CAPBSET_DROP");
    CHECK(prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) == 0 || errno == EINVAL, STK_STEP_AMBIENT,
          "PR_CAP_AMBIENT_CLEAR_ALL");
    if (p->drop_groups) CHECK(syscall(SYS_setgroups, 0, NULL) == 0, STK_STEP_GROUPS, "setgroups");
    CHECK(syscall(SYS_setresgid, p->gid, p->gid, p->gid) == 0, STK_STEP_SETGID, "setresgid");
    CHECK(syscall(SYS_setresuid, p->uid, p->uid, p->uid) == 0, STK_STEP_SETUID, "setresuid");
    struct __user_cap_header_struct hdr = {.version = _LINUX_CAPABILITY_VERSION_3, .pid = 0};
    struct __user_cap_data_struct data[2];
    memset(data, 0, sizeof data);
    CHECK(syscall(SYS_capset, &hdr, data) == 0, STK_STEP_CAPS, "capset");
    /* A credential change clears the parent-death signal: set it again. */
    CHECK(prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) == 0, STK_STEP_PDEATHSIG, "PR_SET_PDEATHSIG");
    die_if_launcher_gone(p);
    CHECK(prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0, STK_STEP_NO_NEW_PRIVS, "PR_SET_NO_NEW_PRIVS");
}

/* Access rights Landlock accepts on a non-directory file. */
#define STK_LL_FILE_RIGHTS (LANDLOCK_ACCESS_FS_EXECUTE | LANDLOCK_ACCESS_FS_WRITE_FILE | \
                            LANDLOCK_ACCESS_FS_READ_FILE | (1ULL << 14) /* TRUNCATE */ | (1ULL << 15) /* IOCTL_DEV */)

/* Filesystem (and, from ABI 4, TCP port) rules: everything the profile did
 * not grant is refused even where the mount would allow it. */
static void apply_landlock(const struct stk_plan *p) {
    if (p->landlock_abi <= 0) return;
    /* The attribute grows with the ABI: fs (1), net (4), scoped (6). */
    struct {
        uint64_t fs;
        uint64_t net;
        uint64_t scoped;
    } attr = {p->landlock_fs_handled, p->landlock_net_handled, p->landlock_scoped};
    size_t size = p->landlock_abi >= 6 ? 24 : p->landlock_abi >= 4 ? 16 : 8;
    int rs = (int)syscall(SYS_landlock_create_ruleset, &attr, size, 0);
    if (rs < 0) {
        if (p->landlock_required) fail(p, STK_STEP_LANDLOCK, errno, "landlock_create_ruleset");
        return;
    }
    for (uint32_t i = 0; i < p->n_landlock_rules; i++) {
        const struct stk_landlock_rule *r = &p->landlock_rules[i];
        int fd = open(r->path, O_PATH | O_CLOEXEC);
        if (fd < 0) {
            if (errno == ENOENT && r->optional) continue;
            fail(p, STK_STEP_LANDLOCK, errno, r->path);
        }
        struct stat st;
        uint64_t access = r->access;
        if (fstat(fd, &st) == 0 && !S_ISDIR(st.st_mode)) access &= STK_LL_FILE_RIGHTS;
        struct landlock_path_beneath_attr pb = {.allowed_access = access, .parent_fd = fd};
        if (access != 0 && syscall(SYS_landlock_add_rule, rs, LANDLOCK_RULE_PATH_BENEATH, &pb, 0) < 0)
            fail(p, STK_STEP_LANDLOCK, errno, r->path);
        close(fd);
    }
    for (uint32_t i = 0; i < p->n_landlock_ports; i++) {
        struct {
            uint64_t allowed_access;
            uint64_t port;
        } __attribute__((packed)) np = {p->landlock_ports[i].access, p->landlock_ports[i].port};
        if (syscall(SYS_landlock_add_rule, rs, 2 /* LANDLOCK_RULE_NET_PORT */, &np, 0) < 0)
            fail(p, STK_STEP_LANDLOCK, errno, "tcp port rule");
    }
    if (syscall(SYS_landlock_restrict_self, rs, 0) < 0) fail(p, STK_STEP_LANDLOCK, errno, "landlock_restrict_self");
    close(rs);
}

/*
 * PID 1 of the jail: forwards the launcher's signals to the worker, reaps
 * orphans (a pid namespace's init inherits them), and exits with the
 * worker's status once the worker is gone. Its own exit tears down the
 * namespace: the kernel kills everything left in it.
 */
__attribute__((noreturn)) static void run_reaper(const struct stk_plan *p, pid_t worker) {
    /* Not dumpable: the worker (same uid) cannot ptrace it or write its memory. */
    prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
    /* Keep only the status pipe and the launcher-liveness pipe; the
     * worker's fds (channel, stdio) must close when the worker exits. */
    unsigned int lo = (unsigned int)p->status_fd, hi = (unsigned int)p->sync_fd;
    if (lo > hi) { unsigned int t = lo; lo = hi; hi = t; }
    if (lo > 0) syscall(SYS_close_range, 0, lo - 1, 0);
    if (hi > lo + 1) syscall(SYS_close_range, lo + 1, hi - 1, 0);
    syscall(SYS_close_range, hi + 1, ~0U, 0);
    uint64_t all = ~0ULL;
    for (;;) {
        siginfo_t info;
        int sig = (int)syscall(SYS_rt_sigtimedwait, &all, &info, NULL, 8);
        if (sig < 0) continue;
        if (sig != SIGCHLD) {
            /* Forward what a supervisor sends: terminate, interrupt, hang up, ... */
            kill(worker, sig);
            continue;
        }
        for (;;) {
            int status = 0;
            pid_t r = (pid_t)syscall(SYS_wait4, -1, &status, WNOHANG, NULL);
            if (r <= 0) break;
            if (r != worker) continue; /* an orphan: reaped, nothing more */
            int32_t raw = status;
            write_all(p->status_fd, &raw, sizeof raw);
            if (WIFEXITED(status)) _exit(WEXITSTATUS(status));
            _exit(128 + WTERMSIG(status));
        }
    }
}

static void exec_worker(const struct stk_plan *p) {
    int err = ENOENT;
    for (uint32_t i = 0; i < p->n_exec_paths; i++) {
        execve(p->exec_paths[i], p->argv, p->envp);
        if (errno != ENOENT && errno != ENOTDIR) {
            err = errno;
            fail(p, STK_STEP_EXEC, err, p->exec_paths[i]);
        }
    }
    fail(p, STK_STEP_EXEC, err, p->argv[0] ? p->argv[0] : "(no program)");
}

/* The worker's own stack while it shares PID 1's memory (see child_main). */
static char worker_stack[256 * 1024] __attribute__((aligned(16)));

/* The worker's last steps: unblock signals, Landlock, seccomp, execve. */
static int worker_main(void *arg) {
    const struct stk_plan *p = arg;
    uint64_t none = 0;
    syscall(SYS_rt_sigprocmask, SIG_SETMASK, &none, NULL, 8);
    apply_landlock(p);
    /* Last: from here on every system call goes through the filter. */
    if (p->seccomp_len > 0) {
        struct sock_fprog prog = {.len = (unsigned short)p->seccomp_len, .filter = (struct sock_filter *)p->seccomp_filter};
        CHECK(syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, p->seccomp_flags, &prog) == 0, STK_STEP_SECCOMP, "seccomp");
    }
    exec_worker(p);
    _exit(127);
}

/* Moves `*fd` to the lowest free number >= STK_PARK_FD_MIN (close-on-exec). */
static void move_high(const struct stk_plan *p, int32_t *fd) {
    int moved = fcntl(*fd, F_DUPFD_CLOEXEC, STK_PARK_FD_MIN);
    if (moved < 0) fail(p, STK_STEP_FDS, errno, "move pipe fd");
    close(*fd);
    *fd = moved;
}

__attribute__((noreturn)) static void child_main(const struct stk_plan *plan) {
    /* A private copy: the pipe fd numbers below change. */
    struct stk_plan local = *plan;
    const struct stk_plan *p = &local;

    /* The launcher's ends of our pipes are not ours to hold. */
    for (int i = 0; i < 4; i++)
        if (p->parent_fds[i] >= 0) close(p->parent_fds[i]);

    /* Our own pipe ends move above every number a passed fd may land on
     * (0..255), so arranging the worker's fds cannot overwrite them. */
    move_high(p, &local.error_fd);
    move_high(p, &local.sync_fd);
    move_high(p, &local.status_fd);

    /* Die with the launcher; the go-ahead pipe covers the race before this. */
    CHECK(prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) == 0, STK_STEP_PDEATHSIG, "PR_SET_PDEATHSIG");
    reset_signals(p);

    /* Wait until the launcher wrote our uid/gid maps (and placed us in our
     * cgroup where clone3 could not). EOF: the launcher is gone. */
    char go = 0;
    ssize_t n;
    do n = read(p->sync_fd, &go, 1);
    while (n < 0 && errno == EINTR);
    if (n != 1) {
        if (n == 0) _exit(1);
        fail(p, STK_STEP_SYNC, errno, "read");
    }

    /* A root launcher's uid is not mapped in the jail's user namespace;
     * files made with an unmapped id fail (EOVERFLOW). Take the mapped
     * uid 0 (an unprivileged host id) for the set-up. */
    if (p->become_root) {
        CHECK(syscall(SYS_setresgid, 0, 0, 0) == 0, STK_STEP_BECOME_ROOT, "setresgid(0)");
        CHECK(syscall(SYS_setresuid, 0, 0, 0) == 0, STK_STEP_BECOME_ROOT, "setresuid(0)");
    }

    build_root(p);

    if (p->hostname) CHECK(sethostname(p->hostname, s_len(p->hostname)) == 0, STK_STEP_HOSTNAME, p->hostname);
    /* A new session has no controlling terminal: no TIOCSTI into the caller's shell. */
    if (p->new_session) CHECK(setsid() >= 0, STK_STEP_SETSID, "setsid");
    /* fds first: a lower RLIMIT_NOFILE would stop the moves above it. */
    arrange_fds(p);
    for (uint32_t i = 0; i < p->n_rlimits; i++) {
        struct rlimit rl = {.rlim_cur = p->rlimits[i].soft, .rlim_max = p->rlimits[i].hard};
        CHECK(syscall(SYS_prlimit64, 0, p->rlimits[i].resource, &rl, NULL) == 0, STK_STEP_RLIMIT, "prlimit");
    }
    drop_privileges(p);
    CHECK(chdir(p->cwd ? p->cwd : "/") == 0, STK_STEP_CHDIR, p->cwd ? p->cwd : "/");

    if (!p->use_reaper) worker_main((void *)p);

    /* Block everything before the fork so that no signal is lost between
     * fork and the reaper's wait loop; the worker unblocks. The worker is a
     * CLONE_VM|CLONE_VFORK child on its own stack: no page tables to copy
     * (PID 1 is a copy of the launcher), and PID 1 stays suspended until
     * the worker has exec'd or failed, so they never run on shared memory
     * at the same time. */
    uint64_t all = ~0ULL;
    syscall(SYS_rt_sigprocmask, SIG_SETMASK, &all, NULL, 8);
    pid_t worker = clone(worker_main, worker_stack + sizeof worker_stack, CLONE_VM | CLONE_VFORK | SIGCHLD, (void *)p);
    if (worker < 0) fail(p, STK_STEP_REAPER, errno, "clone");
    close(p->error_fd); /* EOF reaches the launcher once the worker has exec'd */
    run_reaper(p, worker);
}

pid_t stk_spawn(const struct stk_plan *plan, int *pidfd, int *used_into_cgroup) {
    struct clone_args args;
    int child_pidfd = -1;
    memset(&args, 0, sizeof args);
    args.flags = plan->clone_flags | CLONE_PIDFD;
    args.pidfd = (uint64_t)(uintptr_t)&child_pidfd;
    args.exit_signal = SIGCHLD;
    *used_into_cgroup = 0;
    if (plan->cgroup_fd >= 0) {
        args.flags |= CLONE_INTO_CGROUP;
        args.cgroup = (uint64_t)plan->cgroup_fd;
    }
    long r = syscall(SYS_clone3, &args, sizeof args);
    if (r < 0 && plan->cgroup_fd >= 0 && (errno == EINVAL || errno == EBADF || errno == EOPNOTSUPP || errno == E2BIG)) {
        /* No CLONE_INTO_CGROUP here (kernel < 5.7, or a v1 cgroup fd): the
         * launcher places the child before it releases it. */
        args.flags &= ~(uint64_t)CLONE_INTO_CGROUP;
        args.cgroup = 0;
        r = syscall(SYS_clone3, &args, sizeof args);
    } else if (r >= 0 && plan->cgroup_fd >= 0) {
        *used_into_cgroup = 1;
    }
    if (r < 0) return -errno;
    if (r == 0) child_main(plan);
    *pidfd = child_pidfd;
    return (pid_t)r;
}
