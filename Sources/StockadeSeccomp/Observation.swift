import StockadeSystem

/// Which of a filter's verdicts leave the kernel for the supervisor
/// (`SECCOMP_RET_USER_NOTIF`) instead of being answered in the kernel.
/// Allowed calls never do: their return instructions are not touched, so
/// the kernel's per-call action cache and the filter's length stay as they
/// were.
public struct SeccompNotifySet: OptionSet, Sendable, Hashable {
    public let rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }

    /// Calls the profile denies with an errno (its default action, `deny`,
    /// rules with `errno:`). Denial monitoring.
    public static let policyErrno = SeccompNotifySet(rawValue: 1 << 0)
    /// Calls the profile would kill or trap on. Only for recording
    /// (`stockade learn`): monitoring keeps kills as kills.
    public static let policyKill = SeccompNotifySet(rawValue: 1 << 1)
    /// Calls the always-on hardening denies with EPERM (ptrace, mount,
    /// bpf, namespace flags, ...). The hardening's ENOSYS answers (clone3,
    /// numbers past the table: libc's fallbacks) and its kills (other
    /// architectures, x32) are never notified.
    public static let preludeDenials = SeccompNotifySet(rawValue: 1 << 2)

    /// What denial monitoring notifies.
    public static let denials: SeccompNotifySet = [.policyErrno, .preludeDenials]
}

/// A filter with some verdicts turned into user notifications, and the
/// program the supervisor evaluates to answer each notification exactly as
/// the unobserved filter would have.
public struct ObservedSeccomp: Sendable {
    /// The program the jail loads (same instructions as `verdicts` except
    /// the rewritten returns).
    public var filter: [BPFInstruction]
    public var bytes: [UInt8] { BPFInstruction.encode(filter) }
    /// The unobserved program: its verdict for a call is the profile's answer.
    public var verdicts: [BPFInstruction]
    /// How many of the instructions are the hardening prelude.
    public var preludeCount: Int
    public var notify: SeccompNotifySet
    /// How many return instructions now notify.
    public var notifyingReturns: Int

    /// Where a verdict comes from.
    public enum Origin: String, Sendable, Codable {
        case prelude, profile
    }

    /// The unobserved verdict for one call and whether the always-on
    /// prelude or the profile gave it. A program that cannot be run (it was
    /// checked when built) answers kill-process.
    public func verdict(for data: SeccompData) -> (action: SeccompAction, origin: Origin) {
        let raw = (try? runBPF(verdicts, on: data)) ?? SeccompAction.retKillProcess
        // The prelude alone, with a final allow: anything else is its verdict.
        let prelude = (try? runBPF(preludeOnly, on: data)) ?? SeccompAction.retAllow
        return (SeccompAction(raw: raw), prelude == SeccompAction.retAllow ? .profile : .prelude)
    }

    private var preludeOnly: [BPFInstruction] {
        Array(verdicts.prefix(preludeCount)) + [BPFInstruction(code: BPFInstruction.RET | BPFInstruction.K, k: SeccompAction.retAllow)]
    }

    /// Whether the observed filter lets `number` through with these
    /// arguments without a supervisor (used for the calls the worker makes
    /// between loading the filter and its exec).
    public func allowsInKernel(_ number: Int32, args: [UInt64] = []) -> Bool {
        let raw = (try? runBPF(filter, on: SeccompData(nr: number, arch: Syscalls.nativeArch, args: args))) ?? 0
        return raw == SeccompAction.retAllow || raw & 0xffff_0000 == SeccompAction.retLog
    }
}

public struct SeccompObservationError: Error, CustomStringConvertible, Sendable {
    public var description: String
    init(_ message: String) { description = "seccomp observation: " + message }
}

