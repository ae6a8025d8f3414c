// Part `seccomp`: what a seccomp filter costs per system call. A small C
// loop (sysloop) times raw getpid, read (/dev/zero), write (/dev/null),
// futex (FUTEX_WAKE, nobody waiting) and ioctl(FIONREAD) calls, run bare
// and under each filter by the same loader the tests use (load-and-exec:
// no_new_privs, seccomp(), execve: the jail's last steps). The first four
// verdicts never depend on their arguments, so the kernel's constant-action
// cache may skip the filter entirely; ioctl's does (the hardening checks
// TIOCSTI/TIOCLINUX), so it runs the filter every time: its row is the
// cost of the filter's search. Interleaved rounds, medians reported; the
// added nanoseconds per call beside each ratio.
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

func seccompBench() throws {
    let env = ProcessInfo.processInfo.environment
    let root = FileManager.default.currentDirectoryPath
    let iterations = Int(env["BENCH_SYSCALLS"] ?? "") ?? 2_000_000
    let rounds = Int(env["BENCH_ROUNDS"] ?? "") ?? 7
    let helpers = try buildHelpers(root: root)

    var variants: [(String, SeccompProgram?)] = [("no filter", nil)]
    let inferencePath = root + "/profiles/inference-cpu.toml"
    if FileManager.default.fileExists(atPath: inferencePath) {
        variants.append(("inference-cpu.toml", try Profile.load(path: inferencePath).seccomp.compile()))
    } else {
        variants.append(("stock allowlist", try SeccompSection().compile()))
    }
    let docker = root + "/profiles/moby-seccomp-default.json"
    if FileManager.default.fileExists(atPath: docker) {
        let p = try Profile.parse(text: "[seccomp]\nimport = \"docker:\(docker)\"", file: root + "/bench.toml")
        variants.append(("docker default (imported)", try p.seccomp.compile()))
    }
    let hardeningOnly = try Profile.parse(text: "[seccomp]\nbase = \"none\"\ndefault = \"allow\"", file: root + "/bench.toml")
    variants.append(("hardening only", try hardeningOnly.seccomp.compile()))

    var files: [String?] = []
    for (_, program) in variants {
        guard let program else { files.append(nil); continue }
        let path = NSTemporaryDirectory() + "stockade-bench-\(getpid())-\(files.count).bpf"
        try Data(program.bytes).write(to: URL(fileURLWithPath: path))
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
    let base = samples[0].mapValues(median)
    print("seccomp: ns per system call, median of \(rounds) rounds of \(iterations) calls (kernel \(DockerSeccompProfile.runningKernel()), libseccomp \(SeccompProgram.libseccompVersion))")
    print(pad("filter", 28) + pad("insns", 7) + benchCalls.map { pad("\($0) ns (+, x)", 24) }.joined())
    for (i, (name, program)) in variants.enumerated() {
        var row = pad(name, 28) + pad(program.map { String($0.instructions.count) } ?? "-", 7)
        for call in benchCalls {
            let ns = median(samples[i][call]!), bare = base[call]!
            row += pad("\(fmt(ns, 1)) (+\(fmt(ns - bare, 1)), \(fmt(ns / bare)))", 24)
        }
        print(row)
    }
}
