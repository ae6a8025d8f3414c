import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// The cgroup v2 backend: one tree, controllers handed down through
/// `cgroup.subtree_control`.
///
/// The "no internal processes" rule: a cgroup other than the root may
/// either hold processes or hand controllers to its children, not both.
/// The base and each tenant therefore hold no process; processes live only
/// in jail cgroups, which are leaves. When the base sits below the
/// launcher's own cgroup (a systemd unit with `Delegate=yes`), the
/// launcher's cgroup holds the launcher, so before it can delegate the
/// launcher moves itself into a leaf beside the base, `<own>/launcher`:
///
///     <own>/            subtree_control: +cpu +memory +pids ...
///       launcher/       the launcher process
///       stockade/       base, subtree_control: +cpu +memory ...
///         tenant-a/     tenant budget, subtree_control: ...
///           jail-.../   one jail's limits and processes
final class CgroupV2Backend: CgroupBackend {
    let host: CgroupHost
    let mount: String
    /// The base, relative to the mount (`/stockade`).
    let basePath: String
    /// The launcher's own cgroup when the base is below it (we may move
    /// ourselves out of it into a leaf), else nil.
    let ownDelegated: String?
    /// The base is a cgroup root delegated to this user: its parent is
    /// root's, so the controllers are taken as root enabled them there.
    let delegatedBase: Bool

    var version: Int { 2 }
    var baseDescription: String { "cgroup v2 at \(abs(""))" }

    init(host: CgroupHost, mount: String, basePath: String, ownDelegated: String?, delegatedBase: Bool = false) {
        self.host = host
        self.mount = mount
        self.basePath = basePath
        self.ownDelegated = ownDelegated
        self.delegatedBase = delegatedBase
    }

    func abs(_ rel: String) -> String {
        let base = basePath == "/" ? mount : mount + basePath
        return rel.isEmpty ? base : base + "/" + rel
    }

    func path(_ rel: String) -> String { abs(rel) }
    func lockPath(_ rel: String) -> String { abs(rel) }
    func exists(_ rel: String) -> Bool { CgroupFS.exists(abs(rel) + "/cgroup.procs") }

    func prepare() throws(CgroupError) {
        var current = mount
        for component in basePath.split(separator: "/") {
            let child = current + "/" + component
            if !CgroupFS.exists(child) {
                try enableControllers(in: current)
                try CgroupFS.mkdir(child, existingOK: true)
            } else if child == abs("") && !delegatedBase {
                try enableControllers(in: current)
            }
            current = child
        }
        try enableControllers(in: abs(""))
    }

    @discardableResult
    func create(_ rel: String, delegating: Bool) throws(CgroupError) -> Bool {
        let created = try CgroupFS.mkdir(abs(rel), existingOK: true)
        if delegating { try enableControllers(in: abs(rel)) }
        return created
    }

    /// Writes `+c` for every wanted controller `dir` offers and does not
    /// yet hand down.
    func enableControllers(in dir: String) throws(CgroupError) {
        let offered = Set(words(CgroupFS.read(dir + "/cgroup.controllers")))
        let enabled = Set(words(CgroupFS.read(dir + "/cgroup.subtree_control")))
        let missing = CgroupHost.wantedControllers.filter { offered.contains($0) && !enabled.contains($0) }
        guard !missing.isEmpty else { return }
        let line = missing.map { "+" + $0 }.joined(separator: " ")
        do {
            try CgroupFS.write(dir + "/cgroup.subtree_control", line)
        } catch let error where error.cause == .resourceBusy {
            // No internal processes: `dir` holds processes. Only the
            // launcher's own delegated cgroup may be emptied, by us.
            guard let own = ownDelegated, dir == mount + own else {
                throw CgroupError(.unsupported, "cannot hand controllers down from \(dir): it holds processes (\(CgroupFS.procs(dir).map(String.init).joined(separator: " "))), and cgroup v2 lets a cgroup either hold processes or delegate controllers; choose a base cgroup whose parent holds no processes", cause: error.cause)
            }
            try moveLauncherToLeaf(own: dir)
            try CgroupFS.write(dir + "/cgroup.subtree_control", line)
        }
    }

    /// Moves this process into `<own>/launcher`, so that `<own>` may delegate.
    private func moveLauncherToLeaf(own: String) throws(CgroupError) {
        let others = CgroupFS.procs(own).filter { $0 != getpid() }
        guard others.isEmpty else {
            throw CgroupError(.unsupported, "the launcher's cgroup \(own) also holds processes \(others.map(String.init).joined(separator: " ")); cgroup v2 allows no processes beside delegated controllers. Run Stockade in a cgroup of its own (systemd: a service with Delegate=yes) or set the base cgroup explicitly")
        }
        try CgroupFS.mkdir(own + "/launcher", existingOK: true)
        try CgroupFS.write(own + "/launcher/cgroup.procs", "\(getpid())")
    }

    /// The controllers a cgroup created below `rel`'s parent gets.
    func controllers(for rel: String) -> Set<String> {
        Set(words(CgroupFS.read(abs(rel) + "/cgroup.subtree_control")))
    }

    func check(_ limits: LimitsSection, parent parentRel: String, owner: String) throws(CgroupError) -> [String] {
        let available = controllers(for: parentRel)
        for (key, controller) in limits.asked where !available.contains(controller) {
            throw CgroupError(.unsupported, "\(owner): \(key) needs the \(controller) controller; \(host.v2Absence(controller)), and it is not enabled in \(abs(parentRel))/cgroup.subtree_control")
        }
        if limits.swapMax != nil && !CgroupFS.exists(abs("") + "/memory.swap.max") {
            throw CgroupError(.unsupported, "\(owner): swap_max needs memory.swap.max, which this kernel does not have (swap accounting is off: boot with swapaccount=1)")
        }
        return []
    }

