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
#include "via_message.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <sched.h>
#include <linux/capability.h>
#include <linux/landlock.h>
#include <linux/openat2.h>
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
#ifndef SYS_open_tree
#define SYS_open_tree 428
#define SYS_move_mount 429
#endif
#ifndef SYS_openat2
#define SYS_openat2 437
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
#ifndef SYS_execveat
#define SYS_execveat 322
#endif
#ifndef KEYCTL_JOIN_SESSION_KEYRING
#define KEYCTL_JOIN_SESSION_KEYRING 1
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
    [STK_STEP_SETNS] = "join a namespace",
    [STK_STEP_UNSHARE] = "make the container's namespaces in its pod's user namespace",
    [STK_STEP_CGROUPNS] = "enter a cgroup namespace rooted at the jail's cgroup",
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
    [STK_STEP_SYSCTL] = "write a sysctl",
    [STK_STEP_HOOKS] = "run the createRuntime and createContainer hooks",
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
    [STK_STEP_KEYRING] = "join a fresh session keyring",
    [STK_STEP_CAPS] = "clear capabilities",
    [STK_STEP_NO_NEW_PRIVS] = "set no_new_privs",
    [STK_STEP_INIT] = "exec the jail's init",
    [STK_STEP_EXEC_WAIT] = "wait for start",
    [STK_STEP_VIA_WAIT] = "receive the caller's command",
    [STK_STEP_LANDLOCK] = "apply Landlock",
    [STK_STEP_SECCOMP] = "load seccomp filter",
    [STK_STEP_START_HOOK] = "run a startContainer hook",
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

static void u32_to_dec(char *buf, uint32_t v);

/* Reports the failed step to the launcher and exits. Never returns. After
 * an OCI container's worker reported success (exec_wait), the launcher is
 * gone: the step goes to the container's stderr instead. */
__attribute__((noreturn)) static void fail(const struct stk_plan *p, int step, int err, const char *detail) {
    /* A jail built ahead (via_wait) reports its late steps to the daemon,
     * which tells the caller, on the socket the command came on. */
    int report_fd = p->error_fd >= 0 ? p->error_fd : p->via_wait ? p->via_fd : -1;
    if (report_fd < 0) {
        char num[12];
        u32_to_dec(num, (uint32_t)err);
        const char *parts[] = {"stockade: ", stk_step_name(step), ": errno ", num, " (", detail ? detail : "", ")\n"};
        for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++) write_all(2, parts[i], s_len(parts[i]));
        _exit(127);
    }
    struct stk_error e = stk_error_record(step, err, detail);
    if (report_fd == p->error_fd) write_all(report_fd, &e, sizeof e);
    else send(report_fd, &e, sizeof e, MSG_NOSIGNAL); /* one record, one packet */
    _exit(127);
}

#define CHECK(cond, step, detail) do { if (!(cond)) fail(p, (step), errno, (detail)); } while (0)

/* ------------------------------------------------------------------ */
/* Paths by fd. A jail may have written anything below a writable bind:  */
/* a symlink where a directory was, swapped in and out while we work.    */
/* So no path is handed to the kernel whole: targets are walked beneath  */
/* the new root one component at a time with symlinks refused, sources   */
/* are opened without following any symlink and checked against what the */
/* launcher saw, and the mounts are made on and from those fds.          */
/* ------------------------------------------------------------------ */

/* openat2(2): `resolve` restricts the whole lookup (RESOLVE_* bits). */
static int open2(int dirfd, const char *path, int flags, uint64_t resolve) {
    struct open_how how;
    memset(&how, 0, sizeof how);
    how.flags = (uint64_t)(flags | O_CLOEXEC);
    how.resolve = resolve;
    return (int)syscall(SYS_openat2, dirfd, path, &how, sizeof how);
}

/* No symlink (magic or not) anywhere on the way, and never above `dirfd`. */
#define STK_RESOLVE_BENEATH (RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)

enum { STK_OPEN_ONLY = 0, STK_MAKE_DIR = 1, STK_MAKE_FILE = 2 };

/*
 * Opens `path` (absolute or relative, inside the jail) beneath the directory
 * `root` and returns an O_PATH fd, or -1 with errno (ELOOP: a symlink on the
 * way). One component per openat2 call, so each step is a single name in a
 * directory already checked; missing components are created when `make`
 * says so (directories 0755, the last one `mode`, or an empty file).
 */
static int open_beneath(int root, const char *path, int make, mode_t mode) {
    char buf[4096];
    size_t n = s_len(path);
    if (n >= sizeof buf) { errno = ENAMETOOLONG; return -1; }
    memcpy(buf, path, n + 1);
    int cur = root;
    size_t i = 0;
    for (;;) {
        while (buf[i] == '/') i++;
        if (buf[i] == 0) break;
        char *name = &buf[i];
        while (buf[i] && buf[i] != '/') i++;
        int last = 1;
        if (buf[i] == '/') {
            buf[i++] = 0;
            size_t j = i;
            while (buf[j] == '/') j++;
            last = buf[j] == 0;
        }
        /* ".." never reaches here (the launcher refuses it); refuse it again. */
        if (name[0] == '.' && name[1] == '.' && name[2] == 0) { errno = EINVAL; goto fail; }
        int next = open2(cur, name, O_PATH, STK_RESOLVE_BENEATH);
        if (next < 0 && errno == ENOENT && make != STK_OPEN_ONLY) {
            if (last && make == STK_MAKE_FILE) {
                /* O_EXCL: an existing name (a planted symlink too) is never opened here. */
                int fd = openat(cur, name, O_CREAT | O_EXCL | O_WRONLY | O_NOFOLLOW | O_CLOEXEC, 0644);
                if (fd >= 0) close(fd);
                else if (errno != EEXIST) goto fail;
            } else if (mkdirat(cur, name, last ? mode : 0755) < 0 && errno != EEXIST) {
                goto fail;
            }
            next = open2(cur, name, O_PATH, STK_RESOLVE_BENEATH);
        }
        if (next < 0) goto fail;
        if (cur != root) close(cur);
        cur = next;
        if (!last) {
            struct stat st;
            if (fstat(cur, &st) < 0) goto fail;
            if (!S_ISDIR(st.st_mode)) { errno = ENOTDIR; goto fail; }
        }
    }
    /* An empty path means `root` itself. */
    return cur == root ? fcntl(root, F_DUPFD_CLOEXEC, 0) : cur;
fail:
    if (cur != root) {
        int saved = errno;
        close(cur);
        errno = saved;
    }
    return -1;
}

/*
 * Opens a host source ("/oldroot/...", a path the launcher canonicalised)
 * without following any symlink, and checks that it is still the file the
 * launcher checked (device, inode, type): a swap after the check fails with
 * ELOOP (a symlink now) or ESTALE (another file now).
 */
static int open_source(const struct stk_mount *m) {
    int fd = open2(AT_FDCWD, m->source, O_PATH, RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS);
    if (fd < 0 || m->src_type == 0) return fd;
    struct stat st;
    if (fstat(fd, &st) < 0 || (uint32_t)(st.st_mode & S_IFMT) != m->src_type || (uint64_t)st.st_dev != m->src_dev ||
        (uint64_t)st.st_ino != m->src_ino) {
        close(fd);
        errno = ESTALE;
        return -1;
    }
    return fd;
}

/*
 * Old kernels (before 5.12, no mount_setattr): adds flags to the mount at
 * `target` by remounting it, keeping the flags the source mount already has
 * (a user namespace may not clear them).
 */
