internal import CSeccomp
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
#if canImport(Glibc)
import Glibc
#endif

/// One comparison on a system-call argument, as libseccomp expresses it:
/// `arg1 == 3`, `arg0 < 38`, `arg0 & 0x7e020000 == 0`.
public struct SeccompCondition: Sendable, Hashable, CustomStringConvertible {
    public enum Op: String, Sendable, Hashable, CaseIterable {
        case eq = "==", ne = "!=", lt = "<", le = "<=", gt = ">", ge = ">="
        case maskedEq = "&=="

        var scmp: scmp_compare {
            switch self {
            case .ne: return SCMP_CMP_NE
            case .lt: return SCMP_CMP_LT
            case .le: return SCMP_CMP_LE
            case .eq: return SCMP_CMP_EQ
            case .ge: return SCMP_CMP_GE
            case .gt: return SCMP_CMP_GT
            case .maskedEq: return SCMP_CMP_MASKED_EQ
            }
        }
    }

    public var arg: Int
    public var op: Op
    /// The mask of a masked comparison (unused otherwise).
    public var mask: UInt64
    public var value: UInt64

    public init(arg: Int, op: Op, value: UInt64, mask: UInt64 = 0) {
        self.arg = arg
        self.op = op
        self.value = value
        self.mask = mask
    }

    /// What the condition means for an argument as the kernel reads it:
    /// all 64 bits, or for a 32-bit argument (``IntArguments``) the low 32
    /// bits of both sides; unsigned either way.
    public func matches(_ x: UInt64, int: Bool = false) -> Bool {
        if int {
            var low = self
            low.value &= 0xffff_ffff
            low.mask &= 0xffff_ffff
            return low.matches(x & 0xffff_ffff)
        }
        switch op {
        case .eq: return x == value
        case .ne: return x != value
        case .lt: return x < value
        case .le: return x <= value
        case .gt: return x > value
        case .ge: return x >= value
        case .maskedEq: return x & mask == value
        }
    }

    public var description: String {
        op == .maskedEq ? "arg\(arg) & \(hex(mask)) == \(hex(value))" : "arg\(arg) \(op.rawValue) \(hex(value))"
    }

    /// This condition on the low 32 bits of an argument, written as
    /// comparisons libseccomp can make (it compares all 64 bits): nil when it
    /// always holds, an empty list when it never does, else alternatives
    /// (ORed) that each test bits of the low half and ignore the high half.
    ///
    /// `==` and `&==` mask the high half away. The others compare bit by
    /// bit from the top: `x < v` holds exactly when, at some bit i set in v,
    /// x has v's bits above i and a 0 at i; `x > v` when, at some bit i
    /// clear in v, x has v's bits above i and a 1 at i; `x != v` when x
    /// differs from v in some single bit. At most 32 alternatives.
    func lowWordAlternatives() -> [SeccompCondition]? {
        let v = value & 0xffff_ffff
        let full: UInt64 = 0xffff_ffff
        func masked(_ mask: UInt64, _ datum: UInt64) -> SeccompCondition {
            SeccompCondition(arg: arg, op: .maskedEq, value: datum & mask, mask: mask)
        }
        /// Bits i and above of the low word.
        func from(_ i: Int) -> UInt64 { full & ~((UInt64(1) << i) - 1) }
        func below(_ v: UInt64) -> [SeccompCondition] {
            (0..<32).filter { v & (1 << $0) != 0 }.reversed().map { masked(from($0), v & ~(UInt64(1) << $0)) }
        }
        func above(_ v: UInt64) -> [SeccompCondition] {
            (0..<32).filter { v & (1 << $0) == 0 }.reversed().map { masked(from($0), v | (UInt64(1) << $0)) }
        }
        switch op {
        case .eq: return [masked(full, v)]
        case .maskedEq:
            let m = mask & full
            if m == 0 { return v == 0 ? nil : [] }
            return v & ~m != 0 ? [] : [masked(m, v)]
        case .ne: return (0..<32).reversed().map { masked(UInt64(1) << $0, ~v) }
        case .lt: return below(v)
        case .le: return v == full ? nil : below(v + 1)
        case .gt: return above(v)
        case .ge: return v == 0 ? nil : above(v - 1)
        }
    }

