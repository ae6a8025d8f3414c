// One end of the encrypted channel between the launcher (Noise initiator)
// and a worker (responder), over a Unix stream socket. See docs/PROTOCOL.md.
public import SystemPackage
public import Logging
import StockadeSystem
import Foundation

/// An established, authenticated channel.
///
/// Sending and receiving are independent: one thread may send while another
/// receives (each side has its own lock). Any protocol violation by the peer
/// closes the channel, is logged, and is thrown as
/// ``ChannelError/violation(_:)``; the launcher then kills the worker.
public final class SecureChannel: @unchecked Sendable {
    public enum Role: Sendable { case initiator, responder }

    public let role: Role
    public let suite: CipherSuite
    public let parameters: ChannelParameters
    /// The Noise handshake hash: both ends hold the same value.
    public let handshakeHash: [UInt8]
    /// The peer's hello (its agent string).
    public private(set) var peerAgent: String = ""

    private let socket: FileDescriptor
    private var logger: Logger
    private let sealer: RecordSealer
    private let opener: RecordOpener
    private var limits: ChannelLimits { parameters.limits }

    // Send side (sendLock).
    private let sendLock = NSLock()
    private var outbox: UnsafeMutableRawBufferPointer
    /// Records up to 64 KiB of payload are sealed whole and sent in one
    /// write (a 64 KiB payload included: room for the record's overhead
    /// saves a second write and wakeup for its last 33 bytes); larger
    /// ones go out in pieces of this size while they are encrypted.
    static let outboxSize = (64 << 10) + RecordFormat.overhead
    // Receive side (receiveLock).
    private let receiveLock = NSLock()
    private var inbox: Inbox
    private var pendingDescriptors: [FileDescriptor] = []
    private var stash: [ChannelMessage] = []
    // Shared state (stateLock).
    private let stateLock = NSLock()
    private var closed = false
    private var shutdownSeen = false
    private var helloReceived = false
    private var _violation: ChannelViolation?
    private var inFlight: [UInt64: Int] = [:]
    private var bytesInFlight = 0
    private var nextRequestID: UInt64 = 1

    /// The violation that closed this channel, if one did.
    public var violation: ChannelViolation? { stateLock.withLock { _violation } }
    public var isClosed: Bool { stateLock.withLock { closed } }

    static let agent = "stockade-swift/1"

    private init(role: Role, suite: CipherSuite, parameters: ChannelParameters, socket: FileDescriptor,
                 inbox: Inbox, send: NoiseCipherState, receive: NoiseCipherState, handshakeHash: [UInt8], logger: Logger) {
        self.role = role
        self.suite = suite
        self.parameters = parameters
        self.socket = socket
        self.inbox = inbox
        self.handshakeHash = handshakeHash
        self.logger = logger
        sealer = RecordSealer(cipher: send, rekeyInterval: parameters.limits.rekeyInterval)
        opener = RecordOpener(cipher: receive, limits: parameters.limits)
        outbox = .allocate(byteCount: Self.outboxSize, alignment: 16)
    }

    deinit {
        outbox.deallocate()
        inbox.deallocate()
        if !closed { try? socket.close() }
        for fd in pendingDescriptors { try? fd.close() }
    }

    static func defaultLogger(_ parameters: ChannelParameters, role: Role) -> Logger {
        var logger = Logger(label: "stockade.channel")
        logger[metadataKey: "tenant"] = "\(parameters.tenant)"
        logger[metadataKey: "worker"] = "\(parameters.worker)"
        logger[metadataKey: "role"] = "\(role == .initiator ? "launcher" : "worker")"
        return logger
    }

    // MARK: Handshake

    /// The launcher's side: runs the handshake over `socket` (taking
    /// ownership of it) and exchanges hellos.
    ///
    /// - Parameter handshakeTimeoutMilliseconds: how long to wait for each
    ///   handshake message from the worker; nil waits for ever.
    public static func initiate(socket: FileDescriptor, parameters: ChannelParameters, logger: Logger? = nil,
                                handshakeTimeoutMilliseconds: Int? = 30_000) throws(ChannelError) -> SecureChannel {
        try initiate(socket: socket, parameters: parameters, logger: logger,
                     handshakeTimeoutMilliseconds: handshakeTimeoutMilliseconds, fixedEphemeralKey: nil)
    }

