public import StockadeCgroups
import SystemPackage
import StockadeSystem
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
            let name = p.name.padding(toLength: max(18, p.name.count), withPad: " ", startingAt: 0)
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
/// probe must see neither (probes 28 and 26).
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

        public init(profile: Profile, binary: String) {
            self.profile = profile
            self.binary = binary
        }
    }

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

    /// The probe's command line inside the jail.
    static func arguments(_ options: Options, canary: String?) -> [String] {
        var argv = [jailPath, "--json"]
        if !options.only.isEmpty { argv += ["--only", options.only.map(String.init).joined(separator: ",")] }
        if let python = options.python { argv += ["--python", python] }
        if !options.expectDevices.isEmpty { argv += ["--expect-devices", options.expectDevices.joined(separator: ",")] }
        if let canary { argv += ["--abstract", canary] }
        return argv
    }

    /// Launches the battery and waits for it. Throws when the jail cannot be
    /// started or the probe gives no readable report; FAILs are in the report.
    public static func run(_ options: Options) throws -> (report: ProbeReport, exit: JailExit) {
        guard FileManager.default.isExecutableFile(atPath: options.binary) else {
            throw ProbeBatteryError(message: "probe binary \(options.binary) is missing or not executable (build it with `make probe`)")
        }
        let binary = URL(fileURLWithPath: options.binary).standardizedFileURL.path

        // The hostile caller.
        var canaryName: String?
        var canaryFD: Int32 = -1
        var plantedFD: Int32 = -1
        if options.hostileCaller {
            let name = "stockade-probe-canary-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
            canaryFD = bindAbstract(name)
            if canaryFD >= 0 { canaryName = name }
            plantedFD = open("/", O_RDONLY | O_DIRECTORY) // deliberately not O_CLOEXEC
        }
        defer {
            if canaryFD >= 0 { close(canaryFD) }
            if plantedFD >= 0 { close(plantedFD) }
        }

        var request = LaunchRequest(profile: options.profile, command: arguments(options, canary: canaryName))
        request.extraMounts.append(MountSpec(kind: .bind, source: binary, target: jailPath))
        request.extraMounts += options.extraMounts
        request.cgroup = options.cgroup
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
