/// The classic-BPF machine as the kernel's seccomp runs it: the checks a
/// filter must pass to be loaded (`bpf_check_classic` followed by
/// seccomp's own list of accepted instructions), the interpreter for one
/// filter, and the evaluation of a stack of filters where the least
/// permissive verdict wins. `stockade simulate` and the tests that compare
/// verdicts with the kernel both run on this.

public enum BPFError: Error, Equatable, CustomStringConvertible {
    case outOfBounds(pc: Int)
    case badLoad(pc: Int, offset: UInt32)
    case divideByZero(pc: Int)
    case unsupported(pc: Int, code: UInt16)
    case noReturn
    /// The kernel refuses to load the filter (EINVAL at `seccomp()`).
    case rejected(pc: Int?, reason: String)
    /// The stack of filters is longer than the kernel allows on one path (ENOMEM).
    case tooLong(total: Int)

    public var description: String {
        switch self {
        case .outOfBounds(let pc): return "jump out of the program at \(pc)"
        case .badLoad(let pc, let off): return "load from offset \(off) at \(pc)"
        case .divideByZero(let pc): return "division by zero at \(pc)"
        case .unsupported(let pc, let code): return "unsupported opcode 0x\(String(code, radix: 16)) at \(pc)"
        case .noReturn: return "program ends without a return"
        case .rejected(let pc, let reason):
            return pc.map { "the kernel would refuse the filter: instruction \($0): \(reason)" } ?? "the kernel would refuse the filter: \(reason)"
        case .tooLong(let total):
            return "the stacked filters count \(total) instructions (each filter after the first costs 4 more); the kernel allows \(SeccompMachine.maxInstructionsPerPath)"
        }
    }
}

public enum SeccompMachine {
    /// `BPF_MAXINSNS`: the longest single filter.
    public static let maxInstructions = 4096
    /// `MAX_INSNS_PER_PATH`: all filters of a task together, each counted with 4 more.
    public static let maxInstructionsPerPath = 32768
    /// `BPF_MEMWORDS`: scratch memory cells.
    public static let memoryWords = 16
    /// `sizeof(struct seccomp_data)`.
    public static let dataSize: UInt32 = 64

    typealias I = BPFInstruction

    /// Every opcode seccomp accepts, exactly as written in the kernel's
    /// `seccomp_check_filter` (a code with other bits set is refused even
    /// when plain classic BPF would take it). No MOD, no packet loads of
    /// bytes or half-words, no indirect loads, no RET X.
    public static let acceptedCodes: Set<UInt16> = {
        var codes: Set<UInt16> = [
            I.LD | I.W | I.ABS, I.LD | I.W | I.LEN, I.LDX | I.W | I.LEN,
            I.RET | I.K, I.RET | I.A,
            I.ALU | I.NEG,
            I.LD | I.IMM, I.LDX | I.IMM, I.MISC | I.TAX, I.MISC | I.TXA,
            I.LD | I.MEM, I.LDX | I.MEM, I.ST, I.STX,
            I.JMP | I.JA,
        ]
        for op in [I.ADD, I.SUB, I.MUL, I.DIV, I.AND, I.OR, I.XOR, I.LSH, I.RSH] {
            codes.insert(I.ALU | op | I.K)
            codes.insert(I.ALU | op | I.X)
        }
        for op in [I.JEQ, I.JGE, I.JGT, I.JSET] {
            codes.insert(I.JMP | op | I.K)
            codes.insert(I.JMP | op | I.X)
        }
        return codes
    }()

    static func isConditionalJump(_ code: UInt16) -> Bool {
        code & 0x07 == I.JMP && code & 0xf0 != I.JA
    }

