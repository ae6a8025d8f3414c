import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// The cgroup v1 backend, for hybrid and legacy hosts: the same tree of
/// base, tenants and jails is made once in every hierarchy Stockade uses
/// (memory, cpu, cpuacct, pids, freezer, and cpuset and blkio when
/// mounted), below the cgroup the launcher itself is in there.
///
/// What differs from v2, and how it is served:
/// - memory.max → `memory.limit_in_bytes`; swap → `memory.memsw.limit_in_bytes`
///   (memory + swap together, so it needs memory_max); memory.high →
///   `memory.soft_limit_in_bytes` (reclaim under host pressure only: noted);
/// - cpu.max → `cpu.cfs_quota_us`/`cpu.cfs_period_us`; cpu.weight →
///   `cpu.shares` (weight × 1024 / 100);
/// - io.max → `blkio.throttle.*_device`;
/// - freeze → `freezer.state`; kill → SIGKILL to each pid, frozen, in a loop;
/// - a new cpuset cgroup starts with no CPUs: its parent's are copied in.
final class CgroupV1Backend: CgroupBackend {
    struct Tree: Sendable {
        var hierarchy: CgroupHost.Hierarchy
        /// Base directory (absolute) in this hierarchy.
        var base: String
    }

    let host: CgroupHost
    let trees: [Tree]

    var version: Int { 1 }
    var baseDescription: String {
        "cgroup v1 at " + trees.map(\.base).joined(separator: ", ")
    }

    /// `basePath(h)`: the base relative to the mount of hierarchy `h`.
    init(host: CgroupHost, basePath: (CgroupHost.Hierarchy) -> String) {
        self.host = host
        self.trees = host.hierarchies.map { h in
            let rel = basePath(h)
            return Tree(hierarchy: h, base: rel == "/" ? h.mountPoint : h.mountPoint + rel)
        }
    }

    private func dir(_ t: Tree, _ rel: String) -> String { rel.isEmpty ? t.base : t.base + "/" + rel }

    private func tree(_ controller: String) -> Tree? {
        trees.first { $0.hierarchy.controllers.contains(controller) }
    }

    /// The file `name` of the hierarchy that holds `controller`.
    func file(_ controller: String, _ rel: String, _ name: String) -> String? {
        tree(controller).map { dir($0, rel) + "/" + name }
    }

    func path(_ rel: String) -> String { trees.first.map { dir($0, rel) } ?? rel }
    func lockPath(_ rel: String) -> String { path(rel) }
    func exists(_ rel: String) -> Bool { trees.contains { CgroupFS.exists(dir($0, rel) + "/cgroup.procs") } }

    func prepare() throws(CgroupError) {
        for t in trees {
            var current = t.hierarchy.mountPoint
            let components = t.base.dropFirst(t.hierarchy.mountPoint.count).split(separator: "/")
            for c in components {
                let child = current + "/" + c
                _ = try CgroupFS.mkdir(child, existingOK: true)
                // Also when it existed: another launcher may have made it a
                // moment ago and not yet copied its parent's CPUs in.
                try inheritCpuset(t, child)
                current = child
            }
        }
    }

    @discardableResult
    func create(_ rel: String, delegating: Bool) throws(CgroupError) -> Bool {
        var created = false
        for t in trees {
            let d = dir(t, rel)
            if try CgroupFS.mkdir(d, existingOK: true) { created = true }
            try inheritCpuset(t, d)  // idempotent; see prepare()
        }
        return created
    }

    /// A fresh v1 cpuset has empty `cpuset.cpus`/`cpuset.mems` and takes no
    /// task until they are set: copy the parent's. Only empty files are
    /// written, so calling it on a cgroup that exists already is harmless,
    /// and it must be called then: two launchers making one parent at once
    /// would otherwise leave the one that lost the mkdir making children of
    /// a parent with no CPUs yet (ENOSPC when a task joins them).
    private func inheritCpuset(_ t: Tree, _ d: String) throws(CgroupError) {
        guard t.hierarchy.controllers.contains("cpuset") else { return }
        let parent = String(d[..<(d.lastIndex(of: "/") ?? d.endIndex)])
        for name in ["cpuset.cpus", "cpuset.mems"] {
            let mine = CgroupFS.readTrimmed(d + "/" + name) ?? ""
            if mine.isEmpty, let p = CgroupFS.readTrimmed(parent + "/" + name), !p.isEmpty {
                try CgroupFS.write(d + "/" + name, p)
            }
        }
    }

    private static func v1Controller(_ v2: String) -> String { v2 == "io" ? "blkio" : v2 }

