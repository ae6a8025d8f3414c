// Denials in the daemon: every call a worker's profile denies reaches the
// seccomp supervisor, which calls this monitor (on its own thread, so
// nothing here blocks): the call is counted by tenant and name, audited once
// per worker and call name (rate-limited per tenant, with its first
// example), and the tenant's on_denial policy is applied.
import StockadeJail
import StockadeSeccomp
import Synchronization

/// Audit lines for denials a tenant may write: a burst, then a steady rate.
/// What the limit leaves out is counted and reported on the next line.
final class DenialAuditLimiter: Sendable {
    static let burst = 50.0
    static let perSecond = 10.0
    private let state = Mutex<(tokens: Double, last: ContinuousClock.Instant, suppressed: Int)>((burst, .now, 0))

    /// nil when the line must be left out; else how many were left out before it.
    func admit() -> Int? {
        state.withLock { s in
            let now = ContinuousClock.now
            s.tokens = min(Self.burst, s.tokens + (now - s.last).inSeconds * Self.perSecond)
            s.last = now
            guard s.tokens >= 1 else {
                s.suppressed += 1
                return nil
            }
            s.tokens -= 1
            defer { s.suppressed = 0 }
            return s.suppressed
        }
    }
}

/// One worker's denials, from its launch on.
final class DenialMonitor: Sendable {
    let tenant: String
    let worker: String
    let policy: DenialPolicy
    private let metrics: DaemonMetrics
    private let audit: AuditLog
    private let limiter: DenialAuditLimiter
    /// Called once when the policy acts (the pool kills the worker and, for
    /// quarantine, stops routing to the tenant); with the reason.
    private let act: @Sendable (_ trigger: String, _ reason: String) -> Void

    private struct State {
        /// Times of this worker's recent denials (at most perMinute + 1).
        var recent: [ContinuousClock.Instant] = []
        var acted: String?
        var jail: Jail?
    }
    private let state = Mutex<State>(State())

    init(tenant: String, worker: String, policy: DenialPolicy, metrics: DaemonMetrics, audit: AuditLog,
         limiter: DenialAuditLimiter, act: @escaping @Sendable (String, String) -> Void) {
        self.tenant = tenant
        self.worker = worker
        self.policy = policy
        self.metrics = metrics
        self.audit = audit
        self.limiter = limiter
        self.act = act
    }

    /// Why the policy ended this worker, once it has.
    var actedReason: String? { state.withLock { $0.acted } }

    /// The supervisor's options for this worker's jail.
    var watchOptions: SeccompWatchOptions {
        SeccompWatchOptions(answer: .verdict) { [self] event, first in handle(event, first: first) }
    }

    /// The launched jail; one the policy already condemned is killed now.
    func attach(_ jail: Jail) {
        let condemned = state.withLock { s -> Bool in
            s.jail = jail
            return s.acted != nil
        }
        if condemned { jail.kill() }
    }

    func handle(_ event: SeccompEvent, first: Bool) -> SeccompAnswer {
        metrics.seccompDenials(tenant, event.name).increment()
        if first, let suppressed = limiter.admit() {
            var e = AuditEvent(.seccompDenial, tenant: tenant, worker: worker,
                               reason: "\(event.name) denied by \(event.origin == .prelude ? "the always-on hardening" : "the profile") (\(event.verdict))")
            e.pid = event.thread
            e.syscall = event.name
            e.example = event.description
            e.count = 1
            e.policy = policy.onDenial.rawValue
            e.suppressed = suppressed > 0 ? suppressed : nil
            audit.record(e)
        }
        guard policy.onDenial != .log else { return .verdict }
        let now = ContinuousClock.now
        let decision: (act: Bool, jail: Jail?, trigger: String, reason: String)? = state.withLock { s in
            if s.acted != nil { return (false, nil, "", "") }
            s.recent.append(now)
            s.recent.removeAll { now - $0 > .seconds(60) }
            if s.recent.count > policy.perMinute + 1 { s.recent.removeFirst(s.recent.count - policy.perMinute - 1) }
            guard s.recent.count > policy.perMinute else { return nil }
            let trigger = policy.perMinute == 0 ? "first-denial" : "per-minute"
            let why = policy.perMinute == 0 ? "its first denied call" : "more than \(policy.perMinute) denied calls within a minute"
            let reason = "worker \(worker) called \(event.description), which \(event.origin == .prelude ? "every jail refuses" : "its profile denies"); "
                + "on_denial = \(policy.onDenial.rawValue) acted on \(why)"
            s.acted = reason
            return (true, s.jail, trigger, reason)
        }
        guard let decision else { return .verdict }
        if decision.act {
            // The caller never returns from the denied call: it waits,
            // unanswered, until the kill reaches it.
            decision.jail?.kill()
            act(decision.trigger, decision.reason)
        }
        return .withhold
    }
}
