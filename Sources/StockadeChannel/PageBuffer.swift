// The channel's record buffers (64 KiB each way, more for a large record)
// come from anonymous mappings of their own, not from malloc: a page the
// channel never writes is never resident, and closing the channel returns
// the pages to the kernel. From malloc, a daemon holding a thousand idle
// workers paid both buffers in full for each: they were carved out of heap
// memory that earlier launches had touched and freed, and that malloc keeps.
#if canImport(Glibc)
import Glibc
#endif

enum PageBuffer {
    private static let pageSize = Int(sysconf(Int32(_SC_PAGESIZE)))

    /// At least `byteCount` bytes, page-aligned, zero until written.
    static func allocate(byteCount: Int) -> UnsafeMutableRawBufferPointer {
        let length = (max(byteCount, 1) + pageSize - 1) / pageSize * pageSize
        let p = mmap(nil, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
        // As malloc's allocation traps when memory runs out, so does this.
        guard let p, p != MAP_FAILED else { fatalError("cannot map \(length) bytes for a channel buffer (errno \(errno))") }
        return UnsafeMutableRawBufferPointer(start: p, count: byteCount)
    }

    /// Unmaps a buffer from ``allocate(byteCount:)``.
    static func deallocate(_ buffer: UnsafeMutableRawBufferPointer) {
        guard let base = buffer.baseAddress else { return }
        munmap(base, (max(buffer.count, 1) + pageSize - 1) / pageSize * pageSize)
    }
}
