// One end of the encrypted channel between the launcher (Noise initiator)
// and a worker (responder), over a Unix stream socket. See docs/PROTOCOL.md.
public import SystemPackage
public import Logging
import StockadeSystem
import Foundation
import Synchronization

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
    /// The channel's parameters, without the PSK: the channel keeps no
    /// copy of it (``ChannelParameters/psk`` is empty here).
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
    private let sendLock = Mutex<Void>(())
    private var outbox: UnsafeMutableRawBufferPointer
    /// Records up to 64 KiB of payload are sealed whole and sent in one
    /// write (a 64 KiB payload included: room for the record's overhead
    /// saves a second write and wakeup for its last 33 bytes); larger
    /// ones go out in pieces of this size while they are encrypted.
    static let outboxSize = (64 << 10) + RecordFormat.overhead
    /// The rest of a sealed record the socket did not take at once
    /// (``sendRequestIfImmediate(_:requestID:)``); sent before anything else.
    private var unsent: [UInt8] = []
    // Receive side (receiveLock).
    private let receiveLock = Mutex<Void>(())
    private var inbox: Inbox
    /// Messages a waiting ``request(_:)`` or ``ping(_:timeoutMilliseconds:)``
    /// read that were not its own, for the next ``receive()``; bounded by
    /// ``stashLimit``.
    private var stash: [ChannelMessage] = []
    private var stashBytes = 0
    // Send-side deadline (sendLock): when set, no send waits past it.
    private var sendDeadline: ContinuousClock.Instant?
    // Shared state (stateLock).
    private let stateLock = Mutex<Void>(())
    private var closed = false
    private var shutdownSeen = false
    private var helloReceived = false
    private var _violation: ChannelViolation?
    private var inFlight: [UInt64: Int] = [:]
    private var bytesInFlight = 0
    private var nextRequestID: UInt64 = 1
    /// Pings sent and not yet answered: id -> payload length. A reply is
    /// accepted only for one of these, with the same length.
    private var outstandingPings: [UInt64: Int] = [:]
    /// Threads in ``usingSocket(_:)``, and whether a ``close()`` waits for them.
    private var socketUsers = 0
    private var closeDeferred = false
    /// At most this many pings wait for a reply at once.
    static let maxOutstandingPings = 16

    /// The violation that closed this channel, if one did.
    public var violation: ChannelViolation? { stateLock.withLock { _violation } }
    public var isClosed: Bool { stateLock.withLock { closed } }

    static let agent = "stockade-swift/1"

    /// For the handshake above and for the fuzz target that plays a
    /// worker's stream into an established channel.
    init(role: Role, suite: CipherSuite, parameters: ChannelParameters, socket: FileDescriptor,
                 inbox: Inbox, send: NoiseCipherState, receive: NoiseCipherState, handshakeHash: [UInt8], logger: Logger) {
        self.role = role
        self.suite = suite
        var withoutPSK = parameters
        withoutPSK.psk = []
        self.parameters = withoutPSK
        self.socket = socket
        // From the first record on, a descriptor is judged by the record it
        // came with (the peer may send its hello and a bulk record back to
        // back, and both may arrive in one read).
        var inbox = inbox
        inbox.acceptsDescriptors = true
        self.inbox = inbox
        self.handshakeHash = handshakeHash
        self.logger = logger
        sealer = RecordSealer(cipher: send, rekeyInterval: parameters.limits.rekeyInterval)
        opener = RecordOpener(cipher: receive, limits: parameters.limits)
        outbox = PageBuffer.allocate(byteCount: Self.outboxSize)
    }

    deinit {
        PageBuffer.deallocate(outbox)
        inbox.deallocate()
        if !closed { try? socket.close() }
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
    /// `started`: the first message went out already
    /// (``startInitiation(socket:parameters:)``).
    static func initiate(socket: FileDescriptor, parameters: ChannelParameters, logger: Logger?,
                         handshakeTimeoutMilliseconds: Int?, fixedEphemeralKey: [UInt8]?,
                         started: NoiseHandshake? = nil) throws(ChannelError) -> SecureChannel {
        let logger = logger ?? defaultLogger(parameters, role: .initiator)
        var inbox = Inbox(capacity: 64 << 10)
        // One deadline over the suite choice, the handshake and the hellos,
        // however the worker spreads its bytes.
        if let ms = handshakeTimeoutMilliseconds {
            inbox.deadline = .now + .milliseconds(ms)
            inbox.deadlineWhat = "handshake and hello from the worker within \(ms) ms"
        }
        let channel: SecureChannel
        do {
            // 1. The worker names the suite it picked from our offer.
            let select = try readFrame(socket, &inbox, length: 2, what: "suite selection")
            guard select[0] == 1 else {
                throw ChannelViolation(.malformed, "bad suite selection frame")
            }
            guard let suite = CipherSuite(rawValue: select[1]), parameters.suites.contains(suite) else {
                throw ChannelViolation(.badSuite, "worker chose suite \(select[1]), offered \(parameters.suites)")
            }
            // 2. -> psk, e (sent already where only one suite was offered)
            let handshake: NoiseHandshake
            if let started {
                handshake = started
            } else {
                handshake = try NoiseHandshake(role: .initiator, suite: suite, prologue: parameters.prologue, psk: parameters.psk,
                                                   fixedEphemeralKey: fixedEphemeralKey)
            }
            defer { handshake.wipe() }
            if started == nil { try writeFrame(socket, handshake.writeMessage(payload: [])) }
            // 3. <- e, ee (empty payload: exactly the overhead)
            let reply = try readFrame(socket, &inbox, length: NoiseHandshake.overhead, what: "handshake message 2")
            _ = try handshake.readMessage(reply)
            let (toWorker, toLauncher) = try handshake.split()
            channel = SecureChannel(role: .initiator, suite: suite, parameters: parameters, socket: socket, inbox: inbox,
                                    send: toWorker, receive: toLauncher, handshakeHash: handshake.handshakeHash, logger: logger)
        } catch {
            throw failHandshake(error, socket: socket, inbox: &inbox, logger: logger)
        }
        // From here the channel owns the socket and the buffer.
        try channel.exchangeHellos()
        return channel
    }

    /// Writes the launcher's first handshake message (-> psk, e) before the
    /// worker has named its suite, for parameters that offer exactly one
    /// (the worker has no choice to make, and a worker that cannot take it
    /// fails the handshake as it would anyway). The message then waits in
    /// the socket for the worker, which can answer its selection, message 2
    /// and its hello in one write: one wakeup of each side less. Finish
    /// with ``initiate(socket:parameters:logger:handshakeTimeoutMilliseconds:fixedEphemeralKey:started:)``.
    static func startInitiation(socket: FileDescriptor, parameters: ChannelParameters) throws(ChannelError) -> NoiseHandshake {
        precondition(parameters.suites.count == 1, "the first message goes out early only when one suite is offered")
        do {
            let handshake = try NoiseHandshake(role: .initiator, suite: parameters.suites[0], prologue: parameters.prologue,
                                               psk: parameters.psk, fixedEphemeralKey: nil)
            do {
                try writeFrame(socket, handshake.writeMessage(payload: []))
            } catch {
                handshake.wipe()
                throw error
            }
            return handshake
        } catch {
            throw classify(error)
        }
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
            defer { handshake.wipe() }
            let first = try readFrame(socket, &inbox, length: NoiseHandshake.overhead, what: "handshake message 1")
            _ = try handshake.readMessage(first)
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

    /// Reads one handshake frame whose length must be exactly `length`
    /// (checked from its 2-byte prefix before anything more is read). The
    /// inbox refuses any descriptor during the handshake.
    private static func readFrame(_ socket: FileDescriptor, _ inbox: inout Inbox, length: Int, what: String) throws -> [UInt8] {
        try inbox.fill(2, from: socket, during: what)
        let announced = Int(inbox.readable.baseAddress!.loadBigEndian(as: UInt16.self))
        guard announced == length else {
            throw ChannelViolation(announced > length ? .oversized : .malformed,
                                   "\(what) frame of \(announced) bytes; it is exactly \(length)")
        }
        try inbox.fill(2 + length, from: socket, during: what)
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
        // The handshake deadline ends here.
        inbox.deadline = nil
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
        try sendLock.withLock { () throws(ChannelError) in
            try sendLocked(type: type, flags: flags, requestID: requestID, payload: payload, bulk: useBulk, deadline: sendDeadline)
        }
    }

    /// Sends one checked message (sendLock held), bounded by `deadline`.
    private func sendLocked(type: MessageType, flags: MessageFlags, requestID: UInt64, payload: UnsafeRawBufferPointer,
                            bulk: Bool, deadline: ContinuousClock.Instant?) throws(ChannelError) {
        do {
            if bulk {
                try sendBulk(innerType: type, requestID: requestID, payload: payload, deadline: deadline)
            } else {
                try sendRecord(type: type, flags: flags, requestID: requestID, payload: payload, passing: [], deadline: deadline)
            }
        } catch {
            throw fail(error)
        }
    }

    /// Sends `payload` as request `requestID` (from ``makeRequestID()``),
    /// the send bounded by `deadline`, without waiting for the answer: for
    /// callers that read answers on another thread
    /// (``awaitResponse(to:deadline:)``).
    public func sendRequest(_ payload: [UInt8], requestID: UInt64, deadline: ContinuousClock.Instant?) throws(ChannelError) {
        let bulk = payload.count > limits.maxRecordPayload
        if bulk, payload.count > limits.maxBulkLength { throw .tooLarge(payload.count, limit: limits.maxBulkLength) }
        try checkSendable(type: .request, requestID: requestID, count: payload.count)
        try typed {
            try payload.withUnsafeBytes { bytes in
                try sendLock.withLock { () throws(ChannelError) in
                    try sendLocked(type: .request, flags: [], requestID: requestID, payload: bytes, bulk: bulk, deadline: deadline)
                }
            }
        }
    }

    /// Records up to this size are sent by ``sendRequestIfImmediate(_:requestID:)``.
    public static let immediateRequestLimit = 16 << 10

    /// What ``sendRequestIfImmediate(_:requestID:)`` did.
    public enum ImmediateSend: Sendable {
        /// The request is on its way.
        case sent
        /// Sealed, and all or part of it waits in the channel: call
        /// ``flushPending(deadline:)`` from a thread that may wait.
        case pending
        /// Nothing was sealed or sent, no credit taken (a large request, or
        /// another send in progress): send it with
        /// ``sendRequest(_:requestID:deadline:)`` from a thread that may wait.
        case notSent
    }

    /// Sends `payload` as request `requestID` (from ``makeRequestID()``)
    /// only as far as that cannot block: for an event loop that must never
    /// wait on a worker. A small record goes out with `MSG_DONTWAIT` while
    /// no other send holds the channel; what the socket does not take now is
    /// kept, in order before any later record, for ``flushPending(deadline:)``.
    public func sendRequestIfImmediate(_ payload: [UInt8], requestID: UInt64) throws(ChannelError) -> ImmediateSend {
        guard RecordFormat.overhead + payload.count <= Self.immediateRequestLimit else { return .notSent }
        try checkSendable(type: .request, requestID: requestID, count: payload.count)
        let outcome = try typed { () throws -> ImmediateSend in
          try payload.withUnsafeBytes { bytes throws -> ImmediateSend in
            let done = try sendLock.withLockIfAvailable { (_: inout Void) throws(ChannelError) -> ImmediateSend in
                guard unsent.isEmpty else { return .notSent }
                do {
                    let size = try sealer.seal(type: .request, flags: [], requestID: requestID, payload: bytes, into: outbox)
                    let record = UnsafeRawBufferPointer(rebasing: outbox[0..<size])
                    var n = 0
                    do throws(Errno) {
                        n = try socket.sendMessage(record, dontWait: true)
                    } catch {
                        guard error == .wouldBlock else { throw error }
                    }
                    if n == size { return .sent }
                    // The record holds the next nonce: nothing may go out
                    // before the rest of it.
                    unsent = Array(record[n...])
                    return .pending
                } catch {
                    throw fail(error)
                }
            }
            return done ?? .notSent
          }
        }
        if case .notSent = outcome { releaseCredit(requestID) }
        return outcome
    }

    /// Sends what ``sendRequestIfImmediate(_:requestID:)`` left pending,
    /// bounded by `deadline`.
    public func flushPending(deadline: ContinuousClock.Instant?) throws(ChannelError) {
        try sendLock.withLock { () throws(ChannelError) in
            do { try sendUnsent(deadline: deadline) } catch { throw fail(error) }
        }
    }

    /// Sends the pending part of an earlier record first (sendLock held).
    private func sendUnsent(deadline: ContinuousClock.Instant?) throws {
        guard !unsent.isEmpty else { return }
        try unsent.withUnsafeBytes { try sendAll($0, passing: [], deadline: deadline) }
        unsent = []
    }

    /// Gives back the credit of a request that was not sent.
    private func releaseCredit(_ requestID: UInt64) {
        stateLock.withLock {
            if let bytes = inFlight.removeValue(forKey: requestID) { bytesInFlight -= bytes }
        }
    }

    /// Credit and direction checks before anything is sent.
    private func checkSendable(type: MessageType, requestID: UInt64, count: Int) throws(ChannelError) {
        try stateLock.withLock { () throws(ChannelError) in
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
                            payload: UnsafeRawBufferPointer, passing descriptors: [FileDescriptor],
                            deadline: ContinuousClock.Instant?) throws {
        try sendUnsent(deadline: deadline)
        let total = RecordFormat.overhead + payload.count
        if total > outbox.count {
            // Large: encrypt and send in pieces, so the peer decrypts the
            // first piece while we encrypt the next.
            var pending = descriptors
            try sealer.sealStreaming(type: type, flags: flags, requestID: requestID, payload: payload, scratch: outbox) { piece in
                try sendAll(piece, passing: pending, deadline: deadline)
                pending = []
            }
            return
        }
        let size = try sealer.seal(type: type, flags: flags, requestID: requestID, payload: payload, into: outbox)
        try sendAll(UnsafeRawBufferPointer(rebasing: outbox[0..<size]), passing: descriptors, deadline: deadline)
    }

    /// Sends every byte (sendLock held). Under a deadline each `sendmsg`
    /// may block only for the time left, so a peer that stops reading (or
    /// reads a byte now and then) cannot hold the sender past it.
    private func sendAll(_ bytes: UnsafeRawBufferPointer, passing descriptors: [FileDescriptor],
                         deadline: ContinuousClock.Instant?) throws {
        guard let deadline else { return try socket.sendAll(bytes, passing: descriptors) }
        defer { try? socket.setSendTimeout(milliseconds: nil) }
        var offset = 0
        var pending = descriptors
        while offset < bytes.count || !pending.isEmpty {
            let left = deadline - ContinuousClock.now
            guard left > .zero else { throw ChannelViolation(.timedOut, "the peer stopped reading; a send missed its deadline") }
            try socket.setSendTimeout(milliseconds: max(1, Int(left.inMilliseconds.rounded(.up))))
            do {
                offset += try socket.sendMessage(UnsafeRawBufferPointer(rebasing: bytes[offset...]), passing: pending)
                pending = []
            } catch {
                guard error == .wouldBlock else { throw error }
            }
        }
    }

    /// Encrypts `payload` in chunks under a fresh key into a new memfd
    /// (see ``BulkDescriptor/seal(_:requestID:suite:into:)``), seals it, and
    /// sends a bulk record that carries the key with the memfd attached.
    private func sendBulk(innerType: MessageType, requestID: UInt64, payload: UnsafeRawBufferPointer,
                          deadline: ContinuousClock.Instant?) throws {
        var descriptor = BulkDescriptor(innerType: innerType, chunkSize: 1 << 20, totalLength: payload.count,
                                        key: try Crypto.randomBytes(32))
        defer { descriptor.key.wipe() }
        let memfd = try FileDescriptor.memfd(name: "stockade-bulk")
        defer { try? memfd.close() }
        _ = try memfd.resize(to: Int64(descriptor.sealedLength))
        try descriptor.seal(payload, requestID: requestID, suite: suite, into: memfd)
        try Self.sealImmutable(memfd)
        var record = descriptor.encoded()
        defer { record.wipe() }
        try record.withUnsafeBytes {
            try sendRecord(type: .bulk, flags: [], requestID: requestID, payload: $0, passing: [memfd], deadline: deadline)
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
        try sendLock.withLock { () throws in
            try payload.withUnsafeBytes {
                try sendRecord(type: type, flags: MessageFlags(rawValue: flags), requestID: requestID, payload: $0, passing: descriptors,
                               deadline: sendDeadline)
            }
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
        try receiving { () throws(ChannelError) -> ChannelMessage? in
            if !stash.isEmpty {
                let message = stash.removeFirst()
                stashBytes -= message.payload.count
                return message
            }
            while true {
                guard let message = try receiveRecord() else { return nil }
                if message.type == .ping, !message.flags.contains(.reply) {
                    try send(type: .ping, flags: .reply, requestID: message.requestID, payload: message.payload)
                    continue
                }
                return message
            }
        }
    }

    /// The most messages (and payload bytes) kept for ``receive()`` while a
    /// request or ping waits for its own answer. Everything the peer may
    /// legitimately send meanwhile is bounded by what was asked of it (a
    /// response per request in flight, a reply per ping, one shutdown), so
    /// more is a violation, not a reason to grow.
    var stashLimit: (count: Int, bytes: Int) {
        (limits.maxRequestsInFlight + Self.maxOutstandingPings + 1,
         limits.maxRequestsInFlight.multipliedReportingOverflow(by: max(limits.maxRecordPayload, limits.maxBulkLength)).partialValue)
    }

    /// Runs `body` under the receive lock. However it ends, a channel that
    /// is closed by then keeps no descriptor a record brought ahead of its
    /// use: the peer's violation, a failed answer to its ping (sent while
    /// a bulk record's memfd already waits in the inbox) or a ``close()``
    /// from another thread all release it here, not when the channel is
    /// freed.
    private func receiving<R: Sendable>(_ body: () throws(ChannelError) -> R) throws(ChannelError) -> R {
        try receiveLock.withLock { () throws(ChannelError) -> R in
            defer { if inbox.descriptor != nil, isClosed { inbox.dropDescriptor() } }
            return try body()
        }
    }

    /// Keeps `message` for a later ``receive()``, within ``stashLimit``.
    private func keep(_ message: ChannelMessage) throws(ChannelError) {
        let limit = stashLimit
        guard stash.count < limit.count, message.payload.count <= limit.bytes - stashBytes else {
            throw fail(ChannelViolation(.unexpectedMessage,
                                        "\(stash.count) messages (\(stashBytes) bytes) are already waiting unread; the limit is \(limit.count) (\(limit.bytes) bytes)"))
        }
        stash.append(message)
        stashBytes += message.payload.count
    }

    private func receiveRecord() throws(ChannelError) -> ChannelMessage? {
        if isClosed {
            inbox.dropDescriptor()
            throw .closed
        }
        do {
            let recordStart = inbox.consumedTotal
            guard try inbox.fillOrEOF(RecordFormat.headerLength, from: socket, during: "a record header") else {
                return try endOfStream()
            }
            let header = UnsafeRawBufferPointer(rebasing: inbox.readable[0..<RecordFormat.headerLength])
            let (length, type) = try opener.parseHeader(header)
            let recordEnd = recordStart + RecordFormat.headerLength + length
            // A descriptor with the header of a record that is not bulk is refused before its body is read.
            try inbox.checkDescriptor(recordStart: recordStart, recordEnd: recordEnd, type: type)
            var message: ChannelMessage
            if RecordFormat.headerLength + length > Self.streamingThreshold {
                message = try receiveStreaming(length: length, type: type, recordStart: recordStart, recordEnd: recordEnd)
            } else {
                try inbox.fill(RecordFormat.headerLength + length, from: socket, during: "a record")
                try inbox.checkDescriptor(recordStart: recordStart, recordEnd: recordEnd, type: type)
                let record = inbox.readable
                message = try opener.open(header: UnsafeRawBufferPointer(rebasing: record[0..<RecordFormat.headerLength]),
                                          ciphertext: UnsafeRawBufferPointer(rebasing: record[RecordFormat.headerLength..<RecordFormat.headerLength + length]))
                inbox.consume(RecordFormat.headerLength + length)
            }
            if message.type == .bulk {
                message = try receiveBulk(message, recordStart: recordStart, recordEnd: recordEnd)
            } else {
                try account(message, commit: true)
            }
            return message
        } catch {
            inbox.dropDescriptor()
            throw fail(error)
        }
    }

    /// Records larger than this are decrypted while they arrive, straight
    /// into the payload, instead of being buffered whole first.
    static let streamingThreshold = 32 << 10

    private func receiveStreaming(length: Int, type: MessageType, recordStart: Int, recordEnd: Int) throws -> ChannelMessage {
        let header = Array(inbox.readable[0..<RecordFormat.headerLength])
        inbox.consume(RecordFormat.headerLength)
        let key = try header.withUnsafeBytes { try opener.beginStreaming(header: $0) }
        func corrupt() -> ChannelViolation { ChannelViolation(.malformed, "AEAD update failed") }
        try inbox.fill(RecordFormat.bodyHeaderLength, from: socket, during: "a record")
        try inbox.checkDescriptor(recordStart: recordStart, recordEnd: recordEnd, type: type)
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
            // These reads stop at the payload's end, so a descriptor that
            // comes with them came with this record (never a bulk one).
            while position < payloadCount {
                let received = try inbox.receiveDirect(
                    into: UnsafeMutableRawBufferPointer(start: out + position, count: payloadCount - position), from: socket)
                try inbox.checkDescriptor(recordStart: recordStart, recordEnd: recordEnd, type: type)
                if received == 0 {
                    throw ChannelViolation(.truncated, "stream ended \(position) bytes into a \(payloadCount) byte payload")
                }
                guard key.openUpdate(out + position, out + position, received) else { throw corrupt() }
                position += received
            }
            count = payloadCount
        }
        try inbox.fill(RecordFormat.tagLength, from: socket, during: "a record tag")
        try inbox.checkDescriptor(recordStart: recordStart, recordEnd: recordEnd, type: type)
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

    /// Checks a received message against the direction rules and credits;
    /// with `commit` false only checks (a bulk record is checked this way
    /// before its memfd is touched, and committed once it is read).
    private func account(_ message: ChannelMessage, commit: Bool) throws {
        try account(type: message.type, flags: message.flags, requestID: message.requestID, payloadCount: message.payload.count, commit: commit)
    }

    private func account(type: MessageType, flags: MessageFlags, requestID: UInt64, payloadCount: Int, commit: Bool) throws {
        try stateLock.withLock { () throws in
            if type != .hello, opener.recordCount == 1 {
                throw ChannelViolation(.unexpectedMessage, "first record is \(type), not hello")
            }
            switch (role, type) {
            case (_, .hello):
                guard !helloReceived, opener.recordCount == 1 else {
                    throw ChannelViolation(.unexpectedMessage, "a second hello")
                }
                if commit { helloReceived = true }
            case (.responder, .request):
                guard inFlight[requestID] == nil else {
                    throw ChannelViolation(.unexpectedMessage, "request id \(requestID) is already in flight")
                }
                guard inFlight.count < limits.maxRequestsInFlight else {
                    throw ChannelViolation(.creditExceeded, "more than \(limits.maxRequestsInFlight) requests in flight")
                }
                guard payloadCount <= limits.maxBytesInFlight - bytesInFlight else {
                    throw ChannelViolation(.creditExceeded, "more than \(limits.maxBytesInFlight) request bytes in flight")
                }
                if commit {
                    inFlight[requestID] = payloadCount
                    bytesInFlight += payloadCount
                }
            case (.responder, .cancel):
                break
            case (.initiator, .response), (.initiator, .error):
                guard let bytes = inFlight[requestID] else {
                    throw ChannelViolation(.unexpectedMessage, "\(type) for request \(requestID), which is not in flight")
                }
                if commit {
                    inFlight[requestID] = nil
                    bytesInFlight -= bytes
                }
            case (_, .ping) where flags.contains(.reply):
                guard let sent = outstandingPings[requestID] else {
                    throw ChannelViolation(.unexpectedMessage, "a ping reply for id \(requestID), which no ping is waiting for")
                }
                guard sent == payloadCount else {
                    throw ChannelViolation(.malformed, "ping reply of \(payloadCount) bytes to a ping of \(sent)")
                }
                if commit { outstandingPings[requestID] = nil }
            case (_, .ping):
                break
            case (_, .shutdown):
                if commit { shutdownSeen = true }
            default:
                throw ChannelViolation(.unexpectedMessage, "a \(role == .initiator ? "launcher" : "worker") does not accept \(type)")
            }
        }
    }

    /// Opens a bulk transfer. In this order: the descriptor's fields, the
    /// inner message against the direction and credit rules (so a transfer
    /// for a request not in flight is refused untouched), the memfd that
    /// arrived with this very record (type, seals, exact size, no holes),
    /// then the chunks, decrypted one by one into the payload
    /// (``BulkDescriptor/open(_:requestID:suite:)``).
    private func receiveBulk(_ record: ChannelMessage, recordStart: Int, recordEnd: Int) throws -> ChannelMessage {
        var descriptor = try BulkDescriptor(decoding: record.payload, maxBulkLength: limits.maxBulkLength)
        defer { descriptor.key.wipe() }
        try account(type: descriptor.innerType, flags: [], requestID: record.requestID, payloadCount: descriptor.totalLength, commit: false)
        guard let memfd = inbox.takeDescriptor(recordStart: recordStart, recordEnd: recordEnd) else {
            throw ChannelViolation(.unexpectedFileDescriptors, "bulk record without a memfd")
        }
        defer { try? memfd.close() }
        // Checked on arrival; again here, next to the use.
        if let problem = Inbox.bulkMemfdProblem(memfd) { throw ChannelViolation(.unsealedMemfd, problem) }
        let status = try memfd.fileStatus()
        guard status.size == descriptor.sealedLength else {
            throw ChannelViolation(.malformed, "bulk memfd holds \(status.size) bytes, expected \(descriptor.sealedLength)")
        }
        // A hole would be allocated here, in the launcher's memory, by the
        // first touch of the mapping. The write seal forbids punching new
        // ones, so a file with none now has none while it is read.
        guard status.allocatedBytes >= status.size else {
            throw ChannelViolation(.malformed, "bulk memfd of \(status.size) bytes has holes (\(status.allocatedBytes) bytes allocated)")
        }
        let mapping = try FileMapping(memfd, count: status.size, writable: false)
        let payload = try withExtendedLifetime(mapping) {
            try descriptor.open(mapping.bytes, requestID: record.requestID, suite: suite)
        }
        let message = ChannelMessage(type: descriptor.innerType, requestID: record.requestID, payload: payload, viaBulk: true)
        try account(message, commit: true)
        return message
    }

    // MARK: Requests (launcher side)

    /// Sends `payload` as a request and waits for its response. Other
    /// messages that arrive meanwhile are kept for ``receive()``.
    ///
    /// With a `deadline`, the send and every read of the answer wait only
    /// until then: a peer that is late (silent, trickling, not reading) is a
    /// `timed-out` violation and the channel closes, whatever the peer does
    /// with its end of the socket. Without one, whoever bounds the request's
    /// time calls ``interrupt()`` from another thread when it runs out.
    public func request(_ payload: [UInt8], deadline: ContinuousClock.Instant? = nil) throws(ChannelError) -> [UInt8] {
        let id = makeRequestID()
        try sendRequest(payload, requestID: id, deadline: deadline)
        return try awaitResponse(to: id, deadline: deadline)
    }

    /// Waits for the response to request `id` (sent with
    /// ``sendRequest(_:requestID:deadline:)`` or
    /// ``sendRequestIfImmediate(_:requestID:)``), at most until `deadline`
    /// as ``request(_:deadline:)`` does. Pings that arrive meanwhile are
    /// answered (those replies bounded by the same deadline); other messages
    /// are kept for ``receive()``. Safe against a ``close()`` from another
    /// thread: the descriptor stays open until this returns.
    ///
    /// - Parameter inputReady: the caller has just seen the socket readable
    ///   (``waitForInput(until:)`` returned true): the first read does not
    ///   wait for it again. Only the thread that reads the channel may say so.
    public func awaitResponse(to id: UInt64, deadline: ContinuousClock.Instant?, inputReady: Bool = false) throws(ChannelError) -> [UInt8] {
        try usingSocket { () throws(ChannelError) -> [UInt8] in
            try receiving { () throws(ChannelError) -> [UInt8] in
                inbox.deadline = deadline
                inbox.deadlineWhat = "answer to the request"
                inbox.inputReady = inputReady
                defer {
                    inbox.deadline = nil
                    inbox.inputReady = false
                }
                while true {
                    guard let message = try receiveRecord() else { throw .closed }
                    if message.type == .ping, !message.flags.contains(.reply) {
                        try typed {
                            try message.payload.withUnsafeBytes { bytes in
                                try sendLock.withLock { () throws(ChannelError) in
                                    try sendLocked(type: .ping, flags: .reply, requestID: message.requestID, payload: bytes,
                                                   bulk: false, deadline: deadline)
                                }
                            }
                        }
                        continue
                    }
                    guard message.requestID == id, message.type == .response || message.type == .error else {
                        try keep(message)
                        continue
                    }
                    if message.type == .error { throw .remote(String(decoding: message.payload, as: UTF8.self)) }
                    return message.payload
                }
            }
        }
    }

    /// Waits until the peer has sent something (or ended the stream, or the
    /// channel closed) or `deadline` passes; false when the time ran out.
    /// Reads nothing. Safe against a ``close()`` from another thread, which
    /// ends the wait at once. True only when a read will not block (the
    /// socket is readable, or the channel is closed and a read fails at once).
    public func waitForInput(until deadline: ContinuousClock.Instant) -> Bool {
        (try? usingSocket { () throws(ChannelError) -> Bool in
            while true {
                let left = deadline - ContinuousClock.now
                guard left > .zero else { return false }
                do {
                    if try socket.waitReadable(timeoutMilliseconds: Int(left.inMilliseconds.rounded(.up))) { return true }
                } catch {
                    // poll(2) on one open descriptor fails only when the
                    // kernel is out of memory: wait a little and try again,
                    // without claiming anything is readable.
                    usleep(1000)
                }
            }
        }) ?? true
    }

    /// Runs `body` with the descriptor kept open: a ``close()`` meanwhile
    /// shuts the socket down (ending any wait in `body`) and closes the
    /// descriptor only when the last such `body` has returned, so its
    /// number is never reused under a thread still waiting on it.
    private func usingSocket<R>(_ body: () throws(ChannelError) -> R) throws(ChannelError) -> R {
        try stateLock.withLock { () throws(ChannelError) in
            guard !closed else { throw .closed }
            socketUsers += 1
        }
        defer {
            stateLock.withLock {
                socketUsers -= 1
                if socketUsers == 0, closeDeferred {
                    closeDeferred = false
                    try? socket.close()
                }
            }
        }
        return try body()
    }

    /// A fresh request id for ``send(type:flags:requestID:payload:)``.
    public func makeRequestID() -> UInt64 {
        stateLock.withLock {
            defer { nextRequestID += 1 }
            return nextRequestID
        }
    }

    /// Sends a ping and waits for its reply, at most `timeoutMilliseconds`
    /// (nil: for ever) for the send and the reply together. A peer that
    /// misses the deadline is a `timed-out` violation: the channel closes
    /// and the launcher kills the worker.
    public func ping(_ payload: [UInt8] = [], timeoutMilliseconds: Int? = 10_000) throws(ChannelError) {
        let id = makeRequestID()
        try stateLock.withLock { () throws(ChannelError) in
            guard outstandingPings.count < Self.maxOutstandingPings else {
                throw .noCredit("\(outstandingPings.count) pings are waiting for a reply (limit \(Self.maxOutstandingPings))")
            }
            outstandingPings[id] = payload.count
        }
        let deadline = timeoutMilliseconds.map { ContinuousClock.now + .milliseconds($0) }
        try withDeadline(deadline, what: "ping reply within \(timeoutMilliseconds ?? 0) ms") { () throws(ChannelError) in
            try send(type: .ping, requestID: id, payload: payload)
            try receiving { () throws(ChannelError) in
                while true {
                    guard let message = try receiveRecord() else { throw .closed }
                    if message.type == .ping, message.flags.contains(.reply), message.requestID == id {
                        guard message.payload == payload else {
                            throw fail(ChannelViolation(.malformed, "ping reply does not echo the payload"))
                        }
                        return
                    }
                    if message.type == .ping, !message.flags.contains(.reply) {
                        try send(type: .ping, flags: .reply, requestID: message.requestID, payload: message.payload)
                        continue
                    }
                    try keep(message)
                }
            }
        }
    }

    /// Orderly close from the launcher: sends shutdown, waits for the
    /// worker's reply and its end of stream, and closes. Waits at most
    /// `timeoutMilliseconds` (nil: for ever) in all; a worker that is
    /// later is a `timed-out` violation (the channel closes; kill it).
    public func shutdown(timeoutMilliseconds: Int? = 5_000) throws(ChannelError) {
        let deadline = timeoutMilliseconds.map { ContinuousClock.now + .milliseconds($0) }
        try withDeadline(deadline, what: "shutdown reply and end of stream within \(timeoutMilliseconds ?? 0) ms") { () throws(ChannelError) in
            try send(type: .shutdown, requestID: 0, payload: [])
            while let message = try receive() {
                if message.type == .shutdown { continue }
            }
        }
    }

    /// Sets or clears the receive deadline: for the fuzz target.
    func setReceiveDeadlineForFuzzing(_ deadline: ContinuousClock.Instant?) {
        receiveLock.withLock {
            inbox.deadline = deadline
            inbox.deadlineWhat = "fuzz input"
        }
    }

    /// Runs `body` with every send and receive of this channel bounded by
    /// `deadline` (nil: no bound).
    private func withDeadline(_ deadline: ContinuousClock.Instant?, what: String, _ body: () throws(ChannelError) -> Void) throws(ChannelError) {
        guard let deadline else { return try body() }
        sendLock.withLock { sendDeadline = deadline }
        receiveLock.withLock {
            inbox.deadline = deadline
            inbox.deadlineWhat = what
        }
        defer {
            sendLock.withLock { sendDeadline = nil }
            receiveLock.withLock { inbox.deadline = nil }
        }
        try body()
    }

    /// Answers a shutdown (worker side) and closes.
    public func acknowledgeShutdown() throws(ChannelError) {
        try send(type: .shutdown, flags: .reply, requestID: 0, payload: [])
        close()
    }

    /// Ends every wait on this channel now, from any thread: shuts the
    /// socket down in both directions (the descriptor stays open until
    /// ``close()``), so a thread blocked reading sees end of stream and one
    /// blocked writing fails, whatever the worker does with its end, even
    /// if a copy of that end is held by someone else. For watchdogs.
    public func interrupt() {
        stateLock.withLock {
            guard !closed else { return }
            try? socket.shutdownBoth()
        }
    }

    /// Closes the socket. Idempotent. While another thread waits in
    /// ``awaitResponse(to:deadline:)`` or ``waitForInput(until:)`` the
    /// socket is shut down now and closed when that wait returns.
    public func close() {
        stateLock.withLock {
            guard !closed else { return }
            closed = true
            if socketUsers > 0 {
                try? socket.shutdownBoth()
                closeDeferred = true
            } else {
                try? socket.close()
            }
        }
        // A reader that holds the lock drops it on its way out (receiving).
        _ = receiveLock.withLockIfAvailable { _ in inbox.dropDescriptor() }
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

/// A growable receive buffer: bytes in `[start, end)` are unread. It also
/// holds the one descriptor a bulk record may bring, and the deadline (if
/// any) for every read.
struct Inbox {
    private(set) var storage: UnsafeMutableRawBufferPointer
    private var start = 0
    private var end = 0
    /// The stream offset of `start`: every byte consumed so far, those read
    /// straight into a payload included.
    private(set) var consumedTotal = 0
    /// The descriptor received and not yet taken by its bulk record, with
    /// the stream offset of the last byte of the `recvmsg` that brought it.
    /// The kernel ends a read at the message that carries descriptors, so
    /// that byte belongs to the record the descriptor was sent with.
    private(set) var descriptor: (fd: FileDescriptor, anchor: Int)?
    /// False during the Noise handshake: any descriptor then is a violation.
    var acceptsDescriptors = false
    /// When set, every read waits only until then (a monotonic clock).
    var deadline: ContinuousClock.Instant?
    /// What the peer is late with, for the violation's reason.
    var deadlineWhat = ""
    /// The socket was just seen readable (data or its end is there, so a
    /// read cannot block): the next read does not poll first.
    var inputReady = false

    init(capacity: Int) { storage = PageBuffer.allocate(byteCount: capacity) }

    /// Frees the buffer and closes a pending descriptor.
    mutating func deallocate() {
        PageBuffer.deallocate(storage)
        dropDescriptor()
    }

    var readable: UnsafeRawBufferPointer { UnsafeRawBufferPointer(rebasing: storage[start..<end]) }

    /// The stream offset just past the last byte received.
    var receivedTotal: Int { consumedTotal + end - start }

    mutating func consume(_ n: Int) {
        start += n
        consumedTotal += n
        if start == end { start = 0; end = 0 }
    }

    /// Closes the pending descriptor, if any.
    mutating func dropDescriptor() {
        if let d = descriptor { try? d.fd.close() }
        descriptor = nil
    }

    /// A record occupies stream offsets `[start, end)` and has `type`: a
    /// descriptor that came with its bytes is a violation unless it is a
    /// bulk record, and so is one left over from an earlier record.
    mutating func checkDescriptor(recordStart: Int, recordEnd: Int, type: MessageType) throws(ChannelViolation) {
        guard let d = descriptor else { return }
        if d.anchor < recordStart || (d.anchor < recordEnd && type != .bulk) {
            dropDescriptor()
            throw ChannelViolation(.unexpectedFileDescriptors, "a descriptor arrived with a \(type) record")
        }
    }

    /// The descriptor that arrived with the bulk record at `[start, end)`, if one did.
    mutating func takeDescriptor(recordStart: Int, recordEnd: Int) -> FileDescriptor? {
        guard let d = descriptor, d.anchor >= recordStart, d.anchor < recordEnd else { return nil }
        descriptor = nil
        return d.fd
    }

    /// One `recvmsg` into `buffer`, with room for one descriptor, after
    /// waiting for data until the deadline. A descriptor is checked at once:
    /// during the handshake, beside another one, or in the same message as
    /// another one it is `unexpected-fds`; one that is not a sealed regular
    /// memfd is `unsealed-memfd`. Either way it is closed before the throw.
    private mutating func receive(into buffer: UnsafeMutableRawBufferPointer, from socket: FileDescriptor) throws -> Int {
        if let deadline, !inputReady { try Self.waitReadable(socket, until: deadline, what: deadlineWhat) }
        inputReady = false
        let received = try socket.receiveMessage(into: buffer, maxDescriptors: 1)
        let anchor = receivedTotal + received.byteCount - 1
        if received.descriptors.isEmpty && !received.controlTruncated { return received.byteCount }
        func refuse(_ kind: ChannelViolation.Kind, _ reason: String) -> ChannelViolation {
            for fd in received.descriptors { try? fd.close() }
            return ChannelViolation(kind, reason)
        }
        if received.controlTruncated || received.descriptors.count > 1 {
            throw refuse(.unexpectedFileDescriptors, "more than one descriptor in one message")
        }
        guard acceptsDescriptors else { throw refuse(.unexpectedFileDescriptors, "a descriptor during the handshake") }
        guard descriptor == nil else { throw refuse(.unexpectedFileDescriptors, "a second descriptor before the first was used") }
        guard received.byteCount > 0 else { throw refuse(.unexpectedFileDescriptors, "a descriptor with no bytes") }
        let fd = received.descriptors[0]
        if let problem = Self.bulkMemfdProblem(fd) { throw refuse(.unsealedMemfd, problem) }
        descriptor = (fd, anchor)
        return received.byteCount
    }

    /// Why `fd` is not what a bulk record claims (a regular file whose
    /// seals forbid writing, growing and shrinking), or nil when it is.
    static func bulkMemfdProblem(_ fd: FileDescriptor) -> String? {
        guard let status = try? fd.fileStatus() else { return "fstat of the descriptor failed" }
        guard status.isRegularFile else { return "the descriptor is not a regular file (mode \(String(status.mode, radix: 8)))" }
        let seals: FileSeals
        do { seals = try fd.seals() } catch { return "the descriptor is not a sealable memfd (\(error))" }
        guard seals.isSuperset(of: [.write, .shrink, .grow]) else { return "the memfd's seals are \(seals), need write,shrink,grow" }
        return nil
    }

    /// Waits until `socket` is readable or `deadline` passes (then the
    /// peer is late: `timed-out`).
    static func waitReadable(_ socket: FileDescriptor, until deadline: ContinuousClock.Instant, what: String) throws {
        while true {
            let left = deadline - ContinuousClock.now
            guard left > .zero else { throw ChannelViolation(.timedOut, "no \(what) before the deadline") }
            if try socket.waitReadable(timeoutMilliseconds: Int(left.inMilliseconds.rounded(.up))) { return }
        }
    }

    /// Reads straight into `buffer` (the inbox must be empty): for a large
    /// record's payload. Returns the byte count; 0 is end of stream.
    mutating func receiveDirect(into buffer: UnsafeMutableRawBufferPointer, from socket: FileDescriptor) throws -> Int {
        precondition(start == end, "direct reads only with an empty inbox")
        let n = try receive(into: buffer, from: socket)
        consumedTotal += n
        return n
    }

    /// Reads until at least `count` bytes are unread. Returns false on end
    /// of stream before any byte of the wanted unit; end of stream after
    /// some is a violation.
    mutating func fillOrEOF(_ count: Int, from socket: FileDescriptor, during what: String) throws -> Bool {
        while end - start < count {
            if storage.count - start < count {
                if storage.count < count {
                    // `count` was checked against the limits by the caller.
                    let grown = PageBuffer.allocate(byteCount: max(count, storage.count * 2))
                    grown.copyMemory(from: UnsafeRawBufferPointer(rebasing: storage[start..<end]))
                    PageBuffer.deallocate(storage)
                    storage = grown
                } else {
                    storage.baseAddress!.copyMemory(from: storage.baseAddress! + start, byteCount: end - start)
                }
                end -= start
                start = 0
            }
            let n = try receive(into: UnsafeMutableRawBufferPointer(rebasing: storage[end...]), from: socket)
            if n == 0 {
                if end - start == 0 { return false }
                throw ChannelViolation(.truncated, "stream ended \(end - start) bytes into \(what) of \(count)")
            }
            end += n
        }
        return true
    }

    mutating func fill(_ count: Int, from socket: FileDescriptor, during what: String) throws {
        guard try fillOrEOF(count, from: socket, during: what) else {
            throw ChannelViolation(.truncated, "stream ended before \(what)")
        }
    }
}

/// The channel's three locks guard fields of the channel itself, not a
/// value of their own: this runs `body` holding one.
extension Mutex where Value == Void {
    fileprivate borrowing func withLock<R: Sendable, E: Error>(_ body: () throws(E) -> R) throws(E) -> R {
        try withLock { (_: inout Void) throws(E) -> R in try body() }
    }
}
