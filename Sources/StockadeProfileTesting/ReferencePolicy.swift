import TOMLKit
public import StockadeSeccomp
import StockadeSystem
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
#if canImport(Glibc)
import Glibc
#endif

/// A second reading of a profile's `[seccomp]`, written from the profile
/// documentation and sharing no code with the compiler: it parses the TOML
/// with the TOML library directly, parses conditions and actions itself,
/// and evaluates a call by the plain meaning of the rules instead of
/// through libseccomp and BPF. What it shares with the compiler is data:
/// the kernel's system-call table (as libseccomp names it), the list of
/// hardened calls, the stock allowlist and the table of 32-bit arguments.
/// `simulate --expect` and `fuzz` compare the compiled filter's verdicts
/// with this one's. A Docker import is read from its JSON here too.
///
/// The meaning, as docs/PROFILES.md gives it:
/// - another architecture, or an x32 number, is killed; `-1` and numbers
///   past the known table get ENOSYS;
/// - the hardened calls are refused (their arguments checked on the low 32
///   bits) unless `allow_dangerous` lifts them;
/// - the profile's own rules replace the base's rules for the same call;
///   a rule matches when all its conditions hold (arguments the kernel reads
///   as 32 bits compared on their low 32 bits); among matching rules the
///   least permissive action wins (the kernel's order of actions);
/// - no rule matches: the default action.
public struct ReferencePolicy: Sendable {
    public struct Rule: Sendable, Hashable {
        public var number: Int32
        public var name: String
        public var action: UInt32
        public var conditions: [Condition]
    }

    public struct Condition: Sendable, Hashable {
        public enum Op: String, Sendable { case eq = "==", ne = "!=", lt = "<", le = "<=", gt = ">", ge = ">=", masked = "&==" }
        public var arg: Int
        public var op: Op
        public var value: UInt64
        public var mask: UInt64
    }

    public struct ReadError: Error, CustomStringConvertible {
        public var description: String
    }

    public var defaultAction: UInt32 = SeccompAction.retErrno | 1
    public var rules: [Rule] = []
    public var lifted: Set<String> = []

    /// Reads the `[seccomp]` section of profile text.
    public init(text: String, file: String) throws(ReadError) {
        let root: TOMLTable
        do { root = try TOMLTable(string: text) } catch { throw ReadError(description: "\(file): \(error)") }
        guard let section = root["seccomp"]?.table else {
            rules = Self.stock()
            return
        }
        func fail(_ m: String) -> ReadError { ReadError(description: "\(file): [seccomp] \(m)") }
        var baseRules: [Rule]
        if let spec = section["import"]?.string {
            guard spec.hasPrefix("docker:") else { throw fail("import: not docker:PATH") }
            var path = String(spec.dropFirst(7))
            if !path.hasPrefix("/") {
                let dir = file.lastIndex(of: "/").map { String(file[..<$0]) } ?? "."
                path = dir + "/" + path
            }
            let docker = try Self.docker(path: path)
            defaultAction = docker.0
            baseRules = docker.1
        } else {
            baseRules = (section["base"]?.string ?? "stock") == "stock" ? Self.stock() : []
        }
        if let d = section["default"]?.string {
            guard let a = Self.action(d) else { throw fail("default: unknown action \(d)") }
            defaultAction = a
        }
        var own: [Rule] = []
        func strings(_ value: (any TOMLValueConvertible)?) -> [String] {
            (value?.array ?? []).compactMap { $0.string }
        }
        // Names the installed libseccomp lacks were refused or skipped (the
        // optional ones) when the profile was read: skip them here.
        func names(_ list: [String]) -> [(String, Int32)] {
            list.compactMap { raw in
                let name = raw.hasSuffix("?") ? String(raw.dropLast()) : raw
                return Syscalls.number(of: name).map { (name, $0) }
            }
        }
        for (n, nr) in names(strings(section["allow"])) {
            own.append(Rule(number: nr, name: n, action: SeccompAction.retAllow, conditions: []))
        }
        var denyAction = SeccompAction.retErrno | 1
        if let d = section["deny_action"]?.string {
            guard let a = Self.action(d) else { throw fail("deny_action: unknown action \(d)") }
            denyAction = a
        }
        for (n, nr) in names(strings(section["deny"])) {
            own.append(Rule(number: nr, name: n, action: denyAction, conditions: []))
        }
        for entry in section["rule"]?.array ?? [] {
            guard let t = entry.table else { throw fail("rule: not a table") }
            var list = strings(t["syscalls"])
            if let one = t["syscall"]?.string { list.insert(one, at: 0) }
            guard let actionText = t["action"]?.string, let action = Self.action(actionText) else {
                throw fail("rule: missing or unknown action")
            }
            var conditions: [Condition] = []
            for c in t["args"]?.array ?? [] {
                guard let text = c.string, let cond = Self.condition(text) else {
                    throw fail("rule: cannot read condition \(c)")
                }
                conditions.append(cond)
            }
            for (n, nr) in names(list) {
                own.append(Rule(number: nr, name: n, action: action, conditions: conditions))
            }
        }
        for key in section["allow_dangerous"]?.table?.keys ?? [] { lifted.insert(key) }
        let ownNumbers = Set(own.map(\.number))
        baseRules.removeAll { ownNumbers.contains($0.number) }
        rules = baseRules + own
    }

