public import SystemPackage
import CStockadeSpawn
#if canImport(Glibc)
import Glibc
#endif

/// A fresh pseudo-terminal: the launcher holds the master, the jail gets
/// the peer (the slave) as its terminal, so nothing the jail does to its
/// terminal (modes, input flushing, TIOCSTI) reaches the caller's.
///
/// The peer is opened from the master (`TIOCGPTPEER`), never by a path in
/// `/dev/pts` that something else could have replaced.
public struct PseudoTerminal: Sendable {
    public var master: FileDescriptor
    public var peer: FileDescriptor

    public init(master: FileDescriptor, peer: FileDescriptor) {
        self.master = master
        self.peer = peer
    }

    static let TIOCSPTLCK: UInt = 0x4004_5431
    static let TIOCGPTPEER: UInt = 0x5441
    public static let TIOCGWINSZ: UInt = 0x5413
    public static let TIOCSWINSZ: UInt = 0x5414

    /// Opens `/dev/ptmx` and its peer, both close-on-exec and neither a
    /// controlling terminal of the launcher.
    public static func open() throws(Errno) -> PseudoTerminal {
        let m = Glibc.open("/dev/ptmx", O_RDWR | O_NOCTTY | O_CLOEXEC)
        guard m >= 0 else { throw Errno(rawValue: errno) }
        var unlock: Int32 = 0
        guard stk_ioctl_ptr(m, TIOCSPTLCK, &unlock) == 0 else {
            let e = errno
            close(m)
            throw Errno(rawValue: e)
        }
        // TIOCGPTPEER takes the open flags as its argument, not a pointer.
        let p = stk_ioctl_ptr(m, TIOCGPTPEER, UnsafeMutableRawPointer(bitPattern: UInt(O_RDWR | O_NOCTTY | O_CLOEXEC)))
        guard p >= 0 else {
            let e = errno
            close(m)
            throw Errno(rawValue: e)
        }
        return PseudoTerminal(master: FileDescriptor(rawValue: m), peer: FileDescriptor(rawValue: p))
    }

    /// The window size of the terminal `fd`, nil when it is not one.
    public static func windowSize(_ fd: Int32) -> (rows: UInt16, columns: UInt16)? {
        var size = winsize()
        guard stk_ioctl_ptr(fd, TIOCGWINSZ, &size) == 0 else { return nil }
        return (size.ws_row, size.ws_col)
    }

    /// Sets the window size of the terminal `fd` (its foreground process
    /// group gets SIGWINCH).
    @discardableResult
    public static func setWindowSize(_ fd: Int32, rows: UInt16, columns: UInt16) -> Bool {
        var size = winsize()
        size.ws_row = rows
        size.ws_col = columns
        return stk_ioctl_ptr(fd, TIOCSWINSZ, &size) == 0
    }

    /// Copies the window size of the terminal `from` to `to` (no-op when
    /// `from` has none).
    public static func copyWindowSize(from: Int32, to: Int32) {
        var size = winsize()
        if stk_ioctl_ptr(from, TIOCGWINSZ, &size) == 0 { _ = stk_ioctl_ptr(to, TIOCSWINSZ, &size) }
    }
}

/// The caller's terminal put in raw mode for as long as a jail's terminal
/// is relayed, and put back as it was.
public struct TerminalModes: Sendable {
    public let fd: Int32
    let saved: termios

    /// Saves `fd`'s modes and makes it raw (no echo, no line editing, no
    /// signals from keys: they travel to the jail's own terminal, whose
    /// line discipline turns ^C into the jail's SIGINT).
    public static func makeRaw(_ fd: Int32) throws(Errno) -> TerminalModes {
        var t = termios()
        guard tcgetattr(fd, &t) == 0 else { throw Errno(rawValue: errno) }
        var raw = t
        cfmakeraw(&raw)
        guard tcsetattr(fd, TCSANOW, &raw) == 0 else { throw Errno(rawValue: errno) }
        return TerminalModes(fd: fd, saved: t)
    }

    /// Puts the saved modes back (retrying an interrupted call).
    public func restore() {
        var t = saved
        while tcsetattr(fd, TCSADRAIN, &t) != 0 && errno == EINTR {}
    }
}

/// Copies bytes between the caller's terminal and a jail's pseudo-terminal
/// on a thread of its own, until the jail's side is closed.
public final class TerminalRelay: @unchecked Sendable {
    private let master: Int32
    private let input: Int32?
    private let output: Int32
    private let sizeSource: Int32?
    private let done = PipeEnds.makeOrNil()
    private var thread = pthread_t()
    private var started = false

