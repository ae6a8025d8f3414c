import Foundation
import Testing
@testable import StockadeCgroups
@testable import StockadeJail
#if canImport(Glibc)
import Glibc
#endif

/// What the running host offers the cgroup tests.
enum CgroupTestHost {
    static let host = CgroupHost.detect()

    /// Root, and a cgroup backend that can limit memory, cpu and pids.
    static var canManageCgroups: Bool {
        guard geteuid() == 0 else { return false }
        let core: Set<String> = ["memory", "pids", "cpu"]
        if let u = host.unified, core.isSubset(of: u.rootControllers) { return true }
        return host.hierarchy(for: "memory") != nil && host.hierarchy(for: "pids") != nil && host.hierarchy(for: "cpu") != nil
    }

    /// Root, in the root cgroup of a cgroup v2 tree that offers memory, cpu and pids.
    static var v2InRootCgroup: Bool {
        guard geteuid() == 0, let u = host.unified, u.ownPath == "/" else { return false }
        return ["memory", "pids", "cpu"].allSatisfy(u.rootControllers.contains)
    }

    /// The VM suite sets STOCKADE_EXPECT_CGROUP=v2 so that a detection
    /// mistake (falling back to v1) fails instead of passing quietly.
    static var expectedVersion: Int? {
        switch ProcessInfo.processInfo.environment["STOCKADE_EXPECT_CGROUP"] {
        case "v2": return 2
        case "v1": return 1
        default: return nil
        }
    }

    static let repositoryRoot: String = {
        var url = URL(fileURLWithPath: #filePath)
        for _ in 0..<3 { url.deleteLastPathComponent() }
        return url.path
    }()

    /// The static workload program (Tests/Workloads/workload.c). Built into
    /// .build by `make workload` (and by the VM script); built here when
    /// missing and the tree is writable.
    static let workload: String? = {
        if let env = ProcessInfo.processInfo.environment["STOCKADE_WORKLOAD"] { return env }
        let source = repositoryRoot + "/Tests/Workloads/workload.c"
        let binary = repositoryRoot + "/.build/stockade-workload"
        let fm = FileManager.default
        if let b = try? fm.attributesOfItem(atPath: binary)[.modificationDate] as? Date,
           let s = try? fm.attributesOfItem(atPath: source)[.modificationDate] as? Date, b >= s {
            return binary
        }
        let status = run(["/usr/bin/cc", "-static", "-O2", "-Wall", "-o", binary, source])
        return status == 0 ? binary : nil
    }()

    static func run(_ argv: [String]) -> Int32 {
        guard let p = try? Workload.spawn(argv, stdinPipe: false) else { return -1 }
        return p.wait(seconds: 120).exitCode ?? -1
    }
}

/// A child process for the tests. Modes of the workload program wait for
/// one byte on stdin before they start, so the test can place the process
/// in its cgroup first (the launcher does the same with its sync pipe).
final class Workload: @unchecked Sendable {
    let pid: Int32
    private var stdinFD: Int32
    private let output: OutputLines
    private var reaped: Status?

    struct Status {
        var raw: Int32
        var exitCode: Int32? { (raw & 0x7f) == 0 ? (raw >> 8) & 0xff : nil }
        var signal: Int32? { (raw & 0x7f) != 0 && (raw & 0x7f) != 0x7f ? raw & 0x7f : nil }
    }

    private init(pid: Int32, stdinFD: Int32, stdoutFD: Int32) {
        self.pid = pid
        self.stdinFD = stdinFD
        self.output = OutputLines(stdoutFD)
    }

    struct SpawnError: Error, CustomStringConvertible {
        var description: String
    }

    /// Starts the workload program in `mode` (not yet released).
    static func start(_ args: [String]) throws -> Workload {
        guard let program = CgroupTestHost.workload else {
            throw SpawnError(description: "the workload program is missing and could not be built (cc -static Tests/Workloads/workload.c)")
        }
        return try spawn([program] + args, stdinPipe: true)
    }

