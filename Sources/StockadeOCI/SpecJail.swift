public import Foundation
public import StockadeJail
public import StockadeCgroups
import StockadeSeccomp
import StockadeConfig
#if canImport(Glibc)
import Glibc
#endif

/// config.json onto a Stockade jail: a ``Profile`` (the spec's process,
/// namespaces, mounts, seccomp, limits) and the ``OCILaunch`` switches,
/// for the one launcher every jail goes through. Stockade's guarantees
/// stay on top of the spec: the seccomp prelude, no_new_privs, and a user
/// namespace with host ids of the container's own.
public enum SpecJail {
    /// Annotation naming a Stockade profile (`inference-cpu`) whose Landlock
    /// rules, device grants and budgets the container gets besides the spec's.
    public static let profileAnnotation = "stockade.io/profile"
    /// Annotation asking for no user namespace of the container's own
    /// (`stockade.io/userns: host`); honoured only where ``hostUsernsAllowed``.
    public static let usernsAnnotation = "stockade.io/userns"
    /// A root-owned file whose presence lets containers opt out of the user
    /// namespace by annotation on this host.
    /// (`STOCKADE_OCI_ALLOW_HOST_USERNS` names another.)
    public static var allowHostUsernsFile: String {
        getenv("STOCKADE_OCI_ALLOW_HOST_USERNS").map { String(cString: $0) } ?? "/etc/stockade/oci-allow-host-userns"
    }
    /// Where `stockade.io/profile` names are looked up (`NAME.toml`).
    public static var profileDirectory: String {
        getenv("STOCKADE_PROFILE_DIR").map { String(cString: $0) } ?? "/etc/stockade/profiles"
    }

    public static var hostUsernsAllowed: Bool {
        var st = stat()
        return lstat(allowHostUsernsFile, &st) == 0 && st.st_uid == 0 && (st.st_mode & S_IFMT) == S_IFREG
    }

    /// The profile a container starts from: the annotated one, or an empty
    /// one (Stockade's defaults, all of which the spec then sets).
    public static func baseProfile(_ spec: Spec) throws -> Profile {
        guard let name = spec.annotations?[profileAnnotation] else {
            return try Profile.parse(text: "", file: "config.json")
        }
        guard !name.isEmpty, name.utf8.allSatisfy({ ($0 >= 0x61 && $0 <= 0x7A) || ($0 >= 0x30 && $0 <= 0x39) || $0 == 0x2D || $0 == 0x5F }) else {
            throw SpecError("config.json annotations[\"\(profileAnnotation)\"]: \"\(name)\" is not a profile name (a-z, 0-9, -, _)")
        }
        let path = profileDirectory + "/" + name + ".toml"
        do {
            return try Profile.load(path: path)
        } catch {
            throw SpecError("config.json annotations[\"\(profileAnnotation)\"]: \(error)")
        }
    }

