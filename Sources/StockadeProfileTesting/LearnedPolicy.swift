import StockadeSeccomp
#if canImport(Glibc)
import Glibc
#endif

/// What `stockade learn` saw over one or more runs, and the profile it
/// writes: the jail of the profile it ran in, and a `[seccomp]` that allows
/// exactly the calls seen (with argument conditions on the
/// ``ProfileLearning/decidingArguments``), each entry with its reason.
/// Calls the always-on hardening denies and the fallbacks answered ENOSYS
/// are named in comments and never allowed.
public struct LearnedPolicy: Sendable, Equatable {
    public var allowed: [LearnedCall: LearnedUse]
    public var fallbacks: [String: LearnedUse]
    public var hardened: [String: LearnedUse]
    public var runs: Int
    /// Notifications served (this run's; 0 for a policy read back).
    public var notifications: Int

    public init(allowed: [LearnedCall: LearnedUse] = [:], fallbacks: [String: LearnedUse] = [:],
                hardened: [String: LearnedUse] = [:], runs: Int = 0, notifications: Int = 0) {
        self.allowed = allowed
        self.fallbacks = fallbacks
        self.hardened = hardened
        self.runs = runs
        self.notifications = notifications
    }

    /// The names the learned `[seccomp]` allows (with or without conditions),
    /// companions included.
    public var allowedNames: Set<String> {
        var names = Set(allowed.keys.map(\.name))
        for n in names { if let c = ProfileLearning.companions[n], Syscalls.number(of: c) != nil { names.insert(c) } }
        return names
    }

    /// Both runs' observations in one (`--merge`): counts and runs add up,
    /// the older example stays.
    public func merged(with other: LearnedPolicy) -> LearnedPolicy {
        func join<K>(_ a: [K: LearnedUse], _ b: [K: LearnedUse]) -> [K: LearnedUse] {
            a.merging(b) { x, y in
                var u = LearnedUse(count: x.count + y.count, runs: x.runs + y.runs, example: x.example, launcher: x.launcher + y.launcher,
                                   executables: x.executables)
                for e in y.executables { u.insert(printable: e) }
                return u
            }
        }
        return LearnedPolicy(allowed: join(allowed, other.allowed), fallbacks: join(fallbacks, other.fallbacks),
                             hardened: join(hardened, other.hardened), runs: runs + other.runs,
                             notifications: notifications + other.notifications)
    }

    // MARK: writing

    static let marker = "# Learned by `stockade learn`"

