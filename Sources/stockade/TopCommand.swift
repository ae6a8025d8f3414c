import StockadeConfig
import ArgumentParser
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import StockadeSystem
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

struct TopCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "top",
        abstract: "A live view of a running stockaded: tenants, workers, load and budgets.",
        discussion: """
            Reads the daemon's API on its unix socket with a client token (a viewer \
            role is enough; only the tenants the token may view are shown) and redraws \
            in place every --interval seconds, on the terminal's alternate screen, until \
            q or Ctrl-C; the terminal is restored on the way out.

            Per tenant and per worker: state, workers (live, +starting, and the pool's \
            min-max), queue (waiting/limit), REQ/S, LAT MS (mean worker latency of the \
            requests answered since the last frame, or over the workers' lives when \
            there is none), CPU in cores against the budget, the memory peak against \
            the budget, OOM kills, CPU time throttled, and denied system calls (- where \
            the daemon does not count them). Rates come from the difference between two \
            frames: the first frame, and --once, show - for them.

            The token is read from --token-file, or from $STOCKADE_TOKEN.

            Examples:
              stockade top --socket /run/stockade/stockaded.sock --token-file ~/.stockade-token
              stockade top --once --socket api.sock --token-file token | grep alpha
            """
    )

    @Option(name: .long, help: ArgumentHelp("The daemon's API socket (default: $STOCKADE_SOCKET, else the packaged path).", valueName: "path"))
    var socket: String?

    @Option(name: .customLong("token-file"), help: ArgumentHelp("A file holding the client's bearer token.", valueName: "file"))
    var tokenFile: String?

    @Option(name: .long, help: ArgumentHelp("Seconds between frames.", valueName: "seconds"))
    var interval: Double = 2

    @Flag(name: .long, help: "Print one frame to standard output and exit (no terminal control, nothing redrawn).")
    var once = false

    static let defaultSocket = "/run/stockade/stockaded.sock"

    func validate() throws {
        guard interval >= 0.1, interval <= 3600 else { throw ValidationError("--interval must be between 0.1 and 3600 seconds") }
    }

    func run() throws {
        let path = socket ?? ProcessInfo.processInfo.environment["STOCKADE_SOCKET"] ?? Self.defaultSocket
        let api = DaemonAPI(socket: path, token: try token())
        if once {
            let sample = try api.sample()
            let width = isatty(1) == 1 ? Terminal.size(1)?.columns : nil
            let lines = TopView.render(sample, previous: nil, title: "stockade top: stockaded at \(path)", width: width, height: nil)
            Terminal.write(1, lines.map { $0 + "\n" }.joined())
            return
        }
        guard isatty(1) == 1 else {
            throw StockadeFailure(message: "top: standard output is not a terminal; use --once for a single frame", status: 64)
        }
        try live(api, path: path)
    }

    private func token() throws -> String? {
        if let tokenFile {
            guard let text = try? String(contentsOfFile: tokenFile, encoding: .utf8) else {
                throw StockadeFailure(message: "top: cannot read the token file \(tokenFile)", status: 66)
            }
            let token = text.trimmingWhitespace()
            guard !token.isEmpty else { throw StockadeFailure(message: "top: the token file \(tokenFile) is empty", status: 65) }
            return token
        }
        return ProcessInfo.processInfo.environment["STOCKADE_TOKEN"]
    }

    /// Redraws until q, Ctrl-C, SIGTERM or SIGHUP; a window size change
    /// redraws at once. A daemon that cannot be read is said on screen and
    /// tried again at the next frame; a refused token ends the view.
    private func live(_ api: DaemonAPI, path: String) throws {
        let screen = try Terminal.enter(1)
        defer { screen.leave() }
        let signals = try SignalPipe(SIGINT, SIGTERM, SIGHUP, SIGWINCH)
        let clock = ContinuousClock()
        let origin = clock.now
        var previous: TopSample?
        var last: TopSample?
        var problem: String?
        var due = origin
        func title() -> String {
            var t = time(nil)
            var parts = tm()
            localtime_r(&t, &parts)
            let hms = [parts.tm_hour, parts.tm_min, parts.tm_sec].map { $0 < 10 ? "0\($0)" : "\($0)" }.joined(separator: ":")
            return "stockade top: stockaded at \(path), \(hms), every \(TopView.fixed(interval, interval.rounded() == interval ? 0 : 1))s (q quits)"
        }
        while true {
            if clock.now >= due {
                do {
                    let sample = try api.sample(at: (clock.now - origin).seconds)
                    previous = last
                    last = sample
                    problem = nil
                } catch let failure as StockadeFailure where failure.status == 77 {
                    throw failure
                } catch {
                    problem = "\(error)"
                }
                due = clock.now + .milliseconds(Int(interval * 1000))
            }
            let size = Terminal.size(1) ?? (rows: 24, columns: 80)
            var lines: [String]
            if let last {
                lines = TopView.render(last, previous: previous, title: title(), width: size.columns, height: size.rows)
            } else {
                lines = [title()]
            }
            if let problem {
                lines.insert(TopView.clip("cannot read the daemon: \(problem) (retrying)", to: size.columns), at: min(1, lines.count))
                lines = Array(lines.prefix(size.rows))
            }
            screen.draw(lines)
            let wait = max(0, Int(((due - clock.now).seconds * 1000).rounded(.up)))
            switch signals.wait(milliseconds: wait, input: 0) {
            case .signal(let s) where s == SIGWINCH: continue
            case .signal: return
            case .input(let bytes):
                if bytes.contains(UInt8(ascii: "q")) || bytes.contains(UInt8(ascii: "Q")) || bytes.contains(3) { return }
            case .timeout: continue
            }
        }
    }
}