extension SeccompProgram {
    /// This program with the verdicts in `notify` turned into
    /// `SECCOMP_RET_USER_NOTIF`. Only constant returns (`RET K`) occur in
    /// compiled programs; a program returning the accumulator is refused.
    public func observing(_ notify: SeccompNotifySet) throws(SeccompObservationError) -> ObservedSeccomp {
        var filter = instructions
        var count = 0
        let enosys = SeccompAction.errno(HardenedCall.ENOSYS).raw
        for (i, ins) in instructions.enumerated() where ins.code & 0x07 == BPFInstruction.RET {
            guard ins.code & 0x18 == BPFInstruction.K else {
                throw SeccompObservationError("instruction \(i) returns the accumulator; only constant verdicts can be observed")
            }
            let action = SeccompAction(raw: ins.k)
            let inPrelude = i < preludeCount
            let rewrite: Bool
            switch action {
            case .errno where inPrelude: rewrite = notify.contains(.preludeDenials) && ins.k != enosys
            case .errno: rewrite = notify.contains(.policyErrno)
            case .killProcess, .killThread, .trap: rewrite = !inPrelude && notify.contains(.policyKill)
            case .allow, .log, .notify, .trace: rewrite = false
            }
            if rewrite {
                filter[i].k = SeccompAction.retUserNotif
                count += 1
            }
        }
        return ObservedSeccomp(filter: filter, verdicts: instructions, preludeCount: preludeCount,
                               notify: notify, notifyingReturns: count)
    }
}

/// System call numbers and arguments written for people:
/// `socket(AF_NETLINK, SOCK_RAW|SOCK_CLOEXEC, 0)`. Only register values are
/// decoded (numbers, flags, commands): reading a path or a struct from the
/// caller's memory would race with the caller's other threads.
public enum SyscallDescription {
    private static let names: [String?] = (0..<1024).map { Syscalls.name(of: Int32($0)) }

    /// The native name of `number`, or `syscall_N`.
    public static func name(of number: Int32) -> String {
        if number >= 0, Int(number) < names.count, let n = names[Int(number)] { return n }
        return "syscall_\(number)"
    }

    private static func hex(_ v: UInt64) -> String { "0x" + String(v, radix: 16) }
    private static func low(_ v: UInt64) -> UInt32 { UInt32(truncatingIfNeeded: v) }

    private static func flags(_ value: UInt64, _ table: [(UInt64, String)], zero: String = "0") -> String {
        var rest = value
        var parts: [String] = []
        for (bit, name) in table where bit != 0 && value & bit == bit {
            parts.append(name)
            rest &= ~bit
        }
        if rest != 0 { parts.append(hex(rest)) }
        return parts.isEmpty ? zero : parts.joined(separator: "|")
    }

    private static let families: [UInt32: String] = [
        0: "AF_UNSPEC", 1: "AF_UNIX", 2: "AF_INET", 3: "AF_AX25", 4: "AF_IPX", 5: "AF_APPLETALK", 9: "AF_X25",
        10: "AF_INET6", 16: "AF_NETLINK", 17: "AF_PACKET", 29: "AF_CAN", 31: "AF_BLUETOOTH", 38: "AF_ALG",
        40: "AF_VSOCK", 44: "AF_XDP",
    ]
    private static let socketTypes: [UInt32: String] = [1: "SOCK_STREAM", 2: "SOCK_DGRAM", 3: "SOCK_RAW", 4: "SOCK_RDM",
                                                       5: "SOCK_SEQPACKET", 10: "SOCK_PACKET"]
    private static let cloneFlags: [(UInt64, String)] = SeccompConstants.table
        .filter { $0.key.hasPrefix("CLONE_") }.map { ($0.value, $0.key) }.sorted { $0.0 < $1.0 }
    private static let prot: [(UInt64, String)] = [(1, "PROT_READ"), (2, "PROT_WRITE"), (4, "PROT_EXEC"), (8, "PROT_SEM")]
    private static let ptraceRequests: [UInt32: String] = [
        0: "PTRACE_TRACEME", 1: "PTRACE_PEEKTEXT", 2: "PTRACE_PEEKDATA", 4: "PTRACE_POKETEXT", 5: "PTRACE_POKEDATA",
        7: "PTRACE_CONT", 8: "PTRACE_KILL", 9: "PTRACE_SINGLESTEP", 12: "PTRACE_GETREGS", 13: "PTRACE_SETREGS",
        16: "PTRACE_ATTACH", 17: "PTRACE_DETACH", 0x4206: "PTRACE_SEIZE", 0x4207: "PTRACE_INTERRUPT",
    ]
    private static let prctlOptions: [UInt32: String] = [
        1: "PR_SET_PDEATHSIG", 4: "PR_SET_DUMPABLE", 8: "PR_SET_KEEPCAPS", 15: "PR_SET_NAME", 16: "PR_GET_NAME",
        22: "PR_SET_SECCOMP", 24: "PR_CAPBSET_READ", 36: "PR_SET_CHILD_SUBREAPER", 38: "PR_SET_NO_NEW_PRIVS",
        0x59616d61: "PR_SET_PTRACER", 47: "PR_CAP_AMBIENT", 53: "PR_SET_SPECULATION_CTRL",
    ]

