public import SystemPackage
import StockadeSystem
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Tenants and their jails as cgroups, on cgroup v2 or, where the host binds
/// the controllers to v1 (hybrid layout), on v1, behind one interface.
///
/// The tree below the base cgroup (default: `stockade` below the launcher's
/// own cgroup when that is delegated to it, else at the root of the
/// hierarchy; on v1, below the launcher's cgroup in each hierarchy):
///
///     stockade/                       base
///       tenant-alpha/                 the tenant's total budget
///         jail-<pid>-<start>-<n>/     one jail: its own limits, its processes
///
/// A jail cgroup is named after the launcher that made it (pid and start
/// time, so a reused pid is not taken for it): when a launcher dies without
/// cleaning up, the next manager on the host finds its jails and removes
/// them (``sweepStale()``, run when a manager starts).
///
/// Admission: each jail reserves its own memory_max, swap_max, pids_max and
/// cpu from its tenant's budget; a jail that asks for more than the tenant
/// has left, or beyond `max_jails`, is refused with the limit, the amount
/// asked and the amount left. A jail that sets no limit for a resource
/// reserves none of it and shares what the tenant has left; the tenant's
/// cgroup caps the total in the kernel either way. The reservations are read
/// back from the jails' cgroups under a lock on the tenant's directory, so
/// launchers sharing a tenant see each other's jails.
public final class CgroupManager: Sendable {
    public struct Configuration: Sendable {
        public enum Base: Sendable, Equatable {
            /// A cgroup of this name below the launcher's own (delegated) cgroup,
            /// else at the root of the hierarchy.
            case automatic(name: String)
            /// This path, relative to the hierarchy's root (`/stockade`); on v1
            /// the same path in every hierarchy.
            case path(String)
        }

        public enum Backend: Sendable, Equatable {
            case automatic, v2, v1
        }

        public var base: Base
        public var backend: Backend
        public var tenants: [TenantBudget]
        /// Remove jails left behind by dead launchers when the manager starts.
        public var sweepStale: Bool
        /// cpu.weight (1...10000; v1: cpu.shares) of the base against its
        /// siblings: all jails together get this share of a contended host.
        /// nil leaves the kernel's default (100; v1: 1024).
        public var baseWeight: UInt64?

        public init(base: Base = .automatic(name: "stockade"), backend: Backend = .automatic,
                    tenants: [TenantBudget] = [], sweepStale: Bool = true, baseWeight: UInt64? = nil) {
            self.base = base
            self.backend = backend
            self.tenants = tenants
            self.sweepStale = sweepStale
            self.baseWeight = baseWeight
        }
    }

    /// The tenant jails go to when none is named; it has no budget of its own.
    public static let defaultTenant = "default"

    public let host: CgroupHost
    /// 2 or 1: which backend serves this manager.
    public let version: Int
    /// Why this backend, in words (printed by `stockade run -v` and friends).
    public let diagnosis: String
    /// Jails removed by the sweep when the manager started.
    public private(set) var swept: [String] { get { sweptStore.withLock { $0 } } set { sweptStore.withLock { $0 = newValue } } }
    private let sweptStore = Mutex<[String]>([])
    let backend: any CgroupBackend
    let identity: LauncherIdentity
    private let tenants: [String: TenantBudget]
    private let state = Mutex<State>(State())

    private struct State {
        var createdTenants: Set<String> = []
        var liveJails: Set<String> = []
        /// The limits the kernel holds for this manager's live jails, read
        /// back once when each was made (or updated): admission sums every
        /// jail of the tenant, and reading each one's files again for every
        /// launch made filling a pool of a thousand quadratic. Jails of other
        /// launchers are read from their cgroups.
        var heldLimits: [String: LimitsSection] = [:]
        var baseCreated = false
    }

    /// Jail numbers are unique within the process, across managers.
    private static let counter = Atomic<Int>(0)

