import StockadeSystem
#if canImport(Glibc)
import Glibc
#endif

/// A cgroup handed to one unprivileged user by root, for hosts where no
/// service manager delegates one (`stockade cgroups --delegate USER`).
///
/// It lives at `/<name>/user-<uid>` below the root of each hierarchy Stockade
/// uses (every v1 hierarchy of the v1 backend; the unified one on v2). Root
/// creates it, enables the controllers below it (v2) and, following the
/// kernel's delegation rules, gives the user the directory and only the
/// files that let it manage its own subtree: `cgroup.procs`,
/// `cgroup.subtree_control` and `cgroup.threads` (v2), `cgroup.procs` and
/// `tasks` (v1). The limit files of the delegated cgroup itself stay root's,
/// so whatever root sets there caps everything the user runs in it.
public enum CgroupDelegation {
    /// The delegated cgroup of `uid`, relative to a hierarchy's root.
    public static func path(uid: UInt32, name: String = "stockade") -> String { "/\(name)/user-\(uid)" }

    /// The files of the delegated cgroup handed to the user, where the kernel has them.
    static let delegatedFiles = ["cgroup.procs", "cgroup.subtree_control", "cgroup.threads", "tasks"]

    /// True when `dir` is a cgroup directory owned by the caller, which may
    /// make cgroups in it and move processes into it.
    static func isOwnedByCaller(_ dir: String) -> Bool {
        var st = stat()
        guard lstat(dir, &st) == 0, (st.st_mode & S_IFMT) == S_IFDIR, st.st_uid == geteuid() else { return false }
        return access(dir, W_OK) == 0 && access(dir + "/cgroup.procs", W_OK) == 0
    }

    /// Creates (or repairs) the delegated cgroup of `uid` and hands it over.
    /// Returns its directories, one per hierarchy. Needs root.
    public static func delegate(uid: UInt32, gid: UInt32, name: String = "stockade",
                                host: CgroupHost = .detect()) throws(CgroupError) -> [String] {
        guard geteuid() == 0 else {
            throw CgroupError(.unsupported, "delegating a cgroup needs root (it creates cgroups and changes their owner)")
        }
        guard uid != 0 else { throw CgroupError(.unsupported, "root needs no delegated cgroup") }
        let manager = try CgroupManager(configuration: .init(base: .path(path(uid: uid, name: name)), sweepStale: false), host: host)
        var dirs: [String] = []
        for dir in manager.basePaths {
            try own(dir, uid: uid, gid: gid)
            for file in delegatedFiles where CgroupFS.exists(dir + "/" + file) {
                try own(dir + "/" + file, uid: uid, gid: gid)
            }
            dirs.append(dir)
        }
        return dirs
    }

    /// Removes the delegated cgroup of `uid`: jails of launchers that are
    /// gone are killed and removed with it. Refused while a live launcher
    /// still has a jail there. Returns the directories removed.
    public static func undelegate(uid: UInt32, name: String = "stockade", host: CgroupHost = .detect()) throws(CgroupError) -> [String] {
        guard geteuid() == 0 else { throw CgroupError(.unsupported, "removing a delegated cgroup needs root") }
        let rel = path(uid: uid, name: name)
        let present = host.unified.map { CgroupFS.exists($0.mountPoint + rel) } ?? false
            || host.hierarchies.contains { CgroupFS.exists($0.mountPoint + rel) }
        guard present else { throw CgroupError(.unsupported, "uid \(uid) has no delegated cgroup (\(rel) in no hierarchy)") }
        let manager = try CgroupManager(configuration: .init(base: .path(rel), sweepStale: false), host: host)
        let dirs = manager.basePaths
        // Whatever the user made below the base that is not Stockade's
        // tree (its own cgroups) is removed too, deepest first.
        for dir in dirs { removeForeign(dir) }
        try manager.closeRemovingBase()
        let left = dirs.filter { CgroupFS.exists($0) }
        guard left.isEmpty else {
            throw CgroupError(.busy, "the delegated cgroup of uid \(uid) still holds jails of running launchers: \(left.joined(separator: ", "))")
        }
        return dirs
    }

    /// Removes the user's own cgroups below `dir` that are empty of
    /// processes (not Stockade's `tenant-*` tree, which the manager sweeps).
    private static func removeForeign(_ dir: String) {
        for child in CgroupFS.children(dir) where !child.hasPrefix("tenant-") {
            let path = dir + "/" + child
            removeForeign(path)
            if CgroupFS.procs(path).isEmpty { _ = CgroupFS.rmdir(path) }
        }
    }

    private static func own(_ path: String, uid: UInt32, gid: UInt32) throws(CgroupError) {
        do {
            _ = try retryingSyscall { lchown(path, uid, gid) }
        } catch {
            throw CgroupError(.io, "cannot give \(path) to uid \(uid)", cause: error)
        }
    }
}
