/*
 * stockade-probe: the escape-probe battery (the `probes[]` table below) as one
 * static binary.
 *
 * It runs inside a jail (Stockade, bubblewrap, firejail, or nothing at all) and
 * asks the kernel directly, with raw system calls, for everything a jailed
 * worker must not be able to do. It links statically and opens no libc data
 * files, so it runs in an empty root.
 *
 * Output: one line per probe, "NN name  what-came-back  PASS|FAIL", then
 * "N passed, N failed". With --json, one JSON object instead. The exit status
 * is 0 when every selected probe passed, 1 when one failed, 2 on a usage error.
 *
 * Safety. The battery must never hurt the host, even when it runs unconfined
 * as real root (which is how `make compare` learns what "no sandbox" looks
 * like). Every probe therefore runs in a forked child, and every call that
 * would change the host if it were allowed is made with arguments that the
 * kernel rejects only AFTER its permission check: an invalid flag, magic
 * number, option or file descriptor. So "EPERM" means the call was denied,
 * and "EINVAL"/"EBADF"/... means the call got past the permission check and
 * was stopped only by the deliberately broken argument: the probe reports
 * that as FAIL without anything having happened. Each such call carries a
 * comment with the kernel's order of checks it relies on.
 *
 * Each probed call runs in its own short-lived grandchild ("guarded call"),
 * so a seccomp filter whose action is "kill" ends only that call: the probe
 * records "killed(SIGSYS)", which counts as denied, and goes on with the
 * next call.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <unistd.h>

/* ------------------------------------------------------------------------ */
/* Raw system calls: the return value is the kernel's, -errno on failure.   */

static long sys6(long n, long a, long b, long c, long d, long e, long f)
{
    long ret;
    register long r10 __asm__("r10") = d;
    register long r8 __asm__("r8") = e;
    register long r9 __asm__("r9") = f;
    __asm__ volatile("syscall"
                     : "=a"(ret)
                     : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9)
                     : "rcx", "r11", "memory");
    return ret;
}
#define SC_(n, a, b, c, d, e, f, ...) \
    sys6((long)(n), (long)(a), (long)(b), (long)(c), (long)(d), (long)(e), (long)(f))
#define SC(...) SC_(__VA_ARGS__, 0, 0, 0, 0, 0, 0, 0)

/* i386 system call through int 0x80 (the compat entry point). */
static long int80(long n, long a, long b, long c, long d, long e)
{
    long ret;
    __asm__ volatile("int $0x80"
                     : "=a"(ret)
                     : "a"(n), "b"(a), "c"(b), "d"(c), "S"(d), "D"(e)
                     : "memory", "r8", "r9", "r10", "r11");
    return (long)(int)ret;
}

/* Return value of a guarded call whose process was killed by signal `sig`. */
#define KILLED_BASE (-100000L)
#define KILLED(sig) (KILLED_BASE - (sig))
static int was_killed(long r) { return r <= KILLED_BASE && r > KILLED_BASE - 128; }

/* Constants not in Debian 12's headers, or kept here so the file stands alone. */
#define X32_BIT 0x40000000L
#define PROC_IPC_INIT_INO 0xEFFFFFFFUL
#define PROC_UTS_INIT_INO 0xEFFFFFFEUL
#define PROC_USER_INIT_INO 0xEFFFFFFDUL
#define PROC_PID_INIT_INO 0xEFFFFFFCUL
#define PROC_CGROUP_INIT_INO 0xEFFFFFFBUL
#define PROC_NET_INIT_INO 0xEFFFFFF9UL /* fixed since 6.x; dynamic before */
#define PROC_MNT_INIT_INO 0xEFFFFFF8UL /* fixed since 6.x; dynamic before */
#define CLONE_NEWNS_ 0x00020000L
#define CLONE_NEWUSER_ 0x10000000L
#define CLONE_NEWUTS_ 0x04000000L
#define CLONE_NEWIPC_ 0x08000000L
#define CLONE_NEWNET_ 0x40000000L
#define CLONE_NEWPID_ 0x20000000L
#define CLONE_NEWCGROUP_ 0x02000000L
#define PR_GET_SECCOMP_ 21
#define PR_CAPBSET_READ_ 23
#define PR_GET_NO_NEW_PRIVS_ 39
#define PR_CAP_AMBIENT_ 47
#define PR_CAP_AMBIENT_IS_SET_ 1
#define PR_CAP_AMBIENT_RAISE_ 2
#define PR_SET_PDEATHSIG_ 1
#define PTRACE_SEIZE_ 0x4206
#define TIOCSTI_ 0x5412
#define TIOCLINUX_ 0x541C
#define TCGETS_ 0x5401
#define TIOCSCTTY_ 0x540E
#define TIOCSPTLCK_ 0x40045431
#define TIOCGPTPEER_ 0x5441
#define READ_IMPLIES_EXEC_ 0x0400000
#define ADDR_NO_RANDOMIZE_ 0x0040000
#define OPEN_TREE_CLONE_ 1
#define UFFD_USER_MODE_ONLY_ 1
#define KEY_SPEC_THREAD_KEYRING_ (-1)
#define KEY_SPEC_SESSION_KEYRING_ (-3)
#define KEYCTL_GET_KEYRING_ID_ 0
#define MNT_DETACH_ 2
#define MNT_EXPIRE_ 4
#define KEXEC_FILE_NO_INITRAMFS_ 4
#define F_GET_SEALS_ 1034
#define F_SEAL_SEAL_ 1
#define F_SEAL_SHRINK_ 2
#define F_SEAL_GROW_ 4
#define F_SEAL_WRITE_ 8
#define CAP_SYS_ADMIN_ 21
#define CAP_SYS_TIME_ 25

/* ------------------------------------------------------------------------ */
/* Results                                                                  */

#define DETAIL_MAX 1400

struct result {
    volatile int done;    /* the probe function returned */
    volatile int verdict; /* 1 PASS, 0 FAIL */
    char detail[DETAIL_MAX];
};

/* One page shared by every process of the battery: guarded calls write their
 * return value here, probes their verdict and detail. */
struct shared {
    volatile long guarded_ret;
    volatile long progress; /* memory hog: MiB touched so far */
    struct result res;
};
static struct shared *g_sh;

static void note(const char *fmt, ...)
{
    struct result *r = &g_sh->res;
    size_t len = strnlen(r->detail, DETAIL_MAX);
    if (len >= DETAIL_MAX - 1)
        return;
    if (len > 0 && len < DETAIL_MAX - 2) {
        r->detail[len++] = ' ';
        r->detail[len] = 0;
    }
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->detail + len, DETAIL_MAX - len, fmt, ap);
    va_end(ap);
}

static const char *errname(long e)
{
    switch (e) {
    case EPERM: return "EPERM";
    case ENOENT: return "ENOENT";
    case ESRCH: return "ESRCH";
    case EINTR: return "EINTR";
    case EIO: return "EIO";
    case ENXIO: return "ENXIO";
    case E2BIG: return "E2BIG";
    case ENOEXEC: return "ENOEXEC";
    case EBADF: return "EBADF";
    case ECHILD: return "ECHILD";
    case EAGAIN: return "EAGAIN";
    case ENOMEM: return "ENOMEM";
    case EACCES: return "EACCES";
    case EFAULT: return "EFAULT";
    case EBUSY: return "EBUSY";
    case EEXIST: return "EEXIST";
    case ENODEV: return "ENODEV";
    case ENOTDIR: return "ENOTDIR";
    case EISDIR: return "EISDIR";
    case EINVAL: return "EINVAL";
    case ENFILE: return "ENFILE";
    case EMFILE: return "EMFILE";
    case ENOTTY: return "ENOTTY";
    case ETXTBSY: return "ETXTBSY";
    case ENOSPC: return "ENOSPC";
    case EROFS: return "EROFS";
    case ENOSYS: return "ENOSYS";
    case ENOKEY: return "ENOKEY";
    case ESTALE: return "ESTALE";
    case EOPNOTSUPP: return "EOPNOTSUPP";
    case EAFNOSUPPORT: return "EAFNOSUPPORT";
    case EPROTONOSUPPORT: return "EPROTONOSUPPORT";
    case ESOCKTNOSUPPORT: return "ESOCKTNOSUPPORT";
    case ENETUNREACH: return "ENETUNREACH";
    case ECONNREFUSED: return "ECONNREFUSED";
    case EHOSTUNREACH: return "EHOSTUNREACH";
    case EADDRNOTAVAIL: return "EADDRNOTAVAIL";
    default: return NULL;
    }
}

/* "ok(3)", "EPERM", "killed(SIGSYS)" */
static const char *rs(long r)
{
    static char buf[8][40];
    static int slot;
    char *b = buf[slot++ & 7];
    if (was_killed(r)) {
        int sig = (int)(KILLED_BASE - r);
        const char *n = sig == SIGSYS ? "SIGSYS" : sig == SIGSEGV ? "SIGSEGV" : sig == SIGKILL ? "SIGKILL"
                      : sig == SIGALRM ? "SIGALRM(timeout)" : sig == SIGBUS ? "SIGBUS" : sig == SIGILL ? "SIGILL" : NULL;
        if (n)
            snprintf(b, 40, "killed(%s)", n);
        else
            snprintf(b, 40, "killed(signal %d)", sig);
    } else if (r < 0 && r > -4096) {
        const char *n = errname(-r);
        if (n)
            snprintf(b, 40, "%s", n);
        else
            snprintf(b, 40, "errno %ld", -r);
    } else {
        snprintf(b, 40, "ok(%ld)", r);
    }
    return b;
}

/* Denied: any error, or the calling process killed. */
static int denied(long r) { return r < 0; }

/* Denied by a permission check: EPERM/EACCES (capabilities, LSM, a seccomp
 * errno action), ENOSYS (a seccomp filter that pretends the call does not
 * exist, or a kernel without it) or killed. Used for calls made with a
 * deliberately invalid argument: any other error means the permission check
 * was passed and only that argument stopped the call. */
static int denied_perm(long r) { return r == -EPERM || r == -EACCES || r == -ENOSYS || was_killed(r); }

/* ------------------------------------------------------------------------ */
/* Processes                                                                */

static long raw_fork(void) { return SC(SYS_clone, SIGCHLD, 0, 0, 0, 0); }
static void raw_exit(int code)
{
    for (;;)
        SC(SYS_exit_group, code);
}

/* Waits for `pid`; returns the exit code, or KILLED(sig). */
static long reap(long pid)
{
    int st = 0;
    for (;;) {
        long r = SC(SYS_wait4, pid, &st, 0x40000000 /* __WALL */, 0);
        if (r == -EINTR)
            continue;
        if (r < 0)
            return r;
        break;
    }
    if (WIFSIGNALED(st))
        return KILLED(WTERMSIG(st));
    return WEXITSTATUS(st);
}

/* Makes one system call in a throwaway child and returns what came back. A
 * seccomp "kill" (or any crash) ends only that child. */
static long guarded(long n, long a, long b, long c, long d, long e, long f)
{
    fflush(NULL);
    g_sh->guarded_ret = -EINTR;
    long pid = raw_fork();
    if (pid < 0)
        return sys6(n, a, b, c, d, e, f); /* cannot fork: best effort, in place */
    if (pid == 0) {
        SC(SYS_alarm, 10); /* a call that blocks must not hold up the battery */
        g_sh->guarded_ret = sys6(n, a, b, c, d, e, f);
        raw_exit(0);
    }
    long st = reap(pid);
    if (was_killed(st))
        return st;
    return g_sh->guarded_ret;
}
#define G_(n, a, b, c, d, e, f, ...) \
    guarded((long)(n), (long)(a), (long)(b), (long)(c), (long)(d), (long)(e), (long)(f))
#define G(...) G_(__VA_ARGS__, 0, 0, 0, 0, 0, 0, 0)

/* The same for a compat (int 0x80) call. */
static long guarded80(long n, long a, long b, long c, long d, long e)
{
    fflush(NULL);
    g_sh->guarded_ret = -EINTR;
    long pid = raw_fork();
    if (pid < 0)
        return KILLED(0);
    if (pid == 0) {
        SC(SYS_alarm, 10);
        g_sh->guarded_ret = int80(n, a, b, c, d, e);
        raw_exit(0);
    }
    long st = reap(pid);
    if (was_killed(st))
        return st;
    return g_sh->guarded_ret;
}

/* ------------------------------------------------------------------------ */
/* Small file helpers on raw calls                                          */

static long open_(const char *p, long flags) { return SC(SYS_openat, AT_FDCWD, p, flags | O_CLOEXEC, 0); }
static void close_(long fd)
{
    if (fd >= 0)
        SC(SYS_close, fd);
}

/* Reads a whole (small) file; returns length or -errno. */
static long read_file(const char *path, char *buf, size_t cap)
{
    long fd = open_(path, O_RDONLY);
    if (fd < 0)
        return fd;
    size_t len = 0;
    while (len + 1 < cap) {
        long n = SC(SYS_read, fd, buf + len, cap - 1 - len);
        if (n == -EINTR)
            continue;
        if (n <= 0)
            break;
        len += (size_t)n;
    }
    buf[len] = 0;
    close_(fd);
    return (long)len;
}

static long stat_(const char *p, struct stat *st) { return SC(SYS_newfstatat, AT_FDCWD, p, st, 0); }

