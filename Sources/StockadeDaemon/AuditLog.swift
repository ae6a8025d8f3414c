// The audit log: one JSON object per line for every launch, exit, kill,
// policy violation, denied client and request. Lines are written one at a
// time under a lock; a write that fails part-way (a full disk, an I/O
// error) is cut back to the last whole line, so no partial line is ever
// left for the next record to be joined to. Every failure is counted
// (`stockaded_audit_write_failures_total`), logged once per run of failures,
// and marks the daemon degraded until a line is written again.
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import StockadeSystem
import Synchronization
package import Logging
#if canImport(Glibc)
import Glibc
#endif

/// One audit record. Fields that do not apply stay nil and are left out.
package struct AuditEvent: Codable, Sendable, Equatable {
    package enum Kind: String, Codable, Sendable {
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
        /// An answer the client was gone before it could be written.
        case undelivered
        case drain
        case resume
        /// A call a worker's seccomp profile denied: one per worker and call name.
        case seccompDenial = "seccomp-denial"
        /// on_denial acted: a worker killed, a tenant quarantined.
        case denialPolicy = "denial-policy"
    }

    package var time: String = ""
    package var event: Kind
    package var tenant: String?
    package var worker: String?
    package var pid: Int32?
    package var client: String?
    package var uid: UInt32?
    package var method: String?
    package var path: String?
    package var status: Int?
    package var outcome: String?
    package var reason: String?
    package var exitCode: Int32?
    package var signal: String?
    package var durationMs: Double?
    package var bytesIn: Int?
    package var bytesOut: Int?
    package var memoryPeakBytes: UInt64?
    package var cpuMicros: UInt64?
    /// Denials: the call's name, its first example, how many so far, the
    /// policy in force, and how many denial lines the rate limit left out.
    package var syscall: String?
    package var example: String?
    package var count: Int?
    package var policy: String?
    package var suppressed: Int?

    package init(_ event: Kind, tenant: String? = nil, worker: String? = nil, reason: String? = nil) {
        self.event = event
        self.tenant = tenant
        self.worker = worker
        self.reason = reason
    }
}

extension AuditEvent {
    /// The event as one JSON object and a newline, keys sorted, absent
    /// fields left out (what JSONEncoder with sorted keys writes, without
    /// its generic machinery on every request).
    func jsonLine() -> [UInt8] {
        var out: [UInt8] = [UInt8(ascii: "{")]
        out.reserveCapacity(256)
        var first = true
        func key(_ k: String) {
            if !first { out.append(UInt8(ascii: ",")) }
            first = false
            out.append(UInt8(ascii: "\""))
            out += k.utf8
            out.append(contentsOf: "\":".utf8)
        }
        func string(_ k: String, _ v: String?) {
            guard let v else { return }
            key(k)
            out.append(UInt8(ascii: "\""))
            for b in v.utf8 {
                switch b {
                case UInt8(ascii: "\""): out.append(contentsOf: "\\\"".utf8)
                case UInt8(ascii: "\\"): out.append(contentsOf: "\\\\".utf8)
                case 0x0A: out.append(contentsOf: "\\n".utf8)
                case 0x0D: out.append(contentsOf: "\\r".utf8)
                case 0x09: out.append(contentsOf: "\\t".utf8)
                case 0..<0x20:
                    let hex = Array("0123456789abcdef".utf8)
                    out.append(contentsOf: "\\u00".utf8)
                    out.append(hex[Int(b >> 4)])
                    out.append(hex[Int(b & 15)])
                default: out.append(b)
                }
            }
            out.append(UInt8(ascii: "\""))
        }
        func number<N: BinaryInteger>(_ k: String, _ v: N?) {
            guard let v else { return }
            key(k)
            // Digits written in place: no String per number.
            if v < 0 { out.append(UInt8(ascii: "-")) }
            ASCIIDecimal.append(UInt64(v.magnitude), to: &out)
        }
        func number(_ k: String, _ v: Double?) {
            guard let v else { return }
            key(k)
            out += v.description.utf8
        }
        // Sorted by key, as the readers of the log have always seen them.
        number("bytesIn", bytesIn)
        number("bytesOut", bytesOut)
        string("client", client)
        number("count", count)
        number("cpuMicros", cpuMicros)
        number("durationMs", durationMs.map { $0.isFinite ? $0 : 0 })
        string("event", event.rawValue)
        string("example", example)
        number("exitCode", exitCode)
        number("memoryPeakBytes", memoryPeakBytes)
        string("method", method)
        string("outcome", outcome)
        string("path", path)
        number("pid", pid)
        string("policy", policy)
        string("reason", reason)
        string("signal", signal)
        number("status", status)
        number("suppressed", suppressed)
        string("syscall", syscall)
        string("tenant", tenant)
        string("time", time)
        number("uid", uid)
        string("worker", worker)
        out.append(contentsOf: "}\n".utf8)
        return out
    }
}

