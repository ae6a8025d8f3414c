public import StockadeSeccomp
import StockadeJail

/// Known compiler bugs of other seccomp tools, each as a profile and calls
/// with the answer written out by hand (neither the compiler nor the
/// reference decides it). `stockade fuzz` runs them before any mutant.
public struct RegressionCase: Sendable {
    public var name: String
    public var why: String
    public var seccomp: String
    /// (call, expected verdict as the profile spells it).
    public var calls: [(SeccompData, String)]

    static func nr(_ name: String) -> Int32 { Syscalls.number(of: name) ?? -1 }
    static let x32 = Int32(bitPattern: SeccompArch.x32SyscallBit)

    public static let all: [RegressionCase] = [
        RegressionCase(
            name: "kafel x32 hole",
            why: "x32 calls carry AUDIT_ARCH_X86_64 and bit 30 in the number; a filter that checks only the arch lets x32 numbers (and x32 aliases of denied calls) through",
            seccomp: "[seccomp]\ndefault = \"errno:EPERM\"\nbase = \"none\"\nallow = [\"read\", \"write\", \"getppid\"]\n",
            calls: [
                (SeccompData(nr: nr("read") | x32), "kill-process"),
                (SeccompData(nr: nr("getppid") | x32), "kill-process"),
                (SeccompData(nr: 521 | x32), "kill-process"),  // x32 ptrace
                (SeccompData(nr: 0x4000_0000), "kill-process"),
                (SeccompData(nr: nr("getppid")), "allow"),
            ]),
        RegressionCase(
            name: "libseccomp 64-bit comparisons",
            why: "libseccomp before 2.5 compared 64-bit arguments with <, <=, >, >= word by word and got the high-word-equal cases wrong",
            seccomp: """
            [seccomp]
            default = "allow"
            base = "none"
            [[seccomp.rule]]
            syscall = "mmap"
            action = "errno:EACCES"
            args = ["arg1 > 0x100000000"]
            [[seccomp.rule]]
            syscall = "munmap"
            action = "errno:EACCES"
            args = ["arg1 <= 0x1ffffffff"]
            [[seccomp.rule]]
            syscall = "mremap"
            action = "errno:EACCES"
            args = ["arg1 >= 0x200000000"]
            [[seccomp.rule]]
            syscall = "msync"
            action = "errno:EACCES"
            args = ["arg1 < 0x100000005"]

            """,
            calls: [
                (SeccompData(nr: nr("mmap"), args: [0, 0x1_0000_0001]), "errno:EACCES"),
                (SeccompData(nr: nr("mmap"), args: [0, 0x1_0000_0000]), "allow"),
                (SeccompData(nr: nr("mmap"), args: [0, 0x0_ffff_ffff]), "allow"),
                (SeccompData(nr: nr("mmap"), args: [0, 0x2_0000_0000]), "errno:EACCES"),
                (SeccompData(nr: nr("munmap"), args: [0, 0x1_ffff_ffff]), "errno:EACCES"),
                (SeccompData(nr: nr("munmap"), args: [0, 0x2_0000_0000]), "allow"),
                (SeccompData(nr: nr("munmap"), args: [0, 0x2_0000_0001]), "allow"),
                (SeccompData(nr: nr("mremap"), args: [0, 0x1_ffff_ffff]), "allow"),
                (SeccompData(nr: nr("mremap"), args: [0, 0x2_0000_0000]), "errno:EACCES"),
                (SeccompData(nr: nr("msync"), args: [0, 0x1_0000_0004]), "errno:EACCES"),
                (SeccompData(nr: nr("msync"), args: [0, 0x1_0000_0005]), "allow"),
                (SeccompData(nr: nr("msync"), args: [0, 0x0_ffff_ffff]), "errno:EACCES"),
            ]),
        RegressionCase(
            name: "i386 setuid32",
            why: "a filter written for x86_64 numbers reads i386's setuid32 (213) as x86_64's 213 (epoll_create); an arch check must come first",
            seccomp: "[seccomp]\ndefault = \"errno:EPERM\"\nbase = \"none\"\nallow = [\"epoll_create\", \"getppid\"]\n",
            calls: [
                (SeccompData(nr: 213, arch: SeccompArch.i386), "kill-process"),
                (SeccompData(nr: 213, arch: SeccompArch.i386, args: [0]), "kill-process"),
                (SeccompData(nr: 213), "allow"),
            ]),
        RegressionCase(
            name: "socketcall bypass",
            why: "on i386, socket(2) is also reachable through socketcall(SYS_SOCKET, ...), whose arguments sit in memory a filter cannot read; socket rules must not be walked around through it",
            seccomp: """
            [seccomp]
            default = "errno:EPERM"
            base = "none"
            [[seccomp.rule]]
            syscall = "socket"
            action = "allow"
            args = ["arg0 == AF_UNIX"]

            """,
            calls: [
                (SeccompData(nr: 102, arch: SeccompArch.i386, args: [1, 0]), "kill-process"),  // socketcall(SYS_SOCKET)
                (SeccompData(nr: 359, arch: SeccompArch.i386, args: [16, 3, 0]), "kill-process"),  // i386 socket
                (SeccompData(nr: nr("socket"), args: [1, 1, 0]), "allow"),
                (SeccompData(nr: nr("socket"), args: [16, 3, 0]), "errno:EPERM"),
            ]),
        RegressionCase(
            name: "high-word garbage on int arguments",
            why: "the kernel reads an int argument's low 32 bits; a filter comparing all 64 bits is walked around with a high bit (socket(AF_NETLINK | 1 << 32)), or denies a call it should allow",
            seccomp: """
            [seccomp]
            default = "allow"
            base = "none"
            [[seccomp.rule]]
            syscall = "socket"
            action = "errno:EACCES"
            args = ["arg0 == AF_NETLINK"]
            [[seccomp.rule]]
            syscall = "socketpair"
            action = "errno:EACCES"
            args = ["arg0 != AF_UNIX"]

            """,
            calls: [
                (SeccompData(nr: nr("socket"), args: [0x1_0000_0010, 3, 0]), "errno:EACCES"),
                (SeccompData(nr: nr("socket"), args: [0xffff_ffff_0000_0010, 3, 0]), "errno:EACCES"),
                (SeccompData(nr: nr("socket"), args: [0x10, 3, 0]), "errno:EACCES"),
                (SeccompData(nr: nr("socket"), args: [0x1_0000_0002, 1, 0]), "allow"),
                (SeccompData(nr: nr("socketpair"), args: [0xdead_beef_0000_0001, 1, 0]), "allow"),
                (SeccompData(nr: nr("socketpair"), args: [0x2, 1, 0]), "errno:EACCES"),
                (SeccompData(nr: nr("ioctl"), args: [0, 0xdead_beef_0000_5412]), "errno:EPERM"),  // TIOCSTI through the prelude
                (SeccompData(nr: nr("clone"), args: [0x1_1000_0000]), "errno:EPERM"),  // CLONE_NEWUSER with a high bit
            ]),
    ]

    /// Runs the case: the compiled filter and the reference must both give
    /// the written verdicts. Returns the mismatches.
    public func check() -> [String] {
        let text = "[jail]\nname = \"regression\"\n" + seccomp
        let program: SeccompProgram
        let reference: ReferencePolicy
        do {
            program = try Profile.parse(text: text, file: "\(name).toml").seccomp.compile()
            reference = try ReferencePolicy(text: text, file: "\(name).toml")
        } catch {
            return ["\(name): the profile does not compile: \(error)"]
        }
        var problems: [String] = []
        for (call, spelled) in calls {
            guard let want = SeccompAction(parsing: spelled) else { return ["\(name): bad expectation \(spelled)"] }
            let got = SeccompMachine.action((try? runBPF(program.instructions, on: call)) ?? 0)
            if got != want { problems.append("\(name): \(CallCorpus.describe(call)): the filter says \(got), expected \(want) (\(why))") }
            let ref = SeccompMachine.action(reference.verdict(call))
            if ref != want { problems.append("\(name): \(CallCorpus.describe(call)): the reference says \(ref), expected \(want)") }
        }
        return problems
    }
}
