import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// One way of writing cgroups (v2 or v1) behind ``CgroupManager``.
///
/// Paths are relative to the manager's base cgroup: `""` is the base,
/// `"tenant-alpha"` a tenant, `"tenant-alpha/jail-812-4431-0"` a jail.
protocol CgroupBackend: Sendable {
    /// 2 or 1.
    var version: Int { get }
    /// Where the base cgroup is, for messages (`/sys/fs/cgroup/stockade`).
    var baseDescription: String { get }
    /// Creates the base cgroup and enables the controllers on the way down.
    func prepare() throws(CgroupError)
    /// Creates a cgroup below the base; with `delegating`, its children get
    /// the controllers too. Returns false when it existed already.
    @discardableResult
    func create(_ rel: String, delegating: Bool) throws(CgroupError) -> Bool
    /// Throws when a limit cannot be enforced in a child of `parent`;
    /// returns notes on limits that are enforced only approximately.
    /// `owner` names the jail or tenant in messages.
    func check(_ limits: LimitsSection, parent: String, owner: String) throws(CgroupError) -> [String]
    func apply(_ limits: LimitsSection, to rel: String) throws(CgroupError)
    /// The limits written on a cgroup (for admission: what its jails hold).
    func limits(of rel: String) -> LimitsSection
    func children(_ rel: String) -> [String]
    func exists(_ rel: String) -> Bool
    func procs(_ rel: String) -> [Int32]
    func attach(pid: Int32, to rel: String) throws(CgroupError)
    func setFrozen(_ frozen: Bool, _ rel: String) throws(CgroupError)
    func isFrozen(_ rel: String) -> Bool
    func kill(_ rel: String) throws(CgroupError)
    func usage(_ rel: String) -> CgroupUsage
    /// Removes one cgroup (its processes are killed first); a missing one is fine.
    func remove(_ rel: String) throws(CgroupError)
    /// An `O_DIRECTORY` fd for `CLONE_INTO_CGROUP` (v2 only).
    func openDirectory(_ rel: String) -> FileDescriptor?
    /// A directory to `flock` while admitting jails into a tenant.
    func lockPath(_ rel: String) -> String
    /// The cgroup's path (the first hierarchy's on v1), for messages.
    func path(_ rel: String) -> String
}

/// The controller each limit needs, and the profile key that asks for it.
extension LimitsSection {
    var asked: [(key: String, controller: String)] {
        var result: [(String, String)] = []
        if memoryMax != nil { result.append(("memory_max", "memory")) }
        if memoryHigh != nil { result.append(("memory_high", "memory")) }
        if swapMax != nil { result.append(("swap_max", "memory")) }
        if pidsMax != nil { result.append(("pids_max", "pids")) }
        if cpu != nil { result.append(("cpu", "cpu")) }
        if cpuWeight != nil { result.append(("cpu_weight", "cpu")) }
        if cpuset != nil { result.append(("cpuset", "cpuset")) }
        if !ioMax.isEmpty { result.append(("io_max", "io")) }
        return result
    }
}

/// Kills every process in a cgroup the slow way: freeze (when a freezer is
/// at hand) so nothing forks while we look, SIGKILL each pid, thaw, and
/// again until the cgroup is empty. `cgroup.kill` does this in the kernel.
package func killEach(procs: () -> [Int32], freeze: ((Bool) -> Void)?, seconds: Double) -> Bool {
    CgroupFS.wait(seconds: seconds) {
        let pids = procs()
        if pids.isEmpty { return true }
        freeze?(true)
        for pid in procs() where pid > 0 { Glibc.kill(pid, SIGKILL) }
        freeze?(false)
        return procs().isEmpty
    }
}
