public import StockadeCgroups
import SystemPackage
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

extension DevicePlan {
    /// Makes the kernel enforce ``rules`` for the jail, and returns the
    /// cgroup to launch the jail in (put it in `LaunchRequest.cgroup`).
    ///
    /// - cgroup v2 (the jail's cgroup has a ``JailCgroup/directory``): the
    ///   allowlist program (``DeviceProgram``) is attached to that cgroup now,
    ///   before the jail exists, so its first instruction already runs under
    ///   it; `cgroup` itself is returned.
    /// - cgroup v1 (a `devices` hierarchy is mounted): a devices cgroup is
    ///   made for the jail with `devices.deny` "a" and one `devices.allow`
    ///   line per rule; the returned cgroup wraps `cgroup` (which may be nil)
    ///   and moves the jail into both when the launcher calls `attach(pid:)`,
    ///   before it releases the child.
    ///
    /// - neither, and no cgroup given (a cgroup v2 host, a launch without
    ///   limits): a limit-free jail cgroup is made with ``CgroupManager`` to
    ///   hold the program, and returned.
    ///
    /// Fails, saying why, when none of this is possible: a device allowlist the
    /// kernel does not enforce would be a node list only.
    public func enforce(on cgroup: (any JailCgroup)?, mountinfo: String? = nil,
                        selfCgroup: String? = nil) throws(DeviceError) -> any JailCgroup {
        if let cgroup, let directory = cgroup.directory {
            try DeviceProgram(rules: rules).attach(to: directory, describing: "the jail's cgroup")
            return cgroup
        }
        let info = mountinfo ?? DeviceEnvironment.host.read("/proc/self/mountinfo") ?? ""
        let own = selfCgroup ?? DeviceEnvironment.host.read("/proc/self/cgroup") ?? ""
        guard let hierarchy = DeviceCgroupV1.hierarchy(mountinfo: info, selfCgroup: own) else {
            guard cgroup == nil else {
                throw DeviceError("cannot enforce the device allowlist: the jail's cgroup is not a cgroup v2 directory and no cgroup v1 devices hierarchy is mounted")
            }
            // A jail launched without a cgroup on a cgroup v2 host: give it
            // one (no limits) to hold the program.
            let group: JailGroup
            do {
                group = try CgroupManager.standaloneJail(configuration: .init(backend: .v2), limits: LimitsSection())
            } catch {
                throw DeviceError("the device allowlist is enforced through the jail's cgroup, and none could be made for it: \(error.description)")
            }
            guard let directory = group.directory else {
                try? group.remove()
                throw DeviceError("the device allowlist needs a cgroup v2 directory for the jail; \(group.path) could not be opened")
            }
            do {
                try DeviceProgram(rules: rules).attach(to: directory, describing: group.path)
            } catch {
                try? group.remove()
                throw error
            }
            return group
        }
        let group = try DeviceCgroupV1.create(in: hierarchy, rules: rules, name: (cgroup as? JailGroup)?.name)
        return DeviceGuardedCgroup(inner: cgroup, devices: group)
    }
}

/// A jail's cgroup on cgroup v1 hosts, with its devices cgroup beside it.
final class DeviceGuardedCgroup: JailCgroup {
    let inner: (any JailCgroup)?
    let devices: DeviceCgroupV1

    init(inner: (any JailCgroup)?, devices: DeviceCgroupV1) {
        self.inner = inner
        self.devices = devices
    }

    /// nil: the launcher must call ``attach(pid:)`` (v1 has no CLONE_INTO_CGROUP).
    var directory: FileDescriptor? { nil }

    func attach(pid: Int32) throws {
        try devices.attach(pid: pid)
        try inner?.attach(pid: pid)
    }

    func kill() throws {
        try inner?.kill()
        devices.killAll()
    }

    func usage() throws -> CgroupUsage {
        try inner?.usage() ?? CgroupUsage()
    }

    func remove() throws {
        var first: (any Error)?
        do { try inner?.remove() } catch { first = error }
        do { try devices.remove() } catch { first = first ?? error }
        if let first { throw first }
    }
}