    /// The launch request for a container's init (`create`). `store`: the
    /// runtime's records, through which a pod's pid (and user) namespace
    /// is found (``PodUserNamespace``); nil: none is joined.
    public static func request(spec: Spec, bundle: String, store: StateStore? = nil) throws -> LaunchRequest {
        guard let process = spec.process else { throw SpecError("config.json: process is missing") }
        guard let root = spec.root else { throw SpecError("config.json: root is missing") }
        var profile = try baseProfile(spec)
        let annotated = spec.annotations?[profileAnnotation] != nil
        var oci = OCILaunch()
        oci.detached = true

        // Namespaces: made new, or joined by path.
        var fresh: Set<Profile.Namespace> = [.mount]
        var joined: [(String, Profile.Namespace)] = []
        for (i, ns) in (spec.linux?.namespaces ?? []).enumerated() {
            guard let kind = namespace(ns.type) else {
                throw SpecError("config.json linux.namespaces[\(i)].type: unknown namespace \"\(ns.type)\"")
            }
            if let path = ns.path, !path.isEmpty {
                joined.append((path, kind))
            } else {
                fresh.insert(kind)
            }
        }
        let optOut = spec.annotations?[usernsAnnotation] == "host"
        if optOut && !hostUsernsAllowed {
            throw SpecError("config.json annotations[\"\(usernsAnnotation)\"] = \"host\": this host does not allow containers without a user namespace of their own (\(allowHostUsernsFile) is absent)")
        }
        let joinsUser = joined.contains { $0.1 == .user }
        if !optOut && !joinsUser { fresh.insert(.user) }
        if joinsUser { fresh.remove(.user) }
        if spec.linux?.uidMappings != nil && !fresh.contains(.user) {
            throw SpecError("config.json linux.uidMappings: given, but the container gets no new user namespace")
        }
        // A pod's containers share its user namespace: joining the pod's
        // pid namespace without naming one means joining its owner.
        oci.join = try PodUserNamespace.open(joined, makesUser: fresh.contains(.user), spec: spec, store: store)
        if oci.join.first?.namespace == .user {
            fresh.remove(.user)
            // Its namespaces are made after joining it (unshare), where a
            // new pid namespace would hold the child's children only.
            if fresh.contains(.pid) {
                for j in oci.join { close(j.fd) }
                throw SpecError("config.json linux.namespaces: a new pid namespace inside a joined user namespace is not supported; join the pod's pid namespace (shareProcessNamespace) or give the container a user namespace of its own")
            }
        }
        profile.namespaces = fresh
        if let maps = try idMaps(spec.linux), fresh.contains(.user) { oci.idMaps = maps }

        // Process.
        profile.user.uid = process.user.uid
        profile.user.gid = process.user.gid
        oci.groups = process.user.additionalGids ?? []
        profile.cwd = process.cwd
        guard process.cwd.hasPrefix("/") else { throw SpecError("config.json process.cwd: \(process.cwd) is not absolute") }
        // A pod's hostname goes to sethostname from the launcher's thread,
        // not through the child's plan: a NUL byte is refused here for both.
        if let hostname = spec.hostname, hostname.utf8.contains(0) {
            throw SpecError("config.json hostname: \(hostname.debugDescription) holds a NUL byte, where the kernel would read its end")
        }
        profile.hostname = fresh.contains(.uts) ? spec.hostname : nil
        oci.umask = try SpecKernel.umask(process.user.umask, field: "process.user.umask")
        oci.rootPropagation = try SpecKernel.rootPropagation(spec.linux?.rootfsPropagation)
        let join = oci.join
        let sysctls = try SpecKernel.sysctls(spec.linux?.sysctl, ownNamespace: { kind in
            fresh.contains(kind) || join.contains { $0.namespace == kind && SpecKernel.isOtherThanOwn($0.fd, kind: kind) }
        }, hostname: profile.hostname)
        profile.environment.set = try environment(process.env, field: "process.env")
        profile.environment.pass = []
        profile.rlimits = try rlimits(process.rlimits)
        oci.capabilities = try capabilities(process.capabilities, field: "process.capabilities")
        profile.timeLimit = nil

        // Filesystem: the bundle's rootfs, then the spec's mounts in order.
        let rootPath = root.path.hasPrefix("/") ? root.path : bundle + "/" + root.path
        oci.rootDirectory = rootPath
        profile.filesystem.readonlyRoot = root.readonly ?? false
        profile.filesystem.dev = true
        profile.filesystem.proc = false
        // The annotated profile's mounts are what Landlock grants in the
        // container (SpecLandlock), never host binds into it.
        let grants = profile.mounts
        profile.mounts = []
        for (i, m) in (spec.mounts ?? []).enumerated() {
            if let mount = try mount(m, index: i, bundle: bundle, profile: &profile) {
                oci.mounts.append(mount)
                oci.mountFields.append("config.json mounts[\(i)]")
            }
        }
        try makeMountPoints(rootfs: rootPath, mounts: oci.mounts, fields: oci.mountFields, proc: profile.filesystem.proc)
        arrangePodNamespaces(spec, profile: &profile, oci: &oci)
        splitSysctls(sysctls, oci: &oci)
        oci.readonlyPaths = spec.linux?.readonlyPaths ?? []
        profile.filesystem.masked = spec.linux?.maskedPaths ?? []

        // Seccomp: the spec's filter (none: allow), under the prelude.
        profile.seccomp = try seccomp(spec.linux?.seccomp)
        // Landlock only where a profile is annotated: its mounts name what
        // the container may reach (SpecLandlock). A pod shares its pid and
        // net namespaces on purpose; the container's own user namespace and
        // cgroup still hold it.
        let landlock = annotated ? try SpecLandlock.plan(profile: profile, grants: grants, specMounts: oci.mounts) : nil
        profile.landlock.enabled = false
        profile.landlock.unscoped = SpecLandlock.podUnscoped
        profile.limits = try limits(spec.linux?.resources, base: annotated ? profile.limits : LimitsSection())
        profile.name = annotated ? profile.name : "oci"

        if let adj = process.oomScoreAdj, !(-1000...1000).contains(adj) {
            throw SpecError("config.json process.oomScoreAdj: \(adj) is outside -1000...1000")
        }
        var request = LaunchRequest(profile: profile, command: process.args ?? [])
        guard let program = process.args?.first, !program.isEmpty else {
            throw SpecError("config.json process.args: empty; the container needs a program to run")
        }
        _ = program
        request.oci = oci
        request.landlock = landlock
        return request
    }

