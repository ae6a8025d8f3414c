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
enum ViaClient {
    struct Options {
        var socket: String
        var pool = ""
        var setenv: [String] = []
        var command: [String] = []
    }

    static let forwarded: [Int32] = [SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2]

    /// Blocks the forwarded signals in this thread (and so in every thread
    /// made after) and starts a thread that waits for them and sends each
    /// to the daemon on `conn`, which passes it to the jail's PID 1.
    static func startForwarding(_ conn: FileDescriptor) {
        var set = sigset_t()
        sigemptyset(&set)
        for s in forwarded { sigaddset(&set, s) }
        pthread_sigmask(SIG_BLOCK, &set, nil)
        let box = UnsafeMutablePointer<Int32>.allocate(capacity: 1)
        box.pointee = conn.rawValue
        var thread = pthread_t()
        let rc = pthread_create(&thread, nil, { arg in
            let fd = arg!.assumingMemoryBound(to: Int32.self).pointee
            var set = sigset_t()
            sigemptyset(&set)
            for s in ViaClient.forwarded { sigaddset(&set, s) }
            while true {
                var sig: Int32 = 0
                guard sigwait(&set, &sig) == 0 else { continue }
                let message = ViaWire.encode(magic: ViaWire.signalMagic, [[String(sig)]])
                // The connection closes only when this process exits.
                let sent = message.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                if sent < 0 && errno != EINTR && errno != EAGAIN { return nil }
            }
        }, box)
        if rc == 0 {
            pthread_detach(thread)
        } else {
            printError("stockade: warning: signals will not reach the jail (pthread_create: \(errnoName(rc)))")
        }
    }

    /// `run`'s options that take a value (the word after them is not an option).
    static let valued: Set<String> = ["-p", "--profile", "--via", "--setenv", "--report", "--ro-bind", "--bind",
                                      "--time-limit", "--tenants", "--tenant", "--cgroup-base"]

    /// Whether `run`'s arguments ask for a jail built ahead (`--via` among
    /// the options, before the command).
    static func wanted(_ args: [String]) -> Bool {
        var i = 0
        while i < args.count {
            let a = args[i]
            if a == "--" || !a.hasPrefix("-") { return false }
            if a == "--via" || a.hasPrefix("--via=") { return true }
            i += valued.contains(a) ? 2 : 1
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
        // From here on the forwarded signals are blocked and taken by a
        // thread (sigwait) that sends each to the daemon.
        startForwarding(conn)
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
                           pollfd(fd: -1, events: 0, revents: 0)]
            for (i, r) in relays.enumerated() {
                entries.append(pollfd(fd: open[i] ? r.read.rawValue : -1, events: Int16(POLLIN), revents: 0))
            }
            let timeout: Int32 = drainUntil.map { Jail.pollTimeout($0 - .now) } ?? -1
            if poll(&entries, nfds_t(entries.count), timeout) < 0 && errno != EINTR { break }
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
