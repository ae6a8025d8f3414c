// The record layer: framing, sealing and opening of transport messages.
//
//     record = length u32 ‖ type u8 ‖ AEAD(k, n, ad = length ‖ type, body)
//     body   = type u8 ‖ flags u8 ‖ reserved u16 ‖ request id u64 ‖ payload
//
// `length` counts the AEAD output (body plus the 16-byte tag). The type is
// sent in clear so that it can be authenticated as additional data before
// the body is decrypted, and repeated inside the body; the two must agree.
// The nonce n is the implicit per-direction record counter, so a replayed,
// dropped or reordered record fails its tag.

/// The kinds of message on a channel.
public enum MessageType: UInt8, Sendable, CustomStringConvertible {
    /// First record in each direction: the sender's agent string.
    case hello = 1
    /// Launcher to worker: work to do.
    case request = 2
    /// Worker to launcher: the result of one request.
    case response = 3
    /// Worker to launcher: a request failed; the payload is a UTF-8 message.
    case error = 4
    /// Launcher to worker: abandon a request (it still gets one response or error).
    case cancel = 5
    /// Liveness check; answered with the same payload and the `reply` flag.
    case ping = 6
    /// Orderly close; answered with the `reply` flag, then both ends close.
    case shutdown = 7
    /// A request or response whose payload travels in a sealed memfd.
    case bulk = 8

    public var description: String {
        switch self {
        case .hello: "hello"
        case .request: "request"
        case .response: "response"
        case .error: "error"
        case .cancel: "cancel"
        case .ping: "ping"
        case .shutdown: "shutdown"
        case .bulk: "bulk"
        }
    }
}

/// Flag bits in a record body.
public struct MessageFlags: OptionSet, Sendable {
    public let rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }
    /// This ping or shutdown answers the peer's.
    public static let reply = MessageFlags(rawValue: 0x01)
}

/// One decrypted message.
public struct ChannelMessage: Sendable, Equatable {
    public var type: MessageType
    public var flags: MessageFlags
    public var requestID: UInt64
    public var payload: [UInt8]
    /// The payload arrived through a bulk memfd (type is then request or response).
    public var viaBulk: Bool

    public init(type: MessageType, flags: MessageFlags = [], requestID: UInt64, payload: [UInt8], viaBulk: Bool = false) {
        self.type = type
        self.flags = flags
        self.requestID = requestID
        self.payload = payload
        self.viaBulk = viaBulk
    }

    public static func == (a: ChannelMessage, b: ChannelMessage) -> Bool {
        a.type == b.type && a.flags.rawValue == b.flags.rawValue && a.requestID == b.requestID
            && a.payload == b.payload && a.viaBulk == b.viaBulk
    }
}

enum RecordFormat {
    static let headerLength = 5
    static let bodyHeaderLength = 12
    static let tagLength = 16
    static let overhead = headerLength + bodyHeaderLength + tagLength

    static func maxCiphertextLength(_ limits: ChannelLimits) -> Int {
        bodyHeaderLength + limits.maxRecordPayload + tagLength
    }
}

/// Seals outgoing records for one direction, rekeying by count.
final class RecordSealer {
    private let cipher: NoiseCipherState
    private let rekeyInterval: UInt64
    private(set) var recordCount: UInt64 = 0

    init(cipher: NoiseCipherState, rekeyInterval: UInt64) {
        self.cipher = cipher
        self.rekeyInterval = rekeyInterval
    }

    /// Writes the sealed record into `buffer` (which must hold
    /// `RecordFormat.overhead + payload.count` bytes) and returns its size.
    func seal(type: MessageType, flags: MessageFlags, requestID: UInt64,
              payload: UnsafeRawBufferPointer, into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        let total = RecordFormat.overhead + payload.count
        precondition(buffer.count >= total)
        let base = buffer.baseAddress!
        let body = RecordFormat.writeHeaders(type: type, flags: flags, requestID: requestID, payloadCount: payload.count, at: base)
        guard let key = cipher.key else { preconditionFailure("transport cipher without a key") }
        let nonce = try cipher.nextNonce()
        // Header and payload go through the cipher in turn: nothing is
        // gathered or allocated per record.
        try key.beginSeal(nonce: nonce, ad: UnsafeRawBufferPointer(start: base, count: RecordFormat.headerLength))
        try key.sealUpdate(body, body, RecordFormat.bodyHeaderLength)
        if payload.count > 0 {
            try key.sealUpdate(payload.baseAddress!, body + RecordFormat.bodyHeaderLength, payload.count)
        }
        try key.finishSeal(tag: body + RecordFormat.bodyHeaderLength + payload.count)
        try countRecord()
        return total
    }

