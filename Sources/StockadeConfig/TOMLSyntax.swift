/// A strict syntax check of a TOML document, run before the TOML library
/// parses it.
///
/// The library asserts (aborts in debug builds, assumes and runs on into
/// undefined behaviour in release builds) on several malformed inputs our
/// fuzzer found: a header `[` alone on a line, non-ASCII text in a key, a
/// stray `}` where an array expects a value. This checker follows the TOML
/// 1.0 grammar for structure — lines, headers, keys, strings, arrays and
/// inline tables — and leaves the meaning of scalars (numbers, dates,
/// booleans) to the library, which reports those errors properly. Any
/// valid document passes; what it rejects never reaches the library.
struct TOMLSyntax {
    struct Failure: Error {
        var line: Int
        var message: String
    }

    private let bytes: [UInt8]
    private var i = 0
    private var line = 1
    /// Nesting of arrays and inline tables: bounded so that a deep input
    /// cannot exhaust the stack here or in the library.
    private var depth = 0
    private static let maxDepth = 64

    static func check(_ text: String) -> Failure? {
        var checker = TOMLSyntax(bytes: Array(text.utf8))
        do {
            try checker.document()
            return nil
        } catch {
            return error
        }
    }

    private init(bytes: [UInt8]) { self.bytes = bytes }

    private var current: UInt8 { i < bytes.count ? bytes[i] : 0 }
    private func peek(_ k: Int) -> UInt8 { i + k < bytes.count ? bytes[i + k] : 0 }
    private var atEnd: Bool { i >= bytes.count }

    private func fail(_ message: String) -> Failure { Failure(line: line, message: message) }

    private static func ascii(_ c: Character) -> UInt8 { UInt8(ascii: c.unicodeScalars.first!) }
    private static let newline = ascii("\n"), cr = ascii("\r"), tab = ascii("\t"), space = ascii(" ")
    private static let hash = ascii("#"), quote = ascii("\""), apostrophe = ascii("'"), backslash = ascii("\\")
    private static let openBracket = ascii("["), closeBracket = ascii("]"), openBrace = ascii("{"), closeBrace = ascii("}")
    private static let equals = ascii("="), comma = ascii(","), dot = ascii(".")

    private static func isBareKey(_ b: UInt8) -> Bool {
        (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5A) || (b >= 0x61 && b <= 0x7A) || b == 0x5F || b == 0x2D
    }

    private static func isScalar(_ b: UInt8) -> Bool {
        isBareKey(b) || b == ascii("+") || b == ascii(".") || b == ascii(":")
    }

    private mutating func spaces() {
        while current == Self.space || current == Self.tab { i += 1 }
    }

    /// Comment to the end of the line (not consuming the newline).
    private mutating func comment() throws(Failure) {
        guard current == Self.hash else { return }
        while !atEnd && current != Self.newline {
            if current < 0x20 && current != Self.tab && current != Self.cr { throw fail("control character in a comment") }
            i += 1
        }
    }

    /// After a header or a key/value: spaces, an optional comment, then the line must end.
    private mutating func endOfLine() throws(Failure) {
        spaces()
        try comment()
        if current == Self.cr && peek(1) == Self.newline { i += 1 }
        if atEnd { return }
        guard current == Self.newline else { throw fail("unexpected text after the value") }
        i += 1
        line += 1
    }

    private mutating func document() throws(Failure) {
        while !atEnd {
            spaces()
            if current == Self.newline || current == Self.hash || (current == Self.cr && peek(1) == Self.newline) {
                try endOfLine()
            } else if current == Self.openBracket {
                try header()
                try endOfLine()
            } else {
                try keyValue()
                try endOfLine()
            }
        }
    }

    private mutating func header() throws(Failure) {
        let double = peek(1) == Self.openBracket
        i += double ? 2 : 1
        spaces()
        try key()
        spaces()
        guard current == Self.closeBracket, !double || peek(1) == Self.closeBracket else {
            throw fail("a table header must be [name] or [[name]] on one line")
        }
        i += double ? 2 : 1
    }

    private mutating func key() throws(Failure) {
        while true {
            try simpleKey()
            spaces()
            guard current == Self.dot else { return }
            i += 1
            spaces()
        }
    }

    private mutating func simpleKey() throws(Failure) {
        if current == Self.quote {
            try basicString()
        } else if current == Self.apostrophe {
            try literalString()
        } else {
            let start = i
            while Self.isBareKey(current) { i += 1 }
            guard i > start else { throw fail("expected a key (ASCII letters, digits, '-', '_', or a quoted key)") }
        }
    }

    private mutating func keyValue() throws(Failure) {
        try key()
        spaces()
        guard current == Self.equals else { throw fail("expected '=' after the key") }
        i += 1
        spaces()
        try value()
    }

