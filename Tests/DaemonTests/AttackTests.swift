// stockaded under attack: each test reproduces an attack on the broker
// (bounded in count and time, on its unix socket only) and checks the
// daemon's answer to it.
import Foundation
import Testing
import Logging
import Synchronization
@testable import StockadeDaemon
import StockadeConfig
import StockadeSystem
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// A raw connection to the API socket, for requests no well-behaved client sends.
final class RawConnection {
    let fd: Int32

    init(_ socket: String) throws {
        fd = try UnixSocket.connect(path: socket).rawValue
    }

    deinit { close(fd) }

    func send(_ text: String) { send(Array(text.utf8)) }

    func send(_ bytes: [UInt8]) {
        _ = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
    }

    /// What arrives within `seconds`, until the peer closes (or, with
    /// `until`, until the bytes so far contain it).
    func receive(seconds: Double, until marker: String? = nil) -> (text: String, closed: Bool) {
        var data: [UInt8] = []
        let deadline = Date().addingTimeInterval(seconds)
        var buf = [UInt8](repeating: 0, count: 65536)
        while Date() < deadline {
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let left = Int32(max(1, deadline.timeIntervalSinceNow * 1000))
            guard poll(&p, 1, left) > 0 else { continue }
            let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { return (String(decoding: data, as: UTF8.self), true) }
            data += buf[0..<n]
            if let marker, String(decoding: data, as: UTF8.self).contains(marker) { break }
        }
        return (String(decoding: data, as: UTF8.self), false)
    }

    static func head(_ method: String, _ path: String, token: String?, extra: String = "", length: Int? = nil) -> String {
        var h = "\(method) \(path) HTTP/1.1\r\nHost: stockaded\r\n"
        if let token { h += "Authorization: Bearer \(token)\r\n" }
        if let length { h += "Content-Length: \(length)\r\n" }
        return h + extra + "\r\n"
    }
}

/// Collects log records (the daemon's logger in these tests).
final class CapturedLog: @unchecked Sendable {
    struct Entry { var message: String; var metadata: [String: String] }
    let entries = Mutex<[Entry]>([])
    var all: [Entry] { entries.withLock { $0 } }

    var logger: Logger {
        Logger(label: "stockaded") { _ in Handler(sink: self) }
    }

    struct Handler: LogHandler {
        let sink: CapturedLog
        var metadata: Logger.Metadata = [:]
        var logLevel: Logger.Level = .trace
        subscript(metadataKey key: String) -> Logger.Metadata.Value? {
            get { metadata[key] }
            set { metadata[key] = newValue }
        }
        func log(event: LogEvent) {
            var merged: [String: String] = [:]
            for (k, v) in metadata { merged[k] = "\(v)" }
            for (k, v) in event.metadata ?? [:] { merged[k] = "\(v)" }
            let entry = Entry(message: "\(event.message)", metadata: merged)
            sink.entries.withLock { $0.append(entry) }
        }
    }
}

private let alice = Fixture.tokens["alice"]!

@Suite(.serialized, .enabled(if: Fixture.hasVenv, "needs the venv (make venv) for the jailed Python worker"))
struct DaemonAttackTests {
    // MARK: Connections

