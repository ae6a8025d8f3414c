// The client API: HTTP/1.1 on a unix socket (docs/openapi.yaml).
//
// Every connection's peer credentials are read once when it is accepted
// (SO_PEERCRED); every request must carry `Authorization: Bearer <token>`
// of a configured client whose uid matches the peer's. Roles are per tenant.
import NIOCore
import NIOPosix
import NIOHTTP1
import Logging
import Synchronization
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// The peer of an accepted unix socket connection; laid out as the
/// kernel's `struct ucred`, which SO_PEERCRED fills.
struct PeerCredentials: Sendable {
    var pid: Int32
    var uid: UInt32
    var gid: UInt32
}

/// An answer: status, content type and body.
struct APIResponse: Sendable {
    var status: HTTPResponseStatus
    var contentType: String
    var body: [UInt8]
    var headers: [(String, String)] = []
    /// The stable word for what the answer was (`ok` or the error code),
    /// as counted in the metrics.
    var code = "ok"

    static func json(_ status: HTTPResponseStatus, _ value: some Encodable) -> APIResponse {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        let data = (try? encoder.encode(value)) ?? Data("{}".utf8)
        return APIResponse(status: status, contentType: "application/json", body: Array(data) + [0x0A])
    }

    static func error(_ status: HTTPResponseStatus, _ code: String, _ message: String) -> APIResponse {
        var r = json(status, ["error": code, "message": message])
        r.code = code
        if status == .unauthorized { r.headers.append(("WWW-Authenticate", "Bearer realm=\"stockaded\"")) }
        return r
    }
}

/// One HTTP request as the router sees it.
struct APIRequest: Sendable {
    var method: HTTPMethod
    var path: String
    var authorization: String?
    var body: [UInt8]
    var peer: PeerCredentials?
    /// The client the connection already found behind this request's
    /// token (when its head was read); nil: the router checks the token.
    var client: ClientConfig?
}

/// The open connections: counted in all and per peer uid, with those that
/// have not yet presented a valid token kept in accept order, so that at
/// the limit they are answered and closed first.
final class ConnectionTable: Sendable {
    let limits: ConnectionLimits
    private let state = Mutex<State>(State())

    private struct State {
        var nextID = 1
        var open: [Int: Entry] = [:]
        var perUid: [UInt32: Int] = [:]
        /// Ids of connections without a valid token yet, oldest first.
        var unauthenticated: [Int] = []
    }

    struct Entry: Sendable {
        var uid: UInt32
        var evict: @Sendable () -> Void
    }

    enum Admission {
        case admitted(id: Int)
        case refused(String)
    }

    init(limits: ConnectionLimits) { self.limits = limits }

    var count: Int { state.withLock { $0.open.count } }

    /// Admits a connection from `uid`, evicting the oldest connection
    /// without a valid token (of that uid first, when the uid is at its
    /// own limit) to make room; refuses it when there is none.
    func admit(uid: UInt32, evict: @escaping @Sendable () -> Void) -> Admission {
        var victims: [@Sendable () -> Void] = []
        let result: Admission = state.withLock { s in
            func evictOldest(where match: (Entry) -> Bool) -> Bool {
                guard let i = s.unauthenticated.firstIndex(where: { s.open[$0].map(match) ?? false }) else { return false }
                let id = s.unauthenticated.remove(at: i)
                if let e = s.open.removeValue(forKey: id) {
                    s.perUid[e.uid, default: 1] -= 1
                    victims.append(e.evict)
                }
                return true
            }
            if s.perUid[uid, default: 0] >= limits.perUid, !evictOldest(where: { $0.uid == uid }) {
                return .refused("uid \(uid) has \(limits.perUid) connections open (max_connections_per_uid)")
            }
            if s.open.count >= limits.total, !evictOldest(where: { _ in true }) {
                return .refused("the daemon has \(limits.total) connections open (max_connections), all of them authenticated")
            }
            let id = s.nextID
            s.nextID += 1
            s.open[id] = Entry(uid: uid, evict: evict)
            s.perUid[uid, default: 0] += 1
            s.unauthenticated.append(id)
            return .admitted(id: id)
        }
        for v in victims { v() }
        return result
    }

