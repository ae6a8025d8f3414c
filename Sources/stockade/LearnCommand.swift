import ArgumentParser
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import StockadeCgroups
import StockadeConfig
import StockadeJail
import StockadeProfileTesting
import StockadeSeccomp
#if canImport(Glibc)
import Glibc
#endif

/// `stockade learn [--profile P] [--merge OLD] [-o OUT] -- CMD...`: the
/// system calls a command makes, as a profile that allows exactly them.
struct LearnCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "learn",
        abstract: "Run a trusted command and write a profile that allows exactly the system calls it made.",
        discussion: """
        CMD runs in the jail of --profile (namespaces, mounts, Landlock, \
        environment, limits; default: a deny-by-default jail with /usr \
        read-only and a private /tmp) with a [seccomp] that allows nothing. \
        Every call goes to the seccomp supervisor, is recorded (number, the \
        arguments that decide safety: socket family/type/protocol, ioctl \
        request, clone flags, prctl option, fcntl command, mmap/mprotect \
        protection, personality, setsockopt level/name, madvise advice; the \
        executable) and is let through. The always-on hardening stays: its \
        denials are answered as always and named in the output, never \
        allowed; faccessat2 and openat2 get ENOSYS so that libc falls back.

        The profile written is the jail's profile with a [seccomp] of base \
        "none" allowing exactly what was seen, each entry with its reason; \
        --merge adds the runs of an earlier learned profile. It loads with \
        stockade run --profile.

        --keep-allowed keeps --profile's own [seccomp] while learning: what it \
        allows stays in the kernel and is not recorded; every call it would \
        deny is recorded and let through. The profile written is --profile \
        as it is, followed by one allow rule per call learned on top of it \
        (a call the profile denies by a rule of its own is named in a \
        comment, not allowed).

        --soak runs CMD under a learned profile (--profile) as written: what \
        it allows stays in the kernel, every other call is logged (on \
        stderr) and let through, and the result is the profile with those \
        calls added (its runs merged).

        A continued call is not checked again by the kernel: while learning, \
        the filter is no security boundary. Learn only trusted workloads.

        Example:
          stockade learn -o numpy.toml --ro-bind $PWD/.venv -- \\
            $PWD/.venv/bin/python3 -c 'import numpy'
        """
    )

    @Option(name: [.customShort("p"), .customLong("profile"), .customLong("base")],
            help: "The jail to learn in (its [seccomp] is replaced while learning).")
    var profile: String?

    @Option(name: .shortAndLong, help: "Write the learned profile here (default: standard output).")
    var output: String?

    @Option(help: ArgumentHelp("A profile learn wrote earlier: the result is the union of its runs and this one.", valueName: "old.toml"))
    var merge: String?

    @OptionGroup var inputs: JailInputOptions

    @Option(name: .customLong("time-limit"), help: "Kill the jail after this long (default 5m).")
    var timeLimit = "5m"

    @Flag(help: "Write the profile even when the command failed.")
    var keepFailed = false

    @Flag(help: "Enforce the learned --profile, log and let through the rest, and add it.")
    var soak = false

    @Flag(help: "Keep --profile's own [seccomp] (its allows stay in the kernel) and write it with what was learned on top.")
    var keepAllowed = false

    @Flag(name: .customLong("seccomp-only"), help: "Write only the learned [seccomp] (with its header), to paste into a profile.")
    var seccompOnly = false

    @Argument(parsing: .postTerminator, help: "The command and its arguments (after --).")
    var command: [String] = []

    func validate() throws {
        if command.isEmpty { throw ValidationError("give the command to learn after --: stockade learn -o out.toml -- CMD ARGS...") }
        if soak && profile == nil { throw ValidationError("--soak runs under a learned profile: give it with --profile") }
        if soak && merge != nil { throw ValidationError("--soak already merges its --profile; leave out --merge") }
        if keepAllowed && profile == nil { throw ValidationError("--keep-allowed keeps the [seccomp] of a profile: give it with --profile") }
        if keepAllowed && (soak || merge != nil || seccompOnly) {
            throw ValidationError("--keep-allowed writes the whole profile with additions: leave out --soak, --merge and --seccomp-only")
        }
    }

    func run() throws {
        let jailText: String
        let file: String
        var ownRules: [SeccompRule] = []
        if let profile {
            ownRules = try ProfileTools.load(profile).seccomp.rules  // a clear message for a broken profile
            jailText = try ProfileTools.read(profile, what: "profile")
            file = profile
        } else {
            jailText = ProfileLearning.defaultJail
            file = "(the default learning jail)"
        }
        // --keep-allowed: calls the profile denies by a rule of its own are deliberate denials.
        let denyingRules = Set(ownRules.filter { $0.action != .allow && $0.action != .log }.map(\.syscall))
        let old: LearnedPolicy?
        if let previous = soak ? profile : merge {
            do { old = try LearnedPolicy(reading: try ProfileTools.read(previous, what: "learned profile"), file: previous) } catch let e as LearnedPolicy.ReadError {
                throw PolicyCommandError(e.description)
            }
        } else {
            old = nil
        }
        let limit: Duration
        switch DurationValue(parsing: timeLimit) {
        case .value(let d) where d > .zero: limit = d
        default: throw ValidationError("--time-limit: cannot read \"\(timeLimit)\" as a positive duration (e.g. 30s, 2m)")
        }
        let learning: Profile
        let learningText = soak || keepAllowed ? ProfileLearning.soakProfileText(learned: jailText) : ProfileLearning.learningProfileText(jail: jailText)
        do { learning = try Profile.parse(text: learningText, file: file) } catch {
            if keepAllowed { throw PolicyCommandError("--keep-allowed: the listener's hand-over rule (sendmsg above fd 255 with MSG_NOSIGNAL) does not fit \(file)'s own [seccomp]: \(error.description)") }
            throw PolicyCommandError(error.description)
        }
        var request = LaunchRequest(profile: learning, command: command)
        try inputs.apply(to: &request)
        for line in LearnedPolicy.caveats { printError("stockade learn: " + line) }

        let recorder = LearnRecorder()
        // The profile's budget, as `stockade run` holds it.
        let cgroups = try JailBudget.make(profile: &request.profile)
        request.cgroup = cgroups?.jail
        let terminal = try JailTerminal.prepare(&request)
        do { try ProfileLearning.prepare(&request, recorder: recorder) } catch {
            terminal?.close()
            try? request.cgroup?.remove()
            try? cgroups?.manager.close()
            throw StockadeFailure(message: "\(error)", status: 125)
        }
        let jail = try JailBudget.launch(&request, terminal: terminal, budget: cgroups)
        guard jail.seccompWatch != nil else {
            jail.kill()
            _ = try? jail.wait()
            try? cgroups?.manager.close()
            throw StockadeFailure(message: "the jail's calls cannot be observed: \(jail.seccompUnobserved ?? "no seccomp listener came")", status: 125)
        }
        let exit = try JailBudget.wait(for: jail, terminal: terminal, budget: cgroups, timeLimit: limit)
        var learned = recorder.observations()
        let seen = learned.notifications
        if soak {
            let known = old.map { Set($0.allowed.keys) } ?? []
            let outside = learned.allowed.filter { !known.contains($0.key) }.sorted { $0.key < $1.key }
            printError("stockade learn: soak: \(outside.count) entr\(outside.count == 1 ? "y" : "ies") outside the learned list\(outside.isEmpty ? "" : ":")")
            for (_, use) in outside { printError("stockade learn:   " + LearnedPolicy.describe(use)) }
        }
        if let old { learned = old.merged(with: learned) }
        if exit.status != 0 && !keepFailed {
            throw StockadeFailure(message: "the command \(exit.reason == .timeLimit ? "ran past --time-limit" : "exited with status \(exit.status)"); no profile written (--keep-failed writes it anyway)", status: 1)
        }
        let text: String
        if keepAllowed {
            let handsOver = ownRules.contains { $0.syscall == "sendmsg" && $0.action == .allow && $0.conditions.isEmpty }
            text = learned.renderAdditions(profileText: jailText, denyingRules: denyingRules, listenerRule: !handsOver, command: command)
            do { _ = try Profile.parse(text: text, file: output ?? "(the learned profile)") } catch {
                throw PolicyCommandError("the learned additions do not load on top of \(file): \(error.description)")
            }
        } else {
            text = learned.render(jailText: seccompOnly ? "" : jailText, command: command)
        }
        if let output {
            guard FileManager.default.createFile(atPath: output, contents: Data(text.utf8), attributes: [.posixPermissions: 0o644]) else {
                throw PolicyCommandError("cannot write \(output)")
            }
        } else {
            print(text, terminator: "")
        }
        if keepAllowed {
            let kept = learned.allowed.keys.filter { denyingRules.contains($0.name) }.count
            printError("stockade learn: \(seen) calls seen outside what \(file) allows: \(learned.allowed.count - kept) entries added on top of it, \(kept) left denied by its own rules; \(learned.hardened.count) denied by the hardening, \(learned.fallbacks.count) answered ENOSYS for libc's fallback")
            return
        }
        let rules = learned.allowed.count
        printError("stockade learn: \(seen) calls seen, \(learned.allowedNames.count) system calls allowed (\(rules) entries) over \(learned.runs) run\(learned.runs == 1 ? "" : "s"); \(learned.hardened.count) denied by the hardening, \(learned.fallbacks.count) answered ENOSYS for libc's fallback")
    }
}
