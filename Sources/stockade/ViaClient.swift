import StockadeJail
import StockadeSystem
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// `stockade run --via SOCKET [--profile POOL] [--setenv N=V]... -- CMD...`:
/// runs CMD in a jail stockaded built before it was asked for (see
/// docs/stockaded.md, "Jails built ahead"). The caller's stdin, stdout and
/// stderr go to the jail as they are (a terminal never: its output is
/// relayed through a pipe, its input is /dev/null), with argv and this
/// process's environment (the profile's `pass` names are taken from it).
/// SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 are forwarded; the
/// exit status is the command's, as with `stockade run`.
/// The write end of the pipe `ViaClient.startForwarding`'s signal handler
/// writes to: set once, before the handler is installed.
nonisolated(unsafe) private var viaSignalPipe: Int32 = -1

enum ViaClient {
    struct Options {
        var socket: String
        var pool = ""
        var setenv: [String] = []
        var command: [String] = []
    }

    static let forwarded: [Int32] = [SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2]

    /// Catches the forwarded signals from here on: the handler puts each
    /// one's number on a pipe whose read end the wait loop of `run` polls
    /// beside the connection, and the loop sends it to the daemon, which
    /// passes it to the jail's PID 1. No thread: starting one is a good part
    /// of this short-lived client's time. Nil (with a warning) when no pipe
    /// could be made.
    static func startForwarding() -> FileDescriptor? {
        guard let pipe = try? PipeEnds.make() else {
            printError("stockade: warning: signals will not reach the jail (pipe: \(errnoName(errno)))")
            return nil
        }
        // Neither end blocks: a handler never waits on a full pipe (a signal
        // already pending there is sent anyway), the loop reads what is there.
        _ = fcntl(pipe.read.rawValue, F_SETFL, O_NONBLOCK)
        _ = fcntl(pipe.write.rawValue, F_SETFL, O_NONBLOCK)
        viaSignalPipe = pipe.write.rawValue
        var action = sigaction()
        action.__sigaction_handler.sa_handler = { signal in
            let saved = errno
            var number = UInt8(truncatingIfNeeded: signal)
            _ = write(viaSignalPipe, &number, 1)
            errno = saved
        }
        // A send or receive the signal interrupts goes on; poll returns EINTR.
        action.sa_flags = SA_RESTART
        sigemptyset(&action.sa_mask)
        var set = sigset_t()
        sigemptyset(&set)
        for s in forwarded {
            sigaction(s, &action, nil)
            sigaddset(&set, s)
        }
        // A caller may start this client with them blocked (the mask is
        // inherited): a blocked signal would never reach the handler.
        pthread_sigmask(SIG_UNBLOCK, &set, nil)
        return pipe.read
    }