    /// `fixedEphemeralKey` is for tests that replay a recorded session.
    static func initiate(socket: FileDescriptor, parameters: ChannelParameters, logger: Logger?,
                         handshakeTimeoutMilliseconds: Int?, fixedEphemeralKey: [UInt8]?) throws(ChannelError) -> SecureChannel {
        let logger = logger ?? defaultLogger(parameters, role: .initiator)
        var inbox = Inbox(capacity: 64 << 10)
        let channel: SecureChannel
        do {
            if let ms = handshakeTimeoutMilliseconds { try socket.setReceiveTimeout(milliseconds: ms) }
            // 1. The worker names the suite it picked from our offer.
            let select = try readFrame(socket, &inbox)
            guard select.count == 2, select[0] == 1 else {
                throw ChannelViolation(.malformed, "bad suite selection frame")
            }
            guard let suite = CipherSuite(rawValue: select[1]), parameters.suites.contains(suite) else {
                throw ChannelViolation(.badSuite, "worker chose suite \(select[1]), offered \(parameters.suites)")
            }
            // 2. -> psk, e
            let handshake = try NoiseHandshake(role: .initiator, suite: suite, prologue: parameters.prologue, psk: parameters.psk,
                                               fixedEphemeralKey: fixedEphemeralKey)
            try writeFrame(socket, handshake.writeMessage(payload: []))
            // 3. <- e, ee
            let reply = try readFrame(socket, &inbox)
            guard try handshake.readMessage(reply).isEmpty else {
                throw ChannelViolation(.malformed, "unexpected handshake payload")
            }
            let (toWorker, toLauncher) = try handshake.split()
            if handshakeTimeoutMilliseconds != nil { try socket.setReceiveTimeout(milliseconds: nil) }
            channel = SecureChannel(role: .initiator, suite: suite, parameters: parameters, socket: socket, inbox: inbox,
                                    send: toWorker, receive: toLauncher, handshakeHash: handshake.handshakeHash, logger: logger)
        } catch {
            throw failHandshake(error, socket: socket, inbox: &inbox, logger: logger)
        }
        // From here the channel owns the socket and the buffer.
        try channel.exchangeHellos()
        return channel
    }

    /// The worker's side: picks the first of `parameters.suites` it
    /// implements, answers the handshake on `socket` (taking ownership of
    /// it) and exchanges hellos.
    public static func respond(socket: FileDescriptor, parameters: ChannelParameters,
                               supportedSuites: [CipherSuite] = CipherSuite.allCases,
                               logger: Logger? = nil) throws(ChannelError) -> SecureChannel {
        try respond(socket: socket, parameters: parameters, supportedSuites: supportedSuites, logger: logger, fixedEphemeralKey: nil)
    }

    static func respond(socket: FileDescriptor, parameters: ChannelParameters, supportedSuites: [CipherSuite],
                        logger: Logger?, fixedEphemeralKey: [UInt8]?) throws(ChannelError) -> SecureChannel {
        let logger = logger ?? defaultLogger(parameters, role: .responder)
        var inbox = Inbox(capacity: 64 << 10)
        let channel: SecureChannel
        do {
            guard let suite = parameters.suites.first(where: supportedSuites.contains) else {
                throw ChannelViolation(.badSuite, "no offered suite (\(parameters.suites)) is supported")
            }
            try writeFrame(socket, [1, suite.rawValue])
            let handshake = try NoiseHandshake(role: .responder, suite: suite, prologue: parameters.prologue, psk: parameters.psk,
                                               fixedEphemeralKey: fixedEphemeralKey)
            let first = try readFrame(socket, &inbox)
            guard try handshake.readMessage(first).isEmpty else {
                throw ChannelViolation(.malformed, "unexpected handshake payload")
            }
            try writeFrame(socket, handshake.writeMessage(payload: []))
            let (toWorker, toLauncher) = try handshake.split()
            channel = SecureChannel(role: .responder, suite: suite, parameters: parameters, socket: socket, inbox: inbox,
                                    send: toLauncher, receive: toWorker, handshakeHash: handshake.handshakeHash, logger: logger)
        } catch {
            throw failHandshake(error, socket: socket, inbox: &inbox, logger: logger)
        }
        try channel.exchangeHellos()
        return channel
    }