    func check(_ limits: LimitsSection, parent: String, owner: String) throws(CgroupError) -> [String] {
        var notes: [String] = []
        for (key, controller) in limits.asked {
            let v1 = Self.v1Controller(controller)
            guard tree(v1) != nil else {
                let mounted = trees.map { $0.hierarchy.controllers.sorted().joined(separator: ",") }.joined(separator: " ")
                throw CgroupError(.unsupported, "\(owner): \(key) needs the \(controller) controller; this host has no cgroup v1 hierarchy for \(v1) (v1 hierarchies in use: \(mounted)) and cgroup v2 does not offer it either")
            }
        }
        if limits.memoryHigh != nil {
            notes.append("\(owner): memory_high is enforced as memory.soft_limit_in_bytes on cgroup v1: reclaimed under host memory pressure only, never throttled")
        }
        if limits.swapMax != nil {
            guard limits.memoryMax != nil else {
                throw CgroupError(.unsupported, "\(owner): swap_max on cgroup v1 needs memory_max too (v1 limits memory and swap together in memory.memsw.limit_in_bytes)")
            }
            if !(file("memory", "", "memory.memsw.limit_in_bytes").map(CgroupFS.exists) ?? false) {
                if Self.hostSwapBytes() == 0 {
                    notes.append("\(owner): swap_max is not enforced (no memory.memsw.* files), but this host has no swap")
                } else {
                    throw CgroupError(.unsupported, "\(owner): swap_max needs memory.memsw.limit_in_bytes, which this kernel lacks (swap accounting is off: boot with swapaccount=1)")
                }
            }
        }
        if limits.cpuWeight != nil {
            notes.append("\(owner): cpu_weight is enforced as cpu.shares (weight × 1024 / 100) on cgroup v1")
        }
        return notes
    }

    static func hostSwapBytes() -> UInt64 {
        guard let text = CgroupFS.read("/proc/meminfo") else { return 0 }
        for line in text.split(separator: "\n") where line.hasPrefix("SwapTotal:") {
            let parts = line.split(separator: " ")
            if parts.count >= 2, let kb = UInt64(parts[1]) { return kb * 1024 }
        }
        return 0
    }

    func apply(_ limits: LimitsSection, to rel: String) throws(CgroupError) {
        if let mem = tree("memory") {
            let d = dir(mem, rel)
            if let v = limits.memoryMax {
                // v1 keeps memory <= memory+swap at every write: a raise
                // (an update of a running jail) writes memsw first. Without a
                // swap limit, a memsw below the new memory rises to it (no swap).
                let memsw = d + "/memory.memsw.limit_in_bytes"
                let hasMemsw = CgroupFS.exists(memsw)
                let current = hasMemsw ? CgroupFS.readNumber(memsw) : nil
                var both: UInt64?
                if let swap = limits.swapMax, hasMemsw {
                    both = v.addingReportingOverflow(swap).overflow ? UInt64.max : v + swap
                } else if let current, current < v {
                    both = v
                }
                if let both, let current, both > current {
                    try CgroupFS.write(memsw, "\(both)")
                    try CgroupFS.write(d + "/memory.limit_in_bytes", "\(v)")
                } else {
                    try CgroupFS.write(d + "/memory.limit_in_bytes", "\(v)")
                    if let both { try CgroupFS.write(memsw, "\(both)") }
                }
            }
            if let v = limits.memoryHigh { try CgroupFS.write(d + "/memory.soft_limit_in_bytes", "\(v)") }
        }
        if let v = limits.pidsMax, let f = file("pids", rel, "pids.max") { try CgroupFS.write(f, "\(v)") }
        if let cpu = tree("cpu") {
            let d = dir(cpu, rel)
            if let q = limits.cpu {
                try CgroupFS.write(d + "/cpu.cfs_period_us", "\(q.period)")
                try CgroupFS.write(d + "/cpu.cfs_quota_us", "\(q.quota)")
            }
            if let w = limits.cpuWeight { try CgroupFS.write(d + "/cpu.shares", "\(max(2, w * 1024 / 100))") }
        }
        if let set = limits.cpuset, let f = file("cpuset", rel, "cpuset.cpus") { try CgroupFS.write(f, set.description) }
        if let blkio = tree("blkio") {
            let d = dir(blkio, rel)
            for io in limits.ioMax {
                let pairs: [(String, UInt64?)] = [("read_bps", io.rbps), ("write_bps", io.wbps),
                                                  ("read_iops", io.riops), ("write_iops", io.wiops)]
                for (name, value) in pairs {
                    if let value { try CgroupFS.write(d + "/blkio.throttle.\(name)_device", "\(io.device) \(value)") }
                }
            }
        }
    }

    /// v1 reports "no limit" as the largest page-aligned value.
    private static func finite(_ v: UInt64?) -> UInt64? {
        guard let v, v < (1 << 62) else { return nil }
        return v
    }

