public import SystemPackage
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
#if canImport(Glibc)
import Glibc
#endif

/// `stockade-init`, the static program every jail with a pid namespace runs
/// as PID 1 (Sources/stockade-init). It is found beside the running
/// executable (`.build/debug/`, `/usr/bin/`), or in `../libexec/stockade/`
/// from there, and opened `O_PATH` before clone: the trampoline execs that
/// fd (`execveat(AT_EMPTY_PATH)`) once the jail's root has replaced the
/// host's, so no path inside the jail is involved.
public enum InitExecutable {
    public static let name = "stockade-init"

    /// Where it is looked for, in order.
    public static func candidates(executable: String? = runningExecutable()) -> [String] {
        guard let executable, let slash = executable.lastIndex(of: "/") else { return [] }
        let dir = String(executable[..<slash])
        let parent = dir.lastIndex(of: "/").map { String(dir[..<$0]) } ?? ""
        return ["\(dir)/\(name)", "\(parent)/libexec/stockade/\(name)"]
    }

    public static func runningExecutable() -> String? {
        var buf = [CChar](repeating: 0, count: 4096)
        let n = readlink("/proc/self/exe", &buf, buf.count - 1)
        guard n > 0 else { return nil }
        return String(decoding: buf[..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// Opens the first candidate that exists. It must be a regular file
    /// owned by root or by the caller and writable by no one else: the jail's
    /// PID 1 is whatever this file holds.
    public static func open(candidates: [String] = candidates()) throws -> FileDescriptor {
        for path in candidates {
            let fd = Glibc.open(path, OpenFlags.path | O_NOFOLLOW | O_CLOEXEC)
            if fd < 0 {
                if errno == ENOENT || errno == ENOTDIR { continue }
                throw JailError.launcherStep("open \(path)", errno: errno)
            }
            var st = stat()
            guard fstat(fd, &st) == 0 else {
                let e = errno
                close(fd)
                throw JailError.launcherStep("stat \(path)", errno: e)
            }
            guard st.st_mode & S_IFMT == S_IFREG, st.st_uid == 0 || st.st_uid == geteuid(), st.st_mode & 0o022 == 0 else {
                close(fd)
                throw JailError.invalidRequest("\(path) is not a regular file owned by root or by you and writable by no one else "
                    + "(uid \(st.st_uid), mode \(String(st.st_mode & 0o7777, radix: 8))); it would run as every jail's PID 1")
            }
            return FileDescriptor(rawValue: fd)
        }
        throw JailError.invalidRequest("\(name) (every jail's PID 1) is not installed: looked for "
            + candidates.joined(separator: " and ") + "; build it with `swift build` or install it beside stockade")
    }
}
