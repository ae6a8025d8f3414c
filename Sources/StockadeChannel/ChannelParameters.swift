// The channel parameters the launcher writes into the sealed params memfd:
// the PSK, who the worker is, the cipher suites on offer and the limits.
// Layout (all integers big-endian) in docs/PROTOCOL.md, "Bootstrap".

/// Everything both ends of one channel agree on before the handshake.
public struct ChannelParameters: Sendable, Equatable {
    public static let magic: [UInt8] = Array("STKCHAN1".utf8)
    public static let version: UInt8 = 1
    /// The largest params memfd a worker accepts.
    public static let maxEncodedLength = 4096
    static let maxNameLength = 255

    /// The 32-byte Noise pre-shared key.
    public var psk: [UInt8]
    public var tenant: String
    public var worker: String
    /// 16 random bytes that make this spawn's prologue unique.
    public var spawnNonce: [UInt8]
    /// Cipher suites the launcher accepts, best first. The worker picks the
    /// first one it implements.
    public var suites: [CipherSuite]
    public var limits: ChannelLimits

    public init(psk: [UInt8], tenant: String, worker: String, spawnNonce: [UInt8],
                suites: [CipherSuite], limits: ChannelLimits = ChannelLimits()) {
        self.psk = psk
        self.tenant = tenant
        self.worker = worker
        self.spawnNonce = spawnNonce
        self.suites = suites
        self.limits = limits
    }

    /// The Noise prologue: `stockade/1 ‖ tenant ‖ worker ‖ spawn nonce`,
    /// each field preceded by its length as a big-endian u16.
    public var prologue: [UInt8] {
        var out: [UInt8] = []
        for field in [Array("stockade/1".utf8), Array(tenant.utf8), Array(worker.utf8), spawnNonce] {
            out.appendBigEndian(UInt16(field.count))
            out += field
        }
        return out
    }

    /// The binary form written into the params memfd.
    public func encoded() -> [UInt8] {
        precondition(psk.count == 32 && spawnNonce.count == 16)
        precondition(!suites.isEmpty && suites.count <= CipherSuite.allCases.count)
        var out = Self.magic
        out.append(Self.version)
        out.append(UInt8(suites.count))
        out += suites.map(\.rawValue)
        out += psk
        out += spawnNonce
        out.appendBigEndian(UInt32(limits.maxRecordPayload))
        out.appendBigEndian(UInt32(limits.maxRequestsInFlight))
        out.appendBigEndian(UInt64(limits.maxBytesInFlight))
        out.appendBigEndian(UInt64(limits.maxBulkLength))
        out.appendBigEndian(limits.rekeyInterval)
        for name in [tenant, worker] {
            let bytes = Array(name.utf8)
            out.appendBigEndian(UInt16(bytes.count))
            out += bytes
        }
        return out
    }

    /// Parses the params memfd's contents. Every field is bounds-checked;
    /// anything unexpected (trailing bytes included) is a
    /// ``ChannelViolation`` of kind `badParameters`.
    public init(decoding bytes: [UInt8]) throws(ChannelViolation) {
        func bad(_ why: String) -> ChannelViolation { ChannelViolation(.badParameters, why) }
        guard bytes.count <= Self.maxEncodedLength else { throw bad("params of \(bytes.count) bytes exceed \(Self.maxEncodedLength)") }
        var reader = ByteReader(bytes)
        guard let magic = reader.take(8), magic.elementsEqual(Self.magic) else { throw bad("bad magic") }
        guard let version = reader.u8(), version == Self.version else { throw bad("unsupported params version") }
        guard let count = reader.u8(), count >= 1, count <= CipherSuite.allCases.count else { throw bad("bad suite count") }
        var suites: [CipherSuite] = []
        for _ in 0..<count {
            guard let raw = reader.u8(), let suite = CipherSuite(rawValue: raw) else { throw bad("unknown cipher suite") }
            guard !suites.contains(suite) else { throw bad("duplicate cipher suite") }
            suites.append(suite)
        }
        guard let psk = reader.take(32), let nonce = reader.take(16),
              let maxRecord = reader.u32(), let maxRequests = reader.u32(),
              let maxBytes = reader.u64(), let maxBulk = reader.u64(), let rekey = reader.u64()
        else { throw bad("truncated") }
        var names: [String] = []
        for _ in 0..<2 {
            guard let length = reader.u16(), Int(length) <= Self.maxNameLength, let raw = reader.take(Int(length)) else {
                throw bad("bad name field")
            }
            guard let name = String(validating: raw, as: UTF8.self) else { throw bad("name is not UTF-8") }
            names.append(name)
        }
        guard reader.isAtEnd else { throw bad("\(reader.remaining) trailing bytes") }
        let limits = ChannelLimits(
            maxRecordPayload: Int(maxRecord), maxRequestsInFlight: Int(maxRequests),
            maxBytesInFlight: Int(clamping: maxBytes), maxBulkLength: Int(clamping: maxBulk), rekeyInterval: rekey)
        if let problem = limits.problem { throw bad(problem) }
        self.init(psk: Array(psk), tenant: names[0], worker: names[1], spawnNonce: Array(nonce),
                  suites: suites, limits: limits)
    }
}

