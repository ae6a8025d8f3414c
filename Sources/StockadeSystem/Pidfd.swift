public import SystemPackage
import CStockadeSpawn
#if canImport(Glibc)
import Glibc
#endif

/// How a process ended, decoded from its wait status.
public enum ProcessTermination: Sendable, Equatable, CustomStringConvertible {
    case exited(Int32)
    case signaled(Int32, coreDumped: Bool)

    public init(waitStatus status: Int32) {
        if status & 0x7f == 0 {
            self = .exited((status >> 8) & 0xff)
        } else {
            self = .signaled(status & 0x7f, coreDumped: status & 0x80 != 0)
        }
    }

    /// The shell convention: the exit code, or 128 + signal number.
    public var shellStatus: Int32 {
        switch self {
        case .exited(let code): return code
        case .signaled(let sig, _): return 128 + sig
        }
    }

    public var description: String {
        switch self {
        case .exited(let code): return "exited with status \(code)"
        case .signaled(let sig, let core): return "killed by \(signalName(sig))\(core ? " (core dumped)" : "")"
        }
    }
}

/// A process file descriptor: signals and waits that cannot hit a recycled pid.
public struct ProcessHandle: Sendable {
    public let fd: FileDescriptor
    public let pid: Int32

    public init(fd: FileDescriptor, pid: Int32) {
        self.fd = fd
        self.pid = pid
    }

    /// Sends `signal` to the process.
    ///
    /// The corresponding C function is `pidfd_send_signal`.
    public func send(signal: Int32) throws(Errno) {
        _ = try retryingSyscall { stk_pidfd_send_signal(fd.rawValue, signal) }
    }

    /// Waits up to `timeoutMilliseconds` (-1: forever) for the process to end.
    ///
    /// The corresponding C function is `poll`.
    public func waitForExit(timeoutMilliseconds: Int32) throws(Errno) -> Bool {
        try fd.waitReadable(timeoutMilliseconds: timeoutMilliseconds)
    }

    /// Reaps the process and returns how it ended.
    ///
    /// The corresponding C function is `waitid`.
    public func reap() throws(Errno) -> ProcessTermination {
        var status: Int32 = 0
        _ = try retryingSyscall { () -> Int32 in
            // The shim returns -errno; retryingSyscall reads errno.
            let r = stk_wait_pidfd(fd.rawValue, &status, 0)
            if r < 0 { errno = -r; return -1 }
            return r
        }
        return ProcessTermination(waitStatus: status)
    }
}

/// `SIGKILL` for 9, and so on; `signal N` for numbers without a name.
public func signalName(_ sig: Int32) -> String {
    let names: [Int32: String] = [
        1: "SIGHUP", 2: "SIGINT", 3: "SIGQUIT", 4: "SIGILL", 5: "SIGTRAP", 6: "SIGABRT", 7: "SIGBUS", 8: "SIGFPE",
        9: "SIGKILL", 10: "SIGUSR1", 11: "SIGSEGV", 12: "SIGUSR2", 13: "SIGPIPE", 14: "SIGALRM", 15: "SIGTERM",
        16: "SIGSTKFLT", 17: "SIGCHLD", 18: "SIGCONT", 19: "SIGSTOP", 20: "SIGTSTP", 21: "SIGTTIN", 22: "SIGTTOU",
        23: "SIGURG", 24: "SIGXCPU", 25: "SIGXFSZ", 26: "SIGVTALRM", 27: "SIGPROF", 28: "SIGWINCH", 29: "SIGIO",
        30: "SIGPWR", 31: "SIGSYS",
    ]
    return names[sig] ?? "signal \(sig)"
}
