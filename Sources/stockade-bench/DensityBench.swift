// Part `density`: how many idle jailed workers one stockaded holds, and what
// each costs. One tenant of `stockade-sleeper` workers (a static worker that
// completes the channel handshake and waits) under profiles/minimal.toml,
// with the tenant's cgroups when run as root, is filled to
// STOCKADE_DENSITY_WORKERS (default 1000) and drained again. Reported:
//   - the time to fill the pool (every worker idle, its handshake done) and
//     to drain it (every jail reaped, its cgroup removed);
//   - the daemon's own memory per jail (this process is the daemon: its
//     Pss and Rss from /proc/self/smaps_rollup before and after, its threads
//     and fds);
//   - the worker alone (one sleeper run unjailed), the jailed workers and
//     their PID 1s (each one's smaps_rollup), and the kernel's share (slab,
//     kernel stacks, page tables, per-CPU memory from /proc/meminfo);
//   - what stopped the fill when it stopped short (the launch error).
// Bounded: STOCKADE_DENSITY_SECONDS (default 300) for the fill; a fill that
// makes no progress for 30 s stops there. Afterwards it checks that no jail
// process, no jail cgroup and no host id lock of the run is left.
import Foundation
import Logging
import StockadeChannel
import StockadeDaemon
import StockadeJail
import StockadeSystem
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// A /proc file read to its end (their size reads as 0; they come in pieces).
private func readProc(_ path: String) -> String? {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if n < 0 && errno == EINTR { continue }
        guard n > 0 else { break }
        bytes += chunk[0..<n]
    }
    return String(decoding: bytes, as: UTF8.self)
}

/// The flock()s this process holds now (/proc/locks names the holder's pid).
private func ownFlocks() -> Int {
    let me = String(getpid())
    return (readProc("/proc/locks") ?? "").split(separator: "\n").filter { line in
        let words = line.split(separator: " ", omittingEmptySubsequences: true)
        return words.count > 4 && words[1] == "FLOCK" && words[4] == me
    }.count
}

/// glibc's malloc_trim (not in the Glibc module): returns the allocator's
/// free memory to the kernel.
@_silgen_name("malloc_trim") private func mallocTrim(_ pad: Int) -> Int32

/// The fields of one smaps_rollup (or /proc/meminfo, /proc/PID/status), in KiB.
private struct ProcKiB {
    var values: [String: Int] = [:]
    subscript(_ key: String) -> Int { values[key] ?? 0 }

    /// `Key:   123 kB` lines; nil when the file cannot be read (the process is gone).
    init?(path: String) {
        guard let text = readProc(path) else { return nil }
        for line in text.split(separator: "\n") {
            let parts = line.split(separator: ":", maxSplits: 1)
            guard parts.count == 2 else { continue }
            let words = parts[1].split(whereSeparator: { $0 == " " || $0 == "\t" })
            if let n = words.first.flatMap({ Int($0) }) { values[String(parts[0])] = n }
        }
    }

    init() {}
}

/// What the kernel holds for everyone, from /proc/meminfo.
private struct KernelMemory {
    var slabReclaimable = 0, slabUnreclaimable = 0, kernelStack = 0, pageTables = 0, percpu = 0, used = 0, shmem = 0

    static func now() -> KernelMemory {
        let m = ProcKiB(path: "/proc/meminfo") ?? ProcKiB()
        return KernelMemory(slabReclaimable: m["SReclaimable"], slabUnreclaimable: m["SUnreclaim"], kernelStack: m["KernelStack"],
                            pageTables: m["PageTables"], percpu: m["Percpu"], used: m["MemTotal"] - m["MemAvailable"], shmem: m["Shmem"])
    }

    /// Unreclaimable kernel memory: what a jail pins while it lives.
    var pinned: Int { slabUnreclaimable + kernelStack + pageTables + percpu }
}

/// This process: memory, threads and open fds.
private struct SelfUsage {
    var rollup: ProcKiB
    var threads: Int
    var fds: Int

    static func now() -> SelfUsage {
        let status = ProcKiB(path: "/proc/self/status") ?? ProcKiB()
        let fds = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd").count) ?? 0
        return SelfUsage(rollup: ProcKiB(path: "/proc/self/smaps_rollup") ?? ProcKiB(), threads: status["Threads"], fds: fds)
    }
}

