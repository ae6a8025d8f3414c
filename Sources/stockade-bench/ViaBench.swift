// Part `via`: `stockade run --via` (a jail stockaded built before it was
// asked for) against bubblewrap and `stockade run`, /bin/true under the
// minimal profile without [limits], interleaved in one run so that all
// three see the same machine load. The daemon runs in this process and
// rebuilds a used jail in the background while the others are measured,
// as it would on a host where jails are asked for one after the other.
import StockadeDaemon
import StockadeJail
import StockadeSystem
import SystemPackage
import Foundation
#if canImport(Glibc)
import Glibc
#endif

func viaBench() throws {
    let env = ProcessInfo.processInfo.environment
    let stockade = env["STOCKADE_BIN"] ?? ".build/release/stockade"
    let runs = Int(env["BENCH_RUNS"] ?? "") ?? 200
    let ready = Int(env["VIA_READY"] ?? "") ?? 4
    let profile = try profileWithoutLimits(env["STOCKADE_PROFILE"] ?? "profiles/minimal.toml")
    defer { unlink(profile) }
    let dir = NSTemporaryDirectory() + "stockade-bench-via-\(getpid())"
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    chmod(dir, 0o755)
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let config = """
        [daemon]
        socket = "api.sock"
        audit_log = "audit.jsonl"
        cgroups = false
        [via]
        socket = "via.sock"
        [via.pool.minimal]
        profile = "\(profile)"
        ready = \(ready)
        uids = [\(getuid())]
        """
    try config.write(toFile: dir + "/stockaded.toml", atomically: true, encoding: .utf8)
    let daemon = try Daemon(config: try DaemonConfig.load(path: dir + "/stockaded.toml"))
    try daemon.start()
    defer { daemon.stop() }
    let deadline = Date().addingTimeInterval(60)
    while (daemon.jailPools?.readyCounts()["minimal"] ?? 0) < ready {
        guard Date() < deadline else { throw DaemonError("the pool's jails were not built within 60 s") }
        usleep(20_000)
    }
    let contenders: [(String, [String])] = [
        ("stockade run --via (built ahead)", [stockade, "run", "--via", dir + "/via.sock", "--", "/bin/true"]),
        (bwrapLabel, bwrapTrue),
        ("stockade run (minimal, no [limits])", [stockade, "run", "-p", profile, "--", "/bin/true"]),
    ] + baselineRows(env) { [$0, "run", "--via", dir + "/via.sock", "--", "/bin/true"] }
    print("## run --via: /bin/true in a jail built ahead (\(runs) runs each, interleaved; pool of \(ready))\n")
    var samples = timeInterleaved(contenders, runs: runs)
    // The daemon's and the jail's share: the same request from this process
    // (no client process to start), as many times, after the others.
    let null = FileDescriptor(rawValue: open("/dev/null", O_RDWR | O_CLOEXEC))
    defer { try? null.close() }
    let request = ViaWire.encode(magic: ViaWire.requestMagic, [[""], ["/bin/true"], [], []])
    var inProcess: [Double] = []
    var answer = [UInt8](repeating: 0, count: 4096)
    for _ in 0..<runs {
        let start = ContinuousClock.now
        guard let conn = try? ViaJail.connect(path: dir + "/via.sock") else { break }
        defer { try? conn.close() }
        guard (try? request.withUnsafeBytes({ try conn.sendMessage($0, passing: [null, null, null]) })) != nil,
              let got = try? answer.withUnsafeMutableBytes({ try conn.receiveMessage(into: $0, maxDescriptors: 0) }),
              got.byteCount > 0 else { break }
        inProcess.append((ContinuousClock.now - start).inMilliseconds)
        // As much time between requests as the interleaved runs left the pool.
        usleep(20_000)
    }
    samples.append(inProcess)
    let rows = contenders + [("the same request from this process (no client start)", [])]
    let bwrap = samples[1].isEmpty ? nil : Stats(samples: samples[1]).median
    let run = samples[2].isEmpty ? nil : Stats(samples: samples[2]).median
    print("| command | median ms | p90 ms | vs bwrap | vs stockade run |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for (i, c) in rows.enumerated() {
        guard !samples[i].isEmpty else { continue }
        let s = Stats(samples: samples[i])
        let vsB = bwrap.map { fmt(s.median / $0) + "x" } ?? "-"
        let vsR = run.map { fmt(s.median / $0) + "x" } ?? "-"
        print("| \(c.0) | \(fmt(s.median)) | \(fmt(s.percentile(0.9))) | \(vsB) | \(vsR) |")
    }
    if let bwrap, !samples[0].isEmpty {
        let ratio = Stats(samples: samples[0]).median / bwrap
        print("\nrun --via / bwrap: \(fmt(ratio))x (goal: at most 0.50x)")
    }
    print("")
}