    /// The launch request for `exec`: `spec.process` (the exec's process
    /// document) in every namespace of the container's PID 1 that differs
    /// from the caller's, its root, the spec's seccomp filter under the
    /// prelude. Nothing is mounted: the container's mount namespace is the root.
    /// A container with `stockade.io/profile` gets the Landlock domain its
    /// first process got (`bundle` resolves the spec's relative sources).
    public static func execRequest(spec: Spec, initPID: Int32, bundle: String) throws -> LaunchRequest {
        guard let process = spec.process else { throw SpecError("process: missing") }
        guard let program = process.args?.first, !program.isEmpty else {
            throw SpecError("process.args: empty; exec needs a program to run")
        }
        var profile = try baseProfile(spec)
        let landlock = try execLandlock(spec, profile: profile, bundle: bundle)
        var oci = OCILaunch()
        oci.detached = true
        oci.joinedRoot = true
        // pid_for_children: the worker lands in the container's pid namespace.
        let kinds: [(String, Profile.Namespace)] = [("user", .user), ("mnt", .mount), ("pid_for_children", .pid),
                                                    ("net", .net), ("ipc", .ipc), ("uts", .uts), ("cgroup", .cgroup)]
        for (name, kind) in kinds {
            var mine = stat(), theirs = stat()
            guard stat("/proc/self/ns/\(name)", &mine) == 0 else { continue }
            let fd = open("/proc/\(initPID)/ns/\(name)", O_RDONLY | O_CLOEXEC)
            guard fd >= 0 else {
                for j in oci.join { close(j.fd) }
                throw RuntimeError("container not running (open /proc/\(initPID)/ns/\(name): \(String(cString: strerror(errno))))")
            }
            if fstat(fd, &theirs) == 0 && theirs.st_ino == mine.st_ino && theirs.st_dev == mine.st_dev {
                close(fd)
                continue
            }
            oci.join.append((fd, kind))
        }
        enterLauncherOwnedBeforeClone(&oci, ownUserNamespace: oci.join.contains { $0.namespace == .user })
        profile.namespaces = []
        profile.hostname = nil
        profile.user.uid = process.user.uid
        profile.user.gid = process.user.gid
        oci.groups = process.user.additionalGids ?? []
        profile.cwd = process.cwd
        oci.umask = try SpecKernel.umask(process.user.umask, field: "process.user.umask")
        profile.environment.set = try environment(process.env, field: "process.env")
        profile.environment.pass = []
        profile.rlimits = try rlimits(process.rlimits)
        oci.capabilities = try capabilities(process.capabilities, field: "process.capabilities")
        profile.filesystem.dev = false
        profile.filesystem.proc = false
        profile.filesystem.masked = []
        profile.mounts = []
        profile.seccomp = try seccomp(spec.linux?.seccomp)
        profile.landlock.enabled = false
        profile.landlock.unscoped = "an OCI exec joins the namespaces of its container"
        profile.limits = LimitsSection()
        profile.devices = DevicesSection()
        profile.name = "oci-exec"
        _ = program
        var request = LaunchRequest(profile: profile, command: process.args ?? [])
        request.oci = oci
        request.landlock = landlock
        return request
    }