    private static func failHandshake(_ error: any Error, socket: FileDescriptor, inbox: inout Inbox, logger: Logger) -> ChannelError {
        let channelError = classify(error)
        if case .violation(let v) = channelError {
            logger.error("channel closed during handshake", metadata: ["kind": "\(v.kind.rawValue)", "reason": "\(v.reason)"])
        } else {
            logger.error("channel handshake failed", metadata: ["error": "\(channelError)"])
        }
        inbox.deallocate()
        try? socket.close()
        return channelError
    }

    private static func classify(_ error: any Error) -> ChannelError {
        switch error {
        case let e as ChannelError: e
        case let v as ChannelViolation: .violation(v)
        case let c as CryptoError: .crypto(c)
        case let e as Errno where e == .wouldBlock: .violation(ChannelViolation(.truncated, "timed out waiting for the peer's handshake"))
        case let e as Errno: .system("channel socket", e)
        default: .system("\(error)", .ioError)
        }
    }

    private static func writeFrame(_ socket: FileDescriptor, _ bytes: [UInt8]) throws {
        precondition(bytes.count <= 65535)
        var frame: [UInt8] = []
        frame.appendBigEndian(UInt16(bytes.count))
        frame += bytes
        try frame.withUnsafeBytes { try socket.sendAll($0) }
    }

    private static func readFrame(_ socket: FileDescriptor, _ inbox: inout Inbox) throws -> [UInt8] {
        var descriptors: [FileDescriptor] = []
        defer { for fd in descriptors { try? fd.close() } }
        try inbox.fill(2, from: socket, descriptors: &descriptors, during: "handshake")
        let length = Int(inbox.readable.baseAddress!.loadBigEndian(as: UInt16.self))
        guard length <= NoiseHandshake.maxMessageLength else { throw ChannelViolation(.oversized, "handshake frame too long") }
        try inbox.fill(2 + length, from: socket, descriptors: &descriptors, during: "handshake")
        guard descriptors.isEmpty else {
            throw ChannelViolation(.unexpectedFileDescriptors, "\(descriptors.count) descriptors during the handshake")
        }
        let frame = Array(inbox.readable[2..<2 + length])
        inbox.consume(2 + length)
        return frame
    }

    private func exchangeHellos() throws(ChannelError) {
        let agent = Array(Self.agent.utf8)
        try send(type: .hello, requestID: 0, payload: agent)
        guard let hello = try receiveRecord() else {
            throw fail(ChannelViolation(.closed, "peer closed before its hello"))
        }
        guard hello.type == .hello else {
            throw fail(ChannelViolation(.unexpectedMessage, "first record is \(hello.type), not hello"))
        }
        peerAgent = String(decoding: hello.payload, as: UTF8.self)
    }

    // MARK: Sending

    /// Sends one message. Payloads over the record limit go through a bulk
    /// memfd (requests and responses only). Credits are charged for
    /// requests and released by their response or error.
    public func send(type: MessageType, flags: MessageFlags = [], requestID: UInt64, payload: [UInt8]) throws(ChannelError) {
        try typed {
            try payload.withUnsafeBytes { bytes in
                try send(type: type, flags: flags, requestID: requestID, payload: bytes)
            }
        }
    }

    public func send(type: MessageType, flags: MessageFlags = [], requestID: UInt64, payload: UnsafeRawBufferPointer) throws(ChannelError) {
        let useBulk = payload.count > limits.maxRecordPayload
        if useBulk {
            guard type == .request || type == .response else { throw .tooLarge(payload.count, limit: limits.maxRecordPayload) }
            guard payload.count <= limits.maxBulkLength else { throw .tooLarge(payload.count, limit: limits.maxBulkLength) }
        }
        try checkSendable(type: type, requestID: requestID, count: payload.count)
        sendLock.lock()
        defer { sendLock.unlock() }
        do {
            if useBulk {
                try sendBulk(innerType: type, requestID: requestID, payload: payload)
            } else {
                try sendRecord(type: type, flags: flags, requestID: requestID, payload: payload, passing: [])
            }
        } catch {
            throw fail(error)
        }
    }

