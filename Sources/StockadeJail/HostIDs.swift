public import SystemPackage
import StockadeSystem
import StockadeConfig
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// The host ids of one jail launched by root: inside id N is host id
/// `first + N`, for N in 0..<`count`.
public struct HostIDRange: Sendable, Equatable, Hashable, Codable, CustomStringConvertible {
    public var first: UInt32
    public var count: UInt32
    public var last: UInt32 { first + (count - 1) }

    public init(first: UInt32, count: UInt32 = HostIDPool.rangeSize) {
        self.first = first
        self.count = count
    }

    public func overlaps(_ lo: UInt64, _ hi: UInt64) -> Bool {
        UInt64(first) <= hi && lo <= UInt64(last)
    }

    public var description: String { "\(first)-\(last)" }
}

/// Where root launchers take each jail's host ids from: `ranges` blocks of
/// 65,536 ids starting at `first` (a multiple of 65,536). The default,
/// 0x70000000 (1879048192) up to 0x7FFDFFFF, lies above what `useradd`,
/// systemd (regular, system and dynamic users, nspawn's container ranges)
/// and the usual `/etc/subuid` layouts hand out, below the ids some tools
/// treat as negative. Whatever the pool, a block that overlaps an entry of
/// `/etc/passwd`, `/etc/group`, `/etc/subuid` or `/etc/subgid` is never
/// given out. `STOCKADE_ID_POOL=FIRST:RANGES` sets another pool.
public struct HostIDPool: Sendable, Equatable, CustomStringConvertible {
    public static let rangeSize: UInt32 = 65536
    public static let `default` = HostIDPool(uncheckedFirst: 0x7000_0000, ranges: 4094)
    /// Root-owned; one lock file per block, `flock`ed while a jail holds it.
    public static let defaultLockDirectory = "/run/stockade/ids"

    public let first: UInt32
    public let ranges: UInt32
    public let lockDirectory: String

    private init(uncheckedFirst first: UInt32, ranges: UInt32, lockDirectory: String = Self.defaultLockDirectory) {
        self.first = first
        self.ranges = ranges
        self.lockDirectory = lockDirectory
    }

    /// A pool of `ranges` blocks from `first`; nil when `first` is not a
    /// multiple of 65,536, the pool is empty, or it would reach past
    /// 0xFFFEFFFF (the top block holds the invalid id 0xFFFFFFFF).
    public init?(first: UInt32, ranges: UInt32, lockDirectory: String = Self.defaultLockDirectory) {
        guard first % Self.rangeSize == 0, first > 0, ranges > 0,
              UInt64(first) + UInt64(ranges) * UInt64(Self.rangeSize) <= 0xFFFF_0000 else { return nil }
        self.init(uncheckedFirst: first, ranges: ranges, lockDirectory: lockDirectory)
    }

    /// `FIRST:RANGES`, e.g. `1879048192:4094`.
    public init(parsing text: String, lockDirectory: String = Self.defaultLockDirectory) throws(JailError) {
        let parts = text.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 2, let first = UInt32(parts[0]), let ranges = UInt32(parts[1]),
              let pool = HostIDPool(first: first, ranges: ranges, lockDirectory: lockDirectory) else {
            throw .invalidRequest("host id pool \"\(text)\": expected FIRST:RANGES, FIRST a multiple of 65536 above 0, "
                + "RANGES at least 1, ending at or below 4294901760")
        }
        self = pool
    }

    /// `STOCKADE_ID_POOL` when set, else the default.
    public static func configured() throws(JailError) -> HostIDPool {
        guard let text = getenv("STOCKADE_ID_POOL").map({ String(cString: $0) }), !text.isEmpty else { return .default }
        do {
            return try HostIDPool(parsing: text)
        } catch {
            throw .invalidRequest("STOCKADE_ID_POOL: \(error)")
        }
    }

    public func withLockDirectory(_ path: String) -> HostIDPool {
        HostIDPool(uncheckedFirst: first, ranges: ranges, lockDirectory: path)
    }

    public var description: String {
        "\(first)-\(UInt64(first) + UInt64(ranges) * UInt64(Self.rangeSize) - 1)"
    }
}

/// A host id range held for one jail. The range is free again once
/// ``release()`` runs or the holding process ends (the kernel drops its
/// `flock`s), so a crashed launcher leaks nothing; its jails die with it.
public final class HostIDLease: Sendable {
    public let range: HostIDRange
    private let locks: Mutex<[FileDescriptor]>

    init(range: HostIDRange, locks: [FileDescriptor]) {
        self.range = range
        self.locks = Mutex(locks)
    }

    /// The lock fds, for a holder that keeps them past this process
    /// (``Jail/holdHostIDsUntilExit()``).
    var lockFDs: [Int32] { locks.withLock { $0.map(\.rawValue) } }

