// A tenant's pool of warm jailed workers.
//
// The pool keeps `workers_min` workers launched with their channel
// handshake done, grows towards `workers_max` while requests wait, and hands
// each request to a free worker at once (a request waits for a launch only
// when every worker is busy). Requests that find no free worker wait in a
// bounded queue; when it is full the request is refused (429).
//
// Every worker's jail is watched (its pidfd on the daemon's exit loop, see
// PoolWatching.swift): when the jail ends for any reason (crash, OOM kill,
// seccomp kill, our kill) the watcher
// records the exit, removes the worker and launches a replacement. A
// request held by a worker that dies is answered with an explicit error and
// is never retried: the daemon cannot know whether the worker acted on it.
package import StockadeCgroups
import StockadeChannel
import StockadeJail
import StockadeSystem
import Logging
import Dispatch
import Synchronization
import Prometheus
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// How an inference request ended.
package enum InferOutcome: Sendable {
    case ok(response: [UInt8], worker: String)
    /// `status` is the HTTP status the API answers with; `code` a stable word.
    case failed(status: Int, code: String, message: String, worker: String?)

    package var status: Int {
        switch self {
        case .ok: 200
        case .failed(let s, _, _, _): s
        }
    }
}

/// A worker as the API shows it.
package struct WorkerInfo: Codable, Sendable {
    package var id: String
    package var tenant: String
    package var state: String
    package var pid: Int32
    package var uptimeSeconds: Double
    package var requests: Int
    package var errors: Int
    package var lastLatencyMs: Double?
    package var meanLatencyMs: Double?
    package var usage: CgroupUsage?
    package var cgroup: String?
    /// Calls the worker's profile denied, in all and by call name.
    package var denials: Int = 0
    package var denialsByCall: [String: Int] = [:]
    /// Accesses its Landlock domain denied (where the kernel's audit reports them).
    package var landlockDenials: Int?
    /// The worker's host id range ("first-last"), when the daemon runs as root.
    package var hostIDs: String?
}

/// A tenant as the API shows it.
package struct TenantInfo: Codable, Sendable {
    package var name: String
    package var state: String
    package var refusal: String?
    package var workersMin: Int
    package var workersMax: Int
    package var starting: Int
    package var idle: Int
    package var busy: Int
    package var queued: Int
    package var queueLimit: Int
    package var served: Int
    package var failed: Int
    package var workerExits: Int
    package var oomKills: Int
    package var seccompKills: Int
    package var usage: TenantUsage
    /// Why on_denial = quarantine stopped routing requests here; nil: not quarantined.
    package var quarantine: String? = nil
    /// The tenant's on_denial policy in words.
    package var denialPolicy: String? = nil
    package var role: Role?
    /// Each live worker's host id range ("first-last"), by worker id: no two
    /// workers, of this tenant or another, share one.
    package var workerHostIDs: [String: String] = [:]
}

/// What a tenant's workers used, live ones and exited ones together.
package struct TenantUsage: Codable, Sendable, Equatable {
    package var cpuUserSeconds: Double = 0
    package var cpuSystemSeconds: Double = 0
    package var throttledSeconds: Double = 0
    /// The largest memory peak of any one worker.
    package var memoryPeakBytes: UInt64 = 0
    package var pidsPeak: UInt64 = 0
    package var budgetMemoryMaxBytes: UInt64?
    package var budgetCPUs: Double?
    package var budgetPidsMax: UInt64?

    mutating func add(_ u: CgroupUsage) {
        cpuUserSeconds += Double(u.cpuUserMicros ?? 0) / 1e6
        cpuSystemSeconds += Double(u.cpuSystemMicros ?? 0) / 1e6
        throttledSeconds += Double(u.throttledMicros ?? 0) / 1e6
        memoryPeakBytes = max(memoryPeakBytes, u.memoryPeakBytes ?? 0)
        pidsPeak = max(pidsPeak, u.pidsPeak ?? 0)
    }
}

/// One jailed worker and its channel.
final class Worker: @unchecked Sendable {
    let id: String
    let jail: Jail
    let channel: SecureChannel
    /// Reads the worker's answers; its wait on the socket keeps each
    /// request's deadline.
    let receiver: WorkerReceiver
    /// Sends that may wait (large requests, a full socket) and the orderly
    /// shutdown run here, off the event loops.
    let queue: DispatchQueue
    let startedAt = ContinuousClock.now
    /// Set for a worker forked from the tenant's template; `jail` is then
    /// the template's, shared with its siblings.
    let forked: ForkedWorker?
    /// The worker's pid in the daemon's pid namespace.
    var pid: Int32 { forked?.pid ?? jail.pid }
    /// The jail's end, once its watcher has reaped it.
    private let exitState = Mutex<(exited: Bool, exit: JailExit?)>((false, nil))
    /// Woken when `exitState` records the end.
    private let exitWakeups = Wakeups()
    /// Set when the worker was killed for missing a request's deadline.
    let timedOut = Atomic<Bool>(false)
    /// The worker's denials and the on_denial policy over them.
    let denials: DenialMonitor?