    /// The values a condition admits, as one of three shapes.
    enum Shape {
        case range(UInt64, UInt64)
        case notEqual(UInt64)
        case masked(mask: UInt64, value: UInt64)
    }

    /// The condition over the domain 0...top (all 64 bits, or the low 32).
    func shape(top: UInt64) -> Shape? {
        let v = value & top
        switch op {
        case .eq: return .range(v, v)
        case .ne: return .notEqual(v)
        case .lt: return v == 0 ? nil : .range(0, v - 1)
        case .le: return .range(0, v)
        case .gt: return v == top ? nil : .range(v + 1, top)
        case .ge: return .range(v, top)
        case .maskedEq:
            let m = mask & top
            return v & ~m != 0 ? nil : .masked(mask: m | ~top, value: v)
        }
    }

    /// The smallest x >= lo with x & mask == value, if any: x equals lo
    /// above some bit i where lo has a 0 and x a 1, and is as small as the
    /// mask allows below it (or x is lo itself).
    static func smallest(atLeast lo: UInt64, mask: UInt64, value: UInt64) -> UInt64? {
        if lo & mask == value { return lo }
        var best: UInt64?
        for i in 0..<64 where lo & (1 << UInt64(i)) == 0 {
            let bit = UInt64(1) << UInt64(i)
            let above: UInt64 = i == 63 ? 0 : ~(bit << 1 &- 1)
            guard lo & above & mask == value & above else { continue }
            guard mask & bit == 0 || value & bit != 0 else { continue }
            let x = (lo & above) | bit | (value & (bit &- 1))
            if best.map({ x < $0 }) ?? true { best = x }
        }
        return best
    }

    /// Whether one value passes both conditions (the same argument; on its
    /// low 32 bits when `int`). With `a == b`: whether the condition can hold at all.
    static func satisfiable(_ a: SeccompCondition, _ b: SeccompCondition, int: Bool) -> Bool {
        let top: UInt64 = int ? 0xffff_ffff : .max
        guard let x = a.shape(top: top), let y = b.shape(top: top) else { return false }
        func meet(_ x: Shape, _ y: Shape) -> Bool {
            switch (x, y) {
            case let (.range(l1, h1), .range(l2, h2)): return max(l1, l2) <= min(h1, h2)
            case let (.range(l, h), .notEqual(n)): return l < h || l != n
            case (.notEqual, .notEqual): return true
            case let (.masked(m1, v1), .masked(m2, v2)): return v1 & m2 == v2 & m1
            case let (.masked(m, v), .range(l, h)): return smallest(atLeast: l, mask: m, value: v).map { $0 <= h } ?? false
            case let (.masked(m, v), .notEqual(n)): return m != .max || v != n
            default: return meet(y, x)
            }
        }
        return meet(x, y)
    }

    private func hex(_ v: UInt64) -> String { v < 10 ? String(v) : "0x" + String(v, radix: 16) }

    /// Parses `argN OP VALUE` or `argN & MASK == VALUE`; values are numbers
    /// (decimal, 0x, 0o, 0b, or negative as two's complement) or constant
    /// names joined with `|` (`CLONE_NEWUSER|CLONE_NEWNS`).
    public init(parsing text: String) throws(ConditionError) {
        let tokens = text.split(whereSeparator: { $0 == " " || $0 == "\t" }).map(String.init)
        guard let first = tokens.first, first.hasPrefix("arg"), let n = Int(first.dropFirst(3)), (0...5).contains(n) else {
            throw ConditionError("must start with arg0 ... arg5")
        }
        if tokens.count == 5 && tokens[1] == "&" {
            guard tokens[3] == "==" else { throw ConditionError("a masked comparison is written \"argN & MASK == VALUE\"") }
            let mask = try Self.number(tokens[2])
            let value = try Self.number(tokens[4])
            guard value & ~mask == 0 else {
                throw ConditionError("value \(tokens[4]) has bits outside mask \(tokens[2]); the comparison could never match")
            }
            self.init(arg: n, op: .maskedEq, value: value, mask: mask)
            return
        }
        guard tokens.count == 3 else {
            throw ConditionError("expected \"argN OP VALUE\" (OP one of == != < <= > >=) or \"argN & MASK == VALUE\"")
        }
        guard let op = Op(rawValue: tokens[1]), op != .maskedEq else {
            throw ConditionError("unknown comparison \"\(tokens[1])\" (use == != < <= > >=, or argN & MASK == VALUE)")
        }
        self.init(arg: n, op: op, value: try Self.number(tokens[2]))
    }

