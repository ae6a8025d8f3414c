// Part one: spawn-to-exit latency of /bin/true under the full minimal
// profile, beside bubblewrap and unshare, interleaved in one run so that
// all three see the same machine load.
import StockadeSystem
import StockadeJail
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
#if canImport(Glibc)
import Glibc
#endif

/// Runs argv once and returns its wall time in milliseconds (nil on failure).
/// `fd3`: a file the command reads on fd 3 (opened afresh for each run).
func timeCommand(_ argv: [String], fd3: String? = nil) -> Double? {
    var marks: [ContinuousClock.Instant] = []
    guard spawnAndWait(argv, fd3: fd3, mark: { marks.append(.now) }) else { return nil }
    return (marks[1] - marks[0]).inMilliseconds
}

/// Spawns argv with its stdout on `stdout` (/dev/null when nil) and `fd3`
/// open on fd 3, and waits for it; `mark` runs just before the spawn and
/// just after the wait. false when it did not start or did not exit 0.
func spawnAndWait(_ argv: [String], stdout: Int32? = nil, fd3: String?, mark: () -> Void) -> Bool {
    var pid: pid_t = 0
    let cArgs = argv.map { strdup($0) } + [nil]
    defer { for p in cArgs { free(p) } }
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    if let stdout {
        posix_spawn_file_actions_adddup2(&actions, stdout, 1)
    } else {
        posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
    }
    if let fd3 { posix_spawn_file_actions_addopen(&actions, 3, fd3, O_RDONLY, 0) }
    mark()
    guard posix_spawn(&pid, argv[0], &actions, nil, cArgs, environ) == 0 else { return false }
    var status: Int32 = 0
    _ = try? retryingSyscall { waitpid(pid, &status, 0) }
    mark()
    return status == 0
}

struct Stats {
    var samples: [Double]
    var median: Double { percentile(0.5) }
    func percentile(_ p: Double) -> Double {
        let s = samples.sorted()
        return s[min(s.count - 1, Int(Double(s.count - 1) * p))]
    }
}

func fmt(_ v: Double, _ digits: Int = 2) -> String {
    let scale = pow(10.0, Double(digits))
    let r = (v * scale).rounded() / scale
    var s = "\(r)"
    if let dot = s.firstIndex(of: ".") {
        let decimals = s.distance(from: dot, to: s.endIndex) - 1
        if decimals < digits { s += String(repeating: "0", count: digits - decimals) }
    }
    return s
}

func pad(_ s: String, _ width: Int) -> String {
    s.count >= width ? s : s + String(repeating: " ", count: width - s.count)
}

/// STOCKADE_BIN_BASELINE: another build of `stockade` (e.g. the one before a
/// change) timed in the same rounds, so that a change is measured against
/// the same machine load as bubblewrap.
func baselineRows(_ env: [String: String], _ argv: (String) -> [String]) -> [(String, [String])] {
    guard let baseline = env["STOCKADE_BIN_BASELINE"] else { return [] }
    return [("the same, baseline \(baseline)", argv(baseline))]
}

/// bubblewrap running /bin/true in a jail like the minimal profile's.
let bwrapLabel = "bwrap --unshare-all ..."
let bwrapTrue = ["/usr/bin/bwrap", "--unshare-all", "--die-with-parent", "--new-session",
                 "--ro-bind", "/usr", "/usr", "--symlink", "usr/lib64", "/lib64",
                 "--symlink", "usr/lib", "/lib", "--symlink", "usr/bin", "/bin",
                 "--proc", "/proc", "--dev", "/dev", "--cap-drop", "ALL", "/bin/true"]

/// bubblewrap with what the minimal profile adds to `bwrapTrue`: the
/// profile's compiled seccomp filter (`filter`, read on fd 3; bubblewrap
/// sets no_new_privs for it), the /proc masks every Stockade jail gets
/// (directories under an empty read-only tmpfs, files under /dev/null,
/// control trees read-only; only those this kernel has), its uid, gid,
/// hostname, environment and /tmp. What it still lacks: Landlock,
/// rlimits, the host-id lease and the size of the root tmpfs.
func bwrapLikeMinimal(filter: String) -> [String] {
    // bwrapTrue up to its closing "--cap-drop ALL /bin/true".
    var argv = Array(bwrapTrue.dropLast(3)) + [
        "--uid", "1000", "--gid", "1000", "--hostname", "stockade",
        "--clearenv", "--setenv", "PATH", "/usr/local/bin:/usr/bin:/bin", "--setenv", "HOME", "/tmp",
        "--symlink", "usr/sbin", "/sbin", "--size", "67108864", "--perms", "1777", "--tmpfs", "/tmp"]
    var st = stat()
    for path in ProcMasks.hidden where stat(path, &st) == 0 {
        if (st.st_mode & S_IFMT) == S_IFDIR {
            argv += ["--tmpfs", path, "--remount-ro", path]
        } else {
            argv += ["--ro-bind", "/dev/null", path]
        }
    }
    for path in ProcMasks.readOnly where stat(path, &st) == 0 { argv += ["--ro-bind", path, path] }
    return argv + ["--seccomp", "3"] + bwrapTrue.suffix(3)
}