static int restrict_mount_path(const char *target, int readonly, int nodev, int noexec) {
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

/* "/oldroot/proc/self/fd/<fd>" into buf (the old-kernel fallback only). */
static const char *fd_path(char *buf, size_t cap, int fd) {
    char digits[16];
    int n = 0;
    do digits[n++] = (char)('0' + fd % 10); while ((fd /= 10) > 0 && n < 15);
    char num[16];
    for (int i = 0; i < n; i++) num[i] = digits[n - 1 - i];
    num[n] = 0;
    return s_join(buf, cap, "/oldroot/proc/self/fd/", num);
}

/*
 * Binds the tree at fd `src` onto fd `dst`: a detached copy of the source
 * mount (with its submounts), flags added while it is detached (nosuid
 * always; read-only, nodev, noexec as asked; recursively), then moved onto
 * the target. Flags can only be added: a flag locked by the host mount stays.
 */
static int bind_fd(int src, int dst, int readonly, int nodev, int noexec) {
    int tree = (int)syscall(SYS_open_tree, src, "", OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_EMPTY_PATH | AT_RECURSIVE);
    if (tree < 0) return -1;
    struct mount_attr attr;
    memset(&attr, 0, sizeof attr);
    attr.attr_set = MOUNT_ATTR_NOSUID | (readonly ? MOUNT_ATTR_RDONLY : 0) | (nodev ? MOUNT_ATTR_NODEV : 0) |
                    (noexec ? MOUNT_ATTR_NOEXEC : 0);
    int set = (int)syscall(SYS_mount_setattr, tree, "", AT_EMPTY_PATH | AT_RECURSIVE, &attr, sizeof attr);
    int rc = -1;
    if (set < 0 && errno != ENOSYS) goto out;
    if (syscall(SYS_move_mount, tree, "", dst, "", MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH) < 0) goto out;
    if (set < 0) {
        /* No mount_setattr: remount the now attached tree through its fd. */
        char buf[64];
        if (!fd_path(buf, sizeof buf, tree) || restrict_mount_path(buf, readonly, nodev, noexec) < 0) goto out;
    }
    rc = 0;
out:
    if (rc < 0) {
        int saved = errno;
        close(tree);
        errno = saved;
    } else {
        close(tree);
    }
    return rc;
}

/* Mounts a fresh filesystem on the directory fd `dst` (through the working
 * directory: "." names exactly that directory, no lookup). */
static int mount_on(int dst, const char *fstype, unsigned long flags, const char *data) {
    if (fchdir(dst) < 0) return -1;
    return mount(fstype, ".", fstype, flags, data);
}

/* Opens `target` beneath root, making it (a directory, or a file when the
 * source is not a directory) to match `src`; returns the fd or fails. */
static int open_target_for(const struct stk_plan *p, int root, int src, const char *target) {
    struct stat st;
    CHECK(fstat(src, &st) == 0, STK_STEP_MOUNT, target);
    int dst = open_beneath(root, target, S_ISDIR(st.st_mode) ? STK_MAKE_DIR : STK_MAKE_FILE, 0755);
    CHECK(dst >= 0, STK_STEP_MOUNT, target);
    struct stat dt;
    CHECK(fstat(dst, &dt) == 0, STK_STEP_MOUNT, target);
    if (S_ISDIR(st.st_mode) != S_ISDIR(dt.st_mode)) fail(p, STK_STEP_MOUNT, S_ISDIR(st.st_mode) ? ENOTDIR : EISDIR, target);
    return dst;
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

static void build_dev(const struct stk_plan *p, int root, const char *dev) {
    char src[64];
    int at = open_beneath(root, dev, STK_MAKE_DIR, 0755);
    CHECK(at >= 0, STK_STEP_DEV, dev);
    CHECK(mount_on(at, "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=0755,size=64k") == 0, STK_STEP_DEV, dev);
    close(at);
    /* Reopen: the fd above names the directory under the new tmpfs. */
    int d = open_beneath(root, dev, STK_OPEN_ONLY, 0);
    CHECK(d >= 0, STK_STEP_DEV, dev);
    for (size_t i = 0; stk_dev_nodes[i] != NULL; i++) {
        if (!s_join(src, sizeof src, "/oldroot/dev/", stk_dev_nodes[i])) fail(p, STK_STEP_DEV, ENAMETOOLONG, stk_dev_nodes[i]);
        struct stk_mount node = {.source = src};
        int s = open_source(&node);
        struct stat st;
        CHECK(s >= 0 && fstat(s, &st) == 0, STK_STEP_DEV, src);
        if (!S_ISCHR(st.st_mode)) fail(p, STK_STEP_DEV, ENODEV, src);
        /* The tmpfs was mounted just above and holds nothing yet: the node's
         * file is made with O_EXCL (nothing there is ever opened) and its fd
         * is the bind's target, without the walk open_beneath makes. */
        int t = openat(d, stk_dev_nodes[i], O_CREAT | O_EXCL | O_WRONLY | O_NOFOLLOW | O_CLOEXEC, 0644);
        /* Device binds keep dev (the nodes must work) but get nosuid, noexec. */
        CHECK(t >= 0 && bind_fd(s, t, 0, 0, 1) == 0, STK_STEP_DEV, src);
        close(s);
        close(t);
    }
    int pts = open_beneath(d, "pts", STK_MAKE_DIR, 0755);
    if (p->has_devpts) {
        /* The launcher's devpts instance, which holds the container's
         * terminal: attached here instead of a fresh one. */
        CHECK(pts >= 0 && syscall(SYS_move_mount, p->devpts_fd, "", pts, "",
                                  MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH) == 0,
              STK_STEP_DEV, "/dev/pts (the terminal's devpts)");
    } else {
        CHECK(pts >= 0 && mount_on(pts, "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620") == 0,
              STK_STEP_DEV, "/dev/pts");
    }
    close(pts);
    if (p->has_devpts && p->console_pts) {
        /* /dev/console is the terminal: its pts node bound over an empty file. */
        int src = open_beneath(d, p->console_pts, STK_OPEN_ONLY, 0);
        CHECK(src >= 0, STK_STEP_DEV, p->console_pts);
        int t = open_beneath(d, "console", STK_MAKE_FILE, 0);
        CHECK(t >= 0 && bind_fd(src, t, 0, 0, 1) == 0, STK_STEP_DEV, "/dev/console");
        close(src);
        close(t);
    }
    int shm = open_beneath(d, "shm", STK_MAKE_DIR, 01777);
    CHECK(shm >= 0 && mount_on(shm, "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777,size=64m") == 0, STK_STEP_DEV, "/dev/shm");
    close(shm);
    static const char *const links[][2] = {
        {"ptmx", "pts/ptmx"}, {"fd", "/proc/self/fd"}, {"stdin", "/proc/self/fd/0"},
        {"stdout", "/proc/self/fd/1"}, {"stderr", "/proc/self/fd/2"},
    };
    for (size_t i = 0; i < sizeof links / sizeof links[0]; i++)
        CHECK(symlinkat(links[i][1], d, links[i][0]) == 0, STK_STEP_DEV, links[i][0]);
    close(d);
}

/*
 * A run of masks and read-only self-binds (/proc's twenty-odd) mostly names
 * files of one directory, from one source (/dev/null): the directory's fd
 * and the last file mask's source fd are kept from one entry to the next
 * instead of being opened again for each (five system calls fewer a mask).
 * Any other kind of entry drops both. A mask that covers a directory D
 * keeps D's parent, never D: an entry below D names D (or a directory under
 * it) as its parent, which is opened afresh and so sees the cover.
 */
struct mask_cache {
    int parent_fd;       /* -1: none kept */
    size_t parent_len;
    char parent[4096];   /* the kept directory's path in the jail, without the last slash */
    int source_fd;       /* -1: none kept */
    const struct stk_mount *source_of; /* the entry whose source it is */
};

static void mask_cache_drop(struct mask_cache *mc) {
    if (mc->parent_fd >= 0) close(mc->parent_fd);
    if (mc->source_fd >= 0) close(mc->source_fd);
    mc->parent_fd = -1;
    mc->source_fd = -1;
    mc->source_of = NULL;
}

/* Opens `target` as open_beneath(root, target, STK_OPEN_ONLY) does: a plain
 * last name is looked up in its directory, kept when the entry before named
 * the same one; anything else (a trailing slash, "." or "..") takes the
 * whole walk. -1 with errno as open_beneath gives it. */
static int open_masked(int root, struct mask_cache *mc, const char *target) {
    size_t n = s_len(target);
    size_t slash = n;
    while (slash > 0 && target[slash - 1] != '/') slash--;
    const char *name = &target[slash];
    if (slash == 0 || slash - 1 >= sizeof mc->parent || name[0] == 0 ||
        (name[0] == '.' && (name[1] == 0 || (name[1] == '.' && name[2] == 0))))
        return open_beneath(root, target, STK_OPEN_ONLY, 0);
    size_t len = slash - 1;
    if (mc->parent_fd < 0 || mc->parent_len != len || memcmp(mc->parent, target, len) != 0) {
        if (mc->parent_fd >= 0) close(mc->parent_fd);
        mc->parent_fd = -1;
        memcpy(mc->parent, target, len);
        mc->parent[len] = 0;
        /* The same walk as for the whole path, one name shorter. */
        int d = open_beneath(root, mc->parent, STK_OPEN_ONLY, 0);
        if (d < 0) return -1;
        mc->parent_fd = d;
        mc->parent_len = len;
    }
    return open2(mc->parent_fd, name, O_PATH, STK_RESOLVE_BENEATH);
}

/* The source of a file mask: the kept fd when the entry before had the same
 * source as the launcher recorded it (path, type, device, inode). */
static int mask_source(struct mask_cache *mc, const struct stk_mount *m) {
    const struct stk_mount *k = mc->source_of;
    if (mc->source_fd >= 0 && k && k->src_type == m->src_type && k->src_dev == m->src_dev &&
        k->src_ino == m->src_ino && strcmp(k->source, m->source) == 0)
        return mc->source_fd;
    if (mc->source_fd >= 0) close(mc->source_fd);
    mc->source_fd = -1;
    mc->source_of = NULL;
    int s = open_source(m);
    if (s >= 0) {
        mc->source_fd = s;
        mc->source_of = m;
    }
    return s;
}

/* Hides `target`: /dev/null over a file, an empty read-only tmpfs over a directory. */
static void mask_path(const struct stk_plan *p, int root, const struct stk_mount *m, struct mask_cache *mc) {
    int t = open_masked(root, mc, m->target);
    if (t < 0) {
        if (errno == ENOENT) return; /* nothing to hide */
        fail(p, STK_STEP_MASK, errno, m->target);
    }
    struct stat st;
    CHECK(fstat(t, &st) == 0, STK_STEP_MASK, m->target);
    if (S_ISDIR(st.st_mode)) {
        CHECK(mount_on(t, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=0,mode=0000") == 0,
              STK_STEP_MASK, m->target);
    } else {
        int s = mask_source(mc, m);
        CHECK(s >= 0 && bind_fd(s, t, 1, 1, 1) == 0, STK_STEP_MASK, m->target);
    }
    close(t);
}

/* Reports a failed bind with the target, and says so when the source was swapped. */
__attribute__((noreturn)) static void fail_source(const struct stk_plan *p, const struct stk_mount *m) {
    int err = errno;
    char detail[sizeof ((struct stk_error *)0)->detail];
    const char *why = err == ESTALE ? ": the source is no longer the file the launcher checked"
                      : err == ELOOP ? ": the source path now holds a symlink" : "";
    if (!s_join(detail, sizeof detail, m->target, why)) fail(p, STK_STEP_MOUNT, err, m->target);
    fail(p, STK_STEP_MOUNT, err, detail);
}

/* One entry of the plan's mount list; `root` is the new root's directory fd,
 * `mc` what the masks before it kept. */
static void apply_mount(const struct stk_plan *p, int root, const struct stk_mount *m, struct mask_cache *mc) {
    int optional = (m->flags & STK_MF_OPTIONAL) != 0;
    if (m->kind != STK_MOUNT_MASK && m->kind != STK_MOUNT_RO) mask_cache_drop(mc);
    switch (m->kind) {
    case STK_MOUNT_BIND:
    case STK_MOUNT_DEVNODE: {
        if (m->flags & STK_MF_TREE) {
            /* The launcher's copy of the source, flags already set (its
             * directories may be closed to the jail's ids): attached as is. */
            int dst = open_target_for(p, root, m->tree_fd, m->target);
            CHECK(syscall(SYS_move_mount, m->tree_fd, "", dst, "", MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH) == 0,
                  STK_STEP_MOUNT, m->target);
            close(dst);
            return;
        }
        int src = open_source(m);
        if (src < 0) {
            if (errno == ENOENT && optional) return;
            fail_source(p, m);
        }
        int dst = open_target_for(p, root, src, m->target);
        int nodev = m->kind == STK_MOUNT_DEVNODE ? 0 : !(m->flags & STK_MF_DEV);
        int ro = !(m->flags & STK_MF_WRITABLE);
        CHECK(bind_fd(src, dst, ro, nodev, (m->flags & STK_MF_NOEXEC) != 0) == 0, STK_STEP_MOUNT, m->target);
        close(src);
        close(dst);
        return;
    }
    case STK_MOUNT_TMPFS: {
        unsigned long flags = MS_NOSUID | MS_NODEV | ((m->flags & STK_MF_NOEXEC) ? MS_NOEXEC : 0) |
                              ((m->flags & STK_MF_WRITABLE) ? 0 : MS_RDONLY);
        int dst = open_beneath(root, m->target, STK_MAKE_DIR, 0755);
        CHECK(dst >= 0, STK_STEP_MOUNT, m->target);
        CHECK(mount_on(dst, "tmpfs", flags, m->data) == 0, STK_STEP_MOUNT, m->target);
        close(dst);
        return;
    }
    case STK_MOUNT_PROC: {
        /* A fresh procfs shows only the jail's pid namespace. */
        int dst = open_beneath(root, m->target, STK_MAKE_DIR, 0555);
        CHECK(dst >= 0, STK_STEP_PROC, m->target);
        CHECK(mount_on(dst, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) == 0, STK_STEP_PROC, m->target);
        close(dst);
        return;
    }
    case STK_MOUNT_DEV:
        build_dev(p, root, m->target);
        return;
    case STK_MOUNT_FS: {
        /* An OCI mount of a kernel filesystem: always nosuid; nodev,
         * noexec and read-only as the mount asks. */
        unsigned long flags = MS_NOSUID | ((m->flags & STK_MF_DEV) ? 0 : MS_NODEV) |
                              ((m->flags & STK_MF_NOEXEC) ? MS_NOEXEC : 0) | ((m->flags & STK_MF_WRITABLE) ? 0 : MS_RDONLY);
        int dst = open_beneath(root, m->target, STK_MAKE_DIR, 0755);
        CHECK(dst >= 0, STK_STEP_MOUNT, m->target);
        CHECK(mount_on(dst, m->source, flags, m->data) == 0, STK_STEP_MOUNT, m->target);
        close(dst);
        return;
    }
    case STK_MOUNT_DIR: {
        int dst = open_beneath(root, m->target, STK_MAKE_DIR, m->mode ? m->mode : 0755);
        CHECK(dst >= 0, STK_STEP_MOUNT, m->target);
        close(dst);
        return;
    }
    case STK_MOUNT_SYMLINK: {
        /* The parent directory by fd, then the link by name in it. */
        char parent[4096];
        size_t n = s_len(m->target);
        if (n >= sizeof parent) fail(p, STK_STEP_MOUNT, ENAMETOOLONG, m->target);
        memcpy(parent, m->target, n + 1);
        while (n > 0 && parent[n] != '/') n--;
        parent[n] = 0;
        int dir = open_beneath(root, parent, STK_MAKE_DIR, 0755);
        CHECK(dir >= 0, STK_STEP_MOUNT, m->target);
        CHECK(symlinkat(m->source, dir, &m->target[n + 1]) == 0 || errno == EEXIST, STK_STEP_MOUNT, m->target);
        close(dir);
        return;
    }
    case STK_MOUNT_MASK:
        mask_path(p, root, m, mc);
        return;
    case STK_MOUNT_RO: {
        /* /proc/sys and friends: a read-only copy of the mount onto itself. */
        int t = open_masked(root, mc, m->target);
        if (t < 0 && errno == ENOENT) return;
        CHECK(t >= 0 && bind_fd(t, t, 1, 1, 1) == 0, STK_STEP_MASK, m->target);
        close(t);
        return;
    }
    default:
        fail(p, STK_STEP_MOUNT, EINVAL, m->target);
    }
}

/*
 * OCI linux.sysctl: each key opened beneath the host's procfs (never a
 * path the container's rootfs or mounts could shape), one name at a time
 * with no link followed, and written. net, ipc and uts sysctls resolve in
 * the namespaces of the process that opens them: ours, the container's.
 */
static void write_sysctls(const struct stk_plan *p) {
    int dir = open2(AT_FDCWD, "/oldroot/proc/sys", O_PATH | O_DIRECTORY, RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS);
    CHECK(dir >= 0, STK_STEP_SYSCTL, "/proc/sys");
    struct statfs fs;
    if (fstatfs(dir, &fs) < 0 || fs.f_type != 0x9fa0 /* PROC_SUPER_MAGIC */) fail(p, STK_STEP_SYSCTL, EXDEV, "/proc/sys is not procfs");
    for (uint32_t i = 0; i < p->n_sysctls; i++) {
        int fd = open2(dir, p->sysctl_keys[i], O_WRONLY, STK_RESOLVE_BENEATH);
        CHECK(fd >= 0, STK_STEP_SYSCTL, p->sysctl_keys[i]);
        size_t n = s_len(p->sysctl_values[i]);
        ssize_t w;
        do w = write(fd, p->sysctl_values[i], n);
        while (w < 0 && errno == EINTR);
        CHECK(w == (ssize_t)n, STK_STEP_SYSCTL, p->sysctl_keys[i]);
        close(fd);
    }
    close(dir);
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

    /* The jail's root: its own small tmpfs, nosuid and nodev. Every mount
     * below is resolved beneath this fd. An OCI container's root is its
     * bundle's rootfs instead, opened and checked like any bind source and
     * bound (nosuid, nodev) on /newroot. */
    if (p->root_source) {
        struct stk_mount r = {.source = p->root_source, .src_type = S_IFDIR, .src_dev = p->root_dev, .src_ino = p->root_ino};
        /* The launcher's fd when it gave one: a bundle below a directory
         * only host root may search (containerd's state) cannot be reached
         * by path with the jail's ids. Still checked against what it saw. */
        if (p->root_fd > 0) {
            /* The launcher's detached copy (already nosuid, nodev): still the directory it checked. */
            struct stat rs;
            if (fstat(p->root_fd, &rs) < 0 || !S_ISDIR(rs.st_mode) || (uint64_t)rs.st_dev != p->root_dev ||
                (uint64_t)rs.st_ino != p->root_ino)
                fail(p, STK_STEP_NEW_ROOT, ESTALE, p->root_source);
            int dst = open("/newroot", O_PATH | O_DIRECTORY | O_CLOEXEC);
            CHECK(dst >= 0 && syscall(SYS_move_mount, p->root_fd, "", dst, "", MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH) == 0,
                  STK_STEP_NEW_ROOT, p->root_source);
            close(dst);
        } else {
            int src = open_source(&r);
            CHECK(src >= 0, STK_STEP_NEW_ROOT, p->root_source);
            int dst = open("/newroot", O_PATH | O_DIRECTORY | O_CLOEXEC);
            CHECK(dst >= 0 && bind_fd(src, dst, 0, 1, 0) == 0, STK_STEP_NEW_ROOT, p->root_source);
            close(src);
            close(dst);
        }
    } else {
        CHECK(mount("tmpfs", "/newroot", "tmpfs", MS_NOSUID | MS_NODEV, p->root_options) == 0, STK_STEP_NEW_ROOT, "/newroot");
    }
    /* The container's root tree was cloned from the host's: its own
     * propagation now (rootfsPropagation; private unless it says slave or
     * unbindable), so that no mount crosses between it and the host's. */
    if (p->root_source) {
        unsigned long prop = p->root_propagation ? (unsigned long)p->root_propagation : MS_PRIVATE;
        CHECK(mount(NULL, "/newroot", NULL, MS_REC | prop, NULL) == 0, STK_STEP_NEW_ROOT, "rootfsPropagation");
    }
    int root = open("/newroot", O_PATH | O_DIRECTORY | O_CLOEXEC);
    CHECK(root >= 0, STK_STEP_NEW_ROOT, "/newroot");

    struct mask_cache masks = {.parent_fd = -1, .source_fd = -1};
    for (uint32_t i = 0; i < p->n_mounts; i++) apply_mount(p, root, &p->mounts[i], &masks);
    mask_cache_drop(&masks);
    /* No fd and no working directory inside the host's tree survive the
     * set-up (each mount closed its own; mount_on left us in a target). */
    close(root);
    CHECK(chdir("/") == 0, STK_STEP_NEW_ROOT, "/");
    if (p->n_sysctls > 0) write_sysctls(p);

    /* OCI hooks (see stk_plan.hooks_pause): tell the launcher the mounts
     * are made and wait. Its helper shows /newroot at the rootfs's host
     * path for the hooks and then pivots the namespace into it, which
     * moves our root and working directory (both the staging root now)
     * with it. EOF: the launcher gave up (it kills us too). */
    if (p->hooks_pause) {
        struct stk_error paused;
        memset(&paused, 0, sizeof paused);
        paused.step = STK_STEP_HOOKS;
        write_all(p->error_fd, &paused, sizeof paused);
        char go = 0;
        ssize_t n;
        do n = read(p->sync_fd, &go, 1);
        while (n < 0 && errno == EINTR);
        if (n != 1) _exit(1);
        CHECK(chdir("/") == 0, STK_STEP_HOOKS, "/");
        /* Read-only only now: createContainer hooks may write into the rootfs (runc's order). */
        if (p->root_readonly) CHECK(restrict_mount_path("/", 1, 1, 0) == 0, STK_STEP_ROOT_READONLY, "/");
        return;
    }

    /* Nothing in the jail may create files in its root. */
    if (p->root_readonly && p->root_source)
        CHECK(restrict_mount_path("/newroot", 1, 1, 0) == 0, STK_STEP_ROOT_READONLY, "/");
    else if (p->root_readonly)
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
 *
 * The launcher's own fds below STK_PARK_FD_MIN are closed here, not only
 * marked: this process holds a copy of a launcher's whole fd table (a
 * daemon holding a thousand jails has thousands of fds), and once the
 * profile's RLIMIT_NOFILE is set, a new fd needs a free number below it.
 * With every low number taken by the launcher's copies, the steps after
 * this one (the init's go pipe, Landlock's ruleset and rule paths) would
 * fail with EMFILE. Everything this process still needs lies at or above
 * STK_PARK_FD_MIN (move_high) or is a passed fd's target.
 */
static void close_low_fds(const struct stk_plan *p) {
    /* One bit per number below STK_PARK_FD_MIN: the passed fds' targets. */
    uint64_t keep[STK_PARK_FD_MIN / 64] = {0};
    for (uint32_t i = 0; i < p->n_fds; i++)
        if (p->fds[i].to >= 0 && p->fds[i].to < STK_PARK_FD_MIN) keep[p->fds[i].to / 64] |= 1ULL << (p->fds[i].to % 64);
    /* close_range over each run of numbers that is not a target. */
    int first = 3;
    for (int fd = 3; fd <= STK_PARK_FD_MIN; fd++) {
        int kept = fd < STK_PARK_FD_MIN && (keep[fd / 64] >> (fd % 64)) & 1;
        if (fd < STK_PARK_FD_MIN && !kept) continue;
        if (first < fd && syscall(SYS_close_range, first, fd - 1, 0) < 0) {
            /* Kernels before 5.9: one by one (EBADF for the free ones). */
            for (int f = first; f < fd; f++) close(f);
        }
        first = fd + 1;
    }
}

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
    close_low_fds(p);
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
    /* An OCI container keeps the capabilities its config.json grants (in
     * its own user namespace): root keeps root's execve semantics there, so
     * SECBIT_NOROOT is left out; no_new_privs below still caps what an
     * execve can gain at the permitted set given here. */
    unsigned long bits = SECBIT_NO_SETUID_FIXUP | SECBIT_NO_SETUID_FIXUP_LOCKED | SECBIT_KEEP_CAPS_LOCKED;
    if (!p->oci_caps) bits |= SECBIT_NOROOT | SECBIT_NOROOT_LOCKED;
    CHECK(prctl(PR_SET_SECUREBITS, bits, 0, 0, 0) == 0, STK_STEP_SECUREBITS, "PR_SET_SECUREBITS");
    for (int cap = 0; cap <= p->cap_last_cap; cap++) {
        if (p->oci_caps && cap < 64 && (p->cap_bounding >> cap) & 1) continue;
        CHECK(prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) == 0 || errno == EINVAL, STK_STEP_BOUNDING, "PR_CAPBSET_DROP");
    }
    CHECK(prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) == 0 || errno == EINVAL, STK_STEP_AMBIENT,
          "PR_CAP_AMBIENT_CLEAR_ALL");
    if (p->drop_groups) CHECK(syscall(SYS_setgroups, p->n_groups, p->groups) == 0, STK_STEP_GROUPS, "setgroups");
    CHECK(syscall(SYS_setresgid, p->gid, p->gid, p->gid) == 0, STK_STEP_SETGID, "setresgid");
    CHECK(syscall(SYS_setresuid, p->uid, p->uid, p->uid) == 0, STK_STEP_SETUID, "setresuid");
    /* The launcher's session keyring came with clone: replace it with a new
     * anonymous one owned by the jail's uid, so no key of the launcher is
     * in reach even where the profile lets keyctl through seccomp. */
    CHECK(syscall(SYS_keyctl, KEYCTL_JOIN_SESSION_KEYRING, NULL, 0, 0, 0) >= 0, STK_STEP_KEYRING,
          "keyctl(KEYCTL_JOIN_SESSION_KEYRING)");
    struct __user_cap_header_struct hdr = {.version = _LINUX_CAPABILITY_VERSION_3, .pid = 0};
    struct __user_cap_data_struct data[2];
    memset(data, 0, sizeof data);
    if (p->oci_caps) {
        data[0].effective = (uint32_t)p->cap_effective;
        data[1].effective = (uint32_t)(p->cap_effective >> 32);
        data[0].permitted = (uint32_t)p->cap_permitted;
        data[1].permitted = (uint32_t)(p->cap_permitted >> 32);
        data[0].inheritable = (uint32_t)p->cap_inheritable;
        data[1].inheritable = (uint32_t)(p->cap_inheritable >> 32);
    }
    CHECK(syscall(SYS_capset, &hdr, data) == 0, STK_STEP_CAPS, "capset");
    /* Ambient capabilities (a non-root process keeps them through execve);
     * each must be permitted and inheritable, as the spec requires. */
    for (int cap = 0; p->oci_caps && cap <= p->cap_last_cap && cap < 64; cap++)
        if ((p->cap_ambient >> cap) & 1)
            CHECK(prctl(PR_CAP_AMBIENT, 2 /* PR_CAP_AMBIENT_RAISE */, cap, 0, 0) == 0, STK_STEP_AMBIENT, "PR_CAP_AMBIENT_RAISE");
    /* A credential change clears the parent-death signal: set it again. */
    if (!p->detached) CHECK(prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) == 0, STK_STEP_PDEATHSIG, "PR_SET_PDEATHSIG");
    die_if_launcher_gone(p);
    CHECK(prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0, STK_STEP_NO_NEW_PRIVS, "PR_SET_NO_NEW_PRIVS");
}

