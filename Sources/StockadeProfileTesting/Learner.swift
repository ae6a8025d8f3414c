public import StockadeJail
import StockadeSeccomp
import StockadeSystem
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// `stockade learn`: a command runs in the jail of a profile whose
/// `[seccomp]` allows nothing; every call the policy would deny goes to the
/// seccomp supervisor (``SeccompSupervisor``), is recorded and is let
/// through (SECCOMP_USER_NOTIF_FLAG_CONTINUE). What was seen becomes a
/// `[seccomp]` that allows exactly that, each entry with its reason.
///
/// What continuing cannot promise, and every learned profile says so in its
/// header: the kernel runs a continued call without a second check, so while
/// learning the filter is no security boundary (learn trusted workloads
/// only); and only register values are recorded, never memory behind a
/// pointer, which another thread could change after the supervisor looked.
/// The always-on hardening stays: the supervisor refuses to continue its
/// denials, and they are named in the output, never allowed.
public enum ProfileLearning {
    /// Calls answered ENOSYS while learning so that libc takes its older
    /// path, which is learned instead: a newer call the hardening or an
    /// older kernel refuses must not be the only way the workload works.
    public static let fallbacks: [String: String] = [
        "faccessat2": "faccessat", "openat2": "openat",
    ]
    /// Calls libc uses for one another (statx and newfstatat): learning one
    /// allows the other, so a libc that picks the other one still works.
    public static let companions: [String: String] = ["statx": "newfstatat", "newfstatat": "statx"]

    /// The arguments whose values decide what a call can do, recorded per
    /// call and turned into conditions (index and mask): socket family, type
    /// and protocol; ioctl request (low 32 bits); clone flags; prctl option;
    /// fcntl command; mmap/mprotect protection; personality; setsockopt
    /// level and name; madvise advice.
    public static let decidingArguments: [String: [(index: Int, mask: UInt64)]] = [
        "socket": [(0, 0xffff_ffff), (1, 0xf), (2, 0xffff_ffff)],
        "socketpair": [(0, 0xffff_ffff), (1, 0xf), (2, 0xffff_ffff)],
        "ioctl": [(1, 0xffff_ffff)],
        "clone": [(0, 0xffff_ffff)],
        "prctl": [(0, 0xffff_ffff)],
        "fcntl": [(1, 0xffff_ffff)],
        "mmap": [(2, .max)], "mprotect": [(2, .max)], "pkey_mprotect": [(2, .max)],
        "personality": [(0, 0xffff_ffff)],
        "setsockopt": [(1, 0xffff_ffff), (2, 0xffff_ffff)],
        "madvise": [(2, 0xffff_ffff)],
    ]

    /// The `[seccomp]` a learning jail runs with: nothing allowed, every
    /// denial notified. The one exception is the hand-over of the seccomp
    /// listener itself (the jail's `sendmsg` on its pipe to the launcher,
    /// above fd 255, with MSG_NOSIGNAL), which must pass in the kernel
    /// before anyone listens; a workload's own `sendmsg` with exactly those
    /// arguments is therefore not recorded.
    public static let learningSeccomp = """
        [seccomp]
        base = "none"
        default = "errno:EPERM"

        """ + handoverRule

    /// The first line of the hand-over rule's comment in a learned profile.
    public static let handoverComment = "# The seccomp listener's hand-over to the launcher"

    /// Allows the hand-over in the kernel: the learned profile carries it
    /// (commented as what it is) so that denial monitoring (`stockade run
    /// --report`, stockaded) can observe a jail that runs it.
    public static let handoverRule = """
        [[seccomp.rule]]
        syscall = "sendmsg"
        action = "allow"
        args = ["arg0 >= 256", "arg2 == 0x4000"]

        """

