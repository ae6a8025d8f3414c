// stockaded under systemd: the listening socket from socket activation
// (LISTEN_FDS), readiness, stopping and watchdog notifications
// (NOTIFY_SOCKET), and log lines with syslog priorities for journald
// (JOURNAL_STREAM). Without those variables nothing here does anything.
//
// The formats are systemd's documented interfaces: sd_listen_fds(3),
// sd_notify(3), systemd.exec(5) on JOURNAL_STREAM, sd-daemon(3) on the
// "<N>" priority prefixes.
public import Logging
public import ServiceLifecycle
import Foundation
import NIOCore
import NIOPosix
#if canImport(Glibc)
import Glibc
#endif

/// The listening socket systemd passed (LISTEN_FDS, LISTEN_PID), taken once
/// per process.
public enum SystemdSocket {
    /// The first passed descriptor (SD_LISTEN_FDS_START).
    static let firstDescriptor: Int32 = 3

    /// The inherited listening socket, nil when the daemon was not socket
    /// activated; an error when what was passed cannot be the API socket.
    /// Reading it unsets LISTEN_PID, LISTEN_FDS and LISTEN_FDNAMES and marks
    /// the passed descriptors close-on-exec, so no jail can inherit them.
    public static let inherited: Result<Inherited?, DaemonError> = take()

    public struct Inherited: Sendable {
        /// The descriptor systemd passed; it stays open for the life of the
        /// process (systemd holds the socket; the daemon never unlinks it).
        public var descriptor: Int32
        /// The path it is bound to (empty for an abstract or unnamed socket).
        public var path: String
    }

    static func take() -> Result<Inherited?, DaemonError> {
        let env = ProcessInfo.processInfo.environment
        guard let fds = env["LISTEN_FDS"] else { return .success(nil) }
        let pid = env["LISTEN_PID"]
        unsetenv("LISTEN_PID")
        unsetenv("LISTEN_FDS")
        unsetenv("LISTEN_FDNAMES")
        // Passed to another process (the variables leaked through an exec):
        // not ours.
        if let pid, pid != String(getpid()) { return .success(nil) }
        guard let count = Int32(fds), count >= 0, count < 1024 else {
            return .failure(DaemonError("LISTEN_FDS=\(fds) is not a count of descriptors"))
        }
        for fd in firstDescriptor..<(firstDescriptor + count) {
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        }
        guard count == 1 else {
            return .failure(DaemonError("systemd passed \(count) sockets (LISTEN_FDS); stockaded listens on exactly one: give its .socket unit one ListenStream="))
        }
        let fd = firstDescriptor
        func option(_ name: Int32) -> Int32? {
            var value: Int32 = 0
            var size = socklen_t(MemoryLayout<Int32>.size)
            return getsockopt(fd, SOL_SOCKET, name, &value, &size) == 0 ? value : nil
        }
        guard option(SO_DOMAIN) == AF_UNIX, option(SO_TYPE) == Int32(SOCK_STREAM.rawValue) else {
            return .failure(DaemonError("the socket systemd passed (descriptor 3) is not a unix stream socket: use ListenStream=/path in the .socket unit"))
        }
        guard option(SO_ACCEPTCONN) == 1 else {
            return .failure(DaemonError("the socket systemd passed (descriptor 3) is not listening: the .socket unit must not set Accept=yes"))
        }
        return .success(Inherited(descriptor: fd, path: boundPath(fd)))
    }

    /// Removes the API socket's path when the daemon made it; a socket
    /// systemd passed stays: its .socket unit owns the path.
    static func unlinkUnlessInherited(_ path: String) {
        if case .success(.some) = inherited { return }
        unlink(path)
    }

    /// getsockname(2) of a unix socket: its path, or "" when it has none.
    static func boundPath(_ fd: Int32) -> String {
        var address = sockaddr_un()
        var size = socklen_t(MemoryLayout<sockaddr_un>.size)
        let ok = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &size) == 0 }
        }
        guard ok else { return "" }
        let pathOffset = MemoryLayout<sockaddr_un>.offset(of: \.sun_path)!
        let length = Int(size) - pathOffset
        guard length > 0 else { return "" }
        return withUnsafeBytes(of: &address.sun_path) { raw in
            let bytes = raw.prefix(min(length, raw.count))
            // An abstract socket starts with NUL: shown as '@name'.
            if bytes.first == 0 { return "@" + String(decoding: bytes.dropFirst(), as: UTF8.self) }
            return String(decoding: bytes.prefix { $0 != 0 }, as: UTF8.self)
        }
    }
}