    /// `input`: the caller's terminal to read keys from (nil: none);
    /// `output`: where the jail's terminal output goes; `sizeSource`: a
    /// terminal whose window size the jail's follows.
    public init(master: FileDescriptor, input: Int32?, output: Int32, sizeSource: Int32?) {
        self.master = master.rawValue
        self.input = input
        self.output = output
        self.sizeSource = sizeSource
    }

    public func start() throws(Errno) {
        let me = Unmanaged.passRetained(self).toOpaque()
        let rc = pthread_create(&thread, nil, { arg in
            let relay = Unmanaged<TerminalRelay>.fromOpaque(arg!).takeRetainedValue()
            relay.loop()
            return nil
        }, me)
        guard rc == 0 else {
            Unmanaged<TerminalRelay>.fromOpaque(me).release()
            throw Errno(rawValue: rc)
        }
        started = true
    }

    /// Waits for the relay to copy what the jail left in its terminal; once
    /// the jail is gone that ends at the master's EIO. Waits at most
    /// `milliseconds` more, then stops it.
    public func finish(milliseconds: Int32 = 2000) {
        guard started else { return }
        var fds = [pollfd(fd: done?.read.rawValue ?? -1, events: Int16(POLLIN), revents: 0)]
        _ = poll(&fds, 1, milliseconds)
        if let w = done?.write.rawValue { var b: UInt8 = 1; _ = write(w, &b, 1) }
        pthread_join(thread, nil)
        started = false
    }

    deinit {
        try? done?.read.close()
        try? done?.write.close()
    }

    private func loop() {
        defer { if let w = done?.write.rawValue { var b: UInt8 = 0; _ = write(w, &b, 1) } }
        var buffer = [UInt8](repeating: 0, count: 16384)
        var readInput = input != nil
        var lastSize = winsize()
        while true {
            if let s = sizeSource {
                var size = winsize()
                if stk_ioctl_ptr(s, PseudoTerminal.TIOCGWINSZ, &size) == 0,
                   size.ws_row != lastSize.ws_row || size.ws_col != lastSize.ws_col {
                    lastSize = size
                    _ = stk_ioctl_ptr(master, PseudoTerminal.TIOCSWINSZ, &size)
                }
            }
            var fds = [pollfd(fd: master, events: Int16(POLLIN), revents: 0),
                       pollfd(fd: done?.read.rawValue ?? -1, events: Int16(POLLIN), revents: 0),
                       pollfd(fd: readInput ? input! : -1, events: Int16(POLLIN), revents: 0)]
            // The timeout only paces window-size changes (no SIGWINCH handler).
            let n = poll(&fds, 3, 250)
            if n < 0 { if errno == EINTR { continue } else { return } }
            if fds[1].revents != 0 { drain(&buffer); return }
            if fds[0].revents != 0 {
                let got = read(master, &buffer, buffer.count)
                if got > 0 { writeAll(output, buffer, got) }
                // EIO: every holder of the jail's side has closed it.
                else if got == 0 || (errno != EINTR && errno != EAGAIN) { return }
            }
            if readInput && fds[2].revents != 0 {
                let got = read(input!, &buffer, buffer.count)
                if got > 0 { writeAll(master, buffer, got) }
                else if got == 0 || (errno != EINTR && errno != EAGAIN) { readInput = false }
            }
        }
    }

    /// What is still buffered on the master, without blocking.
    private func drain(_ buffer: inout [UInt8]) {
        while true {
            var fd = pollfd(fd: master, events: Int16(POLLIN), revents: 0)
            guard poll(&fd, 1, 0) > 0, fd.revents & Int16(POLLIN) != 0 else { return }
            let got = read(master, &buffer, buffer.count)
            guard got > 0 else { return }
            writeAll(output, buffer, got)
        }
    }

    private func writeAll(_ fd: Int32, _ bytes: [UInt8], _ count: Int) {
        var done = 0
        while done < count {
            let w = bytes.withUnsafeBytes { write(fd, $0.baseAddress! + done, count - done) }
            if w < 0 && errno == EINTR { continue }
            guard w > 0 else { return }  // the caller's terminal is gone: nothing to show it on
            done += w
        }
    }
}

extension PipeEnds {
    static func makeOrNil() -> PipeEnds? { try? make() }
}
