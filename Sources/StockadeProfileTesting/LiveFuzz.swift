public import StockadeSeccomp
import StockadeJail
#if canImport(Glibc)
import Glibc
#endif

/// `stockade fuzz --live`: jails built from mutant profiles make raw system
/// calls (probe/stockade-rawcall.c, one call per jail, no C library), and
/// what the kernel did must be what the simulation of the mutant's filter
/// predicted: a kill or trap is death by SIGSYS, an errno is that errno, and
/// an allowed call does what it does under a filter that allows everything
/// (measured once, in a jail of its own).
public struct LiveFuzz {
    /// One call of the raw-syscall corpus: how it enters the kernel, and its
    /// number and arguments. Chosen so that, allowed, each fails harmlessly
    /// or does nothing lasting inside the jail.
    public struct Call: Sendable, CustomStringConvertible {
        public var mode: String?  // "--x32", "--int80"
        public var nr: Int32
        public var args: [UInt64]

        public var data: SeccompData {
            switch mode {
            case "--int80": return SeccompData(nr: nr, arch: SeccompArch.i386, args: args.map { $0 & 0xffff_ffff })
            case "--x32": return SeccompData(nr: nr | Int32(bitPattern: SeccompArch.x32SyscallBit), args: args)
            default: return SeccompData(nr: nr, args: args)
            }
        }
        var argv: [String] {
            (mode.map { [$0] } ?? []) + [String(UInt32(bitPattern: nr), radix: 16)] + args.map { String($0, radix: 16) }
        }
        public var description: String { CallCorpus.describe(data) }
    }

    /// What a jail's one call came to.
    public enum Observed: Equatable, Sendable, CustomStringConvertible {
        case exit(Int32)
        case signal(Int32)
        case failed(String)
        public var description: String {
            switch self {
            case .exit(0): return "returned"
            case .exit(let e): return "errno \(e)"
            case .signal(let s): return "killed by signal \(s)"
            case .failed(let m): return "no result: \(m)"
            }
        }
    }

    static func nr(_ name: String) -> Int32 { Syscalls.number(of: name) ?? -1 }
    static let bad: UInt64 = 0xffff_ffff_ffff_ffff

    public static let corpus: [Call] = {
        var c: [Call] = []
        func add(_ name: String, _ args: [UInt64] = [], mode: String? = nil) { c.append(Call(mode: mode, nr: nr(name), args: args)) }
        add("getppid"); add("getuid"); add("sched_yield"); add("getcpu")
        add("read", [bad]); add("write", [bad]); add("close", [bad]); add("uname", [0])
        add("socket", [16, 3, 0]); add("socket", [1, 1, 0]); add("socket", [2, 2, 17]); add("socket", [0x1_0000_0010, 3, 0])
        add("socket", [17, 3, 0]); add("socketpair", [2, 1, 0, 0])
        add("ioctl", [bad, 0x5412]); add("ioctl", [bad, 0x541B]); add("ioctl", [bad, 0xdead_beef_0000_5412])
        add("clone", [0x1001_0000]); add("unshare", [0xffff_ffff]); add("personality", [0xffff_ffff])
        add("prctl", [0xffff]); add("fcntl", [bad, 1]); add("mmap", [0, 0, 1, 0x22, bad, 0]); add("mprotect", [0, 0, 4])
        add("madvise", [0, 0, 0xffff]); add("kill", [0x7fff_ffff, 0]); add("getrandom", [0, 0, 0]); add("memfd_create", [0, 0])
        add("openat", [bad, 0, 0]); add("ptrace", [3, 0x7fff_ffff]); add("mount", [0, 0, 0, 0, 0]); add("bpf", [bad, 0, 0])
        add("keyctl", [bad]); add("chroot", [0]); add("setns", [bad, 0]); add("io_uring_setup", [0, 0]); add("clone3", [0, 0])
        add("setsockopt", [bad, 1, 2, 0, 0]); add("futex", [0, 0xff])
        c.append(Call(mode: nil, nr: Syscalls.highestKnown + 1, args: []))
        c.append(Call(mode: nil, nr: -1, args: []))
        c.append(Call(mode: "--x32", nr: nr("getppid"), args: []))
        c.append(Call(mode: "--x32", nr: nr("read"), args: [bad]))
        c.append(Call(mode: "--int80", nr: 20, args: []))          // getpid
        c.append(Call(mode: "--int80", nr: 213, args: [0xffff_ffff])) // setuid32(-1)
        c.append(Call(mode: "--int80", nr: 102, args: [1, 0]))      // socketcall(SYS_SOCKET)
        return c
    }()

    /// The jail around each call: every namespace, an empty root, and the
    /// helper bound read-only. Its `[seccomp]` is the mutant's.
    static let jailText = """
    [jail]
    name = "fuzz-live"
    namespaces = ["user", "pid", "mount", "net", "ipc", "uts", "cgroup"]
    time_limit = "20s"
    [filesystem]
    root_size = "1M"
    dev = false

    """

    public static let helperPath = "/stockade-rawcall"

