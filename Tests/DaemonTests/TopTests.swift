// `stockade top` as a person sees it: the built `stockade` binary runs
// under a pseudo-terminal against a daemon started here, and the screen it
// draws is read back through a small model of the terminal (cursor home,
// erase to the end of line and of screen, the alternate screen); and its
// `--once` frame is compared byte for byte for a known state.
import Foundation
import Testing
@testable import StockadeDaemon
import StockadeSystem
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// The `stockade` binary of this build (swift build --build-tests builds it).
private let stockadeBinary = Fixture.repo + "/.build/debug/stockade"

/// What a terminal shows: the cells written through the escape sequences
/// `stockade top` uses. Bytes past the last column wrap, as on a real
/// terminal, and are noted: a frame must fit its window.
struct ScreenModel {
    var rows: Int, columns: Int
    private var cells: [[UInt8]]
    private var row = 0, column = 0
    private var pending: [UInt8] = []
    var alternate = false
    var cursorVisible = true
    /// A line was wider than the window (the terminal wrapped it).
    var overflowed = false

    init(rows: Int, columns: Int) {
        self.rows = rows
        self.columns = columns
        cells = Array(repeating: Array(repeating: 0x20, count: columns), count: rows)
    }

    var lines: [String] {
        cells.map { String(decoding: $0, as: UTF8.self).replacingOccurrences(of: #"\s+$"#, with: "", options: .regularExpression) }
    }
    var text: String { lines.joined(separator: "\n") }

    mutating func resize(rows: Int, columns: Int) {
        self = ScreenModel(rows: rows, columns: columns)
    }

    mutating func feed(_ bytes: [UInt8]) {
        pending += bytes
        var i = 0
        while i < pending.count {
            let b = pending[i]
            if b == 0x1B {
                // ESC [ parameters final
                guard i + 1 < pending.count else { break }
                guard pending[i + 1] == UInt8(ascii: "[") else { i += 2; continue }
                var j = i + 2
                while j < pending.count, !(0x40...0x7E).contains(pending[j]) { j += 1 }
                guard j < pending.count else { break }
                control(String(decoding: pending[(i + 2)..<j], as: UTF8.self), pending[j])
                i = j + 1
                continue
            }
            switch b {
            case 0x0D: column = 0
            case 0x0A: row = min(rows - 1, row + 1)
            case 0x20...0x7E:
                if column >= columns {
                    overflowed = true
                    column = 0
                    row = min(rows - 1, row + 1)
                }
                cells[row][column] = b
                column += 1
            default: break
            }
            i += 1
        }
        pending.removeFirst(i)
    }

    private mutating func control(_ parameters: String, _ final: UInt8) {
        switch (parameters, final) {
        case ("?1049", UInt8(ascii: "h")), ("?1049", UInt8(ascii: "l")):
            alternate = final == UInt8(ascii: "h")
            clear(from: 0)
        case ("?25", UInt8(ascii: "h")): cursorVisible = true
        case ("?25", UInt8(ascii: "l")): cursorVisible = false
        case (_, UInt8(ascii: "H")):
            let parts = parameters.split(separator: ";").compactMap { Int($0) }
            row = max(0, min(rows - 1, (parts.first ?? 1) - 1))
            column = max(0, min(columns - 1, (parts.count > 1 ? parts[1] : 1) - 1))
        case ("", UInt8(ascii: "K")):
            for c in column..<columns { cells[row][c] = 0x20 }
        case ("", UInt8(ascii: "J")):
            for c in column..<columns { cells[row][c] = 0x20 }
            clear(from: row + 1)
        case ("2", UInt8(ascii: "J")):
            clear(from: 0)
        default: break
        }
    }

    private mutating func clear(from first: Int) {
        for r in first..<rows { cells[r] = Array(repeating: 0x20, count: columns) }
    }
}

/// `stockade top` running on a fresh pseudo-terminal of `rows` x `columns`.
final class TopUnderTerminal {
    let terminal: PseudoTerminal
    let pid: pid_t
    var screen: ScreenModel
    /// Everything the program wrote, as the terminal received it.
    private(set) var output: [UInt8] = []

    init(arguments: [String], rows: Int, columns: Int) throws {
        terminal = try PseudoTerminal.open()
        PseudoTerminal.setWindowSize(terminal.peer.rawValue, rows: UInt16(rows), columns: UInt16(columns))
        screen = ScreenModel(rows: rows, columns: columns)
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        for fd in Int32(0)...2 { posix_spawn_file_actions_adddup2(&actions, terminal.peer.rawValue, fd) }
        let argv = ([stockadeBinary] + arguments).map { strdup($0) } + [nil]
        defer { for p in argv { free(p) } }
        let variables: [String] = ["TERM=xterm", "PATH=/usr/bin:/bin"]
        let env = variables.map { strdup($0) } + [nil]
        defer { for p in env { free(p) } }
        var child: pid_t = 0
        let rc = posix_spawn(&child, stockadeBinary, &actions, nil, argv, env)
        guard rc == 0 else { throw DaemonError("posix_spawn \(stockadeBinary): \(rc)") }
        pid = child
    }

    /// Reads what the program draws until `condition` holds for the
    /// screen, or `seconds` pass; returns whether it held.
    @discardableResult
    func read(for seconds: Double, until condition: (ScreenModel) -> Bool) -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            if condition(screen) { return true }
            let left = deadline.timeIntervalSinceNow
            guard left > 0 else { return false }
            var fds = [pollfd(fd: terminal.master.rawValue, events: Int16(POLLIN), revents: 0)]
            guard poll(&fds, 1, Int32(min(left, 0.2) * 1000) + 1) > 0 else { continue }
            let n = chunk.withUnsafeMutableBytes { Glibc.read(terminal.master.rawValue, $0.baseAddress, $0.count) }
            guard n > 0 else { return condition(screen) }
            output += chunk[0..<n]
            screen.feed(Array(chunk[0..<n]))
        }
    }

