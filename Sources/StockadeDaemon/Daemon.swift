// stockaded: tenants and their warm pools, the API, the audit log and the
// metrics, started and stopped as one service.
public import StockadeCgroups
public import Logging
public import ServiceLifecycle
import NIOCore
import NIOHTTP1
import Synchronization
import Dispatch
import Foundation
#if canImport(Glibc)
import Glibc
#endif

public final class Daemon: Service, @unchecked Sendable {
    public let config: DaemonConfig
    public let audit: AuditLog
    public let metrics = DaemonMetrics()
    public let cgroups: CgroupManager?
    let logger: Logger
    private let pools: [String: TenantPool]
    private let tenantOrder: [String]
    private let clientsByToken: [String: ClientConfig]
    private let devNull: Int32
    private let lifecycle = Mutex<Lifecycle>(.created)
    private let serverBox = Mutex<APIServer?>(nil)

    private enum Lifecycle { case created, running, stopping, stopped }

    /// Opens the audit log and the cgroup manager (which removes jails left
    /// behind by a daemon that died); nothing is launched until ``start()``.
    public init(config: DaemonConfig, logger: Logger = Logger(label: "stockaded")) throws {
        self.config = config
        self.logger = logger
        audit = try AuditLog(path: config.auditLogPath)
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
        for var t in config.tenants {
            t.launcherFiles.append(config.file)
            pools[t.name] = TenantPool(config: t, cgroups: cgroups, audit: audit, metrics: metrics, logger: logger, devNull: devNull)
        }
        self.pools = pools
        tenantOrder = config.tenants.map(\.name)
        var byToken: [String: ClientConfig] = [:]
        for c in config.clients { byToken[c.token] = c }
        clientsByToken = byToken
    }

    deinit { close(devNull) }

    /// The cgroups of dead launchers removed when this daemon started.
    public var swept: [String] { cgroups?.swept ?? [] }

    /// Listens on the API socket and launches every tenant's minimum of workers.
    public func start() throws {
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
    }

    /// Stops taking requests, lets the ones in flight finish (up to the
    /// drain timeout), kills what is left, and removes every jail, cgroup
    /// and the socket. Blocks until all of it is done.
    public func stop() {
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
        serverBox.withLock { $0 }?.close()
        serverBox.withLock { $0 = nil }
        SystemdSocket.unlinkUnlessInherited(config.socketPath)
        if let cgroups {
            do { try cgroups.close() } catch { logger.warning("cgroup clean-up", metadata: ["error": "\(error)"]) }
        }
        audit.record(AuditEvent(.daemonStop, reason: "stopped cleanly"))
        lifecycle.withLock { $0 = .stopped }
        logger.info("stopped")
    }

    /// swift-service-lifecycle: run until a graceful shutdown (SIGTERM or
    /// SIGINT in stockaded), then stop.
    public func run() async throws {
        try start()
        try? await gracefulShutdown()
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            Thread.detachNewThread { [self] in
                stop()
                c.resume()
            }
        }
    }

    public func pool(_ tenant: String) -> TenantPool? { pools[tenant] }

    // MARK: Routing

    func handle(_ request: APIRequest, reply: @escaping @Sendable (APIResponse) -> Void) {
        let start = ContinuousClock.now
        var event = AuditEvent(.request)
        event.method = request.method.rawValue
        event.path = request.path
        event.uid = request.peer?.uid
        event.bytesIn = request.body.count
        let respond: @Sendable (APIResponse, AuditEvent) -> Void = { [audit] response, e in
            var e = e
            e.status = Int(response.status.code)
            e.bytesOut = response.body.count
            e.durationMs = TenantPool.milliseconds(ContinuousClock.now - start)
            audit.record(e)
            reply(response)
        }

        let client: ClientConfig
        switch authenticate(request) {
        case .success(let c): client = c
        case .failure(let denial):
            metrics.denied("unauthenticated").increment()
            var denied = event
            denied.event = .denied
            denied.reason = denial.why
            respond(denial.response, denied)
            return
        }
        event.client = client.name

        let path = request.path.split(separator: "?", maxSplits: 1).first.map(String.init) ?? request.path
        let parts = path.split(separator: "/", omittingEmptySubsequences: true).map(String.init)
        func forbid(_ tenant: String?, _ why: String) {
            metrics.denied("forbidden").increment()
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

        switch (request.method, parts.count, parts.first) {
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
            pool.submit(request.body) { outcome in
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

    /// The client behind the bearer token, when the peer's uid may present it.
    private func authenticate(_ request: APIRequest) -> Result<ClientConfig, Denial> {
        guard let peer = request.peer else {
            return .failure(Denial(.error(.unauthorized, "unauthenticated", "the peer's credentials could not be read"), "no peer credentials"))
        }
        guard let header = request.authorization else {
            return .failure(Denial(.error(.unauthorized, "unauthenticated", "missing Authorization: Bearer <token>"), "no token (uid \(peer.uid))"))
        }
        let prefix = "Bearer "
        guard header.hasPrefix(prefix) else {
            return .failure(Denial(.error(.unauthorized, "unauthenticated", "the Authorization header must be Bearer <token>"), "not a bearer token (uid \(peer.uid))"))
        }
        let token = String(header.dropFirst(prefix.count)).trimmingCharacters(in: .whitespaces)
        // Compare against every token in constant time per token, so the
        // answer's timing does not say how much of a guess was right.
        var found: ClientConfig?
        for (known, client) in clientsByToken where Self.constantTimeEqual(known, token) { found = client }
        guard let client = found else {
            return .failure(Denial(.error(.unauthorized, "unauthenticated", "unknown token"), "unknown token (uid \(peer.uid))"))
        }
        guard client.uid == peer.uid else {
            return .failure(Denial(.error(.unauthorized, "unauthenticated", "this token is not valid for uid \(peer.uid)"),
                                   "token of client \(client.name) presented by uid \(peer.uid), allowed uid \(client.uid)"))
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

    static func constantTimeEqual(_ a: String, _ b: String) -> Bool {
        let x = Array(a.utf8), y = Array(b.utf8)
        var diff = UInt8(truncatingIfNeeded: x.count ^ y.count)
        for i in 0..<x.count { diff |= x[i] ^ (i < y.count ? y[i] : 0) }
        return diff == 0
    }

    func metricsText() -> [UInt8] {
        // Refresh the usage gauges before the scrape.
        for t in tenantOrder { _ = pools[t]!.info(role: nil) }
        return metrics.registry.emitToBuffer()
    }
}
