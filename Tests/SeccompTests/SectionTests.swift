import Foundation
import Testing
@testable import StockadeConfig
@testable import StockadeSeccomp
@testable import StockadeJail

/// `[seccomp]` as written in profiles: shapes, and the errors a user can make.
extension SeccompTests {
@Suite struct SectionTests {
    func error(_ text: String) -> ProfileError? {
        do { _ = try Profile.parse(text: text, file: "/tmp/test-profile.toml"); return nil } catch { return error }
    }

    @Test("no [seccomp]: the stock allowlist with errno:EPERM")
    func defaults() throws {
        let s = try profile("").seccomp
        #expect(s.base == .stock)
        #expect(s.defaultAction == .errno(1))
        #expect(s.rules.contains { $0.syscall == "read" && $0.action == .allow })
        #expect(!s.rules.contains { $0.syscall == "ptrace" })
    }

    @Test("the documented shape parses")
    func fullShape() throws {
        let s = try profile("""
        [seccomp]
        default = "kill-process"
        base = "none"
        allow = ["read", "write", "exit_group", "no_such_call?"]
        deny = ["socket"]
        deny_action = "errno:EACCES"
        allow_dangerous = { ptrace = "debugger worker" }

        [[seccomp.rule]]
        syscalls = ["ioctl"]
        action = "allow"
        args = ["arg1 == TCGETS", "arg0 <= 2"]

        [[seccomp.rule]]
        syscall = "mmap"
        action = "errno:ENOMEM"
        args = ["arg2 & PROT_EXEC == PROT_EXEC"]

        [[seccomp.rule]]
        syscall = "ptrace"
        action = "log"
        """).seccomp
        #expect(s.defaultAction == .killProcess)
        #expect(s.base == .none)
        #expect(s.rules.map(\.syscall) == ["read", "write", "exit_group", "socket", "ioctl", "mmap", "ptrace"])
        #expect(s.rules[3].action == .errno(13))
        #expect(s.rules[4].conditions == [SeccompCondition(arg: 1, op: .eq, value: 0x5401), SeccompCondition(arg: 0, op: .le, value: 2)])
        #expect(s.rules[5].conditions == [SeccompCondition(arg: 2, op: .maskedEq, value: 4, mask: 4)])
        #expect(s.allowDangerous == ["ptrace": "debugger worker"])
        #expect(s.notes.contains { $0.contains("no_such_call skipped") })
        #expect(s.rules[4].origin == "/tmp/test-profile.toml:9")  // the [[seccomp.rule]] line
    }

    @Test("an unknown system call is an error at its line, unless marked optional")
    func unknownName() {
        let e = error("""
        [jail]
        name = "x"

        [seccomp]
        allow = ["read", "reed"]
        """)
        #expect(e?.line == 5)
        #expect(e?.key == "seccomp.allow")
        #expect(e?.message.contains("reed") == true)
        #expect(e?.message.contains("optional") == true)
        // A name with a terminal escape in it is shown escaped, never raw.
        let escaped = error("""
        [seccomp]
        allow = ["read", "re\\u001b[2Jad"]
        """)
        #expect(escaped?.key == "seccomp.allow")
        #expect(escaped?.message.contains(#""re\u{1B}[2Jad""#) == true, "\(String(describing: escaped))")
        #expect(escaped?.message.utf8.contains(0x1b) == false)
        let rule = error("""
        [seccomp]
        [[seccomp.rule]]
        syscall = "frobnicate"
        action = "allow"
        """)
        #expect(rule?.line == 3, "\(String(describing: rule))")
        #expect(error("[seccomp]\n[[seccomp.rule]]\nsyscall = \"frobnicate\"\naction = \"allow\"\noptional = true") == nil)
    }

    @Test("a name of another architecture is named as such")
    func foreignName() {
        #expect(error("[seccomp]\nallow = [\"socketcall\"]")?.message.contains("not a system call on this architecture") == true)
    }

    @Test("allowing an always-denied call needs allow_dangerous with a reason")
    func dangerousNeedsReason() {
        let e = error("[seccomp]\nallow = [\"read\", \"bpf\"]")
        #expect(e?.message.contains("allow_dangerous") == true)
        #expect(e?.line == 2)
        #expect(error("[seccomp]\nallow = [\"bpf\"]\nallow_dangerous = { bpf = \"\" }")?.message.contains("reason") == true)
        #expect(error("[seccomp]\nallow_dangerous = { read = \"why\" }")?.message.contains("not one of the hardened calls") == true)
        // Conditionally hardened calls (clone, ioctl, ...) may be allowed: the hardening checks their arguments.
        #expect(error("[seccomp]\nallow = [\"clone\", \"ioctl\", \"personality\", \"unshare\"]") == nil)
    }