    /// The connection presented a valid token: it is no longer evicted first.
    func authenticated(_ id: Int) {
        state.withLock { s in s.unauthenticated.removeAll { $0 == id } }
    }

    func remove(_ id: Int) {
        state.withLock { s in
            guard let e = s.open.removeValue(forKey: id) else { return }
            s.perUid[e.uid, default: 1] -= 1
            if s.perUid[e.uid] == 0 { s.perUid[e.uid] = nil }
            s.unauthenticated.removeAll { $0 == id }
        }
    }
}

/// The handler of an admitted connection, for its eviction (set on the
/// connection's event loop, read there).
final class EvictBox: @unchecked Sendable {
    weak var api: APIHandler?
}

/// First in the pipeline: tells the API handler that bytes arrived, so
/// that the header timeout runs from a request's first byte.
/// It also writes the answers given before a request was read to its end
/// (timeouts, refusals): whole HTTP responses written below the HTTP
/// handlers, followed by a close, so no HTTP state machine sees them.
final class ByteWatch: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    weak var api: APIHandler?
    private var context: ChannelHandlerContext?

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }
    func handlerRemoved(context: ChannelHandlerContext) { self.context = nil }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        api?.bytesArrived()
        context.fireChannelRead(data)
    }

    /// Writes `response` and closes; `done(true)` once it was written.
    func answerAndClose(_ response: APIResponse, done: @escaping @Sendable (Bool) -> Void) {
        guard let context else { return done(false) }
        let buffer = rawHTTP(response, allocator: context.channel.allocator)
        let channel = context.channel
        context.writeAndFlush(NIOAny(buffer)).whenComplete { result in
            if case .success = result { done(true) } else { done(false) }
            channel.close(promise: nil)
        }
    }
}

/// A whole HTTP/1.1 response with `Connection: close`, as bytes.
func rawHTTP(_ response: APIResponse, allocator: ByteBufferAllocator) -> ByteBuffer {
    var text = "HTTP/1.1 \(response.status.code) \(response.status.reasonPhrase)\r\nContent-Type: \(response.contentType)\r\n"
    text += "Content-Length: \(response.body.count)\r\n"
    for (k, v) in response.headers { text += "\(k): \(v)\r\n" }
    text += "Connection: close\r\n\r\n"
    var buffer = allocator.buffer(capacity: text.utf8.count + response.body.count)
    buffer.writeString(text)
    buffer.writeBytes(response.body)
    return buffer
}