    public init(configuration: Configuration = Configuration(), host: CgroupHost = .detect(),
                identity: LauncherIdentity = .current()) throws(CgroupError) {
        self.host = host
        self.identity = identity
        var byName: [String: TenantBudget] = [:]
        for t in configuration.tenants { byName[t.name] = t }
        tenants = byName

        let (backend, why) = try Self.chooseBackend(configuration, host)
        self.backend = backend
        self.version = backend.version
        self.diagnosis = host.diagnosis + "\n" + why
        let existed = backend.exists("")
        try backend.prepare()
        state.withLock { $0.baseCreated = !existed }
        if let weight = configuration.baseWeight {
            guard (1...10_000).contains(weight) else {
                throw CgroupError(.unsupported, "base weight \(weight) is out of range 1...10000")
            }
            let limits = LimitsSection(cpuWeight: weight)
            _ = try backend.check(limits, parent: "", owner: "the base cgroup")
            try backend.apply(limits, to: "")
        }
        if configuration.sweepStale { swept = sweepStale() }
    }

    private static func chooseBackend(_ config: Configuration, _ host: CgroupHost) throws(CgroupError) -> (any CgroupBackend, String) {
        let core: Set<String> = ["memory", "pids", "cpu"]
        let v2Usable = host.unified.map { core.isSubset(of: $0.rootControllers) } ?? false
        let v1Usable = host.hierarchy(for: "memory") != nil
        let useV2: Bool
        var why: String
        switch config.backend {
        case .v2:
            guard host.unified != nil else {
                throw CgroupError(.unsupported, "cgroup v2 was asked for, but no cgroup2 filesystem is mounted\n" + host.diagnosis)
            }
            useV2 = true
            why = "using the cgroup v2 backend (asked for)"
        case .v1:
            guard !host.hierarchies.isEmpty else {
                throw CgroupError(.unsupported, "cgroup v1 was asked for, but no cgroup v1 hierarchy is mounted\n" + host.diagnosis)
            }
            useV2 = false
            why = "using the cgroup v1 backend (asked for)"
        case .automatic:
            if v2Usable {
                useV2 = true
                why = "using the cgroup v2 backend"
            } else if v1Usable {
                useV2 = false
                let bound = ["memory", "cpu", "pids"].compactMap { c in host.hierarchy(for: c).map { "\(c) at \($0.mountPoint)" } }
                why = "memory, cpu and pids limits need their controllers; this host mounts them as cgroup v1 (\(bound.joined(separator: ", "))), using the v1 backend"
            } else if host.unified != nil {
                useV2 = true
                why = "using the cgroup v2 backend; it lacks \(core.subtracting(host.v2Controllers).sorted().joined(separator: ", ")): limits that need them are refused"
            } else {
                throw CgroupError(.unsupported, "no limit can be enforced: " + host.diagnosis)
            }
        }

        if useV2, let u = host.unified {
            let basePath: String
            var ownDelegated: String?
            var delegatedBase = false
            switch config.base {
            case .path(let p):
                basePath = try Self.cleanPath(p)
            case .automatic(let name):
                let own = u.ownPath
                // A cgroup root delegated to this user by root (`stockade
                // cgroups --delegate`) is the base, as on v1; the kernel lets
                // the launcher move its jails there only from a cgroup below it.
                let delegated = CgroupDelegation.path(uid: geteuid(), name: name)
                let hasDelegated = geteuid() != 0 && CgroupDelegation.isOwnedByCaller(u.mountPoint + delegated)
                if hasDelegated && (own == delegated || own.hasPrefix(delegated + "/")) {
                    basePath = delegated
                    delegatedBase = true
                    // Started in the delegated cgroup itself (which then
                    // hands no controllers down yet): move to a leaf first.
                    if own == delegated { ownDelegated = own }
                    why += " (the cgroup delegated to uid \(geteuid()))"
                } else if own == "/" && !hasDelegated {
                    basePath = "/" + name
                } else if own != "/" && isDelegated(u.mountPoint + own) {
                    basePath = own + "/" + name
                    ownDelegated = own
                } else if geteuid() == 0 {
                    basePath = "/" + name
                } else if hasDelegated {
                    let dir = u.mountPoint + delegated
                    throw CgroupError(.unsupported, "the cgroup delegated to uid \(geteuid()), \(dir), takes jails only from a launcher that runs inside it (cgroup v2 moves a process only for a writer of the common ancestor's cgroup.procs), and this launcher runs in \(own); as root, start the session in \(dir)/\(CgroupDelegation.sessionLeaf) (write its pid to cgroup.procs there)")
                } else {
                    throw CgroupError(.unsupported, "the launcher's cgroup \(u.mountPoint + own) is not delegated to uid \(geteuid()); run Stockade as root, or in a systemd unit with Delegate=yes, or set the base cgroup to one this user may write")
                }
            }
            let b = CgroupV2Backend(host: host, mount: u.mountPoint, basePath: basePath, ownDelegated: ownDelegated,
                                    delegatedBase: delegatedBase)
            return (b, why + ", base \(b.abs(""))")
        }
        var fixed: String?
        if case .path(let p) = config.base { fixed = try Self.cleanPath(p) }
        var autoName = "stockade"
        if case .automatic(let n) = config.base {
            autoName = n
            // Unprivileged, the launcher cannot create cgroups below its
            // own on v1: a cgroup root delegated to it is its base.
            let delegated = CgroupDelegation.path(uid: geteuid(), name: n)
            if geteuid() != 0, let memory = host.hierarchy(for: "memory"),
               CgroupDelegation.isOwnedByCaller(memory.mountPoint + delegated) {
                fixed = delegated
                why += " (the cgroup delegated to uid \(geteuid()))"
            }
        }
        let b = CgroupV1Backend(host: host) { h in
            fixed ?? (h.ownPath == "/" ? "/" + autoName : h.ownPath + "/" + autoName)
        }
        return (b, why + ", base " + b.trees.map(\.base).joined(separator: ", "))
    }

