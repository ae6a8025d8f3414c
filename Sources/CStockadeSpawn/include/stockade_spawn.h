/*
 * The spawn plan and the C trampoline that carries it out.
 *
 * The parent (Swift) fills one `stk_plan` with everything the child needs:
 * every path, mount, argv and envp string, the seccomp BPF program, the
 * Landlock rules, the fd layout. All of it is allocated before clone3, so
 * the child only ever reads memory and makes raw system calls: no
 * allocation, no locks, no Swift runtime between clone3 and execve.
 */
#ifndef STOCKADE_SPAWN_H
#define STOCKADE_SPAWN_H

#include <stdint.h>
#include <sys/types.h>
#include <linux/filter.h>

#ifdef __cplusplus
extern "C" {
#endif

/*
 * ---- Mount operations, applied in order inside the staging root. ----
 *
 * Paths a jail may have written are never followed. Every `target` is a
 * path inside the jail ("/usr/lib") that the child opens beneath the new
 * root one component at a time, refusing any symlink and any way out of
 * the root (openat2 RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS), creating missing
 * directories on the way; what gets mounted on is that fd. A host `source`
 * ("/oldroot/...") was canonicalised by the launcher, which recorded the
 * file it found (src_dev, src_ino, src_type); the child opens the canonical
 * path without following any symlink, checks it is still that file, and
 * mounts that fd (open_tree + move_mount).
 */
enum stk_mount_kind {
    STK_MOUNT_BIND = 1,   /* bind host `source` at `target` */
    STK_MOUNT_TMPFS = 2,  /* fresh tmpfs at `target`, options in `data` */
    STK_MOUNT_PROC = 3,   /* fresh procfs at `target` (needs the new pid namespace) */
    STK_MOUNT_DEV = 4,    /* minimal /dev at `target` (see stk_dev_node) */
    STK_MOUNT_DIR = 5,    /* mkdir -p `target` (mode in `mode`) */
    STK_MOUNT_SYMLINK = 6,/* symlink `target` -> `source` (source is the link text) */
    STK_MOUNT_MASK = 7,   /* hide `target`: /dev/null over a file, empty ro tmpfs over a dir */
    STK_MOUNT_RO = 8,     /* remount the mount at `target` read-only (e.g. /proc/sys) */
    STK_MOUNT_DEVNODE = 9,/* bind one host device node `source` at `target` */
    STK_MOUNT_FS = 10,    /* fresh filesystem of type `source` (sysfs, mqueue, cgroup2, ...) at `target`, options in `data` */
};

enum stk_mount_flag {
    STK_MF_WRITABLE = 1u << 0, /* leave the bind writable (default: read-only) */
    STK_MF_OPTIONAL = 1u << 1, /* a missing source is skipped, not an error */
    STK_MF_NOEXEC = 1u << 2,   /* add MS_NOEXEC */
    STK_MF_DEV = 1u << 3,      /* allow device nodes (default: nodev) */
    STK_MF_TREE = 1u << 4,     /* BIND: tree_fd is the launcher's detached copy of the source, flags set: attach it */
};

struct stk_mount {
    uint32_t kind;        /* enum stk_mount_kind */
    uint32_t flags;       /* enum stk_mount_flag bits */
    uint32_t mode;        /* DIR/TMPFS: directory mode */
    uint32_t src_type;    /* BIND/DEVNODE: S_IFMT bits the launcher saw at `source`; 0: not recorded */
    const char *source;   /* host path as seen from the staging root ("/oldroot/..."), or link text */
    const char *target;   /* absolute path inside the jail ("/usr"), resolved beneath the new root */
    const char *data;     /* filesystem options (tmpfs: "size=...,mode=...") or NULL */
    uint64_t src_dev;     /* st_dev and st_ino of `source` as the launcher saw it */
    uint64_t src_ino;
    int32_t tree_fd;      /* with STK_MF_TREE: the copy (stk_clone_bind), open in the launcher until the clone */
    int32_t _pad;
};

struct stk_rlimit {
    int32_t resource;
    int32_t _pad;
    uint64_t soft;
    uint64_t hard;
};

/* A passed fd: the parent's `from` appears as `to` (0..255) in the worker. */
struct stk_fd_map {
    int32_t from;
    int32_t to;
};

/* One Landlock path rule: `path` (inside the final root) gets `access`. */
struct stk_landlock_rule {
    const char *path;
    uint64_t access;
    uint32_t optional; /* a missing path is skipped */
    uint32_t _pad;
};

struct stk_landlock_port {
    uint64_t port;
    uint64_t access;
};

/* One OCI startContainer hook, run by the worker (see stk_plan.start_hooks). */
struct stk_hook {
    const char *path;          /* resolved in the container's root */
    char *const *argv;
    char *const *envp;
    uint32_t timeout_ms;       /* 0: no limit */
    uint32_t _pad;
};

struct stk_plan {
    /* clone3 */
    uint64_t clone_flags;      /* CLONE_NEW* bits (CLONE_PIDFD and INTO_CGROUP are added here) */
    int32_t cgroup_fd;         /* >= 0: CLONE_INTO_CGROUP target */
    int32_t use_reaper;        /* PID 1 forks the worker and reaps (set when CLONE_NEWPID) */

    /* pipes shared with the parent; the parent's ends are closed in the child */
    int32_t sync_fd;           /* child reads the go-ahead byte; POLLHUP = parent gone */
    int32_t error_fd;          /* child writes one stk_error record on failure (O_CLOEXEC) */
    int32_t status_fd;         /* reaper writes the worker's raw wait status (4 bytes) */
    int32_t parent_fds[4];     /* the parent's ends, closed first thing in the child; -1 unused */

    /* filesystem: every jail gets a new root and pivots into it */
    const char *staging;       /* host dir to mount the staging tmpfs on, e.g. "/tmp" */
    const char *root_options;  /* tmpfs options for the new root, e.g. "size=16m,mode=0755" */
    const struct stk_mount *mounts;
    uint32_t n_mounts;
    int32_t root_readonly;     /* remount the new root read-only at the end */

    /* identity */
    const char *hostname;      /* NULL: leave it */
    uint32_t uid, gid;         /* ids inside the user namespace */
    int32_t drop_groups;       /* setgroups(0, NULL) (only when setgroups is allowed) */
    int32_t cap_last_cap;      /* from /proc/sys/kernel/cap_last_cap */
    int32_t become_root;       /* setresuid/gid(0) first: a root launcher's own uid is unmapped */
    int32_t _pad2;

    /* process */
    const struct stk_rlimit *rlimits;
    uint32_t n_rlimits;
    int32_t new_session;       /* setsid(): no TIOCSTI through the caller's terminal */
    int32_t has_ctty;          /* after setsid: make ctty_fd (the jail's own pty) the controlling terminal */
    int32_t ctty_fd;           /* its number in the jail */
    const struct stk_fd_map *fds;
    uint32_t n_fds;
    const char *cwd;           /* inside the new root */

    /* Landlock (abi == 0: not applied) */
    int32_t landlock_abi;
    int32_t landlock_required; /* a failure to enforce is fatal */
    uint64_t landlock_fs_handled;
    uint64_t landlock_net_handled;
    uint64_t landlock_scoped;      /* ABI 6+: LANDLOCK_SCOPE_* bits */
    const struct stk_landlock_rule *landlock_rules;
    uint32_t n_landlock_rules;
    uint32_t n_landlock_ports;
    const struct stk_landlock_port *landlock_ports;

    /* seccomp: the finished BPF program, loaded last (len 0: none) */
    const struct sock_filter *seccomp_filter;
    uint32_t seccomp_len;
    uint32_t seccomp_flags;    /* SECCOMP_FILTER_FLAG_* */

    /* execve: candidates are tried in order until one is not ENOENT/ENOTDIR */
    const char *const *exec_paths;
    uint32_t n_exec_paths;
    int32_t _pad1;
    char *const *argv;
    char *const *envp;

    /* PID 1 and kernel accounting */
    int32_t init_fd;           /* O_PATH fd of stockade-init, exec'd as PID 1 (with use_reaper); -1: none */
    int32_t has_cgroup;        /* the jail gets a cgroup (placed by clone3 or, failing that, by the parent) */
    int32_t charge_ids;        /* clone3 with euid/egid = charge_uid/gid on the spawner thread (root launchers) */
    uint32_t charge_uid;       /* host uid the jail's user namespace (and its ucounts) is charged to */
    uint32_t charge_gid;
    int32_t _pad3;

    /* OCI containers (stockade-runtime). All zero for every other jail. */
    const char *root_source;   /* non-NULL: this host directory (a bundle's rootfs, as "/oldroot/...") is bound
                                  as the new root instead of a fresh tmpfs; checked like a bind source */
    uint64_t root_dev, root_ino; /* what the launcher found at root_source */
    int32_t root_fd;           /* with root_source: a detached copy of its mount tree the launcher made
                                  (stk_clone_tree: it may lie below directories only host root may
                                  search), moved onto the new root; 0 or less: bind root_source */
    int32_t _pad5;
    int32_t detached;          /* no parent-death signal: the jail outlives the launcher (create, then exit) */
    int32_t exec_wait;         /* the worker reports success, then blocks reading one byte from exec_wait_fd
                                  before Landlock, seccomp and execve (the exec FIFO `start` writes) */
    int32_t exec_wait_fd;
    int32_t skip_root;         /* a joined mount namespace is the root: no new root is built */
    const int32_t *join_fds;   /* namespaces joined by setns first, in order (the user namespace first) */
    const int32_t *join_types; /* their CLONE_NEW* types */
    uint32_t n_join;
    /* The first join is a user namespace (a pod's) and clone_flags names
     * namespaces to make: clone3 makes none of them; the child makes them
     * with unshare once it has joined, so that the joined user namespace
     * owns them (one clone3 made would belong to the launcher's, where the
     * jail holds no capability). clone_flags never has CLONE_NEWPID then. */
    int32_t unshare_after_join;
    int32_t oci_caps;          /* keep these capability sets instead of clearing all of them */
    uint64_t cap_bounding, cap_effective, cap_permitted, cap_inheritable, cap_ambient;
    const uint32_t *groups;    /* supplementary groups set instead of none (with drop_groups) */
    uint32_t n_groups;
    /* seccomp user notification: >= 0, a unix socket on which the worker
     * sends the listener fd that loading the filter returned (the filter
     * is loaded with SECCOMP_FILTER_FLAG_NEW_LISTENER in seccomp_flags);
     * -1: no listener. The launcher's end of the socket is in parent_fds. */
    int32_t notify_fd;
    /* landlock_restrict_self flags for the worker's domain (ABI 7:
     * LANDLOCK_RESTRICT_SELF_LOG_NEW_EXEC_ON, so that audit reports its
     * denials after execve too); 0 on older kernels. */
    uint32_t landlock_restrict_flags;
    /* OCI hooks (stockade-runtime); all zero for every other jail.
     * hooks_pause: after the mounts, before the root is made read-only and
     * pivoted into, the child reports STK_STEP_HOOKS with errno 0 on
     * error_fd and waits for one more byte on sync_fd. Meanwhile the
     * launcher shows the new root at its host path in the container's
     * mount namespace (stk_oci_hooks_root), runs the createRuntime and
     * createContainer hooks, and makes that root the namespace's root;
     * the child resumes with its root switched (the launcher's pivot_root
     * moves the root of every process of the namespace). */
    int32_t hooks_pause;
    /* startContainer hooks: run one after the other by the worker after
     * `start`, under its Landlock domain and seccomp filter, just before
     * execve; start_state_fd (a memfd the launcher filled with the
     * container's state) is each hook's stdin; -1: none. */
    int32_t start_state_fd;
    const struct stk_hook *start_hooks;
    uint32_t n_start_hooks;
    uint32_t _pad6;
    /* OCI process.umask: set (has_umask) once the root is built, so that
     * the set-up's own directories keep their modes. */
    int32_t has_umask;
    uint32_t umask;
    /* OCI rootfsPropagation of the container's root tree, set with MS_REC
     * right after the tree is attached at /newroot: MS_PRIVATE (0 means
     * this), MS_SLAVE or MS_UNBINDABLE. The launcher cloned the tree from
     * the host's, so without this it would stay a peer of the host's mount
     * and mounts would propagate both ways. */
    uint64_t root_propagation;
    /* OCI linux.sysctl: after the mounts, each value is written to
     * sysctl_keys[i] ("net/ipv4/ip_forward"), opened beneath the host's
     * procfs at /oldroot/proc/sys (checked to be procfs) without following
     * any link. The kernel resolves net, ipc and uts sysctls in the
     * writer's namespaces: the child's, which are the container's. The
     * launcher allows only namespaced keys in namespaces of the container's own. */
    const char *const *sysctl_keys;
    const char *const *sysctl_values;
    uint32_t n_sysctls;
    uint32_t _pad7;
    /* A jail built ahead of its command (`stockade run --via`): with
     * via_wait set, the worker reports success once it is built (EOF on
     * error_fd), then waits on via_fd, a SOCK_SEQPACKET socket to the
     * daemon, for one message: the caller's stdin, stdout and stderr as
     * SCM_RIGHTS and the command (layout: stk_via_header). It puts those
     * fds on 0, 1 and 2, then Landlock, seccomp and execve as any worker.
     * A step that fails from then on is reported as a stk_error on via_fd;
     * a successful execve closes it (close-on-exec).
     * Landlock is applied before the wait (the wait and the hand-over of
     * the fds touch no path). With via_filter_first set, the seccomp
     * filter is loaded before the wait too, so that a caller does not wait
     * for the kernel to check, translate and compile it: the launcher sets
     * it only when the filter allows, whatever their arguments, every call
     * the worker makes between the load and its execve
     * (ViaJail.callsUnderAnEarlyFilter). */
    int32_t via_wait;
    int32_t via_fd;
    int32_t via_filter_first;
    int32_t _pad_via;
    /* OCI terminal: with has_devpts set, devpts_fd is a detached devpts
     * instance the launcher made (stk_devpts_instance) and opened the
     * container's pty in; the child moves it to /dev/pts instead of
     * mounting a fresh one, so the pty is the container's own /dev/pts/N,
     * and binds console_pts ("pts/N", below /dev) over /dev/console. */
    int32_t has_devpts;
    int32_t devpts_fd;
    const char *console_pts;
};

/*
 * The command message a waiting jail receives on via_fd: this header, then
 * n_paths + argc + envc NUL-terminated strings (the execve candidates, then
 * argv, then envp), nothing after them; at most STK_VIA_MAX_MESSAGE bytes
 * and STK_VIA_MAX_STRINGS strings in all.
 */
#define STK_VIA_MAGIC 0x31564b53u /* "SKV1" */
#define STK_VIA_MAX_MESSAGE (128 * 1024)
#define STK_VIA_MAX_STRINGS 8192
struct stk_via_header {
    uint32_t magic;
    uint32_t n_paths;
    uint32_t argc;
    uint32_t envc;
};

/* The i-th host device node every jail's /dev binds ("null", ...), NULL past
 * the last; beside them /dev has a private devpts instance and /dev/shm.
 * `stockade explain` and the device allowlist read this list; there is no other. */
const char *stk_dev_node(int i);

/* The steps, in the order the child runs them; the parent prints their names. */
enum stk_step {
    STK_STEP_NONE = 0,
    STK_STEP_SYNC,          /* wait for the parent's go-ahead */
    STK_STEP_SETNS,         /* join a namespace given by the launcher (OCI: shared or exec) */
    STK_STEP_UNSHARE,       /* OCI: make the jail's namespaces inside the joined user namespace */
    STK_STEP_CGROUPNS,      /* cgroup namespace rooted at the jail's cgroup (parent-placed jails) */
    STK_STEP_PDEATHSIG,     /* die with the launcher */
    STK_STEP_SIGNALS,       /* reset signal mask and dispositions */
    STK_STEP_BECOME_ROOT,   /* take the mapped uid 0 for the set-up (root launchers) */
    STK_STEP_MAKE_PRIVATE,  /* mount --make-rprivate / */
    STK_STEP_STAGING,       /* tmpfs staging root + pivot onto it */
    STK_STEP_NEW_ROOT,      /* tmpfs for the new root */
    STK_STEP_MOUNT,         /* one of the profile's mounts (detail: target) */
    STK_STEP_PROC,          /* mount /proc */
    STK_STEP_DEV,           /* build /dev */
    STK_STEP_MASK,          /* mask a sensitive path */
    STK_STEP_SYSCTL,        /* OCI: write one of linux.sysctl (detail: key) */
    STK_STEP_HOOKS,         /* OCI: the launcher runs createRuntime/createContainer hooks (errno 0: paused) */
    STK_STEP_ROOT_READONLY, /* remount the new root read-only */
    STK_STEP_PIVOT,         /* pivot_root into the new root, detach the old */
    STK_STEP_HOSTNAME,
    STK_STEP_SETSID,
    STK_STEP_FDS,           /* dup passed fds into place, close the rest */
    STK_STEP_RLIMIT,
    STK_STEP_CHDIR,
    STK_STEP_REAPER,        /* fork the worker under PID 1 */
    STK_STEP_SECUREBITS,
    STK_STEP_BOUNDING,      /* drop the capability bounding set */
    STK_STEP_AMBIENT,
    STK_STEP_GROUPS,
    STK_STEP_SETGID,
    STK_STEP_SETUID,
    STK_STEP_KEYRING,       /* a fresh anonymous session keyring */
    STK_STEP_CAPS,          /* clear effective/permitted/inheritable */
    STK_STEP_NO_NEW_PRIVS,
    STK_STEP_INIT,          /* PID 1 execs stockade-init from init_fd */
    STK_STEP_EXEC_WAIT,     /* OCI create: built; wait for `start` */
    STK_STEP_VIA_WAIT,      /* run --via: built; wait for the caller's command */
    STK_STEP_LANDLOCK,
    STK_STEP_SECCOMP,
    STK_STEP_START_HOOK,    /* OCI: a startContainer hook, run by the worker */
    STK_STEP_EXEC,
    STK_STEP_COUNT
};

/* What the child writes to error_fd when a step fails. */
struct stk_error {
    int32_t step;       /* enum stk_step */
    int32_t err;        /* errno */
    char detail[248];   /* the path or value involved, NUL-terminated */
};

/* Outside a pid namespace, the signal on which stockade-init kills every
 * process of the jail's Landlock domain: its parent-death signal, and what
 * the launcher sends to end the jail. SIGRTMAX, never forwarded. */
#define STK_SIG_KILL_JAIL 64

/* Name of a step for messages ("mount /proc"); never NULL. */
const char *stk_step_name(int step);

/*
 * clone3 the jail's first process. In the parent: returns the child's pid and
 * stores its pidfd in *pidfd; returns -errno on failure (nothing was created).
 * In the child: never returns (runs the plan, then execve or _exit).
 * `used_into_cgroup` is set to 1 when CLONE_INTO_CGROUP took effect, 0 when
 * the kernel lacked it and the parent must place the child itself.
 */
pid_t stk_spawn(const struct stk_plan *plan, int *pidfd, int *used_into_cgroup);

/* ---- Small raw-syscall shims for Swift (it cannot call variadic syscall()). ---- */
/* Each returns -1 with errno set on failure unless its comment says -errno;
 * the Swift side calls them through retryingSyscall (EINTR, Errno). The
 * system call numbers come from <sys/syscall.h> for the architecture built. */
int stk_pidfd_send_signal(int pidfd, int sig);
/* pidfd_open(pid, 0): a pidfd, or -1 with errno. */
int stk_pidfd_open(int pid);
int stk_memfd_create(const char *name, unsigned int flags);
int stk_fcntl_int(int fd, int cmd, int arg);
int stk_accept_cloexec(int fd);
/* 1 when called on the process's main thread, else 0. */
int stk_on_main_thread(void);
/* ioctl(fd, request, arg): Swift cannot call the variadic ioctl. */
int stk_ioctl_ptr(int fd, unsigned long request, void *arg);
/* bpf(cmd, attr, size): glibc has no wrapper. */
long stk_bpf(int cmd, void *attr, unsigned int size);
/* statfs(path): stores the filesystem's f_type (its magic) in *type; 0. */
int stk_statfs_type(const char *path, long *type);
/* fstatfs(fd): the same for an open fd. */
int stk_fstatfs_type(int fd, long *type);
/* getxattr(path, name, NULL, 0): the value's size, following symlinks. */
long stk_getxattr_size(const char *path, const char *name);
/* waitid(P_PIDFD): fills *status like waitpid's status word; returns 0 or -errno. */
int stk_wait_pidfd(int pidfd, int *status, int options);
/* Landlock ABI of the running kernel: >0 version, -errno when unavailable. */
int stk_landlock_abi(void);
/* The caller's session keyring serial (keyctl), or -1 with errno. */
long stk_session_keyring(void);
/* Unlocks and opens the follower of a pty leader, or -1 with errno. */
int stk_pty_follower(int leader, int flags);
/* pipe2(O_CLOEXEC). */
int stk_pipe2_cloexec(int fds[2]);
/* openat2(dirfd, path, flags | O_CLOEXEC, resolve): an fd (ENOSYS before Linux 5.6). */
int stk_openat2(int dirfd, const char *path, int flags, unsigned long long resolve);
/* renameat2(RENAME_EXCHANGE): swaps two names at once (the tests' swap race). */
int stk_rename_exchange(const char *a, const char *b);
/* Forwards `signals` to the process behind `pidfd` from a signal handler
 * (no thread); 0, or -1 with errno from sigaction. */
int stk_forward_signals(int pidfd, const int *signals, int count);
/* Stops forwarding before the pidfd is closed; the signals are then dropped. */
void stk_stop_forwarding(void);
/* Forks a holder that keeps `fds` open until the process behind `pidfd`
 * exits (an OCI container's host id locks); its pid, or -errno. */
int stk_hold_until_exit(int pidfd, const int *fds, int n);
/* A detached, nosuid and nodev copy of the mount tree at O_PATH fd `fd`
 * (an OCI rootfs, attached by the child with move_mount); its fd or -errno. */
int stk_clone_tree(int fd);
/* The same for a bind the launcher makes for the jail: nosuid and nodev,
 * read-only and noexec when asked, all recursive; its fd or -errno. */
int stk_clone_bind(int fd, int readonly, int noexec);
/* setns(fd, nstype) for the calling thread (glibc declares it only under
 * _GNU_SOURCE, which Swift's Glibc module lacks); 0, or -1 with errno. */
int stk_setns(int fd, int nstype);
/* unshare(flags) and sethostname(name) for the calling thread (ipc, uts:
 * per thread; the same _GNU_SOURCE gap); 0, or -1 with errno. */
int stk_unshare(int flags);
int stk_sethostname(const char *name, size_t len);
/* A new devpts instance (ptmxmode=0666, mode=0620) as a detached nosuid,
 * noexec mount (fsopen, fsconfig, fsmount): its fd or -errno. */
int stk_devpts_instance(void);

/* ---- OCI hooks (the launcher's side; see stk_plan.hooks_pause). ---- */

/* In the mount namespace `mnt_fd` of a jail paused for its hooks (run in a
 * forked helper, as the launcher: host root, whom the jail's user namespace
 * does not confine). step 1: the tree at /newroot is cloned onto the
 * rootfs's host path `rootfs` (opened without following any link, and
 * checked to be the directory dev/ino the launcher found), then the host's
 * tree becomes the namespace's root and the staging root is detached: a
 * hook that enters the namespace sees the host's tree with the container's
 * root, its mounts included, at its host path (as under runc). step 2:
 * the container's root at `rootfs` (checked again) becomes the namespace's
 * root and the host's tree is detached. Returns 0 or -errno. */
int stk_oci_hooks_root(int mnt_fd, int step, const char *rootfs, uint64_t dev, uint64_t ino);
/* Starts a createContainer hook in a jail paused for its hooks: a child
 * first waits for one byte on `go_fd` (>= 0; the launcher moves it into the
 * container's cgroup meanwhile; EOF: it exits), then joins the mount namespace `ns_fds[0]` as the launcher, changes to `cwd`
 * (the container's root at its host path, checked by dev/ino), joins the
 * other namespaces in `ns_fds`/`ns_types` (the user namespace last, then
 * takes its uid and gid 0), makes `stdin_fd` its stdin and execs `path`.
 * A joined pid namespace holds the hook itself: the child forks it and
 * passes its exit status on. Returns the child's pid, or -errno. */
int stk_oci_spawn_hook(const int *ns_fds, const int *ns_types, int n, const char *cwd, uint64_t dev, uint64_t ino,
                       int stdin_fd, int go_fd, const char *path, char *const *argv, char *const *envp);

/* ---- Seccomp user notification (the supervisor's side). ---- */

/* One notification, as SECCOMP_IOCTL_NOTIF_RECV returns it (the layout of
 * the kernel's struct seccomp_notif with its seccomp_data). */
struct stk_notification {
    uint64_t id;      /* the cookie to answer with */
    uint32_t pid;     /* the calling thread, in the receiver's pid namespace */
    uint32_t flags;
    int32_t nr;       /* seccomp_data: number, architecture, ip, arguments */
    uint32_t arch;
    uint64_t ip;
    uint64_t args[6];
};

/* seccomp(SECCOMP_GET_ACTION_AVAIL, action): 0 when the kernel has it, -1 with errno. */
int stk_seccomp_action_available(uint32_t action);
/* SECCOMP_IOCTL_NOTIF_RECV into *out: 0, or -1 with errno (ENOENT: the
 * caller was gone before it could be received). */
int stk_notify_recv(int listener, struct stk_notification *out);
/* SECCOMP_IOCTL_NOTIF_SEND: the call returns `val`, or fails with `error`
 * (a negative errno); `flags` SECCOMP_USER_NOTIF_FLAG_CONTINUE lets it run. 0 or -1 with errno. */
int stk_notify_send(int listener, uint64_t id, int64_t val, int32_t error, uint32_t flags);
/* SECCOMP_IOCTL_NOTIF_ID_VALID: 0 while the notifying thread still waits
 * for the answer to `id` (so a pid read from it is still that thread). */
int stk_notify_id_valid(int listener, uint64_t id);

/* Receives the worker's seccomp listener from `sock` (one byte with the fd
 * as SCM_RIGHTS, installed close-on-exec) and, the socket having
 * SO_PASSCRED on, the sender's pid as this process's pid namespace sees
 * it (SCM_CREDENTIALS). Returns 1 with *fd and *pid set; 0 when the peer
 * closed without sending; -1 with errno. An fd that came with anything
 * unexpected is closed and -1/EPROTO returned. */
int stk_recv_listener(int sock, int *fd, int32_t *pid);

#ifdef __cplusplus
}
#endif
#endif
