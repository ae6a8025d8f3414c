// The client API: HTTP/1.1 on a unix socket (docs/openapi.yaml).
//
// Every connection's peer credentials are read once when it is accepted
// (SO_PEERCRED); every request must carry `Authorization: Bearer <token>`
// of a configured client whose uid matches the peer's. Roles are per tenant.
import NIOCore
import NIOPosix
import NIOHTTP1
import Logging
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
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

    static func json(_ status: HTTPResponseStatus, _ value: some Encodable) -> APIResponse {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        let data = (try? encoder.encode(value)) ?? Data("{}".utf8)
        return APIResponse(status: status, contentType: "application/json", body: Array(data) + [0x0A])
    }

    static func error(_ status: HTTPResponseStatus, _ code: String, _ message: String) -> APIResponse {
        var r = json(status, ["error": code, "message": message])
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
}

final class APIHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let daemon: Daemon
    private let peer: PeerCredentials?
    private var head: HTTPRequestHead?
    private var body: ByteBuffer?
    private var tooLarge = false

    init(daemon: Daemon, peer: PeerCredentials?) {
        self.daemon = daemon
        self.peer = peer
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let h):
            head = h
            body = nil
            tooLarge = false
            if let length = h.headers.first(name: "content-length").flatMap(Int.init), length > daemon.config.maxRequestBytes {
                tooLarge = true
            }
        case .body(var chunk):
            guard !tooLarge else { return }
            if body == nil {
                body = chunk
            } else {
                body!.writeBuffer(&chunk)
            }
            if body!.readableBytes > daemon.config.maxRequestBytes {
                tooLarge = true
                body = nil
            }
        case .end:
            guard let head else { return }
            self.head = nil
            let keepAlive = head.isKeepAlive
            if tooLarge {
                write(context: context, head: head,
                      .error(.payloadTooLarge, "too-large", "the request body exceeds \(daemon.config.maxRequestBytes) bytes"), keepAlive: false)
                return
            }
            let bytes = body.map { Array($0.readableBytesView) } ?? []
            body = nil
            let request = APIRequest(method: head.method, path: head.uri, authorization: head.headers.first(name: "authorization"),
                                     body: bytes, peer: peer)
            let loop = context.eventLoop
            let bound = NIOLoopBound((self, context), eventLoop: loop)
            daemon.handle(request) { response in
                loop.execute {
                    let (handler, context) = bound.value
                    handler.write(context: context, head: head, response, keepAlive: keepAlive)
                }
            }
        }
    }

    private func write(context: ChannelHandlerContext, head: HTTPRequestHead, _ response: APIResponse, keepAlive: Bool) {
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: response.contentType)
        headers.add(name: "Content-Length", value: String(response.body.count))
        for (k, v) in response.headers { headers.add(name: k, value: v) }
        if !keepAlive { headers.add(name: "Connection", value: "close") }
        var out = HTTPResponseHead(version: head.version, status: response.status, headers: headers)
        out.headers.replaceOrAdd(name: "Connection", value: keepAlive ? "keep-alive" : "close")
        context.write(wrapOutboundOut(.head(out)), promise: nil)
        var buffer = context.channel.allocator.buffer(capacity: response.body.count)
        buffer.writeBytes(response.body)
        context.write(wrapOutboundOut(.body(.byteBuffer(buffer))), promise: nil)
        let done = context.writeAndFlush(wrapOutboundOut(.end(nil)))
        if !keepAlive {
            let channel = context.channel
            done.whenComplete { _ in channel.close(promise: nil) }
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}

/// The listening socket and its event loops.
final class APIServer: Sendable {
    let group: MultiThreadedEventLoopGroup
    let channel: any Channel

    init(daemon: Daemon, path: String, mode: UInt32) throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 256)
            .childChannelInitializer { channel in
                Self.peerCredentials(channel).flatMap { peer in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: true)
                        try channel.pipeline.syncOperations.addHandler(APIHandler(daemon: daemon, peer: peer))
                    }
                }
            }
            .childChannelOption(.allowRemoteHalfClosure, value: false)
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
            channel = try bootstrap.bind(unixDomainSocketPath: path, cleanupExistingSocketFile: true).wait()
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
