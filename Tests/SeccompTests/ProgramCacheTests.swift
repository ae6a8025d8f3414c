import Foundation
import Testing
@testable import StockadeSeccomp

/// The cache of compiled programs, attacked the way someone who can touch
/// its files would: links, modes, owners, hard links, foreign and altered
/// entries, and an unsafe directory. Every refused entry must cost a
/// compile, never a wrong filter. Each test has a directory of its own
/// under /tmp (root's, 0700), never the shared /run/stockade/plans.
extension SeccompTests {
@Suite struct ProgramCacheTests {
    /// The cross-check's policy: rules with conditions, errno verdicts no real call returns.
    static let policy = CrossCheckTests.policyText
    static let other = """
        [seccomp]
        default = "errno:4002"
        """

    /// A fresh cache directory (and its path), removed by the caller.
    static func freshCache() throws -> (SeccompProgramCache, String) {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("stockade-cache-\(UUID().uuidString)").path
        return (try SeccompProgramCache(directory: dir), dir)
    }

    static func section(_ text: String) throws -> SeccompSection { try profile(text).seccomp }

    /// Two lifted hardening entries, and a stock allowlist whose notes the key carries.
    static let lifting = """
        [seccomp]
        default = "errno:4003"
        allow_dangerous = { ptrace = "a debugger worker", personality = "an emulator" }
        allow = ["ptrace", "personality", "read"]
        """

    @Test("the key lists every rule and condition as decimal text, one line a rule", arguments: [policy, other, lifting])
    func keyText(_ text: String) throws {
        let section = try Self.section(text)
        let key = String(decoding: SeccompProgramCache.key(for: section), as: UTF8.self)
        // The rule lines, written here with string interpolation.
        let expected = section.rules.map { r in
            "rule \(r.number) \(r.action.raw) " + r.conditions.map { "\($0.arg) \($0.op.rawValue) \($0.mask) \($0.value)" }.joined(separator: "; ")
        }
        let lines = key.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        #expect(Array(lines.filter { $0.hasPrefix("rule ") }) == expected)
        #expect(lines.first?.hasPrefix("stockade ") == true && lines.contains { $0.hasPrefix("kernel ") })
        // The lifted hardening and the notes, each note on one line.
        #expect(lines.contains("lift " + section.allowDangerous.keys.sorted().joined(separator: ",")))
        #expect(lines.filter { $0.hasPrefix("note ") } == section.notes.map { "note " + $0.replacingOccurrences(of: "\n", with: " ") })
        #expect(section.rules.contains { !$0.conditions.isEmpty } || text != Self.policy)
        #expect(section.rules.contains { $0.conditions.contains { $0.value > UInt64(UInt32.max) || $0.mask != 0 } } || text != Self.policy)
        #expect(lines.contains("lift personality,ptrace") || text != Self.lifting)
    }

    @Test("an entry's name is seccomp- and the key's 64-bit FNV-1a hash in sixteen lower-case hex digits")
    func entryNames() throws {
        func fnv(_ key: [UInt8]) -> UInt64 {
            var h: UInt64 = 0xcbf2_9ce4_8422_2325
            for b in key { h = (h ^ UInt64(b)) &* 0x0000_0100_0000_01b3 }
            return h
        }
        // A key whose hash has a leading zero digit, which the name keeps.
        let short = try #require((0..<4096).lazy.map { [UInt8($0 & 0xff), UInt8($0 >> 8)] }.first { fnv($0) >> 60 == 0 })
        for key in [[], [0], Array("stockade".utf8), short, SeccompProgramCache.key(for: try Self.section(Self.policy))] {
            let hex = String(fnv(key), radix: 16)
            #expect(SeccompProgramCache.entryName(key) == "seccomp-" + String(repeating: "0", count: 16 - hex.count) + hex)
        }
    }

    static func entryPath(_ dir: String, _ text: String) throws -> String {
        dir + "/" + SeccompProgramCache.entryName(SeccompProgramCache.key(for: try section(text)))
    }