    public var helper: String
    /// The escape-probe battery (`make probe`); nil: the battery is not run.
    public var probeBinary: String?
    /// What each call does under a filter that allows everything.
    public var baseline: [Observed] = []
    public var jailsLaunched = 0
    /// Mutants the battery ran under, and those it could not run under (a
    /// mutant may refuse what the battery itself needs: fork, write, ...).
    public var batteries = 0
    public var batteriesSkipped = 0

    /// The battery's probes of what the hardening refuses in every jail
    /// (namespaces, clone3, setns, mount, ptrace, personality, TIOCSTI,
    /// TIOCLINUX, io_uring, userfaultfd, bpf, perf, keyrings,
    /// open_by_handle_at, kexec/reboot, modules, x32, int 0x80, numbers
    /// past the table): simulate predicts a refusal for each under every
    /// profile that lifts nothing, so each must pass.
    public static let hardeningProbes = [4, 5, 6, 7, 8, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24]

    public init(helper: String) throws {
        self.helper = helper
        var open = SeccompSketch()
        open.defaultAction = "allow"
        open.base = "none"
        open.dangerous = HardenedCall.all.map(\.name)
        let profile = try Profile.parse(text: Self.jailText + open.toml, file: "fuzz-live-open.toml")
        baseline = try Self.corpus.map { try observe(profile, $0) }
    }

    /// The mutant as the live run uses it: execve (how the helper starts)
    /// and exit_group (how it reports) allowed and nothing else about them.
    public static func runnable(_ s: SeccompSketch) -> SeccompSketch {
        var s = s
        let needed = ["execve", "exit_group"]
        s.deny.removeAll { needed.contains($0) }
        s.rules = s.rules.compactMap { r in
            var r = r
            r.syscalls.removeAll { needed.contains($0) }
            return r.syscalls.isEmpty ? nil : r
        }
        s.allow = Array(Set(s.allow + needed)).sorted()
        return s
    }

    mutating func observe(_ profile: Profile, _ call: Call) throws -> Observed {
        var request = LaunchRequest(profile: profile, command: [Self.helperPath] + call.argv)
        request.extraMounts.append(MountSpec(kind: .bind, source: helper, target: Self.helperPath))
        try JailSecurity.prepare(&request)
        let jail = try Launcher.launch(request)
        jailsLaunched += 1
        let exit = try jail.wait(timeLimit: .seconds(20))
        if let s = exit.signal { return .signal(s) }
        if let c = exit.exitCode { return .exit(c) }
        return .failed(exit.reason.rawValue)
    }

    public struct Mismatch: Sendable, CustomStringConvertible {
        public var call: Call
        public var predicted: SeccompAction
        public var observed: Observed
        public var sketch: SeccompSketch
        public var description: String {
            "\(call): simulate predicted \(predicted), the jail \(observed)\nprofile:\n\(sketch.toml)"
        }
    }

    /// Whether what happened is what the verdict means.
    func agrees(_ predicted: SeccompAction, _ observed: Observed, baseline: Observed) -> Bool {
        switch predicted {
        case .killProcess, .killThread, .trap: return observed == .signal(SIGSYS)
        case .errno(let e):
            let code = Int32(e & 0xff)
            return observed == .exit(code == 0 ? 255 : code)
        case .allow, .log: return observed == baseline
        case .notify, .trace: return observed == .exit(38)  // no supervisor, no tracer: ENOSYS
        }
    }

    /// The battery's hardening probes in a jail of the mutant (on the stock
    /// allowlist, so that the battery can run at all; the mutant's own rules
    /// replace the stock ones for their calls). Returns what failed.
    public mutating func battery(_ mutant: SeccompSketch) throws -> String? {
        guard let probeBinary, mutant.dangerous.isEmpty else { return nil }
        var s = Self.runnable(mutant)
        s.base = "stock"
        guard let profile = try? Profile.parse(text: Self.jailText + s.toml, file: "fuzz-live-battery.toml") else { return nil }
        var options = ProbeBattery.Options(profile: profile, binary: probeBinary)
        options.only = Self.hardeningProbes
        options.timeLimit = .seconds(120)
        let result: (report: ProbeReport, exit: JailExit)
        do {
            result = try ProbeBattery.run(options)
        } catch is ProbeBatteryError {
            batteriesSkipped += 1
            return nil
        }
        jailsLaunched += 1
        batteries += 1
        let failed = result.report.failures
        guard !failed.isEmpty else { return nil }
        return "the probe battery escaped under the mutant: " + failed.map { "\($0.number) \($0.name): \($0.result)" }.joined(separator: "; ")
            + "\nprofile:\n" + s.toml
    }

    /// Runs the corpus in jails of the mutant; returns the first mismatch.
    public mutating func check(_ mutant: SeccompSketch) throws -> Mismatch? {
        let s = Self.runnable(mutant)
        let text = Self.jailText + s.toml
        guard let profile = try? Profile.parse(text: text, file: "fuzz-live.toml"),
              let program = try? profile.seccomp.compile() else { return nil }
        for (i, call) in Self.corpus.enumerated() {
            let predicted = SeccompMachine.action((try? runBPF(program.instructions, on: call.data)) ?? 0)
            let observed = try observe(profile, call)
            if !agrees(predicted, observed, baseline: baseline[i]) {
                return Mismatch(call: call, predicted: predicted, observed: observed, sketch: s)
            }
        }
        return nil
    }
}
