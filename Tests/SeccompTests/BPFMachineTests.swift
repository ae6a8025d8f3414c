import Foundation
import Testing
@testable import StockadeSeccomp

/// The BPF machine of `stockade simulate` against the kernel: which
/// programs the kernel loads, and what every instruction class computes,
/// alone and in stacked filters. Each program answers getppid (which
/// neither load-and-exec nor sysc makes) and allows every other call, so
/// the loaders can stack filters and exec under them.
extension SeccompTests {
@Suite struct BPFMachineTests {
    typealias I = BPFInstruction

    static func stmt(_ code: UInt16, _ k: UInt32 = 0) -> I { I(code: code, k: k) }
    static func jump(_ code: UInt16, _ k: UInt32, _ jt: UInt8, _ jf: UInt8) -> I { I(code: code, jt: jt, jf: jf, k: k) }
    static let getppid = UInt32(nr("getppid"))
    /// getppid goes on to the body; everything else is allowed.
    static let prefix: [I] = [stmt(I.LD | I.W | I.ABS, 0), jump(I.JMP | I.JEQ | I.K, getppid, 1, 0), stmt(I.RET | I.K, SeccompAction.retAllow)]
    /// The body's A as an errno: A & 0xfff | SECCOMP_RET_ERRNO.
    static let returnA: [I] = [stmt(I.ALU | I.AND | I.K, 0xfff), stmt(I.ALU | I.OR | I.K, SeccompAction.retErrno), stmt(I.RET | I.A)]

    static func write(_ program: [I]) throws -> String {
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("stockade-bpf-\(UUID().uuidString).bpf")
        try Data(BPFInstruction.encode(program)).write(to: file)
        return file.path
    }

    /// Loads the filters in order (one load-and-exec each) and runs getppid(args).
    static func kernel(_ filters: [[I]], args: [UInt64]) throws -> SyscallOutcome {
        let files = try filters.map(write)
        defer { for f in files { unlink(f) } }
        let loader = try Helpers.path("load-and-exec")
        // load-and-exec F1 load-and-exec F2 ... sysc NR ARGS
        var chain: [String] = [files[0]]
        for f in files.dropFirst() { chain += [loader, f] }
        chain += [try Helpers.path("sysc"), String(getppid)] + args.map { String($0) }
        return SyscallOutcome(runProcess(loader, chain))
    }

    /// Whether seccomp() took the filter: load-and-exec exits 125 when it
    /// refuses; a loaded filter may still kill the exec that follows.
    static func kernelLoads(_ file: String) -> Bool {
        guard let loader = try? Helpers.path("load-and-exec") else { return false }
        if case .exited(125, _, _) = runProcess(loader, [file, "/bin/true"]) { return false }
        return true
    }

    /// What the kernel shows for a filter value.
    static func expected(_ raw: UInt32) -> SyscallOutcome? {
        switch SeccompMachine.action(raw) {
        case .errno(let e): return e == 0 ? .returned(0) : .errno(e)
        case .killProcess, .killThread, .trap: return .killed(SIGSYS)
        default: return nil
        }
    }

    // MARK: what the kernel loads

    /// Every opcode, as the one instruction before a return, with operands
    /// the checks accept (k = 0 for loads and jumps, 1 for ALU).
    @Test("the load-time check accepts exactly the opcodes the kernel accepts")
    func opcodesMatchTheKernel() throws {
        var mismatches: [String] = []
        for code in UInt16(0)...0xff {
            let k: UInt32 = code & 0x07 == I.ALU ? 1 : 0
            let program = [I(code: code, k: k), Self.stmt(I.RET | I.K, SeccompAction.retAllow)]
            let ours = (try? SeccompMachine.check(program)) != nil
            let file = try Self.write(program)
            defer { unlink(file) }
            let loaded = Self.kernelLoads(file)
            if ours != loaded { mismatches.append("0x\(String(code, radix: 16)): kernel \(loaded), check \(ours)") }
        }
        #expect(mismatches.isEmpty, "\(mismatches)")
    }