    /// Frees the range. Call only once nothing of the jail runs any more.
    public func release() {
        let fds = locks.withLock { fds in
            defer { fds = [] }
            return fds
        }
        for fd in fds { try? fd.close() }
    }
}

/// One entry of the host's account and subordinate-id files.
public struct HostIDEntry: Sendable, Equatable, CustomStringConvertible {
    public var file: String
    public var name: String
    public var first: UInt64
    public var count: UInt64

    public var description: String {
        count == 1 ? "\(file) entry \(name) (id \(first))" : "\(file) entry \(name) (ids \(first)-\(first + count - 1))"
    }
}

/// Gives each root-launched jail a host id range no account, no
/// subordinate-id range and no other live jail uses. Shared by `stockade`
/// and `stockaded`, across processes, through lock files.
public enum HostIDAllocator {
    static let files = ["/etc/passwd", "/etc/group", "/etc/subuid", "/etc/subgid"]

    /// Every entry of /etc/passwd, /etc/group (one id each) and
    /// /etc/subuid, /etc/subgid (a range each). A file that does not exist
    /// has no entries; one that cannot be read is an error.
    public static func hostEntries(root: String = "") throws(JailError) -> [HostIDEntry] {
        var entries: [HostIDEntry] = []
        for file in files {
            let text: String
            do {
                // Plain reads: Foundation's file reading costs a launch more than these four files.
                text = try TableReader.readText(path: root + file, what: file)
            } catch {
                if access(root + file, F_OK) != 0 { continue }
                throw .invalidRequest("cannot read \(file) to keep jail host ids clear of it: \(error)")
            }
            let subordinate = file.hasPrefix("/etc/sub")
            // Bytes, not Substrings: split and UInt64(Substring) were most of
            // the host-id lease of every root launch.
            var utf8 = text
            utf8.withUTF8 { bytes in
                var lineStart = 0
                while lineStart < bytes.count {
                    var lineEnd = lineStart
                    while lineEnd < bytes.count, bytes[lineEnd] != UInt8(ascii: "\n") { lineEnd += 1 }
                    defer { lineStart = lineEnd + 1 }
                    guard lineEnd > lineStart, bytes[lineStart] != UInt8(ascii: "#") else { continue }
                    // The first three fields: name, then (passwd, group) the
                    // password and the id, or (subuid, subgid) first and count.
                    var fields: [Range<Int>] = []
                    var fieldStart = lineStart
                    for i in lineStart...lineEnd where i == lineEnd || bytes[i] == UInt8(ascii: ":") {
                        fields.append(fieldStart..<i)
                        fieldStart = i + 1
                        if fields.count == 3 { break }
                    }
                    guard fields.count == 3 else { continue }
                    let name = String(decoding: UnsafeBufferPointer(rebasing: bytes[fields[0]]), as: UTF8.self)
                    if subordinate {
                        guard let first = ASCIIDecimal.parse(bytes, fields[1], plus: true), let count = ASCIIDecimal.parse(bytes, fields[2], plus: true), count > 0 else { continue }
                        entries.append(HostIDEntry(file: file, name: name, first: first, count: count))
                    } else {
                        guard let id = ASCIIDecimal.parse(bytes, fields[2], plus: true) else { continue }
                        entries.append(HostIDEntry(file: file, name: name, first: id, count: 1))
                    }
                }
            }
        }
        return entries
    }

    /// The entries `range` overlaps, plus a note for ids that are never
    /// safe to map (0, 65534 `nobody`, 65535, 0xFFFFFFFF).
    public static func conflicts(of range: HostIDRange, entries: [HostIDEntry]) -> [String] {
        var found = entries.filter { range.overlaps($0.first, $0.first + $0.count - 1) }.map(\.description)
        for (id, what) in [(UInt64(0), "root"), (65534, "the overflow id nobody"), (65535, "the invalid 16-bit id"),
                           (UInt64(UInt32.max), "the invalid id")] where range.overlaps(id, id) {
            found.append("id \(id) (\(what))")
        }
        return found
    }

    /// A free range of `pool` clear of every host entry, held until the
    /// lease is released. Blocks are tried from a point that moves with
    /// the pid, so concurrent launchers rarely contend for the same lock.
    /// `etcRoot` prefixes the /etc paths (tests give a directory of their own).
    /// Where this process's next search of a pool starts (.max: not yet searched).
    private static let searchStart = Atomic<UInt32>(.max)

