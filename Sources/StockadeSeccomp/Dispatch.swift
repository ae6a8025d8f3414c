/// How a compiled filter is laid out. Both layouts give every call the
/// same verdict (the tests prove it over every number and the argument
/// values the rules name, in the BPF machine and in the kernel); they
/// differ in how many instructions a call runs before its verdict.
public enum SeccompLayout: Sendable, Hashable {
    /// What jails load: the prelude tests the common case first, then a
    /// dispatch by number decides every call whose policy verdict does not
    /// depend on its arguments; only the others reach libseccomp's filter.
    case dispatch
    /// The prelude in its earlier straight-line order followed by
    /// libseccomp's filter as exported: the order the dispatch must match.
    case reference
}

extension SeccompMachine {
    /// The verdict `program` gives every call with this number and
    /// architecture, whatever its arguments, or nil when the path reads
    /// anything but the number and the architecture (or uses an
    /// instruction other than loads of those, constant jumps, `and` and
    /// constant returns). This is the kernel's own analysis for its
    /// per-call action cache (`seccomp_is_const_allow`), which caches a
    /// number when the answer is `SECCOMP_RET_ALLOW`: such calls never run
    /// the filter after it is loaded.
    public static func constantVerdict(_ program: [BPFInstruction], nr: UInt32, arch: UInt32 = SeccompArch.x86_64) -> UInt32? {
        typealias I = BPFInstruction
        var a: UInt32 = 0
        var pc = 0
        while pc < program.count {
            let ins = program[pc]
            switch ins.code {
            case I.LD | I.W | I.ABS:
                switch ins.k {
                case 0: a = nr
                case 4: a = arch
                default: return nil
                }
            case I.RET | I.K:
                return ins.k
            case I.JMP | I.JA:
                pc += Int(ins.k)
            case I.JMP | I.JEQ | I.K, I.JMP | I.JGE | I.K, I.JMP | I.JGT | I.K, I.JMP | I.JSET | I.K:
                let taken: Bool
                switch ins.code & 0xf0 {
                case I.JEQ: taken = a == ins.k
                case I.JGE: taken = a >= ins.k
                case I.JGT: taken = a > ins.k
                default: taken = a & ins.k != 0
                }
                pc += Int(taken ? ins.jt : ins.jf)
            case I.ALU | I.AND | I.K:
                a &= ins.k
            default:
                return nil
            }
            pc += 1
        }
        return nil
    }

    /// Whether the kernel's action cache lets `nr` through without running
    /// the filter (native architecture; Linux 5.11 and later).
    public static func isCachedAllow(_ program: [BPFInstruction], nr: UInt32) -> Bool {
        constantVerdict(program, nr: nr) == SeccompAction.retAllow
    }

    /// How many instructions `program` runs for `data` before its verdict
    /// (the return included).
    public static func steps(_ program: [BPFInstruction], on data: SeccompData) throws(BPFError) -> Int {
        var count = 0
        _ = try runBPF(program, on: data, onLoad: { _ in }, steps: &count)
        return count
    }
}

enum PolicyDispatch {
    /// The calls tested before the search, in this order: `ioctl` first
    /// (its verdict reads an argument, so the kernel's cache never skips
    /// its filter), then the calls a worker makes most, which only kernels
    /// without the action cache (before 5.11) run the filter for.
    static let hot = ["ioctl", "futex", "read", "write"]

    /// A dispatch by number in front of libseccomp's `policy`: every
    /// number in 0...highest whose policy verdict is the same for all
    /// arguments (``SeccompMachine/constantVerdict(_:nr:arch:)`` on the
    /// policy alone) returns that verdict from a binary search over runs
    /// of numbers with equal verdicts; the rest, and any number outside
    /// the table, jump to `policy`, which follows unchanged. The hardening
    /// prelude runs before it, so only the native architecture and numbers
    /// in the table arrive here; the search tests the number alone, as the
    /// policy's own path to a constant verdict did, so every number the
    /// kernel cached before it still caches.
    static func assemble(policy: [BPFInstruction], highest: UInt32) -> [BPFInstruction] {
        typealias I = BPFInstruction
        let arch = Syscalls.nativeArch
        let verdicts: [UInt32?] = (0...highest).map { SeccompMachine.constantVerdict(policy, nr: $0, arch: arch) }
        // Runs of numbers with one verdict (nil: read the arguments).
        var runs: [(start: UInt32, verdict: UInt32?)] = []
        for (i, v) in verdicts.enumerated() where runs.last.map({ $0.verdict != v }) ?? true {
            runs.append((UInt32(i), v))
        }
        runs.append((highest + 1, nil))

        var asm = BPFAssembler()
        asm.load(0)
        let hotNumbers = hot.compactMap { Syscalls.number(of: $0).map(UInt32.init) }.filter { $0 <= highest }
        for n in hotNumbers { asm.jump(I.JEQ, n, ifTrue: .label("hot_\(n)")) }
        emitSearch(runs[...], into: &asm)
        for n in hotNumbers {
            asm.label("hot_\(n)")
            leaf(verdicts[Int(n)], into: &asm)
        }
        asm.label("policy")
        return asm.assemble() + policy
    }

    /// A binary search over the runs' first numbers: `jge` on the middle
    /// run splits until one run is left, whose verdict is its leaf.
    static func emitSearch(_ runs: ArraySlice<(start: UInt32, verdict: UInt32?)>, into asm: inout BPFAssembler) {
        asm.binarySearch(runs, prefix: "d_ge_", key: \.start, isLeaf: { $0.count == 1 }) { run, asm in
            leaf(run.first!.verdict, into: &asm)
        }
    }

    /// A constant verdict returns; an argument-dependent one goes to libseccomp's filter.
    static func leaf(_ verdict: UInt32?, into asm: inout BPFAssembler) {
        if let v = verdict { asm.ret(v) } else { asm.goto("policy") }
    }
}