    /// Credit and direction checks before anything is sent.
    private func checkSendable(type: MessageType, requestID: UInt64, count: Int) throws(ChannelError) {
        stateLock.lock()
        defer { stateLock.unlock() }
        do {
            guard !closed else { throw .closed }
            switch (role, type) {
            case (.initiator, .request):
                guard requestID != 0, inFlight[requestID] == nil else { throw .noCredit("request id \(requestID) is in use") }
                guard inFlight.count < limits.maxRequestsInFlight else {
                    throw .noCredit("\(inFlight.count) requests in flight (limit \(limits.maxRequestsInFlight))")
                }
                guard count <= limits.maxBytesInFlight - bytesInFlight else {
                    throw .noCredit("\(bytesInFlight) + \(count) bytes in flight (limit \(limits.maxBytesInFlight))")
                }
                inFlight[requestID] = count
                bytesInFlight += count
            case (.responder, .response), (.responder, .error):
                guard let bytes = inFlight.removeValue(forKey: requestID) else {
                    throw .noCredit("no request \(requestID) to answer")
                }
                bytesInFlight -= bytes
            case (.initiator, .cancel), (_, .ping), (_, .shutdown), (_, .hello):
                break
            default:
                preconditionFailure("a \(role) does not send \(type)")
            }
        }
    }

    /// Runs `body`, whose only errors are ChannelErrors, with a typed throw.
    private func typed<R>(_ body: () throws -> R) throws(ChannelError) -> R {
        do { return try body() } catch let e as ChannelError { throw e } catch { throw Self.classify(error) }
    }

    private func sendRecord(type: MessageType, flags: MessageFlags, requestID: UInt64,
                            payload: UnsafeRawBufferPointer, passing descriptors: [FileDescriptor]) throws {
        let total = RecordFormat.overhead + payload.count
        if total > outbox.count {
            // Large: encrypt and send in pieces, so the peer decrypts the
            // first piece while we encrypt the next.
            var pending = descriptors
            try sealer.sealStreaming(type: type, flags: flags, requestID: requestID, payload: payload, scratch: outbox) { piece in
                try socket.sendAll(piece, passing: pending)
                pending = []
            }
            return
        }
        let size = try sealer.seal(type: type, flags: flags, requestID: requestID, payload: payload, into: outbox)
        try socket.sendAll(UnsafeRawBufferPointer(rebasing: outbox[0..<size]), passing: descriptors)
    }

    /// Encrypts `payload` in chunks under a fresh key into a new memfd
    /// (see ``BulkDescriptor/seal(_:requestID:suite:into:)``), seals it, and
    /// sends a bulk record that carries the key with the memfd attached.
    private func sendBulk(innerType: MessageType, requestID: UInt64, payload: UnsafeRawBufferPointer) throws {
        let descriptor = BulkDescriptor(innerType: innerType, chunkSize: 1 << 20, totalLength: payload.count,
                                        key: try Crypto.randomBytes(32))
        let memfd = try FileDescriptor.memfd(name: "stockade-bulk")
        defer { try? memfd.close() }
        _ = try memfd.resize(to: Int64(descriptor.sealedLength))
        try descriptor.seal(payload, requestID: requestID, suite: suite, into: memfd)
        try Self.sealImmutable(memfd)
        let record = descriptor.encoded()
        try record.withUnsafeBytes {
            try sendRecord(type: .bulk, flags: [], requestID: requestID, payload: $0, passing: [memfd])
        }
    }