extension Duration {
    fileprivate var seconds: Double { Double(components.seconds) + Double(components.attoseconds) / 1e18 }
}

/// The daemon's HTTP API on its unix socket: one connection per call.
struct DaemonAPI {
    var socket: String
    var token: String?

    /// `name` as one segment of a URL path: every byte but RFC 3986's
    /// unreserved characters percent-encoded.
    static func pathSegment(_ name: String) -> String {
        let hex = Array("0123456789ABCDEF")
        var out = ""
        for b in name.utf8 {
            switch b {
            case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
                 UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: "~"):
                out.append(Character(Unicode.Scalar(b)))
            default:
                out += "%" + String(hex[Int(b >> 4)]) + String(hex[Int(b & 15)])
            }
        }
        return out
    }

    /// Every viewable tenant with its workers.
    func sample(at time: Double = 0) throws -> TopSample {
        struct Tenants: Decodable { var tenants: [TopTenant] }
        struct Workers: Decodable { var workers: [TopWorker] }
        let tenants = try decode(Tenants.self, get("/v1/tenants")).tenants
        var out: [(TopTenant, [TopWorker])] = []
        for t in tenants {
            let name = Self.pathSegment(t.name)
            let workers = try decode(Workers.self, get("/v1/tenants/\(name)/workers")).workers
            out.append((t, workers))
        }
        return TopSample(tenants: out, takenAt: time)
    }

    private func decode<T: Decodable>(_ type: T.Type, _ body: [UInt8]) throws -> T {
        do {
            return try JSONDecoder().decode(type, from: Data(body))
        } catch {
            throw StockadeFailure(message: "top: the daemon's answer is not what this stockade understands (\(error))", status: 76)
        }
    }

    /// GET `path`: the body of a 200 answer; any other status is an error
    /// with the daemon's message (401 and 403 end the view: status 77).
    func get(_ path: String) throws -> [UInt8] {
        let fd: FileDescriptor
        do {
            fd = try UnixSocket.connect(path: socket)
        } catch {
            throw StockadeFailure(message: "top: cannot connect to \(socket): \(error)", status: 69)
        }
        defer { try? fd.close() }
        var head = "GET \(path) HTTP/1.1\r\nHost: stockaded\r\nConnection: close\r\n"
        if let token { head += "Authorization: Bearer \(token)\r\n" }
        head += "\r\n"
        do {
            try Array(head.utf8).withUnsafeBytes { try fd.sendAll($0) }
        } catch {
            throw StockadeFailure(message: "top: sending to \(socket): \(error)", status: 69)
        }
        // Answers are bounded: a tenant list or a worker list.
        let limit = 64 << 20
        var data: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = chunk.withUnsafeMutableBytes { recv(fd.rawValue, $0.baseAddress, $0.count, 0) }
            if n < 0, errno == EINTR { continue }
            guard n >= 0 else { throw StockadeFailure(message: "top: reading from \(socket): errno \(errno)", status: 69) }
            if n == 0 { break }
            data += chunk[0..<n]
            guard data.count <= limit else { throw StockadeFailure(message: "top: the daemon's answer to \(path) exceeds \(limit) bytes", status: 76) }
        }
        guard let end = data.firstRange(of: [13, 10, 13, 10]) else {
            throw StockadeFailure(message: "top: no HTTP answer from \(socket) (\(data.count) bytes)", status: 76)
        }
        let statusLine = String(decoding: data[..<end.lowerBound], as: UTF8.self).prefix { $0 != "\r" }
        let parts = statusLine.split(separator: " ")
        guard parts.count >= 2, let status = Int(parts[1]) else {
            throw StockadeFailure(message: "top: a malformed HTTP status line from \(socket): \(statusLine)", status: 76)
        }
        let body = Array(data[end.upperBound...])
        guard status == 200 else {
            struct Problem: Decodable { var message: String? }
            let message = (try? JSONDecoder().decode(Problem.self, from: Data(body)))?.message
                ?? String(decoding: body.prefix(200), as: UTF8.self)
            throw StockadeFailure(message: "top: GET \(path) was answered \(status): \(message)", status: status == 401 || status == 403 ? 77 : 69)
        }
        return body
    }
}

/// The terminal top draws on: its modes (no echo, keys read one at a time)
/// and the alternate screen, both put back by ``leave()``.
final class Terminal {
    let fd: Int32
    /// The modes of standard input (where keys are read) when it is a
    /// terminal, as they were.
    private let saved: termios?
    private var left = false