    /// What the kernel checks when a filter is loaded; throws `.rejected`
    /// naming the first instruction it refuses.
    public static func check(_ program: [BPFInstruction]) throws(BPFError) {
        let n = program.count
        guard n > 0 else { throw .rejected(pc: nil, reason: "an empty filter") }
        guard n <= maxInstructions else { throw .rejected(pc: nil, reason: "\(n) instructions, more than \(maxInstructions)") }
        for (pc, ins) in program.enumerated() {
            guard acceptedCodes.contains(ins.code) else {
                throw .rejected(pc: pc, reason: "opcode 0x\(String(ins.code, radix: 16)) is not one seccomp accepts")
            }
            switch ins.code {
            case I.LD | I.W | I.ABS:
                guard ins.k < dataSize, ins.k & 3 == 0 else {
                    throw .rejected(pc: pc, reason: "load from offset \(ins.k): seccomp_data is \(dataSize) bytes, read in aligned words")
                }
            case I.ALU | I.DIV | I.K:
                guard ins.k != 0 else { throw .rejected(pc: pc, reason: "division by the constant 0") }
            case I.ALU | I.LSH | I.K, I.ALU | I.RSH | I.K:
                guard ins.k < 32 else { throw .rejected(pc: pc, reason: "shift by \(ins.k) (at most 31)") }
            case I.LD | I.MEM, I.LDX | I.MEM, I.ST, I.STX:
                guard ins.k < UInt32(memoryWords) else { throw .rejected(pc: pc, reason: "scratch cell \(ins.k) (there are \(memoryWords))") }
            case I.JMP | I.JA:
                guard ins.k < UInt32(n - pc - 1) else { throw .rejected(pc: pc, reason: "jump by \(ins.k) leaves the program") }
            default:
                if isConditionalJump(ins.code) {
                    guard pc + Int(ins.jt) + 1 < n, pc + Int(ins.jf) + 1 < n else {
                        throw .rejected(pc: pc, reason: "jump by \(ins.jt)/\(ins.jf) leaves the program")
                    }
                }
            }
        }
        guard program[n - 1].code & 0x07 == I.RET else {
            throw .rejected(pc: n - 1, reason: "the last instruction is not a return")
        }
        // A scratch cell may be read only where every path to the read has
        // written it (the kernel's check_load_and_stores, step for step).
        var masks = [UInt16](repeating: 0xffff, count: n)
        var valid: UInt16 = 0
        for (pc, ins) in program.enumerated() {
            valid &= masks[pc]
            switch ins.code {
            case I.ST, I.STX: valid |= 1 << UInt16(ins.k)
            case I.LD | I.MEM, I.LDX | I.MEM:
                guard valid & (1 << UInt16(ins.k)) != 0 else {
                    throw .rejected(pc: pc, reason: "scratch cell \(ins.k) is read before every path has written it")
                }
            case I.JMP | I.JA:
                masks[pc + 1 + Int(ins.k)] &= valid
                valid = 0xffff
            default:
                if isConditionalJump(ins.code) {
                    masks[pc + 1 + Int(ins.jt)] &= valid
                    masks[pc + 1 + Int(ins.jf)] &= valid
                    valid = 0xffff
                }
            }
        }
    }

    /// The kernel's order of actions: the upper 16 bits of a return value
    /// compared as a signed number, lowest (least permissive) first.
    /// KILL_PROCESS < KILL_THREAD < TRAP < ERRNO < USER_NOTIF < TRACE < LOG < ALLOW;
    /// an unknown action sorts by its value and is carried out as a kill.
    public static func rank(_ raw: UInt32) -> Int32 {
        Int32(bitPattern: raw & 0xffff_0000)
    }

    /// The verdict of a stack of filters, in the order they were loaded:
    /// each runs on the call, and the value with the lowest action wins;
    /// among equal actions the filter loaded last wins (the kernel walks
    /// the newest first and keeps the first of the lowest).
    public static func run(stack filters: [[BPFInstruction]], on data: SeccompData) throws(BPFError) -> UInt32 {
        var result = SeccompAction.retAllow
        var first = true
        for program in filters.reversed() {
            let value = try runBPF(program, on: data)
            if first || rank(value) < rank(result) { result = value }
            first = false
        }
        return result
    }

    /// The stack's size check at load time (`seccomp_attach_filter`).
    public static func checkStack(_ filters: [[BPFInstruction]]) throws(BPFError) {
        for f in filters { try check(f) }
        let total = filters.reduce(0) { $0 + $1.count } + 4 * max(0, filters.count - 1)
        guard total <= maxInstructionsPerPath else { throw .tooLong(total: total) }
    }

    /// What the kernel does with a filter's value: the action decoded, and
    /// an errno above 4095 clamped to 4095 (`MAX_ERRNO`).
    public static func action(_ raw: UInt32) -> SeccompAction {
        let action = SeccompAction(raw: raw)
        if case .errno(let e) = action, e > 4095 { return .errno(4095) }
        return action
    }
}

