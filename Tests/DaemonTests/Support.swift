// Test support: a daemon configuration in a temporary directory with a tiny
// Python worker on the SDK (not MiniLM: these tests are about the broker),
// and a blocking HTTP client on the unix socket.
import Foundation
import Testing
import Synchronization
@testable import StockadeDaemon
import StockadeSystem
import SystemPackage
import Logging
#if canImport(Glibc)
import Glibc
#endif

enum Fixture {
    /// The repository root (this file is Tests/DaemonTests/Support.swift).
    static let repo: String = {
        var url = URL(fileURLWithPath: #filePath)
        for _ in 0..<3 { url.deleteLastPathComponent() }
        return url.path
    }()

    static var venvPython: String { repo + "/.venv/bin/python3" }

    /// The jailed Python worker needs the venv (`make venv`) for the SDK's
    /// `cryptography`; without it these tests cannot run.
    static var hasVenv: Bool {
        FileManager.default.isExecutableFile(atPath: venvPython)
            && FileManager.default.fileExists(atPath: repo + "/.venv/lib/python3.11/site-packages/cryptography")
    }

    static var isRoot: Bool { getuid() == 0 }

    static let tokens = [
        "alice": "alice-token-0123456789abcdef",
        "bob": "bob-token-0123456789abcdef00",
        "viewer": "viewer-token-0123456789abcd",
        "stranger": "stranger-token-0123456789ab",
    ]

    /// A fresh directory that the jail's unprivileged ids can traverse.
    static func makeDirectory() throws -> String {
        var template = Array("/tmp/stockaded-test-XXXXXX".utf8CString)
        guard let p = mkdtemp(&template) else { throw DaemonError("mkdtemp failed") }
        let dir = String(cString: p)
        chmod(dir, 0o755)
        return dir
    }

    struct Tenant {
        var name: String
        var min = 1
        var max = 2
        var queue = 64
        var timeout = "60s"
        var extra = ""
        var access: [String: String] = [:]
        /// The jail budget in a copy of profiles/minimal.toml for this tenant
        /// (nil: minimal.toml's own).
        var memoryMax: String?
        /// The worker script in Tests/DaemonTests/Fixtures.
        var worker = "test_worker.py"
    }

    /// Writes a configuration with `tenants` and returns its path.
    /// A cgroup base of its own for each daemon a test starts: daemons of
    /// suites running side by side must not share one, since a daemon's
    /// clean stop removes the empty tenants and base it finds.
    static func uniqueCgroupBase() -> String {
        "stockaded-test-\(getpid())-\(baseCounter.add(1, ordering: .relaxed).newValue)"
    }
    private static let baseCounter = Atomic<Int>(0)

    static func writeConfig(in dir: String, tenants: [Tenant], cgroupBase: String = uniqueCgroupBase(),
                            daemonExtra: String = "", preamble: String = "", auditLog: String = "audit.jsonl") throws -> String {
        var text = """
            [daemon]
            socket = "api.sock"
            audit_log = "\(auditLog)"
            cgroups = \(isRoot ? "true" : "false")
            cgroup_base = "\(cgroupBase)"
            drain_timeout = "5s"
            \(daemonExtra)

            [client.alice]
            token = "\(tokens["alice"]!)"
            uid = \(getuid())

            [client.bob]
            token = "\(tokens["bob"]!)"
            uid = \(getuid())

            [client.viewer]
            token = "\(tokens["viewer"]!)"
            uid = \(getuid())

            [client.stranger]
            token = "\(tokens["stranger"]!)"
            uid = \(getuid() + 4242)

            \(preamble)

            """
        for t in tenants {
            var profile = "\(repo)/profiles/minimal.toml"
            if let memoryMax = t.memoryMax {
                profile = "\(dir)/\(t.name)-profile.toml"
                let base = try String(contentsOfFile: repo + "/profiles/minimal.toml", encoding: .utf8)
                let edited = base.replacingOccurrences(of: #"(?m)^memory_max = .*$"#, with: "memory_max = \"\(memoryMax)\"",
                                                       options: .regularExpression)
                #expect(edited != base, "profiles/minimal.toml has no memory_max line to change")
                try edited.write(toFile: profile, atomically: true, encoding: .utf8)
            }
            text += """

                [tenant.\(t.name)]
                profile = "\(profile)"
                command = ["\(venvPython)", "\(repo)/Tests/DaemonTests/Fixtures/\(t.worker)"]
                binds = ["\(repo)/.venv", "\(repo)/Tests/DaemonTests/Fixtures"]
                workers_min = \(t.min)
                workers_max = \(t.max)
                queue = \(t.queue)
                request_timeout = "\(t.timeout)"
                env = { TEST_TENANT = "\(t.name)" }
                \(t.extra)

                [tenant.\(t.name).access]
                \(t.access.sorted { $0.key < $1.key }.map { "\($0.key) = \"\($0.value)\"" }.joined(separator: "\n"))

                """
        }
        let path = dir + "/stockaded.toml"
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    static func removeDirectory(_ dir: String) {
        try? FileManager.default.removeItem(atPath: dir)
    }
}

/// A started daemon in this process; stopped (and its directory removed) by ``close()``.
final class RunningDaemon: @unchecked Sendable {
    let daemon: Daemon
    let dir: String
    var socket: String { daemon.config.socketPath }

    init(tenants: [Fixture.Tenant], daemonExtra: String = "", preamble: String = "", dir: String? = nil, auditLog: String = "audit.jsonl",
         cgroupBase: String = Fixture.uniqueCgroupBase(), logger: Logger = Logger(label: "stockaded")) throws {
        self.dir = try dir ?? Fixture.makeDirectory()
        let path = try Fixture.writeConfig(in: self.dir, tenants: tenants, cgroupBase: cgroupBase, daemonExtra: daemonExtra, preamble: preamble,
                                           auditLog: auditLog)
        daemon = try Daemon(config: try DaemonConfig.load(path: path), logger: logger)
        try daemon.start()
    }

    func close() {
        daemon.stop()
        Fixture.removeDirectory(dir)
    }

    func client(_ name: String?) -> APIClient { APIClient(socket: socket, token: name.flatMap { Fixture.tokens[$0] }) }

    /// Polls `condition` (every 50 ms, up to `seconds`) until it holds.
    @discardableResult
    func waitUntil(_ seconds: Double = 60, _ condition: () throws -> Bool) rethrows -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if try condition() { return true }
            usleep(50_000)
        }
        return try condition()
    }