/* Access rights Landlock accepts on a non-directory file. */
#define STK_LL_FILE_RIGHTS (LANDLOCK_ACCESS_FS_EXECUTE | LANDLOCK_ACCESS_FS_WRITE_FILE | \
                            LANDLOCK_ACCESS_FS_READ_FILE | (1ULL << 14) /* TRUNCATE */ | (1ULL << 15) /* IOCTL_DEV */)

/* Whether the worker of a jail built ahead waits in stockade-init's
 * waiting program (via_exec_waiter): its filter goes first, and PID 1 was
 * exec'd from init_fd. */
static int via_waiter_wanted(const struct stk_plan *p) {
    return p->via_wait && p->via_filter_first && p->seccomp_len > 0 && p->use_reaper && p->init_fd >= 0;
}

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
        /* Resolved in the jail's root without following any link: a rule
         * names the path itself, never what a link there (an OCI image's,
         * or one planted before `start`) points at. */
        int fd = open2(AT_FDCWD, r->path, O_PATH | O_CLOEXEC, RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS);
        if (fd < 0) {
            if (errno == ENOENT && r->optional) continue;
            char detail[300];
            if (errno == ELOOP && s_join(detail, sizeof detail, r->path,
                                         " (a symbolic link on the way; Landlock rules do not follow links)"))
                fail(p, STK_STEP_LANDLOCK, errno, detail);
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
    /* The waiting program of a jail built ahead (via_exec_waiter) is
     * exec'd under this domain: that one file, by the fd PID 1 was exec'd
     * from, may be executed and read. */
    uint64_t waiter_access = (LANDLOCK_ACCESS_FS_EXECUTE | LANDLOCK_ACCESS_FS_READ_FILE) & p->landlock_fs_handled;
    if (via_waiter_wanted(p) && waiter_access != 0) {
        struct landlock_path_beneath_attr pb = {.allowed_access = waiter_access, .parent_fd = p->init_fd};
        if (syscall(SYS_landlock_add_rule, rs, LANDLOCK_RULE_PATH_BENEATH, &pb, 0) < 0)
            fail(p, STK_STEP_LANDLOCK, errno, "stockade-init (the waiting program of a jail built ahead)");
    }
    if (syscall(SYS_landlock_restrict_self, rs, p->landlock_restrict_flags) < 0)
        fail(p, STK_STEP_LANDLOCK, errno, "landlock_restrict_self");
    close(rs);
}