/// sd_notify(3): one datagram per state change to the socket in NOTIFY_SOCKET.
public struct SystemdNotifier: Sendable {
    /// The notification socket ("@name" is abstract), nil when the daemon
    /// was not started by a service manager that listens.
    public let socketPath: String?
    /// WATCHDOG_USEC when set for this process (WATCHDOG_PID, when present,
    /// must be this process).
    public let watchdogInterval: Duration?

    /// Reads NOTIFY_SOCKET and the watchdog from `environment` (nil: this
    /// process's).
    public init(environment: [String: String]? = nil) {
        let environment = environment ?? ProcessInfo.processInfo.environment
        let path = environment["NOTIFY_SOCKET"].flatMap { $0.isEmpty ? nil : $0 }
        socketPath = path
        let forUs = environment["WATCHDOG_PID"].map { $0 == String(getpid()) } ?? true
        if path != nil, forUs, let usec = environment["WATCHDOG_USEC"].flatMap(UInt64.init), usec > 0 {
            watchdogInterval = .microseconds(Int64(clamping: usec))
        } else {
            watchdogInterval = nil
        }
    }

    /// Sends `state` ("READY=1", "STOPPING=1", "STATUS=...", newline
    /// separated). Returns false when there is no socket or the send failed
    /// (systemd gone: nothing to do about it).
    @discardableResult
    public func notify(_ state: String) -> Bool {
        guard let socketPath else { return false }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        var path = Array(socketPath.utf8)
        if path.first == UInt8(ascii: "@") { path[0] = 0 }
        let capacity = MemoryLayout.size(ofValue: address.sun_path)
        guard !path.isEmpty, path.count < capacity, path[0] == 0 || path[0] == UInt8(ascii: "/") else { return false }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (i, b) in path.enumerated() { raw[i] = b }
        }
        let length = socklen_t(MemoryLayout<sockaddr_un>.offset(of: \.sun_path)! + path.count + (path[0] == 0 ? 0 : 1))
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        let bytes = Array(state.utf8)
        let sent = withUnsafePointer(to: &address) { a in
            a.withMemoryRebound(to: sockaddr.self, capacity: 1) { sa in
                bytes.withUnsafeBytes { sendto(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL), sa, length) }
            }
        }
        return sent == bytes.count
    }
}

/// Tells the service manager about the daemon's life: READY=1 once every
/// tenant's minimum of workers is warm (or the tenant is failing, which
/// STATUS= names), WATCHDOG=1 at half of WatchdogSec=, and STOPPING=1 when
/// the drain begins. Run it in the ServiceGroup after the daemon: a graceful
/// shutdown reaches it first, so STOPPING=1 goes out before the drain.
public final class SystemdService: Service, Sendable {
    let daemon: Daemon
    let notifier: SystemdNotifier
    let logger: Logger

    public init(daemon: Daemon, notifier: SystemdNotifier = SystemdNotifier(), logger: Logger) {
        self.daemon = daemon
        self.notifier = notifier
        self.logger = logger
    }

    public func run() async throws {
        guard notifier.socketPath != nil else { return }
        // A graceful shutdown cancels the loop (and its sleep) at once.
        try? await cancelWhenGracefulShutdown { try await self.notifyUntilShutdown() }
        notifier.notify("STOPPING=1\nSTATUS=draining")
    }

    private func notifyUntilShutdown() async throws {
        // The daemon starts its pools in its own run(), concurrently: poll
        // until each tenant is warm or failing.
        var sentReady = false
        var lastWatchdog = ContinuousClock.now
        let watchdog = notifier.watchdogInterval.map { $0 / 2 }
        while true {
            if !sentReady, let status = warmStatus() {
                notifier.notify("READY=1\nSTATUS=\(status)")
                logger.info("ready", metadata: ["status": "\(status)"])
                sentReady = true
            }
            if let watchdog, ContinuousClock.now - lastWatchdog >= watchdog {
                notifier.notify("WATCHDOG=1")
                lastWatchdog = ContinuousClock.now
            }
            let tick: Duration = sentReady ? min(watchdog ?? .milliseconds(500), .milliseconds(500)) : .milliseconds(50)
            try await Task.sleep(for: tick)
        }
    }

    /// A one-line status once every tenant has its minimum of workers up or
    /// is failing to start them; nil while any is still starting.
    func warmStatus() -> String? {
        var parts: [String] = []
        for t in daemon.config.tenants {
            guard let pool = daemon.pool(t.name) else { continue }
            let info = pool.info()
            let up = info.idle + info.busy
            if let refusal = info.refusal {
                parts.append("\(t.name): failing (\(refusal))")
            } else if up >= info.workersMin {
                parts.append("\(t.name): \(up) warm")
            } else {
                return nil
            }
        }
        return parts.isEmpty ? "no tenants" : parts.joined(separator: "; ")
    }
}