    @Test("the first launch stores, the next one reads the very program libseccomp made")
    func storeThenHit() throws {
        try #require(geteuid() == 0, "the cache is root's only")
        let (cache, dir) = try Self.freshCache()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let s = try Self.section(Self.policy)
        let (first, o1) = try cache.program(for: s)
        #expect(o1 == .stored)
        let (second, o2) = try cache.program(for: s)
        #expect(o2 == .hit)
        let fresh = try s.compile()
        #expect(second.bytes == fresh.bytes && first.bytes == fresh.bytes)
        #expect(second.preludeCount == fresh.preludeCount && second.flags == fresh.flags && second.notes == fresh.notes)
        let attrs = try FileManager.default.attributesOfItem(atPath: try Self.entryPath(dir, Self.policy))
        #expect((attrs[.posixPermissions] as? Int) == 0o600)
        // Another policy is another entry.
        let (_, o3) = try cache.program(for: try Self.section(Self.other))
        #expect(o3 == .stored)
        // What the kernel loads from a hit still denies what it must.
        #expect(try Helpers.sysc(second, [String(nr("getppid")), "5"]) == .errno(4001))
        #expect(try Helpers.sysc(second, [String(nr("mount")), "0", "0", "0", "0", "0"]) == .errno(1))
    }

    /// Stores an entry, lets `tamper` change it, and expects the next lookup
    /// to refuse it and compile (the fresh program, then a hit again).
    func expectRefused(_ what: String, _ tamper: (_ entry: String, _ dir: String) throws -> Void) throws {
        let (cache, dir) = try Self.freshCache()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let s = try Self.section(Self.policy)
        _ = try cache.program(for: s)
        try tamper(try Self.entryPath(dir, Self.policy), dir)
        let (program, outcome) = try cache.program(for: s)
        guard case .compiled = outcome else {
            Issue.record("\(what): the tampered entry was used (\(outcome))")
            return
        }
        #expect(program.bytes == (try s.compile()).bytes, "\(what): not the compiled program")
    }

