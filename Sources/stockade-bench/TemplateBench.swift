// Part `template`: MiniLM workers forked from one template against workers
// launched one by one. Memory is the proportional set size (Pss of
// /proc/PID/smaps_rollup: a page shared by n processes counts 1/n to each)
// summed over the Python processes, each after answering one request; time
// to an extra worker is from the daemon's FORK to the end of the new
// worker's handshake, against a whole jailed launch with its model load.
// Jails under profiles/inference-cpu.toml without cgroups. Needs `make venv`
// and root (to read the jailed, non-dumpable workers' smaps_rollup).
import Foundation
import StockadeCgroups
import StockadeChannel
import StockadeDaemon
import StockadeJail
import StockadeSystem
import Logging
#if canImport(Glibc)
import Glibc
#endif

private let forkedWorkers = 8
private let extraSamples = 20

func templateBench() throws {
    let repo = FileManager.default.currentDirectoryPath
    let python = repo + "/.venv/bin/python3"
    let worker = repo + "/examples/minilm/worker.py"
    guard FileManager.default.isExecutableFile(atPath: python), FileManager.default.fileExists(atPath: worker) else {
        print("template: skipped (needs make venv and examples/minilm/worker.py; run from the repository root)")
        return
    }
    guard getuid() == 0 else {
        print("template: skipped (reading the jailed workers' smaps_rollup needs root)")
        return
    }
    let payload = try benchPayload(repo: repo)
    let limits = ChannelLimits(maxBulkLength: 16 << 20)
    print("template: \(forkedWorkers) MiniLM workers forked from one template vs workers launched one by one "
          + "(inference-cpu, no cgroups; Pss after one request each, forked workers idle 0.5 s)")

    func request(_ environment: [(String, String)] = []) throws -> LaunchRequest {
        var r = LaunchRequest(profile: try Profile.load(path: repo + "/profiles/inference-cpu.toml"), command: [python, worker])
        for dir in [repo + "/.venv", repo + "/examples/minilm"] { r.extraMounts.append(MountSpec(kind: .bind, source: dir, target: dir)) }
        r.extraEnvironment = environment
        let null = open("/dev/null", O_RDWR | O_CLOEXEC)
        r.passedFDs = [(null, 0), (null, 1), (null, 2)]
        try JailSecurity.prepare(&r)
        return r
    }

    // Workers launched one by one: a jail, a model load, a handshake each.
    var launchTimes: [Double] = []
    var normalPss: [Double] = []
    for i in 0..<3 {
        var r = try request()
        let bootstrap = try ChannelBootstrap(tenant: "bench", worker: "normal-\(i)", limits: limits)
        r.passedFDs += bootstrap.passedFDs
        r.extraEnvironment.append(bootstrap.environment)
        let t0 = ContinuousClock.now
        let jail = try Launcher.launch(r)
        close(r.passedFDs[0].from)
        bootstrap.closeWorkerEnds()
        let channel = try bootstrap.connect(handshakeTimeoutMilliseconds: 120_000)
        launchTimes.append((ContinuousClock.now - t0).inMilliseconds)
        _ = try channel.request(payload)
        normalPss.append(Double(childPids(of: jail.pid).map(pssKiB).reduce(0, +)))
        try? channel.shutdown()
        jail.kill()
        _ = try? jail.wait()
    }

    /// A template with `forkedWorkers` forks that each answered one
    /// request and then idled 0.5 s (past the SDK's IDLE_AFTER, 0.1 s), and
    /// the Pss of them all in KiB.
    func forkedSet(_ environment: [(String, String)]) throws -> (WorkerTemplate, ms: Double, pss: Double) {
        let r = try request(environment)
        let t0 = ContinuousClock.now
        let template = try WorkerTemplate.launch(r, logger: Logger(label: "bench.template"))
        close(r.passedFDs[0].from)
        let ready = (ContinuousClock.now - t0).inMilliseconds
        var forks: [ForkedWorker] = []
        for i in 0..<forkedWorkers {
            let f = try template.fork(tenant: "bench", worker: "fork-\(i)", limits: limits)
            _ = try f.channel.request(payload)
            forks.append(f)
        }
        usleep(500_000)
        // The template's children: its forks and its spare.
        return (template, ready, Double(([template.process.pid] + childPids(of: template.process.pid)).map(pssKiB).reduce(0, +)))
    }
    let (template, templateReady, forkedPss) = try forkedSet([])
    defer { _ = template.stop() }
    // An extra worker, again and again: forked, handshake done, then
    // ended; after a pause (the template has forked its spare by then) and
    // back to back (each fork made on the word).
    var extraTimes: [Double] = [], coldTimes: [Double] = []
    for i in 0..<2 * extraSamples {
        let spare = i % 2 == 0
        if spare { usleep(150_000) }
        let t = ContinuousClock.now
        let f = try template.fork(tenant: "bench", worker: "extra-\(i)", limits: limits)
        let ms = (ContinuousClock.now - t).inMilliseconds
        if spare { extraTimes.append(ms) } else { coldTimes.append(ms) }
        f.kill()
        _ = f.waitForExit(milliseconds: 5_000)
    }
    // The same from the spare with a cgroup per fork (its mkdir and limits
    // before the FORK, the move on FORKED), where this host has cgroups.
    var cgroupTimes: [Double] = []
    if let manager = try? CgroupManager(configuration: .init(base: .automatic(name: "stockade-bench-\(getpid())"))) {
        defer { try? manager.close() }
        var r = try request()
        r.cgroup = try manager.jail(limits: r.profile.limits, forks: true)
        let budgeted = try WorkerTemplate.launch(r, logger: Logger(label: "bench.template"),
                                                 forkLimits: LimitsSection(memoryMax: 256 << 20, pidsMax: 16))
        close(r.passedFDs[0].from)
        defer { _ = budgeted.stop() }
        for i in 0..<extraSamples {
            usleep(150_000)
            let t = ContinuousClock.now
            let f = try budgeted.fork(tenant: "bench", worker: "budgeted-\(i)", limits: limits)
            cgroupTimes.append((ContinuousClock.now - t).inMilliseconds)
            f.kill()
            _ = f.wait(profile: "bench")
        }
    }
    let one = Stats(samples: normalPss).median / 1024
    // The same without the idle release: each worker keeps what its
    // request allocated, as a busy worker holds it.
    let (keeping, _, keptKiB) = try forkedSet([("STOCKADE_IDLE_RELEASE", "0")])
    defer { _ = keeping.stop() }
    let keptPss = keptKiB / 1024
    let eight = forkedPss / 1024
    let launch = Stats(samples: launchTimes), extra = Stats(samples: extraTimes), cold = Stats(samples: coldTimes)
    print("  \(pad("", 46)) \(pad("Pss MiB", 10)) ratio")
    print("  \(pad("1 worker launched alone", 46)) \(pad(fmt(one, 1), 10)) 1.00x")
    print("  \(pad("template + \(forkedWorkers) forked workers", 46)) \(pad(fmt(eight, 1), 10)) \(fmt(eight / one))x   (goal: at most 1.5x)")
    print("  \(pad("same, without the idle release (as when busy)", 46)) \(pad(fmt(keptPss, 1), 10)) \(fmt(keptPss / one))x")
    print("  \(pad("\(forkedWorkers) workers launched alone (8 x the first row)", 46)) \(pad(fmt(one * Double(forkedWorkers), 1), 10)) \(fmt(Double(forkedWorkers)))x")
    print("  \(pad("", 46)) \(pad("p50 ms", 10)) \(pad("p90 ms", 10))")
    print("  \(pad("extra worker: spare + handshake", 46)) \(pad(fmt(extra.median), 10)) \(pad(fmt(extra.percentile(0.9)), 10)) (goal: under 10 ms)")
    print("  \(pad("extra worker back to back: fork + handshake", 46)) \(pad(fmt(cold.median), 10)) \(pad(fmt(cold.percentile(0.9)), 10))")
    if !cgroupTimes.isEmpty {
        let budgeted = Stats(samples: cgroupTimes)
        print("  \(pad("extra worker from the spare, a cgroup per fork", 46)) \(pad(fmt(budgeted.median), 10)) \(pad(fmt(budgeted.percentile(0.9)), 10))")
    }
    print("  \(pad("extra worker: jail + model load + handshake", 46)) \(pad(fmt(launch.median, 1), 10)) \(pad(fmt(launch.percentile(0.9), 1), 10))")
    print("  template: jail + model load until READY \(fmt(templateReady, 1)) ms")
}

/// The children of `pid` (the jail's PID 1 has the worker as its child).
private func childPids(of pid: Int32) -> [Int32] {
    let text = (try? String(contentsOfFile: "/proc/\(pid)/task/\(pid)/children", encoding: .utf8)) ?? ""
    return text.split(separator: " ").compactMap { Int32($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
}

/// The process's proportional set size in KiB (0 when it cannot be read).
private func pssKiB(_ pid: Int32) -> Int {
    guard let text = try? String(contentsOfFile: "/proc/\(pid)/smaps_rollup", encoding: .utf8) else { return 0 }
    for line in text.split(separator: "\n") where line.hasPrefix("Pss:") {
        return Int(line.dropFirst(4).trimmingCharacters(in: .whitespaces).split(separator: " ").first ?? "") ?? 0
    }
    return 0
}