    fileprivate var cipherKey: AEADKey? { cipher.key }
    fileprivate func nextNonce() throws -> UInt64 { try cipher.nextNonce() }

    /// Counts a sealed record and rekeys every `rekeyInterval` records.
    fileprivate func countRecord() throws {
        recordCount += 1
        if recordCount % rekeyInterval == 0 { try cipher.rekey() }
    }
}

extension RecordSealer {
    /// Seals a record piece by piece through `scratch`: `emit` gets the wire
    /// bytes in order (header first, tag last), so a large record is sent
    /// while it is being encrypted and no buffer holds all of it.
    func sealStreaming(type: MessageType, flags: MessageFlags, requestID: UInt64, payload: UnsafeRawBufferPointer,
                       scratch: UnsafeMutableRawBufferPointer, emit: (UnsafeRawBufferPointer) throws -> Void) throws {
        precondition(scratch.count >= RecordFormat.overhead)
        let base = scratch.baseAddress!
        let body = RecordFormat.writeHeaders(type: type, flags: flags, requestID: requestID, payloadCount: payload.count, at: base)
        guard let key = cipherKey else { preconditionFailure("transport cipher without a key") }
        let nonce = try nextNonce()
        try key.beginSeal(nonce: nonce, ad: UnsafeRawBufferPointer(start: base, count: RecordFormat.headerLength))
        try key.sealUpdate(body, body, RecordFormat.bodyHeaderLength)
        var filled = RecordFormat.headerLength + RecordFormat.bodyHeaderLength
        var position = 0
        while position < payload.count {
            if filled == scratch.count {
                try emit(UnsafeRawBufferPointer(rebasing: scratch[0..<filled]))
                filled = 0
            }
            let n = min(payload.count - position, scratch.count - filled)
            try key.sealUpdate(payload.baseAddress! + position, base + filled, n)
            filled += n
            position += n
        }
        if scratch.count - filled < RecordFormat.tagLength {
            try emit(UnsafeRawBufferPointer(rebasing: scratch[0..<filled]))
            filled = 0
        }
        try key.finishSeal(tag: base + filled)
        filled += RecordFormat.tagLength
        try emit(UnsafeRawBufferPointer(rebasing: scratch[0..<filled]))
        try countRecord()
    }
}

/// Checks and opens incoming records for one direction. Every check that
/// can be made before decryption is made first; every length is checked
/// before anything is allocated.
final class RecordOpener {
    private let cipher: NoiseCipherState
    let limits: ChannelLimits
    private(set) var recordCount: UInt64 = 0

    init(cipher: NoiseCipherState, limits: ChannelLimits) {
        self.cipher = cipher
        self.limits = limits
    }

    /// Parses the 5-byte clear header: the ciphertext length and the type.
    func parseHeader(_ header: UnsafeRawBufferPointer) throws(ChannelViolation) -> (length: Int, type: MessageType) {
        precondition(header.count >= RecordFormat.headerLength)
        let length = Int(header.baseAddress!.loadBigEndian(as: UInt32.self))
        let rawType = header[4]
        guard let type = MessageType(rawValue: rawType) else {
            throw ChannelViolation(.malformed, "unknown record type \(rawType)")
        }
        let minimum = RecordFormat.bodyHeaderLength + RecordFormat.tagLength
        guard length >= minimum else {
            throw ChannelViolation(.malformed, "record length \(length) is below the minimum \(minimum)")
        }
        let maximum = RecordFormat.maxCiphertextLength(limits)
        guard length <= maximum else {
            throw ChannelViolation(.oversized, "record length \(length) exceeds the limit \(maximum)")
        }
        return (length, type)
    }

