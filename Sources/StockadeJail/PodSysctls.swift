import CStockadeSpawn
#if canImport(Glibc)
import Glibc
#endif

/// A pod's sysctls written by the launcher: those of the namespaces its
/// spawner thread has entered or made for the clone (the pod's network
/// namespace, its ipc and uts ones), which belong to the launcher's user
/// namespace, so a container in a user namespace of its own cannot write
/// them. net, ipc and uts sysctls resolve in the namespaces of the thread
/// that opens and writes them (setns of those is per thread), so this runs
/// on the spawner thread between its setns/unshare and the clone.
enum PodSysctls {
    static let procSuperMagic = 0x9fa0

    /// Writes each of `sysctls` (keys as paths below /proc/sys) through
    /// /proc/sys, opened once without following a link and checked to be
    /// procfs, each key opened beneath it with no link followed. Returns
    /// the key that failed and its errno, or nil.
    static func writeInThisThread(_ sysctls: [(key: String, value: String, namespace: Profile.Namespace)]) -> (String, Int32)? {
        guard !sysctls.isEmpty else { return nil }
        let dir = stk_openat2(AT_FDCWD, "/proc/sys", OpenFlags.path | O_DIRECTORY, Resolve.noSymlinks | Resolve.noMagicLinks)
        guard dir >= 0 else { return ("/proc/sys", errno) }
        defer { close(dir) }
        var type = 0
        guard stk_fstatfs_type(dir, &type) == 0, type == procSuperMagic else { return ("/proc/sys (not procfs)", EXDEV) }
        for sysctl in sysctls {
            let fd = stk_openat2(dir, sysctl.key, O_WRONLY, Resolve.beneath | Resolve.noSymlinks | Resolve.noMagicLinks)
            guard fd >= 0 else { return (sysctl.key, errno) }
            defer { close(fd) }
            let bytes = Array(sysctl.value.utf8)
            var written: Int
            repeat {
                written = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
            } while written < 0 && errno == EINTR
            guard written == bytes.count else { return (sysctl.key, written < 0 ? errno : EIO) }
        }
        return nil
    }

    /// How a namespace is named in messages.
    static func name(_ namespace: Profile.Namespace) -> String {
        switch namespace {
        case .net: return "network"
        default: return namespace.rawValue
        }
    }
}
