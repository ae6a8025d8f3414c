package import StockadeConfig
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// The profile's `[seccomp]`: the system-call policy.
///
/// ```toml
/// [seccomp]
/// default = "errno:EPERM"        # or "kill-process", "log", "errno:ENOSYS", ...
/// base = "stock"                 # start from the stock worker allowlist ("none": empty)
/// import = "docker:default.json" # or start from a Docker/Moby JSON profile (path relative to this file)
/// allow = ["read", "write", "cachestat?"]   # a trailing ? marks a name optional
/// deny = ["socket"]
/// deny_action = "errno:EACCES"   # for `deny` (default errno:EPERM)
/// allow_dangerous = { ptrace = "the debugger worker needs it" }
///
/// [[seccomp.rule]]
/// syscalls = ["socket"]          # or syscall = "socket"
/// action = "allow"               # allow, errno:NAME, kill-process, kill-thread, trap, log, notify
/// args = ["arg0 == AF_UNIX"]     # ANDed; "argN OP VALUE" or "argN & MASK == VALUE"
/// optional = false               # true: names the installed libseccomp lacks are skipped
/// ```
///
/// Every name is checked against the installed libseccomp while the profile
/// is read; an unknown name is an error at its line unless marked optional,
/// in which case it is skipped and listed in ``notes``. The hardening in
/// ``HardenedCall`` applies on top of whatever this section says.
///
/// Keys are read in `init(reading:)`; any key it does not read is rejected
/// by the profile parser as unknown.
public struct SeccompSection: Sendable, Equatable {
    public enum Base: Sendable, Equatable {
        case stock
        case none
        /// A Docker/Moby JSON profile at this (resolved) path.
        case docker(String)
    }

    public var defaultAction: SeccompAction = .errno(1)
    public var base: Base = .stock
    /// The policy's rules: the base's first (marked `imported` for Docker),
    /// then the profile's own.
    public var rules: [SeccompRule] = []
    /// Hardening entries the profile lifts, with the reason it gave.
    public var allowDangerous: [String: String] = [:]
    /// What was skipped or changed on the way, for `compile` and `explain`.
    public var notes: [String] = []

    /// A profile without `[seccomp]`: the stock allowlist, default errno:EPERM.
    public init() {
        rules = Self.stockRules(notes: &notes)
    }