    static let refusals: [(String, [I])] = [
        ("division by the constant 0", [stmt(I.ALU | I.DIV | I.K, 0), stmt(I.RET | I.A)]),
        ("shift by 32", [stmt(I.ALU | I.LSH | I.K, 32), stmt(I.RET | I.A)]),
        ("right shift by 32", [stmt(I.ALU | I.RSH | I.K, 32), stmt(I.RET | I.A)]),
        ("unaligned load", [stmt(I.LD | I.W | I.ABS, 2), stmt(I.RET | I.A)]),
        ("load past seccomp_data", [stmt(I.LD | I.W | I.ABS, 64), stmt(I.RET | I.A)]),
        ("scratch cell 16", [stmt(I.ST, 16), stmt(I.RET | I.A)]),
        ("read before write", [stmt(I.LD | I.MEM, 3), stmt(I.RET | I.A)]),
        ("read written on one path only", [jump(I.JMP | I.JEQ | I.K, 0, 0, 1), stmt(I.ST, 1), stmt(I.LDX | I.MEM, 1), stmt(I.RET | I.A)]),
        ("jump past the end", [jump(I.JMP | I.JEQ | I.K, 0, 1, 0), stmt(I.RET | I.A)]),
        ("ja past the end", [stmt(I.JMP | I.JA, 1), stmt(I.RET | I.A)]),
        ("no return at the end", [stmt(I.RET | I.A), stmt(I.LD | I.IMM, 1)]),
        ("empty", []),
    ]
    static let accepted: [(String, [I])] = [
        ("written on both paths", [jump(I.JMP | I.JEQ | I.K, 0, 0, 2), stmt(I.ST, 1), stmt(I.JMP | I.JA, 1), stmt(I.STX, 1), stmt(I.LD | I.MEM, 1), stmt(I.RET | I.A)]),
        ("shift by 31", [stmt(I.ALU | I.LSH | I.K, 31), stmt(I.RET | I.A)]),
        ("last word of seccomp_data", [stmt(I.LD | I.W | I.ABS, 60), stmt(I.RET | I.A)]),
    ]

    @Test("operand checks: refused and accepted as the kernel does", arguments: refusals.map { ($0.0, $0.1, false) } + accepted.map { ($0.0, $0.1, true) })
    func operandChecks(_ name: String, _ program: [I], _ loads: Bool) throws {
        let ours = (try? SeccompMachine.check(program)) != nil
        #expect(ours == loads, "\(name): check says \(ours)")
        guard !program.isEmpty else { return }
        let file = try Self.write(program)
        defer { unlink(file) }
        let kernelLoads = Self.kernelLoads(file)
        #expect(kernelLoads == loads, "\(name): the kernel says \(kernelLoads)")
    }

    // MARK: what every instruction computes

    struct Case: CustomStringConvertible, Sendable {
        var name: String
        var body: [I]
        var args: [UInt64]
        var description: String { "\(name) \(args.map { "0x" + String($0, radix: 16) })" }
    }

    static let cases: [Case] = {
        var list: [Case] = []
        let a0 = stmt(I.LD | I.W | I.ABS, 16), x1 = [stmt(I.LD | I.W | I.ABS, 24), stmt(I.MISC | I.TAX)]
        let values: [(UInt64, UInt64)] = [(7, 3), (0x123, 0), (5, 33), (0xffff_fff0, 31), (0x8000_0001, 32), (1, 0xffff_ffff), (0xabc, 4)]
        let ops: [(String, UInt16)] = [("add", I.ADD), ("sub", I.SUB), ("mul", I.MUL), ("div", I.DIV), ("and", I.AND), ("or", I.OR),
                                       ("xor", I.XOR), ("lsh", I.LSH), ("rsh", I.RSH)]
        for (name, op) in ops {
            for (x, y) in values {
                // A op X (X from arg1; DIV by an X of 0 ends the filter with 0).
                list.append(Case(name: "\(name) x", body: x1 + [a0, stmt(I.ALU | op | I.X)] + returnA, args: [x, y]))
                // A op K, with K the second value where the kernel accepts it.
                let k = UInt32(truncatingIfNeeded: y)
                if (op == I.DIV && k == 0) || ((op == I.LSH || op == I.RSH) && k >= 32) { continue }
                list.append(Case(name: "\(name) k\(k)", body: [a0, stmt(I.ALU | op | I.K, k)] + returnA, args: [x, y]))
            }
        }
        for (x, _) in values { list.append(Case(name: "neg", body: [a0, stmt(I.ALU | I.NEG)] + returnA, args: [x])) }
        list.append(Case(name: "ld len", body: [stmt(I.LD | I.W | I.LEN)] + returnA, args: []))
        list.append(Case(name: "ldx len, txa", body: [stmt(I.LDX | I.W | I.LEN), stmt(I.MISC | I.TXA)] + returnA, args: []))
        list.append(Case(name: "ld imm", body: [stmt(I.LD | I.IMM, 0x321)] + returnA, args: []))
        list.append(Case(name: "ldx imm, txa", body: [stmt(I.LDX | I.IMM, 0x654), stmt(I.MISC | I.TXA)] + returnA, args: []))
        list.append(Case(name: "st, ld mem", body: [a0, stmt(I.ST, 15), stmt(I.LD | I.IMM, 0), stmt(I.LD | I.MEM, 15)] + returnA, args: [0x77]))
        list.append(Case(name: "stx, ldx mem", body: x1 + [stmt(I.STX, 0), stmt(I.LDX | I.IMM, 0), stmt(I.LDX | I.MEM, 0), stmt(I.MISC | I.TXA)] + returnA, args: [0, 0x88]))
        // Every word of seccomp_data but the instruction pointer's (which
        // differs from run to run): nr, arch, each argument's halves.
        for off in stride(from: UInt32(0), to: 64, by: 4) where off != 8 && off != 12 {
            list.append(Case(name: "ld [\(off)]", body: [stmt(I.LD | I.W | I.ABS, off)] + returnA,
                             args: [0x1_0000_0111, 0x2_0000_0222, 0x3_0000_0333, 0x4_0000_0444, 0x5_0000_0555, 0x6_0000_0666]))
        }
        // Jumps: each picks one of two errnos.
        let jumps: [(String, UInt16)] = [("jeq", I.JEQ), ("jgt", I.JGT), ("jge", I.JGE), ("jset", I.JSET)]
        for (name, op) in jumps {
            for (x, y) in [(5, 5), (6, 5), (4, 5), (0x8000_0000, 0x7fff_ffff), (3, 4)] as [(UInt64, UInt64)] {
                let tail = [stmt(I.RET | I.K, SeccompAction.retErrno | 11), stmt(I.RET | I.K, SeccompAction.retErrno | 22)]
                list.append(Case(name: "\(name) x", body: x1 + [a0, jump(I.JMP | op | I.X, 0, 0, 1)] + tail, args: [x, y]))
                list.append(Case(name: "\(name) k", body: [a0, jump(I.JMP | op | I.K, UInt32(y), 0, 1)] + tail, args: [x]))
            }
        }
        list.append(Case(name: "ja", body: [stmt(I.JMP | I.JA, 1), stmt(I.RET | I.K, SeccompAction.retErrno | 11), stmt(I.RET | I.K, SeccompAction.retErrno | 22)], args: []))
        list.append(Case(name: "ret k trap", body: [stmt(I.RET | I.K, SeccompAction.retTrap)], args: []))
        list.append(Case(name: "ret errno past 4095", body: [stmt(I.RET | I.K, SeccompAction.retErrno | 0x1234)], args: []))
        list.append(Case(name: "ret unknown action", body: [stmt(I.RET | I.K, 0x0001_0000)], args: []))
        return list
    }()

