import ArgumentParser
import StockadeCgroups
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import SystemPackage
import StockadeConfig
import StockadeJail
import StockadeSeccomp
import StockadeSystem
#if canImport(Glibc)
import Glibc
#endif

struct RunCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "Run a command inside a jail built from a profile.",
        discussion: """
            The jail gets new namespaces, a private read-only root, no capabilities and \
            no_new_privs, as the profile says. stockade exits with the command's own exit \
            status, or 128 + the signal that killed it.

            Example:
              stockade run --profile profiles/minimal.toml -- /bin/sh -c 'id; ls /'
            """
    )

    @Option(name: .shortAndLong, help: "The jail profile (TOML).")
    var profile: String

    @Option(name: .long, help: "Print a summary when the jail ends, with the calls seccomp denied: json or text (on stderr).")
    var report: ReportFormat?

    @OptionGroup var inputs: JailInputOptions

    @Option(name: .customLong("time-limit"), help: "Kill the jail after this long (\"30s\", \"2m\"); overrides the profile.")
    var timeLimit: String?

    @Option(name: .long, help: ArgumentHelp("The tenants file (TOML): each tenant's total budget and most jails.", valueName: "file"))
    var tenants: String?

    @Option(name: .long, help: "The tenant whose budget the jail counts against (default: \"default\", no budget).")
    var tenant: String?

    @Option(name: .customLong("cgroup-base"), help: ArgumentHelp("The cgroup Stockade creates tenants and jails below, relative to the hierarchy root (default: stockade below the launcher's delegated cgroup, else /stockade).", valueName: "path"))
    var cgroupBase: String?

    @Option(name: .long, help: ArgumentHelp("Run the command in a jail stockaded built ahead, from the pool --profile names (see stockade(1)); only --setenv applies with it.", valueName: "socket"))
    var via: String?

    @Argument(parsing: .captureForPassthrough, help: "The command and its arguments (after --).")
    var command: [String] = []

    enum ReportFormat: String, ExpressibleByArgument {
        case json, text
    }

    func run() throws {
        // A line with --via among its options never gets here (ViaClient).
        if via != nil {
            throw ValidationError("--via goes among the options before the command: stockade run --via SOCKET [--profile POOL] -- CMD")
        }
        try RunInvocation(profile: profile, report: report, readOnlyBinds: inputs.readOnlyBinds,
                          writableBinds: inputs.writableBinds, environment: inputs.environment, timeLimit: timeLimit,
                          tenants: tenants, tenant: tenant, cgroupBase: cgroupBase, command: command).run()
    }

    /// `--setenv name=value` values as pairs.
    static func environmentPairs(_ values: [String]) throws -> [(String, String)] {
        try values.map { pair in
            guard let eq = pair.firstIndex(of: "="), eq != pair.startIndex else {
                throw ValidationError("--setenv takes name=value, got \"\(pair)\"")
            }
            return (String(pair[..<eq]), String(pair[pair.index(after: eq)...]))
        }
    }

    static func bind(_ spec: String, writable: Bool) throws -> MountSpec {
        let parts = spec.split(separator: ":", maxSplits: 1).map(String.init)
        let source = parts[0]
        let target = parts.count > 1 ? parts[1] : source
        let flag = writable ? "--bind" : "--ro-bind"
        guard source.hasPrefix("/"), target.hasPrefix("/") else {
            throw ValidationError("\(flag) \(spec): bind paths must be absolute")
        }
        guard !source.split(separator: "/").contains(".."), !target.split(separator: "/").contains("..") else {
            throw ValidationError("\(flag) \(spec): a bind path may not contain '..'")
        }
        guard target.split(separator: "/").count > 0 else {
            throw ValidationError("\(flag) \(spec): cannot mount over the jail's root itself")
        }
        return MountSpec(kind: .bind, source: source, target: target, writable: writable)
    }

    /// `--ro-bind` and `--bind` values in the order they were given: the
    /// two lists keep their own order, and the command line (up to `--`)
    /// says how they interleave.
    static func bindsInOrder(readOnly: [String], writable: [String],
                             arguments: [String] = CommandLine.arguments) -> [(String, Bool)] {
        var ro = readOnly[...], rw = writable[...]
        var result: [(String, Bool)] = []
        for arg in arguments.dropFirst() {
            if arg == "--" || (ro.isEmpty && rw.isEmpty) { break }
            if arg == "--ro-bind" || arg.hasPrefix("--ro-bind="), let next = ro.popFirst() {
                result.append((next, false))
            } else if arg == "--bind" || arg.hasPrefix("--bind="), let next = rw.popFirst() {
                result.append((next, true))
            }
        }
        return result + ro.map { ($0, false) } + rw.map { ($0, true) }
    }
}

/// What `--report` prints: how the jail ended (``JailExit``'s keys) and,
/// under `denials`, the calls seccomp denied, by call.
struct RunReport: Encodable {
    var exit: JailExit
    var denials: Denials

    struct Denials: Encodable {
        /// Whether denied calls were seen (false: `unobserved` says why).
        var observed: Bool
        var unobserved: String?
        var total: Int
        /// Most frequent first: name, count, first example, answer, origin.
        var seccomp: [SeccompTally.Call]
        /// Notifications that waited because the jail was over its rate.
        var throttled: Int
        var landlock: Landlock
    }

    struct Landlock: Encodable {
        /// Whether the kernel's audit records were read (false: `unobserved` says why).
        var observed: Bool
        var unobserved: String?
        var total: Int
        var byBlocker: [String: Int]
        var example: String?
    }