/* Writes `v` in decimal into buf (at least 12 bytes). */
static void u32_to_dec(char *buf, uint32_t v) {
    char tmp[12];
    int n = 0;
    do { tmp[n++] = (char)('0' + v % 10); v /= 10; } while (v);
    for (int i = 0; i < n; i++) buf[i] = tmp[n - 1 - i];
    buf[n] = 0;
}

/*
 * PID 1 becomes stockade-init, exec'd from the fd the launcher opened
 * before the root was switched: nothing of the launcher (its memory, its
 * argv, its environment) stays in the jail. The init gets exactly:
 *   argv = {"stockade-init", "<worker pid>"}, an empty environment,
 *   fd 3 = the status pipe (it writes the worker's raw wait status),
 *   fd 4 = the go pipe (it writes one byte once it is non-dumpable; the
 *          worker waits for that byte before it runs anything of its own).
 * Every other fd is closed or close-on-exec, stdio included.
 */
#define STK_LL_SCOPE_SIGNAL 2ULL

/* Whether PID 1 is the root of a Landlock domain that scopes signals (set
 * only outside a pid namespace); stockade-init is told with argv[2]. */
static int reaper_confined;

/*
 * Outside a pid namespace nothing tears the jail down when its first process
 * dies, and setsid() plus a double fork leaves the process tree. The jail's
 * processes are tracked by a Landlock domain instead: PID 1 restricts itself
 * to a domain that only scopes signals before it forks the worker, so every
 * process of the jail, however it forked, lives in that domain or one nested
 * in it, and a signalling process in a scoped domain reaches no process
 * outside it. kill(-1, SIGKILL) from stockade-init then kills exactly the
 * jail. The worker, in a nested domain, cannot signal PID 1. The domain,
 * the subreaper flag and the parent-death signal survive the exec of the init.
 */