    static func number(_ text: String) throws(ConditionError) -> UInt64 {
        var total: UInt64 = 0
        for part in text.split(separator: "|") {
            let p = String(part)
            if let v = Self.literal(p) {
                total |= v
            } else if let v = SeccompConstants.table[p] {
                total |= v
            } else {
                throw ConditionError("cannot read \"\(p)\" as a number or a known constant")
            }
        }
        return total
    }

    private static func literal(_ s: String) -> UInt64? {
        if s.hasPrefix("-"), let v = Int64(s) { return UInt64(bitPattern: v) }
        for (prefix, radix) in [("0x", 16), ("0o", 8), ("0b", 2)] where s.lowercased().hasPrefix(prefix) {
            return UInt64(String(s.dropFirst(2).filter { $0 != "_" }), radix: radix)
        }
        return UInt64(String(s.filter { $0 != "_" }))
    }
}

public struct ConditionError: Error, Sendable {
    public var message: String
    init(_ message: String) { self.message = message }
}

/// Named constants that argument conditions may use.
public enum SeccompConstants {
    public static let cloneNamespaceFlags: UInt64 = 0x7e02_0080
    public static let TIOCSTI: UInt64 = 0x5412
    public static let TIOCLINUX: UInt64 = 0x541C

    public static let table: [String: UInt64] = [
        "CLONE_VM": 0x100, "CLONE_FS": 0x200, "CLONE_FILES": 0x400, "CLONE_SIGHAND": 0x800,
        "CLONE_PIDFD": 0x1000, "CLONE_PTRACE": 0x2000, "CLONE_VFORK": 0x4000, "CLONE_PARENT": 0x8000,
        "CLONE_THREAD": 0x10000, "CLONE_NEWNS": 0x20000, "CLONE_SYSVSEM": 0x40000, "CLONE_SETTLS": 0x80000,
        "CLONE_PARENT_SETTID": 0x100000, "CLONE_CHILD_CLEARTID": 0x200000, "CLONE_CHILD_SETTID": 0x1000000,
        "CLONE_NEWCGROUP": 0x2000000, "CLONE_NEWUTS": 0x4000000, "CLONE_NEWIPC": 0x8000000,
        "CLONE_NEWUSER": 0x10000000, "CLONE_NEWPID": 0x20000000, "CLONE_NEWNET": 0x40000000,
        "CLONE_IO": 0x80000000, "CLONE_NEWTIME": 0x80,
        "AF_UNIX": 1, "AF_LOCAL": 1, "AF_INET": 2, "AF_INET6": 10, "AF_NETLINK": 16, "AF_PACKET": 17,
        "AF_VSOCK": 40, "AF_ALG": 38,
        "IPPROTO_IP": 0, "IPPROTO_ICMP": 1, "IPPROTO_TCP": 6, "IPPROTO_UDP": 17, "IPPROTO_ICMPV6": 58,
        "IPPROTO_SCTP": 132, "IPPROTO_UDPLITE": 136, "IPPROTO_MPTCP": 262,
        "SOCK_STREAM": 1, "SOCK_DGRAM": 2, "SOCK_RAW": 3, "SOCK_SEQPACKET": 5,
        "SOCK_NONBLOCK": 0o4000, "SOCK_CLOEXEC": 0o2000000,
        "TIOCSTI": TIOCSTI, "TIOCLINUX": TIOCLINUX, "TCGETS": 0x5401, "TCSETS": 0x5402, "TIOCGWINSZ": 0x5413,
        "FIONREAD": 0x541B, "FIONBIO": 0x5421, "FIOCLEX": 0x5451, "FIONCLEX": 0x5450,
        "PER_LINUX": 0, "PER_LINUX32": 8, "UNAME26": 0x20000, "ADDR_NO_RANDOMIZE": 0x40000,
        "READ_IMPLIES_EXEC": 0x400000,
        "PROT_READ": 1, "PROT_WRITE": 2, "PROT_EXEC": 4,
        "O_RDONLY": 0, "O_WRONLY": 1, "O_RDWR": 2, "O_CREAT": 0o100, "O_TRUNC": 0o1000, "O_APPEND": 0o2000,
    ]
}