    /// The Landlock domain of the container's first process, for an exec
    /// into it: nil without `stockade.io/profile`.
    static func execLandlock(_ spec: Spec, profile: Profile, bundle: String) throws -> LaunchLandlock? {
        guard spec.annotations?[profileAnnotation] != nil else { return nil }
        var container = profile
        container.filesystem.dev = true
        container.filesystem.proc = false
        container.namespaces = []
        var mounts: [OCILaunch.Mount] = []
        for (i, m) in (spec.mounts ?? []).enumerated() {
            if let made = try mount(m, index: i, bundle: bundle, profile: &container) { mounts.append(made) }
        }
        // A path the container's first process left out (a pod's mqueue,
        // say) grants nothing here rather than failing the exec.
        var landlock = try SpecLandlock.plan(profile: container, grants: profile.mounts, specMounts: mounts)
        for i in (landlock?.rules ?? []).indices where landlock?.rules[i].path != "/" { landlock?.rules[i].optional = true }
        return landlock
    }

    // MARK: pieces

    static func namespace(_ type: String) -> Profile.Namespace? {
        switch type {
        case "pid": return .pid
        case "network": return .net
        case "mount": return .mount
        case "ipc": return .ipc
        case "uts": return .uts
        case "user": return .user
        case "cgroup": return .cgroup
        case "time": return .time
        default: return nil
        }
    }

    /// `linux.uidMappings`/`gidMappings` as /proc maps; never host id 0
    /// (a container's root is never host root).
    static func idMaps(_ linux: Spec.Linux?) throws -> (uid: String, gid: String)? {
        guard let uids = linux?.uidMappings, !uids.isEmpty else { return nil }
        let gids = linux?.gidMappings ?? []
        guard !gids.isEmpty else { throw SpecError("config.json linux.gidMappings: missing while uidMappings is given") }
        for (field, maps) in [("uidMappings", uids), ("gidMappings", gids)] {
            for (i, m) in maps.enumerated() where m.hostID == 0 || UInt64(m.hostID) + UInt64(m.size) > 0xFFFF_FFFF || m.size == 0 {
                throw SpecError("config.json linux.\(field)[\(i)]: host ids \(m.hostID)+\(m.size) include host root or are out of range; a Stockade container never maps host id 0")
            }
        }
        func text(_ maps: [Spec.IDMapping]) -> String { maps.map { "\($0.containerID) \($0.hostID) \($0.size)\n" }.joined() }
        return (text(uids), text(gids))
    }

    static func environment(_ env: [String]?, field: String) throws -> [Profile.EnvironmentSpec.Pair] {
        var pairs: [Profile.EnvironmentSpec.Pair] = []
        for (i, entry) in (env ?? []).enumerated() {
            guard let eq = entry.firstIndex(of: "="), eq != entry.startIndex else {
                throw SpecError("config.json \(field)[\(i)]: \"\(entry)\" is not NAME=VALUE")
            }
            pairs.removeAll { $0.name == String(entry[..<eq]) }
            pairs.append(.init(name: String(entry[..<eq]), value: String(entry[entry.index(after: eq)...])))
        }
        return pairs
    }

    static let rlimitNumbers: [String: Int32] = [
        "RLIMIT_CPU": 0, "RLIMIT_FSIZE": 1, "RLIMIT_DATA": 2, "RLIMIT_STACK": 3, "RLIMIT_CORE": 4, "RLIMIT_RSS": 5,
        "RLIMIT_NPROC": 6, "RLIMIT_NOFILE": 7, "RLIMIT_MEMLOCK": 8, "RLIMIT_AS": 9, "RLIMIT_LOCKS": 10,
        "RLIMIT_SIGPENDING": 11, "RLIMIT_MSGQUEUE": 12, "RLIMIT_NICE": 13, "RLIMIT_RTPRIO": 14, "RLIMIT_RTTIME": 15,
    ]

