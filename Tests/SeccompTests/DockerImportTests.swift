import Foundation
import Testing
@testable import StockadeSeccomp

/// Docker's default profile, imported unchanged, against a table of what
/// Docker decides (Helpers/docker-verdicts.txt).
extension SeccompTests {
@Suite struct DockerImportTests {
    /// Shipped beside profiles/docker-default.toml (origin and licence in profiles/README.md).
    static let dockerFile = Helpers.repository.appendingPathComponent("profiles/moby-seccomp-default.json").path

    struct Row: CustomStringConvertible, Sendable {
        var line: Int
        var call: String
        var args: [UInt64]
        var docker: String
        var stockade: String
        var description: String { "line \(line): \(call) \(args.map { "0x" + String($0, radix: 16) })" }
    }

    static let rows: [Row] = {
        let path = Helpers.sources.appendingPathComponent("docker-verdicts.txt").path
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { return [] }
        var rows: [Row] = []
        for (i, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            var line = Substring(raw)
            if line.hasPrefix("# ") || line.hasPrefix("#\t") || line == "#" || line.isEmpty { continue }
            if let hash = line.range(of: " #") { line = line[..<hash.lowerBound] }
            let halves = line.components(separatedBy: "->")
            guard halves.count == 2 else { continue }
            let left = halves[0].split(separator: " ").map(String.init)
            let right = halves[1].split(separator: " ").map(String.init)
            let args = left.dropFirst().map { UInt64($0.hasPrefix("0x") ? String($0.dropFirst(2)) : $0, radix: $0.hasPrefix("0x") ? 16 : 10)! }
            rows.append(Row(line: i + 1, call: left[0], args: Array(args), docker: right[0], stockade: right.count > 1 ? right[1] : right[0]))
        }
        return rows
    }()

    static func verdict(_ text: String) -> SeccompAction {
        switch text {
        case "allow": return .allow
        case "EPERM": return .errno(1)
        case "ENOSYS": return .errno(38)
        case "kill": return .killProcess
        default: fatalError("verdict \(text) in docker-verdicts.txt")
        }
    }

    static func imported() throws -> SeccompSection {
        try profile("""
        [seccomp]
        import = "docker:\(dockerFile)"
        """).seccomp
    }

    @Test("the verdict table is there and not trivially small")
    func tableIsRead() {
        #expect(Self.rows.count > 60)
    }

    @Test("the imported profile decides as Docker does, except where the hardening says otherwise")
    func verdictsMatch() throws {
        let section = try Self.imported()
        let program = try section.compile()
        #expect(section.defaultAction == .errno(1))
        for row in Self.rows {
            let number: Int32
            if row.call.hasPrefix("#") {
                number = Int32(row.call.dropFirst())!
            } else {
                guard let n = Syscalls.number(of: row.call) else { Issue.record("\(row): unknown name"); continue }
                number = n
            }
            let got = try program.verdict(SeccompData(nr: number, args: row.args))
            #expect(got == Self.verdict(row.stockade), "\(row): got \(got), want \(row.stockade) (Docker: \(row.docker))")
        }
    }

    @Test("what the import changed is reported, not silent")
    func importNotes() throws {
        let notes = try Self.imported().notes.joined(separator: "\n")
        #expect(notes.contains("ptrace is allowed by the Docker profile but denied by the hardening"))
        #expect(notes.contains("clock_adjtime is allowed by the Docker profile but denied by the hardening"))
        #expect(notes.contains("not system calls on this architecture") && notes.contains("socketcall"))
        #expect(notes.contains("unknown to the installed libseccomp") && notes.contains("mseal"))
        #expect(notes.contains("only the native architecture is compiled"))
    }

    @Test("the import runs real work in the kernel: fork, threads, sockets")
    func importedProfileRunsWork() throws {
        let program = try Self.imported().compile()
        let r = try Helpers.run(program, [try Helpers.path("works")])
        guard case .exited(0, _, _) = r else { Issue.record("\(r)"); return }
        // And the hardening holds on top of it: x32 getpid dies, TIOCSTI is refused.
        #expect(try Helpers.sysc(program, ["--x32", "39"]).isKilled)
        #expect(try Helpers.sysc(program, [String(nr("ioctl")), "-1", String(0x123 << 32 | SeccompConstants.TIOCSTI)]) == .errno(1))
    }