    /// Seals a bulk memfd against every change. `F_SEAL_WRITE` fails with
    /// EBUSY while something in the kernel still holds a transient
    /// reference to one of its pages (page migration or compaction, say)
    /// after the kernel's own wait of about 150 ms: try a few more times
    /// before failing the send.
    private static func sealImmutable(_ memfd: FileDescriptor) throws(ChannelError) {
        var attempt = 0
        while true {
            do {
                try memfd.addSeals(.immutable)
                return
            } catch {
                attempt += 1
                guard error == .resourceBusy, attempt < 4 else { throw .system("sealing a bulk memfd", error) }
                usleep(UInt32(1000 << attempt))
            }
        }
    }

    /// Sends a record exactly as given, bypassing the direction and credit
    /// checks, with `descriptors` attached: for tests that play a
    /// misbehaving peer.
    func sendRawRecordForTesting(type: MessageType, flags: UInt8 = 0, requestID: UInt64, payload: [UInt8],
                                 passing descriptors: [FileDescriptor] = []) throws {
        sendLock.lock()
        defer { sendLock.unlock() }
        try payload.withUnsafeBytes {
            try sendRecord(type: type, flags: MessageFlags(rawValue: flags), requestID: requestID, payload: $0, passing: descriptors)
        }
    }

    /// The bulk descriptor for `payload` and a memfd holding its sealed
    /// chunks, left unsealed: for tests.
    func makeBulkForTesting(innerType: MessageType, requestID: UInt64, payload: [UInt8]) throws -> (descriptor: [UInt8], memfd: FileDescriptor) {
        let descriptor = BulkDescriptor(innerType: innerType, chunkSize: 4096, totalLength: payload.count, key: try Crypto.randomBytes(32))
        let memfd = try FileDescriptor.memfd(name: "stockade-bulk-test")
        _ = try memfd.resize(to: Int64(descriptor.sealedLength))
        let key = try AEADKey(suite: suite, key: descriptor.key)
        for index in 0..<descriptor.chunkCount {
            let start = index * descriptor.chunkSize
            let chunk = Array(payload[start..<min(payload.count, start + descriptor.chunkSize)])
            let sealed = try key.seal(nonce: UInt64(index), ad: BulkDescriptor.chunkAD(requestID: requestID, totalLength: payload.count, index: index), plaintext: chunk)
            _ = try sealed.withUnsafeBytes { try memfd.write(toAbsoluteOffset: Int64(start + index * 16), $0) }
        }
        return (descriptor.encoded(), memfd)
    }

    // MARK: Receiving

    /// Receives the next message. Pings are answered here and not returned
    /// (ping replies are). Returns nil when the peer closed after a
    /// shutdown; any other end of stream is a violation.
    public func receive() throws(ChannelError) -> ChannelMessage? {
        receiveLock.lock()
        defer { receiveLock.unlock() }
        if !stash.isEmpty { return stash.removeFirst() }
        while true {
            guard let message = try receiveRecord() else { return nil }
            if message.type == .ping, !message.flags.contains(.reply) {
                try send(type: .ping, flags: .reply, requestID: message.requestID, payload: message.payload)
                continue
            }
            return message
        }
    }

    private func receiveRecord() throws(ChannelError) -> ChannelMessage? {
        if isClosed { throw .closed }
        do {
            guard try inbox.fillOrEOF(RecordFormat.headerLength, from: socket, descriptors: &pendingDescriptors, during: "a record header") else {
                return try endOfStream()
            }
            let header = UnsafeRawBufferPointer(rebasing: inbox.readable[0..<RecordFormat.headerLength])
            let (length, type) = try opener.parseHeader(header)
            var message: ChannelMessage
            if RecordFormat.headerLength + length > Self.streamingThreshold {
                message = try receiveStreaming(length: length, type: type)
            } else {
                try inbox.fill(RecordFormat.headerLength + length, from: socket, descriptors: &pendingDescriptors, during: "a record")
                let record = inbox.readable
                message = try opener.open(header: UnsafeRawBufferPointer(rebasing: record[0..<RecordFormat.headerLength]),
                                          ciphertext: UnsafeRawBufferPointer(rebasing: record[RecordFormat.headerLength..<RecordFormat.headerLength + length]))
                inbox.consume(RecordFormat.headerLength + length)
            }
            if message.type == .bulk {
                message = try receiveBulk(message)
            }
            if pendingDescriptors.count > 1 || (!pendingDescriptors.isEmpty && inbox.readable.isEmpty) {
                throw ChannelViolation(.unexpectedFileDescriptors, "\(pendingDescriptors.count) descriptors arrived with no bulk record")
            }
            try account(message)
            return message
        } catch {
            throw fail(error)
        }
    }