    static func rlimits(_ list: [Spec.Rlimit]?) throws -> [RlimitSpec] {
        try (list ?? []).enumerated().map { i, r in
            guard let n = rlimitNumbers[r.type] else {
                throw SpecError("config.json process.rlimits[\(i)].type: unknown \"\(r.type)\"")
            }
            guard r.soft <= r.hard else {
                throw SpecError("config.json process.rlimits[\(i)]: soft \(r.soft) is above hard \(r.hard)")
            }
            return RlimitSpec(name: r.type, resource: n, soft: r.soft, hard: r.hard)
        }
    }

    public static let capabilityNames = [
        "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL", "CAP_SETGID",
        "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN",
        "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT",
        "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE", "CAP_SYS_RESOURCE",
        "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE", "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL",
        "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND",
        "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
    ]

    static func capabilities(_ caps: Spec.Capabilities?, field: String) throws -> OCILaunch.Capabilities {
        func mask(_ names: [String]?, _ key: String) throws -> UInt64 {
            var m: UInt64 = 0
            for (i, name) in (names ?? []).enumerated() {
                guard let n = capabilityNames.firstIndex(of: name) else {
                    throw SpecError("config.json \(field).\(key)[\(i)]: unknown capability \"\(name)\"")
                }
                m |= 1 << UInt64(n)
            }
            return m
        }
        var c = OCILaunch.Capabilities()
        c.bounding = try mask(caps?.bounding, "bounding")
        c.effective = try mask(caps?.effective, "effective")
        c.permitted = try mask(caps?.permitted, "permitted")
        c.inheritable = try mask(caps?.inheritable, "inheritable")
        c.ambient = try mask(caps?.ambient, "ambient")
        return c
    }

    /// The mount points of `mounts` (and /dev, /proc) in the rootfs; what
    /// lies below Stockade's own /dev is made by the jail in its tmpfs.
    static func makeMountPoints(rootfs: String, mounts: [OCILaunch.Mount], fields: [String], proc: Bool) throws {
        var targets: [(path: String, file: Bool, field: String)] = [("/dev", false, "config.json (the container's /dev)")]
        if proc { targets.append(("/proc", false, "config.json mounts (proc)")) }
        for (i, m) in mounts.enumerated() {
            switch m {
            case .spec(let spec):
                var isFile = false
                if spec.kind == .bind, let source = spec.source {
                    var st = stat()
                    isFile = stat(source, &st) == 0 && (st.st_mode & S_IFMT) != S_IFDIR
                }
                targets.append((spec.target, isFile, fields[i]))
            case .kernel(_, let target, _, _, _, _):
                targets.append((target, false, fields[i]))
            }
        }
        try MountPoints.make(rootfs: rootfs, targets: targets.filter { !$0.path.hasPrefix("/dev/") })
    }

    /// One `mounts[]` entry; nil when Stockade's own /dev covers it.
    static func mount(_ m: Spec.Mount, index i: Int, bundle: String, profile: inout Profile) throws -> OCILaunch.Mount? {
        let options = m.options ?? []
        let target = m.destination
        let field = "config.json mounts[\(i)] (\(target))"
        guard target.hasPrefix("/") else { throw SpecError("\(field).destination: not an absolute path") }
        let type = m.type ?? (options.contains("bind") || options.contains("rbind") ? "bind" : "")
        let writable = !options.contains("ro")
        let noexec = options.contains("noexec")
        // Stockade's /dev (a tmpfs with the harmless nodes, a private
        // devpts, /dev/shm) stands for the spec's /dev, /dev/pts, /dev/shm.
        if ["/dev", "/dev/pts", "/dev/shm"].contains(target) && type != "bind" { return nil }
        switch type {
        case "proc":
            guard target == "/proc" else { throw SpecError("\(field): proc is mounted only at /proc") }
            profile.filesystem.proc = true
            return nil
        case "bind", "none" where options.contains("bind") || options.contains("rbind"):
            guard var source = m.source, !source.isEmpty else { throw SpecError("\(field).source: missing for a bind") }
            if !source.hasPrefix("/") { source = bundle + "/" + source }
            return .spec(MountSpec(kind: .bind, source: source, target: target, writable: writable, noexec: noexec))
        case "tmpfs":
            var size: UInt64?
            var mode: UInt32?
            for o in options {
                if o.hasPrefix("size=") {
                    guard let s = tmpfsSize(String(o.dropFirst(5))) else { throw SpecError("\(field).options: \(o): not a size") }
                    size = s
                }
                if o.hasPrefix("mode="), let v = UInt32(o.dropFirst(5), radix: 8) { mode = v }
            }
            return .spec(MountSpec(kind: .tmpfs, source: nil, target: target, writable: writable, noexec: noexec, size: size, mode: mode))
        case "sysfs", "mqueue", "cgroup", "cgroup2":
            let fstype = type == "cgroup" ? "cgroup2" : type
            return .kernel(type: fstype, target: target, options: nil, writable: writable && type == "mqueue",
                           noexec: true, dev: false)
        default:
            throw SpecError("\(field).type: \"\(type)\" is not supported (bind, tmpfs, proc, sysfs, mqueue, cgroup, devpts at /dev/pts)")
        }
    }