static void confine_reaper(const struct stk_plan *p) {
    if ((p->clone_flags & CLONE_NEWPID) || p->landlock_abi < 6 || !(p->landlock_scoped & STK_LL_SCOPE_SIGNAL)) return;
    struct {
        uint64_t fs;
        uint64_t net;
        uint64_t scoped;
    } attr = {0, 0, STK_LL_SCOPE_SIGNAL};
    int rs = (int)syscall(SYS_landlock_create_ruleset, &attr, sizeof attr, 0);
    if (rs < 0) fail(p, STK_STEP_LANDLOCK, errno, "landlock_create_ruleset (PID 1's signal scope)");
    if (syscall(SYS_landlock_restrict_self, rs, 0) < 0) fail(p, STK_STEP_LANDLOCK, errno, "landlock_restrict_self (PID 1)");
    close(rs);
    /* Orphans of the jail come to PID 1, not to the host's init. */
    CHECK(prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0, STK_STEP_REAPER, "PR_SET_CHILD_SUBREAPER");
    /* When the launcher dies, PID 1 kills the jail instead of dying alone
     * (not an OCI container's: it outlives `create`). */
    if (!p->detached)
        CHECK(prctl(PR_SET_PDEATHSIG, STK_SIG_KILL_JAIL, 0, 0, 0) == 0, STK_STEP_PDEATHSIG, "PR_SET_PDEATHSIG");
    reaper_confined = 1;
}