static long readlink_(const char *p, char *buf, size_t cap)
{
    long n = SC(SYS_readlinkat, AT_FDCWD, p, buf, cap - 1);
    buf[n > 0 ? n : 0] = 0;
    return n;
}

/* Lists a directory with getdents64: calls fn(name, d_type) for each entry
 * but "." and "..". Returns the number of entries or -errno. */
static long list_dir(const char *path, void (*fn)(const char *, int, void *), void *ctx)
{
    long fd = open_(path, O_RDONLY | O_DIRECTORY);
    if (fd < 0)
        return fd;
    char buf[8192] __attribute__((aligned(8)));
    long count = 0;
    for (;;) {
        long n = SC(SYS_getdents64, fd, buf, sizeof buf);
        if (n <= 0)
            break;
        for (long off = 0; off < n;) {
            struct {
                uint64_t ino;
                int64_t off;
                unsigned short reclen;
                unsigned char type;
                char name[];
            } *d = (void *)(buf + off);
            if (strcmp(d->name, ".") && strcmp(d->name, "..")) {
                count++;
                if (fn)
                    fn(d->name, d->type, ctx);
            }
            off += d->reclen;
        }
    }
    close_(fd);
    return count;
}

/* Makes a fresh directory for probes that need to create something, in the
 * first writable place; returns 0 and the path, or -errno. */
static long make_scratch_dir(char *out, size_t cap)
{
    static const char *const bases[] = {"/tmp", "/dev/shm", "/var/tmp", "."};
    long last = -ENOENT;
    for (size_t i = 0; i < sizeof bases / sizeof *bases; i++) {
        snprintf(out, cap, "%s/stockade-probe-%ld", bases[i], SC(SYS_getpid));
        long r = SC(SYS_mkdirat, AT_FDCWD, out, 0700);
        if (r == 0)
            return 0;
        last = r;
    }
    return last;
}

/* ------------------------------------------------------------------------ */
/* Configuration and state captured at start                                */

static int g_json;
static long g_ppid, g_pid;
static char g_argv0[512];
static int g_channel_fds[16], g_n_channel;
static int g_psk_fd = -1;
static char g_expect_dev[1024];
static const char *g_python;
static char g_abstract[1024];
/* What the caller says about itself, for the "what can be seen from inside"
 * probes (43-49); each is optional. */
static long g_caller_keyring = -1;       /* the caller's session keyring serial */
static char g_reserved_ids[4096];        /* host id ranges of real accounts and other jails: "0,1000,100000-165535" */
static char g_profile_paths[2048];       /* where the profile's file or directory shows inside: "/etc/p,/p.toml" */
static int g_caller_inotify = -1;        /* inotify instances the caller holds as it launches */

/* The fd table as found at start, before the battery opened anything. */
#define MAX_FDS 256
static struct start_fd {
    int fd;
    unsigned mode;
    char link[256];
} g_fds[MAX_FDS];
static int g_n_fds, g_fds_truncated;
static char g_fds_how[64];

static void snapshot_fds(void)
{
    /* fcntl(F_GETFD) over the whole range needs no /proc; readlink adds the
     * name where /proc is there. */
    struct rlimit {
        unsigned long cur, max;
    } rl = {1024, 1024};
    SC(SYS_getrlimit, 7 /* RLIMIT_NOFILE */, &rl);
    unsigned long top = rl.cur > 65536 ? 65536 : rl.cur;
    for (unsigned long fd = 0; fd < top; fd++) {
        if (SC(SYS_fcntl, fd, F_GETFD) < 0)
            continue;
        if (g_n_fds == MAX_FDS) {
            g_fds_truncated = 1;
            break;
        }
        struct start_fd *s = &g_fds[g_n_fds++];
        s->fd = (int)fd;
        struct stat st;
        s->mode = SC(SYS_fstat, fd, &st) == 0 ? st.st_mode : 0;
        char p[64];
        snprintf(p, sizeof p, "/proc/self/fd/%lu", fd);
        if (readlink_(p, s->link, sizeof s->link) < 0)
            snprintf(s->link, sizeof s->link, "?");
    }
    snprintf(g_fds_how, sizeof g_fds_how, "fcntl scan 0..%lu", top);
}

static int is_channel_fd(int fd)
{
    for (int i = 0; i < g_n_channel; i++)
        if (g_channel_fds[i] == fd)
            return 1;
    return fd == g_psk_fd;
}

/* ------------------------------------------------------------------------ */
/* Capabilities                                                             */

struct capdata {
    uint32_t eff, prm, inh;
};
static long capget3(uint64_t *eff, uint64_t *prm, uint64_t *inh)
{
    struct {
        uint32_t version;
        int pid;
    } hdr = {0x20080522, 0};
    struct capdata d[2];
    memset(d, 0, sizeof d);
    long r = SC(SYS_capget, &hdr, d);
    if (r == 0) {
        *eff = d[0].eff | (uint64_t)d[1].eff << 32;
        *prm = d[0].prm | (uint64_t)d[1].prm << 32;
        *inh = d[0].inh | (uint64_t)d[1].inh << 32;
    }
    return r;
}

static unsigned long ns_inode(const char *name)
{
    char p[64];
    struct stat st;
    snprintf(p, sizeof p, "/proc/self/ns/%s", name);
    if (stat_(p, &st) != 0)
        return 0;
    return (unsigned long)st.st_ino;
}

/* ------------------------------------------------------------------------ */
/* The probes. Each returns 1 (PASS) or 0 (FAIL) and says what came back.   */

static const char *status_field(const char *text, const char *key, char *out, size_t cap)
{
    const char *p = strstr(text, key);
    if (!p || (p != text && p[-1] != '\n'))
        return NULL;
    p += strlen(key);
    while (*p == ':' || *p == ' ' || *p == '\t')
        p++;
    size_t i = 0;
    while (p[i] && p[i] != '\n' && i + 1 < cap) {
        out[i] = p[i];
        i++;
    }
    out[i] = 0;
    return out;
}

/* 1: the process's own security state. */
static int p_status(void)
{
    int ok = 1;
    char text[4096];
    if (read_file("/proc/self/status", text, sizeof text) > 0) {
        static const char *const keys[] = {"NoNewPrivs", "Seccomp", "CapEff", "CapPrm", "CapInh", "CapAmb", "CapBnd"};
        static const char *const want[] = {"1", "2", "0000000000000000", "0000000000000000", "0000000000000000",
                                           "0000000000000000", "0000000000000000"};
        for (int i = 0; i < 7; i++) {
            char v[64];
            if (!status_field(text, keys[i], v, sizeof v)) {
                note("%s=missing", keys[i]);
                ok = 0;
                continue;
            }
            int good = strcmp(v, want[i]) == 0;
            note("%s=%s%s", keys[i], v, good ? "" : "(!)");
            ok &= good;
        }
    } else {
        note("/proc/self/status unreadable;");
    }
    /* The same facts from the kernel directly, for jails without /proc. */
    long nnp = SC(SYS_prctl, PR_GET_NO_NEW_PRIVS_, 0, 0, 0, 0);
    long sec = SC(SYS_prctl, PR_GET_SECCOMP_, 0, 0, 0, 0);
    uint64_t eff = ~0ULL, prm = ~0ULL, inh = ~0ULL, bnd = 0, amb = 0;
    long cg = capget3(&eff, &prm, &inh);
    for (int c = 0; c < 64; c++) {
        long b = SC(SYS_prctl, PR_CAPBSET_READ_, c, 0, 0, 0);
        if (b < 0)
            break;
        if (b > 0)
            bnd |= 1ULL << c;
        if (SC(SYS_prctl, PR_CAP_AMBIENT_, PR_CAP_AMBIENT_IS_SET_, c, 0, 0) > 0)
            amb |= 1ULL << c;
    }
    note("| prctl: no_new_privs=%s seccomp=%s capget=%s eff=%llx prm=%llx inh=%llx bnd=%llx amb=%llx", rs(nnp),
         rs(sec), rs(cg), (unsigned long long)eff, (unsigned long long)prm, (unsigned long long)inh,
         (unsigned long long)bnd, (unsigned long long)amb);
    ok &= nnp == 1 && sec == 2 && cg == 0 && eff == 0 && prm == 0 && inh == 0 && bnd == 0 && amb == 0;
    return ok;
}

/* 2: raising a capability. Harmless when it works: it happens in a throwaway
 * child. */
static int p_capset(void)
{
    struct {
        uint32_t version;
        int pid;
    } hdr = {0x20080522, 0};
    struct capdata d[2];
    memset(d, 0, sizeof d);
    d[0].eff = d[0].prm = d[0].inh = 1u << CAP_SYS_ADMIN_;
    long r1 = G(SYS_capset, &hdr, d);
    long r2 = G(SYS_prctl, PR_CAP_AMBIENT_, PR_CAP_AMBIENT_RAISE_, CAP_SYS_ADMIN_, 0, 0);
    note("capset(+CAP_SYS_ADMIN)=%s PR_CAP_AMBIENT_RAISE(CAP_SYS_ADMIN)=%s", rs(r1), rs(r2));
    /* EPERM is required; a seccomp kill is accepted as the stricter answer. */
    return (r1 == -EPERM || was_killed(r1)) && (r2 == -EPERM || was_killed(r2));
}

/* 3: namespaces differ from the initial ones. */
static int p_namespaces(void)
{
    static const struct {
        const char *name;
        unsigned long init;
        int required;
    } ns[] = {
        {"user", PROC_USER_INIT_INO, 1}, {"pid", PROC_PID_INIT_INO, 1}, {"ipc", PROC_IPC_INIT_INO, 1},
        {"uts", PROC_UTS_INIT_INO, 1},   {"cgroup", PROC_CGROUP_INIT_INO, 1},
        {"net", PROC_NET_INIT_INO, 1},   {"mnt", PROC_MNT_INIT_INO, 1},
    };
    int ok = 1;
    for (size_t i = 0; i < sizeof ns / sizeof *ns; i++) {
        unsigned long ino = ns_inode(ns[i].name);
        if (ino == 0) {
            note("%s=unreadable(!)", ns[i].name);
            ok = 0;
        } else if (ino == ns[i].init) {
            note("%s=initial(!)", ns[i].name);
            ok = 0;
        } else {
            note("%s=%lu", ns[i].name, ino);
        }
    }
    char map[512];
    long n = read_file("/proc/self/uid_map", map, sizeof map);
    if (n < 0) {
        note("uid_map=%s(!)", rs(n));
        ok = 0;
    } else {
        unsigned long a = 1, b = 1, c = 0;
        int fields = sscanf(map, "%lu %lu %lu", &a, &b, &c);
        char *nl = strchr(map, '\n');
        if (nl && nl[1] == 0)
            *nl = 0;
        for (char *p = map; *p; p++)
            if (*p == '\n')
                *p = ';';
        int full = fields == 3 && a == 0 && b == 0 && c == 4294967295UL;
        note("uid_map=\"%s\"%s", map, full ? "(!)" : "");
        ok &= !full;
    }
    return ok;
}

/* 4: unshare. In a throwaway child: a new namespace there harms nobody. */
static int p_unshare(void)
{
    long r1 = G(SYS_unshare, CLONE_NEWUSER_);
    long r2 = G(SYS_unshare, CLONE_NEWNS_);
    note("unshare(CLONE_NEWUSER)=%s unshare(CLONE_NEWNS)=%s", rs(r1), rs(r2));
    return denied(r1) && denied(r2);
}

/* 5: clone with namespace flags. The new child, if any, exits at once. */
static int p_clone_ns(void)
{
    fflush(NULL);
    g_sh->guarded_ret = -EINTR;
    long pid = raw_fork();
    if (pid == 0) {
        long c = SC(SYS_clone, CLONE_NEWUSER_ | CLONE_NEWNS_ | SIGCHLD, 0, 0, 0, 0);
        if (c == 0)
            raw_exit(0);
        if (c > 0)
            reap(c);
        g_sh->guarded_ret = c;
        raw_exit(0);
    }
    long st = pid < 0 ? pid : reap(pid);
    long r = was_killed(st) || st < 0 ? st : g_sh->guarded_ret;
    note("clone(CLONE_NEWUSER|CLONE_NEWNS)=%s", r > 0 ? "ok(child created)" : rs(r));
    return denied(r);
}

static void *thread_fn(void *arg)
{
    *(int *)arg = 42;
    return NULL;
}

/* 6: clone3 must be ENOSYS (its flags live in memory, no filter can see them),
 * while threads and plain fork keep working. */
static int p_clone3(void)
{
    fflush(NULL);
    g_sh->guarded_ret = -EINTR;
    long pid = raw_fork();
    if (pid == 0) {
        struct {
            uint64_t flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls;
        } args;
        memset(&args, 0, sizeof args);
        args.exit_signal = SIGCHLD;
        long c = SC(SYS_clone3, &args, sizeof args);
        if (c == 0)
            raw_exit(0);
        if (c > 0)
            reap(c);
        g_sh->guarded_ret = c;
        raw_exit(0);
    }
    long st = pid < 0 ? pid : reap(pid);
    long r = was_killed(st) || st < 0 ? st : g_sh->guarded_ret;
    note("clone3=%s", r > 0 ? "ok(child created)" : rs(r));
    int ok = r == -ENOSYS;

    pthread_t t;
    int value = 0;
    int pe = pthread_create(&t, NULL, thread_fn, &value);
    if (pe == 0)
        pthread_join(t, NULL);
    note("pthread_create=%s", pe == 0 && value == 42 ? "ok" : rs(-pe));
    ok &= pe == 0 && value == 42;

    fflush(NULL);
    pid_t f = fork();
    if (f == 0)
        raw_exit(7);
    long fs = f > 0 ? reap(f) : -errno;
    note("fork=%s", fs == 7 ? "ok" : rs(fs));
    ok &= fs == 7;
    return ok;
}