package final class AuditLog: Sendable {
    package let path: String
    private let fd: Int32
    private let writer = Mutex<Writer>(Writer())
    private let logger: Logger
    /// Called (outside the lock) for every line that could not be written.
    let onFailure = Mutex<(@Sendable () -> Void)?>(nil)

    private struct Writer {
        var failures = 0
        var lastError: String?
        var failing = false
    }

    /// Lines lost since the daemon started.
    package var failures: Int { writer.withLock { $0.failures } }
    /// Why the last line was lost, while the log is failing (nil once a
    /// line is written again).
    package var failing: String? { writer.withLock { $0.failing ? $0.lastError : nil } }

    /// Opens (creating it 0600, and its directory) the log at `path` for appending.
    package init(path: String, logger: Logger = Logger(label: "stockaded")) throws(DaemonError) {
        self.path = path
        self.logger = logger
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

    /// Appends `event`, stamped with the current UTC time, as one whole
    /// line. Returns false when the line could not be written (nothing of
    /// it is left in the file).
    @discardableResult
    package func record(_ event: AuditEvent) -> Bool {
        var event = event
        event.time = Self.timestamp()
        let line = event.jsonLine()
        let (ok, report): (Bool, String?) = writer.withLock { w in
            let error = Self.appendWhole(fd, line)
            if let error {
                w.failures += 1
                w.lastError = error
                // One log line per run of failures, not one per lost record.
                defer { w.failing = true }
                return (false, w.failing ? nil : error)
            }
            if w.failing {
                w.failing = false
                w.lastError = nil
            }
            return (true, nil)
        }
        if !ok {
            if let report {
                logger.error("audit log write failed; records are being lost",
                             metadata: ["path": "\(path)", "error": "\(report)", "event": "\(event.event.rawValue)"])
            }
            onFailure.withLock { $0 }?()
        }
        return ok
    }

    /// Appends `line` in one piece or not at all: on a short or failed
    /// write the file is cut back to where it ended before. Returns why it
    /// failed, or nil.
    static func appendWhole(_ fd: Int32, _ line: [UInt8]) -> String? {
        var off = 0
        var failure: String?
        line.withUnsafeBytes { buf in
            while off < buf.count {
                let n: Int
                do { n = try retryingSyscall { write(fd, buf.baseAddress! + off, buf.count - off) } } catch {
                    failure = "write: \(error)"
                    return
                }
                if n == 0 {
                    failure = "write: no progress"
                    return
                }
                off += n
            }
        }
        guard let failure else { return nil }
        if off > 0 {
            // Only this process writes the log (the instance lock), and
            // only under `writer`: the file ended `off` bytes before its
            // end now (found only here, not before every write).
            let end = lseek(fd, 0, SEEK_END)
            guard end >= off else {
                return failure + "; the partial line could not be removed: lseek: \(String(cString: strerror(errno)))"
            }
            do { _ = try retryingSyscall { ftruncate(fd, end - off_t(off)) } } catch {
                return failure + "; the partial line could not be removed: \(error)"
            }
        }
        return failure
    }

    static func timestamp() -> String {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        var t = ts.tv_sec
        var parts = tm()
        gmtime_r(&t, &parts)
        // Written digit by digit: one of these stamps every audited request.
        var out: [UInt8] = []
        out.reserveCapacity(24)
        for (value, width, separator) in [(Int(parts.tm_year) + 1900, 4, "-"), (Int(parts.tm_mon) + 1, 2, "-"), (Int(parts.tm_mday), 2, "T"),
                                          (Int(parts.tm_hour), 2, ":"), (Int(parts.tm_min), 2, ":"), (Int(parts.tm_sec), 2, "."),
                                          (Int(ts.tv_nsec / 1_000_000), 3, "Z")] as [(Int, Int, Unicode.Scalar)] {
            var divisor = 1
            for _ in 1..<width { divisor *= 10 }
            var v = value
            while divisor > 0 {
                out.append(UInt8(ascii: "0") + UInt8((v / divisor) % 10))
                v %= divisor
                divisor /= 10
            }
            out.append(UInt8(ascii: separator))
        }
        return String(decoding: out, as: UTF8.self)
    }
}

/// A daemon-level failure, as one line a person can act on.
package struct DaemonError: Error, CustomStringConvertible, Sendable {
    package var message: String
    package init(_ message: String) { self.message = message }
    package var description: String { message }
}
