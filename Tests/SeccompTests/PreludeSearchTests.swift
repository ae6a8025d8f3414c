import Foundation
import Testing
@testable import StockadeSeccomp

/// The hardening prelude is a binary search over the hardened numbers (jge
/// splits, jeq leaves). A wrong split sends a number down the wrong half,
/// where it matches nothing and passes: the hardening silently gone for it,
/// or a neighbour denied. These tests put every number, and each number
/// beside a hardened one, through the prelude and compare the verdict with
/// the hardening table read directly, in the interpreter and in the kernel.
/// In the interpreter the policy behind the prelude allows nothing and
/// answers errno 4000, which no real call returns. In the kernel the helper
/// must still exec, so the policy there is the stock allowlist with errno
/// 4000 for the rest, and only numbers it does not allow are tried: no call
/// under test ever reaches the kernel's implementation (the test process
/// is root).
extension SeccompTests {
@Suite struct PreludeSearchTests {
    static let policy: SeccompProgram = try! profile("""
        [seccomp]
        base = "none"
        default = "errno:4000"
        """).seccomp.compile()

    static let stockSection: SeccompSection = try! profile("""
        [seccomp]
        default = "errno:4000"
        """).seccomp
    static let stock: SeccompProgram = try! stockSection.compile()

    static let policyErrno: Int32 = 4000, EPERM: Int32 = 1, ENOSYS: Int32 = 38
    static let highest = UInt32(Syscalls.highestKnown)

    /// The verdict the hardening table gives a call with all arguments 0,
    /// on the native architecture: what the prelude must do.
    static func expected(_ nr: UInt32, x32: Bool = false) -> SeccompAction {
        if nr == 0xffff_ffff { return .errno(ENOSYS) }
        if x32 || nr & SeccompArch.x32SyscallBit != 0 { return .killProcess }
        if nr > highest { return .errno(ENOSYS) }
        if let call = HardenedCall.all.first(where: { Syscalls.number(of: $0.name).map(UInt32.init) == nr }),
           case .deny(let e) = call.check {
            return .errno(e)
        }
        // clone, unshare, ioctl and personality with 0 arguments are harmless forms.
        return .errno(policyErrno)
    }

    static var hardenedNumbers: [UInt32] {
        HardenedCall.all.compactMap { Syscalls.number(of: $0.name) }.map(UInt32.init).sorted()
    }

    /// Each hardened number and its neighbours: the values on both sides of
    /// every split and at both ends of every leaf.
    static let boundaries: [UInt32] = {
        var set = Set<UInt32>([0, highest, highest + 1, highest + 2])
        for n in hardenedNumbers { set.formUnion([n &- 1, n, n + 1]) }
        return set.filter { $0 <= highest + 2 }.sorted()
    }()

    /// The boundaries the stock allowlist does not allow (so the kernel
    /// answers them from the filter alone).
    static let kernelBoundaries: [UInt32] = boundaries.filter { nr in
        !stockSection.rules.contains { UInt32(bitPattern: $0.number) == nr && $0.action.permits }
    }

    @Test("every number below and past the table gets the table's verdict (interpreter)")
    func everyNumberInTheInterpreter() throws {
        for nr in 0...(Self.highest + 64) {
            let got = try Self.policy.verdict(SeccompData(nr: Int32(bitPattern: nr)))
            #expect(got == Self.expected(nr), "nr \(nr): \(got), the table says \(Self.expected(nr))")
            let x32 = try Self.policy.verdict(SeccompData(nr: Int32(bitPattern: nr | SeccompArch.x32SyscallBit)))
            #expect(x32 == .killProcess, "x32 nr \(nr): \(x32)")
            let i386 = try Self.policy.verdict(SeccompData(nr: Int32(bitPattern: nr), arch: SeccompArch.i386))
            #expect(i386 == .killProcess, "i386 nr \(nr): \(i386)")
        }
        for nr: UInt32 in [0xffff_ffff, 0x8000_0000, 0x3fff_ffff, 0x7fff_ffff] {
            let got = try Self.policy.verdict(SeccompData(nr: Int32(bitPattern: nr)))
            #expect(got == Self.expected(nr), "nr \(String(nr, radix: 16)): \(got)")
        }
    }