    init(id: String, jail: Jail, channel: SecureChannel, denials: DenialMonitor? = nil, forked: ForkedWorker? = nil,
         requestTimeout: Duration) {
        self.denials = denials
        self.forked = forked
        self.id = id
        self.jail = jail
        self.channel = channel
        self.queue = DispatchQueue(label: "stockaded.worker.\(id)")
        self.receiver = WorkerReceiver(channel: channel, idleWait: requestTimeout, name: id)
    }

    func markExited(_ exit: JailExit?) {
        exitState.withLock { $0 = (true, exit) }
        exitWakeups.broadcast()
    }

    var hasExited: Bool { exitState.withLock { $0.exited } }

    /// Kills the jail unless its watcher has already reaped it (the test and
    /// the kill under one lock, so a reaped pid is never signalled).
    func kill(reason: JailExit.Reason = .killed) {
        exitState.withLock { state in
            if !state.exited {
                if let forked { forked.kill(reason: reason) } else { jail.kill(reason: reason) }
            }
        }
    }

    /// Waits up to `grace` for the jail to end on its own, then kills it and
    /// waits for the watcher to reap it.
    func awaitExit(grace: Duration) -> JailExit? {
        if !exitWakeups.wait(until: ContinuousClock.now + grace, { hasExited }) {
            kill(reason: .killed)
            exitWakeups.wait { hasExited }
        }
        return exitState.withLock { $0.exit }
    }
}

/// Describes a jail's end in words: "killed by SIGKILL (out of memory)".
func describe(_ exit: JailExit?) -> String {
    guard let exit else { return "ended (its exit status could not be read)" }
    switch exit.reason {
    case .exited: return "exited with status \(exit.exitCode ?? -1)"
    case .outOfMemory: return "was killed by the kernel's OOM killer (its memory budget ran out)"
    case .timeLimit: return "reached its time limit and was killed"
    case .killed: return "was killed by the daemon"
    case .signaled:
        if exit.signal == SIGSYS { return "was killed by SIGSYS: a system call its seccomp filter forbids" }
        return "was killed by \(exit.signalName ?? "signal \(exit.signal ?? 0)")"
    }
}