    @Test("a symlink, a loose mode, another owner or a second link: the entry is refused")
    func fileAttributes() throws {
        try #require(geteuid() == 0, "the cache is root's only")
        try expectRefused("symlink to a valid entry") { entry, dir in
            let elsewhere = dir + "/moved-away"
            try FileManager.default.moveItem(atPath: entry, toPath: elsewhere)
            try FileManager.default.createSymbolicLink(atPath: entry, withDestinationPath: elsewhere)
        }
        try expectRefused("mode 0644") { entry, _ in #expect(chmod(entry, 0o644) == 0) }
        try expectRefused("mode 0666") { entry, _ in #expect(chmod(entry, 0o666) == 0) }
        try expectRefused("owned by nobody") { entry, _ in #expect(chown(entry, 65534, 65534) == 0) }
        try expectRefused("a second hard link") { entry, dir in #expect(link(entry, dir + "/extra") == 0) }
        try expectRefused("a directory in its place") { entry, _ in
            try FileManager.default.removeItem(atPath: entry)
            #expect(mkdir(entry, 0o700) == 0)
        }
        try expectRefused("a fifo in its place") { entry, _ in
            try FileManager.default.removeItem(atPath: entry)
            #expect(mkfifo(entry, 0o600) == 0)
        }
    }

    @Test("altered contents: truncated, padded, another policy's entry, a changed prelude, an allow-all program")
    func contents() throws {
        try #require(geteuid() == 0, "the cache is root's only")
        func rewrite(_ path: String, _ change: (inout [UInt8]) -> Void) throws {
            var bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
            change(&bytes)
            try Data(bytes).write(to: URL(fileURLWithPath: path))
            #expect(chmod(path, 0o600) == 0)
        }
        try expectRefused("truncated") { entry, _ in try rewrite(entry) { $0.removeLast(9) } }
        try expectRefused("a byte appended") { entry, _ in try rewrite(entry) { $0.append(0) } }
        try expectRefused("empty") { entry, _ in try rewrite(entry) { $0 = [] } }
        try expectRefused("one key byte changed") { entry, _ in try rewrite(entry) { $0[12] ^= 1 } }
        try expectRefused("another policy's entry under this name") { entry, dir in
            let (cache, otherDir) = try Self.freshCache()
            defer { try? FileManager.default.removeItem(atPath: otherDir) }
            _ = try cache.program(for: try Self.section(Self.other))
            let foreign = try Data(contentsOf: URL(fileURLWithPath: try Self.entryPath(otherDir, Self.other)))
            try foreign.write(to: URL(fileURLWithPath: entry))
            #expect(chmod(entry, 0o600) == 0)
        }
        let key = SeccompProgramCache.key(for: try Self.section(Self.policy))
        let good = try Self.section(Self.policy).compile()
        let allow = BPFInstruction(code: BPFInstruction.RET | BPFInstruction.K, k: 0x7fff_0000)
        try expectRefused("the right key with an allow-all program and no prelude") { entry, _ in
            let forged = SeccompProgramCache.Entry(key: key, preludeCount: 0, flags: 0, notes: [],
                                                   program: BPFInstruction.encode([allow]))
            try Data(forged.encoded).write(to: URL(fileURLWithPath: entry))
            #expect(chmod(entry, 0o600) == 0)
        }
        try expectRefused("the right key with the prelude's mount check turned into an allow") { entry, _ in
            var instructions = good.instructions
            let mount = UInt32(nr("mount"))
            let at = try #require(instructions.prefix(good.preludeCount).firstIndex { $0.code == BPFInstruction.JMP | BPFInstruction.JEQ && $0.k == mount })
            instructions[at].k = 0xffff_fff0
            let forged = SeccompProgramCache.Entry(key: key, preludeCount: good.preludeCount, flags: 0, notes: good.notes,
                                                   program: BPFInstruction.encode(instructions))
            try Data(forged.encoded).write(to: URL(fileURLWithPath: entry))
            #expect(chmod(entry, 0o600) == 0)
        }
        try expectRefused("the right key and a prelude count past the program") { entry, _ in
            let forged = SeccompProgramCache.Entry(key: key, preludeCount: good.instructions.count + 5, flags: 0, notes: [],
                                                   program: good.bytes)
            try Data(forged.encoded).write(to: URL(fileURLWithPath: entry))
            #expect(chmod(entry, 0o600) == 0)
        }
    }

    @Test("a directory others could write, or reached through a link, is not used at all")
    func unsafeDirectories() throws {
        try #require(geteuid() == 0, "the cache is root's only")
        let base = FileManager.default.temporaryDirectory.appendingPathComponent("stockade-cachedir-\(UUID().uuidString)").path
        #expect(mkdir(base, 0o700) == 0)
        defer { try? FileManager.default.removeItem(atPath: base) }
        func refused(_ path: String, _ what: String) {
            #expect(throws: SeccompProgramCache.Unusable.self, "\(what): the cache was opened") {
                _ = try SeccompProgramCache(directory: path, create: false)
            }
        }
        #expect(mkdir(base + "/open", 0o755) == 0)
        refused(base + "/open", "mode 0755")
        #expect(mkdir(base + "/group", 0o770) == 0)
        refused(base + "/group", "mode 0770")
        #expect(mkdir(base + "/nobody", 0o700) == 0 && chown(base + "/nobody", 65534, 65534) == 0)
        refused(base + "/nobody", "owned by nobody")
        #expect(mkdir(base + "/real", 0o700) == 0)
        #expect(symlink(base + "/real", base + "/link") == 0)
        refused(base + "/link", "a symlink to a good directory")
        #expect(mkdir(base + "/parent", 0o777) == 0 && chmod(base + "/parent", 0o777) == 0 && mkdir(base + "/parent/cache", 0o700) == 0)
        refused(base + "/parent/cache", "under a world-writable parent without the sticky bit")
        #expect(mkdir(base + "/nobodys", 0o755) == 0 && chown(base + "/nobodys", 65534, 65534) == 0 && mkdir(base + "/nobodys/cache", 0o700) == 0)
        refused(base + "/nobodys/cache", "under a parent owned by nobody")
        refused(base + "/real/../real", "with ..")
        // The good one opens; /tmp on the way is world-writable but sticky.
        _ = try SeccompProgramCache(directory: base + "/real", create: false)
    }
}
}