    private static func cleanPath(_ p: String) throws(CgroupError) -> String {
        let parts = p.split(separator: "/")
        guard p.hasPrefix("/"), !parts.isEmpty, !parts.contains(".."), !parts.contains(".") else {
            throw CgroupError(.unsupported, "base cgroup \"\(p)\" must be an absolute path below the hierarchy's root, without . or ..")
        }
        return "/" + parts.joined(separator: "/")
    }

    /// systemd marks delegated cgroups with the `trusted.delegate` (or
    /// `user.delegate`) xattr; an unprivileged launcher may also simply own
    /// its cgroup's files.
    private static func isDelegated(_ dir: String) -> Bool {
        for name in ["trusted.delegate", "user.delegate"] where CgroupFS.hasXattr(dir, name) { return true }
        return geteuid() != 0 && access(dir + "/cgroup.subtree_control", W_OK) == 0 && access(dir + "/cgroup.procs", W_OK) == 0
    }

    /// The base cgroup, for messages.
    public var baseDescription: String { backend.baseDescription }

    /// The base cgroup's directory in each hierarchy (one on v2).
    public var basePaths: [String] {
        if let v1 = backend as? CgroupV1Backend { return v1.trees.map(\.base) }
        return [backend.path("")]
    }

    /// The directories of a tenant's cgroup (one on v2).
    public func tenantPaths(_ tenant: String) -> [String] {
        basePaths.map { $0 + "/" + Self.tenantDirectory(tenant) }
    }

    static func tenantDirectory(_ name: String) -> String { "tenant-" + name }

    /// The tenant's budget, or an error naming the known ones.
    public func budget(of tenant: String) throws(CgroupError) -> TenantBudget {
        if let b = tenants[tenant] { return b }
        if tenant == Self.defaultTenant { return TenantBudget(name: tenant) }
        let known = tenants.keys.sorted().joined(separator: ", ")
        throw CgroupError(.tenant, "unknown tenant \"\(tenant)\" (known: \(known.isEmpty ? "none; give a tenants file" : known))")
    }

    /// Creates (or updates) the tenant's cgroup with its budget.
    @discardableResult
    public func prepareTenant(_ name: String) throws(CgroupError) -> TenantBudget {
        let budget = try budget(of: name)
        let rel = Self.tenantDirectory(name)
        _ = try backend.check(budget.limits, parent: "", owner: "tenant \(name)")
        let created: Bool
        do {
            created = try backend.create(rel, delegating: true)
        } catch let error where error.cause == .noSuchFileOrDirectory {
            // The base went away after this manager prepared it (another
            // launcher closed it while empty, or an undelegation removed
            // an empty parent): make it again, once.
            let existed = backend.exists("")
            try backend.prepare()
            if !existed { state.withLock { $0.baseCreated = true } }
            created = try backend.create(rel, delegating: true)
        }
        if created { state.withLock { _ = $0.createdTenants.insert(rel) } }
        try backend.apply(budget.limits, to: rel)
        return budget
    }

