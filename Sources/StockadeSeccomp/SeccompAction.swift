import StockadeSystem
import StockadeConfig

/// What a seccomp filter does with a system call.
///
/// Written in profiles as `allow`, `errno:EPERM` (or `errno:13`),
/// `kill-process` (`kill`), `kill-thread`, `trap`, `log` or `notify`.
public enum SeccompAction: Sendable, Hashable, CustomStringConvertible {
    case allow
    case errno(Int32)
    case killProcess
    case killThread
    case trap
    case log
    /// Hand the call to a supervisor on the seccomp notification fd. With no
    /// listener installed the kernel answers ENOSYS.
    case notify
    /// Only from imported Docker profiles (`SCMP_ACT_TRACE`): a ptrace
    /// tracer decides. With no tracer the kernel answers ENOSYS.
    case trace(UInt16)

    // SECCOMP_RET_* (linux/seccomp.h).
    public static let retKillProcess: UInt32 = 0x8000_0000
    public static let retKillThread: UInt32 = 0x0000_0000
    public static let retTrap: UInt32 = 0x0003_0000
    public static let retErrno: UInt32 = 0x0005_0000
    public static let retUserNotif: UInt32 = 0x7fc0_0000
    public static let retTrace: UInt32 = 0x7ff0_0000
    public static let retLog: UInt32 = 0x7ffc_0000
    public static let retAllow: UInt32 = 0x7fff_0000

    /// The filter's return value (also libseccomp's `SCMP_ACT_*` value).
    public var raw: UInt32 {
        switch self {
        case .allow: return Self.retAllow
        case .errno(let e): return Self.retErrno | (UInt32(bitPattern: e) & 0xffff)
        case .killProcess: return Self.retKillProcess
        case .killThread: return Self.retKillThread
        case .trap: return Self.retTrap
        case .log: return Self.retLog
        case .notify: return Self.retUserNotif
        case .trace(let d): return Self.retTrace | UInt32(d)
        }
    }

    /// Decodes a filter return value.
    public init(raw: UInt32) {
        switch raw & 0xffff_0000 {
        case Self.retKillProcess: self = .killProcess
        case Self.retKillThread: self = .killThread
        case Self.retTrap: self = .trap
        case Self.retErrno: self = .errno(Int32(raw & 0xffff))
        case Self.retUserNotif: self = .notify
        case Self.retTrace: self = .trace(UInt16(raw & 0xffff))
        case Self.retLog: self = .log
        case Self.retAllow: self = .allow
        // The kernel treats unknown actions as kill-process.
        default: self = .killProcess
        }
    }

    /// Parses the profile spelling; nil when it is not one.
    public init?(parsing text: String) {
        let t = text.trimmingCharacters(in: " ").lowercased()
        switch t {
        case "allow": self = .allow
        case "kill", "kill-process": self = .killProcess
        case "kill-thread": self = .killThread
        case "trap": self = .trap
        case "log": self = .log
        case "notify": self = .notify
        default:
            guard t.hasPrefix("errno:") else { return nil }
            let name = String(text.trimmingCharacters(in: " ").dropFirst("errno:".count))
            if let n = Int32(name), (1...4095).contains(n) {
                self = .errno(n)
            } else if let n = ErrnoNames.number(of: name.uppercased()) {
                self = .errno(n)
            } else {
                return nil
            }
        }
    }

    /// True for actions that let the call run (possibly after logging or a supervisor's say).
    public var permits: Bool {
        switch self {
        case .allow, .log, .notify, .trace: return true
        case .errno, .killProcess, .killThread, .trap: return false
        }
    }

    public var description: String {
        switch self {
        case .allow: return "allow"
        case .errno(let e): return "errno:\(ErrnoNames.name(of: e) ?? String(e))"
        case .killProcess: return "kill-process"
        case .killThread: return "kill-thread"
        case .trap: return "trap"
        case .log: return "log"
        case .notify: return "notify"
        case .trace(let d): return "trace:\(d)"
        }
    }

    static let spellings = "allow, errno:NAME (errno:EPERM), errno:NUMBER, kill-process, kill-thread, trap, log, notify"
}
