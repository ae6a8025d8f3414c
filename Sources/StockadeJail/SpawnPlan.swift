import StockadeConfig
import StockadeSeccomp
import StockadeCgroups
import CStockadeSpawn
import StockadeCgroups
import StockadeSystem
import SystemPackage
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
#if canImport(Glibc)
import Glibc
#endif

/// C memory for one `stk_plan`: every string and array the child reads.
///
/// Everything is allocated here, in the parent, before clone3; the child
/// only reads it. The arena frees it all when the spawn is over.
final class PlanArena {
    private var allocations: [UnsafeMutableRawPointer] = []
    /// What the first string holding a NUL byte was (`what` of its call):
    /// C reads a string up to its first NUL, so such a string would reach
    /// the child cut short ("/bin/sh\0-x" as /bin/sh). The launcher
    /// refuses the plan when this is set (``refuseNUL()``).
    private(set) var withNUL: String?

    deinit {
        for p in allocations { free(p) }
    }

    func string(_ s: String, _ what: @autoclosure () -> String) -> UnsafePointer<CChar> {
        if withNUL == nil, s.utf8.contains(0) { withNUL = what() }
        let p = strdup(s)!
        allocations.append(UnsafeMutableRawPointer(p))
        return UnsafePointer(p)
    }

    func optionalString(_ s: String?, _ what: @autoclosure () -> String) -> UnsafePointer<CChar>? {
        s.map { string($0, what()) }
    }

    /// Throws when a string of the plan held a NUL byte, naming what it was.
    func refuseNUL() throws(JailError) {
        if let what = withNUL {
            throw .invalidRequest("\(what) contains a NUL byte, where the kernel would read its end")
        }
    }

    func array<T>(_ elements: [T]) -> UnsafePointer<T>? {
        guard !elements.isEmpty else { return nil }
        let p = UnsafeMutablePointer<T>.allocate(capacity: elements.count)
        p.initialize(from: elements, count: elements.count)
        allocations.append(UnsafeMutableRawPointer(p))
        return UnsafePointer(p)
    }

    /// A NULL-terminated `char *const[]`; `what` names one element.
    func stringVector(_ strings: [String], _ what: String) -> UnsafePointer<UnsafeMutablePointer<CChar>?> {
        let p = UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>.allocate(capacity: strings.count + 1)
        for (i, s) in strings.enumerated() { p[i] = UnsafeMutablePointer(mutating: string(s, "\(what) \(i)")) }
        p[strings.count] = nil
        allocations.append(UnsafeMutableRawPointer(p))
        return UnsafePointer(p)
    }

    func bytes(_ b: [UInt8]) -> UnsafeRawPointer? {
        guard !b.isEmpty else { return nil }
        let p = UnsafeMutableRawPointer.allocate(byteCount: b.count, alignment: 8)
        b.withUnsafeBytes { p.copyMemory(from: $0.baseAddress!, byteCount: b.count) }
        allocations.append(p)
        return UnsafeRawPointer(p)
    }
}

/// The clone3 flag of each namespace.
extension Profile.Namespace {
    var cloneFlag: UInt64 {
        switch self {
        case .user: return 0x1000_0000
        case .pid: return 0x2000_0000
        case .mount: return 0x0002_0000
        case .net: return 0x4000_0000
        case .ipc: return 0x0800_0000
        case .uts: return 0x0400_0000
        case .cgroup: return 0x0200_0000
        case .time: return 0x0000_0080
        }
    }

    /// The file under /proc/self/ns that shows whether the kernel has it.
    public var procName: String {
        switch self {
        case .mount: return "mnt"
        default: return rawValue
        }
    }
}

