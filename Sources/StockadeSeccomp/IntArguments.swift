/// Which system-call arguments the kernel reads as 32-bit integers.
///
/// A register always carries 64 bits, but the kernel's entry code casts an
/// argument declared `int`, `unsigned int`, `pid_t`, `uid_t`, `clockid_t` or
/// the like to that type first: `socket(AF_VSOCK | 1 << 32, ...)` makes a
/// vsock socket. A filter that compares such an argument on all 64 bits can
/// be walked around by setting a high bit. Every comparison of an argument
/// in this table - the profile's own rules, imported Docker rules and the
/// hardening prelude - is made on the low 32 bits, as the kernel reads it.
///
/// This is the one table of such arguments; `SeccompProgram` and the
/// prelude both consult it. It lists the calls a policy plausibly filters
/// on their arguments; an argument not listed is compared on 64 bits.
/// `clone`'s flags are declared `unsigned long` but only their low half is
/// read; `unshare` refuses a high bit with EINVAL; both are listed too.
public enum IntArguments {
    /// System-call name to the indices of its 32-bit arguments.
    public static let table: [String: Set<Int>] = [
        // sockets: (family, type, protocol), (fd, level, optname), flags
        "socket": [0, 1, 2], "socketpair": [0, 1, 2],
        "setsockopt": [0, 1, 2], "getsockopt": [0, 1, 2],
        "bind": [0, 2], "connect": [0, 2], "listen": [0, 1], "accept": [0], "accept4": [0, 3],
        "shutdown": [0, 1], "getsockname": [0], "getpeername": [0],
        "sendto": [0, 3, 5], "recvfrom": [0, 3], "sendmsg": [0, 2], "recvmsg": [0, 2],
        "sendmmsg": [0, 2, 3], "recvmmsg": [0, 2, 3],
        // descriptors: fd and command or flags
        "ioctl": [0, 1], "fcntl": [0, 1], "close": [0], "close_range": [0, 1, 2],
        "dup": [0], "dup2": [0, 1], "dup3": [0, 1, 2], "flock": [0, 1],
        "open": [1, 2], "openat": [0, 2, 3], "creat": [1], "mkdirat": [0, 2], "mknodat": [0, 2, 3],
        "faccessat": [0, 2], "faccessat2": [0, 2, 3], "fchmod": [0, 1], "fchmodat": [0, 2],
        "fchown": [0, 1, 2], "fchownat": [0, 2, 3, 4], "unlinkat": [0, 2], "linkat": [0, 2, 4],
        "renameat2": [0, 2, 4], "newfstatat": [0, 3], "statx": [0, 2, 3], "readlinkat": [0, 3],
        "utimensat": [0, 3], "pipe2": [1], "memfd_create": [1], "eventfd2": [0, 1], "eventfd": [0],
        "epoll_create1": [0], "epoll_ctl": [0, 1, 2], "inotify_init1": [0], "signalfd4": [0, 3],
        "timerfd_create": [0, 1], "getrandom": [2], "copy_file_range": [0, 2, 5], "splice": [0, 2, 5],
        // memory: madvise's advice, mlock2's flags
        "madvise": [2], "mlock2": [2],
        // processes and signals
        "clone": [0], "unshare": [0], "setns": [0, 1], "personality": [0], "prctl": [0],
        "kill": [0, 1], "tgkill": [0, 1, 2], "tkill": [0, 1], "rt_sigqueueinfo": [0, 1],
        "rt_tgsigqueueinfo": [0, 1, 2], "pidfd_open": [0, 1], "pidfd_send_signal": [0, 1, 3],
        "pidfd_getfd": [0, 1, 2], "waitid": [0, 1, 3], "wait4": [0, 2], "setpgid": [0, 1],
        "getpgid": [0], "getsid": [0], "setpriority": [0, 1, 2], "getpriority": [0, 1],
        "sched_setscheduler": [0, 1], "sched_setaffinity": [0], "sched_getaffinity": [0],
        "sched_setattr": [0, 2], "kcmp": [0, 1, 2], "process_vm_readv": [0], "process_vm_writev": [0],
        "futex": [1], "setuid": [0], "setgid": [0], "setreuid": [0, 1], "setregid": [0, 1],
        "setresuid": [0, 1, 2], "setresgid": [0, 1, 2], "setfsuid": [0], "setfsgid": [0],
        // time
        "clock_gettime": [0], "clock_getres": [0], "clock_nanosleep": [0, 1], "clock_settime": [0],
        "clock_adjtime": [0], "timer_create": [0],
        // the kernel's own interfaces
        "seccomp": [0, 1], "bpf": [0, 2], "perf_event_open": [1, 2, 3], "keyctl": [0], "umount2": [1],
        "io_uring_setup": [0], "io_uring_enter": [0, 1, 2, 3],
    ]

    /// True when the kernel reads argument `index` of `syscall` as 32 bits.
    public static func isInt(_ syscall: String, _ index: Int) -> Bool {
        table[syscall]?.contains(index) ?? false
    }
}
