// Part `seccomp`: what a seccomp filter costs per system call. A small C
// loop (sysloop) times raw getpid, read (/dev/zero), write (/dev/null),
// futex (FUTEX_WAKE, nobody waiting) and ioctl(FIONREAD) calls, run bare
// and under each filter by the same loader the tests use (load-and-exec:
// no_new_privs, seccomp(), execve: the jail's last steps). Every shipped
// profile is measured twice in the same rounds: as jails load it (the
// dispatch layout) and in libseccomp's order behind the straight-line
// prelude (the reference layout, the filter as it was built before). Two
// floor rows show what no ordering can remove: a filter that only
// allows (the kernel's action cache answers every call without running
// it) and a two-instruction filter that reads an argument (run for every
// call). Beside each added time: the instructions the filter runs for
// that call, counted on the BPF machine, and "c" where the kernel's cache
// (Linux 5.11+) skips the filter for it. Interleaved rounds; each run
// reports its fastest batch of 1000 calls, and each cell the fastest run
// (the cost on a quiet machine: on this shared 2-core VM the median of
// runs moved by 20-30 ns between sessions, more than the differences
// measured) with the median of runs beside it.
import Foundation
import StockadeSeccomp
import StockadeJail
#if canImport(Glibc)
import Glibc
#endif

private let helperNames = ["load-and-exec", "sysloop"]

/// Builds the static helpers from Tests/SeccompTests/Helpers.
private func buildHelpers(root: String) throws -> String {
    let out = root + "/.build/seccomp-helpers"
    try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
    for name in helperNames {
        let src = root + "/Tests/SeccompTests/Helpers/\(name).c"
        guard let status = run(["/usr/bin/cc", "-static", "-O2", "-o", "\(out)/\(name)", src]).status, status == 0 else {
            throw BenchError("cannot build \(src) with cc")
        }
    }
    return out
}

private struct BenchError: Error, CustomStringConvertible {
    var description: String
    init(_ d: String) { description = "seccomp bench: " + d }
}

private func run(_ argv: [String]) -> (status: Int32?, output: String) {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: argv[0])
    p.arguments = Array(argv.dropFirst())
    let pipe = Pipe()
    p.standardOutput = pipe
    p.standardError = pipe
    do { try p.run() } catch { return (nil, "\(error)") }
    let data = pipe.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    return (p.terminationReason == .exit ? p.terminationStatus : nil, String(decoding: data, as: UTF8.self))
}

/// The calls a worker makes most, and ioctl, whose verdict reads an argument.
private let benchCalls = ["getpid", "read", "write", "futex", "ioctl"]

/// The arguments each call is made with in sysloop, as the filter sees
/// them (pointers and descriptors stand in: no shipped rule reads them).
private let benchData: [String: SeccompData] = {
    func call(_ name: String, _ args: [UInt64]) -> SeccompData { SeccompData(nr: Syscalls.number(of: name) ?? -1, args: args) }
    return [
        "getpid": call("getpid", []),
        "read": call("read", [3, 0x7ffd_0000, 1]),
        "write": call("write", [4, 0x7ffd_0000, 1]),
        "futex": call("futex", [0x7ffd_0000, 129, 1]),          // FUTEX_WAKE_PRIVATE
        "ioctl": call("ioctl", [5, 0x541B, 0x7ffd_0000]),       // FIONREAD
    ]
}()