    @Test func aFloodOfSilentConnectionsIsAnsweredAndClosedAndClientsAreStillServed() throws {
        let d = try RunningDaemon(tenants: [.init(name: "alpha", min: 1, max: 1, access: ["alice": "admin"])],
                                  daemonExtra: "max_connections = 8\nmax_connections_per_uid = 8")
        defer { d.close() }
        #expect(d.waitUntil { d.daemon.pool("alpha")?.workers().first?.state == "idle" })
        // 40 connections that never send a byte: each new one evicts the
        // oldest that has presented no token.
        var flood: [RawConnection] = []
        for _ in 0..<40 { flood.append(try RawConnection(d.socket)) }
        // (Connections are admitted on two event loops: which 32 go is not
        // exactly the first 32, but 32 go, each answered.)
        usleep(500_000)
        var answers40 = flood.map { $0.receive(seconds: 0.3) }
        // On a loaded machine the last evictions can come later: read again
        // what is still open, for at most 20 s, until 32 are answered.
        let settle = Date().addingTimeInterval(20)
        func answered() -> Int { answers40.filter { $0.closed && $0.text.hasPrefix("HTTP/1.1 503") }.count }
        while answered() < 32, Date() < settle {
            for i in flood.indices where !answers40[i].closed {
                let more = flood[i].receive(seconds: 0.05)
                answers40[i] = (answers40[i].text + more.text, more.closed)
            }
        }
        let evicted = answers40.filter { $0.closed && $0.text.hasPrefix("HTTP/1.1 503") && $0.text.contains("too-many-connections") }
        #expect(evicted.count == 32)
        #expect(answers40.filter { $0.text.isEmpty && !$0.closed }.count == 8)
        // A client with a token still gets through (it evicts one more).
        let r = try d.client("alice").infer("alpha", "echo:through")
        #expect(r.status == 200)
        #expect(r.text == "alpha:through")
        // Authenticated keep-alive connections are not evicted: at the limit
        // a new connection is refused instead.
        flood.removeAll()
        var kept: [RawConnection] = []
        for _ in 0..<8 {
            let c = try RawConnection(d.socket)
            c.send(RawConnection.head("GET", "/v1/tenants", token: alice))
            #expect(c.receive(seconds: 5, until: "\r\n\r\n").text.hasPrefix("HTTP/1.1 200"))
            kept.append(c)
        }
        let late = try RawConnection(d.socket).receive(seconds: 5)
        #expect(late.text.hasPrefix("HTTP/1.1 503"))
        #expect(late.text.contains("connections open"))
        let answers = d.auditEvents().filter { $0["outcome"] as? String == "too-many-connections" }
        #expect(answers.count >= 33)
        kept.removeAll()
        // The connections closed, the daemon serves again (and can launch).
        #expect(d.waitUntil(10) { (try? d.client("alice").get("/v1/tenants").status) == 200 })
        let drain = try d.client("alice").post("/v1/tenants/alpha/drain")
        #expect(drain.status == 202, "\(drain.text)")
        #expect(d.waitUntil { d.daemon.pool("alpha")?.workers().isEmpty == true })
        #expect(try d.client("alice").post("/v1/tenants/alpha/resume").status == 202)
        #expect(try d.client("alice").infer("alpha", "echo:relaunched").status == 200)
    }

    @Test func connectionsNeverTakeTheFdsReservedForWorkerLaunches() throws {
        var asked = ConnectionLimits()
        asked.total = 50_000_000
        asked.perUid = 50_000_000
        asked.fdReserve = 300
        let fitted = try APIServer.fitToDescriptorLimit(asked, logger: Logger(label: "test"))
        var rl = rlimit()
        getrlimit(Int32(RLIMIT_NOFILE.rawValue), &rl)
        let open = try FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd").count
        #expect(fitted.total + open + 300 <= Int(rl.rlim_cur) + 2)
        #expect(fitted.perUid <= fitted.total)
        // A reserve larger than the limit itself is refused, naming the key.
        asked.fdReserve = Int(rl.rlim_cur)
        #expect { _ = try APIServer.fitToDescriptorLimit(asked, logger: Logger(label: "test")) } throws: { "\($0)".contains("fd_reserve") }
    }

