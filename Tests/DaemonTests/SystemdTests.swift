// stockaded under systemd, without systemd: a datagram socket this test
// owns plays the service manager's NOTIFY_SOCKET, and the journal's side is
// the text the log handler writes. Socket activation (LISTEN_FDS) is
// process-wide state and is tested on the installed daemon by
// scripts/package-test.sh (systemd-socket-activate).
import Foundation
import Logging
import Synchronization
import Testing
@testable import StockadeDaemon
#if canImport(Glibc)
import Glibc
#endif

/// The service manager's end: a bound SOCK_DGRAM unix socket.
final class NotifyListener: @unchecked Sendable {
    let fd: Int32
    /// The value for NOTIFY_SOCKET ("@name" for an abstract socket).
    let address: String
    private var path: String?

    init(abstract: Bool) throws {
        fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw DaemonError("socket: \(errno)") }
        let name = "stockade-notify-test-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        var bytes: [UInt8]
        if abstract {
            address = "@" + name
            bytes = [0] + Array(name.utf8)
        } else {
            address = NSTemporaryDirectory() + "/" + name + ".sock"
            path = address
            bytes = Array(address.utf8) + [0]
        }
        var sa = sockaddr_un()
        sa.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &sa.sun_path) { raw in for (i, b) in bytes.enumerated() { raw[i] = b } }
        let length = socklen_t(MemoryLayout<sockaddr_un>.offset(of: \.sun_path)! + bytes.count - (abstract ? 0 : 1))
        let ok = withUnsafePointer(to: &sa) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) == 0 } }
        guard ok else { close(fd); throw DaemonError("bind \(address): \(errno)") }
        var timeout = timeval(tv_sec: 0, tv_usec: 200_000)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    }

    deinit {
        close(fd)
        if let path { unlink(path) }
    }

    /// The next datagram, or nil when none comes within `seconds`.
    func receive(within seconds: Double = 5) -> String? {
        let deadline = Date().addingTimeInterval(seconds)
        var buffer = [UInt8](repeating: 0, count: 4096)
        while Date() < deadline {
            let n = recv(fd, &buffer, buffer.count, 0)
            if n > 0 { return String(decoding: buffer[0..<n], as: UTF8.self) }
        }
        return nil
    }

    /// ``receive(until:within:)`` on a thread of its own, so that waiting
    /// does not hold one of the few threads Swift concurrency runs on.
    func awaitLine(_ line: String, within seconds: Double) async -> [String]? {
        await withCheckedContinuation { c in
            Thread.detachNewThread { c.resume(returning: self.receive(until: line, within: seconds)) }
        }
    }

    /// Datagrams until one has `line`; nil when it does not come in time.
    func receive(until line: String, within seconds: Double) -> [String]? {
        let deadline = Date().addingTimeInterval(seconds)
        var seen: [String] = []
        while Date() < deadline {
            guard let d = receive(within: deadline.timeIntervalSinceNow) else { break }
            seen.append(d)
            if d.split(separator: "\n").contains(Substring(line)) { return seen }
        }
        return nil
    }
}

@Suite struct SystemdNotifyTests {
    @Test(arguments: [false, true])
    func eachStateIsOneDatagramOnTheNotifySocket(abstract: Bool) throws {
        let listener = try NotifyListener(abstract: abstract)
        let notifier = SystemdNotifier(environment: ["NOTIFY_SOCKET": listener.address])
        #expect(notifier.notify("READY=1\nSTATUS=echo: 1 warm"))
        #expect(notifier.notify("STOPPING=1"))
        #expect(listener.receive() == "READY=1\nSTATUS=echo: 1 warm")
        #expect(listener.receive() == "STOPPING=1")
    }

    @Test func withoutANotifySocketNothingIsSent() {
        #expect(!SystemdNotifier(environment: [:]).notify("READY=1"))
        #expect(!SystemdNotifier(environment: ["NOTIFY_SOCKET": ""]).notify("READY=1"))
        // Neither a relative path nor a path too long for sockaddr_un.
        #expect(!SystemdNotifier(environment: ["NOTIFY_SOCKET": "relative/notify"]).notify("READY=1"))
        #expect(!SystemdNotifier(environment: ["NOTIFY_SOCKET": "/" + String(repeating: "x", count: 200)]).notify("READY=1"))
    }

    @Test func theWatchdogIsForThisProcessOnly() {
        let me = String(getpid())
        #expect(SystemdNotifier(environment: ["NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "400000"]).watchdogInterval == .milliseconds(400))
        #expect(SystemdNotifier(environment: ["NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "400000", "WATCHDOG_PID": me]).watchdogInterval == .milliseconds(400))
        #expect(SystemdNotifier(environment: ["NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "400000", "WATCHDOG_PID": "1"]).watchdogInterval == nil)
        #expect(SystemdNotifier(environment: ["NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "0"]).watchdogInterval == nil)
        #expect(SystemdNotifier(environment: ["NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "soon"]).watchdogInterval == nil)
        #expect(SystemdNotifier(environment: ["WATCHDOG_USEC": "400000"]).watchdogInterval == nil)
    }
}

@Suite struct JournalLogTests {
    final class Captured: Sendable {
        let text = Mutex("")
    }