__attribute__((noreturn)) static void exec_init(const struct stk_plan *p, pid_t worker, int go_write) {
    /* Above 4 first, so that the dups below cannot overwrite them. */
    int status = fcntl(p->status_fd, F_DUPFD_CLOEXEC, 5);
    int go = fcntl(go_write, F_DUPFD_CLOEXEC, 5);
    CHECK(status >= 0 && go >= 0, STK_STEP_INIT, "move init fds");
    CHECK(dup3(status, 3, 0) == 3 && dup3(go, 4, 0) == 4, STK_STEP_INIT, "place init fds");
    /* The worker's fds (stdio, the channel) close when the worker exits. */
    syscall(SYS_close_range, 0, 2, 0);
    syscall(SYS_close_range, 5, ~0U, CLOSE_RANGE_CLOEXEC);
    char pid_text[12];
    u32_to_dec(pid_text, (uint32_t)worker);
    char *const argv[] = {"stockade-init", pid_text, reaper_confined ? "domain" : NULL, NULL};
    char *const envp[] = {NULL};
    /* init_fd is close-on-exec; that is fine for an ELF executable. */
    syscall(SYS_execveat, p->init_fd, "", argv, envp, AT_EMPTY_PATH);
    fail(p, STK_STEP_INIT, errno, "execveat(stockade-init)");
}

/*
 * Before a worker waits (for `start`, or for a jail built ahead's command):
 * every close-on-exec fd goes, but the ones in keep (-1 for none). Below
 * STK_PARK_FD_MIN only passed fds' targets are left (close_low_fds), which
 * are not close-on-exec; at and above it every fd is (arrange_fds marked
 * them all: the parked pipe ends and the launcher's own copies, however
 * high their numbers), so all of those go but the kept ones, which
 * move_high put there.
 */
static void close_before_wait(int keep_a, int keep_b) {
    for (int fd = 3; fd < STK_PARK_FD_MIN; fd++) {
        int flags = fcntl(fd, F_GETFD);
        if (flags >= 0 && (flags & FD_CLOEXEC)) close(fd);
    }
    int lo = keep_a < keep_b ? keep_a : keep_b, hi = keep_a < keep_b ? keep_b : keep_a;
    int keep[2] = {lo, hi};
    unsigned int first = STK_PARK_FD_MIN;
    int ok = 1;
    for (int i = 0; i < 2; i++) {
        if (keep[i] < STK_PARK_FD_MIN || (unsigned int)keep[i] < first) continue;
        if ((unsigned int)keep[i] > first) ok &= syscall(SYS_close_range, first, keep[i] - 1, 0) == 0;
        first = (unsigned int)keep[i] + 1;
    }
    ok &= syscall(SYS_close_range, first, ~0U, 0) == 0;
    if (!ok) {
        /* Kernels before 5.9: one by one, as far as arrange_fds marks them. */
        for (int fd = STK_PARK_FD_MIN; fd < 4096; fd++)
            if (fd != keep_a && fd != keep_b) close(fd);
    }
}

/*
 * `stockade run --via`: the jail is built and the worker waits here for
 * the one command it will run. What arrives was sent by the daemon (which
 * checked the caller and the caller's fds), but it is read as untrusted
 * input anyway: one packet, exactly three fds, every count and string
 * checked against the message's length. Its strings stay in this static
 * buffer (the worker's own memory once PID 1 has exec'd the init) until
 * the execve. Nothing here allocates.
 */
static char via_message[STK_VIA_MAX_MESSAGE];
static char *via_strings[STK_VIA_MAX_STRINGS + 3];

static void via_receive(struct stk_plan *p) {
    /* Built: the launcher sees end-of-file on the error pipe once it is
     * closed below with the rest, so a jail counts as built only when it
     * holds nothing but its socket. From here on a failure goes to via_fd
     * (see fail). */
    p->error_fd = -1;
    /* While it waits, the jail holds nothing of the daemon's but the
     * socket. 0, 1 and 2 are /dev/null, replaced below. */
    close_before_wait(p->via_fd, -1);
    struct stk_via_command command;
    int err = 0;
    const char *detail = NULL;
    int got = stk_via_receive(p->via_fd, via_message, sizeof via_message, via_strings, &command, &err, &detail);
    /* End of file: the daemon gave the jail up (it is being torn down). */
    if (got == 0) _exit(1);
    if (got < 0) fail(p, STK_STEP_VIA_WAIT, err, detail);
    /* The caller's fds on 0, 1, 2, parked above every passed fd's number first. */
    err = stk_via_place_fds(command.fds, STK_PARK_FD_MIN, &detail);
    if (err) fail(p, STK_STEP_FDS, err, detail);
    p->exec_paths = (const char *const *)&via_strings[0];
    p->n_exec_paths = command.n_paths;
    p->argv = &via_strings[command.n_paths + 1];
    p->envp = &via_strings[command.n_paths + 1 + command.argc + 1];
}

static void exec_worker(const struct stk_plan *p) {
    const char *failed = NULL;
    int err = stk_exec_first(p->exec_paths, p->n_exec_paths, p->argv, p->envp, &failed);
    fail(p, STK_STEP_EXEC, err, failed ? failed : p->argv[0] ? p->argv[0] : "(no program)");
}

/*
 * A jail built ahead whose filter is already loaded: the worker execs
 * stockade-init's waiting program (`stockade-init via FD`, from the fd PID
 * 1 was exec'd from) to wait for the command. The exec drops the worker's
 * copy of the daemon's memory now, while the jail is built, instead of at
 * the command's execve, which the caller waits for, and no copy of the
 * daemon's memory waits in the jail. The socket stays open across it (and
 * only the socket: every other fd above 2 is close-on-exec; the error
 * pipe's close tells the launcher the jail is built); the Landlock domain
 * (which lets this one file be executed, see apply_landlock) and the
 * filter stay in force.
 */
static void via_exec_waiter(const struct stk_plan *p) {
    CHECK(fcntl(p->via_fd, F_SETFD, 0) == 0, STK_STEP_VIA_WAIT, "keep the command socket open across execve");
    char fd_text[12];
    u32_to_dec(fd_text, (uint32_t)p->via_fd);
    char *const argv[] = {"stockade-init", "via", fd_text, NULL};
    char *const envp[] = {NULL};
    syscall(SYS_execveat, p->init_fd, "", argv, envp, AT_EMPTY_PATH);
    fail(p, STK_STEP_VIA_WAIT, errno, "execveat(stockade-init via, the waiting program)");
}

/* The worker's own stack while it shares PID 1's memory (see child_main). */
static char worker_stack[256 * 1024] __attribute__((aligned(16)));

/* The go pipe between PID 1 and the worker (see child_main); -1: none. */
static int go_pipe[2] = {-1, -1};

/*
 * Hands the seccomp listener to the launcher: one byte on notify_fd with the
 * fd attached (SCM_RIGHTS). It runs under the filter, so the launcher checks
 * beforehand that the filter allows sendmsg. Neither the listener nor the
 * socket is closed here (a close the profile denies would wait for a
 * supervisor): both are close-on-exec, so the worker never holds them.
 */
static void send_listener(const struct stk_plan *p, int listener) {
    char byte = 'L';
    struct iovec iov = {.iov_base = &byte, .iov_len = 1};
    union {
        struct cmsghdr header;
        char bytes[CMSG_SPACE(sizeof(int))];
    } control;
    memset(&control, 0, sizeof control);
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.bytes,
                         .msg_controllen = sizeof control.bytes};
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(c), &listener, sizeof(int));
    ssize_t n;
    do n = sendmsg(p->notify_fd, &msg, MSG_NOSIGNAL);
    while (n < 0 && errno == EINTR);
    CHECK(n == 1, STK_STEP_SECCOMP, "send the seccomp listener to the launcher");
}

/* Loads the filter. With a listener requested, the kernel returns its fd
 * (close-on-exec), which goes to the launcher's supervisor at once. */
static void load_seccomp(const struct stk_plan *p) {
    struct sock_fprog prog = {.len = (unsigned short)p->seccomp_len, .filter = (struct sock_filter *)p->seccomp_filter};
    unsigned int flags = p->seccomp_flags;
    long fd = syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, flags, &prog);
    /* WAIT_KILLABLE_RECV (Linux 6.0: a received call waits for its answer
     * through ordinary signals) is a refinement: an older kernel refuses
     * the flag with EINVAL before loading anything, so load without it. */
    if (fd < 0 && errno == EINVAL && (flags & SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV)) {
        flags &= ~(unsigned int)SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV;
        fd = syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, flags, &prog);
    }
    CHECK(fd >= 0, STK_STEP_SECCOMP, "seccomp");
    if (flags & SECCOMP_FILTER_FLAG_NEW_LISTENER) send_listener(p, (int)fd);
}