/// This process's Rss in KiB by kind of mapping: the malloc heap, other
/// anonymous memory (thread stacks, malloc's per-thread arenas, large
/// allocations), and files.
private func rssByKind() -> [String: Int] {
    guard let text = readProc("/proc/self/smaps") else { return [:] }
    var kinds: [String: Int] = [:]
    var kind = "anonymous"
    for line in text.split(separator: "\n") {
        let words = line.split(separator: " ", omittingEmptySubsequences: true)
        guard let first = words.first else { continue }
        if first.contains("-") && first.first?.isHexDigit == true {
            let name = words.count >= 6 ? String(words[5]) : ""
            kind = name == "[heap]" ? "heap" : name.isEmpty ? "anonymous" : name.hasPrefix("/") ? "files" : "other"
        } else if first == "Rss:", words.count >= 2, let kib = Int(words[1]) {
            kinds[kind, default: 0] += kib
        }
    }
    return kinds
}

/// Sums and counts of smaps_rollup over a set of processes.
private struct ProcessSet {
    var count = 0
    var pss = 0, rss = 0, privateKiB = 0, anonymous = 0

    mutating func add(pid: Int32) {
        guard let r = ProcKiB(path: "/proc/\(pid)/smaps_rollup") else { return }
        count += 1
        pss += r["Pss"]
        rss += r["Rss"]
        privateKiB += r["Private_Clean"] + r["Private_Dirty"]
        anonymous += r["Anonymous"]
    }

    func perProcess(_ v: Int) -> Double { count > 0 ? Double(v) / Double(count) : 0 }
}