    package init(reading table: TableReader) throws(ProfileError) {
        let file = table.source.file
        func origin(_ key: String) -> String {
            table.source.index.line(of: table.keyPath(key)).map { "\(file):\($0)" } ?? file
        }

        if let d = try table.string("default") {
            guard let action = SeccompAction(parsing: d) else {
                throw table.error("default", "unknown action \"\(d)\" (use \(SeccompAction.spellings))")
            }
            defaultAction = action
        }

        let importSpec = try table.string("import")
        let baseName = try table.string("base")
        if let spec = importSpec {
            if baseName != nil { throw table.error("base", "a profile takes either base or import, not both") }
            guard spec.hasPrefix("docker:"), spec.count > "docker:".count else {
                throw table.error("import", "write the import as \"docker:PATH\" (a Docker/Moby seccomp JSON profile)")
            }
            var path = String(spec.dropFirst("docker:".count))
            if !path.hasPrefix("/") {
                path = URL(fileURLWithPath: file).deletingLastPathComponent().appendingPathComponent(path).path
            }
            base = .docker(path)
            let imported: DockerSeccompProfile.Imported
            do {
                imported = try DockerSeccompProfile.load(path: path)
            } catch {
                throw table.error("import", error.description)
            }
            // A default given in the profile overrides the imported one.
            if !table.has("default") { defaultAction = imported.defaultAction }
            rules = imported.rules
            notes += imported.notes
        } else {
            switch baseName ?? "stock" {
            case "stock": base = .stock; rules = Self.stockRules(notes: &notes)
            case "none": base = .none
            default: throw table.error("base", "unknown base \"\(baseName ?? "")\" (stock, none)")
            }
        }

        var own: [SeccompRule] = []
        func names(_ list: [String], key: String, optionalAll: Bool) throws(ProfileError) -> [(String, Int32)] {
            var result: [(String, Int32)] = []
            for (i, raw) in list.enumerated() {
                let optional = optionalAll || raw.hasSuffix("?")
                let name = raw.hasSuffix("?") ? String(raw.dropLast()) : raw
                if let nr = Syscalls.number(of: name) {
                    result.append((name, nr))
                } else if optional {
                    notes.append("\(origin(key)): \(Syscalls.shown(name)) skipped: \(Self.whyUnknown(name))")
                } else {
                    throw table.error(key, "entry \(i): \(Syscalls.shown(name)): \(Self.whyUnknown(name)); mark it optional (\"\(Syscalls.shown(name))?\") to skip it where it is missing")
                }
            }
            return result
        }

        for (name, nr) in try names(try table.strings("allow") ?? [], key: "allow", optionalAll: false) {
            own.append(SeccompRule(syscall: name, number: nr, action: .allow, origin: origin("allow")))
        }
        var denyAction = SeccompAction.errno(1)
        if let d = try table.string("deny_action") {
            guard let a = SeccompAction(parsing: d), !a.permits else {
                throw table.error("deny_action", "\"\(d)\" is not a denying action (errno:NAME, kill-process, kill-thread, trap)")
            }
            denyAction = a
        }
        for (name, nr) in try names(try table.strings("deny") ?? [], key: "deny", optionalAll: false) {
            own.append(SeccompRule(syscall: name, number: nr, action: denyAction, origin: origin("deny")))
        }

        for entry in try table.tables("rule") {
            let place = table.source.index.line(of: entry.path).map { "\(file):\($0)" } ?? file
            var list: [String] = []
            if let one = try entry.string("syscall") { list.append(one) }
            if let many = try entry.strings("syscalls") { list += many }
            guard !list.isEmpty else { throw entry.error("a rule needs syscall = \"NAME\" or syscalls = [...]") }
            guard let actionText = try entry.string("action") else {
                throw entry.error("a rule needs an action (\(SeccompAction.spellings))")
            }
            guard let action = SeccompAction(parsing: actionText) else {
                throw entry.error("action", "unknown action \"\(actionText)\" (use \(SeccompAction.spellings))")
            }
            var conditions: [SeccompCondition] = []
            for (i, text) in (try entry.strings("args") ?? []).enumerated() {
                do {
                    conditions.append(try SeccompCondition(parsing: text))
                } catch {
                    throw entry.error("args", "entry \(i): \"\(text)\": \(error.message)")
                }
            }
            let argsUsed = conditions.map(\.arg)
            if Set(argsUsed).count != argsUsed.count {
                throw entry.error("args", "one rule compares an argument twice; libseccomp cannot AND two tests of one argument (split the range into two rules)")
            }
            let optional = try entry.bool("optional") ?? false
            let key = entry.has("syscalls") ? "syscalls" : "syscall"
            for (name, nr) in try names(list, key: "\(entry.path.dropFirst(table.path.isEmpty ? 0 : table.path.count + 1)).\(key)", optionalAll: optional) {
                own.append(SeccompRule(syscall: name, number: nr, action: action, conditions: conditions, origin: place))
            }
            try entry.finish()
        }

        if let dangerous = try table.table("allow_dangerous") {
            for key in dangerous.keys {
                guard let call = HardenedCall.named(key) else {
                    let names = HardenedCall.all.map(\.name).joined(separator: ", ")
                    throw dangerous.error(key, "\(key) is not one of the hardened calls (\(names))")
                }
                guard let reason = try dangerous.string(key), !reason.trimmingCharacters(in: " ").isEmpty else {
                    throw dangerous.error(key, "give the reason as a string: \(key) = \"why this jail needs it\"")
                }
                allowDangerous[call.name] = reason
            }
            try dangerous.finish()
        }

        // A profile that allows a call the hardening always refuses would be
        // silently overruled: make it say so.
        for rule in own where rule.action.permits {
            if let call = HardenedCall.named(rule.syscall), call.isTotal, allowDangerous[call.name] == nil {
                throw ProfileError(file: file, line: Self.line(rule.origin), key: table.keyPath(rule.origin == origin("allow") ? "allow" : "rule"),
                                   message: "\(rule.syscall) is denied in every jail (\(call.why)); to allow it anyway add allow_dangerous = { \(rule.syscall) = \"why this jail needs it\" }")
            }
        }

        // The profile's own rules replace the base's rules for the same call.
        let ownNumbers = Set(own.map(\.number))
        let replaced = Set(rules.filter { ownNumbers.contains($0.number) }.map(\.syscall))
        if case .docker = base, !replaced.isEmpty {
            notes.append("the profile's own rules replace the imported rules for: \(replaced.sorted().joined(separator: ", "))")
        }
        rules.removeAll { ownNumbers.contains($0.number) }
        try Self.checkConflicts(own, table: table)
        rules += own
    }

