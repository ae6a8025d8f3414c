#if canImport(FoundationEssentials)
public import FoundationEssentials
#else
public import Foundation
#endif
#if canImport(Glibc)
import Glibc
#endif

/// The Docker/Moby seccomp JSON format, read unchanged and turned into
/// Stockade rules with Docker's own semantics for a jail that holds no
/// capabilities, on the native architecture:
///
/// - `defaultAction` with `defaultErrnoRet` (EPERM when absent);
/// - each `syscalls[]` entry with `names` (or the old `name`), `action`,
///   `errnoRet` (EPERM when absent), `args` (`index`, `value`, `valueTwo`,
///   `op`; for `SCMP_CMP_MASKED_EQ` `value` is the mask and `valueTwo` the
///   datum) ANDed within the entry;
/// - `includes`/`excludes` with `caps` (the jail has none: an entry that
///   includes capabilities is left out, one that excludes them stays),
///   `arches` (Docker's names: `amd64` is native) and `minKernel` (compared
///   with the running kernel);
/// - names the installed libseccomp does not know, and names of other
///   architectures, are skipped as Docker/runc skip them, and listed.
///
/// `archMap` is read but only the native architecture is compiled: the
/// hardening kills x32 and i386 calls, which Docker's profile allows.
public enum DockerSeccompProfile {
    public struct Imported: Sendable {
        public var defaultAction: SeccompAction
        public var rules: [SeccompRule]
        public var notes: [String]
    }

    public struct ImportError: Error, CustomStringConvertible, Sendable {
        public var description: String
    }

    struct File: Decodable {
        var defaultAction: String
        var defaultErrnoRet: Int?
        var architectures: [String]?
        var archMap: [ArchMap]?
        var syscalls: [Entry]?
        var flags: [String]?
        var listenerPath: String?
        var listenerMetadata: String?

        struct ArchMap: Decodable {
            var architecture: String
            var subArchitectures: [String]?
        }
        struct Entry: Decodable {
            var names: [String]?
            var name: String?
            var action: String
            var errnoRet: Int?
            var args: [Arg]?
            var includes: Filter?
            var excludes: Filter?
            var comment: String?
        }
        struct Arg: Decodable {
            var index: Int
            var value: UInt64
            var valueTwo: UInt64?
            var op: String
        }
        struct Filter: Decodable {
            var caps: [String]?
            var arches: [String]?
            var minKernel: String?
        }
    }

    /// Docker's name for the native architecture in `includes.arches`.
    static let nativeDockerArch = "amd64"

    /// Docker's own profile is about 20 KB; anything past this is not one.
    static let maxSize = 4 << 20

    public static func load(path: String) throws(ImportError) -> Imported {
        // Only a regular file of sane size: a profile naming /dev/zero or a
        // FIFO must fail, not hang.
        var st = stat()
        guard stat(path, &st) == 0 else {
            throw ImportError(description: "cannot read the Docker profile \(path): \(String(cString: strerror(errno)))")
        }
        guard (st.st_mode & S_IFMT) == S_IFREG, st.st_size <= maxSize else {
            throw ImportError(description: "the Docker profile \(path) is not a regular file of at most 4 MiB")
        }
        guard let data = FileManager.default.contents(atPath: path) else {
            throw ImportError(description: "cannot read the Docker profile \(path)")
        }
        return try parse(data: data, name: URL(fileURLWithPath: path).lastPathComponent, kernel: runningKernel())
    }