/// The limits one channel runs under. Both ends enforce them.
public struct ChannelLimits: Sendable, Equatable {
    /// The largest payload of one record. Larger messages go in bulk.
    public var maxRecordPayload: Int
    /// Requests the launcher may have sent and not yet had answered.
    public var maxRequestsInFlight: Int
    /// Request payload bytes (records and bulk) in flight at once.
    public var maxBytesInFlight: Int
    /// The largest bulk transfer (one message through a memfd).
    public var maxBulkLength: Int
    /// Records per direction between two `Rekey()`s.
    public var rekeyInterval: UInt64

    public init(maxRecordPayload: Int = 1 << 20, maxRequestsInFlight: Int = 64,
                maxBytesInFlight: Int = 256 << 20, maxBulkLength: Int = 256 << 20,
                rekeyInterval: UInt64 = 1 << 16) {
        self.maxRecordPayload = maxRecordPayload
        self.maxRequestsInFlight = maxRequestsInFlight
        self.maxBytesInFlight = maxBytesInFlight
        self.maxBulkLength = maxBulkLength
        self.rekeyInterval = rekeyInterval
    }

    /// The hard ceiling on a record payload (16 MiB): no peer can make the
    /// other allocate more for one record.
    public static let recordPayloadCeiling = 16 << 20
    /// The hard ceiling on one bulk transfer (4 GiB).
    public static let bulkCeiling = 4 << 30

    /// Why these limits are unusable, or nil.
    public var problem: String? {
        if maxRecordPayload < 64 || maxRecordPayload > Self.recordPayloadCeiling {
            return "max record payload \(maxRecordPayload) is outside 64...\(Self.recordPayloadCeiling)"
        }
        if maxRequestsInFlight < 1 || maxRequestsInFlight > 65536 { return "max requests in flight must be 1...65536" }
        if maxBytesInFlight < maxRecordPayload { return "max bytes in flight must be at least the max record payload" }
        if maxBulkLength < 0 || maxBulkLength > Self.bulkCeiling { return "max bulk length is outside 0...\(Self.bulkCeiling)" }
        if rekeyInterval < 1 { return "rekey interval must be at least 1" }
        return nil
    }
}

/// A bounds-checked reader over bytes: every accessor returns nil rather
/// than reading past the end.
struct ByteReader {
    private let bytes: [UInt8]
    private(set) var offset = 0

    init(_ bytes: [UInt8]) { self.bytes = bytes }

    var remaining: Int { bytes.count - offset }
    var isAtEnd: Bool { offset == bytes.count }

    mutating func take(_ n: Int) -> ArraySlice<UInt8>? {
        guard n >= 0, n <= remaining else { return nil }
        defer { offset += n }
        return bytes[offset..<offset + n]
    }

    mutating func u8() -> UInt8? { take(1)?.first }
    mutating func u16() -> UInt16? { take(2).map { $0.reduce(0) { $0 << 8 | UInt16($1) } } }
    mutating func u32() -> UInt32? { take(4).map { $0.reduce(0) { $0 << 8 | UInt32($1) } } }
    mutating func u64() -> UInt64? { take(8).map { $0.reduce(0) { $0 << 8 | UInt64($1) } } }
}

extension Array where Element == UInt8 {
    mutating func appendBigEndian<T: FixedWidthInteger>(_ value: T) {
        Swift.withUnsafeBytes(of: value.bigEndian) { append(contentsOf: $0) }
    }
}

extension UnsafeRawPointer {
    func loadBigEndian<T: FixedWidthInteger>(fromByteOffset offset: Int = 0, as: T.Type) -> T {
        T(bigEndian: loadUnaligned(fromByteOffset: offset, as: T.self))
    }
}

extension UnsafeMutableRawPointer {
    func storeBigEndian<T: FixedWidthInteger>(_ value: T, toByteOffset offset: Int = 0) {
        storeBytes(of: value.bigEndian, toByteOffset: offset, as: T.self)
    }
}