    func auditEvents() -> [[String: Any]] {
        guard let text = try? String(contentsOfFile: daemon.config.auditLogPath, encoding: .utf8) else { return [] }
        return text.split(separator: "\n").compactMap {
            (try? JSONSerialization.jsonObject(with: Data($0.utf8))) as? [String: Any]
        }
    }
}

/// A listening unix socket at `path` (a stand-in for another process's server).
func listenUnix(_ path: String) throws -> Int32 {
    let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    var addr = sockaddr_un()
    addr.sun_family = sa_family_t(AF_UNIX)
    withUnsafeMutableBytes(of: &addr.sun_path) { raw in
        for (i, b) in path.utf8.enumerated() { raw[i] = b }
    }
    let rc = withUnsafePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
    }
    guard rc == 0, listen(fd, 8) == 0 else { throw DaemonError("bind/listen \(path): errno \(errno)") }
    return fd
}

/// A blocking HTTP/1.1 client on a unix socket, one connection per call.
struct APIClient {
    var socket: String
    var token: String?

    struct Response {
        var status: Int
        var headers: [String: String]
        var body: [UInt8]
        var text: String { String(decoding: body, as: UTF8.self) }
        var json: [String: Any] { ((try? JSONSerialization.jsonObject(with: Data(body))) as? [String: Any]) ?? [:] }
    }

    func get(_ path: String) throws -> Response { try call("GET", path, body: []) }
    func post(_ path: String, _ body: [UInt8] = []) throws -> Response { try call("POST", path, body: body) }
    func infer(_ tenant: String, _ text: String) throws -> Response { try post("/v1/tenants/\(tenant)/infer", Array(text.utf8)) }

    func call(_ method: String, _ path: String, body: [UInt8]) throws -> Response {
        let fd: Int32
        do {
            fd = try UnixSocket.connect(path: socket).rawValue
        } catch {
            throw DaemonError("connect \(socket): \(error)")
        }
        defer { Glibc.close(fd) }
        var head = "\(method) \(path) HTTP/1.1\r\nHost: stockaded\r\nConnection: close\r\nContent-Length: \(body.count)\r\n"
        if let token { head += "Authorization: Bearer \(token)\r\n" }
        head += "\r\n"
        let out = Array(head.utf8) + body
        do {
            try out.withUnsafeBytes { try FileDescriptor(rawValue: fd).sendAll($0) }
        } catch {
            throw DaemonError("send: \(error)")
        }
        var data: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n < 0, errno == EINTR { continue }
            guard n >= 0 else { throw DaemonError("recv: errno \(errno)") }
            if n == 0 { break }
            data += chunk[0..<n]
        }
        guard let end = data.firstRange(of: [13, 10, 13, 10]) else { throw DaemonError("no HTTP head in \(data.count) bytes") }
        let lines = String(decoding: data[..<end.lowerBound], as: UTF8.self).components(separatedBy: "\r\n")
        let statusParts = lines[0].split(separator: " ")
        guard statusParts.count >= 2, let status = Int(statusParts[1]) else { throw DaemonError("bad status line \(lines[0])") }
        var headers: [String: String] = [:]
        for line in lines.dropFirst() {
            guard let colon = line.firstIndex(of: ":") else { continue }
            headers[line[..<colon].lowercased()] = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
        }
        return Response(status: status, headers: headers, body: Array(data[end.upperBound...]))
    }
}

/// Fields of this process's `/proc/self/status` (the number after each
/// name, e.g. `VmRSS` in KiB); -1 for a name not found.
func procStatus(_ names: [String]) -> [String: Int] {
    var values = Dictionary(uniqueKeysWithValues: names.map { ($0, -1) })
    for line in ((try? String(contentsOfFile: "/proc/self/status", encoding: .utf8)) ?? "").split(separator: "\n") {
        let parts = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
        guard parts.count >= 2, parts[0].hasSuffix(":"), let value = Int(parts[1]) else { continue }
        let name = String(parts[0].dropLast())
        if values[name] != nil { values[name] = value }
    }
    return values
}