final class APIHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let daemon: Daemon
    private let peer: PeerCredentials?
    private let table: ConnectionTable
    private let connection: Int
    private var context: ChannelHandlerContext?
    private var head: HTTPRequestHead?
    /// The client whose token the current request's head carried.
    private var client: ClientConfig?
    /// The Authorization header this connection presented last and whose
    /// token was valid for its peer (fixed for the connection's life): a
    /// request that presents it again is not hashed and looked up again.
    private var knownToken: (authorization: String, client: ClientConfig)?
    private var body: ByteBuffer?
    private var deadline: Scheduled<Void>?

    /// Where the connection is: waiting for a request (idle), reading a
    /// head or a body (each under its timeout), waiting for the answer
    /// (busy), or answered for the last time (closing).
    private enum Phase { case idle, head, body, busy, closing }
    private var phase = Phase.idle
    /// A request completed here already (the first wait is a header wait).
    private var served = false
    private var inputClosed = false

    private let watch: ByteWatch?

    init(daemon: Daemon, peer: PeerCredentials?, table: ConnectionTable, connection: Int, watch: ByteWatch?) {
        self.watch = watch
        self.daemon = daemon
        self.peer = peer
        self.table = table
        self.connection = connection
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        // A connection that sends nothing holds an fd: the header timeout
        // runs from the accept.
        arm(daemon.config.connections.headerTimeout, phase: .idle)
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        deadline?.cancel()
        deadline = nil
        armed = nil
        self.context = nil
    }

    func channelInactive(context: ChannelHandlerContext) {
        deadline?.cancel()
        deadline = nil
        armed = nil
        table.remove(connection)
        phase = .closing
        context.fireChannelInactive()
    }

    /// The connection table made room for another connection by evicting
    /// this one (it has presented no valid token).
    func evict() {
        guard let context else { return }
        answerEarly(context, .serviceUnavailable, "too-many-connections",
                    "evicted: the daemon is at its connection limit and this connection had presented no valid token")
    }

    /// Raw bytes arrived (from ``ByteWatch``): a new request's header clock starts.
    func bytesArrived() {
        guard phase == .idle else { return }
        phase = .head
        arm(daemon.config.connections.headerTimeout, phase: .head)
    }

    /// The phase whose timeout runs, and when it runs out. One task is
    /// scheduled at a time, never later than that: a phase whose timeout
    /// ends later than the task only moves `armed`, and the task, when it
    /// runs early, schedules itself again for the rest (a request's three
    /// phases cost no timer of their own).
    private var armed: (phase: Phase, at: NIODeadline)?
    private var deadlineAt: NIODeadline?

    private func arm(_ timeout: Duration, phase: Phase) {
        guard let context else { return }
        let at = NIODeadline.now() + .nanoseconds(Int64(timeout.components.seconds) * 1_000_000_000
            + timeout.components.attoseconds / 1_000_000_000)
        armed = (phase, at)
        if let scheduled = deadlineAt, deadline != nil, scheduled <= at { return }
        schedule(at: at, on: context.eventLoop)
    }

    private func schedule(at: NIODeadline, on loop: any EventLoop) {
        deadline?.cancel()
        let bound = NIOLoopBound(self, eventLoop: loop)
        deadlineAt = at
        deadline = loop.scheduleTask(deadline: at) {
            bound.value.timerFired()
        }
    }

    private func timerFired() {
        deadline = nil
        deadlineAt = nil
        guard let (phase, at) = armed, let context else { return }
        if NIODeadline.now() < at {
            schedule(at: at, on: context.eventLoop)
            return
        }
        armed = nil
        expired(phase)
    }

    /// No timeout runs (the task, if scheduled, finds nothing armed).
    private func disarm() {
        armed = nil
    }

    /// Whether `a` and `b` hold the same bytes; when their lengths match,
    /// every byte is compared whatever differs first.
    static func sameBytes(_ a: String, _ b: String) -> Bool {
        var a = a, b = b
        return a.withUTF8 { x in
            b.withUTF8 { y in
                guard x.count == y.count else { return false }
                var diff: UInt8 = 0
                for i in 0..<x.count { diff |= x[i] ^ y[i] }
                return diff == 0
            }
        }
    }

    /// A timeout ran out in `armedIn`: a request part-way is answered 408;
    /// an idle connection is closed without a word.
    private func expired(_ armedIn: Phase) {
        guard let context, phase == armedIn || (armedIn == .idle && phase == .head) else { return }
        switch phase {
        case .idle where served:
            phase = .closing
            context.close(promise: nil)
        case .idle, .head:
            answerEarly(context, .requestTimeout, "timeout", "no complete request head within \(daemon.config.connections.headerTimeout)")
        case .body:
            answerEarly(context, .requestTimeout, "timeout", "the request body did not arrive within \(daemon.config.connections.bodyTimeout)")
        case .busy, .closing:
            break
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard phase != .closing, phase != .busy else { return }
        switch unwrapInboundIn(data) {
        case .head(let h):
            head = h
            client = nil
            body = nil
            phase = .body
            arm(daemon.config.connections.bodyTimeout, phase: .body)
            // Refused before a byte of the body is read: no token, or a
            // body larger than the limit.
            let authorization = h.headers.first(name: "authorization")
            if let known = knownToken, let authorization, Self.sameBytes(known.authorization, authorization) {
                client = known.client
            } else {
                switch daemon.authenticate(authorization: authorization, peer: peer) {
                case .failure(let denial):
                    answerEarly(context, denial.response, reason: denial.why, head: h, denied: true)
                    return
                case .success(let c):
                    client = c
                    if let authorization { knownToken = (authorization, c) }
                    table.authenticated(connection)
                }
            }
            let limit = daemon.config.maxRequestBytes
            let lengths = h.headers["content-length"]
            if lengths.count > 1 || (lengths.first.map { Int($0) == nil || Int($0)! < 0 } ?? false) {
                answerEarly(context, .badRequest, "bad-request", "Content-Length must be given once, as a number", head: h)
                return
            }
            if let length = lengths.first.flatMap(Int.init), length > limit {
                answerEarly(context, .payloadTooLarge, "too-large", "the request body of \(length) bytes exceeds \(limit) bytes (max_request_bytes)", head: h)
                return
            }
            if let expect = h.headers.first(name: "expect") {
                guard expect.lowercased() == "100-continue" else {
                    answerEarly(context, .expectationFailed, "expectation-failed", "only Expect: 100-continue is understood", head: h)
                    return
                }
                let interim = HTTPResponseHead(version: h.version, status: .continue)
                context.writeAndFlush(wrapOutboundOut(.head(interim)), promise: nil)
            }
        case .body(var chunk):
            guard let h = head else { return }
            if body == nil {
                body = chunk
            } else {
                body!.writeBuffer(&chunk)
            }
            if body!.readableBytes > daemon.config.maxRequestBytes {
                body = nil
                answerEarly(context, .payloadTooLarge, "too-large", "the request body exceeds \(daemon.config.maxRequestBytes) bytes (max_request_bytes)", head: h)
            }
        case .end:
            guard let head else { return }
            self.head = nil
            disarm()
            phase = .busy
            let bytes = body.map { Array($0.readableBytesView) } ?? []
            body = nil
            let request = APIRequest(method: head.method, path: head.uri, authorization: head.headers.first(name: "authorization"),
                                     body: bytes, peer: peer, client: client)
            client = nil
            let loop = context.eventLoop
            let bound = NIOLoopBound((self, context), eventLoop: loop)
            daemon.handle(request) { response, event in
                loop.execute {
                    let (handler, context) = bound.value
                    handler.answer(context: context, head: head, response, event: event, keepAlive: head.isKeepAlive)
                }
            }
        }
    }

    /// Answers now (before the request has been read to its end, or after
    /// a timeout) and closes the connection; audited and counted.
    private func answerEarly(_ context: ChannelHandlerContext, _ status: HTTPResponseStatus, _ code: String, _ message: String,
                             head: HTTPRequestHead? = nil) {
        answerEarly(context, .error(status, code, message), reason: message, head: head, denied: false)
    }

    private func answerEarly(_ context: ChannelHandlerContext, _ response: APIResponse, reason: String, head: HTTPRequestHead?, denied: Bool) {
        guard phase != .closing, phase != .busy else { return }
        phase = .closing
        disarm()
        self.head = nil
        body = nil
        let event = daemon.earlyEvent(method: head?.method, uri: head?.uri, peer: peer, response: response, reason: reason, denied: denied)
        let sent = daemon.recordAnswer(event, response, delivered: nil)
        let daemon = self.daemon
        guard let watch else {
            context.close(promise: nil)
            return
        }
        watch.answerAndClose(sent) { delivered in
            if !delivered { daemon.recordAnswer(event, sent, delivered: false) }
        }
    }

    /// Audits the answer (refusing to serve what cannot be audited when the
    /// configuration says so), writes it, and records it if the client
    /// was gone before it could be written.
    private func answer(context: ChannelHandlerContext, head: HTTPRequestHead, _ response: APIResponse, event: AuditEvent, keepAlive: Bool) {
        guard phase != .closing else {
            daemon.recordAnswer(event, response, delivered: false)
            return
        }
        disarm()
        let keepAlive = keepAlive && !inputClosed
        phase = keepAlive ? .idle : .closing
        let response = daemon.recordAnswer(event, response, delivered: nil)
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: response.contentType)
        headers.add(name: "Content-Length", value: String(response.body.count))
        for (k, v) in response.headers { headers.add(name: k, value: v) }
        headers.replaceOrAdd(name: "Connection", value: keepAlive ? "keep-alive" : "close")
        let out = HTTPResponseHead(version: head.version, status: response.status, headers: headers)
        context.write(wrapOutboundOut(.head(out)), promise: nil)
        let channel = context.channel
        let done: EventLoopFuture<Void>
        if response.body.count <= Self.bodySlice {
            var buffer = channel.allocator.buffer(capacity: response.body.count)
            buffer.writeBytes(response.body)
            context.write(wrapOutboundOut(.body(.byteBuffer(buffer))), promise: nil)
            done = context.writeAndFlush(wrapOutboundOut(.end(nil)))
        } else {
            done = Self.writeBody(response.body, from: 0, on: channel).flatMap {
                channel.writeAndFlush(HTTPServerResponsePart.end(nil))
            }
        }
        let daemon = self.daemon
        done.whenComplete { result in
            if case .failure = result { daemon.recordAnswer(event, response, delivered: false) }
            if !keepAlive { channel.close(promise: nil) }
        }
        if keepAlive {
            served = true
            arm(daemon.config.connections.idleTimeout, phase: .idle)
        }
    }

    /// The most of an answer's body copied into one HTTP buffer: a large
    /// answer goes out a slice at a time, the next copied once the last
    /// is written, so the daemon holds the answer once (not twice) however
    /// slowly the client reads.
    static let bodySlice = 1 << 20

    /// Writes `body[offset...]` to `channel` one ``bodySlice`` at a time.
    private static func writeBody(_ body: [UInt8], from offset: Int, on channel: any Channel) -> EventLoopFuture<Void> {
        let end = min(body.count, offset + bodySlice)
        var buffer = channel.allocator.buffer(capacity: end - offset)
        buffer.writeBytes(body[offset..<end])
        let written = channel.writeAndFlush(HTTPServerResponsePart.body(.byteBuffer(buffer)))
        guard end < body.count else { return written }
        return written.flatMap { writeBody(body, from: end, on: channel) }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case ChannelEvent.inputClosed = event {
            // A client may half-close after its request: it still gets its
            // answer, then the connection closes.
            inputClosed = true
            switch phase {
            case .busy, .closing: break
            case .head, .body:
                answerEarly(context, .badRequest, "bad-request", "the client closed its side before the request was complete", head: head)
            case .idle:
                phase = .closing
                context.close(promise: nil)
            }
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if error is HTTPParserError {
            answerEarly(context, .badRequest, "bad-request", "malformed HTTP request: \(error)", head: head)
            return
        }
        if phase == .busy { phase = .closing }
        context.close(promise: nil)
    }
}