/// Writes `profile` without its [limits] table (the launch without a
/// cgroup, the case bubblewrap, which makes none, is compared with) to a
/// temporary file and returns its path.
func profileWithoutLimits(_ profile: String) throws -> String {
    let env = ProcessInfo.processInfo.environment
    let unlimited = (env["TMPDIR"] ?? "/tmp") + "/stockade-bench-\(getpid())-nolimits.toml"
    var inLimits = false
    let profileText = (try? String(contentsOfFile: profile, encoding: .utf8)) ?? ""
    let unlimitedText = profileText.split(separator: "\n", omittingEmptySubsequences: false).filter { line in
        if line.hasPrefix("[") { inLimits = line.hasPrefix("[limits]") || line.hasPrefix("[limits.") }
        return !inLimits
    }.joined(separator: "\n")
    try unlimitedText.write(toFile: unlimited, atomically: true, encoding: .utf8)
    return unlimited
}

/// Each command's wall times in ms, `runs` rounds of one run each in
/// turn, so that all see the same machine load; a command that does not run
/// here is said so once and gets no samples.
func timeInterleaved(_ contenders: [(String, [String])], runs: Int, fd3: [String: String] = [:]) -> [[Double]] {
    interleaved(contenders, runs: runs, fd3: fd3, measure: timeCommand)
}

/// `measure`'s results for each command, taken as ``timeInterleaved`` takes times.
func interleaved<Sample>(_ contenders: [(String, [String])], runs: Int, fd3: [String: String],
                         measure: ([String], String?) -> Sample?) -> [[Sample]] {
    var samples = Array(repeating: [Sample](), count: contenders.count)
    let available = contenders.map { c in
        let ok = measure(c.1, fd3[c.0]) != nil
        if !ok { print("skipping \(c.0): it does not run here (\(c.1[0]))") }
        return ok
    }
    for _ in 0..<runs {
        for (i, c) in contenders.enumerated() where available[i] {
            if let t = measure(c.1, fd3[c.0]) { samples[i].append(t) }
        }
    }
    return samples
}

func spawnBench() throws {
    let env = ProcessInfo.processInfo.environment
    let stockade = env["STOCKADE_BIN"] ?? ".build/release/stockade"
    let runs = Int(env["BENCH_RUNS"] ?? "") ?? 200
    let profile = env["STOCKADE_PROFILE"] ?? "profiles/minimal.toml"
    let unlimited = try profileWithoutLimits(profile)
    defer { unlink(unlimited) }
    let filter = unlimited + ".bpf"
    defer { unlink(filter) }
    let likeMinimal = "bwrap with minimal's filter, /proc masks, ids"
    if timeCommand([stockade, "compile", "--raw", "-o", filter, unlimited]) == nil {
        print("cannot compile \(profile)'s filter with \(stockade) compile --raw; its bwrap row is skipped")
    }
    let unlimitedRun = [stockade, "run", "-p", unlimited, "--", "/bin/true"]
    let contenders: [(String, [String])] = [
        ("stockade run (minimal profile)", [stockade, "run", "-p", profile, "--", "/bin/true"]),
        (bwrapLabel, bwrapTrue),
        (likeMinimal, bwrapLikeMinimal(filter: filter)),
        ("unshare -U -r -p -f -m -n -i -u", ["/usr/bin/unshare", "-U", "-r", "-p", "-f", "-m", "-n", "-i", "-u", "/bin/true"]),
        ("/bin/true (no jail)", ["/bin/true"]),
        ("stockade run (minimal, no [limits])", unlimitedRun),
        ("stockade --version", [stockade, "--version"]),
    ] + baselineRows(env) { [$0, "run", "-p", unlimited, "--", "/bin/true"] }
    print("## Spawn-to-exit latency of /bin/true (\(runs) runs each, interleaved)\n")
    let samples = timeInterleaved(contenders, runs: runs, fd3: [likeMinimal: filter])
    let bwrap = samples[1].isEmpty ? nil : Stats(samples: samples[1]).median
    let unshare = samples[3].isEmpty ? nil : Stats(samples: samples[3]).median
    print("| command | median ms | p90 ms | vs bwrap | vs unshare |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for (i, c) in contenders.enumerated() {
        guard !samples[i].isEmpty else { continue }
        let s = Stats(samples: samples[i])
        let vsB = bwrap.map { fmt(s.median / $0) + "x" } ?? "-"
        let vsU = unshare.map { fmt(s.median / $0) + "x" } ?? "-"
        print("| \(c.0) | \(fmt(s.median)) | \(fmt(s.percentile(0.9))) | \(vsB) | \(vsU) |")
    }
    let unlimitedRow = contenders.firstIndex { $0.1 == unlimitedRun }
    if let u = unlimitedRow, !samples[u].isEmpty, !samples[2].isEmpty {
        let ratio = Stats(samples: samples[u]).median / Stats(samples: samples[2]).median
        print("\nstockade run without [limits] / \(likeMinimal): \(fmt(ratio))x")
    }
    print("")
    phaseBench(stockade: stockade, profile: profile, unlimited: unlimited, likeMinimal: (likeMinimal, filter), runs: runs)
}

