import TOMLKit
import Synchronization
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
#if canImport(Glibc)
import Glibc
#endif

/// A user error in a profile: names the file, the line and the key.
///
/// Printed as `profiles/x.toml:12: mount[1].target: must be an absolute path`.
public struct ProfileError: Error, CustomStringConvertible, Sendable, Equatable {
    public var file: String
    public var line: Int?
    public var key: String
    public var message: String

    public init(file: String, line: Int?, key: String, message: String) {
        self.file = file
        self.line = line
        self.key = key
        self.message = message
    }

    public var description: String {
        let place = line.map { "\(file):\($0)" } ?? file
        return key.isEmpty ? "\(place): \(message)" : "\(place): \(key): \(message)"
    }
}

/// Where each key of a TOML document sits, for error messages.
///
/// The TOML library gives no source positions for values, so this scans the
/// text once: table headers (`[a.b]`, `[[a]]`, counting array-of-table
/// entries) and `key =` lines, skipping multi-line strings and arrays. Keys are
/// recorded as dotted paths with array indices: `mount[1].target`.
package struct TOMLLineIndex: Sendable {
    private var lines: [String: Int] = [:]

    /// Scans the text's bytes: every delimiter the index looks for is
    /// ASCII, and a walk of Characters (grapheme breaking at every step)
    /// cost more than the TOML parser itself at every launch. A line ends
    /// at LF (a CR before it changes nothing the index reads; as a
    /// Character, CR LF was one, and such a file was a single line).
    package init(text: String) {
        var table = ""
        var arrayCounts: [String: Int] = [:]
        var inMultilineString: [UInt8]? = nil
        var bracketDepth = 0
        var lineNumber = 0
        let bytes = Array(text.utf8)
        var start = 0
        while start <= bytes.count {
            var end = start
            while end < bytes.count, bytes[end] != Self.newline { end += 1 }
            lineNumber += 1
            var line = bytes[start..<end]
            start = end + 1
            if let delimiter = inMultilineString {
                if Self.count(delimiter, in: line) % 2 == 1 { inMultilineString = nil }
                continue
            }
            if bracketDepth > 0 {
                bracketDepth += Self.bracketBalance(line)
                continue
            }
            line = Self.dropBlanks(line)
            if line.isEmpty || line.first == UInt8(ascii: "#") { continue }
            if line.starts(with: Self.doubleOpen) {
                let name = Self.headerName(line.dropFirst(2), closing: Self.doubleClose)
                let index = arrayCounts[name, default: 0]
                arrayCounts[name] = index + 1
                // Nested tables of an earlier entry are forgotten when a new entry starts.
                for key in arrayCounts.keys where key.hasPrefix(name + "[") { arrayCounts[key] = nil }
                table = "\(name)[\(index)]"
                lines[table] = lineNumber
                continue
            }
            if line.first == UInt8(ascii: "[") {
                table = Self.resolve(Self.headerName(line.dropFirst(), closing: [UInt8(ascii: "]")]), arrayCounts: arrayCounts)
                lines[table] = lineNumber
                continue
            }
            guard let eq = Self.assignmentIndex(line) else { continue }
            let key = Self.normalizeKey(line[..<eq])
            let path = table.isEmpty ? key : "\(table).\(key)"
            if lines[path] == nil { lines[path] = lineNumber }
            let value = Self.dropBlanks(line[(eq + 1)...])
            for delimiter in Self.multilineDelimiters where value.starts(with: delimiter) {
                if Self.count(delimiter, in: value) == 1 { inMultilineString = delimiter }
            }
            if inMultilineString == nil { bracketDepth = max(0, Self.bracketBalance(value)) }
        }
    }

    private static let newline = UInt8(ascii: "\n")
    private static let doubleOpen: [UInt8] = Array("[[".utf8)
    private static let doubleClose: [UInt8] = Array("]]".utf8)
    private static let multilineDelimiters: [[UInt8]] = [Array("\"\"\"".utf8), Array("'''".utf8)]

    private static func isBlank(_ b: UInt8) -> Bool { b == UInt8(ascii: " ") || b == UInt8(ascii: "\t") }

    private static func dropBlanks(_ s: ArraySlice<UInt8>) -> ArraySlice<UInt8> {
        var s = s
        while let f = s.first, isBlank(f) { s = s.dropFirst() }
        return s
    }

    /// The line of `path` (`jail.hostname`, `mount[2].source`), or of the
    /// nearest enclosing table that has one.
    package func line(of path: String) -> Int? {
        var candidate = path
        while true {
            if let line = lines[candidate] { return line }
            guard let cut = candidate.lastIndex(where: { $0 == "." || $0 == "[" }) else { return nil }
            candidate = String(candidate[..<cut])
        }
    }

    /// The line of `path` itself; nil when the text does not set that key.
    package func exactLine(of path: String) -> Int? {
        lines[path]
    }

    private static func headerName(_ s: ArraySlice<UInt8>, closing: [UInt8]) -> String {
        let end = firstIndex(of: closing, in: s) ?? s.endIndex
        return normalizeKey(s[..<end])
    }

    private static func firstIndex(of needle: [UInt8], in s: ArraySlice<UInt8>) -> Int? {
        guard !needle.isEmpty, s.count >= needle.count else { return nil }
        var i = s.startIndex
        while i + needle.count <= s.endIndex {
            if s[i..<(i + needle.count)].elementsEqual(needle) { return i }
            i += 1
        }
        return nil
    }

    /// `[mount.options]` after three `[[mount]]` entries means `mount[2].options`.
    private static func resolve(_ name: String, arrayCounts: [String: Int]) -> String {
        var result = ""
        for part in name.split(separator: ".") {
            result = result.isEmpty ? String(part) : "\(result).\(part)"
            if let count = arrayCounts[result] { result += "[\(count - 1)]" }
        }
        return result
    }

    /// A dotted key with each part's blanks and quotes trimmed.
    /// Built byte by byte: a generic `joined` here cost every launch the
    /// runtime's lookup of its witnesses.
    private static func normalizeKey(_ s: ArraySlice<UInt8>) -> String {
        func trim(_ b: UInt8) -> Bool { isBlank(b) || b == UInt8(ascii: "\"") || b == UInt8(ascii: "'") }
        var out: [UInt8] = []
        out.reserveCapacity(s.count)
        var first = true
        // The dot-separated parts, empty ones skipped (as `split` gave them,
        // without its generic first use at every launch).
        var start = s.startIndex
        var end = s.startIndex
        while end <= s.endIndex {
            if end < s.endIndex && s[end] != UInt8(ascii: ".") {
                end += 1
                continue
            }
            if end > start {
                if !first { out.append(UInt8(ascii: ".")) }
                first = false
                var lo = start, hi = end
                while lo < hi, trim(s[lo]) { lo += 1 }
                while hi > lo, trim(s[hi - 1]) { hi -= 1 }
                for i in lo..<hi { out.append(s[i]) }
            }
            end += 1
            start = end
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// The `=` of a `key = value` line, outside quotes.
    private static func assignmentIndex(_ line: ArraySlice<UInt8>) -> Int? {
        var quote: UInt8? = nil
        for index in line.indices {
            let c = line[index]
            if let q = quote { if c == q { quote = nil }; continue }
            if c == UInt8(ascii: "\"") || c == UInt8(ascii: "'") { quote = c; continue }
            if c == UInt8(ascii: "=") { return index }
            if c == UInt8(ascii: "#") { return nil }
        }
        return nil
    }

    private static func count(_ needle: [UInt8], in s: ArraySlice<UInt8>) -> Int {
        var count = 0
        var rest = s
        while let i = firstIndex(of: needle, in: rest) { count += 1; rest = rest[(i + needle.count)...] }
        return count
    }

    /// Net `[` minus `]` outside strings and comments.
    private static func bracketBalance(_ s: ArraySlice<UInt8>) -> Int {
        var balance = 0
        var quote: UInt8? = nil
        for c in s {
            if let q = quote { if c == q { quote = nil }; continue }
            switch c {
            case UInt8(ascii: "\""), UInt8(ascii: "'"): quote = c
            case UInt8(ascii: "["): balance += 1
            case UInt8(ascii: "]"): balance -= 1
            case UInt8(ascii: "#"): return balance
            default: break
            }
        }
        return balance
    }
}

extension StringProtocol {
    /// Left-aligned in a field of `width` characters (never cut).
    package func padded(to width: Int) -> String {
        count >= width ? String(self) : String(self) + String(repeating: " ", count: width - count)
    }

    /// Without leading and trailing whitespace, line ends included (a
    /// CR LF pair is one Character, so a set string could miss it).
    package func trimmingWhitespace() -> String {
        var s = Substring(self)
        while s.first?.isWhitespace == true { s = s.dropFirst() }
        while s.last?.isWhitespace == true { s = s.dropLast() }
        return String(s)
    }

    package func trimmingCharacters(in set: String) -> String {
        var s = Substring(self)
        while let f = s.first, set.contains(f) { s = s.dropFirst() }
        while let l = s.last, set.contains(l) { s = s.dropLast() }
        return String(s)
    }
}

extension Double {
    /// What `String(format: "%.<digits>f", self)` prints, without
    /// Foundation's formatter (the launch path links FoundationEssentials at
    /// most): rounded half away from zero to `digits` (0 to 9) decimals.
    package func fixed(_ digits: Int) -> String {
        let digits = Swift.min(Swift.max(digits, 0), 9)
        var scale: UInt64 = 1
        for _ in 0..<digits { scale *= 10 }
        let scaled = (Swift.abs(self) * Double(scale)).rounded()
        guard isFinite, scaled < 9.0e18 else { return "\(self)" }
        let n = UInt64(scaled)
        var out = (self < 0 && n > 0 ? "-" : "") + String(n / scale)
        if digits > 0 {
            let frac = String(n % scale)
            out += "." + String(repeating: "0", count: digits - frac.count) + frac
        }
        return out
    }
}

/// The parsed text of one profile (or tenants file): its name for messages
/// and where its keys are.
package struct TOMLSource: Sendable {
    package var file: String
    private let lines: LazyLineIndex

    package init(file: String, text: String) {
        self.file = file
        self.lines = LazyLineIndex(text: text)
    }

    /// Where the keys are: scanned on first use. A profile that reads
    /// cleanly never needs it unless a section records its lines (a third
    /// of the profile's reading time at every `stockade run`).
    package var index: TOMLLineIndex { lines.index }

    package func error(_ key: String, _ message: String) -> ProfileError {
        ProfileError(file: file, line: index.line(of: key), key: key, message: message)
    }
}

/// A ``TOMLLineIndex`` built once, when first asked for.
private final class LazyLineIndex: Sendable {
    private let state: Mutex<(text: String?, index: TOMLLineIndex?)>

    init(text: String) { state = Mutex((text, nil)) }

    var index: TOMLLineIndex {
        state.withLock { s in
            if let built = s.index { return built }
            let built = TOMLLineIndex(text: s.text ?? "")
            s = (nil, built)
            return built
        }
    }
}

/// Reads one TOML table with typed accessors, remembering which keys were
/// read so that ``finish()`` can reject every key nobody asked for.
///
/// Sections of a profile are parsed with one reader each; a reader for
/// `[[mount]]` entry 2 has the path `mount[2]`, so errors name
/// `mount[2].target` and its line.
package final class TableReader {
    package let path: String
    package let source: TOMLSource
    private let table: TOMLTable
    private var used: Set<String> = []

    init(table: TOMLTable, path: String, source: TOMLSource) {
        self.table = table
        self.path = path
        self.source = source
    }

    /// Reads a TOML file's text; `what` names the kind of file in messages
    /// ("profile", "tenants file").
    /// One open and plain reads (FileManager's first use costs a launch
    /// more than the read itself).
    package static func readText(path: String, what: String) throws(ProfileError) -> String {
        let fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY)
        guard fd >= 0 else {
            let reason = errno == ENOENT || errno == ENOTDIR ? "does not exist" : "cannot be read"
            throw ProfileError(file: path, line: nil, key: "", message: "\(what) \(reason)")
        }
        defer { close(fd) }
        var bytes: [UInt8] = []
        var st = stat()
        if fstat(fd, &st) == 0, st.st_mode & S_IFMT == S_IFREG { bytes.reserveCapacity(Int(st.st_size) + 1) }
        var chunk = [UInt8](repeating: 0, count: 16 * 1024)
        while true {
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            guard n >= 0 else { throw ProfileError(file: path, line: nil, key: "", message: "\(what) cannot be read") }
            if n == 0 { break }
            bytes += chunk[..<n]
        }
        guard let text = String(validating: bytes, as: UTF8.self) else {
            throw ProfileError(file: path, line: nil, key: "", message: "\(what) is not UTF-8 text")
        }
        return text
    }

    /// Parses a whole document; a syntax error names the file and line.
    package static func parse(text: String, file: String) throws(ProfileError) -> TableReader {
        let source = TOMLSource(file: file, text: text)
        if let failure = TOMLSyntax.check(text) {
            throw ProfileError(file: file, line: failure.line, key: "", message: "TOML syntax: \(failure.message)")
        }
        do {
            let table = try TOMLTable(string: text)
            return TableReader(table: table, path: "", source: source)
        } catch let error as TOMLParseError {
            throw ProfileError(file: file, line: error.source.begin.line, key: "", message: "TOML syntax: \(error.description)")
        } catch {
            throw ProfileError(file: file, line: nil, key: "", message: "TOML syntax: \(error)")
        }
    }

    package func keyPath(_ key: String) -> String { path.isEmpty ? key : "\(path).\(key)" }

    /// An error located at `key` of this table.
    package func error(_ key: String, _ message: String) -> ProfileError {
        source.error(keyPath(key), message)
    }

    /// An error about this table as a whole.
    package func error(_ message: String) -> ProfileError {
        source.error(path, message)
    }

    /// The keys in document order (the TOML library sorts them).
    package var keys: [String] {
        let names = table.keys
        // One key needs no order (and no line index); each key's line is
        // looked up once, not at every comparison.
        guard names.count > 1 else { return Array(names) }
        let lines = names.map { (name: $0, line: source.index.line(of: keyPath($0)) ?? Int.max) }
        return lines.sorted { $0.line != $1.line ? $0.line < $1.line : $0.name < $1.name }.map(\.name)
    }

    package func has(_ key: String) -> Bool { table[key] != nil }

    private func value(_ key: String, _ type: TOMLType) throws(ProfileError) -> (any TOMLValueConvertible)? {
        guard let value = table[key] else { return nil }
        used.insert(key)
        guard value.type == type else {
            throw error(key, "expected \(Self.article(type.description)) \(type.description), found \(Self.article(value.type.description)) \(value.type.description)")
        }
        return value
    }

    private static func article(_ word: String) -> String {
        if let f = word.first, "aeiou".contains(f) { return "an" }
        return "a"
    }

    package func string(_ key: String) throws(ProfileError) -> String? {
        try value(key, .string)?.string
    }

    package func bool(_ key: String) throws(ProfileError) -> Bool? {
        try value(key, .bool)?.bool
    }

    /// A number written as an integer or a float (`2`, `0.5`).
    package func number(_ key: String) throws(ProfileError) -> Double? {
        guard let raw = table[key] else { return nil }
        used.insert(key)
        if let n = raw.int { return Double(n) }
        if let d = raw.double, d.isFinite { return d }
        throw error(key, "expected a number, found \(Self.article(raw.type.description)) \(raw.type.description)")
    }

    package func int(_ key: String, in range: ClosedRange<Int> = Int.min...Int.max) throws(ProfileError) -> Int? {
        guard let v = try value(key, .int)?.int else { return nil }
        guard range.contains(v) else {
            throw error(key, "\(v) is out of range \(range.lowerBound)...\(range.upperBound)")
        }
        return v
    }

    package func table(_ key: String) throws(ProfileError) -> TableReader? {
        guard let t = try value(key, .table)?.table else { return nil }
        return TableReader(table: t, path: keyPath(key), source: source)
    }

    /// `[[key]]` entries (or an inline array of tables).
    package func tables(_ key: String) throws(ProfileError) -> [TableReader] {
        guard let array = try value(key, .array)?.array else { return [] }
        var result: [TableReader] = []
        for (i, element) in array.enumerated() {
            guard let t = element.table else {
                throw error(key, "entry \(i) must be a table")
            }
            result.append(TableReader(table: t, path: "\(keyPath(key))[\(i)]", source: source))
        }
        return result
    }

    package func strings(_ key: String) throws(ProfileError) -> [String]? {
        guard let array = try value(key, .array)?.array else { return nil }
        var result: [String] = []
        for (i, element) in array.enumerated() {
            guard let s = element.string else {
                throw error(key, "entry \(i) must be a string, found \(element.type.description)")
            }
            result.append(s)
        }
        return result
    }

    package func ints(_ key: String) throws(ProfileError) -> [Int]? {
        guard let array = try value(key, .array)?.array else { return nil }
        var result: [Int] = []
        for (i, element) in array.enumerated() {
            guard let n = element.int else {
                throw error(key, "entry \(i) must be an integer, found \(element.type.description)")
            }
            result.append(n)
        }
        return result
    }

    /// A table of string values, in the document's key order.
    package func stringTable(_ key: String) throws(ProfileError) -> [(String, String)]? {
        guard let sub = try table(key) else { return nil }
        var result: [(String, String)] = []
        for k in sub.keys {
            guard let v = try sub.string(k) else { continue }
            result.append((k, v))
        }
        return result
    }

    /// A size: an integer number of bytes, or a string with a binary suffix
    /// (`"64K"`, `"512M"`, `"2G"`, `"1T"`, optional `i`/`B`), or `"max"` (nil).
    /// At most ``SizeValue/largest`` bytes, so that no sum of sizes overflows.
    package func size(_ key: String) throws(ProfileError) -> SizeValue? {
        guard let raw = table[key] else { return nil }
        used.insert(key)
        let value: SizeValue
        var written = ""
        if let n = raw.int {
            guard n >= 0 else { throw error(key, "a size cannot be negative") }
            value = .bytes(UInt64(n))
            written = "\(n)"
        } else if let s = raw.string {
            written = "\"\(s)\""
            guard let parsed = SizeValue(parsing: s) else {
                throw error(key, "cannot read \"\(s)\" as a size; use bytes or a suffix K, M, G, T (\"512M\"), or \"max\"")
            }
            value = parsed
        } else {
            throw error(key, "expected a size (bytes, or a string like \"512M\")")
        }
        if let b = value.bytes, b > SizeValue.largest {
            throw error(key, "\(written) is above the largest size Stockade accepts, \(SizeValue.bytes(SizeValue.largest)) (use \"max\" for no limit)")
        }
        return value
    }

    /// A duration: seconds as an integer or float, or a string such as
    /// `"30s"`, `"500ms"`, `"2m"`, `"1h"`; at most ``DurationValue/longest``.
    package func duration(_ key: String) throws(ProfileError) -> Duration? {
        guard let raw = table[key] else { return nil }
        used.insert(key)
        let reading: DurationValue
        if let n = raw.int {
            reading = n < 0 ? .unreadable : n > DurationValue.longestSeconds ? .tooLong : .value(.seconds(n))
        } else if let d = raw.double {
            reading = DurationValue(seconds: d)
        } else if let s = raw.string {
            reading = DurationValue(parsing: s)
        } else {
            reading = .unreadable
        }
        switch reading {
        case .value(let d): return d
        case .tooLong:
            throw error(key, "is longer than the longest duration Stockade accepts, \(DurationValue.longestText)")
        case .unreadable:
            throw error(key, "expected a duration such as 30, \"30s\", \"500ms\", \"2m\" or \"1h\"")
        }
    }

    /// Rejects keys that no accessor read: every unknown key is an error.
    package func finish() throws(ProfileError) {
        for key in table.keys.sorted() where !used.contains(key) {
            throw error(key, "unknown key")
        }
    }
}

/// `bytes` without spaces (U+0020 only) at either end, as sizes and
/// durations are read.
private func spacesTrimmed(_ bytes: [UInt8]) -> [UInt8] {
    var start = 0, end = bytes.count
    while end > start && bytes[end - 1] == 0x20 { end -= 1 }
    while start < end && bytes[start] == 0x20 { start += 1 }
    return Array(bytes[start..<end])
}

/// `text` without spaces at either end, ASCII letters upper-cased; nil
/// when it holds any byte outside ASCII.
private func asciiUpperTrimmed(_ text: String) -> [UInt8]? {
    var s: [UInt8] = []
    for b in text.utf8 {
        guard b < 0x80 else { return nil }
        s.append(b >= 0x61 && b <= 0x7A ? b - 0x20 : b)
    }
    return spacesTrimmed(s)
}

/// A size in bytes, or no limit.
public enum SizeValue: Sendable, Equatable, CustomStringConvertible {
    case bytes(UInt64)
    case unlimited

    /// The largest size a file may give (1 PiB, printed "1024T"): far above
    /// any host, and small enough that adding a few thousand sizes (a
    /// tenant's jails, memory plus swap) cannot overflow 64 bits.
    public static let largest: UInt64 = 1 << 50

    /// Read on bytes: spaces at either end are dropped, ASCII letters
    /// compared without case (text with other bytes in it is no size; the
    /// Unicode case mapping and Character walks this replaced were first
    /// uses paid at every launch, and mapped a dotless ı onto I).
    public init?(parsing text: String) {
        let s = asciiUpperTrimmed(text)
        guard let s else { return nil }
        if s == Array("MAX".utf8) || s == Array("UNLIMITED".utf8) { self = .unlimited; return }
        var end = s.count
        while end > 0, !((s[end - 1] >= 0x30 && s[end - 1] <= 0x39) || s[end - 1] == UInt8(ascii: ".")) { end -= 1 }
        guard let number = Double(String(decoding: s[..<end], as: UTF8.self)), number >= 0, number.isFinite else { return nil }
        let shift: Int
        switch String(decoding: s[end...], as: UTF8.self) {
        case "", "B": shift = 0
        case "K", "KB", "KIB": shift = 10
        case "M", "MB", "MIB": shift = 20
        case "G", "GB", "GIB": shift = 30
        case "T", "TB", "TIB": shift = 40
        default: return nil
        }
        let value = number * Double(UInt64(1) << UInt64(shift))
        // Saturates rather than trapping; readers refuse anything above `largest`.
        self = .bytes(value < 1.8e19 ? UInt64(value) : UInt64.max)
    }

    public var bytes: UInt64? {
        if case .bytes(let b) = self { return b }
        return nil
    }

    public var description: String {
        switch self {
        case .unlimited: return "max"
        case .bytes(let b):
            for (unit, shift) in [("T", 40), ("G", 30), ("M", 20), ("K", 10)] where b >= (1 << shift) && b % (1 << shift) == 0 {
                return "\(b >> shift)\(unit)"
            }
            return "\(b)"
        }
    }
}

/// A duration read from a profile, a configuration file or the command
/// line: a value, or why there is none. Every duration a user gives is
/// bounded by ``longest`` before it becomes a `Duration`, so that no later
/// arithmetic on it (deadlines, poll timeouts in milliseconds) can overflow.
public enum DurationValue: Sendable, Equatable {
    case value(Duration)
    /// Not a number, negative, not finite, or an unknown unit.
    case unreadable
    /// Above ``longest``.
    case tooLong

    /// The longest duration accepted anywhere: 365 days.
    public static let longestSeconds: Int64 = 365 * 24 * 3600
    public static let longest: Duration = .seconds(longestSeconds)
    public static let longestText = "8760h (365 days)"

    /// Seconds as a number: negative, NaN and infinite are unreadable.
    public init(seconds: Double) {
        guard seconds.isFinite, seconds >= 0 else { self = .unreadable; return }
        guard seconds <= Double(Self.longestSeconds) else { self = .tooLong; return }
        // Bounded above: the product fits an Int64 with room to spare.
        self = .value(.microseconds(Int64((seconds * 1_000_000).rounded(.down))))
    }

    /// `"30s"`, `"500ms"`, `"2m"`, `"1h"`, `"1.5s"`, or plain seconds (`"30"`).
    /// Read on bytes, as sizes are; units are lower-case only, as before.
    public init(parsing text: String) {
        let s = spacesTrimmed(Array(text.utf8))
        var end = s.count
        var scale = 1.0
        func ends(_ unit: StaticString) -> Bool {
            let n = unit.utf8CodeUnitCount
            return s.count >= n && (0..<n).allSatisfy { s[s.count - n + $0] == unit.utf8Start[$0] }
        }
        for (unit, unitScale) in [("ms", 0.001), ("us", 0.000001), ("s", 1), ("m", 60), ("h", 3600)] as [(StaticString, Double)]
        where ends(unit) {
            end -= unit.utf8CodeUnitCount
            scale = unitScale
            break
        }
        // Double() also reads "nan", "inf" and hex floats; only decimal digits,
        // one '.', and an exponent are a duration.
        let number = s[..<end]
        let marks = Array(".eE+-".utf8)
        guard !number.isEmpty, number.allSatisfy({ ($0 >= 0x30 && $0 <= 0x39) || marks.contains($0) }),
              let n = Double(String(decoding: number, as: UTF8.self)) else {
            self = .unreadable
            return
        }
        guard n.isFinite, n >= 0 else { self = .unreadable; return }
        // n * scale cannot overflow a Double here (n is finite, scale <= 3600).
        self.init(seconds: n * scale)
    }

    public var duration: Duration? {
        if case .value(let d) = self { return d }
        return nil
    }
}

/// `"30s"`, `"500ms"`, `"2m"`, `"1h"`, `"1.5s"`; nil when unreadable or
/// longer than ``DurationValue/longest``.
public func parseDuration(_ text: String) -> Duration? {
    DurationValue(parsing: text).duration
}