    /// Records larger than this are decrypted while they arrive, straight
    /// into the payload, instead of being buffered whole first.
    static let streamingThreshold = 32 << 10

    private func receiveStreaming(length: Int, type: MessageType) throws -> ChannelMessage {
        let header = Array(inbox.readable[0..<RecordFormat.headerLength])
        inbox.consume(RecordFormat.headerLength)
        let key = try header.withUnsafeBytes { try opener.beginStreaming(header: $0) }
        func corrupt() -> ChannelViolation { ChannelViolation(.malformed, "AEAD update failed") }
        try inbox.fill(RecordFormat.bodyHeaderLength, from: socket, descriptors: &pendingDescriptors, during: "a record")
        var bodyHeader = [UInt8](repeating: 0, count: RecordFormat.bodyHeaderLength)
        guard bodyHeader.withUnsafeMutableBytes({ key.openUpdate(inbox.readable.baseAddress!, $0.baseAddress!, RecordFormat.bodyHeaderLength) })
        else { throw corrupt() }
        inbox.consume(RecordFormat.bodyHeaderLength)
        let payloadCount = length - RecordFormat.bodyHeaderLength - RecordFormat.tagLength
        let payload = try [UInt8](unsafeUninitializedCapacity: payloadCount) { buffer, count in
            let out = UnsafeMutableRawPointer(buffer.baseAddress!)
            var position = min(inbox.readable.count, payloadCount)
            if position > 0 {
                guard key.openUpdate(inbox.readable.baseAddress!, out, position) else { throw corrupt() }
                inbox.consume(position)
            }
            // The rest goes from the socket straight into the payload and is
            // decrypted in place; nothing is released before the tag checks.
            while position < payloadCount {
                let received = try socket.receiveMessage(
                    into: UnsafeMutableRawBufferPointer(start: out + position, count: payloadCount - position), maxDescriptors: 4)
                pendingDescriptors += received.descriptors
                if received.controlTruncated {
                    throw ChannelViolation(.unexpectedFileDescriptors, "more descriptors than allowed in one message")
                }
                if received.byteCount == 0 {
                    throw ChannelViolation(.truncated, "stream ended \(position) bytes into a \(payloadCount) byte payload")
                }
                guard key.openUpdate(out + position, out + position, received.byteCount) else { throw corrupt() }
                position += received.byteCount
            }
            count = payloadCount
        }
        try inbox.fill(RecordFormat.tagLength, from: socket, descriptors: &pendingDescriptors, during: "a record tag")
        let message = try opener.finishStreaming(key: key, tag: inbox.readable.baseAddress!, clearType: type,
                                                 bodyHeader: bodyHeader, payload: payload)
        inbox.consume(RecordFormat.tagLength)
        return message
    }

    private func endOfStream() throws -> ChannelMessage? {
        let clean = stateLock.withLock { shutdownSeen }
        if clean {
            close()
            return nil
        }
        throw ChannelViolation(.closed, "the peer closed the channel without a shutdown")
    }