    /// A deny-by-default jail for when no profile is given: every
    /// namespace, a read-only /usr, a private /tmp, no capabilities.
    public static let defaultJail = """
        [jail]
        name = "learned"
        hostname = "stockade"
        namespaces = ["user", "pid", "mount", "net", "ipc", "uts", "cgroup"]
        cwd = "/tmp"

        [user]
        uid = 1000
        gid = 1000

        [filesystem]
        root_size = "1M"

        [[mount]]
        type = "bind"
        source = "/usr"

        [[mount]]
        type = "symlink"
        source = "usr/bin"
        target = "/bin"

        [[mount]]
        type = "symlink"
        source = "usr/lib"
        target = "/lib"

        [[mount]]
        type = "symlink"
        source = "usr/lib64"
        target = "/lib64"

        [[mount]]
        type = "bind"
        source = "/etc/ld.so.cache"
        optional = true

        [[mount]]
        type = "tmpfs"
        target = "/tmp"
        size = "256M"
        mode = "1777"

        [env.set]
        PATH = "/usr/bin:/bin"
        HOME = "/tmp"
        LANG = "C.UTF-8"

        [rlimits]
        core = 0
        nofile = 4096

        [limits]
        memory_max = "1G"
        pids_max = 128
        waive = ["memory_max"]

        """

    /// The profile text a learning jail runs with: `text`'s jail, the
    /// learning `[seccomp]`.
    public static func learningProfileText(jail text: String) -> String {
        var s = SeccompMinimizer.withoutSeccomp(text)
        if !s.hasSuffix("\n") { s += "\n" }
        return s + "\n" + learningSeccomp + "\n"
    }

    /// The profile text a soak runs with: a learned profile as written
    /// (what it allows stays in the kernel; everything else is recorded
    /// and let through), plus the listener's hand-over.
    public static func soakProfileText(learned text: String) -> String {
        // (firstRange: the standard library's search; `contains` on strings can bind to
        // Foundation's, which the launch path does not link.)
        if text.firstRange(of: handoverComment) != nil { return text }
        return text + (text.hasSuffix("\n") ? "" : "\n") + "\n" + handoverComment + " (only while soaking).\n" + handoverRule
    }

    public struct LearnError: Error, CustomStringConvertible, Sendable {
        public var description: String
        public init(_ d: String) { description = d }
    }

    /// Sets `request` (whose profile is a ``learningProfileText(jail:)``)
    /// up to be learned by `recorder`: its filter with every denial
    /// notified, answered by the recorder. Call before
    /// ``JailSecurity/prepare(_:)``, which keeps the filter.
    public static func prepare(_ request: inout LaunchRequest, recorder: LearnRecorder) throws {
        if let why = SeccompSupervisor.unavailableReason {
            throw LearnError("cannot learn here: \(why)")
        }
        let program = try request.profile.seccomp.compile()
        let observed = try program.observing([.policyErrno, .policyKill, .preludeDenials])
        var observation = SeccompObservation(
            notify: observed.notify,
            options: SeccompWatchOptions(answer: .continueCall, ratePerSecond: nil, executableForEvery: true,
                                         handler: { event, _ in recorder.record(event) }),
            observed: observed)
        observation.unavailable = nil
        request.seccompObservation = observation
        request.seccompFilter = observed.bytes
        request.seccompFlags = program.flags
    }
}

/// One learned entry: a call, and the values of its deciding arguments
/// (after their masks) when it has any.
public struct LearnedCall: Sendable, Hashable, Comparable {
    public var name: String
    /// (index, mask, value) per deciding argument; empty for a plain allow.
    public var conditions: [Condition]

    public struct Condition: Sendable, Hashable {
        public var index: Int
        public var mask: UInt64
        public var value: UInt64
        public init(index: Int, mask: UInt64, value: UInt64) {
            self.index = index
            self.mask = mask
            self.value = value
        }

        /// `arg1 == 0x5401`, `arg1 & 0xf == 1`.
        public var text: String {
            let v = value < 10 ? String(value) : "0x" + String(value, radix: 16)
            // A 32-bit argument is compared on its low half by the compiler.
            return mask == .max || mask == 0xffff_ffff ? "arg\(index) == \(v)" : "arg\(index) & 0x\(String(mask, radix: 16)) == \(v)"
        }
    }

    public init(name: String, conditions: [Condition] = []) {
        self.name = name
        self.conditions = conditions
    }

    public static func < (a: Self, b: Self) -> Bool {
        if a.name != b.name { return a.name < b.name }
        return a.conditions.map(\.value).lexicographicallyPrecedes(b.conditions.map(\.value))
    }
}