    @Test func slowHeadersSlowBodiesAndIdleConnectionsTimeOut() throws {
        let d = try RunningDaemon(tenants: [.init(name: "alpha", min: 0, max: 1, access: ["alice": "invoker"])],
                                  daemonExtra: "header_timeout = \"1s\"\nbody_timeout = \"1s\"\nidle_timeout = \"1s\"")
        defer { d.close() }
        // A byte every 200 ms never completes the head in time.
        let slow = try RawConnection(d.socket)
        let started = Date()
        var answer = ""
        for b in RawConnection.head("GET", "/v1/tenants", token: alice).utf8 {
            slow.send([b])
            let r = slow.receive(seconds: 0.2)
            if !r.text.isEmpty || r.closed { answer = r.text; break }
        }
        #expect(answer.hasPrefix("HTTP/1.1 408"))
        #expect(Date().timeIntervalSince(started) < 3)
        // A body shorter than its Content-Length.
        let short = try RawConnection(d.socket)
        short.send(RawConnection.head("POST", "/v1/tenants/alpha/infer", token: alice, length: 100) + "echo:")
        let b = short.receive(seconds: 4)
        #expect(b.text.hasPrefix("HTTP/1.1 408"))
        #expect(b.closed)
        // An idle keep-alive connection is closed.
        let idle = try RawConnection(d.socket)
        idle.send(RawConnection.head("GET", "/v1/tenants", token: alice))
        #expect(idle.receive(seconds: 2, until: "\r\n\r\n").text.hasPrefix("HTTP/1.1 200"))
        #expect(idle.receive(seconds: 4).closed)
        let timeouts = d.auditEvents().filter { $0["status"] as? Int == 408 }
        #expect(timeouts.count == 2)
    }

    @Test func oversizedBodiesAreRefusedAtOnceAndExpectContinueIsAnswered() throws {
        let d = try RunningDaemon(tenants: [.init(name: "alpha", min: 1, max: 1, access: ["alice": "invoker"])],
                                  daemonExtra: "max_request_bytes = \"64K\"")
        defer { d.close() }
        // 413 before a byte of the body is sent.
        let big = try RawConnection(d.socket)
        big.send(RawConnection.head("POST", "/v1/tenants/alpha/infer", token: alice, length: 1 << 30))
        let r = big.receive(seconds: 3)
        #expect(r.text.hasPrefix("HTTP/1.1 413"))
        #expect(r.closed)
        // Expect: 100-continue: the interim answer, then the body, then the answer.
        let polite = try RawConnection(d.socket)
        polite.send(RawConnection.head("POST", "/v1/tenants/alpha/infer", token: alice, extra: "Expect: 100-continue\r\n", length: 7))
        #expect(polite.receive(seconds: 3, until: "\r\n\r\n").text.hasPrefix("HTTP/1.1 100 Continue"))
        polite.send("echo:ok")
        #expect(polite.receive(seconds: 10, until: "alpha:ok").text.contains("HTTP/1.1 200"))
        // Without a valid token: 401 at once, no 100.
        let stranger = try RawConnection(d.socket)
        stranger.send(RawConnection.head("POST", "/v1/tenants/alpha/infer", token: "x" + alice, extra: "Expect: 100-continue\r\n", length: 7))
        let s = stranger.receive(seconds: 3)
        #expect(s.text.hasPrefix("HTTP/1.1 401"))
        #expect(s.closed)
        // Every one of them is audited and counted as what it was.
        let events = d.auditEvents()
        #expect(events.contains { $0["status"] as? Int == 413 && $0["outcome"] as? String == "too-large" && $0["tenant"] as? String == "alpha" })
        #expect(events.contains { $0["status"] as? Int == 401 })
        let metrics = try d.client("alice").get("/metrics").text
        #expect(metrics.contains("stockaded_requests_total{tenant=\"alpha\",outcome=\"too-large\"} 1"))
        #expect(metrics.contains("stockaded_answers_total{status=\"413\",code=\"too-large\"} 1"))
    }