    @Test("bad actions and conditions are named")
    func badActionsAndConditions() {
        #expect(error("[seccomp]\ndefault = \"explode\"")?.message.contains("unknown action") == true)
        #expect(error("[seccomp]\ndefault = \"errno:ENOTANERRNO\"")?.message.contains("unknown action") == true)
        #expect(error("[seccomp]\ndeny_action = \"allow\"")?.message.contains("not a denying action") == true)
        for (cond, fragment) in [("arg6 == 1", "arg0 ... arg5"), ("arg0 =~ 1", "unknown comparison"),
                                 ("arg0 == banana", "banana"), ("arg0 & 0xf == 0x10", "outside mask"),
                                 ("arg0 & 0xf != 1", "masked comparison")] {
            let e = error("[seccomp]\n[[seccomp.rule]]\nsyscall = \"read\"\naction = \"allow\"\nargs = [\"\(cond)\"]")
            #expect(e?.message.contains(fragment) == true, "\(cond): \(String(describing: e))")
            #expect(e?.line == 5)
        }
        #expect(error("[seccomp]\n[[seccomp.rule]]\nsyscall = \"read\"\naction = \"allow\"\nargs = [\"arg0 > 1\", \"arg0 < 5\"]")?
            .message.contains("twice") == true)
        #expect(error("[seccomp]\n[[seccomp.rule]]\naction = \"allow\"")?.message.contains("syscall") == true)
        #expect(error("[seccomp]\n[[seccomp.rule]]\nsyscall = \"read\"")?.message.contains("action") == true)
        #expect(error("[seccomp]\n[[seccomp.rule]]\nsyscall = \"read\"\naction = \"allow\"\nwhen = 1")?.key == "seccomp.rule[0].when")
        #expect(error("[seccomp]\nallowed = [\"read\"]")?.key == "seccomp.allowed")
    }

    @Test("rules that libseccomp would silently overrule are refused")
    func conflicts() {
        let e = error("""
        [seccomp]
        base = "none"
        allow = ["ioctl"]
        [[seccomp.rule]]
        syscall = "ioctl"
        action = "errno:EPERM"
        args = ["arg1 == FIONREAD"]
        """)
        #expect(e?.message.contains("unconditional") == true, "\(String(describing: e))")
        #expect(error("[seccomp]\nbase = \"none\"\nallow = [\"read\"]\ndeny = [\"read\"]")?.message.contains("unconditional") == true)
    }

    @Test("import and base exclude each other; a missing Docker file is named")
    func importErrors() {
        #expect(error("[seccomp]\nbase = \"none\"\nimport = \"docker:x.json\"")?.message.contains("either base or import") == true)
        #expect(error("[seccomp]\nimport = \"x.json\"")?.message.contains("docker:PATH") == true)
        let e = error("[seccomp]\nimport = \"docker:missing.json\"")
        #expect(e?.message.contains("/tmp/missing.json") == true, "\(String(describing: e))")
        #expect(e?.line == 2)
        #expect(error("[seccomp]\nimport = \"docker:/dev/zero\"")?.message.contains("not a regular file") == true)
    }

    @Test("a kill-process default kills in the kernel; the profile's own errno comes back")
    func defaultActionsInKernel() throws {
        let kill = try profile("[seccomp]\ndefault = \"kill-process\"\ndeny = [\"getppid\"]\ndeny_action = \"errno:EACCES\"").seccomp.compile()
        #expect(try Helpers.sysc(kill, [String(nr("kcmp")), "0", "0", "0", "0", "0"]).isKilled)
        #expect(try Helpers.sysc(kill, [String(nr("getppid"))]) == .errno(13))
        guard case .returned = try Helpers.sysc(kill, [String(nr("getpid"))]) else { Issue.record("getpid failed"); return }
    }

    @Test("actions round-trip through their spellings")
    func actionSpellings() {
        for a: SeccompAction in [.allow, .errno(1), .errno(4000), .killProcess, .killThread, .trap, .log, .notify] {
            #expect(SeccompAction(parsing: a.description) == a)
            #expect(SeccompAction(raw: a.raw) == a)
        }
        #expect(SeccompAction(parsing: "kill") == .killProcess)
        #expect(SeccompAction(parsing: "errno:13") == .errno(13))
        #expect(SeccompAction(parsing: "errno:0") == nil)
    }

    @Test("compile output names calls and actions")
    func disassembly() throws {
        let program = try SeccompSection().compile()
        let text = SeccompDisassembler.render(program.instructions, preludeCount: program.preludeCount)
        #expect(text.contains("; clone3"))
        #expect(text.contains("; x32 bit"))
        #expect(text.contains("; kill-process"))
        #expect(text.contains("; errno:ENOSYS"))
        #expect(text.contains("; A = arg1.lo"))
        #expect(text.contains("; profile policy (by number; then libseccomp"))
        #expect(text.split(separator: "\n").count == program.instructions.count + 2)
        #expect(BPFInstruction.decode(program.bytes) == program.instructions)
    }
}
}