    public static func acquire(from pool: HostIDPool, etcRoot: String = "") throws(JailError) -> HostIDLease {
        let entries = try hostEntries(root: etcRoot)
        let directory = try openLockDirectory(pool.lockDirectory)
        defer { try? directory.close() }
        // A process's first search starts at a block given by its pid; the
        // next ones after the block it took last, so that a daemon holding
        // a thousand ranges does not try each of them again per launch.
        let hint = searchStart.load(ordering: .relaxed)
        let start = (hint == .max ? UInt32(bitPattern: getpid()) : hint) % pool.ranges
        for i in 0..<pool.ranges {
            let block = (start + i) % pool.ranges
            let range = HostIDRange(first: pool.first + block * HostIDPool.rangeSize)
            guard conflicts(of: range, entries: entries).isEmpty else { continue }
            if let lock = try tryLock(block: range.first, in: directory, path: pool.lockDirectory) {
                searchStart.store((block + 1) % pool.ranges, ordering: .relaxed)
                return HostIDLease(range: range, locks: [lock])
            }
        }
        throw .invalidRequest("no free host id range in the pool \(pool) (\(pool.ranges) ranges of 65536, "
            + "each held by a live jail or overlapping a host account or /etc/subuid, /etc/subgid range); "
            + "wait for jails to end or set STOCKADE_ID_POOL=FIRST:RANGES to a larger pool")
    }

    /// The fixed range a profile's `host_base` names, checked against the
    /// same rules as the pool and held through the same locks: no host
    /// entry inside it, and no live jail on any id of it.
    public static func acquire(fixedBase base: UInt32, lockDirectory: String = HostIDPool.defaultLockDirectory,
                               place: String, etcRoot: String = "") throws(JailError) -> HostIDLease {
        let range = HostIDRange(first: base)
        guard UInt64(base) + UInt64(HostIDPool.rangeSize) <= 0xFFFF_FFFF else {
            throw .invalidRequest("\(place): host_base = \(base): the range \(base)-\(UInt64(base) + 65535) passes the largest host id")
        }
        let found = conflicts(of: range, entries: try hostEntries(root: etcRoot))
        if !found.isEmpty {
            let shown = found.prefix(3).joined(separator: ", ") + (found.count > 3 ? " and \(found.count - 3) more" : "")
            throw .invalidRequest("\(place): host_base = \(base): host ids \(range) overlap \(shown); "
                + "a jail's host ids must be clear of every account and /etc/subuid, /etc/subgid range: "
                + "pick another base, or leave host_base out to get a range of the jail's own")
        }
        // The blocks of 65536 the range touches: their locks are the ones
        // pool ranges take, so a fixed range and a pool range never share an id.
        let directory = try openLockDirectory(lockDirectory)
        defer { try? directory.close() }
        var held: [FileDescriptor] = []
        let blocks = Set([base / HostIDPool.rangeSize, range.last / HostIDPool.rangeSize]).sorted()
        for block in blocks {
            guard let lock = try tryLock(block: block * HostIDPool.rangeSize, in: directory, path: lockDirectory) else {
                for fd in held { try? fd.close() }
                throw .invalidRequest("\(place): host_base = \(base): host ids \(range) are in use by a live jail; "
                    + "two jails never share host ids: wait for it to end, or leave host_base out")
            }
            held.append(lock)
        }
        return HostIDLease(range: range, locks: held)
    }

    /// Opens (creating when missing) the lock directory. It must be a real
    /// directory owned by root and writable by no one else: whoever could
    /// write it could hold or unlink locks and make two jails share ids.
    static func openLockDirectory(_ path: String) throws(JailError) -> FileDescriptor {
        var prefix = ""
        for part in path.split(separator: "/") {
            // String += String: concrete, where "/" + part (a Substring)
            // would make the runtime look its generic witnesses up on
            // every launch.
            prefix += "/"
            prefix += String(part)
            if mkdir(prefix, 0o755) != 0, errno != EEXIST {
                throw .launcherStep("create the host id lock directory \(prefix)", errno: errno)
            }
        }
        let fd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        guard fd >= 0 else { throw .launcherStep("open the host id lock directory \(path)", errno: errno) }
        var st = stat()
        guard fstat(fd, &st) == 0 else {
            let e = errno
            close(fd)
            throw .launcherStep("stat the host id lock directory \(path)", errno: e)
        }
        guard st.st_uid == 0, st.st_mode & 0o022 == 0 else {
            close(fd)
            throw .invalidRequest("the host id lock directory \(path) must be owned by root and writable by no one else "
                + "(it is uid \(st.st_uid), mode \(String(st.st_mode & 0o7777, radix: 8)))")
        }
        return FileDescriptor(rawValue: fd)
    }

    /// An exclusive, non-blocking `flock` on `<first>.lock`; nil when
    /// another process holds it.
    static func tryLock(block first: UInt32, in directory: FileDescriptor, path: String) throws(JailError) -> FileDescriptor? {
        let fd = openat(directory.rawValue, "\(first).lock", O_RDONLY | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw .launcherStep("open the host id lock \(path)/\(first).lock", errno: errno) }
        do {
            _ = try retryingSyscall { flock(fd, LOCK_EX | LOCK_NB) }
        } catch {
            close(fd)
            if error == .wouldBlock { return nil }
            throw .launcherStep("lock \(path)/\(first).lock", errno: error.rawValue)
        }
        return FileDescriptor(rawValue: fd)
    }
}