    init(exit: JailExit, jail: Jail) {
        self.exit = exit
        let tally = jail.seccompWatch?.tally() ?? SeccompTally()
        let ll = jail.landlockWatch?.tally() ?? LandlockTally()
        let landlock = Landlock(observed: jail.landlockWatch != nil,
                                unobserved: jail.landlockWatch == nil ? jail.landlockUnobserved ?? "the profile has no Landlock rules" : nil,
                                total: ll.total, byBlocker: ll.byBlocker, example: ll.example)
        denials = Denials(observed: jail.seccompWatch != nil, unobserved: jail.seccompUnobserved, total: tally.total,
                          seccomp: tally.sorted, throttled: tally.throttled, landlock: landlock)
    }

    enum Keys: String, CodingKey { case denials }

    func encode(to encoder: any Encoder) throws {
        try exit.encode(to: encoder)
        var container = encoder.container(keyedBy: Keys.self)
        try container.encode(denials, forKey: .denials)
    }

    var textLines: [String] {
        var line = "stockade: \(exit.profile): \(exit.reason.rawValue), status \(exit.status)"
        if let name = exit.signalName { line += " (\(name))" }
        let ms = Int((exit.wallSeconds * 1000).rounded())
        let frac = String(ms % 1000)
        line += ", \(ms / 1000).\(String(repeating: "0", count: 3 - frac.count))\(frac) s"
        var lines = [line]
        if !denials.landlock.observed {
            lines.append("stockade: Landlock denials not observed: \(denials.landlock.unobserved ?? "?")")
        } else if denials.landlock.total > 0 {
            let blockers = denials.landlock.byBlocker.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", ")
            lines.append("stockade: Landlock denials: \(denials.landlock.total) (\(blockers)); first: \(denials.landlock.example ?? "?")")
        } else {
            lines.append("stockade: Landlock denials: none")
        }
        guard denials.observed else {
            lines.append("stockade: denied calls not observed: \(denials.unobserved ?? "observation was off")")
            return lines
        }
        guard denials.total > 0 else {
            lines.append("stockade: denied calls: none")
            return lines
        }
        lines.append("stockade: denied calls: \(denials.total) (\(denials.seccomp.count) kinds)")
        func pad(_ s: String, _ width: Int) -> String { s + String(repeating: " ", count: max(0, width - s.count)) }
        let nameWidth = denials.seccomp.map(\.name.count).max() ?? 0
        let answerWidth = denials.seccomp.map(\.answer.count).max() ?? 0
        for call in denials.seccomp {
            let count = String(call.count)
            var text = "  \(pad(call.name, nameWidth)) \(String(repeating: " ", count: max(0, 7 - count.count)))\(count)  "
                + "\(pad(call.answer, answerWidth))  \(call.example)"
            if call.origin == "prelude" { text += "  (always-on hardening)" }
            if let exe = call.executable { text += "  by \(exe)" }
            lines.append(text)
        }
        if denials.throttled > 0 {
            lines.append("stockade: the jail was over its denial rate \(denials.throttled) times; its denied calls were slowed")
        }
        return lines
    }
}

/// Forwards the signals a person or a supervisor sends to stockade into the
/// jail (its PID 1 passes them on to the worker), from a signal handler on
/// the jail's pidfd.
struct SignalForwarder: ~Copyable {
    static let forwarded: [Int32] = [SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2]

    init(jail: Jail) {
        do {
            try jail.forwardSignals(Self.forwarded)
        } catch {
            printError("stockade: warning: signals will not reach the jail (sigaction: \(error))")
        }
    }

    func stop() {
        Jail.stopForwardingSignals()
    }
}

/// An error that ends stockade with a message and a given status.
struct StockadeFailure: Error, CustomStringConvertible {
    var message: String
    var status: Int32
    var description: String { message }
}

/// One line on stderr.
func printError(_ line: String) {
    let bytes = Array((line + "\n").utf8)
    bytes.withUnsafeBytes { _ = write(2, $0.baseAddress, $0.count) }
}

/// What `run` and `learn` add to a profile's jail from the command line:
/// binds and variables.
struct JailInputOptions: ParsableArguments {
    @Option(name: .customLong("ro-bind"), help: ArgumentHelp("Bind a host path read-only: SRC or SRC:DEST.", valueName: "src[:dest]"))
    var readOnlyBinds: [String] = []

    @Option(name: .customLong("bind"), help: ArgumentHelp("Bind a host path writable: SRC or SRC:DEST.", valueName: "src[:dest]"))
    var writableBinds: [String] = []

    @Option(name: .customLong("setenv"), help: ArgumentHelp("Set a variable in the jail.", valueName: "name=value"))
    var environment: [String] = []

    /// Adds the binds, in command-line order (a later bind covers an earlier
    /// one), and the variables to `request`.
    func apply(to request: inout LaunchRequest) throws {
        try Self.apply(readOnlyBinds: readOnlyBinds, writableBinds: writableBinds, environment: environment, to: &request)
    }

    static func apply(readOnlyBinds: [String], writableBinds: [String], environment: [String],
                      to request: inout LaunchRequest) throws {
        for (spec, writable) in RunCommand.bindsInOrder(readOnly: readOnlyBinds, writable: writableBinds) {
            request.extraMounts.append(try RunCommand.bind(spec, writable: writable))
        }
        request.extraEnvironment += try RunCommand.environmentPairs(environment)
    }
}