    @Test func everyLineCarriesItsSyslogPriority() {
        let captured = Captured()
        var logger = Logger(label: "stockaded") { label in
            JournalLogHandler(label: label, level: .trace) { s in captured.text.withLock { $0 += s } }
        }
        logger[metadataKey: "tenant"] = "echo"
        logger.trace("t")
        logger.debug("d")
        logger.info("i", metadata: ["worker": "echo-1"])
        logger.notice("n")
        logger.warning("w")
        logger.error("first line\nsecond line")
        logger.critical("c")
        let lines = captured.text.withLock { $0 }.split(separator: "\n", omittingEmptySubsequences: false)
        #expect(lines == [
            "<7>stockaded: t tenant=echo",
            "<7>stockaded: d tenant=echo",
            "<6>stockaded: i tenant=echo worker=echo-1",
            "<5>stockaded: n tenant=echo",
            "<4>stockaded: w tenant=echo",
            // journald reads one entry per line: the second line keeps the priority.
            "<3>stockaded: first line",
            "<3>second line tenant=echo",
            "<2>stockaded: c tenant=echo",
            "",
        ])
    }

    @Test func theLevelStillFilters() {
        let captured = Captured()
        let logger = Logger(label: "stockaded") { label in
            JournalLogHandler(label: label, level: .warning) { s in captured.text.withLock { $0 += s } }
        }
        logger.info("hidden")
        logger.warning("shown")
        #expect(captured.text.withLock { $0 } == "<4>stockaded: shown\n")
    }

    @Test func journalModeOnlyWhenJournalStreamIsStandardError() {
        var st = stat()
        #expect(fstat(2, &st) == 0)
        let mine = "\(st.st_dev):\(st.st_ino)"
        #expect(JournalLogHandler.standardErrorIsJournal(environment: ["JOURNAL_STREAM": mine]))
        #expect(!JournalLogHandler.standardErrorIsJournal(environment: [:]))
        #expect(!JournalLogHandler.standardErrorIsJournal(environment: ["JOURNAL_STREAM": "\(st.st_dev):\(st.st_ino &+ 1)"]))
        #expect(!JournalLogHandler.standardErrorIsJournal(environment: ["JOURNAL_STREAM": "garbage"]))
    }
}

@Suite(.serialized, .enabled(if: Fixture.hasVenv, "needs the venv (make venv) for the jailed Python worker"))
struct SystemdServiceTests {
    @Test func readyOnceTheWarmPoolsAreUpAndStoppingWhenTheDrainBegins() async throws {
        let listener = try NotifyListener(abstract: false)
        let (daemon, dir) = try Self.start(.init(name: "alpha", min: 2, max: 2, access: ["alice": "invoker"]))
        defer { daemon.stop(); Fixture.removeDirectory(dir) }
        let notifier = SystemdNotifier(environment: ["NOTIFY_SOCKET": listener.address, "WATCHDOG_USEC": "200000"])
        let service = SystemdService(daemon: daemon, notifier: notifier, logger: Logger(label: "test"))
        let task = Task { try await service.run() }
        let ready = await listener.awaitLine("READY=1", within: 60)
        #expect(ready != nil, "no READY=1 within 60 s")
        // The status was computed when READY=1 went out: both workers were up.
        #expect(ready?.last?.contains("STATUS=alpha: 2 warm") == true, "\(ready ?? [])")
        let info = daemon.pool("alpha")!.info()
        #expect(info.idle + info.busy == 2)
        // Every 100 ms at this WATCHDOG_USEC; the bound leaves room for the
        // test process's other suites, whose blocking waits can hold both of
        // this 2-core machine's cooperative threads for seconds (seen: 3 s),
        // and still fails a watchdog that never comes or reads the interval
        // in the wrong unit (200,000 ms: every 100 s).
        #expect(await listener.awaitLine("WATCHDOG=1", within: 20) != nil, "no WATCHDOG=1 within 20 s at WATCHDOG_USEC=200000")
        task.cancel()
        try await task.value
        #expect(await listener.awaitLine("STOPPING=1", within: 5) != nil, "no STOPPING=1 after the shutdown")
    }

    @Test func aTenantThatCannotStartDoesNotHoldReadyBack() async throws {
        let listener = try NotifyListener(abstract: true)
        // The worker's command does not exist in the jail: the pool fails.
        let (daemon, dir) = try Self.start(.init(name: "broken", min: 1, max: 1, access: ["alice": "invoker"]),
                                           command: #"["/nonexistent/worker"]"#)
        defer { daemon.stop(); Fixture.removeDirectory(dir) }
        let notifier = SystemdNotifier(environment: ["NOTIFY_SOCKET": listener.address])
        let service = SystemdService(daemon: daemon, notifier: notifier, logger: Logger(label: "test"))
        let task = Task { try await service.run() }
        let ready = await listener.awaitLine("READY=1", within: 60)
        #expect(ready?.last?.contains("STATUS=broken: failing") == true, "\(ready ?? [])")
        task.cancel()
        try await task.value
    }

    /// A started daemon with one tenant, under a cgroup base of its own (the
    /// daemon suites may run beside this one); `command` replaces the
    /// worker's argv (TOML).
    static func start(_ tenant: Fixture.Tenant, command: String? = nil) throws -> (Daemon, String) {
        let dir = try Fixture.makeDirectory()
        do {
            let path = try Fixture.writeConfig(in: dir, tenants: [tenant], cgroupBase: "stockaded-systemd-test")
            if let command {
                let text = try String(contentsOfFile: path, encoding: .utf8)
                let edited = text.replacingOccurrences(of: #"(?m)^command = .*$"#, with: "command = \(command)", options: .regularExpression)
                #expect(edited != text, "the fixture configuration has no command line to replace")
                try edited.write(toFile: path, atomically: true, encoding: .utf8)
            }
            let daemon = try Daemon(config: try DaemonConfig.load(path: path))
            try daemon.start()
            return (daemon, dir)
        } catch {
            Fixture.removeDirectory(dir)
            throw error
        }
    }
}