    private init(fd: Int32, saved: termios?) {
        self.fd = fd
        self.saved = saved
    }

    /// The window size of the terminal `fd`, when it is one.
    static func size(_ fd: Int32) -> (rows: Int, columns: Int)? {
        guard let s = PseudoTerminal.windowSize(fd), s.rows > 0, s.columns > 0 else { return nil }
        return (Int(s.rows), Int(s.columns))
    }

    /// Keys without echo or line editing (Ctrl-C still signals), the
    /// alternate screen on `fd`, the cursor hidden.
    static func enter(_ fd: Int32) throws -> Terminal {
        var saved: termios?
        var t = termios()
        if isatty(0) == 1 {
            guard tcgetattr(0, &t) == 0 else {
                throw StockadeFailure(message: "top: cannot read the terminal's modes: \(String(cString: strerror(errno)))", status: 71)
            }
            saved = t
            var raw = t
            raw.c_lflag &= ~tcflag_t(ICANON | ECHO)
            _ = tcsetattr(0, TCSANOW, &raw)
        }
        let terminal = Terminal(fd: fd, saved: saved)
        Terminal.write(fd, "\u{1B}[?1049h\u{1B}[?25l\u{1B}[H\u{1B}[2J")
        return terminal
    }

    /// Cursor home, each line over the old one (cleared to its end), the
    /// rest of the screen cleared: one write per frame, no flicker.
    func draw(_ lines: [String]) {
        Terminal.write(fd, "\u{1B}[H" + lines.joined(separator: "\u{1B}[K\r\n") + "\u{1B}[K\u{1B}[J")
    }

    /// Leaves the alternate screen, shows the cursor, restores the modes.
    func leave() {
        guard !left else { return }
        left = true
        Terminal.write(fd, "\u{1B}[?25h\u{1B}[?1049l")
        if var t = saved { while tcsetattr(0, TCSADRAIN, &t) != 0 && errno == EINTR {} }
    }

    static func write(_ fd: Int32, _ text: String) {
        let bytes = Array(text.utf8)
        var off = 0
        while off < bytes.count {
            let n = bytes[off...].withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
            if n < 0, errno == EINTR { continue }
            guard n > 0 else { return }
            off += n
        }
    }
}

/// The write end of the signal pipe, for the handler (set once, before
/// any handler is installed).
nonisolated(unsafe) private var signalPipeWrite: Int32 = -1

/// Signals turned into bytes on a pipe (the handler only writes the
/// signal's number), so the frame loop waits for a signal, a key or its
/// next frame in one poll.
final class SignalPipe {
    private let read: Int32

    init(_ signals: Int32...) throws {
        let ends: PipeEnds
        do { ends = try PipeEnds.make() } catch {
            throw StockadeFailure(message: "top: pipe: \(error)", status: 71)
        }
        // The handler must never block: a full pipe drops the byte (a
        // signal of the same kind is already waiting there).
        _ = fcntl(ends.write.rawValue, F_SETFL, O_NONBLOCK)
        read = ends.read.rawValue
        signalPipeWrite = ends.write.rawValue
        // A parent may have started us with these signals blocked (the
        // mask is inherited): unblocked here, or Ctrl-C would never arrive.
        var unblock = sigset_t()
        sigemptyset(&unblock)
        for s in signals { sigaddset(&unblock, s) }
        pthread_sigmask(SIG_UNBLOCK, &unblock, nil)
        for s in signals {
            var action = sigaction()
            action.__sigaction_handler.sa_handler = { number in
                var byte = UInt8(truncatingIfNeeded: number)
                _ = Glibc.write(signalPipeWrite, &byte, 1)
            }
            action.sa_flags = SA_RESTART
            sigemptyset(&action.sa_mask)
            sigaction(s, &action, nil)
        }
    }

    enum Event { case signal(Int32), input([UInt8]), timeout }

    /// Waits up to `milliseconds` for a signal or for bytes on `input`.
    func wait(milliseconds: Int, input: Int32) -> Event {
        var fds = [pollfd(fd: read, events: Int16(POLLIN), revents: 0), pollfd(fd: input, events: Int16(POLLIN), revents: 0)]
        let n = poll(&fds, isatty(input) == 1 ? 2 : 1, Int32(clamping: milliseconds))
        guard n > 0 else { return .timeout }
        if fds[0].revents != 0 {
            var byte: UInt8 = 0
            if Glibc.read(read, &byte, 1) == 1 { return .signal(Int32(byte)) }
        }
        if fds[1].revents & Int16(POLLHUP | POLLERR | POLLNVAL) != 0 && fds[1].revents & Int16(POLLIN) == 0 {
            return .signal(SIGHUP)
        }
        if fds[1].revents & Int16(POLLIN) != 0 {
            var buffer = [UInt8](repeating: 0, count: 64)
            let got = buffer.withUnsafeMutableBytes { Glibc.read(input, $0.baseAddress, $0.count) }
            if got > 0 { return .input(Array(buffer[0..<got])) }
        }
        return .timeout
    }
}