    /// Authenticates and decrypts one record whose header has passed
    /// ``parseHeader(_:)``. `ciphertext` is the `length` bytes after the header.
    func open(header: UnsafeRawBufferPointer, ciphertext: UnsafeRawBufferPointer) throws(ChannelViolation) -> ChannelMessage {
        let (length, type) = try parseHeader(header)
        precondition(ciphertext.count == length)
        guard let key = cipher.key else { preconditionFailure("transport cipher without a key") }
        let nonce = try cipher.nextNonce()
        let payloadCount = length - RecordFormat.bodyHeaderLength - RecordFormat.tagLength
        var bodyHeader: (UInt64, UInt64) = (0, 0)
        var verified = false
        let ad = UnsafeRawBufferPointer(rebasing: header[0..<RecordFormat.headerLength])
        do { try key.beginOpen(nonce: nonce, ad: ad) } catch {
            throw ChannelViolation(.malformed, "AEAD init failed: \(error)")
        }
        let payload = withUnsafeMutableBytes(of: &bodyHeader) { bodyHeaderBytes in
            [UInt8](unsafeUninitializedCapacity: payloadCount) { out, count in
                let source = ciphertext.baseAddress!
                verified = key.openUpdate(source, bodyHeaderBytes.baseAddress!, RecordFormat.bodyHeaderLength)
                    && (payloadCount == 0
                        || key.openUpdate(source + RecordFormat.bodyHeaderLength, UnsafeMutableRawPointer(out.baseAddress!), payloadCount))
                    && key.finishOpen(tag: source + length - RecordFormat.tagLength)
                count = verified ? payloadCount : 0
            }
        }
        guard verified else {
            throw ChannelViolation(.badTag, "record \(recordCount) (\(type), \(length) bytes) failed authentication")
        }
        recordCount += 1
        if recordCount % limits.rekeyInterval == 0 {
            do { try cipher.rekey() } catch {
                throw ChannelViolation(.malformed, "rekey failed: \(error)")
            }
        }
        return try withUnsafeBytes(of: &bodyHeader) { body throws(ChannelViolation) in
            try Self.parseBody(body, clearType: type, payload: payload)
        }
    }

    /// Starts opening a large record piece by piece: takes its nonce and
    /// authenticates the header. Feed the ciphertext through the returned
    /// key's `openUpdate`, then call ``finishStreaming``.
    func beginStreaming(header: UnsafeRawBufferPointer) throws(ChannelViolation) -> AEADKey {
        guard let key = cipher.key else { preconditionFailure("transport cipher without a key") }
        let nonce = try cipher.nextNonce()
        do { try key.beginOpen(nonce: nonce, ad: UnsafeRawBufferPointer(rebasing: header[0..<RecordFormat.headerLength])) } catch {
            throw ChannelViolation(.malformed, "AEAD init failed: \(error)")
        }
        return key
    }

    /// Verifies the tag of a streamed record; only then is its body parsed
    /// and its payload released.
    func finishStreaming(key: AEADKey, tag: UnsafeRawPointer, clearType: MessageType, bodyHeader: [UInt8],
                         payload: [UInt8]) throws(ChannelViolation) -> ChannelMessage {
        guard key.finishOpen(tag: tag) else {
            throw ChannelViolation(.badTag, "record \(recordCount) (\(clearType), \(payload.count) byte payload) failed authentication")
        }
        recordCount += 1
        if recordCount % limits.rekeyInterval == 0 {
            do { try cipher.rekey() } catch { throw ChannelViolation(.malformed, "rekey failed: \(error)") }
        }
        do {
            return try bodyHeader.withUnsafeBytes { try Self.parseBody($0, clearType: clearType, payload: payload) }
        } catch let violation as ChannelViolation {
            throw violation
        } catch {
            throw ChannelViolation(.malformed, "\(error)")
        }
    }

    /// Checks the decrypted 12-byte body header against the clear type.
    static func parseBody(_ body: UnsafeRawBufferPointer, clearType: MessageType, payload: [UInt8]) throws(ChannelViolation) -> ChannelMessage {
        let innerType = body[0]
        guard innerType == clearType.rawValue else {
            throw ChannelViolation(.malformed, "body type \(innerType) does not match header type \(clearType.rawValue)")
        }
        let flags = MessageFlags(rawValue: body[1])
        let allowed: MessageFlags = (clearType == .ping || clearType == .shutdown) ? [.reply] : []
        guard allowed.isSuperset(of: flags) else {
            throw ChannelViolation(.malformed, "flags 0x\(String(body[1], radix: 16)) not allowed on \(clearType)")
        }
        guard body[2] == 0, body[3] == 0 else { throw ChannelViolation(.malformed, "reserved bits set") }
        let requestID = body.baseAddress!.loadBigEndian(fromByteOffset: 4, as: UInt64.self)
        switch clearType {
        case .request, .response, .error, .cancel, .bulk:
            guard requestID != 0 else { throw ChannelViolation(.malformed, "\(clearType) with request id 0") }
        case .hello, .shutdown:
            guard requestID == 0 else { throw ChannelViolation(.malformed, "\(clearType) with a request id") }
        case .ping:
            break
        }
        if clearType == .cancel, !payload.isEmpty { throw ChannelViolation(.malformed, "cancel with a payload") }
        if clearType == .hello, payload.count > 256 { throw ChannelViolation(.oversized, "hello of \(payload.count) bytes") }
        return ChannelMessage(type: clearType, flags: flags, requestID: requestID, payload: payload)
    }
}