    /// Creates the cgroup for one jail of `tenant` with `limits`, after
    /// checking that the host can enforce them and the tenant can afford them.
    /// `forks`: the jail is a template whose forked workers get cgroups of
    /// their own below the jail's (``JailGroup/makeForkGroup(limits:)``); on
    /// cgroup v2 its processes then live in a leaf, `template`, because a
    /// cgroup that hands controllers to children may hold no process.
    public func jail(tenant: String = CgroupManager.defaultTenant, limits: LimitsSection,
                     forks: Bool = false) throws(CgroupError) -> JailGroup {
        let budget = try prepareTenant(tenant)
        let tenantRel = Self.tenantDirectory(tenant)
        let name = identity.jailName(Self.counter.wrappingAdd(1, ordering: .relaxed).oldValue)
        let notes = try backend.check(limits, parent: tenantRel, owner: "jail \(name)")

        let rel = tenantRel + "/" + name
        let leaf = forks && version == 2 ? rel + "/" + JailGroup.templateLeaf : rel
        try withLock(on: tenantRel) { () throws(CgroupError) in
            try admit(limits, into: budget)
            try backend.create(rel, delegating: forks)
            do throws(CgroupError) {
                try backend.apply(limits, to: rel)
                if leaf != rel { try backend.create(leaf, delegating: false) }
            } catch {
                try? backend.remove(rel)
                throw error
            }
            let held = backend.limits(of: rel)
            state.withLock {
                $0.liveJails.insert(rel)
                $0.heldLimits[rel] = held
            }
        }
        return JailGroup(manager: self, rel: rel, name: name, tenant: tenant, limits: limits, notes: notes,
                         directory: backend.openDirectory(leaf), leaf: leaf)
    }

    /// The cgroup `rel` below the base, outside tenants, admission and the
    /// stale sweep: an OCI container's, which outlives the process that made
    /// it and is found again by path by the next command. `create`: made
    /// here with `limits` (refused when it exists); else it must exist.
    public func container(_ rel: String, limits: LimitsSection, create: Bool) throws(CgroupError) -> JailGroup {
        let parts = rel.split(separator: "/")
        guard !parts.isEmpty, !parts.contains(".."), !parts.contains(".") else {
            throw CgroupError(.unsupported, "cgroup \(rel): a path below the base, without . or ..")
        }
        if create {
            let notes = try backend.check(limits, parent: "", owner: "container \(rel)")
            guard try backend.create(rel, delegating: false) else {
                throw CgroupError(.io, "cgroup \(backend.path(rel)) already exists")
            }
            do throws(CgroupError) {
                try backend.apply(limits, to: rel)
            } catch {
                try? backend.remove(rel)
                throw error
            }
            return JailGroup(manager: self, rel: rel, name: String(parts.last!), tenant: "", limits: limits, notes: notes,
                             directory: backend.openDirectory(rel))
        }
        guard backend.exists(rel) else { throw CgroupError(.io, "cgroup \(backend.path(rel)) does not exist") }
        return JailGroup(manager: self, rel: rel, name: String(parts.last!), tenant: "", limits: backend.limits(of: rel),
                         notes: [], directory: backend.openDirectory(rel))
    }