    @Test func malformedRequestsAndHalfClosedClientsAreAnsweredAndAudited() throws {
        let d = try RunningDaemon(tenants: [.init(name: "alpha", min: 1, max: 1, access: ["alice": "invoker"])])
        defer { d.close() }
        let junk = try RawConnection(d.socket)
        junk.send("GET /v1/tenants HTTP/1.1\r\nHost: x\r\nBad Header Line\r\n\r\n")
        let j = junk.receive(seconds: 3)
        #expect(j.text.hasPrefix("HTTP/1.1 400"))
        // A client that half-closes after its request still gets its answer.
        let half = try RawConnection(d.socket)
        half.send(RawConnection.head("POST", "/v1/tenants/alpha/infer", token: alice, length: 7) + "echo:hc")
        shutdown(half.fd, Int32(SHUT_WR))
        let h = half.receive(seconds: 30)
        #expect(h.text.hasPrefix("HTTP/1.1 200"))
        #expect(h.text.hasSuffix("alpha:hc"))
        // A client gone before its answer: audited as undelivered.
        let gone = try RawConnection(d.socket)
        gone.send(RawConnection.head("POST", "/v1/tenants/alpha/infer", token: alice, length: 9) + "sleep:0.5")
        usleep(100_000)
        // Gone both ways (the fd itself is closed once, by the connection's
        // deinit: closing it here too could close another test's socket).
        shutdown(gone.fd, Int32(SHUT_RDWR))
        let events = { d.auditEvents() }
        #expect(d.waitUntil(5) { events().contains { $0["event"] as? String == "undelivered" } })
        #expect(events().contains { $0["status"] as? Int == 400 && $0["outcome"] as? String == "bad-request" })
        #expect(try d.client("alice").get("/metrics").text.contains("stockaded_answers_total{status=\"400\",code=\"bad-request\"} 1"))
    }

    // MARK: Tokens

    @Test func tokensAreComparedInFullAndOneAnswerHidesWhichCheckFailed() throws {
        let d = try RunningDaemon(tenants: [.init(name: "alpha", min: 0, max: 1, access: ["alice": "viewer", "stranger": "viewer"])])
        defer { d.close() }
        // The real token with 256 more characters: the old comparison
        // dropped all but 8 bits of the length difference.
        for suffix in [String(repeating: "A", count: 256), String(repeating: "A", count: 512), "A"] {
            let r = try APIClient(socket: d.socket, token: alice + suffix).get("/v1/tenants")
            #expect(r.status == 401)
        }
        #expect(try APIClient(socket: d.socket, token: String(alice.dropLast())).get("/v1/tenants").status == 401)
        // A keep-alive connection that presented the valid token once: the
        // next request's token is checked again in full, whatever it is
        // (one byte changed, one more, one fewer, none at all).
        let changed = String(alice.dropLast()) + (alice.last == "x" ? "y" : "x")
        for presented in [changed, alice + "A", String(alice.dropLast()), nil] {
            let c = try RawConnection(d.socket)
            c.send(RawConnection.head("GET", "/v1/tenants", token: alice))
            #expect(c.receive(seconds: 5, until: "]}\n").text.hasPrefix("HTTP/1.1 200"))
            c.send(RawConnection.head("GET", "/v1/tenants", token: presented))
            let second = c.receive(seconds: 5)
            #expect(second.text.hasPrefix("HTTP/1.1 401"), "token \(presented ?? "none"): \(second.text.prefix(40))")
        }
        // A stolen token (stranger's, another uid) and an unknown one: the same answer.
        let stolen = try d.client("stranger").get("/v1/tenants")
        let unknown = try APIClient(socket: d.socket, token: "no-such-token-0123456789").get("/v1/tenants")
        #expect(stolen.status == 401)
        #expect(unknown.status == 401)
        #expect(stolen.body == unknown.body)
        // The audit log tells the operator which it was.
        let denied = d.auditEvents().filter { $0["event"] as? String == "denied" }.compactMap { $0["reason"] as? String }
        #expect(denied.contains { $0.contains("token of client stranger presented by uid") })
        #expect(try d.client("alice").get("/v1/tenants").status == 200)
    }

    // MARK: One instance

