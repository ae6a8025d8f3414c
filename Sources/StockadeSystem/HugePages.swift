// Transparent huge pages for large, short-lived buffers. A fresh 64 MiB
// allocation is otherwise faulted in (and zeroed) one 4 KiB page at a time:
// 16384 faults, which cost more than decrypting into the buffer. With
// MADV_HUGEPAGE the kernel backs it with 2 MiB pages where it can (32
// faults); where THP is disabled the advice is ignored.
#if canImport(Glibc)
import Glibc
#endif

public enum HugePages {
    /// The transparent huge page size on x86-64 and arm64 (4 KiB base pages).
    public static let size = 2 << 20

    /// Advises the kernel to back the whole 2 MiB pages inside
    /// `[start, start + count)` with huge pages. Call it before the memory
    /// is first touched; it is only a hint, so failures are ignored.
    ///
    /// The corresponding C function is `madvise` with `MADV_HUGEPAGE`.
    public static func advise(_ start: UnsafeMutableRawPointer, count: Int) {
        let first = (UInt(bitPattern: start) + UInt(size) - 1) & ~UInt(size - 1)
        let end = (UInt(bitPattern: start) + UInt(count)) & ~UInt(size - 1)
        guard end > first, let aligned = UnsafeMutableRawPointer(bitPattern: first) else { return }
        _ = madvise(aligned, Int(end - first), MADV_HUGEPAGE)
    }
}
