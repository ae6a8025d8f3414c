import CStockadeSpawn
#if canImport(Glibc)
import Glibc
#endif

/// What an OCI container (`stockade-runtime`) adds to a launch: the same
/// launcher, spawn plan and trampoline as every jail, with these switches.
/// Every field's default leaves a jail exactly as `stockade run` makes it.
public struct OCILaunch: Sendable {
    /// The bundle's rootfs, bound as the jail's root instead of a fresh
    /// tmpfs (resolved and checked like a bind source).
    public var rootDirectory: String?
    /// The jail outlives the launcher: no parent-death signal (`create`
    /// returns while the container keeps running under the shim).
    public var detached = false
    /// An fd (the container's exec FIFO, opened read-write) the worker
    /// blocks on, fully built, until `start` writes one byte into it.
    public var execWaitFD: Int32?
    /// Namespaces joined instead of made (a pod's shared ones, or all of a
    /// container's for `exec`); the user namespace must come first.
    public var join: [(fd: Int32, namespace: Profile.Namespace)] = []
    /// Namespaces (net, ipc, uts) the spawner thread enters just before
    /// clone and leaves right after, so the child starts in them: ones owned
    /// by the launcher's own user namespace (a pod's network namespace that
    /// containerd made), which a child already inside its new user
    /// namespace has no capability to join; and a pod's pid namespace,
    /// which only a process born in it can mount a /proc for.
    public var enterBeforeClone: [(fd: Int32, namespace: Profile.Namespace)] = []
    /// Namespaces (ipc, uts) the spawner thread makes just before clone, so
    /// that they belong to the launcher's user namespace and every
    /// container of a pod, each in a user namespace of its own, can enter
    /// them as above; `hostnameBeforeClone` is then set by the thread.
    public var unshareBeforeClone: [Profile.Namespace] = []
    public var hostnameBeforeClone: String?
    /// The joined mount namespace is the root: no new root is built (exec).
    public var joinedRoot = false
    /// Capability sets kept (bit N = capability N); nil clears every one.
    public var capabilities: Capabilities?
    /// Supplementary groups (`process.user.additionalGids`).
    public var groups: [UInt32] = []
    /// The spec's mounts in order: binds and tmpfs as ``MountSpec``s, kernel
    /// filesystems (sysfs, mqueue, cgroup2, ...) by type.
    public var mounts: [Mount] = []
    /// How each of `mounts` is named in messages (`config.json mounts[3]`).
    public var mountFields: [String] = []
    /// Paths made read-only after the mounts (`linux.readonlyPaths`).
    public var readonlyPaths: [String] = []
    /// The uid and gid maps written for a new user namespace, as given by
    /// the spec (`linux.uidMappings`); nil: the host id range of the jail's own.
    public var idMaps: (uid: String, gid: String)?
    /// The createRuntime and createContainer hooks (with prestart): called
    /// while the child waits after its mounts, before its root is made
    /// read-only and switched to. The container's root is then at its host
    /// path in the container's mount namespace, whose root is the host's
    /// tree (as under runc); afterwards that root becomes the namespace's.
    /// A throw fails the launch. nil: no pause.
    public var hooks: (@Sendable (HookPoint) throws -> Void)?
    /// startContainer hooks, run by the worker after `start`, under its
    /// Landlock domain and seccomp filter, just before execve.
    public var startHooks: [StartHook] = []
    /// Their stdin: an fd (a memfd) whose content is the state; the caller
    /// fills it once the pid is known, before `start`.
    public var startStateFD: Int32?

    /// `process.umask`, set in the worker once its root is built; nil: the launcher's.
    public var umask: UInt32?
    /// `linux.rootfsPropagation` of the root tree: MS_PRIVATE (0: this),
    /// MS_SLAVE or MS_UNBINDABLE (the caller refuses shared).
    public var rootPropagation: UInt64 = 0
    /// `linux.sysctl` as (key as a path below /proc/sys, value), checked by
    /// the caller to be namespaced and in namespaces of the container's own.
    public var sysctls: [(key: String, value: String)] = []
    /// The sysctls of the namespaces in `enterBeforeClone` and
    /// `unshareBeforeClone` (a pod's, owned by the launcher's user
    /// namespace, where the container holds no capability): written by the
    /// spawner thread while it is inside them, before the clone. Same form
    /// as `sysctls`, with the namespace each belongs to.
    public var launcherSysctls: [(key: String, value: String, namespace: Profile.Namespace)] = []
    /// The container's terminal: a detached devpts instance (from
    /// `stk_devpts_instance`) holding its pty, attached at /dev/pts instead
    /// of a fresh one, and the pty's name there ("pts/0"), bound over
    /// /dev/console. The caller closes the fd after the launch.
    public var devpts: (fd: Int32, console: String)?

    /// Where a paused container stands: its first process, and its root as
    /// the launcher found it on the host (canonical path, device, inode).
    public struct HookPoint: Sendable {
        public var pid: Int32
        public var rootPath: String
        public var rootDevice: UInt64
        public var rootInode: UInt64
    }

