public import StockadeCgroups
import SystemPackage
import StockadeSystem
import StockadeConfig
import CStockadeSpawn
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
#if canImport(Glibc)
import Glibc
#endif

/// What the escape-probe battery (`probe/stockade-probe.c`) found in one
/// jail: one entry per probe, decoded from the binary's `--json` output.
public struct ProbeReport: Sendable, Codable, Equatable {
    public struct Probe: Sendable, Codable, Equatable {
        /// The number in probe/stockade-probe.c's `probes[]` table (36 and up: the "still works" checks).
        public var number: Int
        public var name: String
        /// What the kernel answered, in the probe's words.
        public var result: String
        public var pass: Bool
    }

    public var probes: [Probe]
    public var passed: Int
    public var failed: Int

    public var failures: [Probe] { probes.filter { !$0.pass } }

    public func probe(_ number: Int) -> Probe? { probes.first { $0.number == number } }

    /// The report as the probe binary prints it without `--json`.
    public var text: String {
        var lines = probes.map { p in
            let num = String(p.number)
            let name = p.name.padded(to: 18)
            return "\(String(repeating: " ", count: max(0, 2 - num.count)))\(num) \(name) \(p.result)  \(p.pass ? "PASS" : "FAIL")"
        }
        lines.append("\(passed) passed, \(failed) failed")
        return lines.joined(separator: "\n")
    }
}

/// Why the battery could not give a report.
public struct ProbeBatteryError: Error, CustomStringConvertible, Sendable {
    public var message: String
    public var description: String { message }
    public init(message: String) { self.message = message }
}

/// Runs the static probe binary inside a jail made from a profile.
///
/// The binary is bound read-only at `/stockade-probe`. Its standard output
/// comes back through a pipe passed as the jail's fd 1. The caller is made
/// deliberately hostile: a directory fd is left open (not close-on-exec) and
/// an abstract unix socket is bound in the launcher's network namespace; the
/// probe must see neither (probes 28 and 26). It also tells the probe what
/// it must not find from inside: its session keyring's serial (45), the host
/// ids in use (47: every /etc/passwd, /etc/group, /etc/subuid and
/// /etc/subgid entry, and ranges the caller adds, such as another live
/// jail's), where the profile's file and directory show in the jail (48),
/// and it holds a few inotify instances while the jail runs (49).
public enum ProbeBattery {
    /// Where the binary appears inside the jail.
    public static let jailPath = "/stockade-probe"

    public struct Options: Sendable {
        public var profile: Profile
        /// The probe binary on the host (static; see `make probe`).
        public var binary: String
        /// Probe numbers to run; empty: all.
        public var only: [Int] = []
        /// A Python interpreter inside the jail for the numpy check (probe 42).
        public var python: String?
        /// Extra /dev names the profile grants (the probe flags any other).
        public var expectDevices: [String] = []
        /// More mounts (e.g. the venv for probe 42).
        public var extraMounts: [MountSpec] = []
        /// Plant the leaked directory fd and the host abstract socket.
        public var hostileCaller = true
        /// Kill the jail after this long; default: the profile's limit, else 10 minutes.
        public var timeLimit: Duration?
        /// The jail's cgroup (its budget). Without one, probe 31 (fork bomb,
        /// memory hog) fails: that is the finding.
        public var cgroup: (any JailCgroup)?
        /// Host id ranges the jail must not be mapped onto, besides the host's
        /// accounts and subordinate ranges (e.g. another live jail's).
        public var reservedIDs: [ClosedRange<UInt32>] = []
        /// Give the jail a terminal as its stdin (a pty the caller opened),
        /// as a person running the launcher from a shell does (probe 46).
        public var terminalStdin = false

        public init(profile: Profile, binary: String) {
            self.profile = profile
            self.binary = binary
        }
    }

    /// The probes that the launcher's own steps answer (namespaces, root,
    /// capabilities, fds, /proc masks, /dev), as opposed to the seccomp
    /// filter and the cgroup budget; plus the "still works" checks.
    public static let launcherProbes: Set<Int> = [2, 3, 7, 8, 9, 10, 13, 16, 19, 20, 21, 22, 24, 26, 27, 28, 29, 30, 32, 33,
                                                  34, 35, 36, 37, 38, 39, 40, 41]

    /// Finds the probe binary: `explicit`, then `$STOCKADE_PROBE`, then
    /// `stockade-probe` beside the running executable, then
    /// `.build/stockade-probe` under the current directory.
    public static func locateBinary(explicit: String?) -> String? {
        if let explicit { return explicit }
        var candidates: [String] = []
        if let env = ProcessInfo.processInfo.environment["STOCKADE_PROBE"], !env.isEmpty { candidates.append(env) }
        let exe = URL(fileURLWithPath: CommandLine.arguments.first ?? "").resolvingSymlinksInPath()
        candidates.append(exe.deletingLastPathComponent().appendingPathComponent("stockade-probe").path)
        candidates.append(FileManager.default.currentDirectoryPath + "/.build/stockade-probe")
        return candidates.first { FileManager.default.isExecutableFile(atPath: $0) }
    }