    private static let noArguments: Set<String> = [
        "getpid", "getppid", "gettid", "getuid", "geteuid", "getgid", "getegid", "getpgrp", "setsid", "sched_yield",
        "fork", "vfork", "pause", "sync", "munlockall", "vhangup", "inotify_init", "restart_syscall", "rt_sigreturn",
    ]

    /// `name(arg, ...)` with the arguments that decide what the call can do
    /// decoded, the rest in hex (as many as the call takes, at most six).
    public static func describe(number: Int32, args: [UInt64]) -> String {
        let name = name(of: number)
        let a = (args + Array(repeating: 0, count: 6)).prefix(6).map { $0 }
        func family(_ v: UInt64) -> String { families[low(v)] ?? String(low(v)) }
        let text: [String]
        switch name {
        case "socket", "socketpair":
            let type = low(a[1])
            var t = socketTypes[type & 0xf] ?? String(type & 0xf)
            if type & 0o4000 != 0 { t += "|SOCK_NONBLOCK" }
            if type & 0o2000000 != 0 { t += "|SOCK_CLOEXEC" }
            text = [family(a[0]), t, String(low(a[2]))]
        case "ioctl": text = [String(Int32(bitPattern: low(a[0]))), hex(UInt64(low(a[1]))), hex(a[2])]
        case "clone": text = [flags(a[0], cloneFlags), hex(a[1])]
        case "unshare": text = [flags(UInt64(low(a[0])), cloneFlags)]
        case "setns": text = [String(Int32(bitPattern: low(a[0]))), flags(UInt64(low(a[1])), cloneFlags)]
        case "prctl": text = [prctlOptions[low(a[0])] ?? String(low(a[0])), hex(a[1])]
        case "fcntl": text = [String(Int32(bitPattern: low(a[0]))), String(low(a[1])), hex(a[2])]
        case "mmap": text = [hex(a[0]), String(a[1]), flags(a[2], prot, zero: "PROT_NONE"), hex(a[3]), String(Int32(bitPattern: low(a[4]))), hex(a[5])]
        case "mprotect", "pkey_mprotect": text = [hex(a[0]), String(a[1]), flags(a[2], prot, zero: "PROT_NONE")]
        case "personality": text = [hex(UInt64(low(a[0])))]
        case "setsockopt", "getsockopt": text = [String(Int32(bitPattern: low(a[0]))), String(low(a[1])), String(low(a[2]))]
        case "madvise": text = [hex(a[0]), String(a[1]), String(low(a[2]))]
        case "ptrace": text = [ptraceRequests[low(a[0])] ?? String(low(a[0])), String(Int32(bitPattern: low(a[1])))]
        case "kill", "tkill": text = [String(Int32(bitPattern: low(a[0]))), String(low(a[1]))]
        case "bpf", "keyctl": text = [String(low(a[0]))]
        case _ where noArguments.contains(name): text = []
        default: text = a.prefix(3).map(hex)
        }
        return "\(name)(\(text.joined(separator: ", ")))"
    }
}