    /// The verdict (a `SECCOMP_RET_*` value) for one call.
    public func verdict(_ call: SeccompData) -> UInt32 {
        let kill = SeccompAction.retKillProcess
        let enosys = SeccompAction.retErrno | 38, eperm = SeccompAction.retErrno | 1
        guard call.arch == Syscalls.nativeArch else { return kill }
        let nr = UInt32(bitPattern: call.nr)
        if nr == 0xffff_ffff { return enosys }
        if nr & SeccompArch.x32SyscallBit != 0 { return kill }
        if nr > UInt32(Syscalls.highestKnown) { return enosys }
        let low = { (i: Int) -> UInt32 in UInt32(truncatingIfNeeded: call.args[i]) }
        if let name = Syscalls.name(of: call.nr), let hardened = HardenedCall.named(name), !lifted.contains(name) {
            switch hardened.check {
            case .deny(let e): return SeccompAction.retErrno | UInt32(e)
            case .denyFlags(let arg, let mask): if low(arg) & mask != 0 { return eperm }
            case .denyValues(let arg, let values): if values.contains(low(arg)) { return eperm }
            case .allowOnlyValues(let arg, let values): if !values.contains(low(arg)) { return eperm }
            }
        }
        var result: UInt32?
        for rule in rules where rule.number == call.nr && holds(rule, call) {
            if result == nil || SeccompMachine.rank(rule.action) < SeccompMachine.rank(result!) { result = rule.action }
        }
        return result ?? defaultAction
    }

    func holds(_ rule: Rule, _ call: SeccompData) -> Bool {
        rule.conditions.allSatisfy { c in
            let narrow = IntArguments.isInt(rule.name, c.arg)
            let x = narrow ? call.args[c.arg] & 0xffff_ffff : call.args[c.arg]
            let v = narrow ? c.value & 0xffff_ffff : c.value
            switch c.op {
            case .eq: return x == v
            case .ne: return x != v
            case .lt: return x < v
            case .le: return x <= v
            case .gt: return x > v
            case .ge: return x >= v
            case .masked: return x & (narrow ? c.mask & 0xffff_ffff : c.mask) == v
            }
        }
    }

    /// The numbers every rule compares with, per system call and argument
    /// (for the corpus generator).
    public var constants: [Int32: [Int: Set<UInt64>]] {
        var result: [Int32: [Int: Set<UInt64>]] = [:]
        for r in rules {
            for c in r.conditions {
                result[r.number, default: [:]][c.arg, default: []].insert(c.value)
                if c.op == .masked { result[r.number, default: [:]][c.arg, default: []].insert(c.mask) }
            }
        }
        return result
    }