    @Test("every instruction computes what the kernel computes", arguments: cases)
    func instructionsMatchTheKernel(_ c: Case) throws {
        let program = Self.prefix + c.body
        try SeccompMachine.check(program)
        let raw = try runBPF(program, on: SeccompData(nr: Int32(Self.getppid), args: c.args))
        let want = try #require(Self.expected(raw), "\(c): \(SeccompMachine.action(raw))")
        let got = try Self.kernel([program], args: c.args)
        #expect(got == want, "\(c): interpreter \(SeccompMachine.action(raw)), kernel \(got)")
    }

    // MARK: stacked filters

    static func returning(_ raw: UInt32) -> [I] { prefix + [stmt(I.RET | I.K, raw)] }

    static let stacks: [(String, [UInt32])] = [
        ("errno beats allow", [SeccompAction.retAllow, SeccompAction.retErrno | 5]),
        ("trap beats errno", [SeccompAction.retErrno | 5, SeccompAction.retTrap]),
        ("trap beats errno, either order", [SeccompAction.retTrap, SeccompAction.retErrno | 5]),
        ("the newest of equal actions wins", [SeccompAction.retErrno | 5, SeccompAction.retErrno | 7]),
        ("the newest of equal actions wins, three", [SeccompAction.retErrno | 9, SeccompAction.retErrno | 5, SeccompAction.retErrno | 7]),
        ("errno beats log", [SeccompAction.retLog, SeccompAction.retErrno | 6]),
        ("kill-process beats errno", [SeccompAction.retErrno | 5, SeccompAction.retKillProcess]),
        ("an unknown action sorts by value", [SeccompAction.retErrno | 5, 0x0004_0000]),
    ]

    @Test("stacked filters: the least permissive verdict wins, as in the kernel", arguments: stacks.map { $0.0 })
    func stacksMatchTheKernel(_ name: String) throws {
        let values = Self.stacks.first { $0.0 == name }!.1
        let filters = values.map(Self.returning)
        try SeccompMachine.checkStack(filters)
        let raw = try SeccompMachine.run(stack: filters, on: SeccompData(nr: Int32(Self.getppid)))
        let got = try Self.kernel(filters, args: [])
        if let want = Self.expected(raw) {
            #expect(got == want, "\(name): simulated \(SeccompMachine.action(raw)), kernel \(got)")
        } else {
            #expect(!got.isKilled, "\(name): simulated \(SeccompMachine.action(raw)), kernel \(got)")
        }
    }

    @Test("a stack longer than the kernel allows on one path is refused")
    func stackLength() {
        let big = [I](repeating: Self.stmt(I.LD | I.IMM, 0), count: 4095) + [Self.stmt(I.RET | I.K, SeccompAction.retAllow)]
        #expect(throws: BPFError.self) { try SeccompMachine.checkStack(Array(repeating: big, count: 8)) }
        #expect((try? SeccompMachine.checkStack(Array(repeating: big, count: 7))) != nil)
    }
}
}