/// The masks every jail's /proc gets: files that leak host state or let a
/// process poke the kernel are covered, control trees are read-only.
package enum ProcMasks {
    package static let hidden = [
        "/proc/kcore", "/proc/keys", "/proc/key-users", "/proc/timer_list", "/proc/timer_stats",
        "/proc/sched_debug", "/proc/latency_stats", "/proc/sysrq-trigger", "/proc/kallsyms", "/proc/kpagecount",
        "/proc/kpageflags", "/proc/kpagecgroup", "/proc/acpi", "/proc/asound", "/proc/scsi", "/proc/config.gz",
        "/proc/driver",
    ]
    package static let readOnly = ["/proc/sys", "/proc/bus", "/proc/fs", "/proc/irq"]
}

/// The plan of one launch's filesystem: every mount the child makes, in
/// order, with host sources resolved and recorded, and the layout of the
/// staging root the child builds it in. The one place that decides what a
/// jail sees; it also builds the child's whole C plan
/// (``cPlan(_:program:rootless:fds:initFD:chargeIDs:sync:errors:status:arena:)``),
/// which ``Launcher`` hands to the child.
///
/// Order: the built-in /dev and /proc (with their masks), the profile's
/// mounts, the launch's own (`--ro-bind`/`--bind`, in command-line order),
/// the device plan's, then the profile's extra masks.
///
/// Refused before anything is created, each naming the mount:
/// - a bind source reached through a symlink a jail could have written
///   (see ``HostPath``), a target or a command-line path with `..`;
/// - a read-only mount that a later mount of the same path or a parent
///   would shadow;
/// - a writable bind that covers a file the launcher reads to build the
///   jail (profile, its imported seccomp JSON, tenants file, daemon config,
///   the launcher's binary): a jail could rewrite the next launch.
struct SpawnPlan {
    /// Where the child sees the host's root and the jail's root while it
    /// builds the jail (inside its staging tmpfs).
    static let oldRoot = "/oldroot"
    static let staging = "/tmp"
    static let devNull = oldRoot + "/dev/null"

    struct Mount {
        var kind: UInt32
        var flags: UInt32 = 0
        var mode: UInt32 = 0
        /// A host path under ``oldRoot`` (binds), or a symlink's text.
        var source: String?
        /// The path inside the jail.
        var target: String
        var data: String?
        /// What the launcher found at `source` (binds only).
        var recorded: HostPath?
        /// The launcher's detached copy of the source (with STK_MF_TREE).
        var treeFD: Int32 = -1
    }

    var mounts: [Mount] = []
    /// tmpfs options of the jail's root, and whether it ends read-only.
    var rootOptions: String
    var rootReadOnly: Bool
    /// An OCI container's root directory (its bundle's rootfs), as found on the host.
    var rootDirectory: HostPath?
    /// Its O_PATH fd, open from the plan until ``closeRootFD()`` (after the clone).
    var rootFD: Int32?

    /// The OCI binds' copies (``Mount/treeFD``), closed with the root's.
    var treeFDs: [Int32] = []

    func closeRootFD() {
        if let rootFD { close(rootFD) }
        for fd in treeFDs { close(fd) }
    }

    /// Whether openat2(2) exists here (asked once: a directory fd on "/").
    static let kernelHasOpenat2: Bool = {
        let fd = stk_openat2(AT_FDCWD, "/", O_RDONLY | O_DIRECTORY, 0)
        if fd >= 0 { close(fd) }
        return fd >= 0 || errno != ENOSYS
    }()