/*
 * OCI startContainer hooks: each a child of the worker, which is already
 * under its Landlock domain and seccomp filter (a hook lives in the
 * container's rootfs, which the container could have written), with the
 * state on its stdin. A hook that fails or outlives its timeout stops the
 * container before its program runs; the step goes to its stderr.
 */
static void run_start_hooks(const struct stk_plan *p) {
    for (uint32_t i = 0; i < p->n_start_hooks; i++) {
        const struct stk_hook *h = &p->start_hooks[i];
        long pid = syscall(SYS_clone, SIGCHLD, 0, 0, 0, 0);
        if (pid < 0) fail(p, STK_STEP_START_HOOK, errno, h->path);
        if (pid == 0) {
            if (p->start_state_fd >= 0) {
                lseek(p->start_state_fd, 0, SEEK_SET);
                if (dup2(p->start_state_fd, 0) < 0) _exit(126);
            }
            execve(h->path, h->argv, h->envp);
            _exit(errno == ENOENT ? 127 : 126);
        }
        struct timespec started, now;
        clock_gettime(CLOCK_MONOTONIC, &started);
        siginfo_t info;
        for (;;) {
            memset(&info, 0, sizeof info);
            int r = waitid(P_PID, (id_t)pid, &info, WEXITED | WNOHANG);
            if (r < 0 && errno == EINTR) continue;
            if (r < 0) fail(p, STK_STEP_START_HOOK, errno, h->path);
            if (info.si_pid == pid) break;
            clock_gettime(CLOCK_MONOTONIC, &now);
            uint64_t ms = (uint64_t)(now.tv_sec - started.tv_sec) * 1000 + (uint64_t)(now.tv_nsec / 1000000) -
                          (uint64_t)(started.tv_nsec / 1000000);
            if (h->timeout_ms && ms > h->timeout_ms) {
                kill((pid_t)pid, SIGKILL);
                waitid(P_PID, (id_t)pid, &info, WEXITED);
                fail(p, STK_STEP_START_HOOK, ETIMEDOUT, h->path);
            }
            struct timespec pause = {0, 2000000};
            nanosleep(&pause, NULL);
        }
        if (info.si_code == CLD_EXITED && info.si_status == 0) continue;
        char num[12], detail[200];
        u32_to_dec(num, (uint32_t)info.si_status);
        const char *how = info.si_code == CLD_EXITED ? ": exited with status " : ": killed by signal ";
        if (!s_join(detail, sizeof detail, h->path, how) || !s_join(detail, sizeof detail, detail, num))
            fail(p, STK_STEP_START_HOOK, ECHILD, h->path);
        fail(p, STK_STEP_START_HOOK, ECHILD, detail);
    }
}

/* The worker's last steps: wait for the init, unblock signals, Landlock, seccomp, execve. */
static int worker_main(void *arg) {
    const struct stk_plan *p = arg;
    if (go_pipe[0] >= 0) {
        /* Run nothing of the jail's until PID 1 is stockade-init and
         * non-dumpable: no window in which the worker could ptrace or read
         * a PID 1 that still holds a copy of the launcher. EOF: PID 1 failed. */
        close(go_pipe[1]);
        char go = 0;
        ssize_t n;
        do n = read(go_pipe[0], &go, 1);
        while (n < 0 && errno == EINTR);
        if (n != 1) _exit(1);
        close(go_pipe[0]);
    }
    uint64_t none = 0;
    syscall(SYS_rt_sigprocmask, SIG_SETMASK, &none, NULL, 8);
    if (p->exec_wait) {
        /* OCI create: the container is built. A program that is not there
         * fails create, not start; then the launcher is told (EOF on the
         * error pipe) and the worker blocks until `start` writes a byte
         * into the exec FIFO. Later failures go to the container's stderr. */
        int found = 0;
        for (uint32_t i = 0; i < p->n_exec_paths && !found; i++) found = access(p->exec_paths[i], X_OK) == 0;
        if (!found) fail(p, STK_STEP_EXEC, ENOENT, p->argv[0] ? p->argv[0] : "(no program)");
        /* Landlock now, not after `start`: its rules hold the inodes the
         * container's root has at create, so nothing done to the rootfs
         * before `start` changes what they grant, and a rule that cannot
         * be made fails create. */
        apply_landlock(p);
        close(p->error_fd);
        ((struct stk_plan *)p)->error_fd = -1;
        /* While it waits, the worker holds nothing of the launcher's: every
         * fd but the passed ones (left without close-on-exec by
         * arrange_fds) and the FIFO is closed now, not at execve, so no
         * pipe of the caller stays open for as long as the container waits. */
        close_before_wait(p->exec_wait_fd, p->n_start_hooks > 0 ? p->start_state_fd : -1);
        char byte = 0;
        ssize_t n;
        do n = read(p->exec_wait_fd, &byte, 1);
        while (n < 0 && errno == EINTR);
        if (n != 1) fail(p, STK_STEP_EXEC_WAIT, n < 0 ? errno : EPIPE, "exec fifo");
        close(p->exec_wait_fd);
    }
    /* A jail built ahead takes its Landlock domain, and where the launcher
     * found that the filter lets the wait through (via_filter_first), its
     * filter, before it waits: both are then in force already when the
     * command arrives, and a rule or a filter that cannot be applied fails
     * the build (error_fd is still open), not the caller's run. */
    int filter_first = p->via_wait && p->via_filter_first && p->seccomp_len > 0;
    if (p->via_wait) {
        apply_landlock(p);
        if (filter_first) {
            load_seccomp(p);
            if (via_waiter_wanted(p)) via_exec_waiter(p);
        }
        via_receive((struct stk_plan *)p);
    } else if (!p->exec_wait) {
        apply_landlock(p);
    }
    /* Last: from here on every system call goes through the filter. */
    if (p->seccomp_len > 0 && !filter_first) load_seccomp(p);
    if (p->n_start_hooks > 0) run_start_hooks(p);
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

__attribute__((noreturn)) static void child_main(const struct stk_plan *plan, int late_cgroupns) {
    /* A private copy: the pipe fd numbers below change. */
    struct stk_plan local = *plan;
    const struct stk_plan *p = &local;

    /* This process is a copy of the launcher's memory until it execs:
     * nothing in the jail may ptrace it or read it through /proc. A root
     * launcher makes it non-dumpable at once; a rootless one must first
     * open our /proc files as their owner to write the id maps (a
     * non-dumpable process's files belong to root), so we wait for that
     * (no process of the jail exists before it). */
    if (p->become_root) prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);

    /* The launcher's ends of our pipes are not ours to hold. */
    for (int i = 0; i < 4; i++)
        if (p->parent_fds[i] >= 0) close(p->parent_fds[i]);

    /* Our own pipe ends move above every number a passed fd may land on
     * (0..255), so arranging the worker's fds cannot overwrite them. */
    move_high(p, &local.error_fd);
    move_high(p, &local.sync_fd);
    move_high(p, &local.status_fd);
    if (p->use_reaper) move_high(p, &local.init_fd);
    if (p->exec_wait) move_high(p, &local.exec_wait_fd);
    if (p->notify_fd >= 0) move_high(p, &local.notify_fd);
    if (p->n_start_hooks > 0 && p->start_state_fd >= 0) move_high(p, &local.start_state_fd);
    if (p->via_wait) move_high(p, &local.via_fd);

    /* Die with the launcher; the go-ahead pipe covers the race before this.
     * An OCI container (detached) outlives `create` by design. */
    if (!p->detached) CHECK(prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) == 0, STK_STEP_PDEATHSIG, "PR_SET_PDEATHSIG");
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
    prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);

    /* The launcher placed us in the jail's cgroup only now (a v1 host, or
     * no CLONE_INTO_CGROUP): a cgroup namespace made by clone3 would be
     * rooted at the launcher's cgroup and show its host path. Make it here,
     * rooted where we are now, as clone3 does on v2. */
    if (late_cgroupns) CHECK(unshare(CLONE_NEWCGROUP) == 0, STK_STEP_CGROUPNS, "unshare(CLONE_NEWCGROUP)");

    /* Namespaces joined rather than made (an OCI pod's shared ones, or an
     * exec into a running container), the user namespace first, so that
     * the others are joined with the capabilities it gives. */
    for (uint32_t i = 0; i < p->n_join; i++)
        CHECK(setns(p->join_fds[i], p->join_types[i]) == 0, STK_STEP_SETNS,
              p->join_types[i] == CLONE_NEWUSER ? "user" : p->join_types[i] == CLONE_NEWNS ? "mnt"
              : p->join_types[i] == CLONE_NEWPID ? "pid" : p->join_types[i] == CLONE_NEWNET ? "net"
              : p->join_types[i] == CLONE_NEWIPC ? "ipc" : p->join_types[i] == CLONE_NEWUTS ? "uts" : "cgroup");

    /* A pod's user namespace joined above: the jail's own namespaces (mnt,
     * cgroup, ...) are made now, inside it, so that its root owns them.
     * We are single-threaded, and already in our cgroup, which a new
     * cgroup namespace is rooted at. */
    if (p->unshare_after_join)
        CHECK(unshare((int)p->clone_flags) == 0, STK_STEP_UNSHARE, "unshare");

    /* A root launcher's uid is not mapped in the jail's user namespace;
     * files made with an unmapped id fail (EOVERFLOW). Take the mapped
     * uid 0 (an unprivileged host id) for the set-up. */
    if (p->become_root) {
        CHECK(syscall(SYS_setresgid, 0, 0, 0) == 0, STK_STEP_BECOME_ROOT, "setresgid(0)");
        CHECK(syscall(SYS_setresuid, 0, 0, 0) == 0, STK_STEP_BECOME_ROOT, "setresuid(0)");
    }

    /* A joined mount namespace (exec) already is the container's root. */
    if (p->skip_root) CHECK(chdir("/") == 0, STK_STEP_CHDIR, "/");
    else build_root(p);

    if (p->hostname) CHECK(sethostname(p->hostname, s_len(p->hostname)) == 0, STK_STEP_HOSTNAME, p->hostname);
    /* A new session has no controlling terminal: no TIOCSTI into the caller's shell. */
    if (p->new_session) CHECK(setsid() >= 0, STK_STEP_SETSID, "setsid");
    /* fds first: a lower RLIMIT_NOFILE would stop the moves above it. */
    arrange_fds(p);
    /* The jail's own pseudo-terminal (never the caller's) becomes the new
     * session's controlling terminal, so that ^C typed into it signals the
     * jail's foreground job. */
    if (p->has_ctty && p->new_session)
        CHECK(ioctl(p->ctty_fd, TIOCSCTTY, 0) == 0, STK_STEP_SETSID, "TIOCSCTTY");
    for (uint32_t i = 0; i < p->n_rlimits; i++) {
        struct rlimit rl = {.rlim_cur = p->rlimits[i].soft, .rlim_max = p->rlimits[i].hard};
        CHECK(syscall(SYS_prlimit64, 0, p->rlimits[i].resource, &rl, NULL) == 0, STK_STEP_RLIMIT, "prlimit");
    }
    drop_privileges(p);
    CHECK(chdir(p->cwd ? p->cwd : "/") == 0, STK_STEP_CHDIR, p->cwd ? p->cwd : "/");
    /* OCI process.umask: only now, the set-up's directories made. */
    if (p->has_umask) umask((mode_t)p->umask);

    if (!p->use_reaper) worker_main((void *)p);

    /* Block everything before the fork so that no signal is lost between
     * fork and the init's wait loop; the worker unblocks. */
    uint64_t all = ~0ULL;
    syscall(SYS_rt_sigprocmask, SIG_SETMASK, &all, NULL, 8);
    confine_reaper(p);
    CHECK(pipe2(go_pipe, O_CLOEXEC) == 0, STK_STEP_REAPER, "pipe2");
    /* The worker is a CLONE_VM child on its own stack: no page tables to
     * copy (PID 1 is a copy of the launcher). PID 1 only execs the init
     * after this, which gives PID 1 a new address space and leaves the old
     * one to the worker alone; the worker reads nothing but the plan (in
     * this frame, which PID 1 never leaves) until the init's go byte. */
    pid_t worker = clone(worker_main, worker_stack + sizeof worker_stack, CLONE_VM | SIGCHLD, (void *)p);
    if (worker < 0) fail(p, STK_STEP_REAPER, errno, "clone");
    close(go_pipe[0]);
    exec_init(p, worker, go_pipe[1]);
}

