import Foundation
import Testing
@testable import StockadeSeccomp

/// The hardening every jail gets, checked against the running kernel: each
/// call runs in a fresh `sysc` process under the compiled filter. The test
/// process is root with every capability, so a call the filter let through
/// would reach the kernel: the arguments are chosen so that such a call
/// fails harmlessly with an error other than the filter's (EFAULT, EINVAL,
/// EBADF, ...), and the test would see it.
extension SeccompTests {
@Suite struct HardeningTests {
    static let stock: SeccompProgram = try! SeccompSection().compile()

    struct Case: CustomStringConvertible, Sendable {
        var name: String
        var args: [UInt64]
        var expect: Expect
        enum Expect: Sendable { case errno(Int32), killed }
        var description: String { "\(name)(\(args.map { "0x" + String($0, radix: 16) }.joined(separator: ", ")))" }
    }

    static let EPERM: Int32 = 1, ENOSYS: Int32 = 38
    static let bad: UInt64 = 0xffff_ffff_ffff_ffff  // -1: a bad fd, an impossible flag set
    static let CLONE_SIGHAND: UInt64 = 0x800, CLONE_VFORK: UInt64 = 0x4000

    static let denied: [Case] = {
        var c: [Case] = []
        func deny(_ name: String, _ args: [UInt64] = [], _ e: Int32 = EPERM) { c.append(Case(name: name, args: args, expect: .errno(e))) }
        deny("clone3", [0, 0], ENOSYS)
        // Each namespace flag with CLONE_SIGHAND (invalid without CLONE_VM): EINVAL if it got through.
        for flag in ["CLONE_NEWNS", "CLONE_NEWCGROUP", "CLONE_NEWUTS", "CLONE_NEWIPC", "CLONE_NEWUSER", "CLONE_NEWPID", "CLONE_NEWNET"] {
            deny("clone", [SeccompConstants.table[flag]! | CLONE_SIGHAND])
        }
        // unshare with CLONE_VFORK (not an unshare flag): EINVAL if it got through.
        for flag in ["CLONE_NEWNS", "CLONE_NEWCGROUP", "CLONE_NEWUTS", "CLONE_NEWIPC", "CLONE_NEWUSER", "CLONE_NEWPID", "CLONE_NEWNET", "CLONE_NEWTIME"] {
            deny("unshare", [SeccompConstants.table[flag]! | CLONE_VFORK])
        }
        deny("setns", [bad, 0])
        // ioctl on fd -1: EBADF if it got through; also with junk in the high bits.
        deny("ioctl", [bad, SeccompConstants.TIOCSTI, 0])
        deny("ioctl", [bad, 0x123 << 32 | SeccompConstants.TIOCSTI, 0])
        deny("ioctl", [bad, 0xffff_ffff << 32 | SeccompConstants.TIOCSTI, 0])
        deny("ioctl", [bad, SeccompConstants.TIOCLINUX, 0])
        deny("ioctl", [bad, 0x1 << 32 | SeccompConstants.TIOCLINUX, 0])
        deny("personality", [0x40_0000])  // READ_IMPLIES_EXEC
        deny("personality", [0x4_0000])   // ADDR_NO_RANDOMIZE
        deny("io_uring_setup", [0, 0]); deny("io_uring_enter", [bad, 0, 0, bad]); deny("io_uring_register", [bad, bad])
        deny("bpf", [0xffff, 0, 0]); deny("perf_event_open", [0, 0, bad, bad, 0]); deny("userfaultfd", [0xffff_ffff])
        deny("keyctl", [0xffff]); deny("add_key", [0, 0, 0, 0, 0]); deny("request_key", [0, 0, 0, 0])
        deny("ptrace", [bad, 0]); deny("process_vm_readv", [0, 0, 0, 0, 0, 0]); deny("process_vm_writev", [0, 0, 0, 0, 0, 0])
        deny("mount", [0, 0, 0, 0, 0]); deny("umount2", [0, 0]); deny("pivot_root", [0, 0]); deny("chroot", [0])
        deny("fsopen", [0, 0]); deny("fsconfig", [bad, bad, 0, 0, 0]); deny("fsmount", [bad, 0, 0]); deny("fspick", [bad, 0, 0])
        deny("open_tree", [bad, 0, 0]); deny("move_mount", [bad, 0, bad, 0, 0xffff_ffff]); deny("mount_setattr", [bad, 0, 0xffff_ffff, 0, 0])
        deny("kexec_load", [0, 0, 0, 0xffff_ffff]); deny("kexec_file_load", [bad, bad, 0, 0, 0xffff])
        deny("reboot", [0, 0, 0, 0])  // bad magic: EINVAL if it got through
        deny("init_module", [0, 0, 0]); deny("finit_module", [bad, 0, 0]); deny("delete_module", [0, 0]); deny("create_module", [0, 0])
        deny("open_by_handle_at", [bad, 0, 0])
        deny("swapon", [0, 0]); deny("swapoff", [0]); deny("acct", [1]); deny("quotactl", [0xffff_ffff, 0, 0, 0])
        deny("quotactl_fd", [bad, 0, 0, 0]); deny("lookup_dcookie", [0, 0, 0]); deny("syslog", [0xffff, 0, 0])
        deny("nfsservctl"); deny("iopl", [0xff]); deny("ioperm", [0xffff_ffff, 0xffff_ffff, 0])
        deny("settimeofday", [0, 0]); deny("clock_settime", [0xffff, 0]); deny("clock_adjtime", [0xffff, 0])
        return c
    }()

