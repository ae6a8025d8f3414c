public import SystemPackage
#if canImport(Glibc)
import Glibc
#endif
import CStockadeSpawn
import StockadeSystem
import StockadeConfig

/// An error from the cgroup manager, with what it was doing, the path and
/// the errno behind it.
public struct CgroupError: Error, CustomStringConvertible, Sendable, Equatable {
    public enum Code: String, Sendable {
        /// The host cannot enforce what was asked (missing controller, layout).
        case unsupported
        /// A jail's limits do not fit in its tenant's budget.
        case overBudget
        /// The tenant is unknown or full.
        case tenant
        /// A cgroupfs read or write failed.
        case io
        /// Processes did not leave the cgroup in time.
        case busy
    }
    public var code: Code
    public var message: String
    public var cause: Errno?

    public init(_ code: Code, _ message: String, cause: Errno? = nil) {
        self.code = code
        self.message = message
        self.cause = cause
    }

    public var description: String {
        guard let cause else { return message }
        return "\(message): \(cause)"
    }
}

/// Reads and writes of cgroupfs files. A cgroup file is read whole and
/// written with one `write(2)` (the kernel parses each write on its own).
package enum CgroupFS {
    package static let cgroup2Magic: Int = 0x6367_7270
    package static let cgroup1Magic: Int = 0x0027_e0eb

    /// The `f_type` of the filesystem at `path`, or nil if it cannot be stat'ed.
    package static func magic(_ path: String) -> Int? {
        var type = 0
        guard (try? retryingSyscall({ stk_statfs_type(path, &type) })) != nil else { return nil }
        return type
    }

    /// True when `path` has the extended attribute `name`.
    package static func hasXattr(_ path: String, _ name: String) -> Bool {
        (try? retryingSyscall { stk_getxattr_size(path, name) }) != nil
    }

    package static func exists(_ path: String) -> Bool { access(path, F_OK) == 0 }

    package static func read(_ path: String) -> String? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var result: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            guard let n = try? retryingSyscall({ buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) } })
            else { return nil }
            if n == 0 { break }
            result.append(contentsOf: buffer[0..<n])
        }
        return String(decoding: result, as: UTF8.self)
    }

    package static func readTrimmed(_ path: String) -> String? {
        read(path).map { $0.trimmingCharacters(in: " \n") }
    }

    /// A number, or nil for "max" / missing.
    package static func readNumber(_ path: String) -> UInt64? {
        guard let s = readTrimmed(path) else { return nil }
        return UInt64(s)
    }

    /// `key value` lines (`cpu.stat`, `memory.events`) as a dictionary.
    package static func readKeyed(_ path: String) -> [String: UInt64]? {
        guard let text = read(path) else { return nil }
        var result: [String: UInt64] = [:]
        for line in text.split(separator: "\n") {
            let parts = line.split(separator: " ")
            if parts.count == 2, let v = UInt64(parts[1]) { result[String(parts[0])] = v }
        }
        return result
    }

    package static func write(_ path: String, _ value: String) throws(CgroupError) {
        let fd = open(path, O_WRONLY | O_CLOEXEC)
        guard fd >= 0 else {
            throw CgroupError(.io, "cannot open \(path) to write \"\(value)\"", cause: Errno(rawValue: errno))
        }
        defer { close(fd) }
        let bytes = Array(value.utf8)
        let n: Int
        do {
            n = try retryingSyscall { bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) } }
        } catch {
            throw CgroupError(.io, "writing \"\(value)\" to \(path) failed", cause: error)
        }
        guard n == bytes.count else {
            throw CgroupError(.io, "writing \"\(value)\" to \(path) wrote \(n) of \(bytes.count) bytes")
        }
    }

    /// `mkdir`; an existing directory is fine when `existingOK`.
    /// Returns true when it created the directory.
    @discardableResult
    package static func mkdir(_ path: String, existingOK: Bool) throws(CgroupError) -> Bool {
        if Glibc.mkdir(path, 0o755) == 0 { return true }
        let e = errno
        if e == EEXIST && existingOK { return false }
        throw CgroupError(.io, "cannot create cgroup \(path)", cause: Errno(rawValue: e))
    }

    /// `rmdir`; a missing directory counts as removed. Returns the errno on failure.
    package static func rmdir(_ path: String) -> Errno? {
        if Glibc.rmdir(path) == 0 || errno == ENOENT { return nil }
        return Errno(rawValue: errno)
    }

    /// The pids in `cgroup.procs` under `dir`.
    package static func procs(_ dir: String) -> [Int32] {
        guard let text = read(dir + "/cgroup.procs") else { return [] }
        return text.split(separator: "\n").compactMap { Int32($0) }
    }

    /// Names of the subdirectories of `dir` (child cgroups).
    package static func children(_ dir: String) -> [String] {
        guard let d = opendir(dir) else { return [] }
        defer { closedir(d) }
        var names: [String] = []
        while let entry = readdir(d) {
            guard entry.pointee.d_type == UInt8(DT_DIR) else { continue }
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names.sorted()
    }

    /// Polls `condition` every 10 ms until it holds or `seconds` pass.
    package static func wait(seconds: Double, _ condition: () -> Bool) -> Bool {
        let deadline = monotonicSeconds() + seconds
        while true {
            if condition() { return true }
            if monotonicSeconds() > deadline { return false }
            usleep(10_000)
        }
    }

    package static func monotonicSeconds() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }
}

/// Who owns a jail cgroup: the launcher's pid and its start time (field 22
/// of `/proc/PID/stat`, clock ticks since boot), so a reused pid is not
/// mistaken for the launcher that made the cgroup.
public struct LauncherIdentity: Sendable, Equatable {
    public var pid: Int32
    public var startTime: UInt64

    public init(pid: Int32, startTime: UInt64) {
        self.pid = pid
        self.startTime = startTime
    }

    /// This process.
    public static func current() -> LauncherIdentity {
        let pid = getpid()
        return LauncherIdentity(pid: pid, startTime: startTime(of: pid) ?? 0)
    }

    /// The start time of `pid`, or nil when no such process exists.
    public static func startTime(of pid: Int32) -> UInt64? {
        guard let stat = CgroupFS.read("/proc/\(pid)/stat"),
              let close = stat.lastIndex(of: ")") else { return nil }
        // Fields after the command name start at field 3 (state).
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        guard fields.count > 19 else { return nil }
        return UInt64(fields[19])
    }

    /// True while the process that made the cgroup still runs.
    public var isAlive: Bool {
        guard let now = Self.startTime(of: pid) else { return false }
        return now == startTime
    }

    /// `jail-<pid>-<starttime>-<n>`.
    package func jailName(_ n: Int) -> String { "jail-\(pid)-\(startTime)-\(n)" }

    /// Parses a jail cgroup name back into its owner.
    package static func owner(ofJail name: String) -> LauncherIdentity? {
        let parts = name.split(separator: "-")
        guard parts.count == 4, parts[0] == "jail", let pid = Int32(parts[1]), let start = UInt64(parts[2]),
              Int(parts[3]) != nil else { return nil }
        return LauncherIdentity(pid: pid, startTime: start)
    }
}
