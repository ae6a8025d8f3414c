package import StockadeConfig
/// The profile's [limits]: the jail's cgroup budget.
///
/// ```toml
/// [limits]
/// memory_max = "512M"     # memory.max (hard; the OOM killer acts past it)
/// memory_high = "400M"    # memory.high (reclaim and throttle past it)
/// swap_max = 0            # memory.swap.max
/// pids_max = 64           # pids.max
/// cpu = 0.5               # CPUs; or cpu_max = "50000 100000" (quota period, µs)
/// cpu_weight = 100        # cpu.weight, 1...10000
/// cpuset = "0-1"          # cpuset.cpus
/// io_max = ["8:0 rbps=1048576 wiops=100"]   # io.max lines
/// waive = ["memory_max"]  # limits this jail may run without where no cgroup
///                         # can be made for it (rootless, no delegation)
/// ```
///
/// Where no cgroup can be made, what rlimits can hold is held (pids_max as
/// RLIMIT_NPROC in the jail's own user namespace, see ``withoutCgroup(reason:)``);
/// every other limit that is set refuses the launch, naming its line, unless
/// `waive` names it. A waived limit is reported at every launch.
///
/// Every key is optional; a limit that is not set is not enforced for the
/// jail itself (its tenant's total still is). `"max"` means the same as
/// leaving the key out. Keys are read in `init(reading:)`; any key it does
/// not read is rejected by the profile parser as unknown.
public struct LimitsSection: Sendable, Equatable {
    public var memoryMax: UInt64?
    public var memoryHigh: UInt64?
    public var swapMax: UInt64?
    public var pidsMax: UInt64?
    public var cpu: CPUQuota?
    public var cpuWeight: UInt64?
    public var cpuset: CPUSet?
    public var ioMax: [IOLimit] = []
    /// Limits the profile lets the jail run without where no cgroup can be
    /// made for it (`waive`). Profiles only; a tenant's budget is always held.
    public var waived: Set<String> = []
    /// Where each key was written (`file`, line), for messages.
    public var file = ""
    public var lines: [String: Int] = [:]

    /// The limit keys a profile may set, in the order messages list them.
    public static let keys = ["memory_max", "memory_high", "swap_max", "pids_max", "cpu", "cpu_max", "cpu_weight", "cpuset", "io_max"]

    public init() {}

    public init(memoryMax: UInt64? = nil, memoryHigh: UInt64? = nil, swapMax: UInt64? = nil, pidsMax: UInt64? = nil,
                cpu: CPUQuota? = nil, cpuWeight: UInt64? = nil, cpuset: CPUSet? = nil, ioMax: [IOLimit] = []) {
        self.memoryMax = memoryMax
        self.memoryHigh = memoryHigh
        self.swapMax = swapMax
        self.pidsMax = pidsMax
        self.cpu = cpu
        self.cpuWeight = cpuWeight
        self.cpuset = cpuset
        self.ioMax = ioMax
    }

    package init(reading table: TableReader) throws(ProfileError) {
        try read(table)
        file = table.source.file
        for key in Self.keys + ["waive"] where table.has(key) {
            if let line = table.source.index.line(of: table.keyPath(key)) { lines[key] = line }
        }
        if table.has("required") {
            throw table.error("required", "a budget that cannot be enforced is refused unless the profile waives each such limit by name: write waive = [\"memory_max\", ...] instead of required")
        }
        for (i, key) in (try table.strings("waive") ?? []).enumerated() {
            guard let set = setKey(key) else {
                throw table.error("waive", "entry \(i): \"\(key)\" is not a limit set in this [limits] (set: \(setKeys.joined(separator: ", ")))")
            }
            waived.insert(set)
        }
    }

    /// The keys set in this section (cpu_max counts as cpu).
    public var setKeys: [String] {
        var keys: [String] = []
        if memoryMax != nil { keys.append("memory_max") }
        if memoryHigh != nil { keys.append("memory_high") }
        if swapMax != nil { keys.append("swap_max") }
        if pidsMax != nil { keys.append("pids_max") }
        if cpu != nil { keys.append(lines["cpu_max"] != nil ? "cpu_max" : "cpu") }
        if cpuWeight != nil { keys.append("cpu_weight") }
        if cpuset != nil { keys.append("cpuset") }
        if !ioMax.isEmpty { keys.append("io_max") }
        return keys
    }