    func apply(_ limits: LimitsSection, to rel: String) throws(CgroupError) {
        let dir = abs(rel)
        // memory.high first: lowering memory.max below the usage would
        // otherwise reclaim before the soft limit is in place.
        if let v = limits.memoryHigh { try CgroupFS.write(dir + "/memory.high", "\(v)") }
        if let v = limits.memoryMax { try CgroupFS.write(dir + "/memory.max", "\(v)") }
        if let v = limits.swapMax { try CgroupFS.write(dir + "/memory.swap.max", "\(v)") }
        if let v = limits.pidsMax { try CgroupFS.write(dir + "/pids.max", "\(v)") }
        if let q = limits.cpu { try CgroupFS.write(dir + "/cpu.max", q.description) }
        if let w = limits.cpuWeight { try CgroupFS.write(dir + "/cpu.weight", "\(w)") }
        if let set = limits.cpuset { try CgroupFS.write(dir + "/cpuset.cpus", set.description) }
        for io in limits.ioMax { try CgroupFS.write(dir + "/io.max", io.description) }
    }

    func limits(of rel: String) -> LimitsSection {
        let dir = abs(rel)
        var l = LimitsSection()
        l.memoryMax = CgroupFS.readNumber(dir + "/memory.max")
        l.swapMax = CgroupFS.readNumber(dir + "/memory.swap.max")
        l.pidsMax = CgroupFS.readNumber(dir + "/pids.max")
        if let text = CgroupFS.readTrimmed(dir + "/cpu.max") { l.cpu = CPUQuota(parsing: text) }
        return l
    }

    func children(_ rel: String) -> [String] { CgroupFS.children(abs(rel)) }
    func procs(_ rel: String) -> [Int32] { CgroupFS.procs(abs(rel)) }

    func attach(pid: Int32, to rel: String) throws(CgroupError) {
        try CgroupFS.write(abs(rel) + "/cgroup.procs", "\(pid)")
    }

    func setFrozen(_ frozen: Bool, _ rel: String) throws(CgroupError) {
        let dir = abs(rel)
        try CgroupFS.write(dir + "/cgroup.freeze", frozen ? "1" : "0")
        // cgroup.events says "frozen 1" once every task has stopped.
        let done = CgroupFS.wait(seconds: 10) { (CgroupFS.readKeyed(dir + "/cgroup.events")?["frozen"] == 1) == frozen }
        if !done {
            throw CgroupError(.busy, "\(dir) did not \(frozen ? "freeze" : "thaw") within 10 s")
        }
    }

    func isFrozen(_ rel: String) -> Bool {
        CgroupFS.readKeyed(abs(rel) + "/cgroup.events")?["frozen"] == 1
    }

    func populated(_ dir: String) -> Bool {
        CgroupFS.readKeyed(dir + "/cgroup.events")?["populated"] == 1
    }

    func kill(_ rel: String) throws(CgroupError) {
        let dir = abs(rel)
        guard CgroupFS.exists(dir) else { return }
        if CgroupFS.exists(dir + "/cgroup.kill") {
            try CgroupFS.write(dir + "/cgroup.kill", "1")
        } else {
            // Kernels before 5.14: signal each process, frozen meanwhile.
            _ = killEach(procs: { CgroupFS.procs(dir) }, freeze: { try? self.setFrozen($0, rel) }, seconds: 10)
        }
        guard CgroupFS.wait(seconds: 10, { !populated(dir) }) else {
            throw CgroupError(.busy, "processes \(CgroupFS.procs(dir).map(String.init).joined(separator: " ")) are still in \(dir) 10 s after the kill")
        }
    }

    func usage(_ rel: String) -> CgroupUsage {
        let dir = abs(rel)
        var u = CgroupUsage()
        u.memoryPeakBytes = CgroupFS.readNumber(dir + "/memory.peak")
        if let cpu = CgroupFS.readKeyed(dir + "/cpu.stat") {
            u.cpuUserMicros = cpu["user_usec"]
            u.cpuSystemMicros = cpu["system_usec"]
            u.throttledMicros = cpu["throttled_usec"]
        }
        u.pidsPeak = CgroupFS.readNumber(dir + "/pids.peak")
        u.oomKills = CgroupFS.readKeyed(dir + "/memory.events")?["oom_kill"]
        return u
    }

    func remove(_ rel: String) throws(CgroupError) {
        let dir = abs(rel)
        guard CgroupFS.exists(dir) else { return }
        if populated(dir) { try kill(rel) }
        // Children first: rmdir refuses a cgroup that has any.
        for child in children(rel) { try remove(rel + "/" + child) }
        var lastError: Errno?
        // An exited task can hold the cgroup for a moment after the kill.
        _ = CgroupFS.wait(seconds: 5) {
            lastError = CgroupFS.rmdir(dir)
            return lastError == nil || lastError != .resourceBusy
        }
        if let lastError {
            throw CgroupError(.io, "cannot remove cgroup \(dir)", cause: lastError)
        }
    }

    func openDirectory(_ rel: String) -> FileDescriptor? {
        let fd = open(abs(rel), O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        return fd >= 0 ? FileDescriptor(rawValue: fd) : nil
    }
}

func words(_ s: String?) -> [String] {
    (s ?? "").split(whereSeparator: { $0 == " " || $0 == "\n" }).map(String.init)
}