    /// Sends each signal number waiting on `pipe` to the daemon on `conn`.
    static func forwardPending(_ pipe: FileDescriptor, to conn: FileDescriptor) {
        var numbers = [UInt8](repeating: 0, count: 64)
        let n = numbers.withUnsafeMutableBytes { read(pipe.rawValue, $0.baseAddress, $0.count) }
        guard n > 0 else { return }
        for signal in numbers[..<n] {
            let message = ViaWire.encode(magic: ViaWire.signalMagic, [[String(signal)]])
            // The connection closes only when this process exits; a failed
            // send means the daemon is gone, and its answer (or none) ends the loop.
            _ = message.withUnsafeBytes { send(conn.rawValue, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        }
    }

    /// `run`'s options that take a value (the word after them is not an
    /// option). A switch, not a Set: every `stockade run` asks this first,
    /// and a Set<String> costs its first user a walk of the image's
    /// protocol conformances (String: Hashable) at run time.
    static func isValued(_ option: String) -> Bool {
        switch option {
        case "-p", "--profile", "--via", "--setenv", "--report", "--ro-bind", "--bind",
             "--time-limit", "--tenants", "--tenant", "--cgroup-base": true
        default: false
        }
    }

    /// Whether `run`'s arguments ask for a jail built ahead (`--via` among
    /// the options, before the command).
    static func wanted(_ args: [String]) -> Bool {
        var i = 0
        while i < args.count {
            let a = args[i]
            if a == "--" || !a.hasPrefix("-") { return false }
            if a == "--via" || a.hasPrefix("--via=") { return true }
            i += isValued(a) ? 2 : 1
        }
        return false
    }

    /// Reads `run --via`'s own options; a mistake is one line and status 64.
    static func parse(_ args: [String]) throws(StockadeFailure) -> Options {
        var socket: String?
        var options = Options(socket: "")
        var i = 0
        func value(_ name: String) throws(StockadeFailure) -> String {
            if let eq = args[i].firstIndex(of: "=") { return String(args[i][args[i].index(after: eq)...]) }
            guard i + 1 < args.count else { throw StockadeFailure(message: "\(name) needs a value", status: 64) }
            i += 1
            return args[i]
        }
        while i < args.count, args[i] != "--", args[i].hasPrefix("-") {
            let name = String(args[i].split(separator: "=", maxSplits: 1)[0])
            switch name {
            case "--via": socket = try value(name)
            case "--profile", "-p": options.pool = try value(name)
            case "--setenv":
                let pair = try value(name)
                guard let eq = pair.firstIndex(of: "="), eq != pair.startIndex else {
                    throw StockadeFailure(message: "--setenv takes name=value, got \"\(pair)\"", status: 64)
                }
                options.setenv.append(pair)
            default:
                throw StockadeFailure(message: "run --via takes --profile (a pool name) and --setenv; \(name) is for a jail built on the spot (stockade run without --via)", status: 64)
            }
            i += 1
        }
        if i < args.count, args[i] == "--" { i += 1 }
        options.command = Array(args[i...])
        guard let socket, !socket.isEmpty else { throw StockadeFailure(message: "--via needs the daemon's [via] socket", status: 64) }
        guard !options.command.isEmpty else {
            throw StockadeFailure(message: "give the command to run after --, e.g. stockade run --via \(socket) -- /bin/true", status: 64)
        }
        options.socket = socket
        return options
    }

    /// Runs the command and returns its status (the exit code, 128 +
    /// signal, or 125 with a message when no jail ran it).
    static func run(_ o: Options) throws(StockadeFailure) -> Int32 {
        let conn: FileDescriptor
        do {
            conn = try ViaJail.connect(path: o.socket)
        } catch {
            throw StockadeFailure(message: "cannot connect to \(o.socket): \(errnoName(error.rawValue)) (is stockaded running with a [via] section?)", status: 125)
        }
        defer { try? conn.close() }
        // The caller's stdio, except a terminal: its output comes back
        // through a pipe relayed here, its input is /dev/null.
        var sent: [FileDescriptor] = []
        var relays: [(read: FileDescriptor, to: Int32)] = []
        defer { for fd in sent { try? fd.close() } }
        for n: Int32 in 0...2 {
            if fcntl(n, F_GETFD) < 0 || isatty(n) == 1 && n == 0 {
                let null = open("/dev/null", O_RDWR | O_CLOEXEC)
                guard null >= 0 else { throw StockadeFailure(message: "open /dev/null: \(errnoName(errno))", status: 125) }
                sent.append(FileDescriptor(rawValue: null))
            } else if isatty(n) == 1 {
                guard let pipe = try? PipeEnds.make() else { throw StockadeFailure(message: "pipe: \(errnoName(errno))", status: 125) }
                sent.append(pipe.write)
                relays.append((pipe.read, n))
            } else {
                guard let dup = Optional(fcntl(n, F_DUPFD_CLOEXEC, 3)), dup >= 0 else {
                    throw StockadeFailure(message: "dup fd \(n): \(errnoName(errno))", status: 125)
                }
                sent.append(FileDescriptor(rawValue: dup))
            }
        }
        defer { for r in relays { try? r.read.close() } }
        var environment: [String] = []
        var e = environ
        while let p = e.pointee {
            environment.append(String(cString: p))
            e += 1
        }
        let request = ViaWire.encode(magic: ViaWire.requestMagic, [[o.pool], o.command, environment, o.setenv])
        guard request.count <= ViaWire.maxMessage else {
            throw StockadeFailure(message: "the command and environment are \(request.count) bytes; run --via takes at most \(ViaWire.maxMessage)", status: 125)
        }
        // From here on the forwarded signals are caught; the loop below sends
        // each to the daemon.
        let signals = startForwarding()
        defer { try? signals?.close() }
        do {
            try request.withUnsafeBytes { try conn.sendAll($0, passing: sent) }
        } catch {
            // The daemon answers a caller it refuses by its uid alone and
            // closes before reading: its answer says why.
            var buffer = [UInt8](repeating: 0, count: 4096)
            if let got = try? buffer.withUnsafeMutableBytes({ try conn.receiveMessage(into: $0, maxDescriptors: 0) }), got.byteCount > 0,
               let lists = ViaWire.decode(buffer[..<got.byteCount], magic: ViaWire.answerMagic, lists: 1), lists[0].count == 3, lists[0][0] == "error" {
                throw StockadeFailure(message: lists[0][1], status: 125)
            }
            let why = (error as? Errno).map { errnoName($0.rawValue) } ?? "\(error)"
            throw StockadeFailure(message: "cannot send the command to \(o.socket): \(why)", status: 125)
        }
        for fd in sent { try? fd.close() }
        sent = []
        var buffer = [UInt8](repeating: 0, count: 64 * 1024)
        var open = relays.map { _ in true }
        var answer: [String]?
        var drainUntil: ContinuousClock.Instant?
        while true {
            if answer != nil && (!open.contains(true) || ContinuousClock.now >= drainUntil!) { break }
            var entries = [pollfd(fd: answer == nil ? conn.rawValue : -1, events: Int16(POLLIN), revents: 0),
                           pollfd(fd: answer == nil ? signals?.rawValue ?? -1 : -1, events: Int16(POLLIN), revents: 0)]
            for (i, r) in relays.enumerated() {
                entries.append(pollfd(fd: open[i] ? r.read.rawValue : -1, events: Int16(POLLIN), revents: 0))
            }
            let timeout: Int32 = drainUntil.map { Jail.pollTimeout($0 - .now) } ?? -1
            if poll(&entries, nfds_t(entries.count), timeout) < 0 && errno != EINTR { break }
            if let signals, entries[1].revents != 0 { forwardPending(signals, to: conn) }
            for (i, r) in relays.enumerated() where open[i] && entries[2 + i].revents != 0 {
                let n = buffer.withUnsafeMutableBytes { read(r.read.rawValue, $0.baseAddress, $0.count) }
                if n <= 0 { open[i] = false; continue }
                _ = buffer.withUnsafeBytes { try? FileDescriptor(rawValue: r.to).writeAll(UnsafeRawBufferPointer(rebasing: $0[..<n])) }
            }
            if entries[0].revents != 0 {
                var got = try? buffer.withUnsafeMutableBytes { try conn.receiveMessage(into: $0, maxDescriptors: 0) }
                // A daemon that refuses a caller by its uid closes before
                // reading the request; the kernel reports that once as
                // ECONNRESET, ahead of the answer still queued: read again.
                if got == nil { got = try? buffer.withUnsafeMutableBytes { try conn.receiveMessage(into: $0, maxDescriptors: 0) } }
                guard let got, got.byteCount > 0,
                      let lists = ViaWire.decode(buffer[..<got.byteCount], magic: ViaWire.answerMagic, lists: 1),
                      lists[0].count == 3 else {
                    throw StockadeFailure(message: "the daemon closed the connection without the command's status", status: 125)
                }
                answer = lists[0]
                // The jail is gone: what it wrote is in the pipes; read it out.
                drainUntil = .now + .seconds(1)
            }
        }
        guard let answer else { throw StockadeFailure(message: "the daemon closed the connection without the command's status", status: 125) }
        switch answer[0] {
        case "exit":
            if answer[2] == JailExit.Reason.timeLimit.rawValue {
                printError("stockade: time limit reached; the jail was killed")
            }
            return Int32(answer[1]) ?? 125
        default:
            throw StockadeFailure(message: answer[1], status: Int32(answer[2]) ?? 125)
        }
    }
}