    /// What the hostile caller tells the probe about itself.
    struct CallerFacts {
        var canary: String?
        var keyring: Int?
        var reservedIDs = ""
        var profilePaths: [String] = []
        var inotifyHeld: Int?
    }

    /// The probe's command line inside the jail.
    static func arguments(_ options: Options, caller: CallerFacts) -> [String] {
        var argv = [jailPath, "--json"]
        if !options.only.isEmpty { argv += ["--only", options.only.map(String.init).joined(separator: ",")] }
        if let python = options.python { argv += ["--python", python] }
        if !options.expectDevices.isEmpty { argv += ["--expect-devices", options.expectDevices.joined(separator: ",")] }
        if let canary = caller.canary { argv += ["--abstract", canary] }
        if let keyring = caller.keyring { argv += ["--caller-keyring", String(keyring)] }
        if !caller.reservedIDs.isEmpty { argv += ["--reserved-ids", caller.reservedIDs] }
        if !caller.profilePaths.isEmpty { argv += ["--profile-paths", caller.profilePaths.joined(separator: ",")] }
        if let held = caller.inotifyHeld { argv += ["--caller-inotify", String(held)] }
        return argv
    }

    /// The caller's session keyring serial (nil when keyctl fails).
    static func sessionKeyring() -> Int? {
        let r = stk_session_keyring()
        return r > 0 ? r : nil
    }

    /// Host ids in use: every id in /etc/passwd and /etc/group, every range
    /// in /etc/subuid and /etc/subgid, plus `extra`, as "0,1000,100000-165535"
    /// (merged, sorted). A rootless caller's own uid and gid are left out:
    /// a rootless jail is that user by design.
    static func hostIDsInUse(extra: [ClosedRange<UInt32>]) -> String {
        var ranges = extra + [0...0]
        for file in ["/etc/passwd", "/etc/group"] {
            for line in ((try? String(contentsOfFile: file, encoding: .utf8)) ?? "").split(separator: "\n") {
                let fields = line.split(separator: ":", omittingEmptySubsequences: false)
                if fields.count > 2, let id = UInt32(fields[2]) { ranges.append(id...id) }
            }
        }
        for file in ["/etc/subuid", "/etc/subgid"] {
            for line in ((try? String(contentsOfFile: file, encoding: .utf8)) ?? "").split(separator: "\n") {
                let fields = line.split(separator: ":")
                if fields.count == 3, let start = UInt32(fields[1]), let count = UInt32(fields[2]), count > 0,
                   start <= UInt32.max - (count - 1) {
                    ranges.append(start...(start + (count - 1)))
                }
            }
        }
        if getuid() != 0 {
            ranges.removeAll { $0 == getuid()...getuid() || $0 == getgid()...getgid() }
        }
        var merged: [ClosedRange<UInt32>] = []
        for r in ranges.sorted(by: { $0.lowerBound < $1.lowerBound }) {
            if let last = merged.last, UInt64(r.lowerBound) <= UInt64(last.upperBound) + 1 {
                merged[merged.count - 1] = last.lowerBound...max(last.upperBound, r.upperBound)
            } else {
                merged.append(r)
            }
        }
        var text = ""
        for r in merged {
            let item = r.lowerBound == r.upperBound ? "\(r.lowerBound)" : "\(r.lowerBound)-\(r.upperBound)"
            if text.utf8.count + item.utf8.count + 1 > 4000 { break }  // the probe's buffer
            text += text.isEmpty ? item : "," + item
        }
        return text
    }

    /// Where the profile's file and its directory show inside the jail:
    /// for every bind whose host source holds them, the matching path below
    /// its target.
    static func profilePaths(profile: Profile, mounts: [MountSpec]) -> [String] {
        let file = URL(fileURLWithPath: profile.file).standardizedFileURL.path
        let dir = URL(fileURLWithPath: file).deletingLastPathComponent().path
        var result: [String] = []
        for m in mounts where m.kind == .bind {
            guard let source = m.source.map({ URL(fileURLWithPath: $0).standardizedFileURL.path }) else { continue }
            for host in [dir, file] {
                let inside: String?
                if host == source {
                    inside = m.target
                } else if host.hasPrefix(source == "/" ? "/" : source + "/") {
                    let rest = host.dropFirst(source == "/" ? 1 : source.count + 1)
                    inside = (m.target == "/" ? "" : m.target) + "/" + rest
                } else {
                    inside = nil
                }
                if let inside, !result.contains(inside) { result.append(inside) }
            }
        }
        return result
    }