    /// Checks a received message against the direction rules and credits.
    private func account(_ message: ChannelMessage) throws {
        try stateLock.withLock { () throws in
            switch (role, message.type) {
            case (_, .hello):
                guard !helloReceived, opener.recordCount == 1 else {
                    throw ChannelViolation(.unexpectedMessage, "a second hello")
                }
                helloReceived = true
            case (.responder, .request):
                guard inFlight[message.requestID] == nil else {
                    throw ChannelViolation(.unexpectedMessage, "request id \(message.requestID) is already in flight")
                }
                guard inFlight.count < limits.maxRequestsInFlight else {
                    throw ChannelViolation(.creditExceeded, "more than \(limits.maxRequestsInFlight) requests in flight")
                }
                guard message.payload.count <= limits.maxBytesInFlight - bytesInFlight else {
                    throw ChannelViolation(.creditExceeded, "more than \(limits.maxBytesInFlight) request bytes in flight")
                }
                inFlight[message.requestID] = message.payload.count
                bytesInFlight += message.payload.count
            case (.responder, .cancel):
                break
            case (.initiator, .response), (.initiator, .error):
                guard let bytes = inFlight.removeValue(forKey: message.requestID) else {
                    throw ChannelViolation(.unexpectedMessage, "\(message.type) for request \(message.requestID), which is not in flight")
                }
                bytesInFlight -= bytes
            case (_, .ping):
                break
            case (_, .shutdown):
                shutdownSeen = true
            default:
                throw ChannelViolation(.unexpectedMessage, "a \(role == .initiator ? "launcher" : "worker") does not accept \(message.type)")
            }
            if message.type != .hello, opener.recordCount == 1 {
                throw ChannelViolation(.unexpectedMessage, "first record is \(message.type), not hello")
            }
        }
    }

    /// Opens a bulk transfer: checks the memfd's seals and size, then
    /// decrypts it chunk by chunk into the payload
    /// (``BulkDescriptor/open(_:requestID:suite:)``).
    private func receiveBulk(_ record: ChannelMessage) throws -> ChannelMessage {
        let descriptor = try BulkDescriptor(decoding: record.payload, maxBulkLength: limits.maxBulkLength)
        guard !pendingDescriptors.isEmpty else {
            throw ChannelViolation(.unexpectedFileDescriptors, "bulk record without a memfd")
        }
        let memfd = pendingDescriptors.removeFirst()
        defer { try? memfd.close() }
        let seals: FileSeals
        do { seals = try memfd.seals() } catch {
            throw ChannelViolation(.unsealedMemfd, "bulk descriptor is not a sealable memfd (\(error))")
        }
        guard seals.isSuperset(of: [.write, .shrink, .grow]) else {
            throw ChannelViolation(.unsealedMemfd, "bulk memfd seals are \(seals), need write,shrink,grow")
        }
        let size = try memfd.fileSize()
        guard size == descriptor.sealedLength else {
            throw ChannelViolation(.malformed, "bulk memfd holds \(size) bytes, expected \(descriptor.sealedLength)")
        }
        let mapping = try FileMapping(memfd, count: size, writable: false, populate: true)
        let payload = try withExtendedLifetime(mapping) {
            try descriptor.open(mapping.bytes, requestID: record.requestID, suite: suite)
        }
        return ChannelMessage(type: descriptor.innerType, requestID: record.requestID, payload: payload, viaBulk: true)
    }

    // MARK: Requests (launcher side)

    /// Sends `payload` as a request and waits for its response. Other
    /// messages that arrive meanwhile are kept for ``receive()``.
    public func request(_ payload: [UInt8]) throws(ChannelError) -> [UInt8] {
        let id = stateLock.withLock { () -> UInt64 in
            defer { nextRequestID += 1 }
            return nextRequestID
        }
        try send(type: .request, requestID: id, payload: payload)
        receiveLock.lock()
        defer { receiveLock.unlock() }
        while true {
            guard let message = try receiveRecord() else { throw .closed }
            if message.type == .ping, !message.flags.contains(.reply) {
                try send(type: .ping, flags: .reply, requestID: message.requestID, payload: message.payload)
                continue
            }
            guard message.requestID == id, message.type == .response || message.type == .error else {
                stash.append(message)
                continue
            }
            if message.type == .error { throw .remote(String(decoding: message.payload, as: UTF8.self)) }
            return message.payload
        }
    }

    /// A fresh request id for ``send(type:flags:requestID:payload:)``.
    public func makeRequestID() -> UInt64 {
        stateLock.withLock {
            defer { nextRequestID += 1 }
            return nextRequestID
        }
    }