    /// Waits for the program's exit (reading its last output meanwhile).
    func wait(seconds: Double) -> Int32? {
        let deadline = Date().addingTimeInterval(seconds)
        var status: Int32 = 0
        while Date() < deadline {
            read(for: 0.1) { _ in false }
            if waitpid(pid, &status, WNOHANG) == pid { return status }
        }
        return nil
    }

    func close() {
        var status: Int32 = 0
        if waitpid(pid, &status, WNOHANG) == 0 {
            kill(pid, SIGKILL)
            waitpid(pid, &status, 0)
        }
        try? terminal.master.close()
        try? terminal.peer.close()
    }
}

/// A canned stand-in for the daemon's API: the state of a real daemon
/// (pids, memory, uptimes) differs on every run, and an exact frame needs
/// fixed numbers. It answers GET /v1/tenants and each tenant's workers with
/// JSON in the daemon's own format, and 401 to any other token.
final class CannedAPI: @unchecked Sendable {
    let path: String
    private let listener: Int32
    private let done = DispatchSemaphore(value: 0)

    init(path: String, token: String, answers: [String: String]) throws {
        self.path = path
        listener = try listenUnix(path)
        let fd = listener
        Thread.detachNewThread { [done] in
            while true {
                let c = accept(fd, nil, nil)
                if c < 0 {
                    if errno == EINTR { continue }
                    break
                }
                var request: [UInt8] = []
                var byte = [UInt8](repeating: 0, count: 4096)
                while request.firstRange(of: [13, 10, 13, 10]) == nil {
                    let n = byte.withUnsafeMutableBytes { recv(c, $0.baseAddress, $0.count, 0) }
                    guard n > 0 else { break }
                    request += byte[0..<n]
                }
                let head = String(decoding: request, as: UTF8.self)
                let target = head.split(separator: " ").dropFirst().first.map(String.init) ?? ""
                let authorized = head.contains("\r\nAuthorization: Bearer \(token)\r\n")
                let (status, body) = !authorized ? ("401 Unauthorized", #"{"error":"unauthenticated","message":"the token is not valid for this connection"}"#)
                    : answers[target].map { ("200 OK", $0) } ?? ("404 Not Found", #"{"error":"not-found","message":"no such endpoint"}"#)
                let answer = "HTTP/1.1 \(status)\r\nContent-Type: application/json\r\nContent-Length: \(body.utf8.count)\r\nConnection: close\r\n\r\n\(body)"
                _ = Array(answer.utf8).withUnsafeBytes { send(c, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                Glibc.close(c)
            }
            done.signal()
        }
    }

    func close() {
        shutdown(listener, Int32(SHUT_RDWR))
        done.wait()
        Glibc.close(listener)
    }
}

/// Runs `stockade` with `arguments`, standard output and error into pipes;
/// returns its exit status and both outputs.
private func runStockade(_ arguments: [String], environment: [String] = []) throws -> (status: Int32, stdout: String, stderr: String) {
    let dir = try Fixture.makeDirectory()
    defer { Fixture.removeDirectory(dir) }
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
    posix_spawn_file_actions_addopen(&actions, 1, dir + "/out", O_WRONLY | O_CREAT | O_TRUNC, 0o600)
    posix_spawn_file_actions_addopen(&actions, 2, dir + "/err", O_WRONLY | O_CREAT | O_TRUNC, 0o600)
    let argv = ([stockadeBinary] + arguments).map { strdup($0) } + [nil]
    defer { for p in argv { free(p) } }
    let env = (["PATH=/usr/bin:/bin"] + environment).map { strdup($0) } + [nil]
    defer { for p in env { free(p) } }
    var pid: pid_t = 0
    let rc = posix_spawn(&pid, stockadeBinary, &actions, nil, argv, env)
    guard rc == 0 else { throw DaemonError("posix_spawn \(stockadeBinary): \(rc)") }
    var status: Int32 = 0
    waitpid(pid, &status, 0)
    let out = (try? String(contentsOfFile: dir + "/out", encoding: .utf8)) ?? ""
    let err = (try? String(contentsOfFile: dir + "/err", encoding: .utf8)) ?? ""
    return ((status >> 8) & 0xFF, out, err)
}

@Suite(.serialized)
struct TopTests {
    /// A known state: two tenants, one with workers that report denials
    /// (3 and 0) and a budget, one without either, some extra fields the
    /// view does not use.
    static let tenants = #"""
        {"tenants":[
         {"name":"alpha","state":"serving","role":"viewer","workersMin":1,"workersMax":2,"starting":0,"idle":1,"busy":1,
          "queued":3,"queueLimit":64,"served":120,"failed":2,"workerExits":1,"oomKills":1,"seccompKills":0,
          "usage":{"cpuUserSeconds":1.5,"cpuSystemSeconds":0.5,"throttledSeconds":1.3,"memoryPeakBytes":50331648,"pidsPeak":9,
                   "budgetMemoryMaxBytes":1073741824,"budgetCPUs":2},"workerHostIDs":{}},
         {"name":"beta","state":"draining","role":"viewer","workersMin":2,"workersMax":3,"starting":1,"idle":0,"busy":1,
          "queued":0,"queueLimit":8,"served":5,"failed":0,"workerExits":0,"oomKills":0,"seccompKills":0,
          "usage":{"cpuUserSeconds":0,"cpuSystemSeconds":0,"throttledSeconds":0,"memoryPeakBytes":0,"pidsPeak":0},"workerHostIDs":{}}
        ]}
        """#
    static let alphaWorkers = #"""
        {"workers":[
         {"id":"alpha-1","tenant":"alpha","state":"idle","pid":4242,"uptimeSeconds":60,"requests":70,"errors":0,"lastLatencyMs":2,"meanLatencyMs":3,
          "usage":{"memoryPeakBytes":50331648,"cpuUserMicros":1000000,"cpuSystemMicros":250000,"throttledMicros":300000,"oomKills":0},
          "denials":3,"denialsByCall":{"ptrace":2,"socket":1}},
         {"id":"alpha-3","tenant":"alpha","state":"busy","pid":4300,"uptimeSeconds":5,"requests":30,"errors":2,"meanLatencyMs":5,
          "usage":{"memoryPeakBytes":1572864,"cpuUserMicros":10,"throttledMicros":0,"oomKills":0},"denials":0,"denialsByCall":{}}
        ]}
        """#
    static let betaWorkers = #"""
        {"workers":[{"id":"beta-2","tenant":"beta","state":"busy","pid":5000,"uptimeSeconds":1.5,"requests":5,"errors":0}]}
        """#

    @Test func onceFrameForAKnownState() throws {
        let dir = try Fixture.makeDirectory()
        defer { Fixture.removeDirectory(dir) }
        let api = try CannedAPI(path: dir + "/api.sock", token: "viewer-token", answers: [
            "/v1/tenants": Self.tenants, "/v1/tenants/alpha/workers": Self.alphaWorkers, "/v1/tenants/beta/workers": Self.betaWorkers,
        ])
        defer { api.close() }
        try "viewer-token\n".write(toFile: dir + "/token", atomically: true, encoding: .utf8)

        let run = try runStockade(["top", "--once", "--socket", api.path, "--token-file", dir + "/token"])
        #expect(run.status == 0, "\(run.stderr)")
        let expected = """
            stockade top: stockaded at \(api.path)
            2 tenants, 3 workers, 2 busy, 3 queued; rates (REQ/S, CPU) need a second frame: - until then

            TENANT/WORKER  STATE     WORKERS    QUEUE  REQ/S  LAT MS  CPU/BUDGET  MEM PEAK/BUDGET  OOM  THROTTLED  DENIALS
            alpha          serving   2 (1-2)    3/64   -      3.6     -/2.00      48M/1G           1    1.3s       3
              alpha-1      idle      pid 4242          -      3.0     -           48M              0    0.3s       3
              alpha-3      busy      pid 4300          -      5.0     -           1.5M             0    0.0s       0
            beta           draining  1+1 (2-3)  0/8    -      -       -           0B               0    0.0s       -
              beta-2       busy      pid 5000          -      -       -           -                -    -          -

            """
        #expect(run.stdout == expected, "\n\(run.stdout)")

        // The same with the token from the environment; a wrong token is
        // refused with the daemon's message and a status of its own.
        let viaEnvironment = try runStockade(["top", "--once", "--socket", api.path], environment: ["STOCKADE_TOKEN=viewer-token"])
        #expect(viaEnvironment.stdout == expected)
        let refused = try runStockade(["top", "--once", "--socket", api.path], environment: ["STOCKADE_TOKEN=guess"])
        #expect(refused.status == 77)
        #expect(refused.stderr.contains("answered 401: the token is not valid for this connection"), "\(refused.stderr)")
        #expect(refused.stdout.isEmpty)
        // No daemon there: one line that says where.
        let absent = try runStockade(["top", "--once", "--socket", dir + "/nothing.sock"], environment: ["STOCKADE_TOKEN=viewer-token"])
        #expect(absent.status == 69)
        #expect(absent.stderr.contains("cannot connect to \(dir)/nothing.sock"), "\(absent.stderr)")
    }

    /// Live: a daemon with two tenants in a known shape; top on a 30 x 150
    /// terminal shows both with their worker counts, pools and budgets and
    /// one row per worker; a second frame has rates; narrowed to 60 columns
    /// it fits; Ctrl-C (SIGINT) leaves the alternate screen and gives the
    /// terminal its modes back.
    @Test(.enabled(if: Fixture.hasVenv, "needs the venv (make venv) for the jailed Python worker"))
    func liveViewUnderAPseudoTerminal() throws {
        let d = try RunningDaemon(tenants: [
            .init(name: "alpha", min: 1, max: 2, extra: "[tenant.alpha.budget]\nmemory_max = \"1G\"\ncpu = 2",
                  access: ["viewer": "viewer", "alice": "invoker"]),
            .init(name: "beta", min: 2, max: 3, access: ["viewer": "viewer"]),
        ], cgroupBase: "stockaded-top-test")
        defer { d.close() }
        #expect(d.waitUntil(60) {
            d.daemon.pool("alpha")?.workers().filter { $0.state == "idle" }.count == 1
                && d.daemon.pool("beta")?.workers().filter { $0.state == "idle" }.count == 2
        })
        #expect(try d.client("alice").infer("alpha", "echo:hello").status == 200)
        try Fixture.tokens["viewer"]!.write(toFile: d.dir + "/viewer-token", atomically: true, encoding: .utf8)

        let top = try TopUnderTerminal(arguments: ["top", "--socket", d.socket, "--token-file", d.dir + "/viewer-token", "--interval", "0.5"],
                                       rows: 30, columns: 150)
        defer { top.close() }
        func row(_ name: String, _ s: ScreenModel) -> String? { s.lines.first { $0.hasPrefix(name + " ") } }
        let shown = top.read(for: 30) { s in
            row("alpha", s)?.contains("1 (1-2)") == true && row("beta", s)?.contains("2 (2-3)") == true
                && s.lines.contains { $0.hasPrefix("  alpha-") } && s.lines.filter { $0.hasPrefix("  beta-") }.count == 2
        }
        #expect(shown, "screen:\n\(top.screen.text)")
        #expect(top.screen.alternate)
        #expect(!top.screen.cursorVisible)
        #expect(!top.screen.overflowed)
        let alpha = row("alpha", top.screen) ?? ""
        #expect(alpha.contains("serving"), "\(alpha)")
        #expect(alpha.contains("/1G"), "the memory budget: \(alpha)")
        #expect(alpha.contains("/2.00"), "the CPU budget: \(alpha)")
        #expect(alpha.contains("0/64"), "the queue: \(alpha)")
        #expect(top.screen.lines[0].contains("stockaded at \(d.socket)"))
        #expect(top.screen.lines[1].hasPrefix("2 tenants, 3 workers"), "\(top.screen.lines[1])")
        // The next frame has rates: the summary gives requests per second.
        #expect(top.read(for: 10) { $0.lines[1].hasSuffix(" req/s") }, "screen:\n\(top.screen.text)")

        // A narrower window (the kernel signals the terminal's foreground
        // group; the program is not in one here, so the test signals it).
        PseudoTerminal.setWindowSize(top.terminal.peer.rawValue, rows: 20, columns: 60)
        top.screen.resize(rows: 20, columns: 60)
        kill(top.pid, SIGWINCH)
        // Frames drawn for the old width may still be in the terminal's
        // buffer: read past them (frames come every 0.5 s), then judge
        // the frames drawn since.
        top.read(for: 1.5) { _ in false }
        top.screen.overflowed = false
        top.read(for: 1.2) { _ in false }
        let narrow = top.read(for: 10) { s in row("alpha", s) != nil && row("beta", s) != nil && s.lines[0].contains("stockade top") }
        #expect(narrow, "screen:\n\(top.screen.text)")
        #expect(!top.screen.overflowed, "a line was wider than 60 columns:\n\(top.screen.text)")
        #expect(row("beta", top.screen)?.contains("2 (2-3)") == true, "screen:\n\(top.screen.text)")

        kill(top.pid, SIGINT)
        let status = top.wait(seconds: 10)
        #expect(status == 0, "exit status \(String(describing: status))")
        let tail = String(decoding: top.output.suffix(16), as: UTF8.self)
        #expect(tail.hasSuffix("\u{1B}[?25h\u{1B}[?1049l"), "the last bytes: \(tail.debugDescription)")
        var modes = termios()
        #expect(tcgetattr(top.terminal.peer.rawValue, &modes) == 0)
        #expect(modes.c_lflag & tcflag_t(ICANON) != 0 && modes.c_lflag & tcflag_t(ECHO) != 0, "line editing and echo are back")
    }

    @Test func liveViewNeedsATerminal() throws {
        let run = try runStockade(["top", "--socket", "/nonexistent.sock"])
        #expect(run.status == 64)
        #expect(run.stderr.contains("standard output is not a terminal; use --once"), "\(run.stderr)")
    }
}