    public struct StartHook: Sendable {
        public var path: String
        public var args: [String]
        public var env: [String]
        public var timeoutSeconds: Int?
        public init(path: String, args: [String], env: [String], timeoutSeconds: Int?) {
            self.path = path
            self.args = args
            self.env = env
            self.timeoutSeconds = timeoutSeconds
        }
    }

    public struct Capabilities: Sendable, Equatable {
        public var bounding: UInt64 = 0
        public var effective: UInt64 = 0
        public var permitted: UInt64 = 0
        public var inheritable: UInt64 = 0
        public var ambient: UInt64 = 0
        public init() {}
    }

    public enum Mount: Sendable {
        case spec(MountSpec)
        case kernel(type: String, target: String, options: String?, writable: Bool, noexec: Bool, dev: Bool)
    }

    public init() {}
}

extension OCILaunch {
    /// Fills the OCI part of the child's C plan; strings and arrays live in `arena`.
    func fill(_ plan: inout stk_plan, root: HostPath?, rootFD: Int32?, arena: PlanArena) {
        if let root {
            plan.root_source = arena.string(SpawnPlan.oldRoot + (root.path == "/" ? "" : root.path), "root.path")
            plan.root_dev = root.device
            plan.root_ino = root.inode
            plan.root_fd = rootFD ?? -1
        }
        plan.detached = detached ? 1 : 0
        if let fd = execWaitFD {
            plan.exec_wait = 1
            plan.exec_wait_fd = fd
        }
        plan.skip_root = joinedRoot ? 1 : 0
        plan.join_fds = arena.array(join.map(\.fd))
        plan.join_types = arena.array(join.map { Int32(truncatingIfNeeded: $0.namespace.cloneFlag) })
        plan.n_join = UInt32(join.count)
        // A joined user namespace (a pod's) owns the namespaces made for the jail.
        plan.unshare_after_join = join.first?.namespace == .user && plan.clone_flags != 0 ? 1 : 0
        if let caps = capabilities {
            plan.oci_caps = 1
            plan.cap_bounding = caps.bounding
            plan.cap_effective = caps.effective
            plan.cap_permitted = caps.permitted
            plan.cap_inheritable = caps.inheritable
            plan.cap_ambient = caps.ambient
        }
        plan.groups = arena.array(groups)
        plan.n_groups = UInt32(groups.count)
        plan.hooks_pause = hooks != nil ? 1 : 0
        plan.start_state_fd = startStateFD ?? -1
        plan.start_hooks = arena.array(startHooks.map { h in
            stk_hook(path: arena.string(h.path, "a hook's path"), argv: arena.stringVector(h.args.isEmpty ? [h.path] : h.args, "hook argument"),
                     envp: arena.stringVector(h.env, "hook environment variable"), timeout_ms: UInt32(clamping: (h.timeoutSeconds ?? 0) * 1000), _pad: 0)
        })
        plan.n_start_hooks = UInt32(startHooks.count)
        if let umask {
            plan.has_umask = 1
            plan.umask = umask
        }
        plan.root_propagation = rootPropagation
        plan.sysctl_keys = arena.array(sysctls.map { Optional(arena.string($0.key, "sysctl key \($0.key.debugDescription)")) })
        plan.sysctl_values = arena.array(sysctls.map { Optional(arena.string($0.value, "the value of sysctl \($0.key.debugDescription)")) })
        plan.n_sysctls = UInt32(sysctls.count)
        if let devpts {
            plan.has_devpts = 1
            plan.devpts_fd = devpts.fd
            plan.console_pts = arena.string(devpts.console, "the console's terminal")
        }
    }

    /// The hooks pause (see ``hooks``): the container's root at its host
    /// path and the host's tree as the namespace's root, the hooks, then
    /// that root as the namespace's root. Each step is done by a helper the
    /// launcher forks into the container's mount namespace.
    static func runHooks(_ hooks: @Sendable (HookPoint) throws -> Void, pid: Int32, root: HostPath) throws {
        let mnt = open("/proc/\(pid)/ns/mnt", O_RDONLY | O_CLOEXEC)
        guard mnt >= 0 else { throw JailError.launcherStep("open /proc/\(pid)/ns/mnt for the hooks", errno: errno) }
        defer { close(mnt) }
        var rc = stk_oci_hooks_root(mnt, 1, root.path, root.device, root.inode)
        guard rc == 0 else {
            throw JailError.launcherStep("show the container's root at \(root.path) for the hooks", errno: -rc)
        }
        try hooks(HookPoint(pid: pid, rootPath: root.path, rootDevice: root.device, rootInode: root.inode))
        rc = stk_oci_hooks_root(mnt, 2, root.path, root.device, root.inode)
        guard rc == 0 else {
            throw JailError.launcherStep("switch to the container's root \(root.path) after the hooks", errno: -rc)
        }
    }
}