    /// The kernel release, the C library, the architecture.
    public static var hostLine: String {
        var u = utsname()
        uname(&u)
        let release = withUnsafeBytes(of: &u.release) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        let machine = withUnsafeBytes(of: &u.machine) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        var buffer = [CChar](repeating: 0, count: 64)
        let n = confstr(Int32(_CS_GNU_LIBC_VERSION), &buffer, buffer.count)
        let libc = n > 0 ? String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self) : "unknown"
        return "kernel: Linux \(release), libc: \(libc), architecture: \(machine)"
    }

    /// What a learned profile cannot promise; in every learned profile's
    /// header and in `stockade learn`'s output.
    public static let caveats = [
        "While learning, each call this list did not yet allow was let through by the",
        "seccomp supervisor (SECCOMP_USER_NOTIF_FLAG_CONTINUE). The kernel runs such a call",
        "without a second check: during learning the filter was no security boundary,",
        "so learn only trusted workloads. Only register values were recorded (never a path",
        "or struct behind a pointer, which another thread can change after a look: TOCTOU),",
        "so conditions here are on numbers only. One run shows one path through the program:",
        "review the list, and learn again (--merge) with other inputs.",
    ]

    /// `observed: 3 calls in 1 run, e.g. socket(AF_UNIX, ...)`.
    public static func describe(_ u: LearnedUse) -> String { use(u) }

    static func use(_ u: LearnedUse) -> String {
        var s = "observed: \(u.count) call\(u.count == 1 ? "" : "s") in \(u.runs) run\(u.runs == 1 ? "" : "s")"
        if u.launcher > 0 { s += " (\(u.launcher) before the worker's exec: the launcher's)" }
        s += ", e.g. " + u.example
        return u.executables.isEmpty ? s : s + " from " + u.executables.joined(separator: ", ")
    }

    /// The learned profile: a header, `jailText` (a profile without its
    /// `[seccomp]`, as written), and the learned `[seccomp]`.
    public func render(jailText: String, command: [String]) -> String {
        var s = header(command: command)
        var rest = SeccompMinimizer.withoutSeccomp(Self.withoutHeader(jailText))
        while rest.hasSuffix("\n") { rest.removeLast() }
        if !rest.isEmpty { s += rest + "\n\n" }
        s += "[seccomp]\n# Exactly what was seen; every other call: EPERM.\nbase = \"none\"\ndefault = \"errno:EPERM\"\n"
        let plain = allowed.filter { $0.key.conditions.isEmpty }.sorted { $0.key < $1.key }
        let companions = missingCompanions()
        if !plain.isEmpty || !companions.isEmpty {
            s += "allow = [\n"
            for (call, u) in plain { s += "    \(call.name.tomlQuoted),  # \(Self.use(u))\n" }
            for (c, n) in companions { s += "    \(c.tomlQuoted),  # companion: libc uses it for \(n)\n" }
            s += "]\n"
        }
        for (call, u) in allowed.filter({ !$0.key.conditions.isEmpty }).sorted(by: { $0.key < $1.key }) {
            s += "\n# \(Self.use(u))\n" + Self.allowRule(call)
        }
        if !allowedNames.contains("sendmsg") {
            s += "\n" + ProfileLearning.handoverComment + " (denial monitoring:\n"
            s += "# stockade run --report, stockaded), above fd 255 with exactly MSG_NOSIGNAL; not\n"
            s += "# a call of the workload's.\n" + ProfileLearning.handoverRule
        }
        return s + footer()
    }

    /// `--keep-allowed`: `profileText` as written, its own `[seccomp]`
    /// included (what it allowed stayed in the kernel while learning and was
    /// not recorded), followed by one allow rule per entry learned on top of
    /// it. A call the profile denies by a rule of its own (not by its
    /// default) is a deliberate denial: it is named in a comment, not
    /// allowed. `listenerRule` is the listener's hand-over rule when the
    /// profile did not allow it itself.
    public func renderAdditions(profileText: String, denyingRules: Set<String>, listenerRule: Bool, command: [String]) -> String {
        var s = profileText
        while s.hasSuffix("\n") { s.removeLast() }
        s += "\n\n" + header(command: command, keeping: true).dropLast()  // each rule brings its blank line
        let added = allowed.filter { !denyingRules.contains($0.key.name) }.sorted { $0.key < $1.key }
        let refused = allowed.filter { denyingRules.contains($0.key.name) }.sorted { $0.key < $1.key }
        if added.isEmpty { s += "# Nothing outside what the profile allows was seen.\n" }
        for (call, u) in added { s += "\n# \(Self.use(u))\n" + Self.allowRule(call) }
        for (c, n) in missingCompanions() where !denyingRules.contains(c) {
            s += "\n# companion: libc uses it for \(n)\n" + Self.allowRule(LearnedCall(name: c))
        }
        if listenerRule {
            s += "\n" + ProfileLearning.handoverComment + " (denial monitoring),\n"
            s += "# above fd 255 with exactly MSG_NOSIGNAL; not a call of the workload's.\n" + ProfileLearning.handoverRule
        }
        if !refused.isEmpty {
            s += "\n# Seen, but denied by a rule of the profile's own; not allowed (lift the rule by hand\n# if the workload needs it):\n"
            for (call, u) in refused {
                s += "#   \(call.name)\(call.conditions.isEmpty ? "" : " (" + call.conditions.map(\.text).joined(separator: ", ") + ")"): \(Self.use(u))\n"
            }
        }
        return s + footer()
    }

    /// The header: what was learned from, the host, the runs, the caveats.
    func header(command: [String], keeping: Bool = false) -> String {
        var s = Self.marker + (keeping ? " on top of the profile above" : "") + " from: "
        s += LearnedUse.printable(command.map(Self.shellQuoted).joined(separator: " ")) + "\n"
        s += "# " + Self.hostLine + "\n"
        s += "# runs: \(runs)\n#\n"
        for line in Self.caveats { s += "# " + line + "\n" }
        return s + "\n"
    }

    /// Companions (``ProfileLearning/companions``) of learned calls that were
    /// not learned themselves: (companion, the learned call).
    func missingCompanions() -> [(String, String)] {
        let names = Set(allowed.keys.map(\.name))
        return names.sorted().compactMap { n in
            guard let c = ProfileLearning.companions[n], !names.contains(c), Syscalls.number(of: c) != nil else { return nil }
            return (c, n)
        }
    }

    static func allowRule(_ call: LearnedCall) -> String {
        var s = "[[seccomp.rule]]\nsyscall = \(call.name.tomlQuoted)\naction = \"allow\"\n"
        if !call.conditions.isEmpty { s += "args = [" + call.conditions.map { $0.text.tomlQuoted }.joined(separator: ", ") + "]\n" }
        return s
    }

    /// The fallbacks answered ENOSYS and the hardening's denials, as comments.
    func footer() -> String {
        var s = "\n# Answered ENOSYS while learning so that libc falls back; never allowed:\n"
        s += "#   clone3: the always-on hardening answers ENOSYS (libc falls back to clone)\n"
        for (name, u) in fallbacks.sorted(by: { $0.key < $1.key }) {
            s += "#   \(name): \(Self.use(u)) (falls back to \(ProfileLearning.fallbacks[name] ?? "?"))\n"
        }
        if !hardened.isEmpty {
            s += "# Denied by the always-on hardening whatever a profile says; never allowed:\n"
            for (name, u) in hardened.sorted(by: { $0.key < $1.key }) { s += "#   \(name): \(Self.use(u))\n" }
        }
        return s
    }

    /// A learned profile's text without the header `render` wrote (up to
    /// its first empty line), for learning again on top of it.
    static func withoutHeader(_ text: String) -> String {
        guard text.hasPrefix(marker) else { return text }
        let lines = text.split(separator: "\n", omittingEmptySubsequences: false)
        return lines.drop { !$0.isEmpty }.dropFirst().joined(separator: "\n")
    }

    static func shellQuoted(_ s: String) -> String {
        let plain = !s.isEmpty && s.allSatisfy { $0.isLetter || $0.isNumber || "-_./=:,@+".contains($0) }
        return plain ? s : "'" + s.replacing("'", with: "'\\''") + "'"
    }

    // MARK: reading back (--merge)

    public struct ReadError: Error, CustomStringConvertible, Sendable {
        public var description: String
    }

    /// Reads a profile `render` wrote. Entries edited by hand keep working
    /// as long as each keeps its `observed:` reason; anything else is
    /// refused with its line.
    public init(reading text: String, file: String) throws(ReadError) {
        self.init()
        let lines = text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        guard lines.first?.hasPrefix(Self.marker) == true else {
            throw ReadError(description: "\(file):1: not a profile `stockade learn` wrote (its first line starts with \"\(Self.marker)\")")
        }
        enum Part { case header, allow, rule, fallback, hardened }
        var part = Part.header
        var pending: LearnedUse?
        var pendingLine = 0
        var ruleName: String?
        var handover = false
        for (i, raw) in lines.enumerated() {
            let n = i + 1
            let line = raw.trimmedBlanks
            func fail(_ why: String) -> ReadError { ReadError(description: "\(file):\(n): \(why)") }
            if part == .header, line.hasPrefix("# runs: ") {
                guard let r = Int(line.dropFirst("# runs: ".count)), r > 0 else { throw fail("cannot read the number of runs") }
                runs = r
                continue
            }
            if line.hasPrefix("allow = [") { part = .allow; continue }
            if part == .allow {
                if line == "]" { part = .header; continue }
                guard line.hasPrefix("\""), let close = line.dropFirst().firstIndex(of: "\"") else { throw fail("expected a quoted system call name") }
                let name = String(line[line.index(after: line.startIndex)..<close])
                guard let c = line.firstRange(of: "# ") else { throw fail("\(name) has no `observed:` reason") }
                let comment = String(line[c.upperBound...])
                if comment.hasPrefix("companion:") { continue }
                guard let u = Self.parseUse(comment) else { throw fail("cannot read the reason \"\(comment)\"") }
                allowed[LearnedCall(name: name)] = u
                continue
            }
            if line.hasPrefix("# observed: ") {
                guard let u = Self.parseUse(String(line.dropFirst(2))) else { throw fail("cannot read the reason") }
                pending = u
                pendingLine = n
                continue
            }
            if line.hasPrefix(ProfileLearning.handoverComment) { handover = true; continue }
            if handover {
                // The hand-over's own rule: written again by render.
                if line.hasPrefix("args = ") { handover = false }
                continue
            }
            if line == "[[seccomp.rule]]" {
                guard pending != nil else { throw fail("a rule without an `# observed:` reason above it") }
                part = .rule
                ruleName = nil
                continue
            }
            if part == .rule {
                if line.hasPrefix("syscall = ") {
                    ruleName = String(line.dropFirst("syscall = ".count)).without("\"")
                } else if line.hasPrefix("args = [") {
                    guard let name = ruleName, let u = pending else { throw fail("args before syscall") }
                    let inner = line.dropFirst("args = [".count).dropLast()
                    var conditions: [LearnedCall.Condition] = []
                    for item in inner.split(separator: ",") {
                        guard let c = Self.parseCondition(item.trimmedBlanks.without("\""), of: name) else {
                            throw fail("cannot read the condition \(item.trimmedBlanks)")
                        }
                        conditions.append(c)
                    }
                    allowed[LearnedCall(name: name, conditions: conditions)] = u
                    pending = nil
                    part = .header
                } else if line.isEmpty || line.hasPrefix("#") {
                    throw fail("the rule of line \(pendingLine) has no args")
                }
                continue
            }
            if line.hasPrefix("# Answered ENOSYS while learning") { part = .fallback; continue }
            if line.hasPrefix("# Denied by the always-on hardening") { part = .hardened; continue }
            if part == .fallback || part == .hardened, line.hasPrefix("#   ") {
                let body = line.dropFirst(4)
                guard let colon = body.firstIndex(of: ":") else { continue }
                let name = String(body[..<colon])
                let rest = body[body.index(after: colon)...].trimmedBlanks
                guard rest.hasPrefix("observed: ") else { continue }
                var text = rest
                if part == .fallback, let r = text.ranges(of: " (falls back to ").last { text = String(text[..<r.lowerBound]) }
                guard let u = Self.parseUse(text) else { throw fail("cannot read the reason") }
                if part == .fallback { fallbacks[name] = u } else { hardened[name] = u }
            }
        }
        guard runs > 0 else { throw ReadError(description: "\(file): no `# runs:` line in the header") }
    }

    /// `observed: 12 calls in 1 run (1 before ...), e.g. EXAMPLE`.
    static func parseUse(_ text: String) -> LearnedUse? {
        guard text.hasPrefix("observed: ") else { return nil }
        let words = text.dropFirst("observed: ".count).split(separator: " ", maxSplits: 5)
        guard words.count >= 5, let count = Int(words[0]), words[2] == "in", let runs = Int(words[3]) else { return nil }
        var launcher = 0
        if let open = text.firstRange(of: "run (") ?? text.firstRange(of: "runs ("), let n = Int(text[open.upperBound...].prefix { $0.isNumber }) {
            launcher = n
        }
        guard let eg = text.firstRange(of: ", e.g. ") else { return nil }
        var example = String(text[eg.upperBound...])
        var executables: [String] = []
        if let from = example.ranges(of: " from /").last {
            executables = example[example.index(after: from.lowerBound)...].dropFirst("from ".count)
                .split(separator: ", ").map(String.init)
            example = String(example[..<from.lowerBound])
        }
        return LearnedUse(count: count, runs: runs, example: example, launcher: launcher, executables: executables)
    }

    /// `arg1 == 0x5401` or `arg1 & 0xf == 1`, as ``LearnedCall/Condition/text``
    /// writes them for `call` (whose deciding arguments give the mask of `==`).
    static func parseCondition(_ text: String, of call: String) -> LearnedCall.Condition? {
        let parts = text.split(separator: " ")
        func number(_ s: Substring) -> UInt64? { s.hasPrefix("0x") ? UInt64(s.dropFirst(2), radix: 16) : UInt64(s) }
        guard let first = parts.first, first.hasPrefix("arg"), let index = Int(first.dropFirst(3)), (0..<6).contains(index) else { return nil }
        if parts.count == 3, parts[1] == "==", let v = number(parts[2]) {
            let mask = ProfileLearning.decidingArguments[call]?.first { $0.index == index }?.mask ?? .max
            return .init(index: index, mask: mask, value: v)
        }
        if parts.count == 5, parts[1] == "&", parts[3] == "==", let m = number(parts[2]), let v = number(parts[4]) {
            return .init(index: index, mask: m, value: v)
        }
        return nil
    }
}