    static func spawn(_ argv: [String], stdinPipe: Bool) throws -> Workload {
        var inPipe: [Int32] = [-1, -1]
        var outPipe: [Int32] = [-1, -1]
        guard pipe(&inPipe) == 0, pipe(&outPipe) == 0 else {
            throw SpawnError(description: "pipe: errno \(errno)")
        }
        // Close-on-exec, so other children (tests run in parallel) do not
        // hold our pipes open.
        for fd in inPipe + outPipe { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        if stdinPipe {
            posix_spawn_file_actions_adddup2(&actions, inPipe[0], 0)
        } else {
            posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        }
        posix_spawn_file_actions_adddup2(&actions, outPipe[1], 1)
        let cArgs = argv.map { strdup($0) } + [nil]
        defer { for a in cArgs { free(a) } }
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, argv[0], &actions, nil, cArgs, environ)
        close(inPipe[0])
        close(outPipe[1])
        guard rc == 0 else {
            close(inPipe[1]); close(outPipe[0])
            throw SpawnError(description: "posix_spawn \(argv[0]): errno \(rc)")
        }
        if !stdinPipe { close(inPipe[1]); inPipe[1] = -1 }
        return Workload(pid: pid, stdinFD: inPipe[1], stdoutFD: outPipe[0])
    }

    /// Lets the workload start its work.
    func go() {
        var byte: UInt8 = 1
        _ = write(stdinFD, &byte, 1)
        close(stdinFD)
        stdinFD = -1
    }

    func readLine(seconds: Double) -> String? { output.readLine(seconds: seconds) }
    func readAll(seconds: Double) -> [String] { output.readAll(seconds: seconds) }

    var isRunning: Bool { reaped == nil && Glibc.kill(pid, 0) == 0 && !isZombie }

    private var isZombie: Bool {
        guard let stat = CgroupFS.read("/proc/\(pid)/stat"), let close = stat.lastIndex(of: ")") else { return true }
        return stat[stat.index(close, offsetBy: 2)] == "Z"
    }

    /// Waits for the process; after `seconds` it is killed (and the status says so).
    @discardableResult
    func wait(seconds: Double) -> Status {
        if let reaped { return reaped }
        var status: Int32 = 0
        let done = CgroupFS.wait(seconds: seconds) { waitpid(pid, &status, WNOHANG) == pid }
        if !done {
            Glibc.kill(pid, SIGKILL)
            waitpid(pid, &status, 0)
        }
        reaped = Status(raw: status)
        return reaped!
    }

    deinit {
        if reaped == nil {
            Glibc.kill(pid, SIGKILL)
            var status: Int32 = 0
            waitpid(pid, &status, 0)
        }
        if stdinFD >= 0 { close(stdinFD) }
    }
}

/// A manager on a base of its own, so tests never meet each other's or a
/// real launcher's cgroups.
func makeManager(tenants: [TenantBudget] = [], sweep: Bool = false, baseWeight: UInt64? = nil,
                 identity: LauncherIdentity = .current(), name: String? = nil) throws -> CgroupManager {
    let base = name ?? "stockade-test-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
    let manager = try CgroupManager(configuration: .init(base: .automatic(name: base), tenants: tenants, sweepStale: sweep,
                                                         baseWeight: baseWeight),
                                    identity: identity)
    if let expected = CgroupTestHost.expectedVersion {
        #expect(manager.version == expected, "expected the cgroup v\(expected) backend:\n\(manager.diagnosis)")
    }
    return manager
}

/// Closes the manager and checks that none of its cgroups is left.
func closeAndExpectNothingLeft(_ manager: CgroupManager, sourceLocation: SourceLocation = #_sourceLocation) {
    #expect(throws: Never.self, sourceLocation: sourceLocation) { try manager.close() }
    for base in manager.basePaths {
        #expect(!FileManager.default.fileExists(atPath: base), "\(base) was left behind", sourceLocation: sourceLocation)
    }
}

/// CPU time used by a jail so far, in microseconds.
func cpuMicros(_ jail: JailGroup) throws -> UInt64 {
    let u = try jail.usage()
    return (u.cpuUserMicros ?? 0) + (u.cpuSystemMicros ?? 0)
}

/// A measurement line: the VM script and `make test` logs keep these.
func report(_ manager: CgroupManager, _ line: String) {
    print("measure[cgroup v\(manager.version)]: \(line)")
}

/// The workload program run in a real jail (the shipped minimal profile,
/// the program bound in at /workload) placed in `group` by the launcher:
/// `CLONE_INTO_CGROUP` on v2, `attach(pid:)` before release on v1.
final class JailedWorkload: @unchecked Sendable {
    let jail: Jail
    let group: JailGroup
    private let output: OutputLines
    private var exit: JailExit?

