// Helpers shared by the channel tests: paths, and starting a child process
// with the channel's descriptors at fixed numbers (not jailed: the jail
// comes with the launcher; these tests check the protocol).
import Foundation
import Synchronization
import SystemPackage
@testable import StockadeChannel
import StockadeSystem
#if canImport(Glibc)
import Glibc
#endif

enum Paths {
    /// The package root, from this file's path (Tests/ChannelTests/Support.swift).
    static let packageRoot: String = {
        var url = URL(fileURLWithPath: #filePath)
        for _ in 0..<3 { url.deleteLastPathComponent() }
        return url.path
    }()
    static let vectors = packageRoot + "/Tests/TestData/noise-cacophony.json"
    static let venvPython = packageRoot + "/.venv/bin/python3"
    static let pythonDir = packageRoot + "/python"
    /// The example worker, from the same build as the tests.
    static let swiftWorker: String = {
        var url = Bundle.main.bundleURL
        while url.pathComponents.count > 1 && url.lastPathComponent != "debug" && url.lastPathComponent != "release" {
            url.deleteLastPathComponent()
        }
        let candidate = url.appendingPathComponent("stockade-swift-worker").path
        return FileManager.default.isExecutableFile(atPath: candidate) ? candidate : packageRoot + "/.build/debug/stockade-swift-worker"
    }()
    static var venvIsBuilt: Bool { FileManager.default.isExecutableFile(atPath: venvPython) }
}

/// A child process started with posix_spawn.
struct Child {
    let pid: pid_t

    /// Starts `argv` with `environment`, mapping each (fd, number) so that
    /// the child sees `fd` at `number`. Other descriptors are close-on-exec
    /// in this process and do not leak into the child.
    static func spawn(_ argv: [String], environment: [String], mapping: [(FileDescriptor, CInt)]) throws -> Child {
        // Move sources out of the way of the target numbers first.
        var high: [CInt] = []
        defer { for fd in high { close(fd) } }
        for (fd, _) in mapping {
            let dup = fcntl(fd.rawValue, F_DUPFD_CLOEXEC, 100)
            guard dup >= 0 else { throw Errno(rawValue: errno) }
            high.append(dup)
        }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        for (i, (_, target)) in mapping.enumerated() {
            posix_spawn_file_actions_adddup2(&actions, high[i], target)
        }
        let cArgv = argv.map { strdup($0) } + [nil]
        let cEnv = environment.map { strdup($0) } + [nil]
        defer { for p in cArgv + cEnv { free(p) } }
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, argv[0], &actions, nil, cArgv, cEnv)
        guard rc == 0 else { throw Errno(rawValue: rc) }
        return Child(pid: pid)
    }

    /// Waits for the child and returns its exit status (128+signal if killed).
    func wait() -> Int32 {
        var status: Int32 = 0
        while waitpid(pid, &status, 0) == -1 && errno == EINTR {}
        if status & 0x7f == 0 { return (status >> 8) & 0xff }
        return 128 + (status & 0x7f)
    }

    func kill() { _ = Glibc.kill(pid, SIGKILL) }

    /// The targets of the child's open descriptors (readlink of /proc/<pid>/fd/*).
    func openDescriptors() -> [String: String] {
        let dir = "/proc/\(pid)/fd"
        var out: [String: String] = [:]
        for name in (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? [] {
            out[name] = (try? FileManager.default.destinationOfSymbolicLink(atPath: dir + "/" + name)) ?? "?"
        }
        return out
    }
}

/// Starts a Python worker script from python/tests with a fresh bootstrap.
func startPythonWorker(_ script: String, arguments: [String] = [], tenant: String = "acme", worker: String = "w-1",
                       suites: [CipherSuite] = ChannelBootstrap.defaultSuites,
                       limits: ChannelLimits = ChannelLimits()) throws -> (Child, ChannelBootstrap) {
    let bootstrap = try ChannelBootstrap(tenant: tenant, worker: worker, suites: suites, limits: limits)
    let child = try Child.spawn(
        [Paths.venvPython, Paths.pythonDir + "/tests/" + script] + arguments,
        environment: [ChannelBootstrap.environmentEntry(), "PATH=/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE=1"],
        mapping: [(bootstrap.workerSocket, 3), (bootstrap.paramsMemfd, 4)])
    bootstrap.closeWorkerEnds()
    return (child, bootstrap)
}

/// A Swift worker on a thread of this process, serving `handler` over the
/// worker's ends of `bootstrap` (dups, so the bootstrap can close its own).
final class ThreadWorker: @unchecked Sendable {
    private let done = DispatchSemaphore(value: 0)
    private let error = Mutex<ChannelError?>(nil)

    init(_ bootstrap: ChannelBootstrap, handler: @escaping @Sendable ([UInt8]) throws -> [UInt8]) throws {
        let socket = try dupCloseOnExec(bootstrap.workerSocket)
        let params = try dupCloseOnExec(bootstrap.paramsMemfd)
        let thread = Thread { [self] in
            do {
                let parameters = try WorkerChannel.readParameters(from: params)
                let channel = try SecureChannel.respond(socket: socket, parameters: parameters)
                try WorkerChannel.serve(channel, handler: handler)
            } catch {
                let failure = error as? ChannelError
                self.error.withLock { $0 = failure }
            }
            done.signal()
        }
        thread.start()
    }

    /// Waits for the worker thread to end and returns its error, if any.
    func join() -> ChannelError? {
        done.wait()
        return error.withLock { $0 }
    }
}

/// A close-on-exec duplicate (tests run in parallel and spawn children: a
/// plain dup would leak into them).
func dupCloseOnExec(_ fd: FileDescriptor) throws -> FileDescriptor {
    let dup = fcntl(fd.rawValue, F_DUPFD_CLOEXEC, 0)
    guard dup >= 0 else { throw Errno(rawValue: errno) }
    return FileDescriptor(rawValue: dup)
}