    private func setKey(_ key: String) -> String? { setKeys.contains(key) ? key : nil }

    /// The jail's budget where no cgroup can be made for it (`reason`): the
    /// limits rlimits hold, and notes that say what is held and what the
    /// profile waived. Throws, at the first limit's line, when a limit can
    /// be held neither way and the profile does not waive it.
    ///
    /// pids_max becomes RLIMIT_NPROC, which the kernel counts per user in
    /// each user namespace: in the jail's own namespace it counts the jail's
    /// processes only, as pids.max would. Nothing else in a budget has an
    /// rlimit that holds the whole jail (RLIMIT_AS is per process).
    package func withoutCgroup(reason: String) throws(ProfileError) -> (nproc: UInt64?, notes: [String]) {
        var notes: [String] = []
        var nproc: UInt64?
        if let pids = pidsMax {
            nproc = pids
            notes.append("no cgroup for this jail (\(reason)); pids_max = \(pids) is held as RLIMIT_NPROC in the jail's user namespace")
        }
        let unheld = setKeys.filter { $0 != "pids_max" }
        if let missing = unheld.first(where: { !waived.contains($0) }) {
            throw ProfileError(file: file, line: lines[missing], key: "limits.\(missing)",
                               message: "\(missing) cannot be enforced: no cgroup for this jail (\(reason)); run as root, from a delegated cgroup (systemd Delegate=yes), or waive it by name: waive = [\"\(missing)\"]")
        }
        let waivedHere = unheld.filter { waived.contains($0) }
        if !waivedHere.isEmpty {
            let place = lines["waive"].map { "\(file):\($0)" } ?? file
            notes.append("not enforced, waived by the profile (\(place)): \(waivedHere.joined(separator: ", "))" + (nproc == nil ? " (no cgroup: \(reason))" : ""))
        }
        return (nproc, notes)
    }

    /// What a budget is short of: the first key where `asked` does not fit
    /// beside what is `held`, with the figures as they are printed.
    public struct Shortfall: Sendable, Equatable {
        public var key: String
        public var asked: String
        public var left: String
        public var total: String
        public var holding: String
    }

    /// Whether jail limits `asked` fit into this budget beside the jail
    /// limits already `held` (memory_max, swap_max, pids_max and cpu add up;
    /// a key the budget or the jail leaves unset is not counted). nil when
    /// they fit. The cpuset is a subset, not a sum: callers check it.
    public func shortfall(asking asked: LimitsSection, held: [LimitsSection]) -> Shortfall? {
        func check(_ key: String, _ total: UInt64?, _ ask: UInt64?, _ get: (LimitsSection) -> UInt64?,
                   _ show: (UInt64) -> String) -> Shortfall? {
            guard let total, let ask else { return nil }
            let used = held.reduce(UInt64(0)) { sum, l in
                let (r, overflow) = sum.addingReportingOverflow(get(l) ?? 0)
                return overflow ? .max : r
            }
            let left = total > used ? total - used : 0
            guard ask > left else { return nil }
            return Shortfall(key: key, asked: show(ask), left: show(left), total: show(total), holding: show(used))
        }
        func size(_ b: UInt64) -> String { "\(SizeValue.bytes(b))" }
        func cpus(_ micro: UInt64) -> String { String(Double(micro) / 1e6) + " CPU" + (micro == 1_000_000 ? "" : "s") }
        return check("memory_max", memoryMax, asked.memoryMax, { $0.memoryMax }, size)
            ?? check("swap_max", swapMax, asked.swapMax, { $0.swapMax }, size)
            ?? check("pids_max", pidsMax, asked.pidsMax, { $0.pidsMax }, { "\($0)" })
            ?? check("cpu", cpu?.microCPUs, asked.cpu?.microCPUs, { $0.cpu?.microCPUs }, cpus)
    }

