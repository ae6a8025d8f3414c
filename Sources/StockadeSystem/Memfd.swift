// Anonymous memory files (memfd) and their seals. The channel bootstrap
// hands the worker its key in a sealed memfd, and bulk transfers travel in
// sealed memfds: a seal is what lets the receiver trust that the bytes it
// checked are the bytes it reads.
public import SystemPackage
import CStockadeSpawn
#if canImport(Glibc)
import Glibc
#endif

/// The seals on a memfd (`F_SEAL_*`).
public struct FileSeals: OptionSet, Sendable, CustomStringConvertible {
    public let rawValue: CInt
    public init(rawValue: CInt) { self.rawValue = rawValue }

    /// No further seals may be added.
    public static let seal = FileSeals(rawValue: 0x0001)
    /// The file may not shrink.
    public static let shrink = FileSeals(rawValue: 0x0002)
    /// The file may not grow.
    public static let grow = FileSeals(rawValue: 0x0004)
    /// The contents may not change.
    public static let write = FileSeals(rawValue: 0x0008)

    /// Every seal that makes the contents and size immutable for good.
    public static let immutable: FileSeals = [.seal, .shrink, .grow, .write]

    public var description: String {
        var names: [String] = []
        if contains(.seal) { names.append("seal") }
        if contains(.shrink) { names.append("shrink") }
        if contains(.grow) { names.append("grow") }
        if contains(.write) { names.append("write") }
        return names.isEmpty ? "none" : names.joined(separator: ",")
    }
}

private let F_ADD_SEALS: CInt = 1033
private let F_GET_SEALS: CInt = 1034

extension FileDescriptor {
    /// Creates an anonymous memory file, close-on-exec, with sealing allowed.
    ///
    /// The corresponding C function is `memfd_create`.
    public static func memfd(name: String, allowSealing: Bool = true) throws(Errno) -> FileDescriptor {
        let flags: CUnsignedInt = 0x0001 /* MFD_CLOEXEC */ | (allowSealing ? 0x0002 /* MFD_ALLOW_SEALING */ : 0)
        let fd = name.withCString { stk_memfd_create($0, flags) }
        guard fd >= 0 else { throw Errno(rawValue: errno) }
        return FileDescriptor(rawValue: fd)
    }

    /// Adds seals to a memfd.
    ///
    /// The corresponding C function is `fcntl` with `F_ADD_SEALS`.
    public func addSeals(_ seals: FileSeals) throws(Errno) {
        _ = try retryingSyscall { stk_fcntl_int(rawValue, F_ADD_SEALS, seals.rawValue) }
    }

    /// The seals on a memfd. Fails with ``Errno/invalidArgument`` for a file
    /// that is not a memfd (or does not support sealing).
    ///
    /// The corresponding C function is `fcntl` with `F_GET_SEALS`.
    public func seals() throws(Errno) -> FileSeals {
        FileSeals(rawValue: try retryingSyscall { stk_fcntl_int(rawValue, F_GET_SEALS, 0) })
    }

    /// The file's size in bytes.
    ///
    /// The corresponding C function is `fstat`.
    public func fileSize() throws(Errno) -> Int {
        var info = Glibc.stat()
        _ = try retryingSyscall { Glibc.fstat(rawValue, &info) }
        return Int(info.st_size)
    }
}

/// What `fstat` says about a file, the parts a receiver of a passed
/// descriptor checks before it uses it.
public struct FileStatus: Sendable {
    /// `st_mode`: type and permission bits.
    public var mode: UInt32
    public var size: Int
    /// `st_blocks` × 512: the storage the file really holds. Below `size`,
    /// the file has holes that the first read or mapping would allocate.
    public var allocatedBytes: Int

    public var isRegularFile: Bool { mode & UInt32(S_IFMT) == UInt32(S_IFREG) }
}

extension FileDescriptor {
    /// Type, size and allocated storage of the open file.
    ///
    /// The corresponding C function is `fstat`.
    public func fileStatus() throws(Errno) -> FileStatus {
        var info = Glibc.stat()
        _ = try retryingSyscall { Glibc.fstat(rawValue, &info) }
        return FileStatus(mode: UInt32(info.st_mode), size: Int(info.st_size), allocatedBytes: Int(info.st_blocks) * 512)
    }
}

/// A memory mapping of a file, unmapped when the value is released.
public final class FileMapping {
    public let pointer: UnsafeMutableRawPointer
    public let count: Int

    /// Maps `count` (> 0) bytes of `fd` shared; `writable` adds
    /// `PROT_WRITE`; `populate` (`MAP_POPULATE`) sets up every page at once
    /// instead of one fault per page.
    ///
    /// The corresponding C function is `mmap`.
    public init(_ fd: FileDescriptor, count: Int, writable: Bool, populate: Bool = false) throws(Errno) {
        precondition(count > 0, "map at least one byte")
        let prot = writable ? PROT_READ | PROT_WRITE : PROT_READ
        let flags = MAP_SHARED | (populate ? MAP_POPULATE : 0)
        guard let p = mmap(nil, count, prot, flags, fd.rawValue, 0), p != MAP_FAILED else {
            throw Errno(rawValue: errno)
        }
        pointer = p
        self.count = count
    }

    public var bytes: UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: pointer, count: count) }

    deinit { munmap(pointer, count) }
}

/// Page residency hints for a read-only shared mapping of a sealed file,
/// so that reading a large mapping front to back keeps only the part in
/// use in this process's resident set.
public enum MappedPages {
    /// `MADV_POPULATE_READ` (Linux 5.14), not in every libc's headers.
    static let populateRead: Int32 = 22

    /// The whole pages that `[start, start + count)` touches, or nil.
    private static func pages(_ start: UnsafeRawPointer, _ count: Int) -> (UnsafeMutableRawPointer, Int)? {
        let page = UInt(sysconf(Int32(_SC_PAGESIZE)))
        let first = UInt(bitPattern: start) & ~(page - 1)
        let end = (UInt(bitPattern: start) + UInt(count) + page - 1) & ~(page - 1)
        guard count > 0, let p = UnsafeMutableRawPointer(bitPattern: first) else { return nil }
        return (p, Int(end - first))
    }

    /// Faults the pages of `[start, start + count)` in at once (one call
    /// instead of a fault per few pages). A hint: where the kernel lacks
    /// it, the pages fault in as they are read.
    ///
    /// The corresponding C function is `madvise` with `MADV_POPULATE_READ`.
    public static func prefault(_ start: UnsafeRawPointer, count: Int) {
        guard let (p, n) = pages(start, count) else { return }
        _ = madvise(p, n, populateRead)
    }

    /// Drops the pages of `[start, start + count)` from this process's
    /// page tables. Only for a shared mapping of a file that cannot change
    /// (a sealed memfd): a later read faults the same bytes in again, so
    /// pages shared with a neighbouring range may be dropped too.
    ///
    /// The corresponding C function is `madvise` with `MADV_DONTNEED`.
    public static func drop(_ start: UnsafeRawPointer, count: Int) {
        guard let (p, n) = pages(start, count) else { return }
        _ = madvise(p, n, MADV_DONTNEED)
    }
}
