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
///
/// On cgroup v2 the kernel moves a process between two cgroups only for a
/// writer who may write `cgroup.procs` of their common ancestor, so a
/// launcher outside the delegated cgroup cannot place jails in it; and a
/// cgroup that hands controllers down holds no processes. Root therefore
/// also makes the leaf `session` in it (the user's, like the cgroup itself)
/// and starts the user's session or service there, as a login manager
/// would; the launcher finds itself below the delegated cgroup and makes
/// its tenants and jails beside `session`.
public enum CgroupDelegation {
    /// The delegated cgroup of `uid`, relative to a hierarchy's root.
    public static func path(uid: UInt32, name: String = "stockade") -> String { "/\(name)/user-\(uid)" }

    /// The leaf below the delegated cgroup where root starts the user's
    /// processes on cgroup v2.
    public static let sessionLeaf = "session"

    /// The files of the delegated cgroup handed to the user, where the kernel has them.
    static let delegatedFiles = ["cgroup.procs", "cgroup.subtree_control", "cgroup.threads", "tasks"]
    /// The files of the session leaf handed to the user: the user may move
    /// its own processes back into it, not hand controllers down from it.
    static let sessionFiles = ["cgroup.procs", "cgroup.threads"]

    /// What ``delegate(uid:gid:name:host:)`` prepared.
    public struct Delegated: Sendable, Equatable {
        /// The delegated cgroup's directory in each hierarchy (one on v2).
        public var directories: [String]
        /// v2: the leaf to start the user's processes in (write their pids
        /// to its `cgroup.procs` as root); nil on v1, where the launcher
        /// moves its jails in itself.
        public var session: String?
    }

    /// True when `dir` is a cgroup directory owned by the caller, which may
    /// make cgroups in it and move processes into it.
    static func isOwnedByCaller(_ dir: String) -> Bool {
        var st = stat()
        guard lstat(dir, &st) == 0, (st.st_mode & S_IFMT) == S_IFDIR, st.st_uid == geteuid() else { return false }
        return access(dir, W_OK) == 0 && access(dir + "/cgroup.procs", W_OK) == 0
    }

    /// Creates (or repairs) the delegated cgroup of `uid` and hands it over
    /// (on v2 with its session leaf). Needs root.
    public static func delegate(uid: UInt32, gid: UInt32, name: String = "stockade",
                                host: CgroupHost = .detect()) throws(CgroupError) -> Delegated {
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
        var session: String?
        if manager.version == 2, let dir = dirs.first {
            let leaf = dir + "/" + sessionLeaf
            try CgroupFS.mkdir(leaf, existingOK: true)
            try own(leaf, uid: uid, gid: gid)
            for file in sessionFiles where CgroupFS.exists(leaf + "/" + file) {
                try own(leaf + "/" + file, uid: uid, gid: gid)
            }
            session = leaf
        }
        return Delegated(directories: dirs, session: session)
    }

    /// Removes the delegated cgroup of `uid`: jails of launchers that are
    /// gone are killed and removed with it, and so is its parent `/<name>`
    /// once nothing else is in it. Refused, naming the processes and their
    /// cgroups, while anything still runs there (the user's session, a
    /// live launcher's jail). Returns the directories removed.
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
        var failure: CgroupError?
        do { try manager.closeRemovingBase() } catch { failure = error }
        let left = dirs.filter { CgroupFS.exists($0) }
        guard left.isEmpty else {
            let running = left.flatMap { living(in: $0) }
            guard running.isEmpty else {
                let list = running.map { "\($0.dir) (\($0.pids.map(String.init).joined(separator: " ")))" }.joined(separator: ", ")
                throw CgroupError(.busy, "the delegated cgroup of uid \(uid) still holds running processes: \(list); end them (the user's session, launchers with running jails) and undelegate again")
            }
            throw failure ?? CgroupError(.busy, "the delegated cgroup of uid \(uid) could not be removed: \(left.joined(separator: ", "))")
        }
        // The parent is also the base of root's own launchers, which
        // remove it themselves when they made it; an empty one is left
        // over from the delegation. rmdir fails on one still in use.
        for dir in dirs {
            let parent = String(dir[..<(dir.lastIndex(of: "/") ?? dir.endIndex)])
            if parent.hasSuffix("/" + name), CgroupFS.children(parent).isEmpty { _ = CgroupFS.rmdir(parent) }
        }
        return dirs
    }

    /// Every cgroup at or below `dir` that holds processes, with their pids.
    private static func living(in dir: String) -> [(dir: String, pids: [Int32])] {
        let here = CgroupFS.procs(dir)
        return (here.isEmpty ? [] : [(dir, here)]) + CgroupFS.children(dir).flatMap { living(in: dir + "/" + $0) }
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