    /// The running kernel's version as (major, minor).
    public static func runningKernel() -> (Int, Int) {
        var u = utsname()
        uname(&u)
        let release = withUnsafeBytes(of: &u.release) { String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self) }
        return parseVersion(release) ?? (0, 0)
    }

    static func parseVersion(_ s: String) -> (Int, Int)? {
        let parts = s.split(whereSeparator: { !$0.isNumber }).prefix(2).compactMap { Int($0) }
        guard parts.count == 2 else { return nil }
        return (parts[0], parts[1])
    }

    public static func parse(data: Data, name: String, kernel: (Int, Int)) throws(ImportError) -> Imported {
        let file: File
        do {
            file = try JSONDecoder().decode(File.self, from: data)
        } catch let DecodingError.keyNotFound(key, ctx) {
            throw ImportError(description: "\(name): missing \"\(key.stringValue)\" at \(path(ctx.codingPath))")
        } catch let DecodingError.typeMismatch(_, ctx) {
            throw ImportError(description: "\(name): wrong type at \(path(ctx.codingPath)): \(ctx.debugDescription)")
        } catch let DecodingError.valueNotFound(_, ctx) {
            throw ImportError(description: "\(name): null at \(path(ctx.codingPath))")
        } catch {
            throw ImportError(description: "\(name): not a Docker seccomp profile: \(error)")
        }
        var notes: [String] = []
        let defaultErrno = try errnoValue(file.defaultErrnoRet, at: "\(name): defaultErrnoRet")
        guard let defaultAction = action(file.defaultAction, errno: defaultErrno) else {
            throw ImportError(description: "\(name): defaultAction \(file.defaultAction) is not a Docker action")
        }
        if let flags = file.flags, !flags.isEmpty {
            notes.append("\(name): flags \(flags.joined(separator: ", ")) are not applied (Stockade loads the filter itself)")
        }
        if file.listenerPath != nil {
            notes.append("\(name): listenerPath is not used; notify actions get ENOSYS without a supervisor")
        }
        if file.archMap != nil || file.architectures != nil {
            notes.append("\(name): only the native architecture is compiled; x32 and i386 calls are killed")
        }

        var rules: [SeccompRule] = []
        var unknown: Set<String> = [], foreign: Set<String> = []
        for (i, entry) in (file.syscalls ?? []).enumerated() {
            let origin = "docker:\(name) syscalls[\(i)]"
            if let inc = entry.includes {
                if let caps = inc.caps, !caps.isEmpty { continue }  // the jail holds no capability
                if let arches = inc.arches, !arches.isEmpty, !arches.contains(nativeDockerArch) { continue }
                if let mk = inc.minKernel {
                    guard let want = parseVersion(mk) else {
                        throw ImportError(description: "\(origin): minKernel \"\(mk)\" is not a kernel version")
                    }
                    if kernel < want { continue }
                }
            }
            if let exc = entry.excludes {
                // Excluded capabilities are never held; only arches can exclude.
                if let arches = exc.arches, arches.contains(nativeDockerArch) { continue }
                if let mk = exc.minKernel, let want = parseVersion(mk), kernel >= want { continue }
            }
            guard let act = action(entry.action, errno: try errnoValue(entry.errnoRet, at: "\(origin): errnoRet")) else {
                throw ImportError(description: "\(origin): action \(entry.action) is not a Docker action")
            }
            var conditions: [SeccompCondition] = []
            for arg in entry.args ?? [] {
                guard (0...5).contains(arg.index) else {
                    throw ImportError(description: "\(origin): argument index \(arg.index) is not 0...5")
                }
                guard let op = op(arg.op) else {
                    throw ImportError(description: "\(origin): op \(arg.op) is not a Docker comparison")
                }
                conditions.append(op == .maskedEq
                    ? SeccompCondition(arg: arg.index, op: op, value: arg.valueTwo ?? 0, mask: arg.value)
                    : SeccompCondition(arg: arg.index, op: op, value: arg.value))
            }
            if Set(conditions.map(\.arg)).count != conditions.count {
                notes.append("\(origin): skipped: it compares one argument twice, which libseccomp rejects")
                continue
            }
            for n in (entry.names ?? []) + (entry.name.map { [$0] } ?? []) {
                guard let nr = Syscalls.number(of: n) else {
                    if Syscalls.isForeign(n) { foreign.insert(n) } else { unknown.insert(Syscalls.shown(n)) }
                    continue
                }
                if act.permits, let call = HardenedCall.named(n), call.isTotal {
                    notes.append("\(origin): \(n) is allowed by the Docker profile but denied by the hardening (\(call.why))")
                    continue
                }
                rules.append(SeccompRule(syscall: n, number: nr, action: act, conditions: conditions, origin: origin, imported: true))
            }
        }
        if !unknown.isEmpty {
            notes.append("\(name): skipped, unknown to the installed libseccomp: \(unknown.sorted().joined(separator: ", "))")
        }
        if !foreign.isEmpty {
            notes.append("\(name): skipped, not system calls on this architecture: \(foreign.sorted().joined(separator: ", "))")
        }
        rules = resolveLikeLibseccomp(rules, notes: &notes)
        return Imported(defaultAction: defaultAction, rules: rules, notes: notes)
    }

    /// Docker hands the rules to libseccomp one by one; where a call has an
    /// unconditional rule, libseccomp drops its conditional rules. Do the
    /// same here, visibly.
    static func resolveLikeLibseccomp(_ rules: [SeccompRule], notes: inout [String]) -> [SeccompRule] {
        var plain: [Int32: SeccompRule] = [:]
        for r in rules where r.conditions.isEmpty && plain[r.number] == nil { plain[r.number] = r }
        var result: [SeccompRule] = []
        var seen = Set<SeccompRule>()
        for r in rules {
            if let p = plain[r.number] {
                if r.conditions.isEmpty {
                    if r.action != p.action {
                        notes.append("\(r.origin): \(r.syscall) \(r.action) ignored: \(p.origin) already gives it \(p.action)")
                        continue
                    }
                } else {
                    notes.append("\(r.origin): conditional rule for \(r.syscall) has no effect beside the unconditional one in \(p.origin)")
                    continue
                }
            }
            var key = r
            key.origin = ""
            if seen.insert(key).inserted { result.append(r) }
        }
        return result
    }

    /// `errnoRet` (EPERM when absent): the 16-bit data field of a seccomp
    /// return value, so 0...65535; anything else is refused, not truncated.
    static func errnoValue(_ raw: Int?, at place: String) throws(ImportError) -> Int32 {
        guard let raw else { return 1 }
        guard (0...0xffff).contains(raw) else {
            throw ImportError(description: "\(place) \(raw) is out of range 0...65535")
        }
        return Int32(raw)
    }

    static func action(_ name: String, errno: Int32) -> SeccompAction? {
        switch name {
        case "SCMP_ACT_ALLOW": return .allow
        case "SCMP_ACT_ERRNO": return .errno(errno)
        case "SCMP_ACT_KILL", "SCMP_ACT_KILL_THREAD": return .killThread
        case "SCMP_ACT_KILL_PROCESS": return .killProcess
        case "SCMP_ACT_TRAP": return .trap
        case "SCMP_ACT_LOG": return .log
        case "SCMP_ACT_NOTIFY": return .notify
        case "SCMP_ACT_TRACE": return .trace(UInt16(truncatingIfNeeded: errno))
        default: return nil
        }
    }

    static func op(_ name: String) -> SeccompCondition.Op? {
        switch name {
        case "SCMP_CMP_NE": return .ne
        case "SCMP_CMP_LT": return .lt
        case "SCMP_CMP_LE": return .le
        case "SCMP_CMP_EQ": return .eq
        case "SCMP_CMP_GE": return .ge
        case "SCMP_CMP_GT": return .gt
        case "SCMP_CMP_MASKED_EQ": return .maskedEq
        default: return nil
        }
    }

    private static func path(_ keys: [any CodingKey]) -> String {
        keys.map { $0.intValue.map { "[\($0)]" } ?? ".\($0.stringValue)" }.joined()
    }
}