/// The children of `pid` (the jail's worker under its PID 1).
private func children(of pid: Int32) -> [Int32] {
    guard let text = try? String(contentsOfFile: "/proc/\(pid)/task/\(pid)/children", encoding: .utf8) else { return [] }
    return text.split(separator: " ").compactMap { Int32($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
}

/// The sleeper beside this executable (`swift build` puts them together).
private func sleeperPath() -> String? {
    let me = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().deletingLastPathComponent().path
    let env = ProcessInfo.processInfo.environment
    let path = env["STOCKADE_SLEEPER"] ?? me + "/stockade-sleeper"
    return FileManager.default.isExecutableFile(atPath: path) ? path : nil
}

/// The sleeper run once without a jail, its handshake done: what the worker itself costs.
private func measureSleeperAlone(_ sleeper: String) throws -> ProcKiB {
    let (pid, channel) = try startUnjailed([sleeper], name: "alone")
    _ = try channel.request(Array("ping".utf8))
    usleep(100_000)
    let rollup = ProcKiB(path: "/proc/\(pid)/smaps_rollup") ?? ProcKiB()
    try? channel.shutdown()
    var status: Int32 = 0
    kill(pid, SIGKILL)
    waitpid(pid, &status, 0)
    return rollup
}

func densityBench() throws {
    let env = ProcessInfo.processInfo.environment
    let target = Int(env["STOCKADE_DENSITY_WORKERS"] ?? "") ?? 1000
    let fillSeconds = Double(env["STOCKADE_DENSITY_SECONDS"] ?? "") ?? 300
    let repo = FileManager.default.currentDirectoryPath
    guard let sleeper = sleeperPath() else {
        print("density: skipped (no stockade-sleeper beside this executable; swift build --product stockade-sleeper)")
        return
    }
    guard FileManager.default.fileExists(atPath: repo + "/profiles/minimal.toml") else {
        print("density: skipped (run from the repository root)")
        return
    }
    let cgroups = getuid() == 0
    print("density: \(target) idle jailed stockade-sleeper workers in one stockaded tenant, profiles/minimal.toml, "
          + (cgroups ? "a cgroup per jail (root)" : "no cgroups (not root)") + "; fill bounded to \(Int(fillSeconds)) s")

    let alone = try measureSleeperAlone(sleeper)
    let sleeperDir = URL(fileURLWithPath: sleeper).deletingLastPathComponent().path
    let dir = NSTemporaryDirectory() + "stockade-bench-density-\(getpid())"
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    chmod(dir, 0o755)
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let cgroupBase = "stockade-bench-density"
    let config = """
        [daemon]
        socket = "api.sock"
        audit_log = "audit.jsonl"
        cgroups = \(cgroups)
        cgroup_base = "\(cgroupBase)"
        [client.bench]
        token = "bench-token-0123456789abcdef"
        uid = \(getuid())
        [tenant.density]
        profile = "\(repo)/profiles/minimal.toml"
        command = ["\(sleeper)"]
        binds = ["\(sleeperDir)"]
        workers_min = \(target)
        workers_max = \(target)
        [tenant.density.access]
        bench = "viewer"
        """
    try config.write(toFile: dir + "/stockaded.toml", atomically: true, encoding: .utf8)

    // Warnings and errors only: a line per launched worker would be the
    // bench's own load.
    var logger = Logger(label: "stockaded")
    logger.logLevel = .warning
    let daemon = try Daemon(config: try DaemonConfig.load(path: dir + "/stockaded.toml"), logger: logger)
    // Settle what the daemon's set-up allocated before the baseline.
    usleep(200_000)
    let kernelBefore = KernelMemory.now()
    let selfBefore = SelfUsage.now()
    let kindsBefore = rssByKind()

    // Where the run's cgroups live (every hierarchy): gone after the drain.
    let basePaths = daemon.cgroups?.basePaths ?? []
    let flocksBefore = ownFlocks()
    let fillStart = ContinuousClock.now
    try daemon.start()
    var stopped = false
    defer { if !stopped { daemon.stop() } }
    let pool = daemon.pool("density")!
    var marks: [(Int, Double)] = []
    var nextMark = max(1, target / 4)
    var reached = 0
    var lastProgress = ContinuousClock.now
    var stall: String?
    let deadline = fillStart + .milliseconds(Int(fillSeconds * 1000))
    while true {
        let info = pool.readiness
        if info.idle > reached {
            reached = info.idle
            lastProgress = .now
        }
        while reached >= nextMark && nextMark <= target {
            marks.append((nextMark, (ContinuousClock.now - fillStart).inSeconds))
            nextMark += max(1, target / 4)
        }
        if reached >= target { break }
        if ContinuousClock.now > deadline {
            stall = "the fill's time bound (\(Int(fillSeconds)) s) ran out"
            break
        }
        if ContinuousClock.now - lastProgress > .seconds(30) {
            stall = "no worker became ready for 30 s"
            break
        }
        if let refusal = info.refusal, stall == nil {
            // Keep going: a launch failure is retried with a back-off; the
            // first one is what a limit looks like.
            stall = "first launch failure at \(info.idle) workers: \(refusal)"
            print("  launch failure at \(info.idle) idle workers: \(refusal)")
        }
        usleep(50_000)
    }
    let fillTime = (ContinuousClock.now - fillStart).inSeconds
    let filled = pool.readiness.idle
    usleep(500_000)

    // Memory with the pool full.
    let selfAfter = SelfUsage.now()
    let kindsAfter = rssByKind()
    let kernelAfter = KernelMemory.now()
    var workers = ProcessSet(), inits = ProcessSet()
    var pid1s: [Int32] = []
    var held: [HostIDRange] = []
    for w in pool.workers() {
        pid1s.append(w.pid)
        inits.add(pid: w.pid)
        for child in children(of: w.pid) { workers.add(pid: child) }
        if let ids = w.hostIDs {
            let bounds = ids.split(separator: "-").compactMap { UInt32($0) }
            if bounds.count == 2 { held.append(HostIDRange(first: bounds[0], count: bounds[1] - bounds[0] + 1)) }
        }
    }

    let drainStart = ContinuousClock.now
    daemon.stop()
    stopped = true
    let drainTime = (ContinuousClock.now - drainStart).inSeconds
    // What the allocator kept after the drain, and what it returns when asked.
    let selfDrained = SelfUsage.now()
    _ = mallocTrim(0)
    let selfTrimmed = SelfUsage.now()

    let n = Double(max(filled, 1))
    func kib(_ v: Double) -> String { fmt(v, 1) + " KiB" }
    print("  filled: \(filled) of \(target) workers idle in \(fmt(fillTime, 1)) s (\(fmt(Double(filled) / fillTime, 1)) jails/s)"
          + (marks.isEmpty ? "" : "; " + marks.map { "\($0.0) at \(fmt($0.1, 1)) s" }.joined(separator: ", ")))
    if filled < target { print("  stopped short: \(stall ?? "unknown")") }
    print("  drained: every jail reaped and its cgroup removed in \(fmt(drainTime, 2)) s")
    print("  per jail (\(filled) jails):")
    let dPss = Double(selfAfter.rollup["Pss"] - selfBefore.rollup["Pss"])
    let dRss = Double(selfAfter.rollup["Rss"] - selfBefore.rollup["Rss"])
    print("    daemon (this process): Pss +\(kib(dPss / n)), Rss +\(kib(dRss / n)); threads \(selfBefore.threads) -> \(selfAfter.threads), "
          + "fds \(selfBefore.fds) -> \(selfAfter.fds); after the drain Pss \(selfDrained.rollup["Pss"] - selfBefore.rollup["Pss"]) KiB above the start, "
          + "\(selfTrimmed.rollup["Pss"] - selfBefore.rollup["Pss"]) KiB after malloc_trim "
          + "(goal: under 100 KiB per jail)")
    print("      its growth by kind of mapping: " + ["heap", "anonymous", "files", "other"].map {
        "\($0) \(kib(Double((kindsAfter[$0] ?? 0) - (kindsBefore[$0] ?? 0)) / n))"
    }.joined(separator: ", "))
    print("    the worker alone (one sleeper, unjailed): Rss \(kib(Double(alone["Rss"]))), of it anonymous (its own writable pages) \(kib(Double(alone["Anonymous"])))")
    print("    jailed workers: Pss \(kib(workers.perProcess(workers.pss))), private \(kib(workers.perProcess(workers.privateKiB))), anonymous \(kib(workers.perProcess(workers.anonymous))) (\(workers.count) read)")
    print("    PID 1 (stockade-init): Pss \(kib(inits.perProcess(inits.pss))), private \(kib(inits.perProcess(inits.privateKiB))) (\(inits.count) read)")
    let k = (kernelAfter.pinned - kernelBefore.pinned)
    print("    kernel: \(kib(Double(k) / n)) unreclaimable (slab \(kib(Double(kernelAfter.slabUnreclaimable - kernelBefore.slabUnreclaimable) / n)), "
          + "kernel stacks \(kib(Double(kernelAfter.kernelStack - kernelBefore.kernelStack) / n)), "
          + "page tables \(kib(Double(kernelAfter.pageTables - kernelBefore.pageTables) / n)), "
          + "per-CPU \(kib(Double(kernelAfter.percpu - kernelBefore.percpu) / n))); "
          + "reclaimable slab \(kib(Double(kernelAfter.slabReclaimable - kernelBefore.slabReclaimable) / n)), shmem \(kib(Double(kernelAfter.shmem - kernelBefore.shmem) / n))")
    let used = Double(kernelAfter.used - kernelBefore.used) / n
    let workerOwn = workers.perProcess(workers.privateKiB)
    print("    whole machine (MemTotal - MemAvailable, shared host: noisy): \(kib(used)); beyond the worker's private pages: \(kib(used - workerOwn))")
    var load = [Double](repeating: 0, count: 3)
    if getloadavg(&load, 3) == 3 { print("  load average at the end: \(fmt(load[0], 2)) \(fmt(load[1], 2)) \(fmt(load[2], 2)) on \(ProcessInfo.processInfo.activeProcessorCount) CPUs") }

    // Nothing of the run is left.
    var problems: [String] = []
    let alive = pid1s.filter { kill($0, 0) == 0 && (try? String(contentsOfFile: "/proc/\($0)/cmdline", encoding: .utf8))?.contains("stockade-init") == true }
    if !alive.isEmpty { problems.append("\(alive.count) jail PID 1s still run") }
    for path in basePaths where FileManager.default.fileExists(atPath: path) {
        problems.append("cgroup \(path) is left")
    }
    // The id ranges' locks are flock()s of this process: none may be left
    // (a range another launcher took since is its lock, not ours).
    let flocksAfter = ownFlocks()
    if flocksAfter > flocksBefore { problems.append("this process still holds \(flocksAfter - flocksBefore) more flock()s than before the fill (host id ranges)") }
    print("  clean-up: " + (problems.isEmpty ? "no jail process, cgroup or host id lock of the run is left (\(held.count) id ranges were held; /proc/locks shows none of this process's)" : problems.joined(separator: "; ")))
    print("  goal: 1000 jails held, the daemon under 100 KiB per jail")
}
