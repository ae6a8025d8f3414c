import CStockadeSpawn
import StockadeSystem
import StockadeJail
#if canImport(Glibc)
import Glibc
#endif

/// Mount points a container's mounts need in its rootfs, made by the
/// runtime (root) before the launch: inside its user namespace the
/// container's root owns nothing of a root-owned rootfs and could not make
/// them. The rootfs came from an image and is untrusted: every component is
/// opened beneath the rootfs's fd with no symlink followed (openat2
/// RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS), and a missing one is made by
/// name in the directory already opened; a symlink on the way is refused.
enum MountPoints {
    static let resolve: UInt64 = Resolve.beneath | Resolve.noSymlinks | Resolve.noMagicLinks

    /// `targets`: (path inside the container, whether it is a file, the field for messages).
    static func make(rootfs: String, targets: [(path: String, file: Bool, field: String)]) throws {
        let root = open(rootfs, OpenFlags.path | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        guard root >= 0 else { throw SpecError("config.json root.path: open \(rootfs): \(errnoName(errno))") }
        defer { close(root) }
        for t in targets {
            let names = t.path.split(separator: "/").map(String.init)
            var current = fcntl(root, F_DUPFD_CLOEXEC, 0)
            defer { close(current) }
            for (i, name) in names.enumerated() {
                let last = i == names.count - 1
                var next = stk_openat2(current, name, OpenFlags.path, resolve)
                if next < 0 && errno == ENOENT {
                    if last && t.file {
                        let fd = openat(current, name, O_CREAT | O_EXCL | O_WRONLY | O_NOFOLLOW | O_CLOEXEC, 0o644)
                        if fd >= 0 { close(fd) } else if errno != EEXIST { throw failure(t, name) }
                    } else if mkdirat(current, name, 0o755) != 0 && errno != EEXIST {
                        throw failure(t, name)
                    }
                    next = stk_openat2(current, name, OpenFlags.path, resolve)
                }
                guard next >= 0 else { throw failure(t, name) }
                close(current)
                current = next
            }
        }
    }

    static func failure(_ t: (path: String, file: Bool, field: String), _ name: String) -> SpecError {
        let why = errno == ELOOP ? "a symlink in the rootfs is on the way (\(name)); mount points are never reached through links"
            : "\(name): \(errnoName(errno))"
        return SpecError("\(t.field): cannot make the mount point \(t.path) in the rootfs: \(why)")
    }
}