/// The payload of a bulk record: where the real message is and how to read it.
///
///     inner type u8 ‖ reserved u8[3] ‖ chunk size u32 ‖ total length u64 ‖ key [32]
struct BulkDescriptor: Equatable {
    static let encodedLength = 48
    static let minChunk = 4096
    static let maxChunk = 16 << 20

    var innerType: MessageType
    var chunkSize: Int
    var totalLength: Int
    var key: [UInt8]

    var chunkCount: Int { (totalLength + chunkSize - 1) / chunkSize }
    /// The exact memfd size: every chunk plus its tag.
    var sealedLength: Int { totalLength + chunkCount * RecordFormat.tagLength }

    func encoded() -> [UInt8] {
        var out: [UInt8] = [innerType.rawValue, 0, 0, 0]
        out.appendBigEndian(UInt32(chunkSize))
        out.appendBigEndian(UInt64(totalLength))
        return out + key
    }

    init(innerType: MessageType, chunkSize: Int, totalLength: Int, key: [UInt8]) {
        self.innerType = innerType
        self.chunkSize = chunkSize
        self.totalLength = totalLength
        self.key = key
    }

    init(decoding bytes: [UInt8], maxBulkLength: Int) throws(ChannelViolation) {
        guard bytes.count == Self.encodedLength else {
            throw ChannelViolation(.malformed, "bulk descriptor of \(bytes.count) bytes, expected \(Self.encodedLength)")
        }
        var reader = ByteReader(bytes)
        let raw = reader.u8()!
        guard let inner = MessageType(rawValue: raw), inner == .request || inner == .response else {
            throw ChannelViolation(.malformed, "bulk carries type \(raw); only request and response may")
        }
        guard reader.take(3)!.allSatisfy({ $0 == 0 }) else { throw ChannelViolation(.malformed, "bulk reserved bytes set") }
        let chunk = Int(reader.u32()!)
        let total = reader.u64()!
        guard chunk >= Self.minChunk, chunk <= Self.maxChunk else {
            throw ChannelViolation(.malformed, "bulk chunk size \(chunk) outside \(Self.minChunk)...\(Self.maxChunk)")
        }
        guard total >= 1, total <= UInt64(maxBulkLength) else {
            throw ChannelViolation(.oversized, "bulk length \(total) outside 1...\(maxBulkLength)")
        }
        self.init(innerType: inner, chunkSize: chunk, totalLength: Int(total), key: Array(reader.take(32)!))
    }

    /// Additional data bound to each chunk: request id, total length, chunk index.
    static func chunkAD(requestID: UInt64, totalLength: Int, index: Int) -> [UInt8] {
        var ad: [UInt8] = []
        ad.appendBigEndian(requestID)
        ad.appendBigEndian(UInt64(totalLength))
        ad.appendBigEndian(UInt64(index))
        return ad
    }
}

extension RecordFormat {
    /// Writes the record header (`u32 length ‖ type`) and the body header
    /// (`type ‖ flags ‖ reserved ‖ request id`) at `base`; returns where the
    /// body starts.
    static func writeHeaders(type: MessageType, flags: MessageFlags, requestID: UInt64, payloadCount: Int,
                             at base: UnsafeMutableRawPointer) -> UnsafeMutableRawPointer {
        let length = UInt32(RecordFormat.bodyHeaderLength + payloadCount + RecordFormat.tagLength)
        base.storeBigEndian(length, toByteOffset: 0)
        base.storeBytes(of: type.rawValue, toByteOffset: 4, as: UInt8.self)
        let body = base + RecordFormat.headerLength
        body.storeBytes(of: type.rawValue, toByteOffset: 0, as: UInt8.self)
        body.storeBytes(of: flags.rawValue, toByteOffset: 1, as: UInt8.self)
        body.storeBigEndian(UInt16(0), toByteOffset: 2)
        body.storeBigEndian(requestID, toByteOffset: 4)
        return body
    }
}