    /// Launches the battery and waits for it. Throws when the jail cannot be
    /// started or the probe gives no readable report; FAILs are in the report.
    public static func run(_ options: Options) throws -> (report: ProbeReport, exit: JailExit) {
        guard FileManager.default.isExecutableFile(atPath: options.binary) else {
            throw ProbeBatteryError(message: "probe binary \(options.binary) is missing or not executable (build it with `make probe`)")
        }
        let binary = URL(fileURLWithPath: options.binary).standardizedFileURL.path

        // The hostile caller.
        var caller = CallerFacts()
        var canaryFD: Int32 = -1
        var plantedFD: Int32 = -1
        var inotifyFDs: [Int32] = []
        var terminal: (leader: Int32, follower: Int32) = (-1, -1)
        defer {
            if canaryFD >= 0 { close(canaryFD) }
            if plantedFD >= 0 { close(plantedFD) }
            for fd in inotifyFDs { close(fd) }
            if terminal.leader >= 0 { close(terminal.leader) }
            if terminal.follower >= 0 { close(terminal.follower) }
        }
        let mounts = options.profile.mounts + options.extraMounts
        if options.hostileCaller {
            let name = "stockade-probe-canary-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
            canaryFD = bindAbstract(name)
            if canaryFD >= 0 { caller.canary = name }
            plantedFD = open("/", O_RDONLY | O_DIRECTORY) // deliberately not O_CLOEXEC
            caller.keyring = sessionKeyring()
            caller.reservedIDs = hostIDsInUse(extra: options.reservedIDs)
            caller.profilePaths = profilePaths(profile: options.profile, mounts: mounts)
            // A few instances of the caller's own: a jail charged to the
            // caller's user runs out that much sooner (probe 49).
            for _ in 0..<8 {
                let fd = inotify_init1(Int32(IN_CLOEXEC))
                if fd >= 0 { inotifyFDs.append(fd) }
            }
            caller.inotifyHeld = inotifyFDs.count
        }
        if options.terminalStdin {
            terminal = try openTerminal()
        }

        var request = LaunchRequest(profile: options.profile, command: arguments(options, caller: caller))
        request.extraMounts.append(MountSpec(kind: .bind, source: binary, target: jailPath))
        request.extraMounts += options.extraMounts
        request.cgroup = options.cgroup
        if terminal.follower >= 0 { request.passedFDs.append((from: terminal.follower, to: 0)) }
        try JailSecurity.prepare(&request)

        let output: PipeEnds
        do {
            output = try PipeEnds.make()
        } catch {
            throw ProbeBatteryError(message: "cannot make the output pipe: \(error)")
        }
        request.passedFDs.append((from: output.write.rawValue, to: 1))
        let jail: Jail
        do {
            jail = try Launcher.launch(request)
        } catch {
            try? output.write.close()
            try? output.read.close()
            throw error
        }
        try? output.write.close()
        let bytes = (try? output.read.readToEnd()) ?? []
        try? output.read.close()
        let exit = try jail.wait(timeLimit: options.timeLimit ?? options.profile.timeLimit ?? .seconds(600))

        do {
            let report = try JSONDecoder().decode(ProbeReport.self, from: Data(bytes))
            return (report, exit)
        } catch {
            let text = String(decoding: bytes.suffix(400), as: UTF8.self)
            throw ProbeBatteryError(message: "the probe gave no readable report (jail \(exit.reason.rawValue), status \(exit.status))"
                + (text.isEmpty ? "" : ": \(text)"))
        }
    }

    /// A pty pair of the caller's (leader, follower), as a terminal stdin.
    public static func openTerminal() throws -> (leader: Int32, follower: Int32) {
        let leader = open("/dev/ptmx", O_RDWR | O_NOCTTY | O_CLOEXEC)
        guard leader >= 0 else {
            throw ProbeBatteryError(message: "cannot open /dev/ptmx for the terminal stdin: \(Errno(rawValue: errno))")
        }
        let follower = stk_pty_follower(leader, O_RDWR | O_NOCTTY | O_CLOEXEC)
        guard follower >= 0 else {
            let e = errno
            close(leader)
            throw ProbeBatteryError(message: "cannot open the pty's follower: \(Errno(rawValue: e))")
        }
        return (leader, follower)
    }

    /// Binds a listening abstract unix socket in the caller's network
    /// namespace; returns the fd or -1.
    static func bindAbstract(_ name: String) -> Int32 {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return -1 }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(name.utf8.prefix(100))
        withUnsafeMutableBytes(of: &addr.sun_path) { buf in
            buf[0] = 0
            for (i, b) in bytes.enumerated() { buf[i + 1] = b }
        }
        let length = socklen_t(MemoryLayout<sa_family_t>.size + 1 + bytes.count)
        let bound = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) }
        }
        guard bound == 0, listen(fd, 4) == 0 else {
            close(fd)
            return -1
        }
        return fd
    }
}