    /// tmpfs's `size=` spelling: bytes, or a k, m, g suffix.
    static func tmpfsSize(_ text: String) -> UInt64? {
        let units: [Character: UInt64] = ["k": 1 << 10, "m": 1 << 20, "g": 1 << 30]
        if let last = text.last?.lowercased().first, let unit = units[last] {
            return UInt64(text.dropLast()).flatMap { $0.multipliedReportingOverflow(by: unit).overflow ? nil : $0 * unit }
        }
        return UInt64(text)
    }

    /// The spec's seccomp filter through Stockade's importer (the same
    /// format as a Docker/Moby profile); no filter in the spec: allow. The
    /// compiler always puts the hardening prelude in front.
    static func seccomp(_ s: Spec.Seccomp?) throws -> SeccompSection {
        var section = SeccompSection()
        section.base = .none
        section.rules = []
        section.notes = []
        guard let s else {
            section.defaultAction = .allow
            return section
        }
        let data: Data
        do {
            data = try JSONEncoder().encode(s)
        } catch {
            throw SpecError("config.json linux.seccomp: \(error)")
        }
        do {
            let imported = try DockerSeccompProfile.parse(data: data, name: "config.json linux.seccomp",
                                                          kernel: DockerSeccompProfile.runningKernel())
            section.defaultAction = imported.defaultAction
            section.rules = imported.rules
            section.notes = imported.notes
        } catch {
            throw SpecError("config.json linux.seccomp: \(error)")
        }
        return section
    }

    /// `linux.resources` as a Stockade budget; keys the spec leaves out keep
    /// the annotated profile's.
    public static func limits(_ r: Spec.Resources?, base: LimitsSection) throws -> LimitsSection {
        var l = base
        guard let r else { return l }
        if let m = r.memory {
            if let limit = m.limit, limit > 0 { l.memoryMax = UInt64(limit) }
            if let swap = m.swap {
                if swap < 0 {
                    l.swapMax = nil
                } else {
                    // The spec's swap is memory plus swap (v1's memsw).
                    let memory = l.memoryMax ?? 0
                    l.swapMax = UInt64(swap) > memory ? UInt64(swap) - memory : 0
                }
            }
        }
        if let c = r.cpu {
            if let shares = c.shares, shares > 0 {
                // runc's conversion of cgroup v1 shares to a v2 weight.
                l.cpuWeight = 1 + ((max(2, min(shares, 262_144)) - 2) * 9999) / 262_142
            }
            if let quota = c.quota, quota > 0 {
                guard let q = CPUQuota(quota: UInt64(quota), period: c.period ?? 100_000) else {
                    throw SpecError("config.json linux.resources.cpu: quota \(quota) / period \(c.period ?? 100_000) is out of range")
                }
                l.cpu = q
            }
        }
        if let p = r.pids, p.limit > 0 { l.pidsMax = UInt64(p.limit) }
        return l
    }
}
