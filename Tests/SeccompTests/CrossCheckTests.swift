import Foundation
import Testing
@testable import StockadeSeccomp

/// The BPF interpreter in StockadeSeccomp against the kernel: the same
/// program, the same system call and arguments, the same verdict. The
/// policy answers with errno values no real call returns (4000-4007), so
/// "the filter said no" cannot be confused with "the kernel said no".
extension SeccompTests {
@Suite struct CrossCheckTests {
    static let policyText = """
    [seccomp]
    default = "errno:4000"
    [[seccomp.rule]]
    syscall = "getppid"
    action = "errno:4001"
    args = ["arg0 == 5"]
    [[seccomp.rule]]
    syscall = "getuid"
    action = "errno:4002"
    args = ["arg0 != 5"]
    [[seccomp.rule]]
    syscall = "getgid"
    action = "errno:4003"
    args = ["arg1 < 100"]
    [[seccomp.rule]]
    syscall = "geteuid"
    action = "errno:4004"
    args = ["arg2 <= 100"]
    [[seccomp.rule]]
    syscall = "getegid"
    action = "errno:4005"
    args = ["arg3 > 100"]
    [[seccomp.rule]]
    syscall = "gettid"
    action = "errno:4006"
    args = ["arg4 >= 100"]
    [[seccomp.rule]]
    syscall = "getpgrp"
    action = "errno:4007"
    args = ["arg5 & 0xff00 == 0x1200"]
    [[seccomp.rule]]
    syscall = "sched_yield"
    action = "allow"
    args = ["arg0 == 1", "arg1 & 0xf == 2"]
    """
    static let program: SeccompProgram = try! profile(policyText).seccomp.compile()

    static let values: [UInt64] = [0, 5, 99, 100, 101, 0x1200, 0x12ff, 0x1300, 0x1_0000_0005,
                                   0x1_0000_1200, 0xffff_ffff, 0xffff_ffff_ffff_ffff]
    static let slots: [(String, Int)] = [("getppid", 0), ("getuid", 0), ("getgid", 1), ("geteuid", 2),
                                         ("getegid", 3), ("gettid", 4), ("getpgrp", 5)]

    struct Input: CustomStringConvertible, Sendable {
        var mode: String?  // "--x32", "--int80"
        var nr: Int32
        var args: [UInt64]
        var description: String { "\(mode ?? "") \(nr) \(args.map { "0x" + String($0, radix: 16) })" }

        var data: SeccompData {
            switch mode {
            case "--int80": return SeccompData(nr: nr, arch: SeccompArch.i386, args: args.map { $0 & 0xffff_ffff })
            case "--x32": return SeccompData(nr: nr | Int32(SeccompArch.x32SyscallBit), args: args)
            default: return SeccompData(nr: nr, args: args)
            }
        }
    }

    static let inputs: [Input] = {
        var list: [Input] = []
        for (name, slot) in slots {
            for v in values {
                var args = [UInt64](repeating: 0, count: 6)
                args[slot] = v
                list.append(Input(mode: nil, nr: nr(name), args: args))
            }
        }
        for a0: UInt64 in [0, 1, 0x1_0000_0001] {
            for a1: UInt64 in [2, 0x12, 0xf2, 3] { list.append(Input(mode: nil, nr: nr("sched_yield"), args: [a0, a1])) }
        }
        // Calls the policy does not mention, and the hardening's paths.
        for name in ["getpid", "getpriority", "mount", "clone3", "ptrace"] { list.append(Input(mode: nil, nr: nr(name), args: [0, 0])) }
        list.append(Input(mode: nil, nr: 1000, args: []))
        list.append(Input(mode: "--x32", nr: nr("getppid"), args: []))
        list.append(Input(mode: "--int80", nr: 20, args: []))
        list.append(Input(mode: "--int80", nr: 64, args: []))  // getppid on i386
        return list
    }()

    @Test("the interpreter's verdict matches the kernel's", arguments: inputs)
    func interpreterMatchesKernel(_ input: Input) throws {
        let verdict = try Self.program.verdict(input.data)
        var argv = input.mode.map { [$0] } ?? []
        argv.append(String(input.nr))
        argv += input.args.map { String($0) }
        let kernel = try Helpers.sysc(Self.program, argv)
        switch verdict {
        case .errno(let e):
            #expect(kernel == .errno(e), "\(input): interpreter \(verdict), kernel \(kernel)")
        case .killProcess, .killThread:
            #expect(kernel.isKilled, "\(input): interpreter \(verdict), kernel \(kernel)")
        case .allow:
            if case .errno(let e) = kernel { #expect(!(4000...4007).contains(e), "\(input): interpreter allows, kernel \(kernel)") }
            #expect(!kernel.isKilled, "\(input): interpreter allows, kernel \(kernel)")
        default:
            Issue.record("unexpected verdict \(verdict) for \(input)")
        }
    }

    /// libseccomp's generated comparisons against the plain meaning of each
    /// condition, on many 64-bit values (no kernel needed; fast enough for
    /// thousands of inputs).
    @Test("compiled argument comparisons mean what the conditions say")
    func comparisonsMatchTheirMeaning() throws {
        var rng = SystemRandomNumberGenerator()
        let interesting: [UInt64] = [0, 1, 4, 5, 6, 99, 100, 101, 0xff00, 0x1200, 0x12ff, 0xffff_ffff,
                                     0x1_0000_0000, 0x1_0000_0005, 0x8000_0000_0000_0000, .max]
        let p = try profile(Self.policyText).seccomp
        for _ in 0..<4000 {
            let pick: () -> UInt64 = { Bool.random(using: &rng) ? interesting.randomElement(using: &rng)! : UInt64.random(in: 0...UInt64.max, using: &rng) }
            let args = (0..<6).map { _ in pick() }
            for (name, _) in Self.slots {
                let rule = p.rules.first { $0.syscall == name }!
                let expected: SeccompAction = rule.conditions.allSatisfy { $0.matches(args[$0.arg]) } ? rule.action : .errno(4000)
                let got = try Self.program.verdict(SeccompData(nr: nr(name), args: args))
                #expect(got == expected, "\(name) \(args): \(got) vs \(expected)")
            }
        }
    }
}
}