/// One jail's cgroup in the cgroup v1 `devices` hierarchy:
/// `<mount><launcher's own>/stockade/jail-<pid>-<start>-<n>`.
final class DeviceCgroupV1: Sendable {
    struct Hierarchy: Sendable, Equatable {
        var mountPoint: String
        /// The launcher's cgroup in it, relative to the mount.
        var ownPath: String

        var base: String { (ownPath == "/" ? mountPoint : mountPoint + ownPath) + "/stockade" }
    }

    let path: String
    private let removed = Mutex(false)

    private init(path: String) {
        self.path = path
    }

    private static let counter = Atomic<Int>(0)

    /// The mounted v1 `devices` hierarchy, if any.
    static func hierarchy(mountinfo: String, selfCgroup: String) -> Hierarchy? {
        var own = "/"
        for line in selfCgroup.split(separator: "\n") {
            let parts = line.split(separator: ":", maxSplits: 2, omittingEmptySubsequences: false)
            if parts.count == 3, parts[1].split(separator: ",").contains("devices") { own = String(parts[2]) }
        }
        for line in mountinfo.split(separator: "\n") {
            let fields = line.split(separator: " ")
            guard let dash = fields.firstIndex(of: "-"), dash + 3 < fields.count, fields.count > 4,
                  fields[dash + 1] == "cgroup",
                  fields[dash + 3].split(separator: ",").contains("devices") else { continue }
            let mountRoot = String(fields[3])
            return Hierarchy(mountPoint: CgroupHost.unescape(String(fields[4])),
                             ownPath: CgroupHost.relative(own, toMountRoot: mountRoot))
        }
        return nil
    }

    /// Makes the jail's devices cgroup: deny everything, then allow the rules.
    /// Jails of launchers that died are removed first.
    static func create(in hierarchy: Hierarchy, rules: [DeviceRule], name: String?) throws(DeviceError) -> DeviceCgroupV1 {
        do {
            try CgroupFS.mkdir(hierarchy.base, existingOK: true)
        } catch {
            throw DeviceError("cannot enforce the device allowlist: \(error.description)")
        }
        sweepStale(hierarchy.base)
        let identity = LauncherIdentity.current()
        let jailName = name ?? identity.jailName(1_000_000 + counter.wrappingAdd(1, ordering: .relaxed).oldValue)
        let group = DeviceCgroupV1(path: hierarchy.base + "/" + jailName)
        do {
            try CgroupFS.mkdir(group.path, existingOK: false)
            // A new v1 devices cgroup copies its parent's list; start from nothing.
            try CgroupFS.write(group.path + "/devices.deny", "a")
            for rule in rules {
                try CgroupFS.write(group.path + "/devices.allow", rule.v1Line)
            }
        } catch {
            try? group.remove()
            throw DeviceError("cannot enforce the device allowlist: \(error.description)")
        }
        return group
    }

    /// Removes devices cgroups whose launcher no longer runs.
    static func sweepStale(_ base: String) {
        for name in CgroupFS.children(base) {
            guard let owner = LauncherIdentity.owner(ofJail: name), !owner.isAlive else { continue }
            let dir = base + "/" + name
            for pid in CgroupFS.procs(dir) { Glibc.kill(pid, SIGKILL) }
            _ = CgroupFS.wait(seconds: 2) { CgroupFS.rmdir(dir) == nil }
        }
    }

    /// What the kernel says this cgroup allows (`devices.list`).
    var list: [String] {
        (CgroupFS.read(path + "/devices.list") ?? "").split(separator: "\n").map(String.init)
    }

    func attach(pid: Int32) throws(DeviceError) {
        do {
            try CgroupFS.write(path + "/cgroup.procs", "\(pid)")
        } catch {
            throw DeviceError("cannot place the jail in its devices cgroup: \(error.description)")
        }
    }

    func killAll() {
        _ = killEach(procs: { CgroupFS.procs(path) }, freeze: nil, seconds: 5)
    }

    func remove() throws(DeviceError) {
        if removed.withLock({ $0 }) { return }
        if !CgroupFS.procs(path).isEmpty { killAll() }
        var last: Errno?
        _ = CgroupFS.wait(seconds: 5) {
            last = CgroupFS.rmdir(path)
            return last == nil || last != .resourceBusy
        }
        if let last { throw DeviceError("cannot remove devices cgroup \(path): \(last)") }
        removed.withLock { $0 = true }
    }
}
