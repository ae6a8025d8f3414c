import Foundation
import Testing
@testable import StockadeSeccomp
import StockadeSystem
@testable import StockadeJail

/// The C helpers in Helpers/, built static once per test run into
/// .build/seccomp-helpers, and a way to run a program under a filter:
/// `load-and-exec` sets no_new_privs, loads the bytes with seccomp() and
/// execs, as the jail's child does last.
enum Helpers {
    static let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent()
    static let sources = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Helpers")
    static let output = repository.appendingPathComponent(".build/seccomp-helpers")
    static let names = ["sysc", "load-and-exec", "sysloop", "works", "denyloop", "sysbatch"]

    struct BuildError: Error, CustomStringConvertible { var description: String }

    /// Built once (a static let is initialised once, thread-safely).
    static let built: Result<Void, BuildError> = {
        do {
            try FileManager.default.createDirectory(at: output, withIntermediateDirectories: true)
        } catch {
            return .failure(BuildError(description: "mkdir \(output.path): \(error)"))
        }
        for name in names {
            let src = sources.appendingPathComponent("\(name).c").path
            let exe = output.appendingPathComponent(name).path
            let r = runProcess("/usr/bin/cc", ["-static", "-O2", "-Wall", "-Wextra", "-pthread", "-o", exe, src])
            guard case .exited(0, _, _) = r else {
                return .failure(BuildError(description: "cc \(name).c failed: \(r)"))
            }
        }
        return .success(())
    }()

    static func path(_ name: String) throws -> String {
        try built.get()
        return output.appendingPathComponent(name).path
    }

    /// Writes `program` to a file and runs `argv` under it.
    static func run(_ program: SeccompProgram, _ argv: [String]) throws -> ProcessOutcome {
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("stockade-filter-\(UUID().uuidString).bpf")
        try Data(program.bytes).write(to: file)
        defer { try? FileManager.default.removeItem(at: file) }
        return runProcess(try path("load-and-exec"), [file.path] + argv)
    }

    /// Runs `sysc` under the filter and reads what it printed.
    static func sysc(_ program: SeccompProgram, _ args: [String]) throws -> SyscallOutcome {
        SyscallOutcome(try run(program, [try path("sysc")] + args))
    }
}

enum ProcessOutcome: CustomStringConvertible, Equatable {
    case exited(Int32, stdout: String, stderr: String)
    case signaled(Int32)

    var description: String {
        switch self {
        case .exited(let c, let out, let err): return "exit \(c) stdout=\(out.debugDescription) stderr=\(err.debugDescription)"
        case .signaled(let s): return "killed by signal \(s)"
        }
    }
}

/// What one system call came to, as `sysc` reports it.
enum SyscallOutcome: Equatable, CustomStringConvertible {
    case returned(Int64)
    case errno(Int32)
    /// Death by SIGSYS, SIGKILL or SIGSEGV: seccomp killed it.
    case killed(Int32)
    case broken(String)

    init(_ p: ProcessOutcome) {
        switch p {
        case .signaled(let s) where s == SIGSYS || s == SIGKILL || s == SIGSEGV: self = .killed(s)
        case .signaled(let s): self = .broken("signal \(s)")
        case .exited(0, let out, _):
            let parts = out.split(separator: " ").map { $0.trimmingCharacters(in: .whitespacesAndNewlines) }
            if parts.count == 2, parts[0] == "ret", let v = Int64(parts[1]) { self = .returned(v) }
            else if parts.count == 2, parts[0] == "errno", let e = Int32(parts[1]) { self = .errno(e) }
            else { self = .broken(out) }
        case .exited:
            self = .broken(p.description)
        }
    }

    var description: String {
        switch self {
        case .returned(let v): return "returned \(v)"
        case .errno(let e): return "errno \(ErrnoNames.name(of: e) ?? String(e))"
        case .killed(let s): return "killed (signal \(s))"
        case .broken(let s): return "broken: \(s)"
        }
    }

    var isKilled: Bool { if case .killed = self { return true } else { return false } }
}

/// Runs a program with posix_spawn, stdout and stderr into one temporary
/// file, and waits for that one pid. (Not Foundation's Process: with jails
/// and other children starting in the same test process, its exit
/// monitoring was seen to miss an exit and hang.)
func runProcess(_ executable: String, _ arguments: [String]) -> ProcessOutcome {
    let outPath = FileManager.default.temporaryDirectory.appendingPathComponent("stockade-run-\(UUID().uuidString).out").path
    defer { unlink(outPath) }
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
    posix_spawn_file_actions_addopen(&actions, 1, outPath, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
    posix_spawn_file_actions_adddup2(&actions, 1, 2)
    let argv = ([executable] + arguments).map { strdup($0) } + [nil]
    defer { for p in argv { free(p) } }
    var pid: pid_t = 0
    let rc = posix_spawn(&pid, executable, &actions, nil, argv, environ)
    guard rc == 0 else { return .exited(127, stdout: "", stderr: "cannot run \(executable): errno \(rc)") }
    var status: Int32 = 0
    while waitpid(pid, &status, 0) < 0 {
        guard errno == EINTR else { return .exited(127, stdout: "", stderr: "waitpid: errno \(errno)") }
    }
    let text = (try? String(contentsOfFile: outPath, encoding: .utf8)) ?? ""
    let signal = status & 0x7f
    if signal != 0 && signal != 0x7f { return .signaled(signal) }
    return .exited((status >> 8) & 0xff, stdout: text, stderr: "")
}

/// Parses a profile from text (the file name only labels messages).
func profile(_ text: String, file: String = "/tmp/test-profile.toml") throws -> Profile {
    try Profile.parse(text: text, file: file)
}

func nr(_ name: String) -> Int32 { Syscalls.number(of: name)! }

/// Every suite of this target runs inside this one, one test at a time:
/// the tests start many processes and jails, and `Launcher.launch` closes
/// some of its pipe ends twice, so a concurrent fd open elsewhere in the
/// process can be closed under its owner (reported to the launcher's owner).
@Suite(.serialized) enum SeccompTests {}