    func limits(of rel: String) -> LimitsSection {
        var l = LimitsSection()
        if let mem = tree("memory") {
            let d = dir(mem, rel)
            l.memoryMax = Self.finite(CgroupFS.readNumber(d + "/memory.limit_in_bytes"))
            if let max = l.memoryMax, let both = Self.finite(CgroupFS.readNumber(d + "/memory.memsw.limit_in_bytes")) {
                l.swapMax = both >= max ? both - max : 0
            }
        }
        l.pidsMax = file("pids", rel, "pids.max").flatMap(CgroupFS.readNumber)
        if let cpu = tree("cpu") {
            let d = dir(cpu, rel)
            if let q = CgroupFS.readTrimmed(d + "/cpu.cfs_quota_us").flatMap({ Int64($0) }), q > 0,
               let p = CgroupFS.readNumber(d + "/cpu.cfs_period_us") {
                l.cpu = CPUQuota(quota: UInt64(q), period: p)
            }
        }
        return l
    }

    func children(_ rel: String) -> [String] {
        var all = Set<String>()
        for t in trees { all.formUnion(CgroupFS.children(dir(t, rel))) }
        return all.sorted()
    }

    func procs(_ rel: String) -> [Int32] {
        var all = Set<Int32>()
        for t in trees { all.formUnion(CgroupFS.procs(dir(t, rel))) }
        return all.sorted()
    }

    func attach(pid: Int32, to rel: String) throws(CgroupError) {
        for t in trees { try CgroupFS.write(dir(t, rel) + "/cgroup.procs", "\(pid)") }
    }

    func setFrozen(_ frozen: Bool, _ rel: String) throws(CgroupError) {
        guard let f = file("freezer", rel, "freezer.state") else {
            throw CgroupError(.unsupported, "freezing needs the freezer controller, which this host does not mount")
        }
        let want = frozen ? "FROZEN" : "THAWED"
        try CgroupFS.write(f, want)
        guard CgroupFS.wait(seconds: 10, { CgroupFS.readTrimmed(f) == want }) else {
            throw CgroupError(.busy, "\(f) did not reach \(want) within 10 s (it says \(CgroupFS.readTrimmed(f) ?? "nothing"))")
        }
    }

    func isFrozen(_ rel: String) -> Bool {
        file("freezer", rel, "freezer.state").flatMap(CgroupFS.readTrimmed) == "FROZEN"
    }

    func kill(_ rel: String) throws(CgroupError) {
        let freezer = file("freezer", rel, "freezer.state")
        let done = killEach(procs: { procs(rel) }, freeze: freezer.map { f in { try? CgroupFS.write(f, $0 ? "FROZEN" : "THAWED") } }, seconds: 10)
        if let freezer { try? CgroupFS.write(freezer, "THAWED") }
        guard done else {
            throw CgroupError(.busy, "processes \(procs(rel).map(String.init).joined(separator: " ")) are still in \(path(rel)) 10 s after SIGKILL")
        }
    }

    func usage(_ rel: String) -> CgroupUsage {
        var u = CgroupUsage()
        u.memoryPeakBytes = file("memory", rel, "memory.max_usage_in_bytes").flatMap(CgroupFS.readNumber)
        if let f = file("memory", rel, "memory.oom_control") { u.oomKills = CgroupFS.readKeyed(f)?["oom_kill"] }
        if let acct = tree("cpuacct") {
            let d = dir(acct, rel)
            if let user = CgroupFS.readNumber(d + "/cpuacct.usage_user"), let sys = CgroupFS.readNumber(d + "/cpuacct.usage_sys") {
                u.cpuUserMicros = user / 1000
                u.cpuSystemMicros = sys / 1000
            } else if let stat = CgroupFS.readKeyed(d + "/cpuacct.stat") {
                // USER_HZ ticks.
                let hz = UInt64(max(1, sysconf(Int32(_SC_CLK_TCK))))
                u.cpuUserMicros = stat["user"].map { $0 * 1_000_000 / hz }
                u.cpuSystemMicros = stat["system"].map { $0 * 1_000_000 / hz }
            }
        }
        if let f = file("cpu", rel, "cpu.stat"), let stat = CgroupFS.readKeyed(f) {
            u.throttledMicros = stat["throttled_time"].map { $0 / 1000 }
        }
        u.pidsPeak = file("pids", rel, "pids.peak").flatMap(CgroupFS.readNumber)
        return u
    }

    func remove(_ rel: String) throws(CgroupError) {
        if !procs(rel).isEmpty { try kill(rel) }
        for t in trees {
            let d = dir(t, rel)
            var lastError: Errno?
            _ = CgroupFS.wait(seconds: 5) {
                lastError = CgroupFS.rmdir(d)
                return lastError == nil || lastError != .resourceBusy
            }
            if let lastError { throw CgroupError(.io, "cannot remove cgroup \(d)", cause: lastError) }
        }
    }

    func openDirectory(_ rel: String) -> FileDescriptor? { nil }
}