/* 7: setns into any namespace the jail can reach. */
struct setns_ctx {
    int tried, succeeded;
    char base[96];
};
static void setns_entry(const char *name, int type, void *vctx)
{
    (void)type;
    struct setns_ctx *ctx = vctx;
    char p[192];
    snprintf(p, sizeof p, "%s/%s", ctx->base, name);
    long fd = open_(p, O_RDONLY);
    if (fd < 0)
        return;
    ctx->tried++;
    long r = G(SYS_setns, fd, 0);
    close_(fd);
    if (r >= 0) {
        if (ctx->succeeded++ < 4)
            note("setns(%s)=ok(!)", p);
    }
}
struct pid_ctx {
    long pids[64];
    int n;
};
static void pid_entry(const char *name, int type, void *vctx)
{
    (void)type;
    struct pid_ctx *ctx = vctx;
    if (name[0] < '0' || name[0] > '9' || ctx->n >= 64)
        return;
    ctx->pids[ctx->n++] = atol(name);
}
static int p_setns(void)
{
    struct setns_ctx ctx = {0, 0, ""};
    snprintf(ctx.base, sizeof ctx.base, "/proc/self/ns");
    list_dir(ctx.base, setns_entry, &ctx);
    struct pid_ctx pids = {{0}, 0};
    list_dir("/proc", pid_entry, &pids);
    int other = 0;
    for (int i = 0; i < pids.n; i++) {
        if (pids.pids[i] == g_pid)
            continue;
        other++;
        snprintf(ctx.base, sizeof ctx.base, "/proc/%ld/ns", pids.pids[i]);
        list_dir(ctx.base, setns_entry, &ctx);
    }
    /* Namespace fds inherited from the launcher. */
    for (int i = 0; i < g_n_fds; i++) {
        if (strchr(g_fds[i].link, ':') && strstr(g_fds[i].link, ":[") && strncmp(g_fds[i].link, "socket", 6) &&
            strncmp(g_fds[i].link, "pipe", 4) && strncmp(g_fds[i].link, "anon_inode", 10)) {
            ctx.tried++;
            long r = G(SYS_setns, g_fds[i].fd, 0);
            if (r >= 0 && ctx.succeeded++ < 4)
                note("setns(inherited fd %d %s)=ok(!)", g_fds[i].fd, g_fds[i].link);
        }
    }
    /* A pidfd of the parent names all of its namespaces at once. */
    long pidfd = SC(SYS_pidfd_open, g_ppid > 0 ? g_ppid : 1, 0);
    long rp = -EBADF;
    if (pidfd >= 0) {
        ctx.tried++;
        rp = G(SYS_setns, pidfd, CLONE_NEWNS_ | CLONE_NEWUTS_ | CLONE_NEWIPC_ | CLONE_NEWNET_);
        close_(pidfd);
        if (rp >= 0)
            ctx.succeeded++;
    }
    note("%d namespace fds tried (own, %d other pids, inherited, pidfd of ppid: %s), %d accepted", ctx.tried, other,
         pidfd >= 0 ? rs(rp) : rs(pidfd), ctx.succeeded);
    return ctx.succeeded == 0;
}

/* 8: the mount family. */
static int p_mount(void)
{
    int ok = 1;
    /* mount: the kernel checks may_mount() (CAP_SYS_ADMIN over the mount
     * namespace) in path_mount() before it parses the filesystem options, so
     * an unknown tmpfs option turns a permitted call into EINVAL and nothing
     * is mounted. */
    long r = G(SYS_mount, "stockade-probe", "/", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
               "stockade_probe_invalid_option=1");
    note("mount(tmpfs)=%s%s", rs(r), denied_perm(r) ? "" : "(passed the privilege check)");
    ok &= denied_perm(r);
    /* fsopen: the capability check is the first thing; the fd it returns is
     * an unattached filesystem context, closed when the child exits. */
    r = G(SYS_fsopen, "tmpfs", 1 /* FSOPEN_CLOEXEC */);
    note("fsopen=%s", rs(r));
    ok &= denied(r);
    /* open_tree(OPEN_TREE_CLONE) checks may_mount() first; the clone it
     * returns is detached and disappears with the child. */
    r = G(SYS_open_tree, AT_FDCWD, "/", OPEN_TREE_CLONE_ | O_CLOEXEC);
    note("open_tree(CLONE)=%s", rs(r));
    ok &= denied(r);
    /* move_mount checks may_mount() before its flags; undefined flag bits
     * make a permitted call EINVAL. */
    r = G(SYS_move_mount, AT_FDCWD, "/", AT_FDCWD, "/", 0x80000000L);
    note("move_mount=%s%s", rs(r), denied_perm(r) ? "" : "(passed the privilege check)");
    ok &= denied_perm(r);
    /* mount_setattr checks may_mount() before it reads the attributes; an
     * undefined attribute bit makes a permitted call EINVAL. */
    struct {
        uint64_t attr_set, attr_clr, propagation, userns_fd;
    } attr = {0x40000000ULL, 0, 0, 0};
    r = G(SYS_mount_setattr, AT_FDCWD, "/", 0, &attr, sizeof attr);
    note("mount_setattr=%s%s", rs(r), denied_perm(r) ? "" : "(passed the privilege check)");
    ok &= denied_perm(r);
    return ok;
}

/* 9: leaving the root. */
static int p_root(void)
{
    int ok = 1;
    /* umount2: can_umount() checks may_mount() first; do_umount() then
     * rejects MNT_EXPIRE together with MNT_DETACH (EINVAL) before touching
     * anything. */
    long r = G(SYS_umount2, "/", MNT_DETACH_ | MNT_EXPIRE_);
    note("umount2(/,MNT_DETACH)=%s%s", rs(r), denied_perm(r) ? "" : "(passed the privilege check)");
    ok &= denied_perm(r);
    /* chroot("/") changes nothing even when allowed (and only in a child). */
    r = G(SYS_chroot, "/");
    note("chroot=%s", rs(r));
    ok &= denied(r);
    /* pivot_root checks may_mount() before it looks up new_root; a missing
     * new_root makes a permitted call ENOENT. */
    r = G(SYS_pivot_root, "/stockade-probe-nonexistent", "/stockade-probe-nonexistent");
    note("pivot_root=%s%s", rs(r), denied_perm(r) ? "" : "(passed the privilege check)");
    ok &= denied_perm(r);
    struct stat a, b;
    long s1 = stat_("/", &a), s2 = stat_("/..", &b);
    int same = s1 == 0 && s2 == 0 && a.st_dev == b.st_dev && a.st_ino == b.st_ino;
    note("/..=%s", same ? "/" : "elsewhere(!)");
    ok &= same;
    return ok;
}

/* 10: tracing other processes. */
static int p_ptrace(void)
{
    /* PTRACE_SEIZE runs the same access check as PTRACE_ATTACH
     * (__ptrace_may_access) but does not stop the tracee, and the tracee is
     * released when the throwaway child exits: nothing happens to the parent
     * even when it is allowed. */
    long target = g_ppid > 0 ? g_ppid : 1;
    long r1 = G(SYS_ptrace, PTRACE_SEIZE_, target, 0, 0);
    /* process_vm_readv checks PTRACE_MODE_ATTACH before it touches memory;
     * address 0x1000 is never mapped, so a permitted call says EFAULT. */
    char local[8];
    struct {
        void *base;
        size_t len;
    } liov = {local, sizeof local}, riov = {(void *)0x1000, 8};
    long r2 = G(SYS_process_vm_readv, 1, &liov, 1, &riov, 1, 0);
    note("ptrace(ATTACH-check via SEIZE, ppid %ld)=%s process_vm_readv(pid 1)=%s%s", target, rs(r1), rs(r2),
         (r2 == -EFAULT || r2 >= 0) ? "(access granted)" : "");
    return denied(r1) && denied(r2) && r2 != -EFAULT;
}

/* 11: personality changes. The query (0xffffffff) is not a change. */
static int p_personality(void)
{
    long cur = SC(SYS_personality, 0xffffffffL);
    long base = cur >= 0 ? cur : 0;
    long r1 = G(SYS_personality, base | READ_IMPLIES_EXEC_);
    long r2 = G(SYS_personality, base | ADDR_NO_RANDOMIZE_);
    note("current=%s READ_IMPLIES_EXEC=%s ADDR_NO_RANDOMIZE=%s", rs(cur), rs(r1), rs(r2));
    return denied(r1) && denied(r2);
}

/* A terminal to aim the terminal probes at: fd 0 when it is a terminal;
 * otherwise a fresh pty made this process's controlling terminal (a jail that
 * gives its worker a pty is in that state). Returns the fd or -errno. */
static long probe_tty(const char **what)
{
    char t[64];
    if (SC(SYS_ioctl, 0, TCGETS_, t) == 0) {
        *what = "fd 0";
        return 0;
    }
    SC(SYS_setsid);
    long m = open_("/dev/ptmx", O_RDWR | O_NOCTTY);
    if (m < 0)
        m = open_("/dev/pts/ptmx", O_RDWR | O_NOCTTY);
    if (m < 0) {
        *what = "no terminal (fd 0 is not one, no /dev/ptmx)";
        return m;
    }
    int unlock = 0;
    SC(SYS_ioctl, m, TIOCSPTLCK_, &unlock);
    long s = SC(SYS_ioctl, m, TIOCGPTPEER_, O_RDWR | O_CLOEXEC);
    if (s < 0) {
        *what = "no terminal (TIOCGPTPEER failed)";
        return s;
    }
    SC(SYS_ioctl, s, TIOCSCTTY_, 0);
    *what = "own pty (controlling terminal)";
    return s;
}

/* 12: TIOCSTI pushes input into a terminal. The buffer pointer is NULL:
 * tiocsti() checks the legacy_tiocsti sysctl, CAP_SYS_ADMIN and "is it your
 * controlling terminal" first, then reads the character: a permitted call
 * fails with EFAULT and nothing is injected. */
static int p_tiocsti(void)
{
    const char *what = "";
    long fd = probe_tty(&what);
    if (fd < 0) {
        long r = G(SYS_ioctl, 0, TIOCSTI_, 0);
        note("%s; ioctl(0,TIOCSTI)=%s", what, rs(r));
        return denied(r) && r != -EFAULT;
    }
    long r1 = G(SYS_ioctl, fd, TIOCSTI_, 0);
    long r2 = G(SYS_ioctl, fd, (long)(TIOCSTI_ | (0x123UL << 32)), 0);
    note("on %s: TIOCSTI=%s TIOCSTI|0x123<<32=%s", what, rs(r1), rs(r2));
    return denied(r1) && r1 != -EFAULT && denied(r2) && r2 != -EFAULT;
}

/* 13: TIOCLINUX (console selection and more). tioclinux() checks the
 * controlling terminal / CAP_SYS_ADMIN before it reads the subcode from the
 * (NULL) buffer: EFAULT means permitted. */
static int p_tioclinux(void)
{
    const char *what = "";
    long fd = probe_tty(&what);
    long r = G(SYS_ioctl, fd < 0 ? 0 : fd, TIOCLINUX_, 0);
    note("on %s: TIOCLINUX=%s", fd < 0 ? "fd 0" : what, rs(r));
    return denied(r) && r != -EFAULT;
}

/* 14 */
static int p_io_uring(void)
{
    char params[120];
    memset(params, 0, sizeof params);
    long r = G(SYS_io_uring_setup, 1, params);
    note("io_uring_setup=%s", rs(r));
    return denied(r);
}

/* 15 */
static int p_userfaultfd(void)
{
    long r1 = G(SYS_userfaultfd, O_CLOEXEC);
    long r2 = G(SYS_userfaultfd, O_CLOEXEC | UFFD_USER_MODE_ONLY_);
    note("userfaultfd=%s userfaultfd(USER_MODE_ONLY)=%s", rs(r1), rs(r2));
    return denied(r1) && denied(r2);
}

/* 16: load the smallest socket filter ("return 0"). */
static int p_bpf(void)
{
    uint64_t insns[2] = {
        0x00000000000000b7ULL, /* r0 = 0 */
        0x0000000000000095ULL, /* exit */
    };
    static const char license[] = "GPL";
    struct {
        uint32_t prog_type, insn_cnt;
        uint64_t insns, license;
        uint32_t log_level, log_size;
        uint64_t log_buf;
        uint32_t kern_version, prog_flags;
        char pad[80];
    } attr;
    memset(&attr, 0, sizeof attr);
    attr.prog_type = 1; /* BPF_PROG_TYPE_SOCKET_FILTER */
    attr.insn_cnt = 2;
    attr.insns = (uint64_t)(uintptr_t)insns;
    attr.license = (uint64_t)(uintptr_t)license;
    long r = G(SYS_bpf, 5 /* BPF_PROG_LOAD */, &attr, sizeof attr);
    note("bpf(BPF_PROG_LOAD)=%s", rs(r));
    return denied(r);
}

/* 17: a software counter on this process only, user space only: the least
 * privileged perf event there is. */