    @Test("a hardened call is denied by the kernel-loaded filter", arguments: denied)
    func deniedInKernel(_ c: Case) throws {
        var args = [String(nr(c.name))]
        args += c.args.map { String($0) }
        let got = try Helpers.sysc(Self.stock, args)
        switch c.expect {
        case .errno(let e): #expect(got == .errno(e), "\(c)")
        case .killed: #expect(got.isKilled, "\(c)")
        }
        // The interpreter agrees with the kernel.
        let verdict = try Self.stock.verdict(SeccompData(nr: nr(c.name), args: c.args))
        if case .errno(let e) = c.expect { #expect(verdict == .errno(e), "\(c)") }
    }

    /// x32 (bit 30 in the number) and i386 (int 0x80) calls never reach the
    /// allowlist: the process dies, even for getpid.
    @Test("x32 and int 0x80 calls kill the process",
          arguments: [["--x32", "39"], ["--x32", "272", "0x10000000"], ["--x32", "165", "0", "0", "0", "0", "0"],
                      ["--x32", "0x200"], ["--int80", "20"], ["--int80", "21", "0", "0", "0", "0", "0"],
                      ["--int80", "26", "0", "0"], ["--int80", "310", "0"], ["--int80", "1"]])
    func otherArchitecturesKilled(_ args: [String]) throws {
        let got = try Helpers.sysc(Self.stock, args)
        #expect(got == .killed(SIGSYS), "\(args): \(got)")
    }

    @Test("numbers past the table and -1 answer ENOSYS", arguments: ["1000", "0xffffffff", "0x80000000", String(Syscalls.highestKnown + 1)])
    func unknownNumbers(_ number: String) throws {
        #expect(try Helpers.sysc(Self.stock, [number]) == .errno(Self.ENOSYS))
    }

    @Test("the harmless forms still pass the hardening")
    func allowedForms() throws {
        let EBADF: Int32 = 9
        // ioctl on fd -1 with an ordinary request: the kernel says EBADF.
        #expect(try Helpers.sysc(Self.stock, [String(nr("ioctl")), "-1", String(SeccompConstants.table["FIONREAD"]!), "0"]) == .errno(EBADF))
        // The personalities Docker allows, and the query.
        for p in ["0", "8", "0xffffffff"] {
            let got = try Helpers.sysc(Self.stock, [String(nr("personality")), p])
            guard case .returned = got else { Issue.record("personality(\(p)): \(got)"); continue }
        }
        // unshare without namespace flags, where the profile allows unshare.
        let withUnshare = try profile("[seccomp]\nallow = [\"unshare\"]").seccomp.compile()
        #expect(try Helpers.sysc(withUnshare, [String(nr("unshare")), String(SeccompConstants.table["CLONE_FILES"]!)]) == .returned(0))
        #expect(try Helpers.sysc(withUnshare, [String(nr("unshare")), String(SeccompConstants.table["CLONE_NEWUSER"]!)]) == .errno(Self.EPERM))
        #expect(try Helpers.sysc(Self.stock, [String(nr("getpid"))]) != .errno(Self.EPERM))
    }

    @Test("threads, fork, exec, mmap, pipes, epoll, signals and sockets work under the stock filter")
    func ordinaryWorkStillWorks() throws {
        let r = try Helpers.run(Self.stock, [try Helpers.path("works")])
        #expect(r == .exited(0, stdout: "ok thread\nok fork\nok exec\nok mmap\nok pipe\nok epoll\nok signal\nok socketpair\nok socket\n", stderr: ""))
    }

    static let python = Helpers.repository.appendingPathComponent(".venv/bin/python3").path
    static var venvIsBuilt: Bool { FileManager.default.isExecutableFile(atPath: python) }

    @Test("Python imports numpy, starts threads and a subprocess under the stock filter",
          .enabled(if: venvIsBuilt, "needs the repository venv (make venv)"))
    func pythonWithNumpy() throws {
        let script = """
        import numpy, threading, socket, subprocess, sys
        a = numpy.arange(1_000_000, dtype=numpy.float64).reshape(1000, 1000)
        s = float((a @ a.T).trace())
        out = []
        t = threading.Thread(target=lambda: out.append(numpy.linalg.norm(a[:10])))
        t.start(); t.join()
        x, y = socket.socketpair(); x.send(b"hi"); assert y.recv(2) == b"hi"
        r = subprocess.run([sys.executable, "-c", "print(6*7)"], capture_output=True, text=True)
        print("ok", s > 0, len(out), r.stdout.strip())
        """
        let r = try Helpers.run(Self.stock, [Self.python, "-c", script])
        #expect(r == .exited(0, stdout: "ok True 1 42\n", stderr: ""))
    }

    @Test("allow_dangerous lifts exactly one hardening entry")
    func liftingOneEntry() throws {
        let p = try profile("""
        [seccomp]
        allow = ["ptrace"]
        allow_dangerous = { ptrace = "the debugger worker attaches to its own children" }
        """)
        let program = try p.seccomp.compile()
        // ptrace(-1 request, pid 0): the kernel answers (ESRCH/EIO), not the filter's EPERM.
        let got = try Helpers.sysc(program, [String(nr("ptrace")), String(Self.bad), "0"])
        #expect(got != .errno(Self.EPERM) && !got.isKilled, "\(got)")
        #expect(try Helpers.sysc(program, [String(nr("mount")), "0", "0", "0", "0", "0"]) == .errno(Self.EPERM))
    }
}
}
