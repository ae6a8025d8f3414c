import ArgumentParser
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import StockadeConfig
import StockadeSeccomp
import StockadeCgroups
import StockadeJail

/// `stockade explain PROFILE`: what a jail built from the profile can and cannot do.
struct ExplainCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "explain",
        abstract: "Say in plain words what a profile's jail can and cannot do.",
        discussion: """
        Reads and validates the profile, compiles its seccomp filter and works \
        out its Landlock rules for this kernel, then describes the jail: its \
        namespaces, what it sees of the filesystem, its network, which system \
        calls it may make (checked by running the compiled filter, not by \
        reading the profile), what Landlock enforces here, and its limits.
        """
    )

    @Argument(help: "The profile (a TOML file).")
    var profile: String

    func run() throws {
        let p: Profile
        let program: SeccompProgram
        let landlock: LandlockPlan
        do {
            p = try Profile.load(path: profile)
            program = try p.seccomp.compile()
            landlock = try LandlockPlan(profile: p)
        } catch let error as ProfileError {
            throw PolicyCommandError(error.description)
        } catch {
            throw PolicyCommandError("\(error)")
        }
        print(Self.explain(p, program: program, landlock: landlock))
    }

    static func explain(_ p: Profile, program: SeccompProgram, landlock: LandlockPlan) -> String {
        var out: [String] = []
        func say(_ s: String) { out.append(s) }

        say("Jail \"\(p.name)\" (\(p.file))")
        say("")
        say("Namespaces")
        let ns = p.namespaces
        say("  own: \(ns.sorted().map(\.rawValue).joined(separator: ", "))")
        let shared = Profile.Namespace.allCases.filter { !ns.contains($0) }
        if !shared.isEmpty { say("  shared with the host: \(shared.map(\.rawValue).joined(separator: ", "))") }
        say("  runs as uid \(p.user.uid), gid \(p.user.gid) inside, with no capabilities and no_new_privs")
        if let h = p.hostname, ns.contains(.uts) { say("  hostname: \(h)") }
        if p.newSession { say("  in a new session: it cannot reach the caller's terminal") }

        say("")
        say("Filesystem")
        say("  / is a fresh \(p.filesystem.readonlyRoot ? "read-only" : "writable") tmpfs holding only what is listed here")
        if p.filesystem.proc { say("  /proc: its own pid namespace's processes, sensitive files masked") }
        if p.filesystem.dev { say("  /dev: \((DevicesSection.jailDevNodes + ["pts", "shm"]).joined(separator: ", "))") }
        for m in p.mounts {
            let flags = [m.writable ? "writable" : "read-only", m.noexec ? "noexec" : nil, m.optional ? "if present" : nil]
                .compactMap { $0 }.joined(separator: ", ")
            switch m.kind {
            case .bind: say("  \(m.target): host \(m.source ?? "?") (\(flags))")
            case .tmpfs: say("  \(m.target): empty tmpfs\(m.size.map { " of \(SizeValue.bytes($0))" } ?? "") (\(flags))")
            case .dir: say("  \(m.target): empty directory")
            case .symlink: say("  \(m.target) -> \(m.source ?? "?")")
            }
        }
        for m in p.filesystem.masked { say("  \(m): hidden") }
        if p.mounts.isEmpty { say("  nothing from the host is visible") }

        say("")
        say("Network")
        if ns.contains(.net) {
            say("  its own network namespace: loopback only, no route out")
        } else {
            say("  the HOST's network: it can reach whatever the host can")
        }

        say("")
        say("System calls (seccomp)")
        let baseText: String
        switch p.seccomp.base {
        case .stock: baseText = "the stock worker allowlist"
        case .none: baseText = "only the profile's own rules"
        case .docker(let path): baseText = "the Docker profile \(path)"
        }
        say("  policy: \(baseText); anything else: \(program.defaultAction)")
        var allowed = 0, conditional = 0
        var total = 0
        for nr in 0...Syscalls.highestKnown where Syscalls.name(of: nr) != nil {
            total += 1
            let v = (try? program.verdict(SeccompData(nr: nr))) ?? .killProcess
            if v.permits { allowed += 1 }
            if p.seccomp.rules.contains(where: { $0.number == nr && !$0.conditions.isEmpty }) { conditional += 1 }
        }
        say("  \(allowed) of \(total) known calls pass with zero arguments; \(conditional) depend on their arguments")
        say("  every jail, whatever the profile says:")
        say("    x32 and i386 (int 0x80) calls kill the process; clone3 answers ENOSYS")
        for call in HardenedCall.all where program.lifted[call.name] == nil {
            if !call.isTotal { say("    \(call.name): \(call.why)") }
        }
        let totals = HardenedCall.all.filter { $0.isTotal && program.lifted[$0.name] == nil && $0.name != "clone3" }
        say("    denied: \(totals.map(\.name).joined(separator: ", "))")
        for (name, reason) in program.lifted.sorted(by: { $0.key < $1.key }) {
            say("    LIFTED for this profile: \(name) (\(reason))")
        }
        let notable = ["socket", "connect", "bind", "execve", "clone", "fork", "mprotect", "kill", "prctl", "ioctl"]
        let denied = notable.filter { n in
            guard let nr = Syscalls.number(of: n) else { return false }
            let args: [UInt64] = n == "socket" ? [2, 1, 0] : []
            return !((try? program.verdict(SeccompData(nr: nr, args: args)))?.permits ?? false)
        }
        if !denied.isEmpty { say("  also denied here: \(denied.joined(separator: ", "))") }
        for n in program.notes { say("  note: \(n)") }

        say("")
        say("Access control (Landlock)")
        for line in landlock.report { say("  " + line) }

        say("")
        say("Limits")
        if let t = p.timeLimit { say("  killed after \(t)") }
        for r in p.rlimits.sorted(by: { $0.name < $1.name }) {
            say("  rlimit \(r.name): \(r.soft.map { String($0) } ?? "unlimited")")
        }
        say("  cgroup budget: " + budget(p.limits).joined(separator: "; "))

        say("")
        say("Devices")
        for line in devices(p) { say("  " + line) }
        return out.joined(separator: "\n")
    }

    /// The profile's [limits] in words, as the kernel will be told them.
    static func budget(_ l: LimitsSection) -> [String] {
        var parts: [String] = []
        if let m = l.memoryMax { parts.append("memory at most \(SizeValue.bytes(m)) (OOM kill past it)") }
        if let m = l.memoryHigh { parts.append("reclaimed and throttled past \(SizeValue.bytes(m))") }
        if let s = l.swapMax { parts.append("swap at most \(SizeValue.bytes(s))") }
        if let n = l.pidsMax { parts.append("at most \(n) processes and threads") }
        if let c = l.cpu { parts.append("at most \(c.cpus.fixed(2)) CPUs (cpu.max \(c))") }
        if let w = l.cpuWeight { parts.append("cpu weight \(w)") }
        if let s = l.cpuset { parts.append("only CPUs \(s)") }
        for io in l.ioMax { parts.append("io.max \(io)") }
        if parts.isEmpty { return ["none of its own (its tenant's total still applies)"] }
        let waived = l.setKeys.filter { l.waived.contains($0) }
        parts.append("without a cgroup: pids_max held as RLIMIT_NPROC; " +
                     (waived.isEmpty ? "any other limit refuses the launch" : "waived by name: \(waived.joined(separator: ", "))"))
        return parts
    }

    /// What the jail may open of the host's devices.
    static func devices(_ p: Profile) -> [String] {
        let d = p.devices
        guard d.declared else {
            return ["no [devices]: only its own /dev nodes; no other device node is in its root"]
        }
        var lines = ["may open: " + d.standard.map(\.rawValue).joined(separator: ", ")]
        if !d.allow.isEmpty { lines.append("host devices: " + d.allow.map(\.description).joined(separator: ", ")) }
        switch d.gpus {
        case .none: break
        case .all: lines.append("every NVIDIA GPU of the host")
        case .some(let ids): lines.append("NVIDIA GPUs: " + ids.joined(separator: ", "))
        }
        if d.gpus != .none {
            lines.append("nvidia-uvm-tools (profiling): \(d.nvidiaUVMTools ? "yes" : "no")")
            switch d.driverLibraries {
            case .loaderCache: lines.append("driver libraries: those /etc/ld.so.cache lists, read-only")
            case .directory(let dir): lines.append("driver libraries: \(dir), read-only")
            case .none: lines.append("driver libraries: none (the profile binds them)")
            }
        }
        lines.append("the kernel refuses every other device (cgroup device program, or devices.* on cgroup v1)")
        return lines
    }
}