/// What was seen of one ``LearnedCall``.
public struct LearnedUse: Sendable, Equatable {
    public var count: Int
    public var runs: Int
    /// One occurrence, decoded: `socket(AF_UNIX, SOCK_STREAM|SOCK_CLOEXEC, 0)`.
    public var example: String
    /// Occurrences before the worker's exec: the launcher's own last calls.
    public var launcher: Int
    /// The jail's executables that made the call (at most ``maxExecutables``),
    /// as the kernel names them from the jail's root.
    public var executables: [String]
    public static let maxExecutables = 4

    public init(count: Int, runs: Int, example: String, launcher: Int, executables: [String] = []) {
        self.count = count
        self.runs = runs
        self.example = example
        self.launcher = launcher
        self.executables = executables
    }

    /// `text` safe in a comment of a learned profile: control characters
    /// (a newline would end the comment and start TOML of the jail's
    /// choosing), non-ASCII bytes, `\\` and with `commas` `,` (the
    /// separator of ``executables``) are written as `\\xNN`.
    public static func printable(_ text: String, commas: Bool = false) -> String {
        var out = ""
        for byte in text.utf8 {
            if byte < 0x20 || byte >= 0x7f || (commas && byte == UInt8(ascii: ",")) || byte == UInt8(ascii: "\\") {
                out += "\\x" + (byte < 16 ? "0" : "") + String(byte, radix: 16)
            } else {
                out.append(Character(Unicode.Scalar(byte)))
            }
        }
        return out
    }

    /// Adds an executable's name (from the jail: made ``printable(_:)``).
    mutating func add(executable raw: String) { insert(printable: Self.printable(raw, commas: true)) }

    mutating func insert(printable executable: String) {
        guard !executables.contains(executable), executables.count < Self.maxExecutables else { return }
        executables.append(executable)
        executables.sort()
    }
}

/// Collects a learning jail's notifications (on the supervisor thread) and
/// answers them: continue, but the hardening's denials keep their verdict
/// (the supervisor enforces that too) and the ``ProfileLearning/fallbacks``
/// get ENOSYS.
public final class LearnRecorder: Sendable {
    struct State {
        var allowed: [LearnedCall: LearnedUse] = [:]
        var fallbacks: [String: LearnedUse] = [:]
        var hardened: [String: LearnedUse] = [:]
        var total = 0
    }
    private let state = Mutex(State())
    /// The launcher's own executable: a call made from it is one the
    /// launcher's copy makes between loading the filter and the exec.
    let launcherExecutable: String?

    public init() {
        var buffer = [CChar](repeating: 0, count: 4096)
        let n = readlink("/proc/self/exe", &buffer, buffer.count - 1)
        launcherExecutable = n > 0 ? String(decoding: buffer[..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self) : nil
    }

    static func key(_ name: String, _ args: [UInt64]) -> LearnedCall {
        let conditions = (ProfileLearning.decidingArguments[name] ?? []).map { arg in
            LearnedCall.Condition(index: arg.index, mask: arg.mask, value: (args.count > arg.index ? args[arg.index] : 0) & arg.mask)
        }
        return LearnedCall(name: name, conditions: conditions)
    }

    /// The answer for one notification, recorded.
    public func record(_ event: SeccompEvent) -> SeccompAnswer {
        let launcher = event.executable != nil && event.executable == launcherExecutable
        let example = event.description
        func add(_ use: inout LearnedUse?) {
            if use == nil { use = LearnedUse(count: 0, runs: 1, example: example, launcher: 0) }
            use!.count += 1
            if launcher { use!.launcher += 1 } else if let exe = event.executable { use!.add(executable: exe) }
        }
        return state.withLock { s in
            s.total += 1
            if event.origin == .prelude {
                add(&s.hardened[event.name])
                return .verdict
            }
            if ProfileLearning.fallbacks[event.name] != nil {
                add(&s.fallbacks[event.name])
                return .errno(ENOSYS)
            }
            add(&s.allowed[Self.key(event.name, event.args)])
            return .continueCall
        }
    }

    /// What was recorded so far, as one run.
    public func observations() -> LearnedPolicy {
        state.withLock { s in
            LearnedPolicy(allowed: s.allowed, fallbacks: s.fallbacks, hardened: s.hardened, runs: 1, notifications: s.total)
        }
    }
}
