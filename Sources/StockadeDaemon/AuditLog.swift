// The audit log: one JSON object per line for every launch, exit, kill,
// policy violation, denied client and request. Appended with O_APPEND and
// one write(2) per line, so concurrent writers never interleave a line.
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import StockadeSystem
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// One audit record. Fields that do not apply stay nil and are left out.
public struct AuditEvent: Codable, Sendable, Equatable {
    public enum Kind: String, Codable, Sendable {
        case daemonStart = "daemon-start"
        case daemonStop = "daemon-stop"
        case launch
        case launchFailed = "launch-failed"
        case exit
        case kill
        case violation
        case modelRejected = "model-rejected"
        case denied
        case request
        case drain
        case resume
    }

    public var time: String = ""
    public var event: Kind
    public var tenant: String?
    public var worker: String?
    public var pid: Int32?
    public var client: String?
    public var uid: UInt32?
    public var method: String?
    public var path: String?
    public var status: Int?
    public var outcome: String?
    public var reason: String?
    public var exitCode: Int32?
    public var signal: String?
    public var durationMs: Double?
    public var bytesIn: Int?
    public var bytesOut: Int?
    public var memoryPeakBytes: UInt64?
    public var cpuMicros: UInt64?

    public init(_ event: Kind, tenant: String? = nil, worker: String? = nil, reason: String? = nil) {
        self.event = event
        self.tenant = tenant
        self.worker = worker
        self.reason = reason
    }
}

public final class AuditLog: Sendable {
    public let path: String
    private let fd: Int32
    private let encoder = Mutex<JSONEncoder>({
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return e
    }())

    /// Opens (creating it 0600, and its directory) the log at `path` for appending.
    public init(path: String) throws(DaemonError) {
        self.path = path
        let dir = DaemonPath.directory(of: path)
        if !FileManager.default.fileExists(atPath: dir) {
            do { try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true) } catch {
                throw DaemonError("cannot create the audit log directory \(dir): \(error)")
            }
        }
        let fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw DaemonError("cannot open the audit log \(path): \(String(cString: strerror(errno)))") }
        self.fd = fd
    }

    deinit { close(fd) }

    /// Appends `event`, stamped with the current UTC time.
    public func record(_ event: AuditEvent) {
        var event = event
        event.time = Self.timestamp()
        let line: [UInt8]? = encoder.withLock { e in
            guard let data = try? e.encode(event) else { return nil }
            return Array(data) + [0x0A]
        }
        guard let line else { return }
        line.withUnsafeBytes { buf in
            var off = 0
            while off < buf.count {
                guard let n = try? retryingSyscall({ write(fd, buf.baseAddress! + off, buf.count - off) }) else { return }
                off += n
            }
        }
    }

    static func timestamp() -> String {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        var t = ts.tv_sec
        var parts = tm()
        gmtime_r(&t, &parts)
        func pad(_ v: Int32, _ w: Int) -> String {
            let s = String(v)
            return String(repeating: "0", count: max(0, w - s.count)) + s
        }
        return "\(pad(parts.tm_year + 1900, 4))-\(pad(parts.tm_mon + 1, 2))-\(pad(parts.tm_mday, 2))T"
            + "\(pad(parts.tm_hour, 2)):\(pad(parts.tm_min, 2)):\(pad(parts.tm_sec, 2)).\(pad(Int32(ts.tv_nsec / 1_000_000), 3))Z"
    }
}

/// A daemon-level failure, as one line a person can act on.
public struct DaemonError: Error, CustomStringConvertible, Sendable {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}