    init(_ request: LaunchRequest) throws {
        let profile = request.profile
        rootOptions = "size=\(profile.filesystem.rootSize),mode=0755"
        rootReadOnly = profile.filesystem.readonlyRoot
        if profile.filesystem.dev {
            mounts.append(Mount(kind: STK_MOUNT_DEV.rawValue, target: "/dev"))
        }
        if profile.filesystem.proc {
            mounts.append(Mount(kind: STK_MOUNT_PROC.rawValue, target: "/proc"))
            let unmasked = Set(request.devices?.unmaskedProc ?? [])
            for path in ProcMasks.hidden where !unmasked.contains(path) {
                mounts.append(Mount(kind: STK_MOUNT_MASK.rawValue, source: Self.devNull, target: path))
            }
            for path in ProcMasks.readOnly {
                mounts.append(Mount(kind: STK_MOUNT_RO.rawValue, target: path))
            }
        }
        let specs = profile.mounts.enumerated().map { ($1, "\(profile.file): mount[\($0)]") }
            + request.extraMounts.map { ($0, Self.label(extra: $0)) }
        var planned = try Self.plan(specs)
        if let oci = request.oci {
            var ociPlanned = try Self.plan(oci: oci)
            if let root = oci.rootDirectory {
                do {
                    rootDirectory = try HostPath.resolve(root)
                } catch {
                    throw JailError.invalidRequest(error.describe("root.path \(root)"))
                }
                // Cloned here, as the launcher: the child's ids may not
                // search the directories above it. Closed after the clone.
                let fd = stk_openat2(AT_FDCWD, rootDirectory!.path, OpenFlags.path | O_DIRECTORY,
                                     Resolve.noSymlinks | Resolve.noMagicLinks)
                guard fd >= 0 else { throw JailError.launcherStep("open root.path \(root)", errno: errno) }
                let tree = stk_clone_tree(fd)
                close(fd)
                guard tree >= 0 else { throw JailError.launcherStep("clone the mount tree of root.path \(root)", errno: -tree) }
                rootFD = tree
            }
            for i in ociPlanned.indices where ociPlanned[i].mount.kind == STK_MOUNT_BIND.rawValue {
                try cloneBind(&ociPlanned[i])
            }
            planned += ociPlanned
        }
        let devices = try Self.plan(devices: request.devices)
        try Self.checkShadowing(planned + devices)
        mounts += planned.map(\.mount) + devices.map(\.mount)
        for path in profile.filesystem.masked {
            mounts.append(Mount(kind: STK_MOUNT_MASK.rawValue, source: Self.devNull, target: path))
        }
        // The launcher, the init it execs as PID 1, and every file it read for this jail.
        var inputs = [profile.file, "/proc/self/exe"] + InitExecutable.candidates() + request.launcherFiles
        if case let .docker(path) = profile.seccomp.base { inputs.append(path) }
        try Self.checkLauncherInputs(planned, inputs: inputs)
        try Self.checkCgroupBinds(planned)
    }

    /// An OCI bind, copied here as the launcher like the root: containerd
    /// keeps a pod's files (hosts, resolv.conf, the /dev/shm tmpfs) below
    /// directories that only host root may search, which the child, already
    /// in the container's user namespace, could not open. The source is
    /// opened again without following links and must be the file recorded.
    mutating func cloneBind(_ planned: inout Labelled) throws {
        guard let host = planned.mount.recorded else { return }
        let fd = stk_openat2(AT_FDCWD, host.path, OpenFlags.path, Resolve.noSymlinks | Resolve.noMagicLinks)
        guard fd >= 0 else { throw JailError.launcherStep("open \(planned.label) source \(host.path)", errno: errno) }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0, UInt64(st.st_dev) == host.device, UInt64(st.st_ino) == host.inode else {
            throw JailError.invalidRequest("\(planned.label): the source \(host.path) is no longer the file the launcher checked")
        }
        let flags = planned.mount.flags
        let tree = stk_clone_bind(fd, flags & STK_MF_WRITABLE.rawValue == 0 ? 1 : 0, flags & STK_MF_NOEXEC.rawValue != 0 ? 1 : 0)
        guard tree >= 0 else { throw JailError.launcherStep("copy the mount tree of \(planned.label) source \(host.path)", errno: -tree) }
        treeFDs.append(tree)
        planned.mount.treeFD = tree
        planned.mount.flags |= STK_MF_TREE.rawValue
    }

    /// How a mount that came with the launch (not from the profile) is named in messages.
    static func label(extra m: MountSpec) -> String {
        switch m.kind {
        case .bind: return "\(m.writable ? "--bind" : "--ro-bind") \(m.source ?? m.target):\(m.target)"
        default: return "mount \(m.kind.rawValue) \(m.target)"
        }
    }

    typealias Labelled = (mount: Mount, label: String, writable: Bool)