    /// A Docker/Moby seccomp JSON profile read the way Docker reads it, for
    /// a jail holding no capabilities on x86_64: entries that need a
    /// capability, or name only other architectures, or a newer kernel, are
    /// left out; an unconditional entry for a call makes the call's later
    /// entries moot (libseccomp's rule, which Docker inherits).
    static func docker(path: String) throws(ReadError) -> (UInt32, [Rule]) {
        struct Arg: Decodable { var index: Int; var value: UInt64; var valueTwo: UInt64?; var op: String }
        struct Gate: Decodable { var caps: [String]?; var arches: [String]?; var minKernel: String? }
        struct Entry: Decodable {
            var names: [String]?; var name: String?; var action: String; var errnoRet: UInt32?
            var args: [Arg]?; var includes: Gate?; var excludes: Gate?
        }
        struct Doc: Decodable { var defaultAction: String; var defaultErrnoRet: UInt32?; var syscalls: [Entry]? }
        let doc: Doc
        do {
            guard let data = FileManager.default.contents(atPath: path) else { throw ReadError(description: "cannot read \(path)") }
            doc = try JSONDecoder().decode(Doc.self, from: data)
        } catch let e as ReadError { throw e } catch { throw ReadError(description: "\(path): \(error)") }
        func act(_ name: String, _ errno: UInt32?) -> UInt32? {
            switch name {
            case "SCMP_ACT_ALLOW": return SeccompAction.retAllow
            case "SCMP_ACT_ERRNO": return SeccompAction.retErrno | (errno ?? 1)
            case "SCMP_ACT_KILL", "SCMP_ACT_KILL_THREAD": return SeccompAction.retKillThread
            case "SCMP_ACT_KILL_PROCESS": return SeccompAction.retKillProcess
            case "SCMP_ACT_TRAP": return SeccompAction.retTrap
            case "SCMP_ACT_LOG": return SeccompAction.retLog
            case "SCMP_ACT_NOTIFY": return SeccompAction.retUserNotif
            case "SCMP_ACT_TRACE": return SeccompAction.retTrace | ((errno ?? 1) & 0xffff)
            default: return nil
            }
        }
        func version(_ s: String) -> [Int] { s.split(whereSeparator: { !$0.isNumber }).prefix(2).compactMap { Int($0) } }
        var u = utsname()
        uname(&u)
        let release = withUnsafeBytes(of: &u.release) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        let kernel = version(release)
        guard let defaultAction = act(doc.defaultAction, doc.defaultErrnoRet) else {
            throw ReadError(description: "\(path): defaultAction \(doc.defaultAction)")
        }
        var rules: [Rule] = []
        var decided = Set<Int32>()  // calls with an unconditional entry
        for e in doc.syscalls ?? [] {
            if let inc = e.includes {
                if !(inc.caps ?? []).isEmpty { continue }
                if let a = inc.arches, !a.isEmpty, !a.contains("amd64") { continue }
                if let k = inc.minKernel, kernel.lexicographicallyPrecedes(version(k)) { continue }
            }
            if let exc = e.excludes {
                if (exc.arches ?? []).contains("amd64") { continue }
                if let k = exc.minKernel, !kernel.lexicographicallyPrecedes(version(k)) { continue }
            }
            guard let action = act(e.action, e.errnoRet) else { throw ReadError(description: "\(path): action \(e.action)") }
            let conditions = (e.args ?? []).compactMap { a -> Condition? in
                switch a.op {
                case "SCMP_CMP_EQ": return Condition(arg: a.index, op: .eq, value: a.value, mask: 0)
                case "SCMP_CMP_NE": return Condition(arg: a.index, op: .ne, value: a.value, mask: 0)
                case "SCMP_CMP_LT": return Condition(arg: a.index, op: .lt, value: a.value, mask: 0)
                case "SCMP_CMP_LE": return Condition(arg: a.index, op: .le, value: a.value, mask: 0)
                case "SCMP_CMP_GT": return Condition(arg: a.index, op: .gt, value: a.value, mask: 0)
                case "SCMP_CMP_GE": return Condition(arg: a.index, op: .ge, value: a.value, mask: 0)
                case "SCMP_CMP_MASKED_EQ": return Condition(arg: a.index, op: .masked, value: a.valueTwo ?? 0, mask: a.value)
                default: return nil
                }
            }
            for name in (e.names ?? []) + (e.name.map { [$0] } ?? []) {
                guard let nr = Syscalls.number(of: name), !decided.contains(nr) else { continue }
                if conditions.isEmpty {
                    decided.insert(nr)
                    rules.removeAll { $0.number == nr }
                }
                rules.append(Rule(number: nr, name: name, action: action, conditions: conditions))
            }
        }
        return (defaultAction, rules)
    }

