/// Classic BPF as seccomp uses it: the instruction format and a small
/// assembler with labels for the hand-written hardening prelude. The
/// interpreter and the kernel's load-time checks are in BPFInterpreter.swift.

/// One `struct sock_filter`: 8 bytes, host byte order.
public struct BPFInstruction: Sendable, Hashable {
    public var code: UInt16
    public var jt: UInt8
    public var jf: UInt8
    public var k: UInt32

    public init(code: UInt16, jt: UInt8 = 0, jf: UInt8 = 0, k: UInt32 = 0) {
        self.code = code
        self.jt = jt
        self.jf = jf
        self.k = k
    }

    // Instruction classes and fields (linux/bpf_common.h).
    public static let LD: UInt16 = 0x00, LDX: UInt16 = 0x01, ST: UInt16 = 0x02, STX: UInt16 = 0x03
    public static let ALU: UInt16 = 0x04, JMP: UInt16 = 0x05, RET: UInt16 = 0x06, MISC: UInt16 = 0x07
    public static let W: UInt16 = 0x00, ABS: UInt16 = 0x20, IMM: UInt16 = 0x00, MEM: UInt16 = 0x60, LEN: UInt16 = 0x80
    public static let K: UInt16 = 0x00, X: UInt16 = 0x08, A: UInt16 = 0x10
    public static let JA: UInt16 = 0x00, JEQ: UInt16 = 0x10, JGT: UInt16 = 0x20, JGE: UInt16 = 0x30, JSET: UInt16 = 0x40
    public static let ADD: UInt16 = 0x00, SUB: UInt16 = 0x10, MUL: UInt16 = 0x20, DIV: UInt16 = 0x30, OR: UInt16 = 0x40
    public static let AND: UInt16 = 0x50, LSH: UInt16 = 0x60, RSH: UInt16 = 0x70, NEG: UInt16 = 0x80, MOD: UInt16 = 0x90
    public static let XOR: UInt16 = 0xa0, TAX: UInt16 = 0x00, TXA: UInt16 = 0x80

    var cls: UInt16 { code & 0x07 }

    /// Decodes `count` instructions from the bytes of a `sock_filter` array.
    public static func decode(_ bytes: [UInt8]) -> [BPFInstruction]? {
        guard bytes.count % 8 == 0 else { return nil }
        var result: [BPFInstruction] = []
        result.reserveCapacity(bytes.count / 8)
        var i = 0
        while i < bytes.count {
            let code = UInt16(bytes[i]) | UInt16(bytes[i + 1]) << 8
            let k = UInt32(bytes[i + 4]) | UInt32(bytes[i + 5]) << 8 | UInt32(bytes[i + 6]) << 16 | UInt32(bytes[i + 7]) << 24
            result.append(BPFInstruction(code: code, jt: bytes[i + 2], jf: bytes[i + 3], k: k))
            i += 8
        }
        return result
    }

    public static func encode(_ program: [BPFInstruction]) -> [UInt8] {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(program.count * 8)
        for ins in program {
            bytes += [UInt8(ins.code & 0xff), UInt8(ins.code >> 8), ins.jt, ins.jf,
                      UInt8(ins.k & 0xff), UInt8((ins.k >> 8) & 0xff), UInt8((ins.k >> 16) & 0xff), UInt8(ins.k >> 24)]
        }
        return bytes
    }
}

/// The input a seccomp filter sees (`struct seccomp_data`).
public struct SeccompData: Sendable, Hashable {
    public var nr: Int32
    public var arch: UInt32
    public var instructionPointer: UInt64
    public var args: [UInt64]

    public init(nr: Int32, arch: UInt32 = SeccompArch.x86_64, instructionPointer: UInt64 = 0, args: [UInt64] = []) {
        self.nr = nr
        self.arch = arch
        self.instructionPointer = instructionPointer
        self.args = (args + Array(repeating: 0, count: 6)).prefix(6).map { $0 }
    }

    /// The 32-bit word at byte offset `offset` (little-endian layout), as
    /// `BPF_LD|BPF_W|BPF_ABS` reads it.
    func word(at offset: UInt32) -> UInt32? {
        switch offset {
        case 0: return UInt32(bitPattern: nr)
        case 4: return arch
        case 8: return UInt32(truncatingIfNeeded: instructionPointer)
        case 12: return UInt32(truncatingIfNeeded: instructionPointer >> 32)
        case 16..<64 where offset % 4 == 0:
            let arg = args[Int(offset - 16) / 8]
            return (offset % 8 == 0) ? UInt32(truncatingIfNeeded: arg) : UInt32(truncatingIfNeeded: arg >> 32)
        default: return nil
        }
    }
}

public enum SeccompArch {
    public static let x86_64: UInt32 = 0xC000_003E
    public static let i386: UInt32 = 0x4000_0003
    /// `__X32_SYSCALL_BIT`: x32 calls share the x86_64 audit arch and set this bit in the number.
    public static let x32SyscallBit: UInt32 = 0x4000_0000
}