/// One rule of the policy: `syscall` gets `action` when every condition
/// holds (conditions of one rule are ANDed; rules are ORed).
public struct SeccompRule: Sendable, Hashable, CustomStringConvertible {
    public var syscall: String
    public var number: Int32
    public var action: SeccompAction
    public var conditions: [SeccompCondition]
    /// Where it came from, for messages: `profile.toml:12` or
    /// `docker:default.json syscalls[3]`.
    public var origin: String
    /// Rules from an imported profile yield to the profile's own rules.
    public var imported: Bool

    public init(syscall: String, number: Int32, action: SeccompAction, conditions: [SeccompCondition] = [],
                origin: String, imported: Bool = false) {
        self.syscall = syscall
        self.number = number
        self.action = action
        self.conditions = conditions
        self.origin = origin
        self.imported = imported
    }

    /// Whether every condition holds for these arguments, each compared as
    /// the kernel reads it (``IntArguments``).
    public func matches(_ args: [UInt64]) -> Bool {
        conditions.allSatisfy { c in
            c.matches(c.arg < args.count ? args[c.arg] : 0, int: IntArguments.isInt(syscall, c.arg))
        }
    }

    /// The rule as libseccomp can compile it: conditions on 32-bit arguments
    /// rewritten to test the low half only (``SeccompCondition/lowWordAlternatives()``),
    /// which may turn one rule into several (ORed); none when it can never
    /// match.
    public func lowWordRules() -> [SeccompRule] {
        var alternatives: [[SeccompCondition]] = [[]]
        for c in conditions {
            guard IntArguments.isInt(syscall, c.arg) else {
                alternatives = alternatives.map { $0 + [c] }
                continue
            }
            guard let options = c.lowWordAlternatives() else { continue }
            alternatives = alternatives.flatMap { prefix in options.map { prefix + [$0] } }
        }
        return alternatives.map { var r = self; r.conditions = $0; return r }
    }

    /// Whether some call matches both rules (each argument compared as the
    /// kernel reads it): for every argument both rules test, some value
    /// passes both tests. Exact, not sampled.
    public func overlaps(_ other: SeccompRule) -> Bool {
        let mine = Dictionary(conditions.map { ($0.arg, $0) }, uniquingKeysWith: { a, _ in a })
        let theirs = Dictionary(other.conditions.map { ($0.arg, $0) }, uniquingKeysWith: { a, _ in a })
        for arg in Set(mine.keys).union(theirs.keys) {
            let narrow = IntArguments.isInt(syscall, arg)
            let a = mine[arg], b = theirs[arg]
            guard SeccompCondition.satisfiable(a ?? b!, b ?? a!, int: narrow) else { return false }
        }
        return true
    }

    public var description: String {
        conditions.isEmpty ? "\(syscall): \(action)" : "\(syscall) if \(conditions.map(\.description).joined(separator: " && ")): \(action)"
    }
}

