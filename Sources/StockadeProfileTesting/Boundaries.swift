public import StockadeSeccomp

/// Boundary values: seccomp compares 32-bit words of `seccomp_data` with
/// constants (`==`, `>`, `>=`, bit tests), so a filter's verdict can only
/// change where a word crosses one of its constants. For each system call
/// the words the filters read are varied over those boundaries (and the
/// constants of the reference's rules); the product of the variations is
/// every region the filters tell apart, up to ``maxPointsPerCall``.
public enum Boundaries {
    /// Past this many combinations for one call, words are varied one and
    /// two at a time instead of all together.
    public static let maxPointsPerCall = 4096

    /// The constants each word offset is compared with, from a program's
    /// `LD [k]` followed by conditional jumps (how libseccomp and the
    /// prelude write every test).
    public static func comparisons(_ program: [BPFInstruction]) -> [UInt32: Set<UInt32>] {
        var result: [UInt32: Set<UInt32>] = [:]
        var loaded: UInt32?
        for ins in program {
            switch ins.code & 0x07 {
            case BPFInstruction.LD where ins.code == BPFInstruction.LD | BPFInstruction.W | BPFInstruction.ABS:
                loaded = ins.k
            case BPFInstruction.JMP:
                guard let off = loaded, ins.code & 0xf0 != BPFInstruction.JA, ins.code & BPFInstruction.X == 0 else { continue }
                if ins.code & 0xf0 == BPFInstruction.JSET {
                    result[off, default: []].formUnion([ins.k, ~ins.k, ins.k & (0 &- ins.k)])
                } else {
                    result[off, default: []].formUnion([ins.k &- 1, ins.k, ins.k &+ 1])
                }
            case BPFInstruction.RET, BPFInstruction.ST, BPFInstruction.STX, BPFInstruction.LDX:
                continue
            default:
                loaded = nil  // A changed: later tests are not on a plain word
            }
        }
        return result
    }

    /// Values every word is tried with: zero, one, the sign bit, all ones,
    /// and garbage that a filter reading only one half should ignore.
    static let generic: [UInt32] = [0, 1, 0x7fff_ffff, 0x8000_0000, 0xffff_ffff, 0xdead_beef]

    /// The points that cover every verdict region of `nr` on `arch` for
    /// these programs; `extra` adds constants per argument (the
    /// reference's) so a comparison the compiler left out is still tried.
    public static func points(arch: UInt32, nr: Int32, programs: [[BPFInstruction]],
                              comparisons: [[UInt32: Set<UInt32>]], extra: [Int: Set<UInt64>] = [:]) -> [SeccompData] {
        var candidates: [UInt32: Set<UInt32>] = [:]
        for c in comparisons { for (off, ks) in c { candidates[off, default: []].formUnion(ks) } }
        for (arg, values) in extra {
            for v in values {
                let lo = UInt32(truncatingIfNeeded: v), hi = UInt32(truncatingIfNeeded: v >> 32)
                candidates[16 + UInt32(arg) * 8, default: []].formUnion([lo &- 1, lo, lo &+ 1])
                candidates[20 + UInt32(arg) * 8, default: []].formUnion([hi &- 1, hi, hi &+ 1])
            }
        }
        func values(_ off: UInt32) -> [UInt32] { Array(Set(generic).union(candidates[off] ?? [])).sorted() }

        // Which argument words matter: those any program reads on some path,
        // found by running, and every word the reference compares.
        var read = Set<UInt32>(extra.keys.flatMap { [16 + UInt32($0) * 8, 20 + UInt32($0) * 8] })
        func explore(_ d: SeccompData) {
            for p in programs { _ = try? runBPF(p, on: d, onLoad: { if $0 >= 16 { read.insert($0) } }) }
        }
        let base = SeccompData(nr: nr, arch: arch)
        explore(base)
        // A word of an argument read: both of its halves vary.
        func words() -> [UInt32] {
            Array(Set(read.map { ($0 - 16) / 8 }).flatMap { [16 + $0 * 8, 20 + $0 * 8] }).sorted()
        }
        var points: [SeccompData] = [base]
        for _ in 0..<3 {
            let ws = words()
            let before = read.count
            points = combine(base, ws, values)
            for p in points { explore(p) }
            if read.count == before { break }
        }
        return points
    }

