import Foundation
import StockadeJail
import StockadeSystem
import CStockadeSpawn
#if canImport(Glibc)
import Glibc
#endif

/// The namespaces a container joins by path, opened so that a path cannot
/// hand it a namespace of the host or of another pod, and the pod's user
/// namespace it then joins.
///
/// A pod whose containers share one pid namespace (CRI `pid: POD`) names
/// the sandbox's: `/proc/PID/ns/pid`, PID the sandbox container's first
/// process. That namespace belongs to the sandbox's user namespace, where
/// a container in a user namespace of its own holds no capability; so the
/// pod's containers share that user namespace (as Kubernetes pods without
/// host users do): the container joins it first, its id maps are the
/// sandbox's, and its own namespaces (mnt, cgroup, ...) are made inside it.
///
/// The sandbox is hostile once it has run: its pid may have been reused by
/// the time the path is opened. A `/proc/PID/ns/...` path is therefore
/// opened only for a container this runtime recorded under `--root` (the
/// pod's sandbox, when the spec names one), while a pidfd holds PID and the
/// process's start time matches the record; the pid namespace's owner (the
/// kernel's answer, on the opened fd) must be the sandbox's own user
/// namespace, a child of the runtime's, made for the sandbox's host ids.
enum PodUserNamespace {
    /// containerd's annotation naming a pod container's sandbox.
    static let criSandboxID = "io.kubernetes.cri.sandbox-id"

    // ioctl numbers (linux/nsfs.h).
    static let nsGetUserns: UInt = 0xB701
    static let nsGetParent: UInt = 0xB702
    static let nsGetOwnerUID: UInt = 0xB704

    /// `/proc/PID/ns/NAME` -> (PID, NAME); nil for any other path.
    static func procPath(_ path: String) -> (pid: Int32, name: String)? {
        let parts = path.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 5, parts[0].isEmpty, parts[1] == "proc", parts[3] == "ns",
              let pid = Int32(parts[2]), pid > 0, String(pid) == parts[2], !parts[4].isEmpty else { return nil }
        return (pid, String(parts[4]))
    }

    /// The recorded container whose first process `pid` names: the pod's
    /// sandbox when the spec names one (and it must then be that one), else
    /// any container under `--root`.
    static func record(of pid: Int32, spec: Spec, store: StateStore?, field: String, path: String) throws -> ContainerRecord? {
        if let sandbox = spec.annotations?[criSandboxID] {
            guard let store, let (record, dir) = try store.record(sandbox) else {
                throw SpecError("\(field): \(path): the pod's sandbox \(sandbox) is not a container of this runtime (--root \(store?.path ?? "none")); a Stockade container joins only its own pod's namespaces")
            }
            try? dir.close()
            guard record.annotations[SpecJail.criContainerType] == "sandbox" else {
                throw SpecError("\(field): \(path): \(sandbox) is not a pod sandbox")
            }
            guard record.pid == pid else {
                throw SpecError("\(field): \(path): pid \(pid) is not the pod's sandbox \(sandbox) (its pid is \(record.pid)); a Stockade container joins only its own pod's namespaces")
            }
            return record
        }
        for id in store?.ids() ?? [] {
            if let (record, dir) = try? store?.record(id) {
                try? dir.close()
                if record.pid == pid { return record }
            }
        }
        return nil
    }

    /// Opens /proc/PID/ns/NAME of `record`'s first process: between a
    /// pidfd_open of PID and the check that it is still alive, and only
    /// while its start time is the recorded one, so a reused pid is never
    /// taken for the container. Also returns its user namespace, opened
    /// the same way.
    static func openOf(_ record: ContainerRecord, name: String, field: String) throws -> (ns: Int32, user: Int32) {
        let pid = record.pid
        let pidfd: Int32
        switch record.openFirstProcess() {
        case .open(let fd): pidfd = fd
        case .gone(let e):
            throw SpecError("\(field): container \(record.id) is not running (pidfd_open \(pid): \(errnoName(e)))")
        case .replaced:
            throw SpecError("\(field): pid \(pid) is no longer container \(record.id) (its start time differs from the record)")
        }
        defer { close(pidfd) }
        let ns = Glibc.open("/proc/\(pid)/ns/\(name)", O_RDONLY | O_CLOEXEC)
        guard ns >= 0 else { throw SpecError("\(field): open /proc/\(pid)/ns/\(name): \(errnoName(errno))") }
        let user = Glibc.open("/proc/\(pid)/ns/user", O_RDONLY | O_CLOEXEC)
        guard user >= 0 else {
            close(ns)
            throw SpecError("\(field): open /proc/\(pid)/ns/user: \(errnoName(errno))")
        }
        // Still the process the pidfd holds: the fds above are its.
        guard stk_pidfd_send_signal(pidfd, 0) == 0, ProcessStat.isAlive(pid, startTime: record.pidStartTime) else {
            close(ns)
            close(user)
            throw SpecError("\(field): container \(record.id) ended while its namespaces were opened")
        }
        return (ns, user)
    }

    /// Device and inode of the namespace behind `fd`.
    static func identity(_ fd: Int32) -> (UInt64, UInt64)? {
        var st = stat()
        guard fstat(fd, &st) == 0 else { return nil }
        return (UInt64(st.st_dev), UInt64(st.st_ino))
    }

    static func ownUserNamespace() -> (UInt64, UInt64)? {
        var st = stat()
        guard stat("/proc/self/ns/user", &st) == 0 else { return nil }
        return (UInt64(st.st_dev), UInt64(st.st_ino))
    }