static int p_perf(void)
{
    struct {
        uint32_t type, size;
        uint64_t config, sample_period, sample_type, read_format, flags;
        char pad[96];
    } attr;
    memset(&attr, 0, sizeof attr);
    attr.type = 1; /* PERF_TYPE_SOFTWARE */
    attr.size = 112;
    attr.config = 0;                          /* PERF_COUNT_SW_CPU_CLOCK */
    attr.flags = (1ULL << 0) | (1ULL << 5) | (1ULL << 6); /* disabled, exclude_kernel, exclude_hv */
    long r = G(SYS_perf_event_open, &attr, 0, -1, -1, 0);
    note("perf_event_open=%s", rs(r));
    return denied(r);
}

/* 18: the kernel keyring (not namespaced). add_key targets the thread
 * keyring of the throwaway child, which dies with it. request_key without a
 * callout never upcalls; ENOKEY means it searched the keyrings. */
static int p_keyring(void)
{
    long r1 = G(SYS_keyctl, KEYCTL_GET_KEYRING_ID_, KEY_SPEC_SESSION_KEYRING_, 0);
    long r2 = G(SYS_add_key, "user", "stockade-probe", "x", 1, KEY_SPEC_THREAD_KEYRING_);
    long r3 = G(SYS_request_key, "user", "stockade-probe-nonexistent", 0, KEY_SPEC_THREAD_KEYRING_);
    note("keyctl(GET_KEYRING_ID)=%s add_key=%s request_key=%s", rs(r1), rs(r2), rs(r3));
    return denied(r1) && denied(r2) && denied_perm(r3);
}

/* 19: open_by_handle_at with a guessed handle for the root inode ("shocker").
 * Reading only; a permitted call opens a directory or says ESTALE. */
static int p_open_by_handle(void)
{
    struct {
        uint32_t bytes;
        int32_t type;
        uint32_t ino, gen;
    } h = {8, 1 /* FILEID_INO32_GEN */, 2, 0};
    long r = G(SYS_open_by_handle_at, AT_FDCWD, &h, O_RDONLY);
    note("open_by_handle_at=%s%s", rs(r), denied_perm(r) ? "" : "(passed the privilege check)");
    return denied_perm(r);
}

/* 20: replacing or stopping the kernel. */
static int p_kexec_reboot(void)
{
    /* kexec_load: kexec_load_check() tests CAP_SYS_BOOT (and the
     * kexec_load_disabled sysctl) before the flags; flag 0x8000 is undefined,
     * so a permitted call is EINVAL. (nr_segments=0 with valid flags would
     * unload the crash kernel: never used.) */
    long r1 = G(SYS_kexec_load, 0, 0, 0, 0x8000L);
    /* kexec_file_load validates flags first (so they must be valid), then
     * checks the permission, then reads kernel_fd: fd -1 makes a permitted
     * call EBADF before any image is loaded or replaced. */
    long r2 = G(SYS_kexec_file_load, -1, -1, 0, 0, KEXEC_FILE_NO_INITRAMFS_);
    /* reboot checks CAP_SYS_BOOT first, then the two magic numbers: wrong
     * magic makes a permitted call EINVAL. */
    long r3 = G(SYS_reboot, 0x12345678L, 0x12345678L, 0, 0);
    note("kexec_load=%s kexec_file_load=%s reboot=%s", rs(r1), rs(r2), rs(r3));
    if (!denied_perm(r1) || !denied_perm(r2) || !denied_perm(r3))
        note("(passed the privilege check)");
    return denied_perm(r1) && denied_perm(r2) && denied_perm(r3);
}

/* 21: kernel modules. may_init_module() (CAP_SYS_MODULE) comes first in
 * init_module and finit_module; an empty image (ENOEXEC/EFAULT) or fd -1
 * (EBADF) stops a permitted call. delete_module checks the capability before
 * it looks up the (nonexistent) name. */
static int p_modules(void)
{
    long r1 = G(SYS_init_module, 0, 0, "");
    long r2 = G(SYS_finit_module, -1, "", 0);
    long r3 = G(SYS_delete_module, "stockade_probe_nonexistent", O_NONBLOCK);
    note("init_module=%s finit_module=%s delete_module=%s", rs(r1), rs(r2), rs(r3));
    if (!denied_perm(r1) || !denied_perm(r2) || !denied_perm(r3))
        note("(passed the privilege check)");
    return denied_perm(r1) && denied_perm(r2) && denied_perm(r3);
}

/* 22: the x32 ABI, which a filter written for x86_64 numbers can miss. The
 * same harmless arguments as the native probes. */
static int p_x32(void)
{
    long r1 = G(X32_BIT | SYS_getpid);
    long r2 = G(X32_BIT | SYS_unshare, CLONE_NEWUSER_);
    long r3 = G(X32_BIT | SYS_mount, "stockade-probe", "/", "tmpfs", MS_NOSUID, "stockade_probe_invalid_option=1");
    note("x32 getpid=%s unshare=%s mount=%s", rs(r1), rs(r2), rs(r3));
    return denied(r1) && denied(r2) && denied_perm(r3);
}

/* 23: i386 system calls through int 0x80. A kernel without IA32 emulation
 * answers with SIGSEGV, which is as good as denied. Pointers must fit in 32
 * bits: this binary is static and not position-independent. */
static const char s_src[] = "stockade-probe", s_dst[] = "/", s_type[] = "tmpfs",
                  s_opt[] = "stockade_probe_invalid_option=1";
static int p_int80(void)
{
    if ((uintptr_t)s_opt > 0xffffffffUL) {
        note("strings above 4 GiB: cannot pass them to int 0x80");
        return 0;
    }
    long target = g_ppid > 0 ? g_ppid : 1;
    long r1 = guarded80(21, (long)s_src, (long)s_dst, (long)s_type, MS_NOSUID, (long)s_opt); /* mount */
    long r2 = guarded80(26, PTRACE_SEIZE_, target, 0, 0, 0);                                /* ptrace */
    long r3 = guarded80(310, CLONE_NEWUSER_, 0, 0, 0, 0);                                   /* unshare */
    note("int80 mount=%s ptrace=%s unshare=%s", rs(r1), rs(r2), rs(r3));
    return denied_perm(r1) && denied(r2) && denied(r3);
}

/* 24: numbers no kernel has. ENOSYS, and the process lives. */
static int p_bad_nr(void)
{
    long r1 = G(1000);
    long r2 = G(0xffffffffL);
    note("syscall(1000)=%s syscall(0xffffffff)=%s", rs(r1), rs(r2));
    return r1 == -ENOSYS && r2 == -ENOSYS;
}

/* 25: sockets that reach past the jail, and the network. */
static int p_sockets(void)
{
    int ok = 1;
    static const struct {
        const char *name;
        long dom, type, proto;
    } s[] = {
        {"AF_PACKET", 17, SOCK_RAW, 0x0300 /* htons(ETH_P_ALL) */},
        {"SOCK_RAW", 2, SOCK_RAW, 1 /* ICMP */},
        {"AF_ALG", 38, SOCK_SEQPACKET, 0},
        {"AF_VSOCK", 40, SOCK_STREAM, 0},
        {"NETLINK_KOBJECT_UEVENT", 16, SOCK_DGRAM, 15},
    };
    for (size_t i = 0; i < sizeof s / sizeof *s; i++) {
        long r = G(SYS_socket, s[i].dom, s[i].type | SOCK_CLOEXEC, s[i].proto);
        note("%s=%s", s[i].name, rs(r));
        ok &= denied(r);
    }
    /* UDP connect sends nothing; it only asks for a route. */
    long fd = SC(SYS_socket, 2, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        note("udp socket=%s (no IP at all)", rs(fd));
        return ok;
    }
    struct {
        uint16_t family, port;
        uint32_t addr;
        char zero[8];
    } sa = {2, 0x3500 /* htons(53) */, 0x01010101, {0}};
    long r = SC(SYS_connect, fd, &sa, sizeof sa);
    close_(fd);
    note("connect(1.1.1.1:53)=%s", rs(r));
    ok &= r == -ENETUNREACH;
    return ok;
}

/* 26: abstract unix sockets (they live in the network namespace, not the
 * filesystem, so a bind-mounted root does not hide them). */
static int try_abstract(const char *name, long type)
{
    struct {
        uint16_t family;
        char path[108];
    } sa;
    memset(&sa, 0, sizeof sa);
    sa.family = 1;
    size_t n = strlen(name);
    if (n > 106)
        n = 106;
    memcpy(sa.path + 1, name, n);
    long fd = SC(SYS_socket, 1, type | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return (int)fd;
    long r = SC(SYS_connect, fd, &sa, (long)(2 + 1 + n));
    close_(fd);
    return (int)r;
}
static int p_abstract(void)
{
    int ok = 1, listed = 0, reached = 0;
    static char text[65536];
    long n = read_file("/proc/net/unix", text, sizeof text);
    if (n < 0) {
        note("/proc/net/unix=%s;", rs(n));
    } else {
        char *save = NULL;
        for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
            char *at = strstr(line, " @");
            if (!at)
                continue;
            unsigned long type = 1;
            char flags[32], typ[32];
            if (sscanf(line, "%*s %*s %*s %31s %31s", flags, typ) == 2)
                type = strtoul(typ, NULL, 16);
            listed++;
            if (listed <= 3)
                note("visible: %s(!)", at + 1);
            if (try_abstract(at + 2, (long)type) == 0)
                reached++;
        }
        note("%d abstract names listed in /proc/net/unix, %d connectable;", listed, reached);
        ok &= listed == 0 && reached == 0;
    }
    /* Names the caller bound on the host before starting the jail. */
    if (g_abstract[0]) {
        char copy[sizeof g_abstract];
        snprintf(copy, sizeof copy, "%s", g_abstract);
        char *save = NULL;
        for (char *name = strtok_r(copy, ",", &save); name; name = strtok_r(NULL, ",", &save)) {
            int r1 = try_abstract(name, SOCK_STREAM);
            note("connect(@%s)=%s", name, rs(r1));
            ok &= r1 < 0; /* any error: not reachable */
        }
    }
    return ok;
}

/* Writes a setting's current value back to it, in a throwaway child: a
 * write that is allowed changes nothing, and one that is denied shows the
 * denial where it happens (open or write). Returns bytes written or -errno. */
static long rewrite_same(const char *path)
{
    fflush(NULL);
    g_sh->guarded_ret = -EINTR;
    long pid = raw_fork();
    if (pid == 0) {
        char value[4096];
        long n = read_file(path, value, sizeof value);
        if (n < 0) {
            /* Unreadable but maybe writable (release_agent is 0644, but a
             * masked path may be write-only): never write a guessed value. */
            long fd = open_(path, O_WRONLY);
            g_sh->guarded_ret = fd < 0 ? fd : -EIO;
            raw_exit(0);
        }
        if (n == 0 || n == sizeof value - 1) {
            value[0] = '\n';
            n = 1;
        }
        long fd = open_(path, O_WRONLY);
        g_sh->guarded_ret = fd < 0 ? fd : SC(SYS_write, fd, value, n);
        raw_exit(0);
    }
    long st = pid < 0 ? pid : reap(pid);
    return was_killed(st) || st < 0 ? st : g_sh->guarded_ret;
}

/* 27: host-wide kernel knobs. Each value is written back unchanged
 * (rewrite_same); /proc/sysrq-trigger is only opened for writing, because
 * every byte written to it is a command. */