/// The nanoseconds since the epoch (CLOCK_REALTIME, which no namespace of
/// the jails here changes).
private func realtimeNanoseconds() -> Int64 {
    var ts = timespec()
    clock_gettime(CLOCK_REALTIME, &ts)
    return Int64(ts.tv_sec) * 1_000_000_000 + Int64(ts.tv_nsec)
}

/// One run of argv, whose command is `date +%s%N` inside the jail: the
/// milliseconds from the spawn to the moment the command read the clock,
/// and from then to the caller's `waitpid` returning. nil on failure.
func timePhases(_ argv: [String], fd3: String? = nil) -> (toCommand: Double, afterCommand: Double)? {
    var fds: [Int32] = [-1, -1]
    guard pipe(&fds) == 0 else { return nil }
    defer { close(fds[0]) }
    // Neither end is the command's but through the dup2 onto its stdout.
    for fd in fds { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
    var marks: [Int64] = []
    let ran = spawnAndWait(argv, stdout: fds[1], fd3: fd3, mark: { marks.append(realtimeNanoseconds()) })
    close(fds[1])
    // A line of at most 20 digits: the pipe holds it until the read.
    var buffer = [UInt8](repeating: 0, count: 64)
    let n = buffer.withUnsafeMutableBytes { read(fds[0], $0.baseAddress, $0.count) }
    guard ran, n > 0,
          let clock = Int64(String(decoding: buffer[..<n], as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)),
          clock >= marks[0], clock <= marks[1] else { return nil }
    return (Double(clock - marks[0]) / 1e6, Double(marks[1] - clock) / 1e6)
}

/// Part one's commands again, each running `date +%s%N` in its jail: where
/// a launch's time lies, before the command (the launcher's own start, its
/// plan, the jail's construction, the command's exec and start-up) and
/// after it (the command's exit, the jail's teardown, the launcher's exit).
/// The command's own start and exit are the same in every row.
func phaseBench(stockade: String, profile: String, unlimited: String, likeMinimal: (name: String, filter: String), runs: Int) {
    let date = ["/usr/bin/date", "+%s%N"]
    let contenders: [(String, [String])] = [
        ("stockade run (minimal, no [limits])", [stockade, "run", "-p", unlimited, "--"] + date),
        ("stockade run (minimal profile)", [stockade, "run", "-p", profile, "--"] + date),
        (bwrapLabel, Array(bwrapTrue.dropLast()) + date),
        (likeMinimal.name, Array(bwrapLikeMinimal(filter: likeMinimal.filter).dropLast()) + date),
        ("unshare -U -r -p -f -m -n -i -u", ["/usr/bin/unshare", "-U", "-r", "-p", "-f", "-m", "-n", "-i", "-u"] + date),
        ("date (no jail)", date),
    ]
    let samples = interleaved(contenders, runs: runs, fd3: [likeMinimal.name: likeMinimal.filter], measure: timePhases)
    let before = samples.map { $0.map(\.toCommand) }, after = samples.map { $0.map(\.afterCommand) }
    print("## Where a launch's time lies: before the command, and after it (\(runs) runs each, interleaved)\n")
    print("The command is `date +%s%N`; \"to the command\" ends when it reads the clock, after its own start.\n")
    print("| command | to the command, median ms | vs bwrap | after the command, median ms | vs bwrap |")
    print("| --- | ---: | ---: | ---: | ---: |")
    let bwrap = contenders.firstIndex { $0.0 == bwrapLabel } ?? 0
    let bwrapBefore = before[bwrap].isEmpty ? nil : Stats(samples: before[bwrap]).median
    let bwrapAfter = after[bwrap].isEmpty ? nil : Stats(samples: after[bwrap]).median
    for (i, c) in contenders.enumerated() where !before[i].isEmpty {
        let b = Stats(samples: before[i]).median, a = Stats(samples: after[i]).median
        print("| \(c.0) | \(fmt(b)) | \(bwrapBefore.map { fmt(b / $0) + "x" } ?? "-") | \(fmt(a)) | \(bwrapAfter.map { fmt(a / $0) + "x" } ?? "-") |")
    }
    print("")
}