    static func stock() -> [Rule] {
        var rules = SeccompSection.stockAllowlist.compactMap { name in
            Syscalls.number(of: name).map { Rule(number: $0, name: name, action: SeccompAction.retAllow, conditions: []) }
        }
        for (name, family, protocols) in SeccompSection.stockSockets {
            guard let nr = Syscalls.number(of: name) else { continue }
            for p in protocols {
                rules.append(Rule(number: nr, name: name, action: SeccompAction.retAllow,
                                  conditions: [Condition(arg: 0, op: .eq, value: family, mask: 0),
                                               Condition(arg: 2, op: .eq, value: p, mask: 0)]))
            }
        }
        return rules
    }

    /// `allow`, `errno:EPERM`, `errno:13`, `kill`, ... as a return value.
    static func action(_ text: String) -> UInt32? {
        let t = text.trimmedBlanks
        switch t.lowercased() {
        case "allow": return SeccompAction.retAllow
        case "kill", "kill-process": return SeccompAction.retKillProcess
        case "kill-thread": return SeccompAction.retKillThread
        case "trap": return SeccompAction.retTrap
        case "log": return SeccompAction.retLog
        case "notify": return SeccompAction.retUserNotif
        default:
            guard t.lowercased().hasPrefix("errno:") else { return nil }
            let e = String(t.dropFirst(6))
            if let n = UInt32(e), (1...4095).contains(n) { return SeccompAction.retErrno | n }
            return ErrnoNames.number(of: e.uppercased()).map { SeccompAction.retErrno | UInt32($0) }
        }
    }

    /// `argN OP VALUE` or `argN & MASK == VALUE`.
    static func condition(_ text: String) -> Condition? {
        let w = text.split(separator: " ", omittingEmptySubsequences: true).map(String.init)
        guard let first = w.first, first.count == 4, first.hasPrefix("arg"), let n = Int(first.suffix(1)), n < 6 else { return nil }
        if w.count == 5, w[1] == "&", w[3] == "==", let m = value(w[2]), let v = value(w[4]) {
            return Condition(arg: n, op: .masked, value: v, mask: m)
        }
        guard w.count == 3, let op = Condition.Op(rawValue: w[1]), op != .masked, let v = value(w[2]) else { return nil }
        return Condition(arg: n, op: op, value: v, mask: 0)
    }

    static func value(_ text: String) -> UInt64? {
        var total: UInt64 = 0
        for part in text.split(separator: "|").map(String.init) {
            let p = part.without("_")
            let lower = p.lowercased()
            if let named = SeccompConstants.table[part] {
                total |= named
            } else if lower.hasPrefix("-"), let v = Int64(p) {
                total |= UInt64(bitPattern: v)
            } else if lower.hasPrefix("0x"), let v = UInt64(p.dropFirst(2), radix: 16) {
                total |= v
            } else if lower.hasPrefix("0o"), let v = UInt64(p.dropFirst(2), radix: 8) {
                total |= v
            } else if lower.hasPrefix("0b"), let v = UInt64(p.dropFirst(2), radix: 2) {
                total |= v
            } else if let v = UInt64(p) {
                total |= v
            } else {
                return nil
            }
        }
        return total
    }
}