    /// True when no limit is set (nothing to write into a cgroup).
    public var isEmpty: Bool {
        var limits = self
        limits.waived = []
        limits.file = ""
        limits.lines = [:]
        return limits == LimitsSection()
    }

    /// Reads the limit keys from `t`; the tenants file reuses this for budgets.
    package mutating func read(_ t: TableReader) throws(ProfileError) {
        memoryMax = try Self.bytes(t, "memory_max", minimum: 1 << 20, why: "a jail needs at least 1M to start")
        memoryHigh = try Self.bytes(t, "memory_high", minimum: 1 << 20, why: "below 1M the jail would only be reclaimed")
        swapMax = try Self.bytes(t, "swap_max", minimum: 0, why: "")
        if let high = memoryHigh, let max = memoryMax, high > max {
            throw t.error("memory_high", "\(SizeValue.bytes(high)) is above memory_max \(SizeValue.bytes(max)); memory_high must not exceed memory_max")
        }
        if t.has("pids_max") {
            if let s = try? t.string("pids_max") {
                guard s == "max" else { throw t.error("pids_max", "expected a number of processes or \"max\"") }
            } else {
                pidsMax = UInt64(try t.int("pids_max", in: 1...4_194_304) ?? 0)
            }
        }
        if t.has("cpu") && t.has("cpu_max") {
            throw t.error("cpu_max", "set either cpu (a number of CPUs) or cpu_max (\"quota period\"), not both")
        }
        if t.has("cpu") {
            let cpus: Double
            if let s = try? t.string("cpu") {
                guard let d = Double(s) else { throw t.error("cpu", "expected a number of CPUs such as 0.5 or 2") }
                cpus = d
            } else {
                cpus = try t.number("cpu") ?? 0
            }
            guard let q = CPUQuota(cpus: cpus) else {
                throw t.error("cpu", "\(cpus) CPUs cannot be enforced; use 0.01 to 1024")
            }
            cpu = q
        }
        if let text = try t.string("cpu_max") {
            guard let q = CPUQuota(parsing: text) else {
                throw t.error("cpu_max", "\"\(text)\" is not \"QUOTA PERIOD\" in microseconds (e.g. \"50000 100000\"; quota >= 1000, period 1000...1000000)")
            }
            cpu = q
        }
        if let w = try t.int("cpu_weight", in: 1...10_000) { cpuWeight = UInt64(w) }
        if let text = try t.string("cpuset") {
            guard let set = CPUSet(parsing: text) else {
                throw t.error("cpuset", "\"\(text)\" is not a CPU list such as \"0-3\" or \"0,2,4-5\"")
            }
            cpuset = set
        }
        if let lines = try t.strings("io_max") {
            for (i, line) in lines.enumerated() {
                guard let limit = IOLimit(parsing: line) else {
                    throw t.error("io_max", "entry \(i): \"\(line)\" is not \"MAJOR:MINOR key=value...\" with keys rbps, wbps, riops, wiops and values a number or max")
                }
                if ioMax.contains(where: { $0.device == limit.device }) {
                    throw t.error("io_max", "entry \(i): device \(limit.device) appears twice")
                }
                ioMax.append(limit)
            }
        }
    }

    private static func bytes(_ t: TableReader, _ key: String, minimum: UInt64, why: String) throws(ProfileError) -> UInt64? {
        guard let size = try t.size(key) else { return nil }
        guard case .bytes(let b) = size else { return nil }
        if b < minimum { throw t.error(key, "\(size) is too small: \(why)") }
        return b
    }
}

/// A CPU bandwidth limit: `quota` µs of CPU time every `period` µs
/// (`cpu.max`; v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us`).
public struct CPUQuota: Sendable, Equatable, CustomStringConvertible {
    public var quota: UInt64
    public var period: UInt64

    /// `quota` is at least 1 ms and at most 2^40 µs (far above any host;
    /// it keeps the share arithmetic from overflowing).
    public init?(quota: UInt64, period: UInt64) {
        guard (1000...1_000_000).contains(period), (1000...(1 << 40)).contains(quota) else { return nil }
        self.quota = quota
        self.period = period
    }

