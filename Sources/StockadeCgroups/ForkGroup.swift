import Synchronization

/// The cgroup of one worker forked from a template, below the template's
/// jail cgroup:
///
///     jail-<pid>-<start>-<n>/     the template's jail: the total of it and its forks
///       template/                 (cgroup v2 only) the template and the jail's PID 1
///       fork-<n>/                 one forked worker's own budget
///
/// The jail's limits still cap the template and every fork together; a
/// fork's own limits make the kernel act on that fork alone (the memory
/// cgroup's OOM killer picks only among the processes of the cgroup whose
/// limit was reached). On cgroup v1 the same tree is made in every
/// hierarchy, and the template stays in the jail's cgroup itself (v1 allows
/// processes beside child cgroups).
///
/// Made before the fork exists; the daemon moves the fork in by its pid
/// (``attach(pid:)``), which the caller must have tied to the process it
/// means (a pidfd that still refers to that pid after the move).
public final class ForkGroup: Sendable {
    /// `fork-<n>`.
    public let name: String
    public let limits: LimitsSection
    /// The cgroup's directory (the memory hierarchy's, or the first one's, on v1).
    public let path: String
    let rel: String
    private let manager: CgroupManager
    private let removed = Atomic<Bool>(false)

    init(manager: CgroupManager, rel: String, name: String, limits: LimitsSection) {
        self.manager = manager
        self.rel = rel
        self.name = name
        self.limits = limits
        self.path = manager.backend.path(rel)
    }

    /// Moves `pid` into the cgroup (`cgroup.procs`; every hierarchy on v1).
    public func attach(pid: Int32) throws(CgroupError) {
        try manager.backend.attach(pid: pid, to: rel)
    }

    /// The processes in the cgroup now.
    public var processes: [Int32] { manager.backend.procs(rel) }

    /// What the fork used; nil once the cgroup is gone.
    public func usage() -> CgroupUsage? {
        guard manager.backend.exists(rel) else { return nil }
        return manager.backend.usage(rel)
    }

    /// Kills what is left in it and removes the cgroup; safe to call twice.
    public func remove() throws(CgroupError) {
        guard !removed.exchange(true, ordering: .relaxed) else { return }
        try manager.backend.remove(rel)
    }
}

extension JailGroup {
    /// The leaf a template's processes live in on cgroup v2.
    public static let templateLeaf = "template"

    private static let forkCounter = Atomic<Int>(0)

    /// Creates the cgroup of one forked worker below this jail's, with
    /// `limits` (checked as a jail's are: a limit this host cannot enforce
    /// is refused). The jail must have been made with `forks: true`.
    public func makeForkGroup(limits: LimitsSection) throws(CgroupError) -> ForkGroup {
        if version == 2 && leaf == rel {
            throw CgroupError(.unsupported, "jail \(name) was not made as a template's (forks: true): on cgroup v2 its processes sit in its own cgroup, which can then have no child with controllers")
        }
        let name = "fork-\(Self.forkCounter.wrappingAdd(1, ordering: .relaxed).oldValue)"
        let child = rel + "/" + name
        _ = try manager.backend.check(limits, parent: rel, owner: "forked worker \(name) of jail \(self.name)")
        try manager.backend.create(child, delegating: false)
        do throws(CgroupError) {
            try manager.backend.apply(limits, to: child)
        } catch {
            try? manager.backend.remove(child)
            throw error
        }
        return ForkGroup(manager: manager, rel: child, name: name, limits: limits)
    }
}