/// Log lines for journald: "<N>label: message key=value", N the syslog
/// priority, one prefix per line. Used when JOURNAL_STREAM names the
/// descriptor standard error is (systemd.exec(5)); otherwise stockaded
/// logs as a terminal expects.
public struct JournalLogHandler: LogHandler {
    public var logLevel: Logger.Level
    public var metadata: Logger.Metadata = [:]
    public var metadataProvider: Logger.MetadataProvider?
    let label: String
    let write: @Sendable (String) -> Void

    public init(label: String, level: Logger.Level, write: @escaping @Sendable (String) -> Void = JournalLogHandler.standardError) {
        self.label = label
        self.logLevel = level
        self.write = write
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    /// syslog(3) priorities, as sd-daemon(3) defines the prefixes.
    public static func priority(_ level: Logger.Level) -> Int {
        switch level {
        case .trace, .debug: 7
        case .info: 6
        case .notice: 5
        case .warning: 4
        case .error: 3
        case .critical: 2
        }
    }

    public func log(event: LogEvent) {
        var all = metadata
        if let provided = metadataProvider?.get() { all.merge(provided) { _, new in new } }
        if let explicit = event.metadata { all.merge(explicit) { _, new in new } }
        if let error = event.error { all["error"] = "\(error)" }
        let level = event.level
        var text = "\(label): \(event.message)"
        if !all.isEmpty {
            text += " " + all.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
        }
        let prefix = "<\(Self.priority(level))>"
        // journald reads one entry per line: every line carries the priority.
        write(text.split(separator: "\n", omittingEmptySubsequences: false).map { prefix + $0 + "\n" }.joined())
    }

    public static let standardError: @Sendable (String) -> Void = { text in
        let bytes = Array(text.utf8)
        var done = 0
        while done < bytes.count {
            let n = bytes[done...].withUnsafeBytes { Glibc.write(2, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { return }
            done += n
        }
    }

    /// True when standard error is the stream JOURNAL_STREAM ("device:inode")
    /// names: only then does journald read the prefixes.
    public static func standardErrorIsJournal(environment: [String: String]? = nil) -> Bool {
        guard let value = (environment ?? ProcessInfo.processInfo.environment)["JOURNAL_STREAM"] else { return false }
        let parts = value.split(separator: ":")
        guard parts.count == 2, let dev = UInt64(parts[0]), let ino = UInt64(parts[1]) else { return false }
        var st = stat()
        guard fstat(2, &st) == 0 else { return false }
        return UInt64(st.st_dev) == dev && UInt64(st.st_ino) == ino
    }

    /// The handler stockaded logs with: journald's when standard error is
    /// the journal, else swift-log's standard error stream.
    public static func daemonHandler(label: String, level: Logger.Level) -> any LogHandler {
        if standardErrorIsJournal() { return JournalLogHandler(label: label, level: level) }
        var handler = StreamLogHandler.standardError(label: label)
        handler.logLevel = level
        return handler
    }
}

extension APIServer {
    /// Serves on the socket systemd passed, through a close-on-exec
    /// duplicate (the passed descriptor itself stays with the process).
    static func listen(on inherited: SystemdSocket.Inherited, bootstrap: ServerBootstrap,
                       group: MultiThreadedEventLoopGroup, daemon: Daemon, configured: String) throws -> any Channel {
        let fd = fcntl(inherited.descriptor, F_DUPFD_CLOEXEC, 3)
        guard fd >= 0 else {
            let why = String(cString: strerror(errno))
            try? group.syncShutdownGracefully()
            throw DaemonError("cannot duplicate the socket systemd passed: \(why)")
        }
        do {
            let channel = try bootstrap.withBoundSocket(fd).wait()
            daemon.logger.notice("socket activated", metadata: ["socket": "\(inherited.path)"])
            if inherited.path != configured {
                daemon.logger.warning("[daemon] socket is not used: systemd passed the listening socket",
                                      metadata: ["configured": "\(configured)", "socket": "\(inherited.path)"])
            }
            return channel
        } catch {
            // The descriptor is the channel's now (closed with it or leaked
            // with a daemon that is about to exit).
            try? group.syncShutdownGracefully()
            throw DaemonError("cannot serve on the socket systemd passed (\(inherited.path)): \(error)")
        }
    }
}
