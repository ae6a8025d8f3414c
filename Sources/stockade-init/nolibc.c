/*
 * stockade-init runs without a C library: this file is its process entry
 * and the few system calls it makes, under the C library's names so that
 * init.c, via.c and via_message.h (shared with the trampoline, which has
 * glibc) read as ordinary C.
 *
 * Why: glibc's start-up in a static program is most of this program's
 * time (CPU feature and cache probing with cpuid, each a trap to the
 * hypervisor in a VM; IRELATIVE relocations; TLS; tunables read from the
 * environment; the program's path read from /proc), and the worker waits
 * for PID 1 before it runs: 0.27 ms of CPU against 0.05 ms without it. PID
 * 1 also parses nothing of its environment now (glibc's tunables are
 * parsed from GLIBC_TUNABLES even in static programs).
 *
 * Rules: one thread, no allocation, no TLS (the thread pointer is never
 * set: nothing here may read it, hence -fno-stack-protector in
 * Package.swift), errno is one global. Every function returns as its
 * glibc namesake does (-1 with errno set on failure).
 */
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <unistd.h>

int main(int argc, char **argv);

/* ---- the system call instruction ---------------------------------- */

#if defined(__x86_64__)
static long raw6(long n, long a, long b, long c, long d, long e, long f) {
    /* rax: number; rdi, rsi, rdx, r10, r8, r9: arguments; the kernel
     * clobbers rcx and r11. */
    register long r10 __asm__("r10") = d;
    register long r8 __asm__("r8") = e;
    register long r9 __asm__("r9") = f;
    long ret;
    __asm__ volatile("syscall"
                     : "=a"(ret)
                     : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9)
                     : "rcx", "r11", "memory");
    return ret;
}
#elif defined(__aarch64__)
static long raw6(long n, long a, long b, long c, long d, long e, long f) {
    /* x8: number; x0-x5: arguments; the result in x0. */
    register long x8 __asm__("x8") = n;
    register long x0 __asm__("x0") = a;
    register long x1 __asm__("x1") = b;
    register long x2 __asm__("x2") = c;
    register long x3 __asm__("x3") = d;
    register long x4 __asm__("x4") = e;
    register long x5 __asm__("x5") = f;
    __asm__ volatile("svc 0" : "+r"(x0) : "r"(x8), "r"(x1), "r"(x2), "r"(x3), "r"(x4), "r"(x5) : "memory");
    return x0;
}
#else
#error "stockade-init: no system call entry for this architecture (x86_64 and aarch64 only)"
#endif

static int stk_errno;
int *__errno_location(void) { return &stk_errno; }

/* The kernel's -errno convention to the C library's (-1, errno). */
static long sys(long n, long a, long b, long c, long d, long e) {
    long r = raw6(n, a, b, c, d, e, 0);
    if (r < 0 && r > -4096) {
        stk_errno = (int)-r;
        return -1;
    }
    return r;
}

/* ---- process entry ------------------------------------------------- */

/* The kernel starts a program with the stack pointer at argc, followed by
 * argv's pointers and a NULL (then the environment, unused here). */
__attribute__((noreturn, used)) void stk_init_start(long *sp) {
    int argc = (int)sp[0];
    char **argv = (char **)(sp + 1);
    _exit(main(argc, argv));
}

#if defined(__x86_64__)
/* No frame to return to (rbp 0), the stack aligned for the call. */
__asm__(".text\n.global _start\n.type _start,@function\n_start:\n"
        "  xor %ebp, %ebp\n"
        "  mov %rsp, %rdi\n"
        "  and $-16, %rsp\n"
        "  call stk_init_start\n"
        "  hlt\n");
#elif defined(__aarch64__)
/* The kernel leaves sp 16-byte aligned; no frame to return to. */
__asm__(".text\n.global _start\n.type _start,%function\n_start:\n"
        "  mov x29, #0\n"
        "  mov x30, #0\n"
        "  mov x0, sp\n"
        "  bl stk_init_start\n"
        "  brk #0\n");
#endif

/* ---- what the compiler may call ------------------------------------ */

void *memset(void *dst, int c, size_t n) {
    unsigned char *d = dst;
    while (n--) *d++ = (unsigned char)c;
    return dst;
}

void *memcpy(void *restrict dst, const void *restrict src, size_t n) {
    unsigned char *d = dst;
    const unsigned char *s = src;
    while (n--) *d++ = *s++;
    return dst;
}

/* ---- the calls init.c, via.c and via_message.h make ---------------- */

void _exit(int status) {
    for (;;) raw6(SYS_exit_group, status, 0, 0, 0, 0, 0);
}

ssize_t write(int fd, const void *buf, size_t n) { return sys(SYS_write, fd, (long)buf, (long)n, 0, 0); }
int close(int fd) { return (int)sys(SYS_close, fd, 0, 0, 0, 0); }
int kill(pid_t pid, int sig) { return (int)sys(SYS_kill, pid, sig, 0, 0, 0); }
int dup3(int from, int to, int flags) { return (int)sys(SYS_dup3, from, to, flags, 0, 0); }

pid_t waitpid(pid_t pid, int *status, int options) {
    return (pid_t)sys(SYS_wait4, pid, (long)status, options, 0, 0);
}

int execve(const char *path, char *const argv[], char *const envp[]) {
    return (int)sys(SYS_execve, (long)path, (long)argv, (long)envp, 0, 0);
}

int prctl(int option, ...) {
    va_list ap;
    va_start(ap, option);
    unsigned long a = va_arg(ap, unsigned long), b = va_arg(ap, unsigned long);
    unsigned long c = va_arg(ap, unsigned long), d = va_arg(ap, unsigned long);
    va_end(ap);
    return (int)sys(SYS_prctl, option, (long)a, (long)b, (long)c, (long)d);
}

int fcntl(int fd, int cmd, ...) {
    va_list ap;
    va_start(ap, cmd);
    long arg = va_arg(ap, long);
    va_end(ap);
    return (int)sys(SYS_fcntl, fd, cmd, arg, 0, 0);
}

ssize_t send(int fd, const void *buf, size_t n, int flags) {
    return sys(SYS_sendto, fd, (long)buf, (long)n, flags, 0);
}

ssize_t recvmsg(int fd, struct msghdr *msg, int flags) { return sys(SYS_recvmsg, fd, (long)msg, flags, 0, 0); }

/* Signal sets: the kernel's are 64 bits (_NSIG 64), the first word of
 * glibc's sigset_t. */
int sigfillset(sigset_t *set) {
    memset(set, 0xff, sizeof *set);
    return 0;
}

int sigprocmask(int how, const sigset_t *set, sigset_t *old) {
    return (int)sys(SYS_rt_sigprocmask, how, (long)set, (long)old, 8, 0);
}

int sigwaitinfo(const sigset_t *set, siginfo_t *info) {
    return (int)sys(SYS_rt_sigtimedwait, (long)set, (long)info, 0, 8, 0);
}
