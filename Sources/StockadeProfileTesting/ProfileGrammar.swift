import StockadeSeccomp

/// A `[seccomp]` section as the fuzzer builds it: the grammar of
/// docs/PROFILES.md, element by element, so that mutations stay within
/// the language (and a failure can be shrunk element by element).
public struct SeccompSketch: Sendable, Hashable {
    public struct Rule: Sendable, Hashable {
        public var syscalls: [String]
        public var action: String
        public var args: [String]
    }

    public var defaultAction = "errno:EPERM"
    public var base = "stock"
    public var allow: [String] = []
    public var deny: [String] = []
    public var denyAction: String?
    public var rules: [Rule] = []
    public var dangerous: [String] = []

    public init() {}

    /// The section as TOML (with a header line naming the profile).
    public var toml: String {
        func list(_ l: [String]) -> String { "[" + l.map { "\"\($0)\"" }.joined(separator: ", ") + "]" }
        var s = "[seccomp]\ndefault = \"\(defaultAction)\"\nbase = \"\(base)\"\n"
        if !allow.isEmpty { s += "allow = \(list(allow))\n" }
        if !deny.isEmpty { s += "deny = \(list(deny))\n" }
        if let denyAction { s += "deny_action = \"\(denyAction)\"\n" }
        if !dangerous.isEmpty {
            s += "allow_dangerous = { " + dangerous.map { "\($0) = \"fuzzed\"" }.joined(separator: ", ") + " }\n"
        }
        for r in rules {
            s += "\n[[seccomp.rule]]\nsyscalls = \(list(r.syscalls))\naction = \"\(r.action)\"\n"
            if !r.args.isEmpty { s += "args = \(list(r.args))\n" }
        }
        return s
    }

    /// The elements a failure can be shrunk over (each removable on its own).
    public enum Element: Sendable, Hashable {
        case allow(Int), deny(Int), rule(Int), dangerous(Int), ruleArg(Int, Int)
    }

    public var elements: [Element] {
        allow.indices.map { .allow($0) } + deny.indices.map { .deny($0) } + rules.indices.map { .rule($0) }
            + dangerous.indices.map { .dangerous($0) }
            + rules.indices.flatMap { r in rules[r].args.indices.map { .ruleArg(r, $0) } }
    }

    /// This sketch without the given elements.
    public func removing(_ gone: Set<Element>) -> SeccompSketch {
        var s = self
        s.allow = allow.enumerated().filter { !gone.contains(.allow($0.offset)) }.map(\.element)
        s.deny = deny.enumerated().filter { !gone.contains(.deny($0.offset)) }.map(\.element)
        s.dangerous = dangerous.enumerated().filter { !gone.contains(.dangerous($0.offset)) }.map(\.element)
        s.rules = rules.enumerated().compactMap { i, r in
            guard !gone.contains(.rule(i)) else { return nil }
            var r = r
            r.args = r.args.enumerated().filter { !gone.contains(.ruleArg(i, $0.offset)) }.map(\.element)
            return r
        }
        return s
    }
}

/// Mutations along the grammar, from a seeded generator (the same seed,
/// the same mutants).
public struct ProfileMutator: Sendable {
    public var rng: SplitMix64

    public init(seed: UInt64) { rng = SplitMix64(seed: seed) }

    /// Calls worth filtering: the usual ones, those with dangerous
    /// arguments, and some the hardening refuses.
    static let calls = ["read", "write", "openat", "close", "getppid", "getpid", "getuid", "socket", "socketpair",
                        "ioctl", "clone", "unshare", "personality", "prctl", "fcntl", "mmap", "mprotect", "madvise",
                        "setsockopt", "kill", "futex", "getrandom", "uname", "ptrace", "mount", "bpf", "keyctl",
                        "clone3", "io_uring_setup", "chroot", "setns", "memfd_create", "sched_yield", "getcpu"]
    static let actions = ["allow", "errno:EPERM", "errno:EACCES", "errno:4001", "kill-process", "kill-thread", "trap", "log"]
    static let defaults = ["errno:EPERM", "errno:ENOSYS", "kill-process", "errno:EACCES", "trap", "kill-thread", "log", "allow"]
    static let ops = ["==", "!=", "<", "<=", ">", ">="]
    static let values = ["0", "1", "2", "5", "AF_UNIX", "AF_INET", "AF_NETLINK", "AF_PACKET", "SOCK_RAW", "TIOCSTI", "FIONREAD",
                         "CLONE_NEWUSER", "CLONE_NEWNET|CLONE_NEWNS", "CLONE_THREAD", "PROT_EXEC", "PROT_READ|PROT_WRITE",
                         "0xffffffff", "0x80000000", "0x100000000", "0x100000001", "0xffffffff00000005",
                         "-1", "0x7fffffff", "4096", "0o777"]
    static let masks = ["0xff", "0xffffffff", "0x100000000", "PROT_EXEC", "CLONE_NEWUSER", "0xffffffff00000000"]