    /// The profile's and the launch's mounts, resolved, in the order given.
    static func plan(_ specs: [(MountSpec, String)]) throws -> [Labelled] {
        var result: [Labelled] = []
        // Read-only mounts made so far: a later mount point inside one of
        // them cannot be created there, so it must already exist.
        var readOnly: [(target: String, hostSource: String?)] = []
        for (m, label) in specs {
            // Every mount gets the checks a profile's [[mount]] gets when it is read.
            guard Profile.isCleanAbsolute(m.target), m.target.split(separator: "/").count > 0 else {
                throw JailError.invalidRequest("\(label): the target \(m.target) must be an absolute path inside the jail, without '..', and not / itself")
            }
            if m.kind == .bind, let source = m.source, !Profile.isCleanAbsolute(source) {
                throw JailError.invalidRequest("\(label): the source \(source) must be an absolute host path without '..'")
            }
            if let outer = readOnly.last(where: { m.target.hasPrefix($0.target + "/") }) {
                let rest = String(m.target.dropFirst(outer.target.count))
                let exists = outer.hostSource.map { access($0 + rest, F_OK) == 0 } ?? false
                if !exists {
                    let place = outer.hostSource.map { "the read-only bind \(outer.target), and \($0 + rest) does not exist on the host" }
                        ?? "the read-only tmpfs \(outer.target), which is empty"
                    throw JailError.invalidRequest("\(label): the mount point \(m.target) lies inside \(place); "
                        + "a mount point cannot be created in a read-only mount: create it in the source, mount it elsewhere, or make \(outer.target) writable")
                }
            }
            var planned = Mount(kind: 0, target: m.target)
            if m.writable { planned.flags |= STK_MF_WRITABLE.rawValue }
            if m.optional { planned.flags |= STK_MF_OPTIONAL.rawValue }
            if m.noexec { planned.flags |= STK_MF_NOEXEC.rawValue }
            switch m.kind {
            case .bind:
                let source = m.source ?? m.target
                let host: HostPath
                do {
                    host = try HostPath.resolve(source, followAnyLink: m.followSymlinks)
                } catch {
                    if m.optional, case .system(_, ENOENT) = error { continue }
                    throw JailError.invalidRequest(error.describe("\(label): bind source \(source)"))
                }
                planned.kind = STK_MOUNT_BIND.rawValue
                planned.source = oldRoot + (host.path == "/" ? "" : host.path)
                planned.recorded = host
                if !m.writable { readOnly.append((m.target, host.path == "/" ? "" : host.path)) }
            case .tmpfs:
                planned.kind = STK_MOUNT_TMPFS.rawValue
                var options = "mode=\(String(m.mode ?? 0o1777, radix: 8))"
                if let size = m.size { options += ",size=\(size)" }
                planned.data = options
                if !m.writable { readOnly.append((m.target, nil)) }
            case .dir:
                planned.kind = STK_MOUNT_DIR.rawValue
                planned.mode = m.mode ?? 0o755
            case .symlink:
                planned.kind = STK_MOUNT_SYMLINK.rawValue
                planned.source = m.source
            }
            result.append((planned, label, m.writable))
        }
        return result
    }