    static func line(_ origin: String) -> Int? {
        origin.split(separator: ":").last.flatMap { Int($0) }
    }

    static func whyUnknown(_ name: String) -> String {
        Syscalls.isForeign(name) ? "not a system call on this architecture" : "unknown system call (not in the installed libseccomp's table)"
    }

    /// libseccomp lets an unconditional rule silently win over conditional
    /// rules with another action for the same call, and rejects two
    /// unconditional rules with different actions. Say so at the line.
    ///
    /// Two conditional rules with different actions that can both match one
    /// call are refused too: libseccomp picks one of them by its own
    /// ordering of the argument tests, which no profile reader can know
    /// (`socket if arg0 == AF_INET: allow` beside `socket if arg2 == 0:
    /// errno`). Rules that can never match the same call are fine.
    static func checkConflicts(_ rules: [SeccompRule], table: TableReader) throws(ProfileError) {
        var byNumber: [Int32: [SeccompRule]] = [:]
        for r in rules { byNumber[r.number, default: []].append(r) }
        for (_, group) in byNumber.sorted(by: { $0.key < $1.key }) {
            if let plain = group.first(where: { $0.conditions.isEmpty }) {
                if let other = group.first(where: { $0.action != plain.action }) {
                    throw ProfileError(file: table.source.file, line: line(other.origin), key: table.keyPath("rule"),
                                       message: "\(plain.syscall) has an unconditional rule (\(plain.action), \(plain.origin)) and another with \(other.action) (\(other.origin)); the unconditional rule would always win. Give the first rule conditions or drop one.")
                }
                continue
            }
            for (i, a) in group.enumerated() {
                for b in group[(i + 1)...] where a.action != b.action && a.overlaps(b) {
                    throw ProfileError(file: table.source.file, line: line(b.origin), key: table.keyPath("rule"),
                                       message: "\(a.syscall) has two rules that can both match one call with different actions (\(a) at \(a.origin), \(b) at \(b.origin)); which one applies would be libseccomp's choice. Make their conditions exclusive or give them the same action.")
                }
            }
        }
    }

    static func stockRules(notes: inout [String]) -> [SeccompRule] {
        var result: [SeccompRule] = []
        result.reserveCapacity(stockAllowlist.count + 16)
        for name in stockAllowlist {
            if let nr = Syscalls.number(of: name) {
                result.append(SeccompRule(syscall: name, number: nr, action: .allow, origin: "stock allowlist"))
            } else {
                notes.append("stock allowlist: \(name) skipped: \(whyUnknown(name))")
            }
        }
        // Sockets of the local and IP families only, with the default
        // protocol or plain TCP and UDP: no netlink, packet, AF_ALG or vsock
        // sockets, and no MPTCP, UDP-Lite or SCTP, whose kernel code is large
        // and rarely needed. (Compared on the low 32 bits, as the kernel reads them.)
        for (name, family, protocols) in stockSockets {
            guard let nr = Syscalls.number(of: name) else { continue }
            for proto in protocols {
                result.append(SeccompRule(syscall: name, number: nr, action: .allow,
                                          conditions: [SeccompCondition(arg: 0, op: .eq, value: family),
                                                       SeccompCondition(arg: 2, op: .eq, value: proto)],
                                          origin: "stock allowlist"))
            }
        }
        return result
    }