    /// Runs `body` holding an exclusive `flock` on the tenant's cgroup
    /// directory, so that launchers admitting into one tenant take turns.
    /// Without the lock nothing is admitted: two launchers could each see
    /// room for one more jail and both start it.
    private func withLock(on rel: String, _ body: () throws(CgroupError) -> Void) throws(CgroupError) {
        let path = backend.lockPath(rel)
        let fd: Int32
        do {
            fd = try retryingSyscall { open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC) }
        } catch {
            throw CgroupError(.io, "cannot open \(path) to lock it while admitting a jail", cause: error)
        }
        defer { Glibc.close(fd) }
        do {
            _ = try retryingSyscall { flock(fd, LOCK_EX) }
        } catch {
            throw CgroupError(.io, "cannot lock \(path) while admitting a jail", cause: error)
        }
        try body()
    }

    /// Refuses `limits` when the tenant's jails already hold too much.
    private func admit(_ limits: LimitsSection, into budget: TenantBudget) throws(CgroupError) {
        let tenantRel = Self.tenantDirectory(budget.name)
        let jails = backend.children(tenantRel).filter { $0.hasPrefix("jail-") }
        if let most = budget.maxJails, jails.count >= most {
            throw CgroupError(.tenant, "tenant \(budget.name) already holds \(jails.count) jails, its most (max_jails = \(most))")
        }
        let known = state.withLock { $0.heldLimits }
        let held = jails.map { known[tenantRel + "/" + $0] ?? backend.limits(of: tenantRel + "/" + $0) }
        let b = budget.limits
        if let short = b.shortfall(asking: limits, held: held) {
            throw CgroupError(.overBudget, "tenant \(budget.name) cannot admit the jail: \(short.key) asked \(short.asked), left \(short.left) of the tenant's \(short.total) (\(jails.count) jail\(jails.count == 1 ? " holds" : "s hold") \(short.holding))")
        }
        if let total = b.cpuset, let ask = limits.cpuset, !ask.cpus.isSubset(of: total.cpus) {
            throw CgroupError(.overBudget, "tenant \(budget.name) cannot admit the jail: cpuset asked \(ask), the tenant has only \(total)")
        }
    }

    /// Removes jails whose launcher is gone (its pid no longer runs with the
    /// recorded start time): kills what is left in them and removes their
    /// cgroups. Jails of live launchers, this one included, are kept.
    @discardableResult
    public func sweepStale() -> [String] {
        var removed: [String] = []
        for tenant in backend.children("") where tenant.hasPrefix("tenant-") {
            for jail in backend.children(tenant) {
                guard let owner = LauncherIdentity.owner(ofJail: jail), !owner.isAlive else { continue }
                let rel = tenant + "/" + jail
                if (try? backend.remove(rel)) != nil { removed.append(backend.path(rel)) }
            }
        }
        return removed
    }

    /// A jail cgroup for a launch that has no manager of its own (a device
    /// allowlist on a jail launched without limits): a manager is made for
    /// it, and removing the jail closes that manager too, so the tenant and
    /// base cgroups it created go with it.
    package static func standaloneJail(configuration: Configuration, limits: LimitsSection) throws(CgroupError) -> JailGroup {
        let manager = try CgroupManager(configuration: configuration)
        let group: JailGroup
        do {
            group = try manager.jail(limits: limits)
        } catch {
            try? manager.close()
            throw error
        }
        group.closesManager.store(true, ordering: .relaxed)
        return group
    }

    /// Removes this manager's jails that are still there, the tenants it
    /// made once they are empty, and the base if it made it and nothing else
    /// uses it. Cgroups other launchers still use are left alone.
    public func close() throws(CgroupError) {
        let (jails, tenantDirs, base) = state.withLock { s in
            let r = (s.liveJails, s.createdTenants, s.baseCreated)
            s.liveJails = []
            s.heldLimits = [:]
            s.createdTenants = []
            s.baseCreated = false
            return r
        }
        var firstError: CgroupError?
        for rel in jails.sorted() {
            do { try backend.remove(rel) } catch { firstError = firstError ?? error }
        }
        for rel in tenantDirs.sorted() where backend.children(rel).isEmpty {
            do { try backend.remove(rel) } catch { firstError = firstError ?? error }
        }
        if base && backend.children("").isEmpty {
            do { try backend.remove("") } catch { firstError = firstError ?? error }
        }
        if let firstError { throw firstError }
    }

    /// ``close()``, then also removes what it finds of the base whoever
    /// made it (a launcher killed with SIGKILL, an earlier run): jails of
    /// dead launchers, every empty `tenant-*` cgroup, and the base once it
    /// is empty. Jails of live launchers, and their tenants, are kept. For
    /// a launcher that owns its base (stockaded, under its instance lock).
    public func closeRemovingBase() throws(CgroupError) {
        var firstError: CgroupError?
        do { try close() } catch { firstError = error }
        sweepStale()
        for tenant in backend.children("") where tenant.hasPrefix("tenant-") && backend.children(tenant).isEmpty {
            do { try backend.remove(tenant) } catch { firstError = firstError ?? error }
        }
        if backend.exists(""), backend.children("").isEmpty {
            do { try backend.remove("") } catch { firstError = firstError ?? error }
        }
        if let firstError { throw firstError }
    }

    /// Reads a live jail's limits back after they changed.
    func reread(_ rel: String) {
        let held = backend.limits(of: rel)
        state.withLock { if $0.heldLimits[rel] != nil { $0.heldLimits[rel] = held } }
    }

    func forget(_ rel: String) {
        state.withLock {
            $0.liveJails.remove(rel)
            $0.heldLimits[rel] = nil
        }
    }
}