/// The listening socket and its event loops.
final class APIServer: Sendable {
    let group: MultiThreadedEventLoopGroup
    let channel: any Channel
    let connections: ConnectionTable

    init(daemon: Daemon, path: String, mode: UInt32) throws {
        let limits = try Self.fitToDescriptorLimit(daemon.config.connections, logger: daemon.logger)
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        let table = ConnectionTable(limits: limits)
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 256)
            .childChannelInitializer { channel in
                Self.peerCredentials(channel).flatMap { peer in
                    channel.eventLoop.makeCompletedFuture {
                        try Self.admit(channel, peer: peer, daemon: daemon, table: table)
                    }
                }
            }
            .childChannelOption(.allowRemoteHalfClosure, value: true)
        connections = table
        let inherited: SystemdSocket.Inherited?
        do { inherited = try SystemdSocket.inherited.get() } catch {
            try? group.syncShutdownGracefully()
            throw error
        }
        if let inherited {
            // Socket activation: the unit's path, mode and group.
            channel = try Self.listen(on: inherited, bootstrap: bootstrap, group: group, daemon: daemon, configured: path)
            self.group = group
            return
        }
        do {
            try InstanceLock.clearStaleSocket(path)
            channel = try bootstrap.bind(unixDomainSocketPath: path, cleanupExistingSocketFile: false).wait()
        } catch {
            try? group.syncShutdownGracefully()
            throw DaemonError("cannot listen on \(path): \(error)")
        }
        guard chmod(path, mode_t(mode)) == 0 else {
            let why = String(cString: strerror(errno))
            try? channel.close().wait()
            try? group.syncShutdownGracefully()
            throw DaemonError("chmod \(path): \(why)")
        }
        self.group = group
    }

    /// Raises the soft fd limit to the hard one, then bounds connections so
    /// that the fds open now, `fd_reserve` more (worker launches, the audit
    /// log, cgroups) and every allowed connection fit under it: a flood of
    /// connections can never take the fds a worker launch needs.
    static func fitToDescriptorLimit(_ asked: ConnectionLimits, logger: Logger) throws -> ConnectionLimits {
        var rl = rlimit()
        getrlimit(Int32(RLIMIT_NOFILE.rawValue), &rl)
        if rl.rlim_cur < rl.rlim_max {
            var raised = rl
            raised.rlim_cur = rl.rlim_max
            if setrlimit(Int32(RLIMIT_NOFILE.rawValue), &raised) == 0 { rl = raised }
        }
        let open = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd").count) ?? 64
        let room = Int(clamping: rl.rlim_cur) - open - asked.fdReserve
        guard room >= 1 else {
            throw DaemonError("the fd limit (\(rl.rlim_cur)) leaves no room for connections after the \(open) fds open and fd_reserve = \(asked.fdReserve); "
                + "raise the limit (LimitNOFILE=) or lower fd_reserve")
        }
        var limits = asked
        if limits.total > room {
            logger.warning("max_connections lowered to fit the fd limit",
                           metadata: ["max_connections": "\(asked.total)", "allowed": "\(room)", "fd_limit": "\(rl.rlim_cur)", "fd_reserve": "\(asked.fdReserve)"])
            limits.total = room
            limits.perUid = min(limits.perUid, room)
        }
        return limits
    }

    /// Counts the connection in, or answers 503 and closes it; an evicted
    /// connection (no valid token yet) is answered 503 and closed.
    private static func admit(_ channel: any Channel, peer: PeerCredentials?, daemon: Daemon, table: ConnectionTable) throws {
        let sync = channel.pipeline.syncOperations
        let uid = peer?.uid ?? UInt32.max
        let loop = channel.eventLoop
        let box = EvictBox()
        let admission = table.admit(uid: uid) {
            loop.execute { box.api?.evict() }
        }
        switch admission {
        case .refused(let why):
            refuse(channel, daemon: daemon, peer: peer, why: why)
        case .admitted(let id):
            let watch = ByteWatch()
            try sync.addHandler(watch)
            // Outbound headers are the daemon's own (fixed names, worker
            // ids it made, numbers): no per-answer validation pass.
            try sync.configureHTTPServerPipeline(withErrorHandling: false, withOutboundHeaderValidation: false)
            let api = APIHandler(daemon: daemon, peer: peer, table: table, connection: id, watch: watch)
            watch.api = api
            box.api = api
            try sync.addHandler(api)
        }
    }

    /// Writes a 503 on the raw connection and closes it (audited and counted).
    private static func refuse(_ channel: any Channel, daemon: Daemon, peer: PeerCredentials?, why: String) {
        var response = APIResponse.error(.serviceUnavailable, "too-many-connections", why)
        response.headers.append(("Retry-After", "1"))
        let event = daemon.earlyEvent(method: nil, uri: nil, peer: peer, response: response, reason: why, denied: true)
        let sent = daemon.recordAnswer(event, response, delivered: nil)
        channel.writeAndFlush(rawHTTP(sent, allocator: channel.allocator)).whenComplete { _ in channel.close(promise: nil) }
    }

    /// SO_PEERCRED of an accepted connection (nil when it cannot be read:
    /// such a client is refused).
    static func peerCredentials(_ channel: any Channel) -> EventLoopFuture<PeerCredentials?> {
        guard let provider = channel as? any SocketOptionProvider else {
            return channel.eventLoop.makeSucceededFuture(nil)
        }
        let future: EventLoopFuture<PeerCredentials> = provider.unsafeGetSocketOption(level: .socket, name: NIOBSDSocket.Option(rawValue: SO_PEERCRED))
        return future.map { Optional($0) }.recover { _ in nil }
    }

    func close() {
        try? channel.close().wait()
        try? group.syncShutdownGracefully()
    }
}