/// System-call names and numbers on the native architecture, as the
/// installed libseccomp knows them.
public enum Syscalls {
    /// A name as a message shows it: as written when it is printable ASCII,
    /// else quoted with its control characters escaped, so that a profile's
    /// bytes (a NUL, a terminal escape) never reach a terminal raw.
    public static func shown(_ name: String) -> String {
        name.utf8.allSatisfy { $0 > 0x20 && $0 < 0x7f } ? name : name.debugDescription
    }

    /// The native number of `name`; nil when libseccomp does not know it or
    /// it is no system call on this architecture (e.g. `socketcall` on x86_64).
    public static func number(of name: String) -> Int32? {
        // A NUL would end the name early in C ("mount\0x" read as mount):
        // such a name is no system call's.
        guard !name.utf8.contains(0) else { return nil }
        // withCString: a short name (most are) is passed from the stack;
        // the implicit conversion copied each into a new array first.
        let n = name.withCString { seccomp_syscall_resolve_name_arch(UInt32(SCMP_ARCH_NATIVE), $0) }
        return n >= 0 ? n : nil
    }

    /// True when libseccomp knows the name, but for another architecture.
    public static func isForeign(_ name: String) -> Bool {
        guard !name.utf8.contains(0) else { return false }
        let n = seccomp_syscall_resolve_name(name)
        return n != __NR_SCMP_ERROR && n < 0 || (n >= 0 && number(of: name) == nil)
    }

    public static func name(of number: Int32) -> String? {
        guard number >= 0, let p = seccomp_syscall_resolve_num_arch(UInt32(SCMP_ARCH_NATIVE), number) else { return nil }
        defer { free(p) }
        return String(cString: p)
    }

    /// The highest native number libseccomp has a name for; calls above it
    /// get ENOSYS from every filter (a newer kernel's calls, or garbage).
    ///
    /// Every launch assembles the hardening prelude, which needs this
    /// number; asking libseccomp means about a thousand lookups, each a
    /// walk of its whole table (a tenth of a millisecond, at every start).
    /// So a libseccomp release and architecture this build was checked
    /// against answers from ``knownHighest`` (a test compares each entry
    /// with libseccomp's own answer); any other libseccomp is asked.
    public static let highestKnown: Int32 = {
        if let v = seccomp_version(),
           let known = knownHighest(arch: nativeArch, major: v.pointee.major, minor: v.pointee.minor, micro: v.pointee.micro) {
            return known
        }
        return highestKnownByLibseccomp()
    }()

    /// The highest number libseccomp has a name for on `arch` (an
    /// `AUDIT_ARCH_*` value, the native one by default), by asking it for
    /// every number below 1024.
    public static func highestKnownByLibseccomp(arch: UInt32 = nativeArch) -> Int32 {
        var highest: Int32 = 0
        for n in Int32(0)..<1024 {
            guard let p = seccomp_syscall_resolve_num_arch(arch, n) else { continue }
            free(p)
            highest = n
        }
        return highest
    }

    /// ``highestKnownByLibseccomp(arch:)`` of the libseccomp releases and
    /// architectures it was measured on; nil for any other. A switch, not
    /// a dictionary: a dictionary keyed by a struct costs the runtime a
    /// search of the image's conformances on first use, as much as the
    /// lookups it saves.
    public static func knownHighest(arch: UInt32, major: UInt32, minor: UInt32, micro: UInt32) -> Int32? {
        switch (arch, major, minor, micro) {
        // AUDIT_ARCH_X86_64 and AUDIT_ARCH_AARCH64: futex_requeue is the last name 2.5.4 has.
        case (0xC000_003E, 2, 5, 4), (0xC000_00B7, 2, 5, 4): return 456
        default: return nil
        }
    }

    /// The architectures ``knownHighest(arch:major:minor:micro:)`` has entries for.
    public static let tableArchitectures: [UInt32] = [0xC000_003E, 0xC000_00B7]

    /// `AUDIT_ARCH_*` of the native architecture.
    public static var nativeArch: UInt32 { seccomp_arch_native() }
}