package final class TenantPool: @unchecked Sendable {
    package let config: TenantConfig
    var name: String { config.name }
    private let cgroups: CgroupManager?
    let audit: AuditLog
    private let metrics: DaemonMetrics
    let logger: Logger
    private let devNull: Int32
    private let modelStore: ModelStore
    /// The largest request body the API accepts (the channel carries it).
    private let maxRequestBytes: Int
    private let denialAudit = DenialAuditLimiter()
    /// Whether the log already says why Landlock denials are not counted.
    private let landlockNoted = Atomic<Bool>(false)
    /// The template of a tenant with `template = true`.
    let template = TemplateHolder()

    private struct Record {
        var worker: Worker
        var state: WorkerState
        var requests = 0
        var errors = 0
        var lastLatency: Duration?
        var totalLatency: Duration = .zero
    }

    enum WorkerState: String { case idle, busy, stopping }

    private struct Pending {
        var payload: [UInt8]
        /// The client that sent it: queued requests are taken in turn per client.
        var client: String
        var accepted: ContinuousClock.Instant
        var completion: @Sendable (InferOutcome) -> Void
    }

    private struct State {
        var workers: [String: Record] = [:]
        /// Free workers, most recently freed last.
        var idle: [String] = []
        var starting = 0
        /// Waiting requests, one FIFO per client, served round-robin: one
        /// client's pile of heavy requests waits behind the others' turns.
        var queues: [String: [Pending]] = [:]
        /// Clients with waiting requests, in the order of their next turn.
        var turns: [String] = []
        var queued = 0
        var nextNumber = 1
        var draining = false
        var stopped = false
        /// Set by on_denial = quarantine; cleared by resume().
        var quarantined: String?
        var consecutiveFailures = 0
        var lastFailure: String?
        var served = 0
        var failed = 0
        var exits = 0
        var oomKills = 0
        var seccompKills = 0
        var exitedUsage = TenantUsage()
        var watchers = 0

        mutating func enqueue(_ p: Pending) {
            if queues[p.client, default: []].isEmpty { turns.append(p.client) }
            queues[p.client, default: []].append(p)
            queued += 1
        }

        /// The next client's oldest request.
        mutating func dequeue() -> Pending? {
            guard !turns.isEmpty else { return nil }
            let client = turns.removeFirst()
            guard var q = queues[client], !q.isEmpty else { return dequeue() }
            let p = q.removeFirst()
            queues[client] = q.isEmpty ? nil : q
            if !q.isEmpty { turns.append(client) }
            queued -= 1
            return p
        }

        mutating func drainQueue() -> [Pending] {
            var all: [Pending] = []
            while let p = dequeue() { all.append(p) }
            return all
        }
    }

    private let state = Mutex<State>(State())
    /// This tenant's metrics on every request's path, looked up once.
    private let hot: HotMetrics
    private struct HotMetrics {
        var idle, busy, stopping, starting, queueDepth: Gauge
        var latency, workerLatency: DurationHistogram
        var ok: Counter
    }
    /// Woken when a worker is gone (stop waits on it for the last one).
    private let emptied = Wakeups()

    init(config: TenantConfig, cgroups: CgroupManager?, audit: AuditLog, metrics: DaemonMetrics, logger: Logger, devNull: Int32,
         modelStore: ModelStore = ModelStore(), maxRequestBytes: Int = 16 << 20) {
        self.modelStore = modelStore
        self.maxRequestBytes = maxRequestBytes
        self.config = config
        self.cgroups = cgroups
        self.audit = audit
        self.metrics = metrics
        var logger = logger
        logger[metadataKey: "tenant"] = "\(config.name)"
        self.logger = logger
        self.devNull = devNull
        hot = HotMetrics(idle: metrics.workers(config.name, "idle"), busy: metrics.workers(config.name, "busy"),
                         stopping: metrics.workers(config.name, "stopping"), starting: metrics.workers(config.name, "starting"),
                         queueDepth: metrics.queueDepth(config.name), latency: metrics.latency(config.name),
                         workerLatency: metrics.workerLatency(config.name), ok: metrics.requests(config.name, "ok"))
        for g in [hot.idle, hot.busy, hot.stopping, hot.starting, hot.queueDepth] { g.set(to: 0) }
    }

    // MARK: Start and stop

    /// Launches the minimum of workers (in the background).
    func start() {
        replenish()
    }

    /// Stops taking requests, lets queued and running ones finish, then
    /// shuts each worker down through its channel.
    func drain() {
        let idle: [Worker] = state.withLock { s in
            s.draining = true
            let ids = s.idle
            s.idle = []
            return ids.compactMap { id in
                s.workers[id]?.state = .stopping
                return s.workers[id]?.worker
            }
        }
        for w in idle { stopWorker(w) }
        updateGauges()
    }

    /// Takes requests again after a drain and launches the minimum.
    func resume() {
        state.withLock { s in
            s.draining = false
            s.quarantined = nil
            s.consecutiveFailures = 0
        }
        replenish()
    }

    /// Drains, waits up to `timeout` for the workers to finish, then kills
    /// what is left and waits until every jail is reaped.
    func stop(timeout: Duration) {
        state.withLock { $0.stopped = true }
        drain()
        emptied.wait(until: ContinuousClock.now + timeout) { isEmpty }
        let (left, queued): ([Worker], [Pending]) = state.withLock { s in
            (s.workers.values.map(\.worker), s.drainQueue())
        }
        for p in queued {
            p.completion(.failed(status: 503, code: "stopping", message: "the daemon is stopping", worker: nil))
        }
        for w in left {
            audit.record(AuditEvent(.kill, tenant: name, worker: w.id, reason: "the daemon is stopping and the worker did not finish within \(timeout)"))
            w.kill()
        }
        emptied.wait { isEmpty }
        template.stop()
    }

    /// No workers, none starting, no watcher still running.
    private var isEmpty: Bool {
        state.withLock { $0.workers.isEmpty && $0.starting == 0 && $0.watchers == 0 }
    }

    // MARK: Requests

    /// Hands `payload` to a free worker, or queues it; `completion` is called
    /// exactly once, from some thread.
    package func submit(_ payload: [UInt8], client: String = "", completion: @escaping @Sendable (InferOutcome) -> Void) {
        let accepted = ContinuousClock.now
        let pending = Pending(payload: payload, client: client, accepted: accepted, completion: completion)
        enum Action { case run(Worker), queued, refuse(InferOutcome) }
        let action: Action = state.withLock { s in
            if s.draining {
                return .refuse(.failed(status: 503, code: "draining", message: "tenant \(name) is draining and takes no new requests", worker: nil))
            }
            if let why = s.quarantined {
                return .refuse(Self.quarantinedOutcome(name, why))
            }
            if let id = s.idle.popLast(), let w = s.workers[id]?.worker {
                s.workers[id]?.state = .busy
                return .run(w)
            }
            if s.queued >= config.queueLimit {
                return .refuse(.failed(status: 429, code: "queue-full",
                                       message: "tenant \(name): all \(s.workers.count) workers are busy and \(s.queued) requests are waiting (the queue holds \(config.queueLimit)); retry later",
                                       worker: nil))
            }
            // One client may fill at most half the queue while others may
            // call this tenant: the rest stays for them.
            let share = config.access.count > 1 ? max(1, config.queueLimit / 2) : config.queueLimit
            if let mine = s.queues[client]?.count, mine >= share {
                return .refuse(.failed(status: 429, code: "queue-full",
                                       message: "tenant \(name): client \(client) already has \(mine) requests waiting, its share of the queue; retry later",
                                       worker: nil))
            }
            // Launches keep failing (a model that fails its check, a broken
            // profile): say why now rather than queue behind the back-off.
            if s.workers.isEmpty, s.consecutiveFailures > 0, let why = s.lastFailure {
                return .refuse(.failed(status: 503, code: "unavailable", message: "tenant \(name) has no worker: \(why)", worker: nil))
            }
            s.enqueue(pending)
            return .queued
        }
        switch action {
        case .run(let w):
            run(pending, on: w)
        case .queued:
            replenish()
        case .refuse(let outcome):
            if case .failed(_, let code, _, _) = outcome { metrics.requests(name, code).increment() }
            completion(outcome)
        }
        updateGauges()
    }

    /// Async form of ``submit(_:completion:)``.
    package func submit(_ payload: [UInt8], client: String = "") async -> InferOutcome {
        await withCheckedContinuation { c in submit(payload, client: client) { c.resume(returning: $0) } }
    }

    /// Sends the request and leaves its answer to the worker's receiver.
    /// A small request is sent from this thread (an event loop, usually)
    /// when the socket takes it at once; anything that may wait goes to
    /// the worker's queue. The request's time is bounded by a deadline on
    /// the channel itself (the send and every read of the answer wait only
    /// until then), not by a timer: a late worker ends the wait with a
    /// `timed-out` violation however it holds its end of the socket.
    private func run(_ pending: Pending, on worker: Worker) {
        let start = ContinuousClock.now
        let deadline = start + config.requestTimeout
        let channel = worker.channel
        let id = channel.makeRequestID()
        worker.receiver.expect(id, deadline: deadline) { [self] result in
            answered(pending, by: worker, start: start, result)
        }
        let sent: SecureChannel.ImmediateSend
        do throws(ChannelError) {
            sent = try channel.sendRequestIfImmediate(pending.payload, requestID: id)
        } catch {
            // What follows a failed send may wait for the worker's end.
            worker.queue.async { worker.receiver.fail(id, error) }
            return
        }
        switch sent {
        case .sent:
            return
        case .pending:
            worker.queue.async {
                do throws(ChannelError) { try channel.flushPending(deadline: deadline) } catch { worker.receiver.fail(id, error) }
            }
        case .notSent:
            worker.queue.async {
                do throws(ChannelError) {
                    try channel.sendRequest(pending.payload, requestID: id, deadline: deadline)
                } catch {
                    worker.receiver.fail(id, error)
                }
            }
        }
    }

    /// The worker's answer to `pending` (or why there is none).
    private func answered(_ pending: Pending, by worker: Worker, start: ContinuousClock.Instant, _ result: Result<[UInt8], ChannelError>) {
        let took = ContinuousClock.now - start
        hot.workerLatency.record(took)
        switch result {
        case .success(let response) where response.count > config.maxResponseBytes:
            finish(pending, .failed(status: 502, code: "answer-too-large",
                                    message: "worker \(worker.id) answered \(response.count) bytes; tenant \(name) allows \(config.maxResponseBytes) (max_response_bytes)",
                                    worker: worker.id), outcome: "answer-too-large")
            requestDone(worker, took: took, healthy: true)
        case .success(let response):
            finish(pending, .ok(response: response, worker: worker.id), outcome: "ok")
            requestDone(worker, took: took, healthy: true)
        case .failure(.remote(let message)):
            let refusal = Self.errorKind(message)
            finish(pending, .failed(status: refusal.status, code: refusal.code,
                                    message: refusal.status == 502 ? "worker \(worker.id) reported an error: \(message)" : refusal.message,
                                    worker: worker.id),
                   outcome: refusal.code)
            requestDone(worker, took: took, healthy: true)
        case .failure(let error):
            requestDone(worker, took: took, healthy: false)
            // Past the deadline the worker is killed for its time;
            // end of stream is how a dying worker looks; anything else
            // the worker sent wrong is a violation and kills it at once.
            if error.violation?.kind == .timedOut {
                worker.timedOut.store(true, ordering: .sequentiallyConsistent)
                worker.kill(reason: .timeLimit)
            }
            let violation = error.violation.flatMap { [.closed, .truncated, .timedOut].contains($0.kind) ? nil : $0 }
            if let v = violation {
                metrics.violations(name).increment()
                var e = AuditEvent(.violation, tenant: name, worker: worker.id, reason: v.description)
                e.pid = worker.pid
                audit.record(e)
                worker.kill()
            }
            let exit = worker.awaitExit(grace: .seconds(1))
            let outcome: InferOutcome
            if let why = worker.denials?.actedReason {
                outcome = .failed(status: 502, code: "denied-call", message: why + "; the request was not retried", worker: worker.id)
            } else if worker.timedOut.load(ordering: .sequentiallyConsistent) {
                outcome = .failed(status: 504, code: "timeout",
                                  message: "worker \(worker.id) did not answer within \(config.requestTimeout) and was killed; the request was not retried",
                                  worker: worker.id)
            } else if let v = violation {
                outcome = .failed(status: 502, code: "violation",
                                  message: "worker \(worker.id) broke the channel protocol (\(v.kind.rawValue): \(v.reason)) and was killed; the request was not retried",
                                  worker: worker.id)
            } else {
                outcome = .failed(status: 502, code: "worker-died",
                                  message: "worker \(worker.id) \(describe(exit)) while it held the request; the request was not retried",
                                  worker: worker.id)
            }
            if case .failed(_, let code, _, _) = outcome { finish(pending, outcome, outcome: code) }
        }
    }

    /// The answer for a worker's error record: the kinds a worker gives for
    /// a request it refuses (docs/PROTOCOL.md) are the client's fault;
    /// anything else is the worker's (502).
    static func errorKind(_ message: String) -> (status: Int, code: String, message: String) {
        for (kind, status, code) in [("input", 400, "bad-input"), ("too-large", 413, "too-large"), ("unprocessable", 422, "unprocessable")] {
            let prefix = kind + ": "
            if message.hasPrefix(prefix) { return (status, code, String(message.dropFirst(prefix.count))) }
        }
        return (502, "worker-error", message)
    }

    private func finish(_ pending: Pending, _ outcome: InferOutcome, outcome word: String) {
        (word == "ok" ? hot.ok : metrics.requests(name, word)).increment()
        hot.latency.record(ContinuousClock.now - pending.accepted)
        state.withLock { s in
            if case .ok = outcome { s.served += 1 } else { s.failed += 1 }
        }
        pending.completion(outcome)
    }

    /// A worker finished a request: give it the next queued one, or mark it free.
    private func requestDone(_ worker: Worker, took: Duration, healthy: Bool) {
        let next: Pending? = state.withLock { s in
            guard var r = s.workers[worker.id] else { return nil }
            r.requests += 1
            if !healthy { r.errors += 1 }
            r.lastLatency = took
            r.totalLatency += took
            s.workers[worker.id] = r
            guard healthy, r.state == .busy else { return nil }
            return takeWork(worker, &s)
        }
        if let next { run(next, on: worker) }
        updateGauges()
    }

    /// With the lock held: the next queued request for `worker`, or nil
    /// after marking it idle (or stopping it when draining).
    private func takeWork(_ worker: Worker, _ s: inout State) -> Pending? {
        if let p = s.dequeue() {
            s.workers[worker.id]?.state = .busy
            return p
        }
        if s.draining {
            s.workers[worker.id]?.state = .stopping
            let w = worker
            DispatchQueue.global().async { [self] in stopWorker(w) }
            return nil
        }
        s.workers[worker.id]?.state = .idle
        s.idle.append(worker.id)
        return nil
    }

    /// Orderly shutdown through the channel; killed if it lingers: the
    /// shutdown waits at most 5 s for the reply and the end of stream, the
    /// exit 2 s more.
    private func stopWorker(_ worker: Worker) {
        worker.queue.async {
            try? worker.channel.shutdown(timeoutMilliseconds: 5_000)
            _ = worker.awaitExit(grace: .seconds(2))
        }
    }

    // MARK: Launching

    /// Starts as many launches as the pool needs now.
    private func replenish() {
        let (count, delay): (Int, Duration) = state.withLock { s in
            guard !s.draining, !s.stopped else { return (0, .zero) }
            let total = s.workers.count + s.starting
            var want = max(0, config.minWorkers - total)
            let uncovered = s.queued - s.starting
            if uncovered > 0 { want = max(want, uncovered) }
            want = min(want, config.maxWorkers - total, Self.concurrentLaunches - s.starting)
            if want <= 0 { return (0, .zero) }
            // After failures, launch one at a time with a growing pause.
            if s.consecutiveFailures > 0 {
                if s.starting > 0 { return (0, .zero) }
                want = 1
            }
            s.starting += want
            let pause = s.consecutiveFailures == 0 ? Duration.zero
                : .milliseconds(min(30_000, 100 << min(s.consecutiveFailures - 1, 9)))
            return (want, pause)
        }
        guard count > 0 else { return }
        updateGauges()
        for _ in 0..<count {
            let work: @Sendable () -> Void = { [self] in launchOne() }
            if delay == .zero {
                Thread.detachNewThread(work)
            } else {
                DispatchQueue.global().asyncAfter(deadline: .now() + .milliseconds(Int(delay.components.seconds * 1000
                    + delay.components.attoseconds / 1_000_000_000_000_000)), execute: work)
            }
        }
    }

    private func launchOne() {
        let number = state.withLock { s -> Int? in
            // A launch delayed by the back-off is dropped once the pool stops.
            if s.stopped || s.draining {
                s.starting -= 1
                return nil
            }
            defer { s.nextNumber += 1 }
            return s.nextNumber
        }
        guard let number else {
            signalIfEmpty()
            updateGauges()
            return
        }
        let id = "\(name)-\(number)"
        let start = ContinuousClock.now
        let worker: Worker
        do {
            worker = try launch(id: id)
        } catch {
            launchFailed(id: id, error: error)
            return
        }
        metrics.spawnLatency(name).record(ContinuousClock.now - start)
        var event = AuditEvent(.launch, tenant: name, worker: id)
        event.pid = worker.pid
        event.durationMs = Self.milliseconds(ContinuousClock.now - start)
        audit.record(event)
        logger.info("worker ready", metadata: ["worker": "\(id)", "pid": "\(worker.pid)"])

        let (next, stopNow): (Pending?, Bool) = state.withLock { s in
            s.starting -= 1
            s.consecutiveFailures = 0
            s.lastFailure = nil
            s.watchers += 1
            s.workers[id] = Record(worker: worker, state: .busy)
            if s.stopped {
                s.workers[id]?.state = .stopping
                return (nil, true)
            }
            return (takeWork(worker, &s), false)
        }
        watchExit(worker)
        if stopNow { stopWorker(worker) }
        if let next { run(next, on: worker) }
        updateGauges()
        // The next launches, when the pool is still short (they run a few at a time).
        replenish()
    }

    private func launchFailed(id: String, error: any Error) {
        let message = "\(error)"
        metrics.launchFailures(name).increment()
        if error is ModelIntegrityError {
            audit.record(AuditEvent(.modelRejected, tenant: name, worker: id, reason: message))
            logger.error("model integrity check failed; the tenant's workers are not started", metadata: ["error": "\(message)"])
        } else {
            audit.record(AuditEvent(.launchFailed, tenant: name, worker: id, reason: message))
            logger.error("worker launch failed", metadata: ["worker": "\(id)", "error": "\(message)"])
        }
        let failed: [Pending] = state.withLock { s in
            s.starting -= 1
            s.consecutiveFailures += 1
            s.lastFailure = message
            // Nobody is left to serve the queue: answer it now rather than
            // keep clients waiting through the back-off.
            guard s.workers.isEmpty, s.starting == 0 else { return [] }
            return s.drainQueue()
        }
        for p in failed {
            finish(p, .failed(status: 503, code: "unavailable", message: "tenant \(name) could not start a worker: \(message)", worker: nil),
                   outcome: "unavailable")
        }
        signalIfEmpty()
        updateGauges()
        replenish()
    }

    /// Gets the models' sealed copies (verified when first made, their
    /// seals re-checked now), then launches the jail with those memfds, its
    /// stdout and stderr on pipes the daemon reads, and runs the handshake.
    private func launch(id: String) throws -> Worker {
        if config.template { return try forkWorker(id: id) }
        let bootstrap = try ChannelBootstrap(tenant: name, worker: id, limits: channelLimits)
        let output = try WorkerLog()
        var launched = false
        defer { if !launched { output.abandon() } }
        var (request, denials) = try jailRequest(id: id, output: output)
        request.extraEnvironment.append((ChannelBootstrap.environmentVariable, ChannelBootstrap.environmentValue()))
        request.passedFDs += bootstrap.passedFDs
        try JailSecurity.prepare(&request)
        let jail: Jail
        do {
            jail = try Launcher.launch(request)
        } catch {
            try? request.cgroup?.remove()
            throw error
        }
        denials.attach(jail)
        if let why = jail.seccompUnobserved {
            logger.warning("denied calls of this worker are not observed", metadata: ["worker": "\(id)", "why": "\(why)"])
        }
        if let why = jail.landlockUnobserved, !landlockNoted.exchange(true, ordering: .relaxed) {
            logger.notice("Landlock denials are not counted", metadata: ["why": "\(why)"])
        }
        launched = true
        output.closeWriteEnds()
        output.start(logger: logger, tenant: name, worker: id)
        bootstrap.closeWorkerEnds()
        do {
            var channelLogger = logger
            channelLogger[metadataKey: "worker"] = "\(id)"
            let channel = try bootstrap.connect(logger: channelLogger, handshakeTimeoutMilliseconds: 60_000)
            return Worker(id: id, jail: jail, channel: channel, denials: denials, requestTimeout: config.requestTimeout)
        } catch {
            jail.kill()
            let exit = try? jail.wait()
            throw DaemonError("worker \(id): channel handshake failed (\(error)); the worker \(describe(exit))")
        }
    }

    /// The channel's limits: it refuses a larger bulk transfer before it is mapped.
    var channelLimits: ChannelLimits { ChannelLimits(maxBulkLength: max(config.maxResponseBytes, maxRequestBytes, 1 << 20)) }

    /// The jail of one of this tenant's workers (or its template), all but
    /// the channel: the profile and binds, the models' sealed memfds (their
    /// seals re-checked now), stdio on `output`'s pipes, the cgroup, and the
    /// observation of its denials. The caller adds the channel and prepares it.
    func jailRequest(id: String, output: WorkerLog) throws -> (LaunchRequest, DenialMonitor) {
        var sealed: [SealedModelFile] = []
        for model in config.models { sealed += try modelStore.files(of: model) }
        var request = LaunchRequest(profile: config.profile, command: config.command)
        request.launcherFiles = config.launcherFiles
        for path in config.binds {
            request.extraMounts.append(MountSpec(kind: .bind, source: path, target: path))
        }
        request.extraEnvironment = config.environment
        if let memory = config.profile.limits.memoryMax {
            request.extraEnvironment.append(("STOCKADE_MEMORY_MAX", String(memory)))
        }
        request.passedFDs = [
            (devNull, 0),
            (output.stdoutWrite.rawValue, 1),
            (output.stderrWrite.rawValue, 2),
        ]
        var named: [String] = []
        for (i, f) in sealed.enumerated() {
            let to = Self.firstModelFD + Int32(i)
            request.passedFDs.append((f.fd.rawValue, to))
            named.append("\(f.file.name)=\(to)")
        }
        if !named.isEmpty { request.extraEnvironment.append((Self.modelFDsVariable, named.joined(separator: ","))) }
        if let cgroups {
            // A template's forks get cgroups of their own below its jail's.
            request.cgroup = try cgroups.jail(tenant: name, limits: config.profile.limits, forks: config.template)
        }
        let denials = denialMonitor(worker: id)
        let tenantName = name
        request.seccompObservation = SeccompObservation(options: denials.watchOptions) { [metrics] _ in
            metrics.landlockDenials(tenantName).increment()
        }
        return (request, denials)
    }

    /// The monitor of one worker's denials; when on_denial acts it counts,
    /// audits, and for quarantine stops routing requests to this tenant.
    private func denialMonitor(worker id: String) -> DenialMonitor {
        DenialMonitor(tenant: name, worker: id, policy: config.denials, metrics: metrics, audit: audit,
                      limiter: denialAudit) { [weak self] trigger, reason in
            guard let self else { return }
            let policy = config.denials.onDenial.rawValue
            metrics.denialActions(name, policy, trigger).increment()
            var e = AuditEvent(.denialPolicy, tenant: name, worker: id, reason: reason)
            e.policy = policy
            e.outcome = trigger
            audit.record(e)
            logger.warning("on_denial acted", metadata: ["worker": "\(id)", "policy": "\(policy)", "reason": "\(reason)"])
            if config.denials.onDenial == .quarantine { quarantine(reason) }
        }
    }

    /// Stops routing requests here until resume(); queued ones are answered now.
    private func quarantine(_ reason: String) {
        let queued: [Pending] = state.withLock { s in
            if s.quarantined == nil { s.quarantined = reason }
            return s.drainQueue()
        }
        for p in queued { finish(p, Self.quarantinedOutcome(name, reason), outcome: "quarantined") }
        updateGauges()
    }

    static func quarantinedOutcome(_ tenant: String, _ why: String) -> InferOutcome {
        .failed(status: 503, code: "quarantined",
                message: "tenant \(tenant) is quarantined (\(why)); an admin resumes it with POST /v1/tenants/\(tenant)/resume",
                worker: nil)
    }

    /// The environment variable naming the model memfds (`name=fd,...`).
    static let modelFDsVariable = "STOCKADE_MODEL_FDS"
    /// Model memfds land from here up in the jail (after stdio, 3 and 4).
    static let firstModelFD: Int32 = 10

    /// Blocks until the worker's jail ends, then accounts for it.
    func watch(_ worker: Worker) {
        let exit: JailExit?
        do {
            exit = try worker.forked?.wait(profile: config.profile.name) ?? worker.jail.wait()
        } catch {
            logger.error("cannot reap a worker's jail", metadata: ["worker": "\(worker.id)", "error": "\(error)"])
            exit = nil
        }
        worker.markExited(exit)
        worker.receiver.stop()
        // Closed on the worker's queue, after any send still writing it (a
        // wait for an answer ends at the close).
        worker.queue.async { worker.channel.close() }
        var event = AuditEvent(.exit, tenant: name, worker: worker.id, reason: describe(exit))
        event.pid = worker.pid
        event.exitCode = exit?.exitCode
        event.signal = exit?.signalName
        event.outcome = exit?.reason.rawValue
        event.memoryPeakBytes = exit?.usage?.memoryPeakBytes
        if let u = exit?.usage, let user = u.cpuUserMicros { event.cpuMicros = user + (u.cpuSystemMicros ?? 0) }
        event.durationMs = exit.map { $0.wallSeconds * 1000 }
        audit.record(event)
        let oom = exit?.reason == .outOfMemory
        let seccomp = exit?.signal == SIGSYS
        metrics.exits(name, exit?.reason.rawValue ?? "unknown").increment()
        if oom { metrics.oomKills(name).increment() }
        if seccomp { metrics.seccompKills(name).increment() }
        let expected: Bool = state.withLock { s in
            let record = s.workers.removeValue(forKey: worker.id)
            s.idle.removeAll { $0 == worker.id }
            s.exits += 1
            if oom { s.oomKills += 1 }
            if seccomp { s.seccompKills += 1 }
            // A fork's use is in its template's cgroup too (hierarchical).
            if let u = exit?.usage, worker.forked == nil { s.exitedUsage.add(u) }
            s.watchers -= 1
            return record?.state == .stopping
        }
        if !expected {
            logger.warning("worker ended", metadata: ["worker": "\(worker.id)", "how": "\(describe(exit))"])
        }
        signalIfEmpty()
        updateGauges()
        replenish()
    }

    private func signalIfEmpty() {
        emptied.broadcast()
    }

    // MARK: Views

    private func updateGauges() {
        let (idle, busy, stopping, starting, queued) = state.withLock { s in
            var counts: [WorkerState: Int] = [:]
            for r in s.workers.values { counts[r.state, default: 0] += 1 }
            return (counts[.idle] ?? 0, counts[.busy] ?? 0, counts[.stopping] ?? 0, s.starting, s.queued)
        }
        hot.idle.set(to: Double(idle))
        hot.busy.set(to: Double(busy))
        hot.stopping.set(to: Double(stopping))
        hot.starting.set(to: Double(starting))
        hot.queueDepth.set(to: Double(queued))
    }

    /// Idle workers and the last launch failure, without reading any
    /// worker's cgroup (``info(role:)`` reads every one).
    package var readiness: (idle: Int, refusal: String?) {
        state.withLock { s in (s.idle.count, s.consecutiveFailures > 0 ? s.lastFailure : nil) }
    }

    /// Live usage is read from each worker's cgroup.
    package func info(role: Role? = nil) -> TenantInfo {
        let (snapshot, workers) = state.withLock { s in (s, s.workers.values.map(\.worker)) }
        var hostIDs: [String: String] = [:]
        for w in workers { hostIDs[w.id] = w.jail.hostIDs?.description }
        var usage = snapshot.exitedUsage
        // Forked workers are counted once, in their template's cgroup.
        for w in workers where w.forked == nil {
            if let u = try? w.jail.cgroup?.usage() { usage.add(u) }
        }
        if let u = template.usage() { usage.add(u) }
        let b = config.budget
        usage.budgetMemoryMaxBytes = b.limits.memoryMax
        usage.budgetCPUs = b.limits.cpu?.cpus
        usage.budgetPidsMax = b.limits.pidsMax
        metrics.cpuSeconds(name).set(to: usage.cpuUserSeconds + usage.cpuSystemSeconds)
        metrics.throttledSeconds(name).set(to: usage.throttledSeconds)
        metrics.memoryPeak(name).set(to: Double(usage.memoryPeakBytes))
        var counts: [WorkerState: Int] = [:]
        for r in snapshot.workers.values { counts[r.state, default: 0] += 1 }
        let refusal = snapshot.consecutiveFailures > 0 ? snapshot.lastFailure : nil
        return TenantInfo(name: name,
                          state: snapshot.stopped ? "stopped" : snapshot.draining ? "draining" : snapshot.quarantined != nil ? "quarantined"
                              : refusal != nil ? "failing" : "serving",
                          refusal: refusal, workersMin: config.minWorkers, workersMax: config.maxWorkers,
                          starting: snapshot.starting, idle: counts[.idle] ?? 0, busy: counts[.busy] ?? 0,
                          queued: snapshot.queued, queueLimit: config.queueLimit, served: snapshot.served, failed: snapshot.failed,
                          workerExits: snapshot.exits, oomKills: snapshot.oomKills, seccompKills: snapshot.seccompKills,
                          usage: usage, quarantine: snapshot.quarantined, denialPolicy: config.denials.description,
                          role: role, workerHostIDs: hostIDs)
    }

    package func workers() -> [WorkerInfo] {
        let records = state.withLock { Array($0.workers.values) }
        return records.sorted { $0.worker.id < $1.worker.id }.map(workerInfo)
    }

    package func worker(_ id: String) -> WorkerInfo? {
        guard let r = state.withLock({ $0.workers[id] }) else { return nil }
        return workerInfo(r)
    }

    private func workerInfo(_ r: Record) -> WorkerInfo {
        let up = ContinuousClock.now - r.worker.startedAt
        let tally = r.worker.jail.seccompWatch?.tally()
        var info = WorkerInfo(id: r.worker.id, tenant: name, state: r.state.rawValue, pid: r.worker.pid,
                          uptimeSeconds: up.inSeconds,
                          requests: r.requests, errors: r.errors,
                          lastLatencyMs: r.lastLatency.map(Self.milliseconds),
                          meanLatencyMs: r.requests > 0 ? Self.milliseconds(r.totalLatency) / Double(r.requests) : nil,
                          usage: r.worker.forked?.cgroup.map { $0.usage() } ?? (try? r.worker.jail.cgroup?.usage()),
                          cgroup: r.worker.forked?.cgroup?.path ?? (r.worker.jail.cgroup as? JailGroup)?.path,
                          hostIDs: r.worker.jail.hostIDs?.description)
        info.denials = tally?.total ?? 0
        info.denialsByCall = tally?.byCall ?? [:]
        info.landlockDenials = r.worker.jail.landlockWatch?.tally().total
        return info
    }

    static func milliseconds(_ d: Duration) -> Double {
        d.inMilliseconds
    }
}