    /// Checks that `user` (a recorded container's user namespace, opened
    /// with `openOf`) is that container's own: a child of the runtime's
    /// user namespace whose owner is the first of the container's recorded
    /// host ids. Returns its identity, or nil when it is the runtime's own
    /// (the container has none of its own).
    static func checkUserNamespace(_ user: Int32, record: ContainerRecord, field: String, path: String) throws -> (UInt64, UInt64)? {
        guard let userID = identity(user), let own = ownUserNamespace() else {
            throw SpecError("\(field): \(path): fstat of a user namespace: \(errnoName(errno))")
        }
        if userID == own { return nil }
        let parent = Int32(truncatingIfNeeded: ioctl(user, nsGetParent))
        let parentID = parent >= 0 ? identity(parent) : nil
        if parent >= 0 { close(parent) }
        guard parentID.map({ $0 == own }) ?? false else {
            throw SpecError("\(field): \(path): container \(record.id)'s user namespace is not one the runtime made for it (it is nested in another)")
        }
        var uid: uid_t = 0
        guard ioctl(user, nsGetOwnerUID, &uid) == 0 else { throw SpecError("\(field): \(path): NS_GET_OWNER_UID: \(errnoName(errno))") }
        if let ids = record.hostIDs, let first = ids.split(separator: "-").first.flatMap({ UInt32($0) }), uid != first {
            throw SpecError("\(field): \(path): its user namespace belongs to host uid \(uid), not to container \(record.id)'s host ids \(ids)")
        }
        return userID
    }

    /// Opens every namespace the spec joins by path; puts the user
    /// namespace first. When the container would make a user namespace but
    /// joins a namespace a container's user namespace owns (the pod's pid
    /// namespace), it joins that user namespace instead. A pid or user
    /// namespace is joined only through a recorded container (see above),
    /// and every namespace joined that way must be owned by the runtime's
    /// user namespace or by that container's own.
    static func open(_ joined: [(String, Profile.Namespace)], makesUser: Bool, spec: Spec, store: StateStore?)
        throws -> [(fd: Int32, namespace: Profile.Namespace)] {
        var result: [(fd: Int32, namespace: Profile.Namespace)] = []
        var podUser: (fd: Int32, id: (UInt64, UInt64), from: String)?
        var done = false
        defer {
            if !done {
                for r in result { close(r.fd) }
                if let podUser { close(podUser.fd) }
            }
        }
        for (path, kind) in joined {
            let field = "config.json linux.namespaces (\(kind.rawValue))"
            let proc = procPath(path)
            let record = try proc.flatMap { try Self.record(of: $0.pid, spec: spec, store: store, field: field, path: path) }
            guard let proc, let record, proc.name == kind.procName else {
                if kind == .pid || kind == .user {
                    throw SpecError("\(field): \(path) is not the namespace of a Stockade container of this pod: a \(kind.rawValue) namespace is joined only as /proc/PID/ns/\(kind.procName) of the pod's sandbox, which this runtime started")
                }
                // The pod's network namespace containerd made (a bind mount
                // of its own), or a path the runtime does not know: opened as given.
                let fd = Glibc.open(path, O_RDONLY | O_CLOEXEC)
                guard fd >= 0 else { throw SpecError("\(field): open \(path): \(String(cString: strerror(errno)))") }
                result.append((fd, kind))
                continue
            }
            let (ns, user) = try openOf(record, name: proc.name, field: field)
            result.append((ns, kind))
            var keepUser = false
            defer { if !keepUser { close(user) } }
            if kind == .pid {
                guard SpecKernel.isOtherThanOwn(ns, kind: .pid) else {
                    throw SpecError("\(field): \(path) is the host's pid namespace (the runtime's own); a container never joins it")
                }
            }
            guard let userID = try checkUserNamespace(user, record: record, field: field, path: path) else {
                if kind == .pid && makesUser {
                    throw SpecError("\(field): \(path): container \(record.id) has no user namespace of its own, so a container with one cannot join its pid namespace")
                }
                continue
            }
            if kind != .user {
                let owner = Int32(truncatingIfNeeded: ioctl(ns, nsGetUserns))
                guard owner >= 0 else { throw SpecError("\(field): \(path): NS_GET_USERNS: \(errnoName(errno))") }
                let ownerID = identity(owner)
                close(owner)
                // Owned by the runtime's user namespace: a pod namespace the
                // launcher made (ipc, uts), entered before the clone.
                if let ownerID, let own = ownUserNamespace(), ownerID == own { continue }
                guard ownerID.map({ $0 == userID }) ?? false else {
                    throw SpecError("\(field): \(path): the namespace belongs to a user namespace that is not container \(record.id)'s own")
                }
            }
            if let podUser {
                guard podUser.id == userID else {
                    throw SpecError("\(field): \(path) belongs to another user namespace than \(podUser.from); a container joins one pod's namespaces")
                }
            } else {
                podUser = (user, userID, path)
                keepUser = true
            }
        }
        // A user namespace joined by path is the pod's (checked above); it
        // is joined once.
        if let podUser, result.contains(where: { $0.namespace == .user }) {
            close(podUser.fd)
        } else if makesUser, let podUser {
            result.insert((podUser.fd, .user), at: 0)
        } else if let podUser {
            close(podUser.fd)
        }
        done = true
        return result.sorted { a, b in a.namespace == .user && b.namespace != .user }
    }
}