    /// An OCI container's mounts in the spec's order: binds and tmpfs get
    /// every check a profile's mounts get; kernel filesystems are mounted
    /// fresh. Labelled `mounts[N]` as in config.json.
    static func plan(oci: OCILaunch) throws -> [Labelled] {
        var result: [Labelled] = []
        for (i, m) in oci.mounts.enumerated() {
            let label = i < oci.mountFields.count ? oci.mountFields[i] : "config.json mounts[\(i)]"
            switch m {
            case .spec(let spec):
                result += try plan([(spec, label + " (\(spec.target))")])
            case let .kernel(type, target, options, writable, noexec, dev):
                guard Profile.isCleanAbsolute(target), !target.split(separator: "/").isEmpty else {
                    throw JailError.invalidRequest("\(label): the destination \(target) must be an absolute path inside the container, without '..', and not / itself")
                }
                var flags: UInt32 = writable ? STK_MF_WRITABLE.rawValue : 0
                if noexec { flags |= STK_MF_NOEXEC.rawValue }
                if dev { flags |= STK_MF_DEV.rawValue }
                result.append((Mount(kind: STK_MOUNT_FS.rawValue, flags: flags, source: type, target: target, data: options),
                               label + " (\(type) \(target))", writable))
            }
        }
        for (i, path) in oci.readonlyPaths.enumerated() {
            guard Profile.isCleanAbsolute(path) else {
                throw JailError.invalidRequest("config.json linux.readonlyPaths[\(i)]: \(path) must be an absolute path without '..'")
            }
            result.append((Mount(kind: STK_MOUNT_RO.rawValue, target: path), "config.json linux.readonlyPaths[\(i)]", false))
        }
        return result
    }

    /// The device plan's mounts (after the profile's: the built-in /dev and
    /// /proc must exist first). Host sources follow the same rule as binds.
    static func plan(devices: DevicePlan?) throws -> [Labelled] {
        guard let devices else { return [] }
        return try devices.mounts.map { m in
            let label = "[devices] \(m.kind.rawValue) \(m.target)"
            func host(_ path: String) throws -> (String, HostPath) {
                do {
                    let h = try HostPath.resolve(path)
                    return (oldRoot + h.path, h)
                } catch {
                    throw JailError.invalidRequest(error.describe("\(label): source \(path)"))
                }
            }
            switch m.kind {
            case .deviceNode:
                // Device binds keep dev and stay writable, like the built-in /dev nodes.
                let (source, h) = try host(m.source ?? m.target)
                return (Mount(kind: STK_MOUNT_DEVNODE.rawValue, flags: STK_MF_WRITABLE.rawValue | STK_MF_NOEXEC.rawValue,
                              source: source, target: m.target, recorded: h), label, false)
            case .readOnlyBind:
                let (source, h) = try host(m.source ?? m.target)
                return (Mount(kind: STK_MOUNT_BIND.rawValue, source: source, target: m.target, recorded: h), label, false)
            case .symlink:
                return (Mount(kind: STK_MOUNT_SYMLINK.rawValue, source: m.source, target: m.target), label, false)
            case .mask:
                return (Mount(kind: STK_MOUNT_MASK.rawValue, source: devNull, target: m.target), label, false)
            case .readOnly:
                return (Mount(kind: STK_MOUNT_RO.rawValue, target: m.target), label, false)
            }
        }
    }

    /// A read-only mount stays read-only: no later bind or tmpfs may cover
    /// it by mounting its path or a parent of it (the jail would see the
    /// later mount's writable copy there instead).
    static func checkShadowing(_ planned: [Labelled]) throws {
        let covering: Set<UInt32> = [STK_MOUNT_BIND.rawValue, STK_MOUNT_TMPFS.rawValue, STK_MOUNT_DEVNODE.rawValue]
        for (j, later) in planned.enumerated() where covering.contains(later.mount.kind) {
            for earlier in planned[..<j] where covering.contains(earlier.mount.kind)
                && earlier.mount.flags & STK_MF_WRITABLE.rawValue == 0 {
                let t = earlier.mount.target
                if t == later.mount.target || t.hasPrefix(later.mount.target + "/") {
                    throw JailError.invalidRequest("\(later.label) (\(later.mount.target)) would shadow the read-only "
                        + "\(earlier.label) (\(t)), which comes before it; mounts are made in the order given, so put the read-only mount after the one that covers it")
                }
            }
        }
    }