    @Test func aSecondDaemonRefusesAndNamesTheFirstAndTheSocketKeepsAnswering() throws {
        let d = try RunningDaemon(tenants: [.init(name: "alpha", min: 0, max: 1, access: ["alice": "viewer"])])
        defer { d.close() }
        let config = try DaemonConfig.load(path: d.dir + "/stockaded.toml")
        #expect {
            _ = try Daemon(config: config)
        } throws: { error in
            "\(error)".contains("pid \(getpid())") && "\(error)".contains("api.sock")
        }
        #expect(try d.client("alice").get("/v1/tenants").status == 200)
        // A live socket held by something else is not unlinked either.
        let other = try Fixture.makeDirectory()
        defer { Fixture.removeDirectory(other) }
        let path = try Fixture.writeConfig(in: other, tenants: [.init(name: "alpha", min: 0, max: 1, access: ["alice": "viewer"])])
        var c = try DaemonConfig.load(path: path)
        let listener = try listenUnix(c.socketPath)
        let second = try Daemon(config: c)
        #expect { try second.start() } throws: { "\($0)".contains("refusing to unlink a socket that answers") }
        #expect(FileManager.default.fileExists(atPath: c.socketPath))
        close(listener)
        // A stale socket (nobody listening) is replaced.
        c.socketPath = other + "/stale.sock"
        close(try listenUnix(c.socketPath))
        let third = try Daemon(config: c)
        try third.start()
        third.stop()
    }

    // MARK: Audit log on a full disk

    @Test(.enabled(if: Fixture.isRoot, "mounting a small tmpfs needs root"), arguments: ["refuse", "continue"])
    func aFullAuditDiskLosesNoLineSilently(policy: String) throws {
        let dir = try Fixture.makeDirectory()
        let small = dir + "/audit"
        mkdir(small, 0o755)
        try #require(mount("tmpfs", small, "tmpfs", 0, "size=64k") == 0, "mount tmpfs: errno \(errno)")
        defer { umount2(small, Int32(MNT_DETACH)) }
        let d = try RunningDaemon(tenants: [.init(name: "alpha", min: 1, max: 1, access: ["alice": "invoker"])],
                                  daemonExtra: "audit_failure = \"\(policy)\"", dir: dir, auditLog: "audit/audit.jsonl")
        defer { d.close() }
        let client = d.client("alice")
        #expect(try client.infer("alpha", "echo:before").status == 200)
        #expect(try client.get("/v1/health").status == 200)
        // Fill the disk: leave less room than one audit line.
        let filler = small + "/filler"
        let fd = open(filler, O_WRONLY | O_CREAT, 0o600)
        let block = [UInt8](repeating: 0x41, count: 4096)
        while block.withUnsafeBytes({ write(fd, $0.baseAddress, $0.count) }) > 0 {}
        for n in [512, 64, 8, 1] { while block.withUnsafeBytes({ write(fd, $0.baseAddress, n) }) > 0 {} }
        close(fd)
        // Requests until the log's last page is full and a line is lost.
        var tries = 0
        while d.daemon.audit.failures == 0, tries < 200 {
            _ = try client.infer("alpha", "echo:filling")
            tries += 1
        }
        try #require(d.daemon.audit.failures > 0, "no audit write failed after \(tries) requests")
        let during = try (0..<5).map { _ in try client.infer("alpha", "echo:during") }
        if policy == "refuse" {
            #expect(during.allSatisfy { $0.status == 503 && $0.json["error"] as? String == "audit-unavailable" })
        } else {
            #expect(during.allSatisfy { $0.status == 200 })
        }
        let health = try client.get("/v1/health")
        #expect(health.status == 503)
        #expect(health.json["status"] as? String == "degraded")
        // Space again: the log recovers and health with it.
        unlink(filler)
        let metrics = try client.get("/metrics").text
        let failures = metrics.split(separator: "\n").first { $0.hasPrefix("stockaded_audit_write_failures_total") }
        #expect(failures.flatMap { Double($0.split(separator: " ").last ?? "") }.map { $0 >= 5 } == true, "\(failures ?? "no counter")")
        #expect(try client.infer("alpha", "echo:after").status == 200)
        #expect(try client.get("/v1/health").status == 200)
        // Only whole lines: every line of the log is one JSON object.
        let text = try String(contentsOfFile: small + "/audit.jsonl", encoding: .utf8)
        let lines = text.split(separator: "\n", omittingEmptySubsequences: false).dropLast()
        #expect(text.hasSuffix("\n"))
        #expect(lines.allSatisfy { (try? JSONSerialization.jsonObject(with: Data($0.utf8))) is [String: Any] })
        #expect(lines.contains { $0.contains("echo") == false && $0.contains("\"status\":200") })
    }

    // MARK: Worker output

    @Test func workersWriteIntoPipesTheDaemonReadsNeverIntoItsLog() throws {
        let log = CapturedLog()
        let d = try RunningDaemon(tenants: [.init(name: "alpha", min: 1, max: 1, access: ["alice": "invoker"])], logger: log.logger)
        defer { d.close() }
        let client = d.client("alice")
        let forged = try client.infer("alpha", "forge")
        #expect(forged.status == 200)
        #expect(forged.text == "fifo")
        #expect(try client.infer("alpha", "say:hello from the jail").text == "said")
        let worker = forged.headers["x-stockade-worker"] ?? "?"
        #expect(d.waitUntil(5) { log.all.filter { $0.message.contains("hello from the jail") }.count == 2 })
        let lines = log.all.filter { $0.metadata["stream"] != nil }
        #expect(lines.allSatisfy { $0.metadata["tenant"] == "alpha" && $0.metadata["worker"] == worker })
        #expect(Set(lines.filter { $0.message.contains("hello") }.compactMap { $0.metadata["stream"] }) == ["stdout", "stderr"])
        // The forged line arrives as the worker's, its escape sequence escaped.
        let forgery = lines.first { $0.message.contains("forged daemon line") }
        #expect(forgery?.metadata["stream"] == "stderr")
        #expect(!lines.contains { $0.message.unicodeScalars.contains { $0.value < 0x20 } })
        #expect(lines.contains { $0.message.contains("\\x1b[2J") })
    }

    @Test func aFloodOfWorkerOutputIsReadAtABoundedRate() throws {
        let log = CapturedLog()
        let d = try RunningDaemon(tenants: [.init(name: "alpha", min: 1, max: 1, timeout: "30s", access: ["alice": "invoker"])], logger: log.logger)
        defer { d.close() }
        // 256 KiB in one line and more lines: cut at 4 KiB, read at 64 KiB/s.
        let started = Date()
        let r = try d.client("alice").infer("alpha", "say:" + String(repeating: "z", count: 256 << 10))
        #expect(r.status == 200)
        #expect(Date().timeIntervalSince(started) >= 2, "512 KiB of output at 64 KiB/s takes seconds")
        #expect(d.waitUntil(10) { log.all.filter { $0.message.contains("zzz") }.count == 2 })
        #expect(log.all.filter { $0.message.contains("zzz") }.allSatisfy { $0.message.utf8.count < 4096 + 64 + 64 })
    }

    // MARK: Models

    @Test func swappingAPinnedFileOnDiskChangesNothingAWorkerSees() throws {
        let dir = try Fixture.makeDirectory()
        let pinned = dir + "/config.json", evil = dir + "/evil.json"
        try Data("{\"pinned\": true}\n".utf8).write(to: URL(fileURLWithPath: pinned))
        try Data("{\"pinned\": false, \"evil\": 1}\n".utf8).write(to: URL(fileURLWithPath: evil))
        let digest = try ModelDigest.sha256(path: pinned)
        // The swap loop: the path names the pinned file, then the evil one, ...
        let stop = Atomic<Bool>(false)
        let swapper = Thread {
            while !stop.load(ordering: .relaxed) {
                rename(pinned, dir + "/tmp.json")
                rename(evil, pinned)
                rename(dir + "/tmp.json", evil)
            }
        }
        let d = try RunningDaemon(tenants: [.init(name: "alpha", min: 1, max: 1, extra: "models = [\"m\"]", access: ["alice": "invoker"])],
                                  preamble: "[[model.m.file]]\npath = \"\(pinned)\"\nsha256 = \"\(digest)\"\n", dir: dir)
        defer { d.close() }
        swapper.start()
        defer { stop.store(true, ordering: .relaxed) }
        let client = d.client("alice")
        var seen: [String] = []
        var failures: [Int] = []
        for _ in 0..<8 {
            // The worker that answers must be the replacement of the one that
            // crashed: wait for it (launches are backed off after failures),
            // then retry an answer the pool could not give while the old
            // worker was still being reaped. What every answer says is the check.
            let deadline = Date().addingTimeInterval(30)
            while Date() < deadline {
                let r = try client.infer("alpha", "modelfd:config.json")
                if r.status == 200 { seen.append(r.text); break }
                failures.append(r.status)
                usleep(200_000)
            }
            let before = d.daemon.pool("alpha")?.workers().first?.id
            _ = try client.infer("alpha", "crash")
            #expect(d.waitUntil(30) {
                guard let w = d.daemon.pool("alpha")?.workers().first else { return false }
                return w.id != before && w.state == "idle"
            })
        }
        #expect(seen.count == 8, "statuses of the answers that were retried: \(failures)")
        #expect(seen.allSatisfy { $0 == digest })
        // A pinned path that is a symbolic link is refused, not followed.
        let link = dir + "/link.json"
        symlink(pinned, link)
        #expect { try ModelStore.seal(ModelFile(path: link, name: "x", sha256: digest)) } throws: { "\($0)".contains("symbolic link") }
    }

    // MARK: Input errors, fairness, answer size

    @Test func inputErrorsAre400And413AndBigAnswersAreRefused() throws {
        let d = try RunningDaemon(tenants: [.init(name: "alpha", min: 1, max: 1, extra: "max_response_bytes = \"64K\"", access: ["alice": "invoker"])])
        defer { d.close() }
        let client = d.client("alice")
        let bad = try client.infer("alpha", "bad-input")
        #expect(bad.status == 400)
        #expect(bad.json["error"] as? String == "bad-input")
        #expect(try client.infer("alpha", "too-big").status == 413)
        #expect(try client.infer("alpha", "fail").status == 502)
        #expect(try client.infer("alpha", "big:65536").status == 200)
        let big = try client.infer("alpha", "big:200000")
        #expect(big.status == 502)
        #expect(big.json["error"] as? String == "answer-too-large")
        let metrics = try client.get("/metrics").text
        #expect(metrics.contains("outcome=\"bad-input\"} 1"))
        #expect(metrics.contains("outcome=\"answer-too-large\"} 1"))
    }

    @Test func oneClientsPileOfSlowRequestsDoesNotStarveAnother() throws {
        let d = try RunningDaemon(tenants: [.init(name: "alpha", min: 1, max: 1, queue: 8, access: ["alice": "invoker", "bob": "invoker"])])
        defer { d.close() }
        #expect(d.waitUntil { d.daemon.pool("alpha")?.workers().first?.state == "idle" })
        let done = Mutex<[(String, Date)]>([])
        let group = DispatchGroup()
        for i in 0..<6 {
            group.enter()
            Thread.detachNewThread {
                let r = try? d.client("alice").infer("alpha", "sleep:1")
                done.withLock { $0.append(("alice-\(i)-\(r?.status ?? 0)", Date())) }
                group.leave()
            }
        }
        // Bob asks once alice's pile is in: one running, four waiting (her
        // share of the queue of 8), the sixth refused with 429.
        #expect(d.waitUntil(30) { done.withLock { $0.contains { $0.0.hasSuffix("-429") } } }, "alice was never refused")
        let bob = try d.client("bob").infer("alpha", "echo:bob")
        let bobDone = Date()
        group.wait()
        #expect(bob.status == 200)
        // Bob goes next in turn, not behind all of alice's waiting requests.
        // Judged by order, not by time (a loaded machine stretches every
        // wait): first come, first served would finish all four of alice's
        // waiting requests before bob's; in turn, only the one running does
        // (and one more for each second bob's request took to arrive).
        let finished = done.withLock { $0 }
        let aliceServed = finished.filter { $0.0.hasSuffix("-200") }
        #expect(aliceServed.count == 5, "\(finished.map(\.0))")
        let afterBob = aliceServed.filter { $0.1 > bobDone }.count
        #expect(afterBob >= 2, "\(afterBob) of alice's \(aliceServed.count) served requests finished after bob's: \(finished.map(\.0))")
    }

    // MARK: Configuration

    @Test func modelsAreDeclaredOnceAndMistakesNameFileLineAndKey() throws {
        let head = """
            [daemon]
            socket = "s.sock"
            audit_log = "a.jsonl"

            """
        let tenant = """

            [tenant.alpha]
            profile = "\(Fixture.repo)/profiles/minimal.toml"
            command = ["/bin/true"]
            """
        let digest = String(repeating: "a", count: 64)
        func error(_ text: String) -> String {
            do { _ = try DaemonConfig.parse(text: text, file: "/etc/stockaded.toml"); return "" } catch { return "\(error)" }
        }
        let ok = try DaemonConfig.parse(text: head + "[[model.m.file]]\npath = \"/x/a.bin\"\nsha256 = \"\(digest)\"\n" + tenant + "\nmodels = [\"m\"]\n",
                                        file: "/etc/stockaded.toml")
        #expect(ok.tenants[0].models.map(\.name) == ["m"])
        #expect(ok.tenants[0].models[0].files[0].name == "a.bin")
        let unknown = error(head + tenant + "\nmodels = [\"nope\"]\n")
        #expect(unknown.contains("/etc/stockaded.toml:8") && unknown.contains("tenant.alpha.models") && unknown.contains("no [model.nope]"))
        let inline = error(head + tenant + "\n[[tenant.alpha.model]]\npath = \"/x\"\nsha256 = \"\(digest)\"\n")
        #expect(inline.contains("tenant.alpha.model") && inline.contains("declared once"))
        let badDigest = error(head + "[[model.m.file]]\npath = \"/x/a.bin\"\nsha256 = \"abc\"\n" + tenant)
        #expect(badDigest.contains(":6") && badDigest.contains("sha256") && badDigest.contains("64 hex digits"), "\(badDigest)")
        let badName = error(head + "[[model.m.file]]\npath = \"/x/a.bin\"\nname = \"../a\"\nsha256 = \"\(digest)\"\n" + tenant)
        #expect(badName.contains("name") && badName.contains("'..'"))
        let badPolicy = error(head.replacingOccurrences(of: "audit_log = \"a.jsonl\"", with: "audit_log = \"a.jsonl\"\naudit_failure = \"maybe\"") + tenant)
        #expect(badPolicy.contains(":4") && badPolicy.contains("audit_failure"))
    }
}

@Test func auditLinesAreTheJSONOfTheirEvents() throws {
    var e = AuditEvent(.request, tenant: "t\"x\\y", worker: "w/1", reason: "line\nbreak \u{1b}[2J tab\t é ✓")
    e.time = "2026-01-01T00:00:00.000Z"
    e.uid = 4242
    e.status = 200
    e.durationMs = 0.30000000000000004
    e.bytesOut = 12
    e.cpuMicros = UInt64.max
    let line = e.jsonLine()
    #expect(line.last == 0x0A)
    #expect(!line.dropLast().contains(0x0A))
    let ours = try #require(try JSONSerialization.jsonObject(with: Data(line.dropLast())) as? NSDictionary)
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
    let theirs = try #require(try JSONSerialization.jsonObject(with: encoder.encode(e)) as? NSDictionary)
    #expect(ours == theirs)
    #expect(Array(try encoder.encode(e)) + [0x0A] == line)
}