    @Test("Docker JSON details: errnoRet, MASKED_EQ's valueTwo, minKernel, arches, excludes")
    func formatDetails() throws {
        let json = """
        {"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 38,
         "syscalls": [
          {"names": ["getppid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
          {"names": ["getuid"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 1, "value": 255, "valueTwo": 18, "op": "SCMP_CMP_MASKED_EQ"}]},
          {"names": ["getgid"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "99.0"}},
          {"names": ["getegid"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "3.10"}},
          {"names": ["geteuid"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["arm64"]}},
          {"names": ["gettid"], "action": "SCMP_ACT_ALLOW", "excludes": {"arches": ["amd64"]}},
          {"names": ["getpgrp"], "action": "SCMP_ACT_ALLOW", "excludes": {"caps": ["CAP_SYS_ADMIN"]}},
          {"names": ["getsid"], "action": "SCMP_ACT_KILL"},
          {"name": "sched_yield", "action": "SCMP_ACT_LOG"},
          {"names": ["no_such_call"], "action": "SCMP_ACT_ALLOW"},
          {"names": ["getpid\\u0000x"], "action": "SCMP_ACT_KILL"},
          {"names": ["get\\u001b[2Jpid"], "action": "SCMP_ACT_KILL"}
         ]}
        """
        let imported = try DockerSeccompProfile.parse(data: Data(json.utf8), name: "t.json", kernel: (6, 1))
        #expect(imported.defaultAction == .errno(38))
        let program = try SeccompProgram.compile(try Self.section(imported))
        func v(_ name: String, _ args: [UInt64] = []) throws -> SeccompAction { try program.verdict(SeccompData(nr: nr(name), args: args)) }
        #expect(try v("getppid") == .errno(13))
        #expect(try v("getuid", [0, 0x112]) == .allow)
        #expect(try v("getuid", [0, 0x113]) == .errno(38))
        #expect(try v("getgid") == .errno(38))
        #expect(try v("getegid") == .allow)
        #expect(try v("geteuid") == .errno(38))
        #expect(try v("gettid") == .errno(38))
        #expect(try v("getpgrp") == .allow)
        #expect(try v("getsid") == .killThread)
        #expect(try v("sched_yield") == .log)
        #expect(imported.notes.contains { $0.contains("no_such_call") })
        // A name with a NUL in it is no call's, never the one before the NUL.
        #expect(try v("getpid") == .errno(38))
        // Named in the notes with its control characters escaped, never raw.
        #expect(imported.notes.contains { $0.contains(#""getpid\0x""#) && $0.contains(#""get\u{1B}[2Jpid""#) }, "\(imported.notes)")
        #expect(!imported.notes.contains { $0.utf8.contains(0) || $0.utf8.contains(0x1b) })
        #expect(Syscalls.number(of: "getpid\u{0}x") == nil && Syscalls.number(of: "getpid") != nil)
        #expect(!Syscalls.isForeign("getpid\u{0}x"))
    }

    @Test("a malformed Docker profile is an error that names the place")
    func malformed() {
        #expect(throws: DockerSeccompProfile.ImportError.self) {
            try DockerSeccompProfile.parse(data: Data(#"{"defaultAction": "SCMP_ACT_NOPE"}"#.utf8), name: "t.json", kernel: (6, 1))
        }
        do {
            _ = try DockerSeccompProfile.parse(data: Data(#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"]}]}"#.utf8), name: "t.json", kernel: (6, 1))
            Issue.record("no error")
        } catch {
            #expect(error.description.contains("action") && error.description.contains("syscalls[0]"), "\(error.description)")
        }
    }

    static func section(_ imported: DockerSeccompProfile.Imported) throws -> SeccompSection {
        var s = try profile("[seccomp]\nbase = \"none\"").seccomp
        s.defaultAction = imported.defaultAction
        s.rules = imported.rules
        return s
    }
}
}