    /// `cpus` CPUs over the default 100 ms period.
    public init?(cpus: Double) {
        guard cpus.isFinite, cpus >= 0.01, cpus <= 1024 else { return nil }
        self.init(quota: UInt64((cpus * 100_000).rounded()), period: 100_000)
    }

    /// `"50000 100000"`, or `"max 100000"` (nil: no limit is not a quota).
    public init?(parsing text: String) {
        let parts = text.split(separator: " ", omittingEmptySubsequences: true)
        guard parts.count == 2, let q = UInt64(parts[0]), let p = UInt64(parts[1]) else { return nil }
        self.init(quota: q, period: p)
    }

    /// Share of one CPU in millionths, for adding quotas with different periods.
    public var microCPUs: UInt64 { quota * 1_000_000 / period }
    public var cpus: Double { Double(quota) / Double(period) }
    /// The `cpu.max` line.
    public var description: String { "\(quota) \(period)" }
}

/// A set of CPU numbers (`cpuset.cpus`), written `"0-3,6"`.
public struct CPUSet: Sendable, Equatable, CustomStringConvertible {
    public var cpus: Set<Int>

    public init(_ cpus: Set<Int>) { self.cpus = cpus }

    public init?(parsing text: String) {
        var set = Set<Int>()
        let trimmed = text.trimmingCharacters(in: " \n")
        guard !trimmed.isEmpty else { return nil }
        for part in trimmed.split(separator: ",", omittingEmptySubsequences: false) {
            let bounds = part.split(separator: "-", omittingEmptySubsequences: false)
            guard bounds.count == 1 || bounds.count == 2,
                  let lo = Int(bounds[0].trimmingCharacters(in: " ")), lo >= 0, lo < 8192,
                  let hi = Int((bounds.last ?? "").trimmingCharacters(in: " ")), hi >= lo, hi < 8192 else { return nil }
            for c in lo...hi { set.insert(c) }
        }
        cpus = set
    }

    /// Canonical list form: `0-3,6`.
    public var description: String {
        var ranges: [String] = []
        var sorted = cpus.sorted()[...]
        while let first = sorted.first {
            var last = first
            sorted = sorted.dropFirst()
            while let next = sorted.first, next == last + 1 { last = next; sorted = sorted.dropFirst() }
            ranges.append(first == last ? "\(first)" : "\(first)-\(last)")
        }
        return ranges.joined(separator: ",")
    }
}

/// One `io.max` line: a block device (`MAJOR:MINOR`) and its limits.
/// nil means no limit for that key.
public struct IOLimit: Sendable, Equatable, CustomStringConvertible {
    public var device: String
    public var rbps: UInt64?
    public var wbps: UInt64?
    public var riops: UInt64?
    public var wiops: UInt64?

    public init?(parsing text: String) {
        let parts = text.split(separator: " ", omittingEmptySubsequences: true)
        guard let dev = parts.first else { return nil }
        let majMin = dev.split(separator: ":", omittingEmptySubsequences: false)
        guard majMin.count == 2, UInt32(majMin[0]) != nil, UInt32(majMin[1]) != nil, parts.count > 1 else { return nil }
        device = String(dev)
        for kv in parts.dropFirst() {
            let pair = kv.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            guard pair.count == 2 else { return nil }
            let value: UInt64?
            if pair[1] == "max" {
                value = nil
            } else if let n = UInt64(pair[1]) {
                value = n
            } else if let size = SizeValue(parsing: String(pair[1])), let b = size.bytes, pair[0].hasSuffix("bps") {
                value = b
            } else {
                return nil
            }
            switch pair[0] {
            case "rbps": rbps = value
            case "wbps": wbps = value
            case "riops": riops = value
            case "wiops": wiops = value
            default: return nil
            }
        }
    }

    /// The `io.max` line.
    public var description: String {
        func v(_ x: UInt64?) -> String { x.map(String.init) ?? "max" }
        return "\(device) rbps=\(v(rbps)) wbps=\(v(wbps)) riops=\(v(riops)) wiops=\(v(wiops))"
    }
}