    /// Sends a ping and waits for its reply.
    public func ping(_ payload: [UInt8] = []) throws(ChannelError) {
        let id = makeRequestID()
        try send(type: .ping, requestID: id, payload: payload)
        receiveLock.lock()
        defer { receiveLock.unlock() }
        while true {
            guard let message = try receiveRecord() else { throw .closed }
            if message.type == .ping, message.flags.contains(.reply), message.requestID == id {
                guard message.payload == payload else {
                    throw fail(ChannelViolation(.malformed, "ping reply does not echo the payload"))
                }
                return
            }
            stash.append(message)
        }
    }

    /// Orderly close from the launcher: sends shutdown, waits for the
    /// worker's reply and its end of stream, and closes.
    public func shutdown() throws(ChannelError) {
        try send(type: .shutdown, requestID: 0, payload: [])
        while let message = try receive() {
            if message.type == .shutdown { continue }
        }
    }

    /// Answers a shutdown (worker side) and closes.
    public func acknowledgeShutdown() throws(ChannelError) {
        try send(type: .shutdown, flags: .reply, requestID: 0, payload: [])
        close()
    }

    /// Closes the socket. Idempotent.
    public func close() {
        stateLock.withLock {
            guard !closed else { return }
            closed = true
            try? socket.close()
        }
    }

    /// Closes the channel for `error`, logging a violation with its reason.
    private func fail(_ error: any Error) -> ChannelError {
        let channelError = Self.classify(error)
        if case .violation(let v) = channelError {
            let first = stateLock.withLock { () -> Bool in
                defer { if _violation == nil { _violation = v } }
                return _violation == nil
            }
            if first {
                logger.error("channel violation; closing", metadata: ["kind": "\(v.kind.rawValue)", "reason": "\(v.reason)"])
            }
            close()
        } else if case .system = channelError {
            close()
        }
        return channelError
    }
}

/// A growable receive buffer: bytes in `[start, end)` are unread.
struct Inbox {
    private(set) var storage: UnsafeMutableRawBufferPointer
    private var start = 0
    private var end = 0

    init(capacity: Int) { storage = .allocate(byteCount: capacity, alignment: 16) }

    func deallocate() { storage.deallocate() }

    var readable: UnsafeRawBufferPointer { UnsafeRawBufferPointer(rebasing: storage[start..<end]) }

    mutating func consume(_ n: Int) {
        start += n
        if start == end { start = 0; end = 0 }
    }

    /// Reads until at least `count` bytes are unread. Descriptors that
    /// arrive are appended to `descriptors` (the caller decides whether
    /// they were expected). Returns false on end of stream before any
    /// byte of the wanted unit; end of stream after some is a violation.
    mutating func fillOrEOF(_ count: Int, from socket: FileDescriptor, descriptors: inout [FileDescriptor], during what: String) throws -> Bool {
        while end - start < count {
            if storage.count - start < count {
                if storage.count < count {
                    // `count` was checked against the limits by the caller.
                    let grown = UnsafeMutableRawBufferPointer.allocate(byteCount: max(count, storage.count * 2), alignment: 16)
                    grown.copyMemory(from: UnsafeRawBufferPointer(rebasing: storage[start..<end]))
                    storage.deallocate()
                    storage = grown
                } else {
                    storage.baseAddress!.copyMemory(from: storage.baseAddress! + start, byteCount: end - start)
                }
                end -= start
                start = 0
            }
            let received = try socket.receiveMessage(into: UnsafeMutableRawBufferPointer(rebasing: storage[end...]), maxDescriptors: 4)
            descriptors += received.descriptors
            if received.controlTruncated {
                throw ChannelViolation(.unexpectedFileDescriptors, "more descriptors than allowed in one message")
            }
            if received.byteCount == 0 {
                if end - start == 0 { return false }
                throw ChannelViolation(.truncated, "stream ended \(end - start) bytes into \(what) of \(count)")
            }
            end += received.byteCount
        }
        return true
    }

    mutating func fill(_ count: Int, from socket: FileDescriptor, descriptors: inout [FileDescriptor], during what: String) throws {
        guard try fillOrEOF(count, from: socket, descriptors: &descriptors, during: what) else {
            throw ChannelViolation(.truncated, "stream ended before \(what)")
        }
    }
}