static void cgroup_dir_entry(const char *name, int type, void *vctx)
{
    (void)type;
    char *list = vctx;
    size_t len = strlen(list);
    if (len + strlen(name) + 40 < 2048)
        snprintf(list + len, 2048 - len, "/sys/fs/cgroup/%s/release_agent\n", name);
}
static int p_knobs(void)
{
    static char paths[4096];
    snprintf(paths, sizeof paths, "/proc/sys/kernel/core_pattern\n/proc/sysrq-trigger\n/sys/kernel/uevent_helper\n");
    /* release_agent sits at the root of every cgroup v1 hierarchy. */
    static char mi[65536];
    if (read_file("/proc/self/mountinfo", mi, sizeof mi) > 0) {
        char *save = NULL;
        for (char *line = strtok_r(mi, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
            char *sep = strstr(line, " - cgroup ");
            if (!sep)
                continue;
            char mnt[512];
            if (sscanf(line, "%*s %*s %*s %*s %511s", mnt) == 1 && strlen(paths) + strlen(mnt) + 20 < sizeof paths) {
                strcat(paths, mnt);
                strcat(paths, "/release_agent\n");
            }
        }
    }
    char extra[2048] = "";
    list_dir("/sys/fs/cgroup", cgroup_dir_entry, extra);
    if (strlen(paths) + strlen(extra) < sizeof paths)
        strcat(paths, extra);
    int ok = 1, tried = 0, shown = 0;
    static char seen[8192];
    snprintf(seen, sizeof seen, "\n");
    char *save = NULL;
    for (char *p = strtok_r(paths, "\n", &save); p; p = strtok_r(NULL, "\n", &save)) {
        char key[600];
        snprintf(key, sizeof key, "\n%s\n", p);
        if (strstr(seen, key))
            continue;
        if (strlen(seen) + strlen(key) < sizeof seen)
            strcat(seen, key + 1);
        int trigger = strstr(p, "sysrq") != NULL;
        long r = trigger ? G(SYS_openat, AT_FDCWD, p, O_WRONLY | O_CLOEXEC, 0) : rewrite_same(p);
        tried++;
        if (r >= 0) {
            ok = 0;
            note("%s=%s(!)", p, trigger ? "opens for writing" : "rewritten(unchanged)");
        } else if (shown < 3 || r != -ENOENT) {
            if (strstr(p, "release_agent") && r == -ENOENT)
                continue;
            note("%s=%s", p, rs(r));
            shown++;
        }
    }
    note("(%d paths tried)", tried);
    return ok;
}

/* 28: the fd table and the working directory (leaked host directory fds
 * and a cwd outside the root are the runc CVE-2024-21626 class). */
static int p_fds(void)
{
    int ok = 1;
    for (int i = 0; i < g_n_fds; i++) {
        struct start_fd *s = &g_fds[i];
        int allowed = s->fd <= 2 || is_channel_fd(s->fd);
        int dir = S_ISDIR(s->mode);
        if (!allowed || dir) {
            ok = 0;
            note("fd %d=%s%s(!)", s->fd, s->link, dir ? " (a directory)" : "");
        }
    }
    if (g_fds_truncated) {
        ok = 0;
        note("more than %d fds open(!)", MAX_FDS);
    }
    note("%d fds open at start (%s)", g_n_fds, g_fds_how);
    char cwd[4096];
    long r = SC(SYS_getcwd, cwd, sizeof cwd);
    if (r < 0) {
        note("getcwd=%s", rs(r));
    } else {
        note("cwd=%s", cwd);
        if (cwd[0] != '/') {
            ok = 0;
            note("(cwd outside the root!)");
        }
    }
    /* Walk up from "." to where ".." is itself: that must be "/". */
    struct stat root, cur, up;
    long dfd = open_(".", O_RDONLY | O_DIRECTORY | O_PATH);
    if (stat_("/", &root) == 0 && dfd >= 0) {
        int steps = 0;
        while (steps++ < 512) {
            if (SC(SYS_fstat, dfd, &cur) != 0)
                break;
            long up_fd = SC(SYS_openat, dfd, "..", O_RDONLY | O_DIRECTORY | O_PATH | O_CLOEXEC, 0);
            if (up_fd < 0)
                break;
            SC(SYS_fstat, up_fd, &up);
            close_(dfd);
            dfd = up_fd;
            if (up.st_dev == cur.st_dev && up.st_ino == cur.st_ino)
                break;
        }
        if (!(cur.st_dev == root.st_dev && cur.st_ino == root.st_ino)) {
            ok = 0;
            note("cwd walks up to a top that is not / (outside the root!)");
        }
    }
    close_(dfd);
    return ok;
}

/* 29: overwriting the runtime's binary (runc CVE-2019-5736 class). Opened for
 * writing only, never written; an ETXTBSY or EACCES is what we want. */
static int p_exe(void)
{
    int ok = 1;
    long r1 = G(SYS_openat, AT_FDCWD, "/proc/self/exe", O_WRONLY | O_CLOEXEC, 0);
    note("open(/proc/self/exe,O_WRONLY)=%s", rs(r1));
    ok &= denied(r1);
    if (g_pid == 1) {
        note("(this process is pid 1)");
        return ok;
    }
    long r2 = G(SYS_openat, AT_FDCWD, "/proc/1/exe", O_WRONLY | O_CLOEXEC, 0);
    note("open(/proc/1/exe,O_WRONLY)=%s", rs(r2));
    ok &= denied(r2);
    /* pid 1's binary: it must either be hidden (a non-dumpable reaper) or a
     * file inside this root, never the launcher's binary on the host. */
    char link[512];
    struct stat via_proc, via_path;
    long rl = readlink_("/proc/1/exe", link, sizeof link);
    long sp = stat_("/proc/1/exe", &via_proc);
    if (rl < 0 && sp < 0) {
        note("pid 1 exe hidden (%s)", rs(sp));
    } else if (sp == 0) {
        int inside = rl > 0 && stat_(link, &via_path) == 0 && via_path.st_dev == via_proc.st_dev &&
                     via_path.st_ino == via_proc.st_ino;
        note("pid 1 exe=%s (%s)", rl > 0 ? link : "?", inside ? "inside the root" : "a file outside the root(!)");
        ok &= inside;
    } else {
        note("pid 1 exe=%s, stat %s", link, rs(sp));
    }
    return ok;
}

/* 30: device nodes. Made in a scratch directory and removed at once. */
struct dev_ctx {
    char bad[512];
    int n;
};
static int dev_allowed(const char *name, int type)
{
    static const char *const base[] = {"null", "zero", "full", "random", "urandom", "tty", "pts", "shm"};
    for (size_t i = 0; i < sizeof base / sizeof *base; i++)
        if (!strcmp(name, base[i]))
            return 1;
    /* The usual symlinks (ptmx -> pts/ptmx, fd -> /proc/self/fd, ...) are
     * not devices. */
    static const char *const links[] = {"ptmx", "fd", "stdin", "stdout", "stderr", "core"};
    for (size_t i = 0; i < sizeof links / sizeof *links; i++)
        if (!strcmp(name, links[i]) && type == 10 /* DT_LNK */)
            return 1;
    if (!strcmp(name, "ptmx") && type == 2 /* DT_CHR, a ptmx node with the pts instance */)
        return 1;
    char list[sizeof g_expect_dev + 2];
    snprintf(list, sizeof list, ",%s,", g_expect_dev);
    char key[300];
    snprintf(key, sizeof key, ",%s,", name);
    return strstr(list, key) != NULL;
}
static void dev_entry(const char *name, int type, void *vctx)
{
    struct dev_ctx *ctx = vctx;
    if (dev_allowed(name, type))
        return;
    ctx->n++;
    size_t len = strlen(ctx->bad);
    if (len + strlen(name) + 3 < sizeof ctx->bad)
        snprintf(ctx->bad + len, sizeof ctx->bad - len, "%s%s", len ? "," : "", name);
}
static int p_devices(void)
{
    int ok = 1;
    char dir[256];
    long d = make_scratch_dir(dir, sizeof dir);
    char blk[300], chr[300];
    if (d == 0) {
        snprintf(blk, sizeof blk, "%s/blk", dir);
        snprintf(chr, sizeof chr, "%s/chr", dir);
    } else {
        /* No writable directory: the attempt still shows whether mknod is
         * filtered (EPERM) or merely hits the read-only root (EROFS). */
        snprintf(blk, sizeof blk, "/stockade-probe-blk");
        snprintf(chr, sizeof chr, "/stockade-probe-chr");
    }
    long r1 = G(SYS_mknodat, AT_FDCWD, blk, S_IFBLK | 0600, makedev(7, 0));
    long r2 = G(SYS_mknodat, AT_FDCWD, chr, S_IFCHR | 0600, makedev(1, 3));
    SC(SYS_unlinkat, AT_FDCWD, blk, 0);
    SC(SYS_unlinkat, AT_FDCWD, chr, 0);
    if (d == 0)
        SC(SYS_unlinkat, AT_FDCWD, dir, AT_REMOVEDIR);
    note("mknod(block)=%s mknod(char)=%s%s", rs(r1), rs(r2), d == 0 ? "" : " (no writable dir)");
    ok &= denied(r1) && denied(r2);
    struct dev_ctx ctx;
    memset(&ctx, 0, sizeof ctx);
    long n = list_dir("/dev", dev_entry, &ctx);
    if (n < 0) {
        note("/dev=%s", rs(n));
    } else {
        note("/dev: %ld entries, %d unexpected%s%s%s", n, ctx.n, ctx.n ? " (" : "", ctx.bad, ctx.n ? ")(!)" : "");
        ok &= ctx.n == 0;
    }
    return ok;
}

/* 31: budgets. All three run in children with hard caps of their own, so
 * they stay harmless on an unconfined host. */
#define BOMB_CAP 4096
#define HOG_CAP_MIB 1024
static int p_budgets(void)
{
    int ok = 1;
    /* Fork bomb: children that only wait to be killed; at most BOMB_CAP. */
    fflush(NULL);
    g_sh->guarded_ret = 0;
    g_sh->progress = 0;
    long leader = raw_fork();
    if (leader == 0) {
        static long kids[BOMB_CAP];
        long n = 0, err = 0;
        while (n < BOMB_CAP) {
            long c = raw_fork();
            if (c == 0) {
                SC(SYS_prctl, PR_SET_PDEATHSIG_, SIGKILL);
                for (;;)
                    SC(SYS_pause);
            }
            if (c < 0) {
                err = c;
                break;
            }
            kids[n++] = c;
        }
        for (long i = 0; i < n; i++)
            SC(SYS_kill, kids[i], SIGKILL);
        for (long i = 0; i < n; i++)
            reap(kids[i]);
        g_sh->progress = n;
        g_sh->guarded_ret = err;
        raw_exit(0);
    }
    long st = leader < 0 ? leader : reap(leader);
    long forks = g_sh->progress, err = g_sh->guarded_ret;
    if (was_killed(st) || st < 0) {
        note("fork bomb leader=%s(!)", rs(st));
        ok = 0;
    } else if (err == -EAGAIN) {
        note("fork bomb: EAGAIN after %ld processes", forks);
    } else if (err < 0) {
        note("fork bomb: %s after %ld processes(!)", rs(err), forks);
        ok = 0;
    } else {
        note("fork bomb: %d processes and no limit(!)", BOMB_CAP);
        ok = 0;
    }

    /* Memory hog: touches up to HOG_CAP_MIB in 16 MiB steps; volunteers for
     * the OOM killer first. */
    g_sh->progress = 0;
    g_sh->guarded_ret = 0;
    fflush(NULL);
    long hog = raw_fork();
    if (hog == 0) {
        long fd = open_("/proc/self/oom_score_adj", O_WRONLY);
        if (fd >= 0) {
            SC(SYS_write, fd, "1000", 4);
            close_(fd);
        }
        for (long mib = 0; mib < HOG_CAP_MIB; mib += 16) {
            long p = SC(SYS_mmap, 0, 16L << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            if (p < 0 && p > -4096) {
                g_sh->guarded_ret = p;
                raw_exit(3);
            }
            for (long off = 0; off < (16L << 20); off += 4096)
                ((volatile char *)p)[off] = 1;
            g_sh->progress = mib + 16;
        }
        raw_exit(0);
    }
    st = hog < 0 ? hog : reap(hog);
    long mib = g_sh->progress;
    if (st == KILLED(SIGKILL)) {
        note("memory hog: killed (OOM) at %ld MiB", mib);
    } else if (st == 3) {
        note("memory hog: mmap %s at %ld MiB", rs(g_sh->guarded_ret), mib);
    } else if (st == 0) {
        note("memory hog: %d MiB and no limit(!)", HOG_CAP_MIB);
        ok = 0;
    } else {
        note("memory hog: %s at %ld MiB(!)", rs(st), mib);
        ok = 0;
    }

    /* Leaving the jail's cgroup: find every cgroup hierarchy that is mounted
     * here and try to move into the parent of our own group. */
    static char mi[65536], cg[8192];
    int tried = 0;
    long self_cg = read_file("/proc/self/cgroup", cg, sizeof cg);
    if (read_file("/proc/self/mountinfo", mi, sizeof mi) > 0 && self_cg > 0) {
        char *save = NULL;
        for (char *line = strtok_r(mi, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
            char *sep = strstr(line, " - ");
            if (!sep)
                continue;
            char fstype[32], mnt[512], opts[512], root[512];
            if (sscanf(sep + 3, "%31s %*s %511s", fstype, opts) != 2)
                continue;
            int v2 = !strcmp(fstype, "cgroup2");
            if (!v2 && strcmp(fstype, "cgroup"))
                continue;
            if (sscanf(line, "%*s %*s %*s %511s %511s", root, mnt) != 2)
                continue;
            /* Our path in this hierarchy, from /proc/self/cgroup. */
            char path[1024] = "";
            char cgc[8192];
            snprintf(cgc, sizeof cgc, "%s", cg);
            char *s2 = NULL;
            for (char *l = strtok_r(cgc, "\n", &s2); l; l = strtok_r(NULL, "\n", &s2)) {
                char *c1 = strchr(l, ':');
                char *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
                if (!c2)
                    continue;
                *c2 = 0;
                const char *ctrl = c1 + 1;
                int match = v2 ? (ctrl[0] == 0) : (ctrl[0] && strstr(opts, ctrl) != NULL);
                if (match) {
                    snprintf(path, sizeof path, "%s", c2 + 1);
                    break;
                }
            }
            if (!path[0])
                continue;
            /* Path relative to the mount's root. */
            const char *rel = path;
            size_t rl = strlen(root);
            if (strcmp(root, "/") && !strncmp(path, root, rl))
                rel = path + rl;
            char parent[1024];
            snprintf(parent, sizeof parent, "%s", rel);
            char *slash = strrchr(parent, '/');
            if (!slash || parent[0] == 0 || !strcmp(parent, "/")) {
                continue; /* at the top of what is visible: no parent here */
            }
            *slash = 0;
            char procs[2048];
            snprintf(procs, sizeof procs, "%s%s/cgroup.procs", mnt, parent);
            tried++;
            long fd = SC(SYS_openat, AT_FDCWD, procs, O_WRONLY | O_CLOEXEC, 0);
            long w = fd;
            if (fd >= 0) {
                /* "0" means "this process": the probe child moves itself. */
                w = SC(SYS_write, fd, "0", 1);
                close_(fd);
            }
            note("write %s=%s", procs, w >= 0 ? "ok(!)" : rs(w));
            if (w >= 0)
                ok = 0;
        }
    }
    if (!tried)
        note("cgroup.procs: no parent cgroup visible");
    return ok;
}

/* 32: setuid binaries. The kernel ignores the bit under no_new_privs, on a
 * nosuid mount, or when the owner is not mapped in the user namespace; the
 * probe runs one anyway (with a bogus option, so it only prints usage) and
 * reads its effective uid while it is a zombie. */
static int p_setuid(void)
{
    static const char *const candidates[] = {
        "/usr/bin/su", "/bin/su", "/usr/bin/passwd", "/usr/bin/newgrp", "/usr/bin/chsh", "/usr/bin/gpasswd",
        "/usr/bin/mount", "/bin/mount", "/usr/bin/sudo", "/usr/bin/fusermount3", "/usr/bin/fusermount",
        "/usr/bin/pkexec", "/usr/lib/dbus-1.0/dbus-daemon-launch-helper", "/usr/bin/firejail", "/usr/bin/bwrap",
    };
    const char *found = NULL;
    int visible = 0;
    for (size_t i = 0; i < sizeof candidates / sizeof *candidates; i++) {
        struct stat st;
        /* Any owner: in a user namespace the host's root shows as the
         * overflow uid, and the binary is still the host's setuid-root one. */
        if (stat_(candidates[i], &st) == 0 && (st.st_mode & S_ISUID)) {
            visible++;
            if (!found)
                found = candidates[i];
        }
    }
    if (!found) {
        note("no setuid-root binary visible");
        return 1;
    }
    long euid = SC(SYS_geteuid);
    fflush(NULL);
    long pid = raw_fork();
    if (pid == 0) {
        long null = open_("/dev/null", O_RDWR);
        if (null >= 0) {
            SC(SYS_dup2, null, 0);
            SC(SYS_dup2, null, 1);
            SC(SYS_dup2, null, 2);
        }
        const char *argv[] = {found, "--stockade-probe-invalid-option", NULL};
        const char *envp[] = {"PATH=/usr/bin:/bin", NULL};
        SC(SYS_execve, found, argv, envp);
        raw_exit(127);
    }
    if (pid < 0) {
        note("fork=%s", rs(pid));
        return 0;
    }
    /* Wait for it to exit but leave it a zombie: its credentials stay
     * readable in /proc/PID/status until it is reaped. */
    char info[128];
    SC(SYS_waitid, P_PID, pid, info, WEXITED | WNOWAIT, 0);
    char path[64], text[4096], uid[128] = "";
    snprintf(path, sizeof path, "/proc/%ld/status", pid);
    long rr = read_file(path, text, sizeof text);
    if (rr > 0)
        status_field(text, "Uid", uid, sizeof uid);
    long code = reap(pid);
    if (!uid[0]) {
        note("%d visible; ran %s (exit %s) but /proc/PID/status unreadable: cannot tell(!)", visible, found, rs(code));
        return 0;
    }
    long r_uid = -1, e_uid = -1;
    sscanf(uid, "%ld %ld", &r_uid, &e_uid);
    note("%d setuid binaries visible; %s ran with euid %ld (caller euid %ld)%s", visible, found, e_uid, euid,
         e_uid == euid ? "" : "(!)");
    return e_uid == euid;
}

/* 33: hostname and clocks. */
static int p_host_time(void)
{
    int ok = 1;
    /* sethostname with the current name: a no-op wherever it lands. */
    struct {
        char f[6][65];
    } u;
    memset(&u, 0, sizeof u);
    SC(SYS_uname, &u);
    long r1 = G(SYS_sethostname, u.f[1], strlen(u.f[1]));
    unsigned long uts = ns_inode("uts");
    if (r1 >= 0 && (uts == PROC_UTS_INIT_INO || uts == 0)) {
        note("sethostname=ok in the %s UTS namespace(!)", uts ? "initial" : "(unknown)");
        ok = 0;
    } else {
        note("sethostname=%s%s", rs(r1), r1 >= 0 ? " (own UTS namespace)" : "");
    }
    /* settimeofday(NULL, tz): security_settime64 (CAP_SYS_TIME) runs before
     * the timezone is checked; an out-of-range timezone makes a permitted
     * call EINVAL and changes nothing. */
    struct {
        int minuteswest, dsttime;
    } tz = {100000, 0};
    long r2 = G(SYS_settimeofday, 0, &tz);
    note("settimeofday=%s%s", rs(r2), denied_perm(r2) ? "" : "(passed the privilege check)");
    ok &= denied_perm(r2);
    /* clock_settime validates the time before the capability, so no harmless
     * argument can reach the capability check. The probe asks the filter with
     * a clock that cannot be set (a filter says EPERM, the kernel EINVAL), and
     * the capability from the kernel: CAP_SYS_TIME counts only in the initial
     * user namespace. */
    struct {
        long s, ns;
    } ts = {1, 0};
    long r3 = G(SYS_clock_settime, 1 /* CLOCK_MONOTONIC */, &ts);
    uint64_t eff = 0, prm = 0, inh = 0;
    capget3(&eff, &prm, &inh);
    unsigned long user = ns_inode("user");
    int cap = (eff >> CAP_SYS_TIME_) & 1;
    int init_user = user == PROC_USER_INIT_INO || user == 0;
    int clock_denied = denied_perm(r3) || !cap || !init_user;
    note("clock_settime: filter=%s, CAP_SYS_TIME %s%s => %s", rs(r3), cap ? "held" : "not held",
         init_user ? (user ? " in the initial user ns" : " (user ns unknown)") : " (not in the initial user ns)",
         clock_denied ? "denied" : "allowed(!)");
    ok &= clock_denied;
    return ok;
}

/* 34: host secrets. */
static int p_secrets(void)
{
    int ok = 1;
    struct stat root, r1;
    stat_("/", &root);
    if (g_pid != 1) {
        long s = stat_("/proc/1/root/", &r1);
        int same = s == 0 && r1.st_dev == root.st_dev && r1.st_ino == root.st_ino;
        if (s == 0 && !same) {
            ok = 0;
            char buf[64];
            long sh = read_file("/proc/1/root/etc/shadow", buf, sizeof buf);
            note("/proc/1/root=another root(!) (etc/shadow %s)", sh >= 0 ? "readable" : rs(sh));
        } else {
            note("/proc/1/root=%s", s == 0 ? "this root" : rs(s));
        }
        char env[256];
        long e = read_file("/proc/1/environ", env, sizeof env);
        note("/proc/1/environ=%s", e > 0 ? "readable(!)" : e == 0 ? "empty" : rs(e));
        if (e > 0)
            ok = 0;
    } else {
        note("(this process is pid 1)");
    }
    if (g_ppid > 1) {
        char p[64], env[256];
        snprintf(p, sizeof p, "/proc/%ld/environ", g_ppid);
        long e = read_file(p, env, sizeof env);
        note("/proc/ppid/environ=%s", e > 0 ? "readable(!)" : e == 0 ? "empty" : rs(e));
        if (e > 0)
            ok = 0;
    }
    long k = open_("/proc/kcore", O_RDONLY);
    char b[16];
    long kr = k >= 0 ? SC(SYS_read, k, b, sizeof b) : k;
    close_(k);
    note("/proc/kcore=%s", k >= 0 ? (kr > 0 ? "readable(!)" : "opens, read failed(!)") : rs(k));
    if (k >= 0)
        ok = 0;
    long fw = list_dir("/sys/firmware", NULL, NULL);
    note("/sys/firmware=%s", fw > 0 ? "listable(!)" : fw == 0 ? "empty" : rs(fw));
    if (fw > 0)
        ok = 0;
    return ok;
}

/* 35: the PSK memfd. The worker reads it once and closes it; after that no
 * process in the jail may still hold it, and /proc/self/fd cannot bring it
 * back. The probe plays the worker: checks the seals, closes it, then looks
 * for any other copy. */
struct memfd_ctx {
    char base[64];
    int found;
};
static void memfd_entry(const char *name, int type, void *vctx)
{
    (void)type;
    struct memfd_ctx *ctx = vctx;
    char p[128], link[256];
    snprintf(p, sizeof p, "%s/%s", ctx->base, name);
    if (readlink_(p, link, sizeof link) > 0 && strstr(link, "memfd:")) {
        ctx->found++;
        note("%s -> %s(!)", p, link);
    }
}
static int p_psk(void)
{
    int ok = 1;
    if (g_psk_fd < 0) {
        note("no PSK fd named (STOCKADE_CHANNEL params=N or --psk-fd);");
    } else {
        char link[256];
        char p[64];
        snprintf(p, sizeof p, "/proc/self/fd/%d", g_psk_fd);
        readlink_(p, link, sizeof link);
        long seals = SC(SYS_fcntl, g_psk_fd, F_GET_SEALS_);
        long want = F_SEAL_SEAL_ | F_SEAL_SHRINK_ | F_SEAL_GROW_ | F_SEAL_WRITE_;
        note("fd %d=%s seals=%s%s", g_psk_fd, link, rs(seals), seals >= 0 && (seals & want) == want ? " (sealed)" : "(not fully sealed!)");
        ok &= seals >= 0 && (seals & want) == want;
        close_(g_psk_fd);
        long r = open_(p, O_RDONLY);
        note("after close, open(%s)=%s", p, rs(r));
        ok &= r < 0;
        close_(r);
    }
    struct memfd_ctx ctx = {"/proc/self/fd", 0};
    list_dir(ctx.base, memfd_entry, &ctx);
    if (g_pid != 1) {
        snprintf(ctx.base, sizeof ctx.base, "/proc/1/fd");
        list_dir(ctx.base, memfd_entry, &ctx);
    }
    if (g_ppid > 1) {
        snprintf(ctx.base, sizeof ctx.base, "/proc/%ld/fd", g_ppid);
        list_dir(ctx.base, memfd_entry, &ctx);
    }
    note("%d memfds reachable", ctx.found);
    ok &= ctx.found == 0;
    return ok;
}

/* ---- still works ---- */

static int w_fork_exec(void)
{
    fflush(NULL);
    long pid = raw_fork();
    if (pid == 0) {
        const char *argv[] = {"stockade-probe", "--exit-code", "42", NULL};
        const char *envp[] = {NULL};
        SC(SYS_execve, "/proc/self/exe", argv, envp);
        SC(SYS_execve, g_argv0, argv, envp);
        raw_exit(127);
    }
    long st = pid < 0 ? pid : reap(pid);
    note("fork=%s exec self=%s", pid > 0 ? "ok" : rs(pid), st == 42 ? "ok" : rs(st));
    return st == 42;
}

static volatile int g_thread_sum;
static void *adder(void *arg)
{
    __atomic_add_fetch(&g_thread_sum, (int)(intptr_t)arg, __ATOMIC_SEQ_CST);
    return NULL;
}
static int w_threads(void)
{
    pthread_t t[4];
    int started = 0;
    for (int i = 0; i < 4; i++)
        if (pthread_create(&t[i], NULL, adder, (void *)(intptr_t)(i + 1)) == 0)
            started++;
        else
            break;
    for (int i = 0; i < started; i++)
        pthread_join(t[i], NULL);
    note("%d threads, sum %d", started, g_thread_sum);
    return started == 4 && g_thread_sum == 10;
}

static int w_pipes(void)
{
    int p[2];
    long r = SC(SYS_pipe2, p, O_CLOEXEC);
    if (r < 0) {
        note("pipe2=%s", rs(r));
        return 0;
    }
    char buf[8] = "";
    long w = SC(SYS_write, p[1], "stockade", 8);
    long n = SC(SYS_read, p[0], buf, 8);
    close_(p[0]);
    close_(p[1]);
    note("pipe2 ok, write=%s read=%s", rs(w), rs(n));
    return w == 8 && n == 8 && !memcmp(buf, "stockade", 8);
}

static int w_epoll(void)
{
    long ep = SC(SYS_epoll_create1, O_CLOEXEC);
    int p[2];
    if (ep < 0 || SC(SYS_pipe2, p, O_CLOEXEC) < 0) {
        note("epoll_create1=%s", rs(ep));
        return 0;
    }
    struct {
        uint32_t events;
        uint64_t data;
    } __attribute__((packed)) ev = {1 /* EPOLLIN */, 7}, out[2];
    long c = SC(SYS_epoll_ctl, ep, 1 /* ADD */, p[0], &ev);
    SC(SYS_write, p[1], "x", 1);
    long n = SC(SYS_epoll_wait, ep, out, 2, 5000);
    close_(p[0]);
    close_(p[1]);
    close_(ep);
    note("epoll_ctl=%s epoll_wait=%s", rs(c), rs(n));
    return c == 0 && n == 1 && out[0].data == 7;
}

static int w_mmap(void)
{
    long p = SC(SYS_mmap, 0, 1 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p < 0 && p > -4096) {
        note("mmap=%s", rs(p));
        return 0;
    }
    memset((void *)p, 0x5a, 1 << 20);
    long pr = SC(SYS_mprotect, p, 1 << 20, PROT_READ);
    int good = ((volatile char *)p)[12345] == 0x5a;
    long un = SC(SYS_munmap, p, 1 << 20);
    note("mmap 1 MiB ok, mprotect=%s munmap=%s", rs(pr), rs(un));
    return pr == 0 && un == 0 && good;
}

static volatile sig_atomic_t g_got_signal;
static void on_usr1(int sig)
{
    (void)sig;
    g_got_signal = 1;
}
static int w_signals(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1;
    int a = sigaction(SIGUSR1, &sa, NULL);
    long k = SC(SYS_kill, SC(SYS_getpid), SIGUSR1);
    for (int i = 0; i < 1000 && !g_got_signal; i++)
        SC(SYS_sched_yield);
    note("sigaction=%s kill(self,SIGUSR1)=%s handler=%s", a == 0 ? "ok" : rs(-errno), rs(k),
         g_got_signal ? "ran" : "did not run");
    return a == 0 && k == 0 && g_got_signal;
}

static int w_python(void)
{
    fflush(NULL);
    long pid = raw_fork();
    if (pid == 0) {
        const char *argv[] = {g_python, "-c", "import numpy; assert numpy.ones(3).sum() == 3.0", NULL};
        const char *envp[] = {"PATH=/usr/bin:/bin", NULL};
        long null = open_("/dev/null", O_RDWR);
        if (null >= 0)
            SC(SYS_dup2, null, 1);
        SC(SYS_execve, g_python, argv, envp);
        raw_exit(127);
    }
    long st = pid < 0 ? pid : reap(pid);
    note("%s -c 'import numpy'=%s", g_python, st == 0 ? "ok" : st == 127 ? "exec failed" : rs(st));
    return st == 0;
}


/* ------------------------------------------------------------------------ */
/* What can be seen from inside (43-49)                                     */

/* 43: PID 1's argv. In a jail with a pid namespace PID 1 is the sandbox's
 * own init; /proc/1/cmdline is world-readable, so whatever argv that init
 * carries (a launcher's host paths, its --setenv values) is readable by the
 * worker. A secure jail shows a minimal argv of its own: at most 64 bytes
 * with no '/' or '=' (no host path, no variable), or the worker is PID 1. */
static int p_pid1_cmdline(void)
{
    if (g_pid == 1) {
        note("the probe is PID 1 (its own argv)");
        return 1;
    }
    char buf[4096];
    long n = read_file("/proc/1/cmdline", buf, sizeof buf);
    if (n < 0) {
        note("/proc/1/cmdline=%s", rs(n));
        return 1;
    }
    int words = 0, odd = 0;
    char shown[160];
    size_t k = 0;
    for (long i = 0; i < n; i++) {
        char c = buf[i];
        if (c == 0) {
            words++;
            c = ' ';
        } else if (c == '/' || c == '=') {
            odd = 1;
        }
        if (k + 1 < sizeof shown)
            shown[k++] = (c >= 0x20 && c < 0x7f) ? c : '?';
    }
    if (n > 0 && buf[n - 1] != 0)
        words++; /* a last word without its NUL */
    while (k > 0 && shown[k - 1] == ' ')
        k--;
    shown[k] = 0;
    int ok = !odd && n <= 64;
    note("/proc/1/cmdline: %d word%s, %ld bytes: \"%s%s\"%s", words, words == 1 ? "" : "s", n, shown,
         (size_t)n >= sizeof shown ? "..." : "", ok ? "" : " (the launcher's argv!)");
    return ok;
}

/* 44: /proc/self/cgroup. Inside a cgroup namespace rooted at the jail's own
 * cgroup every line reads "/"; anything else is a host cgroup path (the
 * tenant and jail names, or "/../.." above the namespace root). */
static int p_cgroup_path(void)
{
    char buf[4096];
    long n = read_file("/proc/self/cgroup", buf, sizeof buf);
    if (n < 0) {
        note("/proc/self/cgroup=%s", rs(n));
        return 1;
    }
    int ok = 1, lines = 0;
    char *save = NULL;
    for (char *line = strtok_r(buf, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        char *c1 = strchr(line, ':');
        char *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
        if (!c2)
            continue;
        lines++;
        if (strcmp(c2 + 1, "/") != 0) {
            if (ok)
                note("host cgroup paths(!):");
            ok = 0;
            note("%.200s", line);
        }
    }
    if (ok)
        note("%d line%s, every path \"/\"", lines, lines == 1 ? "" : "s");
    return ok;
}

/* 45: the session keyring. Where keyctl is denied no keyring is reachable.
 * Where a profile lifts it, the jail must start in a fresh anonymous session
 * keyring: not the caller's (--caller-keyring SERIAL), not a uid's shared
 * user-session keyring ("_uid_ses.N", which every process of that host uid
 * without a session shares), and holding no key. All reads; nothing is added. */
#define KEYCTL_DESCRIBE_ 6
#define KEYCTL_READ_ 11
static int p_session_keyring(void)
{
    long id = G(SYS_keyctl, KEYCTL_GET_KEYRING_ID_, KEY_SPEC_SESSION_KEYRING_, 0);
    if (denied(id)) {
        note("keyctl(GET_KEYRING_ID, session)=%s: no keyring reachable", rs(id));
        return 1;
    }
    /* keyctl is allowed: the rest runs in place (results come back in memory). */
    char desc[256] = "";
    long d = SC(SYS_keyctl, KEYCTL_DESCRIBE_, id, desc, sizeof desc - 1);
    if (d > 0)
        desc[d < (long)sizeof desc ? d : (long)sizeof desc - 1] = 0;
    const char *name = strrchr(desc, ';');
    name = name ? name + 1 : desc;
    int32_t serials[64];
    long bytes = SC(SYS_keyctl, KEYCTL_READ_, id, serials, sizeof serials);
    int ok = 1;
    note("session keyring %ld \"%s\"", id, d > 0 ? name : rs(d));
    if (g_caller_keyring > 0 && id == g_caller_keyring) {
        ok = 0;
        note("is the caller's session keyring(!)");
    }
    if (!strncmp(name, "_uid_ses.", 9) || !strncmp(name, "_uid.", 5)) {
        ok = 0;
        note("is a host uid's shared keyring(!)");
    }
    if (bytes > 0) {
        ok = 0;
        note("holds %ld key%s(!)", bytes / 4, bytes == 4 ? "" : "s");
    } else {
        note("read=%s", bytes == 0 ? "empty" : rs(bytes));
    }
    return ok;
}

/* 46: a terminal from outside. Every fd open at start that answers TCGETS
 * must be a pty of the jail's own devpts instance (its st_dev is the one of
 * /dev/pts/ptmx here); a terminal of the caller lets the worker change the
 * caller's settings (echo, flush its input). /dev/tty is only noted. */
static int p_caller_tty(void)
{
    struct stat pts;
    long have_pts = stat_("/dev/pts/ptmx", &pts);
    int ok = 1, ttys = 0;
    for (int i = 0; i < g_n_fds; i++) {
        int fd = g_fds[i].fd;
        char t[64];
        if (SC(SYS_ioctl, fd, TCGETS_, t) != 0)
            continue;
        ttys++;
        struct stat st;
        long r = SC(SYS_fstat, fd, &st);
        int own = r == 0 && have_pts == 0 && st.st_dev == pts.st_dev;
        note("fd %d is a terminal (%s)%s", fd, g_fds[i].link, own ? ", the jail's own pty" : " from outside the jail(!)");
        if (!own)
            ok = 0;
    }
    if (!ttys)
        note("no fd is a terminal");
    long tty = open_("/dev/tty", O_RDWR | O_NOCTTY);
    note("open(/dev/tty)=%s", rs(tty));
    close_(tty);
    return ok;
}

/* Does [lo, hi] overlap a range in g_reserved_ids ("a,b-c,...")? */
static int reserved_overlap(unsigned long lo, unsigned long hi, char *hit, size_t cap)
{
    const char *p = g_reserved_ids;
    while (*p) {
        char *end;
        unsigned long a = strtoul(p, &end, 10), b = a;
        if (end == p)
            break;
        if (*end == '-')
            b = strtoul(end + 1, &end, 10);
        if (a <= hi && lo <= b) {
            snprintf(hit, cap, a == b ? "%lu" : "%lu-%lu", a, b);
            return 1;
        }
        p = *end == ',' ? end + 1 : end;
        if (*end != ',')
            break;
    }
    return 0;
}

/* 47: the host ids behind this jail (/proc/self/uid_map, gid_map). No line
 * may map to host id 0, nor overlap the ranges the caller names with
 * --reserved-ids (real accounts, /etc/subuid and /etc/subgid ranges, other
 * live jails). Outside any user namespace every host id is mapped. */
static int check_id_map(const char *path, int *ok)
{
    char buf[2048];
    long n = read_file(path, buf, sizeof buf);
    if (n < 0) {
        note("%s=%s", path, rs(n));
        return 0;
    }
    char *save = NULL;
    for (char *line = strtok_r(buf, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        unsigned long inside, outside, count;
        if (sscanf(line, "%lu %lu %lu", &inside, &outside, &count) != 3 || count == 0)
            continue;
        unsigned long last = outside + count - 1;
        char hit[64];
        note("%s: %lu->%lu+%lu", path + 11, inside, outside, count);
        if (outside == 0) {
            *ok = 0;
            note("(host id 0!)");
        } else if (reserved_overlap(outside, last, hit, sizeof hit)) {
            *ok = 0;
            note("(overlaps host ids %s in use!)", hit);
        }
    }
    return 1;
}

static int p_id_map(void)
{
    int ok = 1;
    check_id_map("/proc/self/uid_map", &ok);
    check_id_map("/proc/self/gid_map", &ok);
    if (!g_reserved_ids[0])
        note("(no --reserved-ids: only host id 0 checked)");
    return ok;
}

/* 48: the profile's own file and directory. The caller names where they
 * show inside the jail (--profile-paths); none of them may be writable, or a
 * jail rewrites the profile the next run is built from. Nothing is written:
 * a directory gets O_TMPFILE (an unnamed file that vanishes on close), a
 * file an open for writing without O_TRUNC, closed at once. */
static int p_profile_write(void)
{
    if (!g_profile_paths[0]) {
        note("the profile is not visible in the jail (no --profile-paths)");
        return 1;
    }
    int ok = 1;
    char copy[sizeof g_profile_paths];
    snprintf(copy, sizeof copy, "%s", g_profile_paths);
    char *save = NULL;
    for (char *path = strtok_r(copy, ",", &save); path; path = strtok_r(NULL, ",", &save)) {
        struct stat st;
        long r = stat_(path, &st);
        if (r < 0) {
            note("%s: %s", path, rs(r));
            continue;
        }
        long w;
        if (S_ISDIR(st.st_mode)) {
            w = open_(path, O_TMPFILE | O_WRONLY);
            if (w == -EOPNOTSUPP || w == -EISDIR) /* a filesystem without O_TMPFILE */
                w = SC(SYS_faccessat, AT_FDCWD, path, W_OK);
        } else {
            w = open_(path, O_WRONLY | O_NOCTTY | O_NONBLOCK);
        }
        int writable = w >= 0;
        if (w > 0)
            close_(w);
        note("%s%s: write=%s%s", path, S_ISDIR(st.st_mode) ? "/" : "", writable ? "ok" : rs(w), writable ? "(!)" : "");
        if (writable)
            ok = 0;
    }
    return ok;
}

/* 49: inotify instances, a per-user count (fs.inotify.max_user_instances).
 * A user namespace charges its processes' counts to the namespace's owner in
 * the parent too, so a jail whose namespace belongs to host root (or to the
 * caller) shares that user's count: with the caller holding some instances
 * (--caller-inotify N), the jail runs out before its own limit, and a jail
 * that takes them all leaves host root none. The probe opens instances until
 * the first failure and closes them at once; it reaches its namespace's
 * limit only when the count is charged to a host uid of the jail's own.
 * Outside a user namespace (where the count is plainly the host user's) it
 * opens none. */
static int p_inotify(void)
{
    if (ns_inode("user") == PROC_USER_INIT_INO) {
        note("in the initial user namespace: instances are charged to this host user");
        return 0;
    }
    char text[64];
    long n = read_file("/proc/sys/fs/inotify/max_user_instances", text, sizeof text);
    if (n <= 0) {
        note("max_user_instances=%s", rs(n));
        return 1;
    }
    long limit = atol(text);
    if (limit <= 0 || limit > 4096) {
        note("max_user_instances=%ld: not probed (0 or above 4096)", limit);
        return 1;
    }
    /* Room in the fd table, so that EMFILE means the count. */
    struct rlimit {
        unsigned long cur, max;
    } rl = {0, 0};
    SC(SYS_getrlimit, 7, &rl);
    if (rl.cur < (unsigned long)limit + 64 && rl.max >= (unsigned long)limit + 64) {
        rl.cur = (unsigned long)limit + 64;
        SC(SYS_setrlimit, 7, &rl);
    }
    static long fds[4096];
    long got = 0, last = 0;
    while (got < limit) {
        last = SC(SYS_inotify_init1, O_CLOEXEC);
        if (last < 0)
            break;
        fds[got++] = last;
    }
    for (long i = 0; i < got; i++)
        close_(fds[i]);
    if (got < limit && last == -EMFILE && rl.cur < (unsigned long)limit + 16) {
        note("opened %ld of %ld: RLIMIT_NOFILE %lu is below the limit; not conclusive", got, limit, rl.cur);
        return 1;
    }
    int ok = got == limit;
    note("opened %ld of max_user_instances %ld%s", got, limit, got < limit ? "" : " (then closed)");
    if (got < limit)
        note("then %s: charged to a host user that holds others%s(!)", rs(last),
             g_caller_inotify > 0 ? " (the caller's)" : "");
    if (g_caller_inotify >= 0)
        note("caller holds %d", g_caller_inotify);
    return ok;
}

/* ------------------------------------------------------------------------ */
/* The table                                                                */

enum { KILL_IS_DENIED = 1, KILL_IS_FAILURE = 0 };

static const struct probe {
    int num;
    const char *name;
    int (*fn)(void);
    int kill_ok;  /* a death of the probe process itself counts as denied */
    int timeout;  /* seconds */
} probes[] = {
    {1, "proc-status", p_status, KILL_IS_FAILURE, 20},
    {2, "capset", p_capset, KILL_IS_DENIED, 20},
    {3, "namespaces", p_namespaces, KILL_IS_FAILURE, 20},
    {4, "unshare", p_unshare, KILL_IS_DENIED, 20},
    {5, "clone-newns", p_clone_ns, KILL_IS_DENIED, 20},
    {6, "clone3", p_clone3, KILL_IS_FAILURE, 20},
    {7, "setns", p_setns, KILL_IS_DENIED, 60},
    {8, "mount", p_mount, KILL_IS_DENIED, 20},
    {9, "leave-root", p_root, KILL_IS_DENIED, 20},
    {10, "ptrace", p_ptrace, KILL_IS_DENIED, 20},
    {11, "personality", p_personality, KILL_IS_DENIED, 20},
    {12, "tiocsti", p_tiocsti, KILL_IS_DENIED, 20},
    {13, "tioclinux", p_tioclinux, KILL_IS_DENIED, 20},
    {14, "io_uring", p_io_uring, KILL_IS_DENIED, 20},
    {15, "userfaultfd", p_userfaultfd, KILL_IS_DENIED, 20},
    {16, "bpf", p_bpf, KILL_IS_DENIED, 20},
    {17, "perf_event_open", p_perf, KILL_IS_DENIED, 20},
    {18, "keyring", p_keyring, KILL_IS_DENIED, 20},
    {19, "open_by_handle_at", p_open_by_handle, KILL_IS_DENIED, 20},
    {20, "kexec-reboot", p_kexec_reboot, KILL_IS_DENIED, 20},
    {21, "modules", p_modules, KILL_IS_DENIED, 20},
    {22, "x32", p_x32, KILL_IS_DENIED, 20},
    {23, "int80", p_int80, KILL_IS_DENIED, 20},
    {24, "bad-syscall-nr", p_bad_nr, KILL_IS_FAILURE, 20},
    {25, "sockets", p_sockets, KILL_IS_DENIED, 20},
    {26, "abstract-unix", p_abstract, KILL_IS_FAILURE, 20},
    {27, "host-knobs", p_knobs, KILL_IS_DENIED, 20},
    {28, "fds-cwd", p_fds, KILL_IS_FAILURE, 20},
    {29, "exe-overwrite", p_exe, KILL_IS_FAILURE, 20},
    {30, "devices", p_devices, KILL_IS_FAILURE, 20},
    {31, "budgets", p_budgets, KILL_IS_FAILURE, 120},
    {32, "setuid-exec", p_setuid, KILL_IS_FAILURE, 20},
    {33, "hostname-clock", p_host_time, KILL_IS_FAILURE, 20},
    {34, "host-secrets", p_secrets, KILL_IS_FAILURE, 20},
    {35, "psk-memfd", p_psk, KILL_IS_FAILURE, 20},
    {36, "works-fork-exec", w_fork_exec, KILL_IS_FAILURE, 20},
    {37, "works-threads", w_threads, KILL_IS_FAILURE, 20},
    {38, "works-pipes", w_pipes, KILL_IS_FAILURE, 20},
    {39, "works-epoll", w_epoll, KILL_IS_FAILURE, 20},
    {40, "works-mmap", w_mmap, KILL_IS_FAILURE, 20},
    {41, "works-signals", w_signals, KILL_IS_FAILURE, 20},
    {42, "works-python", w_python, KILL_IS_FAILURE, 120},
    {43, "pid1-cmdline", p_pid1_cmdline, KILL_IS_FAILURE, 20},
    {44, "cgroup-path", p_cgroup_path, KILL_IS_FAILURE, 20},
    {45, "session-keyring", p_session_keyring, KILL_IS_DENIED, 20},
    {46, "caller-terminal", p_caller_tty, KILL_IS_FAILURE, 20},
    {47, "host-id-map", p_id_map, KILL_IS_FAILURE, 20},
    {48, "profile-writable", p_profile_write, KILL_IS_FAILURE, 20},
    {49, "inotify-charged", p_inotify, KILL_IS_FAILURE, 20},
};
#define N_PROBES ((int)(sizeof probes / sizeof *probes))

/* Runs one probe in a child; fills *verdict and *detail. */
static void run_probe(const struct probe *p, int *verdict, char *detail, size_t cap)
{
    memset(&g_sh->res, 0, sizeof g_sh->res);
    fflush(NULL);
    long pid = raw_fork();
    if (pid == 0) {
        SC(SYS_alarm, p->timeout);
        int v = p->fn();
        g_sh->res.verdict = v;
        g_sh->res.done = 1;
        fflush(NULL);
        raw_exit(0);
    }
    if (pid < 0) {
        *verdict = 0;
        snprintf(detail, cap, "cannot fork the probe: %s", rs(pid));
        return;
    }
    long st = reap(pid);
    g_sh->res.detail[DETAIL_MAX - 1] = 0;
    if (g_sh->res.done) {
        *verdict = g_sh->res.verdict;
        snprintf(detail, cap, "%s", g_sh->res.detail);
    } else if (was_killed(st)) {
        int sig = (int)(KILLED_BASE - st);
        *verdict = p->kill_ok && sig == SIGSYS;
        snprintf(detail, cap, "%s%sprobe %s%s", g_sh->res.detail, g_sh->res.detail[0] ? " " : "", rs(st),
                 *verdict ? " (denied)" : "(!)");
    } else {
        *verdict = 0;
        snprintf(detail, cap, "%s probe exited with %s before finishing(!)", g_sh->res.detail, rs(st));
    }
}

static void json_string(const char *s)
{
    putchar('"');
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            printf("\\%c", c);
        else if (c < 0x20 || c >= 0x7f)
            printf("\\u%04x", c); /* bytes from /proc may not be UTF-8 */
        else
            putchar(c);
    }
    putchar('"');
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: stockade-probe [--json] [--only N,M,...] [--channel-fd N]... [--psk-fd N]\n"
            "                      [--expect-devices a,b] [--abstract NAME,...] [--python PATH]\n"
            "\n"
            "Runs the escape-probe battery (probes 1-35), the \"still works\"\n"
            "checks (36-41; 42 with --python) and what can be seen from inside (43-49),\n"
            "and prints one line per probe and a closing\n"
            "\"N passed, N failed\". Exit status 0 when all passed, 1 otherwise.\n"
            "\n"
            "  --json            machine-readable results\n"
            "  --only N,M        run only these probe numbers\n"
            "  --channel-fd N    an fd that may be open besides 0,1,2 (repeatable); default:\n"
            "                    the fds in STOCKADE_CHANNEL (e.g. sock=3,params=4)\n"
            "  --psk-fd N        the sealed PSK/params memfd (default: params= of STOCKADE_CHANNEL)\n"
            "  --expect-devices  extra /dev names the profile grants\n"
            "  --abstract NAMES  abstract unix socket names bound on the host, which must\n"
            "                    not be reachable\n"
            "  --python PATH     also check that PATH can import numpy\n"
            "  --caller-keyring SERIAL  the caller's session keyring (probe 45)\n"
            "  --reserved-ids LIST      host ids in use, \"0,1000,100000-165535\" (probe 47)\n"
            "  --profile-paths LIST     where the profile's file and directory show inside (48)\n"
            "  --caller-inotify N       inotify instances the caller holds (probe 49)\n");
}

static int parse_int(const char *s, int *out)
{
    char *end;
    long v = strtol(s, &end, 10);
    if (!*s || *end || v < 0 || v > 1 << 20)
        return -1;
    *out = (int)v;
    return 0;
}

int main(int argc, char **argv)
{
    /* Snapshot first, before anything is opened. */
    snapshot_fds();
    g_pid = SC(SYS_getpid);
    g_ppid = SC(SYS_getppid);
    snprintf(g_argv0, sizeof g_argv0, "%s", argc > 0 ? argv[0] : "");

    char only[N_PROBES + 64];
    memset(only, 0, sizeof only);
    int any_only = 0, explicit_channel = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--exit-code") && v) {
            return atoi(v); /* used by the fork/exec check */
        } else if (!strcmp(a, "--json")) {
            g_json = 1;
        } else if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--only") && v) {
            char copy[512];
            snprintf(copy, sizeof copy, "%s", v);
            char *save = NULL;
            for (char *t = strtok_r(copy, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
                int n;
                if (parse_int(t, &n) || n < 1 || n > N_PROBES) {
                    fprintf(stderr, "stockade-probe: --only: \"%s\" is not a probe number (1-%d)\n", t, N_PROBES);
                    return 2;
                }
                only[n] = 1;
                any_only = 1;
            }
            i++;
        } else if (!strcmp(a, "--channel-fd") && v) {
            int n;
            if (parse_int(v, &n) || g_n_channel == 16) {
                fprintf(stderr, "stockade-probe: --channel-fd: \"%s\" is not an fd number\n", v);
                return 2;
            }
            g_channel_fds[g_n_channel++] = n;
            explicit_channel = 1;
            i++;
        } else if (!strcmp(a, "--psk-fd") && v) {
            if (parse_int(v, &g_psk_fd)) {
                fprintf(stderr, "stockade-probe: --psk-fd: \"%s\" is not an fd number\n", v);
                return 2;
            }
            i++;
        } else if (!strcmp(a, "--expect-devices") && v) {
            snprintf(g_expect_dev, sizeof g_expect_dev, "%s", v);
            i++;
        } else if (!strcmp(a, "--abstract") && v) {
            snprintf(g_abstract, sizeof g_abstract, "%s", v);
            i++;
        } else if (!strcmp(a, "--python") && v) {
            g_python = v;
            i++;
        } else if (!strcmp(a, "--caller-keyring") && v) {
            g_caller_keyring = strtol(v, NULL, 10);
            i++;
        } else if (!strcmp(a, "--reserved-ids") && v) {
            snprintf(g_reserved_ids, sizeof g_reserved_ids, "%s", v);
            i++;
        } else if (!strcmp(a, "--profile-paths") && v) {
            snprintf(g_profile_paths, sizeof g_profile_paths, "%s", v);
            i++;
        } else if (!strcmp(a, "--caller-inotify") && v) {
            if (parse_int(v, &g_caller_inotify)) {
                fprintf(stderr, "stockade-probe: --caller-inotify: \"%s\" is not a count\n", v);
                return 2;
            }
            i++;
        } else {
            fprintf(stderr, "stockade-probe: unknown or incomplete option \"%s\"\n\n", a);
            usage(stderr);
            return 2;
        }
    }
    /* STOCKADE_CHANNEL=sock=3,params=4: the launcher's fd convention. */
    const char *env = getenv("STOCKADE_CHANNEL");
    if (env) {
        char copy[256];
        snprintf(copy, sizeof copy, "%s", env);
        char *save = NULL;
        for (char *t = strtok_r(copy, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
            char *eq = strchr(t, '=');
            int n;
            if (!eq || parse_int(eq + 1, &n)) {
                fprintf(stderr, "stockade-probe: STOCKADE_CHANNEL: \"%s\" is not name=fd\n", t);
                return 2;
            }
            *eq = 0;
            if (!strcmp(t, "params") && g_psk_fd < 0)
                g_psk_fd = n;
            if (!explicit_channel && g_n_channel < 16)
                g_channel_fds[g_n_channel++] = n;
        }
    }

    long m = SC(SYS_mmap, 0, sizeof(struct shared), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (m < 0 && m > -4096) {
        fprintf(stderr, "stockade-probe: cannot map the shared result page: %s\n", rs(m));
        return 2;
    }
    g_sh = (struct shared *)m;
    /* Dying children must not take the battery with them through SIGPIPE. */
    signal(SIGPIPE, SIG_IGN);

    int passed = 0, failed = 0, first = 1;
    if (g_json)
        printf("{\"probes\":[");
    static char detail[DETAIL_MAX + 200];
    for (int i = 0; i < N_PROBES; i++) {
        const struct probe *p = &probes[i];
        if (any_only && !only[p->num])
            continue;
        if (p->fn == w_python && !g_python) {
            if (any_only)
                fprintf(stderr, "stockade-probe: probe 42 needs --python PATH; skipped\n");
            continue;
        }
        int verdict = 0;
        run_probe(p, &verdict, detail, sizeof detail);
        if (verdict)
            passed++;
        else
            failed++;
        if (g_json) {
            printf("%s\n{\"number\":%d,\"name\":", first ? "" : ",", p->num);
            json_string(p->name);
            printf(",\"result\":");
            json_string(detail);
            printf(",\"pass\":%s}", verdict ? "true" : "false");
        } else {
            printf("%2d %-18s %s  %s\n", p->num, p->name, detail, verdict ? "PASS" : "FAIL");
        }
        first = 0;
        fflush(stdout);
    }
    if (g_json)
        printf("\n],\"passed\":%d,\"failed\":%d}\n", passed, failed);
    else
        printf("%d passed, %d failed\n", passed, failed);
    fflush(stdout);
    return failed ? 1 : 0;
}
