import TOMLKit
import StockadeSeccomp
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// `stockade minimize`: the profile's `[seccomp]` as a list of things it
/// allows, shrunk by delta debugging to the fewest under which a test still
/// passes. What only denies (deny lists, rules with denying actions, the
/// default) is kept as written; with `base = "stock"` the stock allowlist
/// is written out entry by entry so that each can go.
public struct SeccompMinimizer: Sendable {
    /// One `[[seccomp.rule]]` as written.
    public struct Rule: Sendable, Hashable {
        public var names: [String]
        public var action: String
        public var args: [String]
        public var optional: Bool
    }

    /// What may be removed: an `allow` entry or one system call of a permitting rule.
    public enum Unit: Sendable, Hashable {
        case allow(String)
        case rule(Int, String)
    }

    /// The profile text outside `[seccomp]`, kept as written.
    public var rest: String
    public var scalars: [(String, String)] = []
    public var deny: [String] = []
    public var dangerous: [(String, String)] = []
    public var allow: [String] = []
    public var rules: [Rule] = []
    public var expandedStock = false

    public struct ReadError: Error, CustomStringConvertible { public var description: String }

    /// Reads a profile; `directory` resolves a relative Docker import.
    public init(text: String, file: String, directory: String) throws(ReadError) {
        let root: TOMLTable
        do { root = try TOMLTable(string: text) } catch { throw ReadError(description: "\(file): \(error)") }
        rest = Self.withoutSeccomp(text)
        guard let s = root["seccomp"]?.table else {
            expandStock()
            return
        }
        for key in ["default", "deny_action"] { if let v = s[key]?.string { scalars.append((key, v)) } }
        if var imp = s["import"]?.string {
            if imp.hasPrefix("docker:") && !imp.hasPrefix("docker:/") { imp = "docker:" + directory + "/" + imp.dropFirst(7) }
            scalars.append(("import", imp))
        }
        deny = (s["deny"]?.array ?? []).compactMap(\.string)
        allow = (s["allow"]?.array ?? []).compactMap(\.string)
        if let d = s["allow_dangerous"]?.table { dangerous = d.keys.sorted().compactMap { k in d[k]?.string.map { (k, $0) } } }
        for entry in s["rule"]?.array ?? [] {
            guard let t = entry.table else { continue }
            var names = (t["syscalls"]?.array ?? []).compactMap(\.string)
            if let one = t["syscall"]?.string { names.insert(one, at: 0) }
            rules.append(Rule(names: names, action: t["action"]?.string ?? "", args: (t["args"]?.array ?? []).compactMap(\.string),
                              optional: t["optional"]?.bool ?? false))
        }
        let base = s["base"]?.string ?? (s["import"] == nil ? "stock" : nil)
        if base == "stock" { expandStock() } else if let base { scalars.append(("base", base)) }
    }

    /// The stock allowlist as explicit entries (base = "none"), leaving out
    /// calls the profile's own rules already decide (they replace the base's).
    mutating func expandStock() {
        expandedStock = true
        scalars.append(("base", "none"))
        let own = Set(allow + deny + rules.flatMap(\.names)).map { $0.hasSuffix("?") ? String($0.dropLast()) : $0 }
        let ownSet = Set(own)
        allow += SeccompSection.stockAllowlist.filter { !ownSet.contains($0) && Syscalls.number(of: $0) != nil }
        for (name, family, protocols) in SeccompSection.stockSockets where !ownSet.contains(name) {
            for p in protocols {
                rules.append(Rule(names: [name], action: "allow", args: ["arg0 == \(family)", "arg2 == \(p)"], optional: false))
            }
        }
    }

    static func permits(_ action: String) -> Bool {
        SeccompAction(parsing: action)?.permits ?? false
    }

    /// Every removable unit, in the order written.
    public var units: [Unit] {
        allow.map { .allow($0) } + rules.enumerated().flatMap { i, r in Self.permits(r.action) ? r.names.map { .rule(i, $0) } : [] }
    }

    /// The profile text keeping only `kept` of the units.
    public func render(keeping kept: Set<Unit>) -> String {
        func list(_ l: [String]) -> String { "[" + l.map { "\"\($0)\"" }.joined(separator: ", ") + "]" }
        func quoted(_ s: String) -> String { s.tomlQuoted }
        var s = rest.hasSuffix("\n") || rest.isEmpty ? rest : rest + "\n"
        s += "\n[seccomp]\n"
        for (k, v) in scalars { s += "\(k) = \(quoted(v))\n" }
        let allowKept = allow.filter { kept.contains(.allow($0)) }
        if !allowKept.isEmpty { s += "allow = \(list(allowKept))\n" }
        if !deny.isEmpty { s += "deny = \(list(deny))\n" }
        if !dangerous.isEmpty { s += "allow_dangerous = { " + dangerous.map { "\($0.0) = \(quoted($0.1))" }.joined(separator: ", ") + " }\n" }
        for (i, r) in rules.enumerated() {
            let names = Self.permits(r.action) ? r.names.filter { kept.contains(.rule(i, $0)) } : r.names
            guard !names.isEmpty else { continue }
            s += "\n[[seccomp.rule]]\nsyscalls = \(list(names))\naction = \(quoted(r.action))\n"
            if !r.args.isEmpty { s += "args = \(list(r.args))\n" }
            if r.optional { s += "optional = true\n" }
        }
        return s
    }

    /// The text without the `[seccomp]` table and its sub-tables.
    static func withoutSeccomp(_ text: String) -> String {
        var out: [Substring] = []
        var inSeccomp = false
        for line in text.split(separator: "\n", omittingEmptySubsequences: false) {
            let t = line.trimmedBlanks
            if t.hasPrefix("[") {
                // `[seccomp]`, `[[seccomp.rule]]`, `[ seccomp.x ]  # comment`
                let header = t.prefix { $0 != "#" }.filter { $0 != "[" && $0 != "]" && $0 != " " && $0 != "\t" }
                inSeccomp = header == "seccomp" || header.hasPrefix("seccomp.")
            }
            if !inSeccomp { out.append(line) }
        }
        return out.joined(separator: "\n")
    }

    /// Shrinks to the fewest units under which `passes` holds; `passes` gets
    /// the candidate profile's text. Returns the kept units and the test count.
    public func minimize(_ passes: (String) throws -> Bool) rethrows -> (kept: [Unit], tests: Int) {
        var tests = 0
        let all = units
        let kept = try DeltaDebugging.minimize(all) { subset in
            tests += 1
            return try passes(render(keeping: Set(subset)))
        }
        return (kept, tests)
    }
}