    /// No writable bind may hold a file the launcher reads to build a jail:
    /// a jail could rewrite the profile (ids, binds) or the launcher for
    /// the next run. Compared by (device, inode) of every directory on the
    /// way to each file, so another path to the same directory is caught.
    static func checkLauncherInputs(_ planned: [Labelled], inputs: [String]) throws {
        // Only a writable bind of a host path can hold an input (a
        // writable tmpfs holds nothing of the host's): without one, no
        // input path is resolved.
        guard planned.contains(where: { $0.writable && $0.mount.recorded != nil }) else { return }
        var covered: [HostPath.FileID: String] = [:]
        for input in inputs {
            var path = input.hasPrefix("/") ? input : Self.currentDirectory() + "/" + input
            if input == "/proc/self/exe" {
                var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
                let n = readlink(input, &buffer, buffer.count - 1)
                guard n > 0 else { continue }
                path = String(decoding: buffer[..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
            }
            // A profile parsed from text has no file; an input that cannot be read cannot be covered.
            guard let host = try? HostPath.resolve(path, followAnyLink: true) else { continue }
            for id in host.chain where covered[id] == nil { covered[id] = host.path }
        }
        for p in planned where p.writable {
            guard let source = p.mount.recorded, let file = covered[source.id] else { continue }
            throw JailError.invalidRequest("\(p.label): the writable bind of \(source.path) holds \(file), which the "
                + "launcher reads to build jails; a jail could rewrite it for the next run. Bind it read-only, or bind a directory that holds none of the launcher's files")
        }
    }

    /// Refuses a writable bind that holds a cgroup filesystem, as its
    /// source or mounted below it (binds are recursive). Through it a jail
    /// could write `cgroup.procs` and move its processes out of its own
    /// cgroup, away from its limits and the launcher's kill: rootless, the
    /// jail runs as the caller, who owns the delegated cgroup above the
    /// jail's, and the kernel stops such a move at the jail's cgroup
    /// namespace only on a v2 mount with `nsdelegate`. A read-only bind
    /// shows the tree and writes nothing.
    /// The mount table is read only when there is a writable bind to check
    /// (`mountinfo` given: tests).
    static func checkCgroupBinds(_ planned: [Labelled], mountinfo: String? = nil) throws {
        let writable = planned.filter(\.writable).compactMap { p in p.mount.recorded.map { (p.label, $0) } }
        guard !writable.isEmpty else { return }
        let table = mountinfo ?? CgroupFS.read("/proc/self/mountinfo") ?? ""
        let cgroups = CgroupHost.mountPoints(mountinfo: table).map { point -> (String, UInt64?) in
            var st = stat()
            return (point, stat(point, &st) == 0 ? UInt64(st.st_dev) : nil)
        }
        for (label, source) in writable {
            let below = source.path == "/" ? "/" : source.path + "/"
            guard let (point, _) = cgroups.first(where: { $0.1 == source.device || $0.0 == source.path || $0.0.hasPrefix(below) }) else { continue }
            throw JailError.invalidRequest("\(label): the writable bind of \(source.path) holds the cgroup filesystem at \(point); "
                + "a jail could move its processes out of its own cgroup, past its limits and the launcher's kill. Bind it read-only")
        }
    }

    static func currentDirectory() -> String {
        var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        guard getcwd(&buffer, buffer.count) != nil else { return "/" }
        return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// The child's whole C plan for this launch: namespaces, cgroup, ids,
    /// rlimits, fds, Landlock, seccomp, what to exec and with what, and the
    /// mounts above. The strings and arrays live in `arena`; the fds are the
    /// caller's and must stay open until the child has been cloned:
    /// `sync`, `errors` and `status` (the child keeps their child ends and
    /// closes the launcher's), `fds` (from ``JailFDs/plan(_:)``), `initFD`
    /// (PID 1's executable). `chargeIDs`: the leased host range of a root
    /// launch, whose first id the user namespace is charged to.
    func cPlan(_ request: LaunchRequest, program: String, rootless: Bool, fds: JailFDs.Plan, initFD: FileDescriptor,
               chargeIDs: HostIDRange?, sync: PipeEnds, errors: PipeEnds, status: PipeEnds,
               arena: PlanArena) throws -> stk_plan {
        let profile = request.profile
        var plan = stk_plan()
        plan.clone_flags = profile.namespaces.reduce(0) { $0 | $1.cloneFlag }
        plan.cgroup_fd = request.cgroup?.directory?.rawValue ?? -1
        // Outside a pid namespace too: there PID 1 tracks the jail's
        // processes in a Landlock domain and kills them with the launcher.
        plan.use_reaper = 1
        plan.sync_fd = sync.read.rawValue
        plan.error_fd = errors.write.rawValue
        plan.status_fd = status.write.rawValue
        plan.parent_fds = (sync.write.rawValue, errors.read.rawValue, status.read.rawValue, -1)
        plan.notify_fd = -1
        fillMounts(&plan, arena: arena)
        request.oci?.fill(&plan, root: rootDirectory, rootFD: rootFD, arena: arena)
        plan.hostname = profile.namespaces.contains(.uts) ? arena.optionalString(profile.hostname, "the hostname") : nil
        plan.uid = profile.user.uid
        plan.gid = profile.user.gid
        plan.drop_groups = rootless ? 0 : 1
        plan.become_root = rootless ? 0 : 1
        plan.cap_last_cap = Self.capLastCap()
        let rlimits = profile.rlimits.map {
            stk_rlimit(resource: $0.resource, _pad: 0, soft: $0.soft ?? UInt64.max, hard: $0.hard ?? UInt64.max)
        }
        plan.rlimits = arena.array(rlimits)
        plan.n_rlimits = UInt32(rlimits.count)
        plan.new_session = profile.newSession ? 1 : 0
        plan.fds = arena.array(fds.map)
        plan.n_fds = UInt32(fds.map.count)
        if let tty = fds.controllingTerminal { plan.has_ctty = 1; plan.ctty_fd = tty }
        plan.cwd = arena.string(profile.cwd, "the working directory")
        if let ll = request.landlock, ll.abi > 0 {
            plan.landlock_abi = ll.abi
            plan.landlock_required = ll.required ? 1 : 0
            plan.landlock_fs_handled = ll.fsHandled
            plan.landlock_net_handled = ll.netHandled
            plan.landlock_scoped = ll.abi >= 6 ? ll.scoped : 0
            // Observed jails: audit reports the worker's denials after its
            // execve too (LANDLOCK_RESTRICT_SELF_LOG_NEW_EXEC_ON, ABI 7).
            plan.landlock_restrict_flags = request.seccompObservation != nil && ll.abi >= 7 ? 1 << 1 : 0
            let rules = ll.rules.map {
                stk_landlock_rule(path: arena.string($0.path, "Landlock path \($0.path.debugDescription)"), access: $0.access, optional: $0.optional ? 1 : 0, _pad: 0)
            }
            plan.landlock_rules = arena.array(rules)
            plan.n_landlock_rules = UInt32(rules.count)
            let ports = ll.tcpPorts.map { stk_landlock_port(port: UInt64($0.port), access: $0.access) }
            plan.landlock_ports = arena.array(ports)
            plan.n_landlock_ports = UInt32(ports.count)
        }
        if !request.seccompFilter.isEmpty {
            guard request.seccompFilter.count % 8 == 0, request.seccompFilter.count / 8 <= 4096 else {
                throw JailError.invalidRequest("seccomp program is malformed (\(request.seccompFilter.count) bytes)")
            }
            plan.seccomp_filter = arena.bytes(request.seccompFilter)?.assumingMemoryBound(to: sock_filter.self)
            plan.seccomp_len = UInt32(request.seccompFilter.count / 8)
            plan.seccomp_flags = request.seccompFlags
        }
        let environment = Self.environment(request)
        let execPaths = Self.executableCandidates(program, environment: environment)
        // The arguments first: a NUL in the program's name is named as an argument's.
        plan.argv = arena.stringVector(request.command, "argument")
        plan.exec_paths = UnsafePointer(arena.stringVector(execPaths, "executable candidate").withMemoryRebound(to: UnsafePointer<CChar>?.self, capacity: execPaths.count + 1) { $0 })
        plan.n_exec_paths = UInt32(execPaths.count)
        plan.envp = arena.stringVector(environment.map { "\($0.0)=\($0.1)" }, "environment variable")
        plan.init_fd = initFD.rawValue
        if let via = request.viaSocket {
            plan.via_wait = 1
            plan.via_fd = via
        }
        plan.has_cgroup = request.cgroup == nil ? 0 : 1
        if let chargeIDs {
            // The user namespace and its per-user counts belong to the
            // range's first id (the jail's inside root), not to root.
            plan.charge_ids = 1
            plan.charge_uid = chargeIDs.first
            plan.charge_gid = chargeIDs.first
        }
        return plan
    }

    /// The filesystem part of the child's C plan; the strings live in `arena`.
    private func fillMounts(_ plan: inout stk_plan, arena: PlanArena) {
        plan.staging = arena.string(Self.staging, "the staging path")
        plan.root_options = arena.string(rootOptions, "the root's options")
        plan.root_readonly = rootReadOnly ? 1 : 0
        let cMounts = mounts.map { m in
            stk_mount(kind: m.kind, flags: m.flags, mode: m.mode, src_type: m.recorded?.type ?? 0,
                      source: arena.optionalString(m.source, "the source of mount \(m.target.debugDescription)"),
                      target: arena.string(m.target, "mount target \(m.target.debugDescription)"),
                      data: arena.optionalString(m.data, "the options of mount \(m.target.debugDescription)"), src_dev: m.recorded?.device ?? 0, src_ino: m.recorded?.inode ?? 0,
                      tree_fd: m.treeFD, _pad: 0)
        }
        plan.mounts = arena.array(cMounts)
        plan.n_mounts = UInt32(cMounts.count)
    }

    /// The jail's environment: the profile's `[env]` set, then its `pass`
    /// from the launcher's, then the launch's own; a later one replaces an earlier.
    /// `passed` looks up a `pass` variable in the caller's environment (the
    /// launcher's own, or a `--via` caller's).
    static func environment(_ request: LaunchRequest,
                            passed: (String) -> String? = { getenv($0).map { String(cString: $0) } }) -> [(String, String)] {
        var env: [(String, String)] = []
        func set(_ name: String, _ value: String) {
            env.removeAll { $0.0 == name }
            env.append((name, value))
        }
        for pair in request.profile.environment.set { set(pair.name, pair.value) }
        for name in request.profile.environment.pass {
            if let value = passed(name) { set(name, value) }
        }
        for (name, value) in request.extraEnvironment { set(name, value) }
        return env
    }

    /// Where the child tries to exec `program`: itself when it has a '/',
    /// else each directory of the jail's PATH in order.
    static func executableCandidates(_ program: String, environment: [(String, String)]) -> [String] {
        if program.contains("/") { return [program] }
        let path = environment.last(where: { $0.0 == "PATH" })?.1 ?? "/usr/local/bin:/usr/bin:/bin"
        return path.split(separator: ":").map { "\($0)/\(program)" }
    }

    /// The kernel's highest capability number (63 when it cannot be read).
    /// A plain read: Foundation's file reading and trimming cost a launch
    /// a tenth of a millisecond.
    static func capLastCap() -> Int32 {
        let fd = open("/proc/sys/kernel/cap_last_cap", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return 63 }
        defer { close(fd) }
        var buffer: (UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8) = (0, 0, 0, 0, 0, 0, 0, 0)
        let n = withUnsafeMutableBytes(of: &buffer) { read(fd, $0.baseAddress, $0.count) }
        guard n > 0 else { return 63 }
        let value = withUnsafeBytes(of: buffer) { raw in
            let bytes = raw.bindMemory(to: UInt8.self)
            var end = n
            while end > 0, bytes[end - 1] == UInt8(ascii: "\n") || bytes[end - 1] == UInt8(ascii: " ") { end -= 1 }
            return ASCIIDecimal.parse(bytes, 0..<end)
        }
        guard let value, value < 1000 else { return 63 }
        return Int32(value)
    }
}