pid_t stk_spawn(const struct stk_plan *plan, int *pidfd, int *used_into_cgroup) {
    struct clone_args args;
    int child_pidfd = -1;
    memset(&args, 0, sizeof args);
    if (plan->use_reaper && plan->init_fd < 0) return -EBADF;
    /* Namespaces the child makes after joining a user namespace are not cloned. */
    args.flags = (plan->unshare_after_join ? 0 : plan->clone_flags) | CLONE_PIDFD;
    args.pidfd = (uint64_t)(uintptr_t)&child_pidfd;
    args.exit_signal = SIGCHLD;
    *used_into_cgroup = 0;
    if (plan->cgroup_fd >= 0) {
        args.flags |= CLONE_INTO_CGROUP;
        args.cgroup = (uint64_t)plan->cgroup_fd;
    }
    /* Root launchers: the user namespace is made with the jail's own host
     * ids as euid/egid, so the namespace, and every per-user count charged
     * to it (inotify, user namespaces, mqueue bytes, the rest of the
     * ucounts), belongs to that unprivileged host uid, not to root. The raw
     * syscalls change this thread's credentials only. SECBIT_NO_SETUID_FIXUP
     * keeps the effective capabilities through the euid change:
     * CLONE_INTO_CGROUP checks write access to the cgroup as this thread.
     * Real and saved ids stay 0, so the thread can take euid 0 back. */
    int charged = 0, old_bits = 0;
    uid_t ruid, euid, suid;
    gid_t rgid, egid, sgid;
    if (plan->charge_ids) {
        if (getresuid(&ruid, &euid, &suid) < 0 || getresgid(&rgid, &egid, &sgid) < 0) return -errno;
        old_bits = prctl(PR_GET_SECUREBITS, 0, 0, 0, 0);
        if (old_bits < 0) return -errno;
        if (prctl(PR_SET_SECUREBITS, old_bits | SECBIT_NO_SETUID_FIXUP, 0, 0, 0) < 0) return -errno;
        if (syscall(SYS_setresgid, -1, plan->charge_gid, -1) < 0 || syscall(SYS_setresuid, -1, plan->charge_uid, -1) < 0) {
            int e = errno;
            syscall(SYS_setresgid, -1, egid, -1);
            prctl(PR_SET_SECUREBITS, old_bits, 0, 0, 0);
            return -e;
        }
        charged = 1;
    }
    /* A jail placed in its cgroup by the parent after clone (a v1 host, no
     * CLONE_INTO_CGROUP) makes its cgroup namespace itself once it is
     * there (see child_main): one made by clone3 would be rooted at the
     * launcher's cgroup and show the jail its host path. */
    int late_cgroupns = 0;
    int wants_cgroupns = plan->has_cgroup && (args.flags & CLONE_NEWCGROUP);
    if (wants_cgroupns && plan->cgroup_fd < 0) {
        args.flags &= ~(uint64_t)CLONE_NEWCGROUP;
        late_cgroupns = 1;
    }
    long r = syscall(SYS_clone3, &args, sizeof args);
    if (r < 0 && plan->cgroup_fd >= 0 && (errno == EINVAL || errno == EBADF || errno == EOPNOTSUPP || errno == E2BIG)) {
        /* No CLONE_INTO_CGROUP here (kernel < 5.7, or a v1 cgroup fd): the
         * launcher places the child before it releases it. */
        args.flags &= ~(uint64_t)CLONE_INTO_CGROUP;
        args.cgroup = 0;
        if (wants_cgroupns) {
            args.flags &= ~(uint64_t)CLONE_NEWCGROUP;
            late_cgroupns = 1;
        }
        r = syscall(SYS_clone3, &args, sizeof args);
    } else if (r > 0 && plan->cgroup_fd >= 0) {
        *used_into_cgroup = 1;
    }
    int saved = errno;
    if (r == 0) child_main(plan, late_cgroupns);
    if (charged) {
        /* Back to the launcher's own ids and securebits; the effective
         * capabilities never left, so these cannot fail. */
        syscall(SYS_setresuid, -1, euid, -1);
        syscall(SYS_setresgid, -1, egid, -1);
        prctl(PR_SET_SECUREBITS, old_bits, 0, 0, 0);
    }
    if (r < 0) return -saved;
    *pidfd = child_pidfd;
    return (pid_t)r;
}
