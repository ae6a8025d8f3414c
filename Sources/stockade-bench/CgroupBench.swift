// Part "cgroup": how long a jail cgroup takes to set up and tear down, and
// how close the kernel holds a CPU quota to the share asked for, on this
// host's backend (cgroup v1 on hybrid hosts, v2 elsewhere). Needs root.
import StockadeSystem
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import StockadeCgroups
#if canImport(Glibc)
import Glibc
#endif

func cgroupBench() throws {
    guard geteuid() == 0 else {
        print("cgroup: skipped (needs root to create cgroups)")
        return
    }
    let env = ProcessInfo.processInfo.environment
    let runs = Int(env["BENCH_RUNS"] ?? "") ?? 200
    let manager = try CgroupManager(configuration: .init(base: .automatic(name: "stockade-bench-\(getpid())"), baseWeight: 10_000))
    defer { try? manager.close() }
    print("cgroup: backend v\(manager.version), base \(manager.baseDescription)")

    // Create (mkdir, limits, admission) and remove, as the launcher does per jail.
    let limits = LimitsSection(memoryMax: 256 << 20, swapMax: 0, pidsMax: 64, cpu: CPUQuota(cpus: 1))
    var samples: [Double] = []
    for _ in 0..<runs {
        let start = ContinuousClock.now
        let jail = try manager.jail(limits: limits)
        try jail.remove()
        let d = ContinuousClock.now - start
        samples.append(d.inMilliseconds)
    }
    let stats = Stats(samples: samples)
    print("cgroup: create+remove a jail cgroup (memory, swap, pids, cpu): median \(fmt(stats.median, 3)) ms, p90 \(fmt(stats.percentile(0.9), 3)) ms over \(runs) runs")

    // Enforced CPU share: two busy loops under each quota, CPU time from the
    // cgroup's own accounting over a fixed wall interval.
    let seconds = Double(env["BENCH_CPU_SECONDS"] ?? "") ?? 3
    let cpus = max(1, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))))
    for asked in [0.25, 0.5, 1.0, 1.5] where asked < Double(cpus) {
        let jail = try manager.jail(limits: LimitsSection(cpu: CPUQuota(cpus: asked), cpuWeight: 10_000))
        // The shell waits for a line on stdin before it forks the second
        // loop, so both loops start inside the cgroup.
        var pid: pid_t = 0
        let argv = ["/bin/sh", "-c", "read go; while :; do :; done & while :; do :; done"]
        let cArgs = argv.map { strdup($0) } + [nil]
        defer { for p in cArgs { free(p) } }
        var go: [Int32] = [-1, -1]
        guard pipe(&go) == 0 else { continue }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, go[0], 0)
        posix_spawn_file_actions_addclose(&actions, go[1])
        let spawned = posix_spawn(&pid, argv[0], &actions, nil, cArgs, environ)
        close(go[0])
        guard spawned == 0 else { close(go[1]); continue }
        do {
            try jail.attach(pid: pid)
        } catch {
            kill(pid, SIGKILL)
            close(go[1])
            throw error
        }
        _ = write(go[1], "\n", 1)
        close(go[1])
        usleep(500_000)
        func used() throws -> Double {
            let u = try jail.usage()
            return Double((u.cpuUserMicros ?? 0) + (u.cpuSystemMicros ?? 0)) / 1e6
        }
        let t0 = ContinuousClock.now
        let c0 = try used()
        usleep(UInt32(seconds * 1_000_000))
        let c1 = try used()
        let wall = ContinuousClock.now - t0
        let share = (c1 - c0) / (wall.inSeconds)
        try jail.kill()
        var status: Int32 = 0
        _ = try? retryingSyscall { waitpid(pid, &status, 0) }
        try jail.remove()
        print("cgroup: cpu \(fmt(asked)) asked, \(fmt(share, 3)) used (\(share >= asked ? "+" : "")\(fmt((share / asked - 1) * 100, 1))%) over \(fmt(seconds, 1)) s")
    }
}