/// A tiny assembler with forward labels, for programs written by hand.
/// Conditional jumps hold 8-bit offsets: a target further than 255
/// instructions is reached through a `ja` (32-bit offset) placed right
/// after the jump, so a large search tree assembles as written. Jumps only
/// go forward; a backward or undefined label fails loudly.
struct BPFAssembler {
    enum Target: Hashable { case next, label(String) }
    private enum Item {
        case fixed(BPFInstruction)
        case jump(code: UInt16, k: UInt32, jt: Target, jf: Target)
        case always(String)
        case label(String)
    }
    private var items: [Item] = []

    mutating func load(_ offset: UInt32) {
        items.append(.fixed(BPFInstruction(code: BPFInstruction.LD | BPFInstruction.W | BPFInstruction.ABS, k: offset)))
    }
    mutating func ret(_ value: UInt32) {
        items.append(.fixed(BPFInstruction(code: BPFInstruction.RET | BPFInstruction.K, k: value)))
    }
    mutating func jump(_ op: UInt16, _ k: UInt32, ifTrue: Target, ifFalse: Target = .next) {
        items.append(.jump(code: BPFInstruction.JMP | op | BPFInstruction.K, k: k, jt: ifTrue, jf: ifFalse))
    }
    mutating func goto(_ label: String) { items.append(.always(label)) }
    mutating func label(_ name: String) { items.append(.label(name)) }

    /// A binary search over `items`, sorted by `key`: a `jge` on the middle
    /// item's key sends the upper half to its label and falls into the
    /// lower half, until `isLeaf` accepts a range, which `leaf` emits. Labels
    /// are `prefix` and the key, so one program can hold several searches.
    mutating func binarySearch<T>(_ items: ArraySlice<T>, prefix: String, key: (T) -> UInt32,
                                  isLeaf: (ArraySlice<T>) -> Bool,
                                  leaf: (ArraySlice<T>, inout BPFAssembler) -> Void) {
        if isLeaf(items) {
            leaf(items, &self)
            return
        }
        let mid = items.startIndex + items.count / 2
        let split = key(items[mid])
        jump(BPFInstruction.JGE, split, ifTrue: .label("\(prefix)\(split)"))
        binarySearch(items[..<mid], prefix: prefix, key: key, isLeaf: isLeaf, leaf: leaf)
        label("\(prefix)\(split)")
        binarySearch(items[mid...], prefix: prefix, key: key, isLeaf: isLeaf, leaf: leaf)
    }

    func assemble() -> [BPFInstruction] {
        // Which conditional jumps need a `ja` for their true or false
        // target. Sizes only grow, so the loop ends.
        var farTrue = Set<Int>(), farFalse = Set<Int>()
        var positions: [String: Int] = [:]
        func size(_ i: Int) -> Int {
            switch items[i] {
            case .label: return 0
            case .jump: return 1 + (farTrue.contains(i) ? 1 : 0) + (farFalse.contains(i) ? 1 : 0)
            default: return 1
            }
        }
        func place() -> [Int] {
            positions = [:]
            var starts: [Int] = []
            var pc = 0
            for (i, item) in items.enumerated() {
                starts.append(pc)
                if case .label(let name) = item { positions[name] = pc }
                pc += size(i)
            }
            return starts
        }
        func target(_ t: Target, from start: Int, size: Int) -> Int {
            guard case .label(let name) = t else { return start + size }
            guard let to = positions[name] else { preconditionFailure("BPF label \(name) is not defined") }
            return to
        }
        var starts = place()
        while true {
            var grew = false
            for (i, item) in items.enumerated() {
                guard case .jump(_, _, let jt, let jf) = item else { continue }
                if !farTrue.contains(i), target(jt, from: starts[i], size: size(i)) - starts[i] - 1 > 255 { farTrue.insert(i); grew = true }
                if !farFalse.contains(i), target(jf, from: starts[i], size: size(i)) - starts[i] - 1 > 255 { farFalse.insert(i); grew = true }
            }
            if !grew { break }
            starts = place()
        }
        var program: [BPFInstruction] = []
        for (i, item) in items.enumerated() {
            let here = program.count
            func ja(to: Int, from: Int) -> BPFInstruction {
                precondition(to > from, "BPF jumps only go forward")
                return BPFInstruction(code: BPFInstruction.JMP | BPFInstruction.JA, k: UInt32(to - from - 1))
            }
            switch item {
            case .fixed(let ins): program.append(ins)
            case .jump(let code, let k, let jt, let jf):
                let n = size(i)
                let toTrue = target(jt, from: here, size: n), toFalse = target(jf, from: here, size: n)
                // The trampolines follow the jump: the true target's first.
                let trueSlot = here + 1, falseSlot = here + (farTrue.contains(i) ? 2 : 1)
                let t = farTrue.contains(i) ? trueSlot : toTrue
                let f = farFalse.contains(i) ? falseSlot : toFalse
                precondition(t > here && f > here && t - here - 1 <= 255 && f - here - 1 <= 255,
                             "BPF jump at \(here) cannot be encoded")
                program.append(BPFInstruction(code: code, jt: UInt8(t - here - 1), jf: UInt8(f - here - 1), k: k))
                if farTrue.contains(i) { program.append(ja(to: toTrue, from: trueSlot)) }
                if farFalse.contains(i) { program.append(ja(to: toFalse, from: falseSlot)) }
            case .always(let name):
                guard let to = positions[name] else { preconditionFailure("BPF label \(name) is not defined") }
                program.append(ja(to: to, from: here))
            case .label: break
            }
        }
        return program
    }
}
