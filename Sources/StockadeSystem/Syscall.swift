public import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// Runs a system call, retrying on `EINTR`, and turns a `-1` return into an
/// ``Errno``. Every raw call in Stockade goes through here.

public func retryingSyscall<T: FixedWidthInteger>(_ body: () -> T) throws(Errno) -> T {
    while true {
        let result = body()
        if result != -1 { return result }
        let code = Errno(rawValue: errno)
        if code == .interrupted { continue }
        throw code
    }
}