func seccompBench() throws {
    let env = ProcessInfo.processInfo.environment
    let root = FileManager.default.currentDirectoryPath
    let iterations = Int(env["BENCH_SYSCALLS"] ?? "") ?? 300_000
    let rounds = Int(env["BENCH_ROUNDS"] ?? "") ?? 11
    let helpers = try buildHelpers(root: root)

    typealias I = BPFInstruction
    let allowOnly = [I(code: I.RET | I.K, k: SeccompAction.retAllow)]
    let readsArgument = [I(code: I.LD | I.W | I.ABS, k: 16), I(code: I.RET | I.K, k: SeccompAction.retAllow)]
    var variants: [(String, [BPFInstruction]?)] = [
        ("no filter", nil),
        ("floor: allow, cached", allowOnly),
        ("floor: 2 insns, run", readsArgument),
    ]
    let profileDir = root + "/profiles"
    let names = ((try? FileManager.default.contentsOfDirectory(atPath: profileDir)) ?? []).filter { $0.hasSuffix(".toml") }.sorted()
    guard !names.isEmpty else { throw BenchError("no profiles in \(profileDir)") }
    for name in names {
        let section = try Profile.load(path: profileDir + "/" + name).seccomp
        let short = String(name.dropLast(".toml".count))
        variants.append((short, try section.compile(layout: .dispatch).instructions))
        variants.append((short + " (ref)", try section.compile(layout: .reference).instructions))
    }

    var files: [String?] = []
    for (_, program) in variants {
        guard let program else { files.append(nil); continue }
        let path = NSTemporaryDirectory() + "stockade-bench-\(getpid())-\(files.count).bpf"
        try Data(BPFInstruction.encode(program)).write(to: URL(fileURLWithPath: path))
        files.append(path)
    }
    defer { for f in files.compactMap({ $0 }) { unlink(f) } }

    var samples = [[String: [Double]]](repeating: [:], count: variants.count)
    for _ in 0..<rounds {
        for (i, file) in files.enumerated() {
            for call in benchCalls {
                var argv = ["\(helpers)/sysloop", call, String(iterations)]
                if let file { argv = ["\(helpers)/load-and-exec", file] + argv }
                let r = run(argv)
                guard r.status == 0, let ns = Double(r.output.trimmingCharacters(in: .whitespacesAndNewlines)) else {
                    throw BenchError("\(argv.joined(separator: " ")): \(r.output)")
                }
                samples[i][call, default: []].append(ns)
            }
        }
    }
    func median(_ v: [Double]) -> Double { let s = v.sorted(); return s[s.count / 2] }
    func signed(_ v: Double) -> String { (v >= 0 ? "+" : "") + fmt(v, 1) }
    let base = samples[0].mapValues { $0.min()! }, baseMedian = samples[0].mapValues(median)
    print("seccomp: ns per system call (fastest batch of 1000 calls of the fastest of \(rounds) interleaved runs of \(iterations); kernel \(DockerSeccompProfile.runningKernel()), libseccomp \(SeccompProgram.libseccompVersion))")
    print("  each cell: ns the filter adds, ratio to no filter, (ns added by the median run), [instructions the filter runs for the call; c: the kernel's cache skips the filter]")
    print("  (ref): the same profile in libseccomp's order behind the straight-line prelude, the layout before the dispatch")
    print(pad("filter", 26) + pad("insns", 7) + benchCalls.map { pad($0, 28) }.joined())
    print(pad("no filter", 26) + pad("-", 7) + benchCalls.map { pad(fmt(base[$0]!, 1) + " ns (" + fmt(baseMedian[$0]!, 1) + ")", 28) }.joined())
    for (i, (name, program)) in variants.enumerated() where program != nil {
        let program = program!
        var row = pad(name, 26) + pad(String(program.count), 7)
        for call in benchCalls {
            let ns = samples[i][call]!.min()!, bare = base[call]!
            let added = median(samples[i][call]!) - baseMedian[call]!
            let data = benchData[call]!
            let steps = (try? SeccompMachine.steps(program, on: data)).map(String.init) ?? "?"
            let cached = SeccompMachine.isCachedAllow(program, nr: UInt32(bitPattern: data.nr)) ? "c" : ""
            row += pad("\(signed(ns - bare)) \(fmt(ns / bare))x (\(signed(added))) [\(cached)\(steps)]", 28)
        }
        print(row)
    }
    try observationRows(root: root, helpers: helpers, iterations: iterations, rounds: rounds)
}

/// Allowed calls in a real jail (profiles/minimal.toml, stock allowlist)
/// with denial observation off and on: on, the denied calls' returns become
/// user notifications and a supervisor holds the listener; allowed calls
/// must cost the same (they never leave the kernel).
private func observationRows(root: String, helpers: String, iterations: Int, rounds: Int) throws {
    let profile = try Profile.load(path: root + "/profiles/minimal.toml")
    func jailed(_ call: String, observed: Bool) throws -> Double {
        var request = LaunchRequest(profile: profile, command: ["/helpers/sysloop", call, String(iterations)])
        request.extraMounts = [MountSpec(kind: .bind, source: helpers, target: "/helpers")]
        if observed { request.seccompObservation = SeccompObservation() }
        let path = NSTemporaryDirectory() + "stockade-bench-\(getpid())-jail.out"
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw BenchError("open \(path): errno \(errno)") }
        defer { unlink(path) }
        request.passedFDs = [(fd, 1), (fd, 2)]
        try JailSecurity.prepare(&request)
        let jail = try Launcher.launch(request)
        close(fd)
        if observed, jail.seccompWatch == nil {
            throw BenchError("observation is not available: \(jail.seccompUnobserved ?? "?")")
        }
        _ = try jail.wait(timeLimit: .seconds(300))
        let text = (try? String(contentsOfFile: path, encoding: .utf8)) ?? ""
        guard let ns = Double(text.trimmingCharacters(in: .whitespacesAndNewlines)) else {
            throw BenchError("sysloop in a jail printed \(text.debugDescription)")
        }
        return ns
    }
    var samples: [Bool: [String: [Double]]] = [false: [:], true: [:]]
    for _ in 0..<rounds {
        for observed in [false, true] {
            for call in ["getpid", "ioctl"] { samples[observed]![call, default: []].append(try jailed(call, observed: observed)) }
        }
    }
    func median(_ v: [Double]) -> Double { let s = v.sorted(); return s[s.count / 2] }
    let off = samples[false]!.mapValues(median), on = samples[true]!.mapValues(median)
    print("seccomp observation: allowed calls in a jail (minimal.toml), denial observation off and on; x off = on / off (target within 1.05)")
    print(pad("jail", 28) + pad("getpid ns", 11) + pad("x off", 9) + pad("ioctl ns", 10) + "x off")
    print(pad("observation off", 28) + pad(fmt(off["getpid"]!), 11) + pad("1.00", 9) + pad(fmt(off["ioctl"]!), 10) + "1.00")
    print(pad("observation on", 28) + pad(fmt(on["getpid"]!), 11) + pad(fmt(on["getpid"]! / off["getpid"]!), 9)
          + pad(fmt(on["ioctl"]!), 10) + fmt(on["ioctl"]! / off["ioctl"]!))
}