    /// The sockets the stock allowlist makes: (call, family, protocols).
    public static let stockSockets: [(String, UInt64, [UInt64])] = [
        ("socket", 1, [0]),            // AF_UNIX
        ("socket", 2, [0, 6, 17]),     // AF_INET: default, IPPROTO_TCP, IPPROTO_UDP
        ("socket", 10, [0, 6, 17]),    // AF_INET6
        ("socketpair", 1, [0]),
    ]

    /// The stock allowlist for inference workers: Python with numpy and
    /// native extensions, threads, fork/exec of helpers, files, pipes,
    /// epoll and sockets. What is missing on purpose: namespaces, mounts,
    /// ptrace, keyrings, BPF, io_uring, kernel modules, clocks, SysV IPC,
    /// NUMA policy and the like.
    public static let stockAllowlist: [String] = [
        // files and descriptors
        "read", "write", "readv", "writev", "pread64", "pwrite64", "preadv", "pwritev", "preadv2", "pwritev2",
        "open", "openat", "openat2", "close", "close_range", "creat", "lseek", "dup", "dup2", "dup3",
        "stat", "fstat", "lstat", "newfstatat", "statx", "statfs", "fstatfs", "access", "faccessat", "faccessat2",
        "fcntl", "flock", "fsync", "fdatasync", "truncate", "ftruncate", "fallocate", "fadvise64", "readahead",
        "getdents", "getdents64", "getcwd", "chdir", "fchdir", "rename", "renameat", "renameat2",
        "mkdir", "mkdirat", "rmdir", "link", "linkat", "unlink", "unlinkat", "symlink", "symlinkat",
        "readlink", "readlinkat", "chmod", "fchmod", "fchmodat", "umask", "utimensat", "utime", "utimes",
        "getxattr", "lgetxattr", "fgetxattr", "listxattr", "llistxattr", "flistxattr",
        "sendfile", "copy_file_range", "splice", "tee", "ioctl", "pipe", "pipe2", "memfd_create",
        // memory
        "brk", "mmap", "munmap", "mprotect", "mremap", "madvise", "msync", "mincore", "mlock", "mlock2", "munlock",
        "membarrier",
        // processes and threads
        "clone", "fork", "vfork", "execve", "execveat", "exit", "exit_group", "wait4", "waitid",
        "kill", "tgkill", "tkill", "getpid", "gettid", "getppid", "getpgrp", "getpgid", "setpgid", "getsid", "setsid",
        "getuid", "geteuid", "getgid", "getegid", "getgroups", "getresuid", "getresgid",
        "futex", "futex_waitv", "set_robust_list", "get_robust_list", "set_tid_address", "rseq", "arch_prctl", "prctl",
        "sched_yield", "sched_getaffinity", "sched_setaffinity", "sched_getparam", "sched_getscheduler",
        "sched_get_priority_max", "sched_get_priority_min", "sched_getattr", "getpriority", "setpriority", "getcpu",
        "getrlimit", "setrlimit", "prlimit64", "getrusage", "personality", "capget", "pidfd_open", "pidfd_send_signal",
        // signals
        "rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "rt_sigpending", "rt_sigtimedwait", "rt_sigsuspend",
        "rt_sigqueueinfo", "rt_tgsigqueueinfo", "sigaltstack", "signalfd", "signalfd4", "pause", "restart_syscall",
        // time
        "clock_gettime", "clock_getres", "clock_nanosleep", "nanosleep", "gettimeofday", "time", "times",
        "getitimer", "setitimer", "alarm", "timer_create", "timer_settime", "timer_gettime", "timer_getoverrun",
        "timer_delete", "timerfd_create", "timerfd_settime", "timerfd_gettime",
        // event loops
        "select", "pselect6", "poll", "ppoll", "epoll_create", "epoll_create1", "epoll_ctl", "epoll_wait",
        "epoll_pwait", "epoll_pwait2", "eventfd", "eventfd2", "inotify_init1", "inotify_add_watch", "inotify_rm_watch",
        // sockets
        "connect", "accept", "accept4", "bind", "listen", "shutdown",
        "sendto", "recvfrom", "sendmsg", "recvmsg", "sendmmsg", "recvmmsg",
        "getsockname", "getpeername", "setsockopt", "getsockopt",
        // system information
        "uname", "sysinfo", "getrandom",
    ]
}