    @Test("numbers beside each split and leaf: the kernel agrees with the table", arguments: kernelBoundaries)
    func boundaryInKernel(_ nr: UInt32) throws {
        let kernel = try Helpers.sysc(Self.stock, [String(nr), "0", "0", "0", "0", "0", "0"])
        guard case .errno(let e) = Self.expected(nr) else { Issue.record("no errno expected for \(nr)"); return }
        #expect(kernel == .errno(e), "nr \(nr): kernel \(kernel), the table says errno \(e)")
    }

    @Test("the x32 bit and another architecture are killed on either side of every split",
          arguments: hardenedNumbers.filter { $0 % 3 == 0 } + [0, 16, highest])
    func otherABIsInKernel(_ nr: UInt32) throws {
        let x32 = try Helpers.sysc(Self.stock, ["--x32", String(nr)])
        #expect(x32.isKilled, "x32 nr \(nr): \(x32)")
        let i386 = try Helpers.sysc(Self.stock, ["--int80", String(nr % 400)])
        #expect(i386.isKilled, "int 0x80 nr \(nr % 400): \(i386)")
    }

    /// How many prelude instructions a call runs before it returns or falls
    /// into the policy (the prelude reads only nr and arch).
    static func preludeSteps(_ program: SeccompProgram, nr: UInt32) -> Int? {
        var pc = 0, a: UInt32 = 0, steps = 0
        while pc < program.preludeCount {
            let ins = program.instructions[pc]
            steps += 1
            switch ins.code & 0x07 {
            case BPFInstruction.LD:
                guard ins.k == 0 || ins.k == 4 else { return steps }  // an argument: a handler, past the search
                a = ins.k == 0 ? nr : SeccompArch.x86_64
                pc += 1
            case BPFInstruction.JMP:
                let op = ins.code & 0xf0
                if op == BPFInstruction.JA { pc += 1 + Int(ins.k); continue }
                let taken = op == BPFInstruction.JEQ ? a == ins.k : op == BPFInstruction.JGE ? a >= ins.k
                    : op == BPFInstruction.JGT ? a > ins.k : (a & ins.k) != 0
                pc += 1 + Int(taken ? ins.jt : ins.jf)
            default:
                return steps
            }
        }
        return steps
    }

    @Test("a call the prelude lets through runs a logarithmic number of its instructions, not one per hardened call")
    func searchDepth() throws {
        let n = Self.hardenedNumbers.count
        #expect(n > 40, "the table shrank to \(n) entries; this bound needs a look")
        // 6 fixed instructions (arch, nr, -1, x32, past the table), the splits, one leaf.
        let bound = 6 + Int(log2(Double(n) / Double(Prelude.leafSize)).rounded(.up)) + Prelude.leafSize
        let hot: [String] = ["read", "write", "futex", "getpid", "ioctl", "mmap", "epoll_wait", "close"]
        for name in hot {
            let steps = Self.preludeSteps(Self.policy, nr: UInt32(nr(name)))!
            #expect(steps <= bound, "\(name) runs \(steps) prelude instructions (bound \(bound), \(n) hardened calls)")
        }
        let worst = (0...Self.highest).map { Self.preludeSteps(Self.policy, nr: $0)! }.max()!
        #expect(worst <= bound, "the longest path through the prelude is \(worst) instructions (bound \(bound))")
    }

    @Test("lifting entries keeps the search exact for the rest")
    func liftedEntries() throws {
        for lift in [["ptrace"], ["ioctl", "personality"], ["clone3", "mount", "bpf", "syslog"]] {
            let reasons = lift.map { "\($0) = \"test\"" }.joined(separator: ", ")
            let program = try profile("""
                [seccomp]
                base = "none"
                default = "errno:4000"
                allow_dangerous = { \(reasons) }
                """).seccomp.compile()
            for nr in Self.boundaries {
                let name = Syscalls.name(of: Int32(nr)) ?? ""
                let want: SeccompAction = lift.contains(name) ? .errno(Self.policyErrno) : Self.expected(nr)
                let got = try program.verdict(SeccompData(nr: Int32(nr)))
                #expect(got == want, "lifting \(lift): nr \(nr) (\(name)) \(got), want \(want)")
            }
        }
    }
}
}
