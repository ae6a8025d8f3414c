// stockaded: tenants and their warm pools, the API, the audit log and the
// metrics, started and stopped as one service.
package import StockadeCgroups
package import Logging
import ServiceLifecycle
import NIOCore
import NIOHTTP1
import Synchronization
import Dispatch
import Foundation
#if canImport(Glibc)
import Glibc
#endif

package final class Daemon: Service, @unchecked Sendable {
    package let config: DaemonConfig
    package let audit: AuditLog
    package let metrics = DaemonMetrics()
    package let cgroups: CgroupManager?
    let logger: Logger
    private let pools: [String: TenantPool]
    private let tenantOrder: [String]
    private let clientDigests: [(TokenDigest, ClientConfig)]
    private let devNull: Int32
    private let lifecycle = Mutex<Lifecycle>(.created)
    private let serverBox = Mutex<APIServer?>(nil)
    /// Jails built ahead for `stockade run --via` (`[via]`), when configured.
    package let jailPools: JailPools?
    /// Held from init to the end of stop(): no second daemon on this socket.
    private let instanceLock = Mutex<InstanceLock?>(nil)

    private enum Lifecycle { case created, running, stopping, stopped }

    /// Opens the audit log and the cgroup manager (which removes jails left
    /// behind by a daemon that died); nothing is launched until ``start()``.
    package init(config: DaemonConfig, logger: Logger = Logger(label: "stockaded")) throws {
        self.config = config
        self.logger = logger
        // First, before anything is swept, opened or bound: a second daemon
        // on the same socket stops here and names the first one's pid.
        let lock = try InstanceLock(socket: config.socketPath)
        instanceLock.withLock { $0 = lock }
        audit = try AuditLog(path: config.auditLogPath, logger: logger)
        audit.onFailure.withLock { [metrics] in $0 = { metrics.auditWriteFailures().increment() } }
        if config.cgroups {
            let budgets = config.tenants.map(\.budget)
            do {
                cgroups = try CgroupManager(configuration: .init(base: .automatic(name: config.cgroupBase), tenants: budgets, sweepStale: true))
            } catch {
                throw DaemonError("cgroups: \(error)\n(set cgroups = false in [daemon] to run without tenant budgets)")
            }
        } else {
            cgroups = nil
        }
        devNull = open("/dev/null", O_RDWR | O_CLOEXEC)
        guard devNull >= 0 else { throw DaemonError("cannot open /dev/null") }
        var pools: [String: TenantPool] = [:]
        let models = ModelStore()
        for var t in config.tenants {
            t.launcherFiles.append(config.file)
            pools[t.name] = TenantPool(config: t, cgroups: cgroups, audit: audit, metrics: metrics, logger: logger, devNull: devNull,
                                       modelStore: models, maxRequestBytes: config.maxRequestBytes)
        }
        self.pools = pools
        let (manager, null) = (cgroups, devNull)
        jailPools = try config.via.map {
            try JailPools(config: $0, cgroups: manager, logger: logger, devNull: null, launcherFiles: [config.file])
        }
        tenantOrder = config.tenants.map(\.name)
        clientDigests = config.clients.map { (TokenDigest($0.token), $0) }
    }

    deinit { close(devNull) }

    /// The cgroups of dead launchers removed when this daemon started.
    package var swept: [String] { cgroups?.swept ?? [] }

    /// Listens on the API socket and launches every tenant's minimum of workers.
    package func start() throws {
        try lifecycle.withLock { (s: inout Lifecycle) throws in
            guard s == .created else { throw DaemonError("the daemon was already started") }
            s = .running
        }
        var event = AuditEvent(.daemonStart)
        event.pid = getpid()
        event.reason = swept.isEmpty ? "no stale jails" : "removed \(swept.count) stale jail cgroups: \(swept.joined(separator: ", "))"
        audit.record(event)
        if let cgroups {
            logger.info("cgroups", metadata: ["backend": "v\(cgroups.version)", "base": "\(cgroups.baseDescription)"])
            for t in tenantOrder { _ = try cgroups.prepareTenant(t) }
        }
        let server = try APIServer(daemon: self, path: config.socketPath, mode: config.socketMode)
        serverBox.withLock { $0 = server }
        logger.info("listening", metadata: ["socket": "\(config.socketPath)"])
        for t in tenantOrder { pools[t]!.start() }
        try jailPools?.start()
    }

    /// Stops taking requests, lets the ones in flight finish (up to the
    /// drain timeout), kills what is left, and removes every jail, cgroup
    /// and the socket. Blocks until all of it is done.
    package func stop() {
        let go = lifecycle.withLock { s -> Bool in
            guard s == .running else { return false }
            s = .stopping
            return true
        }
        guard go else { return }
        logger.info("stopping: draining tenants")
        let group = DispatchGroup()
        for t in tenantOrder {
            let pool = pools[t]!
            group.enter()
            Thread.detachNewThread { [config] in
                pool.stop(timeout: config.drainTimeout)
                group.leave()
            }
        }
        group.wait()
        jailPools?.stop()
        serverBox.withLock { $0 }?.close()
        serverBox.withLock { $0 = nil }
        // Still ours: the instance lock is held until the line below it
        // (a socket systemd passed stays: its .socket unit owns the path).
        SystemdSocket.unlinkUnlessInherited(config.socketPath)
        if let cgroups {
            // Everything under the base is this daemon's (one daemon per base,
            // held by the instance lock): what an earlier run left goes too.
            do { try cgroups.closeRemovingBase() } catch { logger.warning("cgroup clean-up", metadata: ["error": "\(error)"]) }
        }
        audit.record(AuditEvent(.daemonStop, reason: "stopped cleanly"))
        lifecycle.withLock { $0 = .stopped }
        instanceLock.withLock { $0 = nil }
        logger.info("stopped")
    }

    /// swift-service-lifecycle: run until a graceful shutdown (SIGTERM or
    /// SIGINT in stockaded), then stop.
    package func run() async throws {
        try start()
        try? await gracefulShutdown()
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            Thread.detachNewThread { [self] in
                stop()
                c.resume()
            }
        }
    }

    package func pool(_ tenant: String) -> TenantPool? { pools[tenant] }

    // MARK: Routing

    /// Routes `request`; `reply` gets the answer and its audit event, which
    /// the connection records with ``recordAnswer(_:_:delivered:)`` before
    /// it writes the answer.
    func handle(_ request: APIRequest, reply: @escaping @Sendable (APIResponse, AuditEvent) -> Void) {
        let start = ContinuousClock.now
        var event = AuditEvent(.request)
        event.method = request.method.rawValue
        event.path = request.path
        event.uid = request.peer?.uid
        event.bytesIn = request.body.count
        let respond: @Sendable (APIResponse, AuditEvent) -> Void = { response, e in
            var e = e
            e.durationMs = TenantPool.milliseconds(ContinuousClock.now - start)
            reply(response, e)
        }

        let client: ClientConfig
        switch authenticate(request) {
        case .success(let c): client = c
        case .failure(let denial):
            var denied = event
            denied.event = .denied
            denied.reason = denial.why
            respond(denial.response, denied)
            return
        }
        event.client = client.name

        let path = request.path.split(separator: "?", maxSplits: 1).first.map(String.init) ?? request.path
        // Split as bytes (every request is routed through this).
        let parts = path.utf8.split(separator: UInt8(ascii: "/")).map { String(decoding: $0, as: UTF8.self) }
        func forbid(_ tenant: String?, _ why: String) {
            var denied = event
            denied.event = .denied
            denied.tenant = tenant
            denied.reason = why
            respond(.error(.forbidden, "forbidden", why), denied)
        }
        /// The tenant when the client holds at least `role` on it.
        func tenant(_ name: String, needs role: Role) -> TenantPool? {
            event.tenant = name
            guard let pool = pools[name], let held = pool.config.access[client.name] else {
                forbid(name, "client \(client.name) has no access to tenant \(name)")
                return nil
            }
            guard held >= role else {
                forbid(name, "client \(client.name) is \(held.rawValue) of tenant \(name); this call needs \(role.rawValue)")
                return nil
            }
            return pool
        }

        // Nothing is served that cannot be audited, when so configured: a
        // failing audit log refuses calls until a line is written again
        // (each refusal's own record is the retry).
        // Health and metrics stay readable: they are how the failure is seen.
        if config.auditFailure == .refuse, let why = audit.failing, !Self.isObservability(request.method, parts) {
            event.tenant = parts.count >= 3 && parts[1] == "tenants" ? parts[2] : nil
            respond(.error(.serviceUnavailable, "audit-unavailable",
                           "the audit log cannot be written (\(why)); requests are refused until it can (audit_failure = \"refuse\")"), event)
            return
        }

        switch (request.method, parts.count, parts.first) {
        case (.GET, 2, "v1") where parts[1] == "health":
            let h = health()
            respond(.json(h.problems.isEmpty ? .ok : .serviceUnavailable, h), event)
        case (.GET, 1, "metrics"):
            let text = metricsText()
            respond(APIResponse(status: .ok, contentType: "text/plain; version=0.0.4; charset=utf-8", body: text), event)
        case (.GET, 2, "v1") where parts[1] == "tenants":
            let list = tenantOrder.compactMap { name -> TenantInfo? in
                guard let role = pools[name]!.config.access[client.name] else { return nil }
                return pools[name]!.info(role: role)
            }
            respond(.json(.ok, ["tenants": list]), event)
        case (.GET, 3, "v1") where parts[1] == "tenants":
            guard let pool = tenant(parts[2], needs: .viewer) else { return }
            respond(.json(.ok, pool.info(role: pool.config.access[client.name])), event)
        case (.GET, 4, "v1") where parts[1] == "tenants" && parts[3] == "workers":
            guard let pool = tenant(parts[2], needs: .viewer) else { return }
            respond(.json(.ok, ["workers": pool.workers()]), event)
        case (.GET, 5, "v1") where parts[1] == "tenants" && parts[3] == "workers":
            guard let pool = tenant(parts[2], needs: .viewer) else { return }
            event.worker = parts[4]
            if let info = pool.worker(parts[4]) {
                respond(.json(.ok, info), event)
            } else {
                respond(.error(.notFound, "no-such-worker", "tenant \(parts[2]) has no worker \(parts[4]) (it may have exited)"), event)
            }
        case (.POST, 4, "v1") where parts[1] == "tenants" && parts[3] == "infer":
            guard let pool = tenant(parts[2], needs: .invoker) else { return }
            let running = lifecycle.withLock { $0 == .running }
            guard running else {
                event.outcome = "stopping"
                respond(.error(.serviceUnavailable, "stopping", "the daemon is stopping"), event)
                return
            }
            let base = event
            pool.submit(request.body, client: client.name) { outcome in
                var e = base
                switch outcome {
                case .ok(let response, let worker):
                    e.worker = worker
                    e.outcome = "ok"
                    respond(APIResponse(status: .ok, contentType: "application/octet-stream", body: response,
                                        headers: [("X-Stockade-Worker", worker)]), e)
                case .failed(let status, let code, let message, let worker):
                    e.worker = worker
                    e.outcome = code
                    e.reason = message
                    var r = APIResponse.error(HTTPResponseStatus(statusCode: status), code, message)
                    if let worker { r.headers.append(("X-Stockade-Worker", worker)) }
                    if status == 429 { r.headers.append(("Retry-After", "1")) }
                    respond(r, e)
                }
            }
        case (.POST, 4, "v1") where parts[1] == "tenants" && (parts[3] == "drain" || parts[3] == "resume"):
            guard let pool = tenant(parts[2], needs: .admin) else { return }
            var e = AuditEvent(parts[3] == "drain" ? .drain : .resume, tenant: parts[2])
            e.client = client.name
            e.uid = request.peer?.uid
            audit.record(e)
            if parts[3] == "drain" { pool.drain() } else { pool.resume() }
            respond(.json(.accepted, pool.info(role: .admin)), event)
        default:
            respond(.error(.notFound, "not-found", "no such endpoint: \(request.method.rawValue) \(path) (see docs/openapi.yaml)"), event)
        }
    }

    private func authenticate(_ request: APIRequest) -> Result<ClientConfig, Denial> {
        if let client = request.client { return .success(client) }
        return authenticate(authorization: request.authorization, peer: request.peer)
    }

    /// The client behind the bearer token, when the peer's uid may present it.
    func authenticate(authorization: String?, peer: PeerCredentials?) -> Result<ClientConfig, Denial> {
        guard let peer else {
            return .failure(Denial(.error(.unauthorized, "unauthenticated", "the peer's credentials could not be read"), "no peer credentials"))
        }
        guard let header = authorization else {
            return .failure(Denial(.error(.unauthorized, "unauthenticated", "missing Authorization: Bearer <token>"), "no token (uid \(peer.uid))"))
        }
        let prefix = "Bearer "
        guard header.hasPrefix(prefix) else {
            return .failure(Denial(.error(.unauthorized, "unauthenticated", "the Authorization header must be Bearer <token>"), "not a bearer token (uid \(peer.uid))"))
        }
        // The token without the spaces and tabs HTTP allows around it
        // (trimmed as bytes: this runs for every request).
        var token = header.utf8.dropFirst(prefix.utf8.count)
        while let b = token.first, b == 0x20 || b == 0x09 { token = token.dropFirst() }
        while let b = token.last, b == 0x20 || b == 0x09 { token = token.dropLast() }
        // Tokens are compared as SHA-256 digests: fixed length, so neither
        // the comparison nor its timing depends on the length of a guess, and
        // every known digest is compared in full (constant time per client).
        let presented = TokenDigest(bytes: Array(token))
        var found: ClientConfig?
        for (known, client) in clientDigests where known.matches(presented) { found = client }
        // An unknown token and a valid token presented by the wrong uid get
        // the same answer: a different one would confirm a stolen token.
        // The audit log (for the operator) says which it was.
        func refusal() -> APIResponse { .error(.unauthorized, "unauthenticated", "the token is not valid for this connection") }
        guard let client = found else {
            return .failure(Denial(refusal(), "unknown token (uid \(peer.uid))"))
        }
        guard client.uid == peer.uid else {
            return .failure(Denial(refusal(), "token of client \(client.name) presented by uid \(peer.uid), allowed uid \(client.uid)"))
        }
        return .success(client)
    }

    struct Denial: Error {
        var response: APIResponse
        var why: String
        init(_ response: APIResponse, _ why: String) {
            self.response = response
            self.why = why
        }
    }

    // MARK: Answers: audited and counted as what they were

    /// The audit event of an answer given by the connection itself (a
    /// refusal before the request was read, a timeout, a malformed request).
    func earlyEvent(method: HTTPMethod?, uri: String?, peer: PeerCredentials?, response: APIResponse, reason: String, denied: Bool) -> AuditEvent {
        var e = AuditEvent(denied ? .denied : .request)
        e.method = method?.rawValue
        e.path = uri
        e.uid = peer?.uid
        e.outcome = response.code
        e.reason = reason
        let parts = (uri ?? "").split(separator: "?", maxSplits: 1).first.map { $0.split(separator: "/").map(String.init) } ?? []
        if parts.count >= 3, parts[0] == "v1", parts[1] == "tenants", pools[parts[2]] != nil {
            e.tenant = parts[2]
            if parts.count == 4, parts[3] == "infer", !denied { metrics.requests(parts[2], response.code).increment() }
        }
        return e
    }

    /// Records an answer before it is written (`delivered` nil), or, with
    /// `delivered` false, that the client was gone before it could be.
    /// Returns what to write: with `audit_failure = "refuse"`, a successful
    /// answer whose record could not be written is replaced by a 503.
    @discardableResult
    func recordAnswer(_ event: AuditEvent, _ response: APIResponse, delivered: Bool?) -> APIResponse {
        var e = event
        e.status = Int(response.status.code)
        e.bytesOut = response.body.count
        if e.outcome == nil, response.code != "ok" { e.outcome = response.code }
        if delivered == false {
            e.event = .undelivered
            e.reason = "the client closed the connection before the answer was written"
            metrics.undelivered().increment()
            audit.record(e)
            return response
        }
        if e.event == .denied { metrics.denied(response.status == .unauthorized ? "unauthenticated" : response.code).increment() }
        var sent = response
        let observing = e.method == "GET" && (e.path == "/metrics" || e.path == "/v1/health")
        if !audit.record(e), config.auditFailure == .refuse, response.status.code < 400, !observing {
            sent = .error(.serviceUnavailable, "audit-unavailable",
                          "the answer could not be audited and is withheld (audit_failure = \"refuse\")")
        }
        metrics.answers(Int(sent.status.code), sent.code).increment()
        return sent
    }

    static func isObservability(_ method: HTTPMethod, _ parts: [String]) -> Bool {
        method == .GET && (parts == ["metrics"] || parts == ["v1", "health"])
    }

    /// What is wrong with the daemon, if anything.
    struct Health: Encodable {
        var status: String
        var problems: [String]
        var auditWriteFailures: Int
        var connections: Int
    }

    func health() -> Health {
        var problems: [String] = []
        if let why = audit.failing { problems.append("the audit log \(audit.path) cannot be written: \(why)") }
        for t in tenantOrder {
            let info = pools[t]!.info(role: nil)
            if let refusal = info.refusal { problems.append("tenant \(t): \(refusal)") }
        }
        let open = serverBox.withLock { $0?.connections.count } ?? 0
        return Health(status: problems.isEmpty ? "ok" : "degraded", problems: problems, auditWriteFailures: audit.failures, connections: open)
    }

    func metricsText() -> [UInt8] {
        // Refresh the usage gauges before the scrape.
        for t in tenantOrder { _ = pools[t]!.info(role: nil) }
        return metrics.registry.emitToBuffer()
    }
}