/// One jail's cgroup: its limits, its processes, its accounting.
///
/// Made by ``CgroupManager/jail(tenant:limits:)``; the launcher places the
/// jail in it (``directory`` for `CLONE_INTO_CGROUP` on v2, else
/// ``attach(pid:)``), reads ``usage()`` when the jail ends and calls
/// ``remove()``.
public final class JailGroup: JailCgroup {
    /// `jail-<pid>-<start>-<n>`.
    public let name: String
    public let tenant: String
    public let limits: LimitsSection
    /// Limits enforced only approximately on this host, in words.
    public let notes: [String]
    /// The cgroup's directory (the memory hierarchy's, or the first one's, on v1).
    public let path: String
    /// 2 or 1.
    public let version: Int
    let rel: String
    /// Where the jail's processes are placed: `rel`, or on cgroup v2 a
    /// template's leaf below it.
    let leaf: String
    let manager: CgroupManager
    private let fd: Mutex<FileDescriptor?>
    /// Set when the manager exists only for this jail (``CgroupManager/standaloneJail(configuration:limits:)``).
    let closesManager = Atomic<Bool>(false)

    init(manager: CgroupManager, rel: String, name: String, tenant: String, limits: LimitsSection,
         notes: [String], directory: FileDescriptor?, leaf: String? = nil) {
        self.manager = manager
        self.rel = rel
        self.leaf = leaf ?? rel
        self.name = name
        self.tenant = tenant
        self.limits = limits
        self.notes = notes
        self.path = manager.backend.path(rel)
        self.version = manager.version
        self.fd = Mutex(directory)
    }

    deinit {
        fd.withLock { if let d = $0 { try? d.close() } }
    }

    public var directory: FileDescriptor? { fd.withLock { $0 } }

    public func attach(pid: Int32) throws {
        try manager.backend.attach(pid: pid, to: leaf)
    }

    /// The processes in the jail now.
    public var processes: [Int32] { manager.backend.procs(rel) }

    /// Stops every process in the jail (`cgroup.freeze`; v1 `freezer.state`)
    /// and returns once all are stopped.
    public func freeze() throws(CgroupError) { try manager.backend.setFrozen(true, rel) }
    public func thaw() throws(CgroupError) { try manager.backend.setFrozen(false, rel) }
    public var isFrozen: Bool { manager.backend.isFrozen(rel) }

    public func kill() throws {
        try manager.backend.kill(rel)
    }

    /// Sets new limits on the running jail (checked as at creation).
    public func update(_ limits: LimitsSection) throws(CgroupError) {
        _ = try manager.backend.check(limits, parent: "", owner: "jail \(name)")
        try manager.backend.apply(limits, to: rel)
        manager.reread(rel)
    }

    public func usage() throws -> CgroupUsage {
        guard manager.backend.exists(rel) else {
            throw CgroupError(.io, "cgroup \(path) is gone: its usage can no longer be read")
        }
        return manager.backend.usage(rel)
    }

    /// Kills what is left and removes the cgroup; safe to call twice.
    public func remove() throws {
        fd.withLock { d in
            if let open = d { try? open.close() }
            d = nil
        }
        try manager.backend.remove(rel)
        manager.forget(rel)
        if closesManager.load(ordering: .relaxed) { try manager.close() }
    }
}