    static let profile: Profile = {
        let path = CgroupTestHost.repositoryRoot + "/profiles/minimal.toml"
        return try! Profile.load(path: path)
    }()

    init(_ group: JailGroup, _ args: [String]) throws {
        guard let program = CgroupTestHost.workload else {
            throw Workload.SpawnError(description: "the workload program is missing and could not be built (cc -static Tests/Workloads/workload.c)")
        }
        var out: [Int32] = [-1, -1]
        var input: [Int32] = [-1, -1]
        guard pipe(&out) == 0, pipe(&input) == 0 else { throw Workload.SpawnError(description: "pipe: errno \(errno)") }
        for fd in out + input { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        // stdin at EOF: the workload's go-ahead read returns at once (the
        // launcher already placed it in its cgroup).
        close(input[1])
        var request = LaunchRequest(profile: Self.profile, command: ["/workload"] + args)
        request.extraMounts = [MountSpec(kind: .bind, source: program, target: "/workload")]
        request.passedFDs = [(input[0], 0), (out[1], 1)]
        request.cgroup = group
        try JailSecurity.prepare(&request)
        defer { close(input[0]); close(out[1]) }
        do {
            jail = try Launcher.launch(request)
        } catch {
            close(out[0])
            throw error
        }
        self.group = group
        self.output = OutputLines(out[0])
    }

    func readLine(seconds: Double) -> String? { output.readLine(seconds: seconds) }
    func readAll(seconds: Double) -> [String] { output.readAll(seconds: seconds) }

    /// Waits for the jail to end (the launcher then reads the usage and
    /// removes the cgroup).
    @discardableResult
    func wait(seconds: Double = 120) throws -> JailExit {
        if let exit { return exit }
        let e = try jail.wait(timeLimit: .milliseconds(Int64(seconds * 1000)))
        exit = e
        return e
    }

    var isRunning: Bool { exit == nil && !group.processes.isEmpty }

    deinit {
        if exit == nil {
            jail.kill()
            _ = try? jail.wait()
        }
    }
}

/// Lines read from a child's stdout pipe (the read end, closed with this).
final class OutputLines: @unchecked Sendable {
    private let fd: Int32
    private var buffered: [UInt8] = []

    init(_ fd: Int32) { self.fd = fd }
    deinit { close(fd) }

    /// The next line, or nil after `seconds` or at EOF.
    func readLine(seconds: Double) -> String? {
        let deadline = CgroupFS.monotonicSeconds() + seconds
        while true {
            if let nl = buffered.firstIndex(of: UInt8(ascii: "\n")) {
                let line = String(decoding: buffered[..<nl], as: UTF8.self)
                buffered.removeSubrange(...nl)
                return line
            }
            let left = deadline - CgroupFS.monotonicSeconds()
            if left <= 0 { return nil }
            var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            if poll(&pfd, 1, Int32(min(left, 1) * 1000)) <= 0 { continue }
            var chunk = [UInt8](repeating: 0, count: 4096)
            let n = read(fd, &chunk, chunk.count)
            if n <= 0 { return nil }
            buffered.append(contentsOf: chunk[0..<n])
        }
    }

    /// Every remaining line until EOF (all writers gone) or `seconds`.
    func readAll(seconds: Double) -> [String] {
        var lines: [String] = []
        while let l = readLine(seconds: seconds) { lines.append(l) }
        return lines
    }
}