    static func set(_ d: inout SeccompData, _ off: UInt32, _ v: UInt32) {
        let i = Int(off - 16) / 8
        if off % 8 == 0 {
            d.args[i] = (d.args[i] & 0xffff_ffff_0000_0000) | UInt64(v)
        } else {
            d.args[i] = (d.args[i] & 0xffff_ffff) | UInt64(v) << 32
        }
    }

    static func combine(_ base: SeccompData, _ offsets: [UInt32], _ values: (UInt32) -> [UInt32]) -> [SeccompData] {
        let lists = offsets.map(values)
        let total = lists.reduce(1) { $0 > maxPointsPerCall ? $0 : $0 * $1.count }
        var result: [SeccompData] = []
        if total <= maxPointsPerCall {
            result = [base]
            for (off, list) in zip(offsets, lists) {
                result = result.flatMap { d in list.map { v in var e = d; set(&e, off, v); return e } }
            }
            return result
        }
        // Too many: every value of each word, and every pair of words'
        // values, with the other words at 0.
        result.append(base)
        for i in offsets.indices {
            for v in lists[i] { var e = base; set(&e, offsets[i], v); result.append(e) }
            for j in offsets.indices where j > i {
                for v in lists[i] { for w in lists[j] {
                    var e = base; set(&e, offsets[i], v); set(&e, offsets[j], w); result.append(e)
                } }
            }
        }
        return result
    }

    /// Numbers a filter must handle beyond the native table: -1, the
    /// first numbers past the table, and far out.
    public static var numbersPastTheTable: [Int32] {
        let h = Syscalls.highestKnown
        return [-1, -2, h + 1, h + 2, 511, 512, 1023, 1024, 4096, 0x3fff_ffff, 0x7fff_ffff, Int32(bitPattern: 0x8000_0000)]
    }

    /// i386 numbers that a filter for x86_64 must not read as native ones:
    /// setuid32, socketcall, socket, clone, ptrace, execve, getppid.
    public static let i386Numbers: [Int32] = [213, 102, 359, 120, 26, 11, 64, 1, 0]

    /// The generated corpus for these programs: every native call with its
    /// boundary arguments, each also with garbage in the high words; the
    /// x32 variants of every call; i386 and foreign-architecture numbers;
    /// numbers past the table.
    public static func corpus(programs: [[BPFInstruction]], reference: ReferencePolicy?) -> [SeccompData] {
        let cmp = programs.map(comparisons)
        let constants = reference?.constants ?? [:]
        var calls: [SeccompData] = []
        let native = Syscalls.nativeArch
        for nr in 0...Syscalls.highestKnown {
            calls += points(arch: native, nr: nr, programs: programs, comparisons: cmp, extra: constants[nr] ?? [:])
            calls.append(SeccompData(nr: nr, arch: native, args: Array(repeating: 0xdead_beef_0000_0000, count: 6)))
            calls.append(SeccompData(nr: nr | Int32(bitPattern: SeccompArch.x32SyscallBit), arch: native))
        }
        for nr in numbersPastTheTable { calls.append(SeccompData(nr: nr, arch: native, args: [1, 2, 3])) }
        for nr in i386Numbers {
            calls.append(SeccompData(nr: nr, arch: SeccompArch.i386))
            calls.append(SeccompData(nr: nr, arch: SeccompArch.i386, args: [16, 3, 0]))
        }
        // Other architectures: aarch64, arm, and a number no architecture has.
        for arch: UInt32 in [0xc000_00b7, 0x4000_0028, 0] { calls.append(SeccompData(nr: 0, arch: arch)) }
        return calls
    }
}