/// Runs a classic BPF program the way the kernel's seccomp does and returns
/// the 32-bit `SECCOMP_RET_*` value. Every instruction seccomp accepts is
/// implemented as the kernel's translation to eBPF runs it: A and X start
/// at 0; division by an X of 0 ends the filter with 0 (kill); shifts by X
/// use its low five bits; `LD LEN` is the size of `seccomp_data`. Opcodes
/// plain classic BPF knows but seccomp refuses (MOD) are run too, so a
/// program can be interpreted before ``SeccompMachine/check(_:)`` says no.
public func runBPF(_ program: [BPFInstruction], on data: SeccompData) throws(BPFError) -> UInt32 {
    try runBPF(program, on: data, onLoad: { _ in })
}

/// ``runBPF(_:on:)`` that also reports the offset of every `seccomp_data`
/// word the program reads on its path (what `simulate` and `diff` vary).
public func runBPF(_ program: [BPFInstruction], on data: SeccompData, onLoad: (UInt32) -> Void) throws(BPFError) -> UInt32 {
    var steps = 0
    return try runBPF(program, on: data, onLoad: onLoad, steps: &steps)
}

/// ``runBPF(_:on:onLoad:)`` that also counts the instructions it executes.
func runBPF(_ program: [BPFInstruction], on data: SeccompData, onLoad: (UInt32) -> Void,
            steps: inout Int) throws(BPFError) -> UInt32 {
    typealias I = BPFInstruction
    var a: UInt32 = 0, x: UInt32 = 0
    var mem = [UInt32](repeating: 0, count: SeccompMachine.memoryWords)
    var pc = 0
    while pc < program.count {
        let ins = program[pc]
        steps += 1
        let src: UInt32 = (ins.code & I.X) != 0 ? x : ins.k
        switch ins.cls {
        case I.LD, I.LDX:
            let value: UInt32
            switch ins.code & 0xe0 {
            case I.ABS:
                guard ins.cls == I.LD, ins.code & 0x18 == I.W, let w = data.word(at: ins.k) else { throw .badLoad(pc: pc, offset: ins.k) }
                onLoad(ins.k)
                value = w
            case I.IMM: value = ins.k
            case I.MEM:
                guard ins.k < UInt32(SeccompMachine.memoryWords) else { throw .badLoad(pc: pc, offset: ins.k) }
                value = mem[Int(ins.k)]
            case I.LEN: value = SeccompMachine.dataSize
            default: throw .unsupported(pc: pc, code: ins.code)
            }
            if ins.cls == I.LD { a = value } else { x = value }
        case I.ST, I.STX:
            guard ins.k < UInt32(SeccompMachine.memoryWords) else { throw .badLoad(pc: pc, offset: ins.k) }
            mem[Int(ins.k)] = ins.cls == I.ST ? a : x
        case I.ALU:
            switch ins.code & 0xf0 {
            case I.ADD: a = a &+ src
            case I.SUB: a = a &- src
            case I.MUL: a = a &* src
            case I.DIV:
                // A constant 0 is refused at load; an X of 0 returns 0.
                guard src != 0 else { return 0 }
                a /= src
            case I.MOD:
                guard src != 0 else { return 0 }
                a %= src
            case I.OR: a |= src
            case I.AND: a &= src
            case I.XOR: a ^= src
            case I.LSH: a = a << (src & 31)
            case I.RSH: a = a >> (src & 31)
            case I.NEG: a = 0 &- a
            default: throw .unsupported(pc: pc, code: ins.code)
            }
        case I.JMP:
            let op = ins.code & 0xf0
            let next: Int
            if op == I.JA {
                next = pc + 1 + Int(ins.k)
            } else {
                let taken: Bool
                switch op {
                case I.JEQ: taken = a == src
                case I.JGT: taken = a > src
                case I.JGE: taken = a >= src
                case I.JSET: taken = (a & src) != 0
                default: throw .unsupported(pc: pc, code: ins.code)
                }
                next = pc + 1 + Int(taken ? ins.jt : ins.jf)
            }
            guard next < program.count else { throw .outOfBounds(pc: pc) }
            pc = next
            continue
        case I.RET:
            switch ins.code & 0x18 {
            case I.K: return ins.k
            case I.A: return a
            default: throw .unsupported(pc: pc, code: ins.code)
            }
        case I.MISC:
            if ins.code & 0xf8 == I.TXA { a = x } else { x = a }
        default:
            throw .unsupported(pc: pc, code: ins.code)
        }
        pc += 1
    }
    throw .noReturn
}