    private mutating func value() throws(Failure) {
        switch current {
        case Self.quote:
            if peek(1) == Self.quote && peek(2) == Self.quote { try multilineString(Self.quote) } else { try basicString() }
        case Self.apostrophe:
            if peek(1) == Self.apostrophe && peek(2) == Self.apostrophe { try multilineString(Self.apostrophe) } else { try literalString() }
        case Self.openBracket:
            try array()
        case Self.openBrace:
            try inlineTable()
        default:
            try scalar()
        }
    }

    /// Numbers, booleans, dates and times: their shape is the library's to check.
    private mutating func scalar() throws(Failure) {
        let start = i
        while true {
            if Self.isScalar(current) {
                i += 1
            } else if current == Self.space, i > start, bytes[i - 1] >= 0x30 && bytes[i - 1] <= 0x39,
                      peek(1) >= 0x30 && peek(1) <= 0x39 {
                i += 1 // "1979-05-27 07:32:00"
            } else {
                break
            }
        }
        guard i > start else { throw fail("expected a value") }
    }

    private mutating func basicString() throws(Failure) {
        i += 1
        while true {
            guard !atEnd, current != Self.newline else { throw fail("unterminated string") }
            let b = current
            if b == Self.quote { i += 1; return }
            if b == Self.backslash { try escape(); continue }
            if b < 0x20 && b != Self.tab || b == 0x7F { throw fail("control character in a string") }
            i += 1
        }
    }

    private mutating func escape() throws(Failure) {
        i += 1
        let b = current
        if "btnfr\"\\".utf8.contains(b) { i += 1; return }
        let digits: Int
        switch b {
        case Self.ascii("u"): digits = 4
        case Self.ascii("U"): digits = 8
        default: throw fail("invalid escape in a string")
        }
        i += 1
        var value: UInt32 = 0
        for _ in 0..<digits {
            guard Self.isHex(current) else { throw fail("invalid unicode escape in a string") }
            value = value << 4 | UInt32(current <= 0x39 ? current - 0x30 : (current | 0x20) - 0x61 + 10)
            i += 1
        }
        // The library hands strings over as C strings: a NUL would cut the
        // value short without a word ("/a\u0000b" read as "/a").
        if value == 0 { throw fail("a NUL escape (\\u0000) in a string: no value may hold a NUL") }
    }

    private static func isHex(_ b: UInt8) -> Bool {
        (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x46) || (b >= 0x61 && b <= 0x66)
    }

    private mutating func literalString() throws(Failure) {
        i += 1
        while true {
            guard !atEnd, current != Self.newline else { throw fail("unterminated string") }
            if current == Self.apostrophe { i += 1; return }
            if current < 0x20 && current != Self.tab || current == 0x7F { throw fail("control character in a string") }
            i += 1
        }
    }

    private mutating func multilineString(_ delimiter: UInt8) throws(Failure) {
        i += 3
        while true {
            guard !atEnd else { throw fail("unterminated multi-line string") }
            let b = current
            if b == delimiter && peek(1) == delimiter && peek(2) == delimiter {
                i += 3
                // Up to two more delimiter characters belong to the content.
                for _ in 0..<2 where current == delimiter { i += 1 }
                return
            }
            if b == Self.newline { line += 1; i += 1; continue }
            if delimiter == Self.quote && b == Self.backslash {
                if peek(1) == Self.newline || peek(1) == Self.space || peek(1) == Self.tab || peek(1) == Self.cr {
                    i += 1 // line-ending backslash
                    continue
                }
                try escape()
                continue
            }
            if b < 0x20 && b != Self.tab && b != Self.cr || b == 0x7F { throw fail("control character in a string") }
            i += 1
        }
    }

    /// Whitespace, newlines and comments between array elements.
    private mutating func arraySpace() throws(Failure) {
        while true {
            spaces()
            if current == Self.hash { try comment() }
            if current == Self.cr && peek(1) == Self.newline { i += 1 }
            if current == Self.newline { i += 1; line += 1; continue }
            return
        }
    }

    private mutating func nest() throws(Failure) {
        depth += 1
        if depth > Self.maxDepth { throw fail("arrays and tables nested deeper than \(Self.maxDepth)") }
    }

    private mutating func array() throws(Failure) {
        try nest()
        i += 1
        try arraySpace()
        while current != Self.closeBracket {
            try value()
            try arraySpace()
            if current == Self.comma {
                i += 1
                try arraySpace()
            } else if current != Self.closeBracket {
                throw fail("expected ',' or ']' in an array")
            }
        }
        i += 1
        depth -= 1
    }

    private mutating func inlineTable() throws(Failure) {
        try nest()
        i += 1
        spaces()
        if current == Self.closeBrace { i += 1; depth -= 1; return }
        while true {
            try keyValue()
            spaces()
            if current == Self.comma {
                i += 1
                spaces()
            } else if current == Self.closeBrace {
                i += 1
                depth -= 1
                return
            } else {
                throw fail("expected ',' or '}' in an inline table (inline tables stay on one line)")
            }
        }
    }
}
