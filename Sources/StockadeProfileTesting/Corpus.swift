public import StockadeSeccomp
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// A corpus of system calls, one JSON object a line:
///
/// ```json
/// {"arch": "x86_64", "nr": "socket", "args": [16, 3, 0]}
/// {"arch": "i386", "nr": 213, "args": ["0x0"]}
/// {"arch": "x32", "nr": 41}
/// ```
///
/// `arch` is `x86_64` (default), `i386`, `x32` (x86_64 with the x32 bit set
/// in the number) or an `AUDIT_ARCH_*` number; `nr` a number or a native
/// system-call name; `args` up to six numbers, each a JSON integer or a
/// string (`"0x..."`, decimal, or negative as two's complement), so that
/// 64-bit values survive JSON readers that use doubles.
public enum CallCorpus {
    public struct LineError: Error, CustomStringConvertible {
        public var description: String
    }

    struct Line: Decodable {
        var arch: Value?
        var nr: Value
        var args: [Value]?
    }

    enum Value: Decodable {
        case number(UInt64)
        case text(String)
        init(from decoder: any Decoder) throws {
            let c = try decoder.singleValueContainer()
            if let n = try? c.decode(UInt64.self) { self = .number(n); return }
            if let n = try? c.decode(Int64.self) { self = .number(UInt64(bitPattern: n)); return }
            self = .text(try c.decode(String.self))
        }
        var asNumber: UInt64? {
            switch self {
            case .number(let n): return n
            case .text(let s): return CallCorpus.number(s)
            }
        }
    }

    static func number(_ s: String) -> UInt64? {
        let t = s.trimmedBlanks.without("_")
        if t.hasPrefix("-"), let v = Int64(t) { return UInt64(bitPattern: v) }
        if t.lowercased().hasPrefix("0x") { return UInt64(t.dropFirst(2), radix: 16) }
        return UInt64(t)
    }

    /// Parses a corpus; an error names the line.
    public static func parse(_ text: String, file: String) throws(LineError) -> [SeccompData] {
        var calls: [SeccompData] = []
        for (i, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = raw.trimmedBlanks
            if line.isEmpty || line.hasPrefix("#") { continue }
            func fail(_ m: String) -> LineError { LineError(description: "\(file):\(i + 1): \(m)") }
            let entry: Line
            do {
                entry = try JSONDecoder().decode(Line.self, from: Data(line.utf8))
            } catch {
                throw fail("not a corpus entry ({\"arch\": ..., \"nr\": ..., \"args\": [...]}): \(error)")
            }
            var arch = SeccompArch.x86_64
            var x32 = false
            switch entry.arch {
            case nil: break
            case .text("x86_64")?, .text("amd64")?: break
            case .text("i386")?, .text("x86")?: arch = SeccompArch.i386
            case .text("x32")?: x32 = true
            case let v?:
                guard let n = v.asNumber, n <= UInt64(UInt32.max) else { throw fail("unknown arch (x86_64, i386, x32 or an AUDIT_ARCH number)") }
                arch = UInt32(n)
            }
            var nr: Int32
            switch entry.nr {
            case .text(let name) where Syscalls.number(of: name) != nil:
                nr = Syscalls.number(of: name)!
            case let v:
                guard let n = v.asNumber, n <= UInt64(UInt32.max) || Int64(bitPattern: n) >= Int64(Int32.min) else {
                    throw fail("nr must be a 32-bit number or a native system-call name")
                }
                nr = Int32(truncatingIfNeeded: n)
            }
            if x32 { nr |= Int32(bitPattern: SeccompArch.x32SyscallBit) }
            let values = entry.args ?? []
            guard values.count <= 6 else { throw fail("at most six arguments") }
            var args: [UInt64] = []
            for (k, v) in values.enumerated() {
                guard let n = v.asNumber else { throw fail("args[\(k)] is not a number") }
                args.append(n)
            }
            calls.append(SeccompData(nr: nr, arch: arch, args: args))
        }
        return calls
    }

    /// One corpus line for a call (args as hex strings).
    public static func line(_ call: SeccompData) -> String {
        let args = call.args.map { "\"0x\(String($0, radix: 16))\"" }.joined(separator: ",")
        return "{\"arch\":\"\(archName(call.arch))\",\"nr\":\(call.nr),\"args\":[\(args)]}"
    }

    public static func archName(_ arch: UInt32) -> String {
        switch arch {
        case SeccompArch.x86_64: return "x86_64"
        case SeccompArch.i386: return "i386"
        default: return "0x" + String(arch, radix: 16)
        }
    }

    /// A call as a person reads it: `socket(0x10, 0x3, 0)` on x86_64,
    /// `x32 getppid`, `i386 #213(...)`.
    public static func describe(_ call: SeccompData) -> String {
        let nr = UInt32(bitPattern: call.nr)
        var prefix = ""
        var name: String
        if call.arch == SeccompArch.x86_64 && nr != 0xffff_ffff && nr & SeccompArch.x32SyscallBit != 0 {
            prefix = "x32 "
            let base = Int32(bitPattern: nr & ~SeccompArch.x32SyscallBit)
            name = Syscalls.name(of: base) ?? "#\(base)"
        } else if call.arch == SeccompArch.x86_64 {
            name = Syscalls.name(of: call.nr) ?? "#\(call.nr)"
        } else {
            prefix = archName(call.arch) + " "
            name = "#\(call.nr)"
        }
        var args = call.args
        while let last = args.last, last == 0 { args.removeLast() }
        let shown = args.map { $0 < 10 ? String($0) : "0x" + String($0, radix: 16) }.joined(separator: ", ")
        return "\(prefix)\(name)(\(shown))"
    }
}
