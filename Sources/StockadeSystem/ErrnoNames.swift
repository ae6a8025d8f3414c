#if canImport(Glibc)
import Glibc
#endif

/// errno names and numbers, the one table for profiles (`errno:EACCES`) and
/// messages. The numbers are the C library's for the architecture built.
public enum ErrnoNames {
    static let table: [(String, Int32)] = [
        ("EPERM", EPERM), ("ENOENT", ENOENT), ("ESRCH", ESRCH), ("EINTR", EINTR), ("EIO", EIO),
        ("ENXIO", ENXIO), ("E2BIG", E2BIG), ("ENOEXEC", ENOEXEC), ("EBADF", EBADF), ("ECHILD", ECHILD),
        ("EAGAIN", EAGAIN), ("ENOMEM", ENOMEM), ("EACCES", EACCES), ("EFAULT", EFAULT), ("ENOTBLK", ENOTBLK),
        ("EBUSY", EBUSY), ("EEXIST", EEXIST), ("EXDEV", EXDEV), ("ENODEV", ENODEV), ("ENOTDIR", ENOTDIR),
        ("EISDIR", EISDIR), ("EINVAL", EINVAL), ("ENFILE", ENFILE), ("EMFILE", EMFILE), ("ENOTTY", ENOTTY),
        ("ETXTBSY", ETXTBSY), ("EFBIG", EFBIG), ("ENOSPC", ENOSPC), ("ESPIPE", ESPIPE), ("EROFS", EROFS),
        ("EMLINK", EMLINK), ("EPIPE", EPIPE), ("EDOM", EDOM), ("ERANGE", ERANGE), ("EDEADLK", EDEADLK),
        ("ENAMETOOLONG", ENAMETOOLONG), ("ENOLCK", ENOLCK), ("ENOSYS", ENOSYS), ("ENOTEMPTY", ENOTEMPTY),
        ("ELOOP", ELOOP), ("ENODATA", ENODATA), ("ETIME", ETIME), ("EOVERFLOW", EOVERFLOW),
        ("ENOTSOCK", ENOTSOCK), ("EPROTONOSUPPORT", EPROTONOSUPPORT), ("EOPNOTSUPP", EOPNOTSUPP),
        ("EAFNOSUPPORT", EAFNOSUPPORT), ("EADDRINUSE", EADDRINUSE), ("EADDRNOTAVAIL", EADDRNOTAVAIL),
        ("ENETUNREACH", ENETUNREACH), ("ETIMEDOUT", ETIMEDOUT), ("ECONNREFUSED", ECONNREFUSED),
        ("EHOSTUNREACH", EHOSTUNREACH), ("ESTALE", ESTALE), ("ECANCELED", ECANCELED),
    ]

    public static func number(of name: String) -> Int32? { table.first { $0.0 == name }?.1 }
    public static func name(of number: Int32) -> String? { table.first { $0.1 == number }?.0 }
}

/// The symbolic name of an errno value (`EPERM`), for messages people search
/// for; `errno N` for a number without a name.
public func errnoName(_ code: Int32) -> String {
    ErrnoNames.name(of: code) ?? "errno \(code)"
}