    mutating func pick<T>(_ list: [T]) -> T { list[Int(rng.next() % UInt64(list.count))] }
    mutating func chance(_ n: UInt64) -> Bool { rng.next() % n == 0 }

    mutating func condition(_ used: Set<Int>) -> String? {
        let free = (0..<6).filter { !used.contains($0) }
        guard !free.isEmpty else { return nil }
        let arg = pick(free)
        if chance(4) {
            let mask = pick(Self.masks)
            return "arg\(arg) & \(mask) == \(chance(2) ? "0" : mask)"
        }
        return "arg\(arg) \(pick(Self.ops)) \(pick(Self.values))"
    }

    mutating func rule() -> SeccompSketch.Rule {
        var syscalls = [pick(Self.calls)]
        if chance(4) { syscalls.append(pick(Self.calls)) }
        var args: [String] = []
        var used = Set<Int>()
        for _ in 0..<Int(rng.next() % 3) {
            if let c = condition(used) {
                used.insert(Int(c.dropFirst(3).prefix(1))!)
                args.append(c)
            }
        }
        return .init(syscalls: Array(Set(syscalls)).sorted(), action: pick(Self.actions), args: args)
    }

    /// One mutation of `s`.
    public mutating func mutate(_ s: SeccompSketch) -> SeccompSketch {
        var s = s
        switch rng.next() % 12 {
        case 0: s.defaultAction = pick(Self.defaults)
        case 1: s.base = s.base == "stock" ? "none" : "stock"
        case 2, 3: s.allow.append(pick(Self.calls))
        case 4: if !s.allow.isEmpty { s.allow.remove(at: Int(rng.next() % UInt64(s.allow.count))) }
        case 5: s.deny.append(pick(Self.calls)); if chance(2) { s.denyAction = pick(["errno:EACCES", "kill-process", "trap", "errno:4002"]) }
        case 6, 7: s.rules.append(rule())
        case 8: if !s.rules.isEmpty { s.rules.remove(at: Int(rng.next() % UInt64(s.rules.count))) }
        case 9:
            if !s.rules.isEmpty {
                let i = Int(rng.next() % UInt64(s.rules.count))
                let used = Set(s.rules[i].args.compactMap { Int($0.dropFirst(3).prefix(1)) })
                if let c = condition(used), !s.rules[i].args.isEmpty, chance(2) {
                    s.rules[i].args[Int(rng.next() % UInt64(s.rules[i].args.count))] = c
                    let ids = s.rules[i].args.compactMap { Int($0.dropFirst(3).prefix(1)) }
                    if Set(ids).count != ids.count { s.rules[i].args.removeLast() }
                } else if let c = condition(used) {
                    s.rules[i].args.append(c)
                }
                if chance(3) { s.rules[i].action = pick(Self.actions) }
            }
        case 10: s.dangerous.append(pick(HardenedCall.all.map(\.name)))
        default: s.rules.shuffle(using: &rng)
        }
        s.allow = Array(Set(s.allow)).sorted()
        s.deny = Array(Set(s.deny)).sorted()
        s.dangerous = Array(Set(s.dangerous)).sorted()
        return s
    }
}

/// A small, fast, seedable generator (Steele, Lea and Flood's SplitMix64),
/// so that a seed names the same run everywhere.
public struct SplitMix64: RandomNumberGenerator, Sendable {
    var state: UInt64
    public init(seed: UInt64) { state = seed }
    public mutating func next() -> UInt64 {
        state &+= 0x9e37_79b9_7f4a_7c15
        var z = state
        z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
        z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb
        return z ^ (z >> 31)
    }
}
