// Prometheus metrics per tenant, served at /metrics. Each daemon has its
// own registry (tests run several daemons in one process).
package import Prometheus
import Synchronization

package final class DaemonMetrics: Sendable {
    package let registry = PrometheusCollectorRegistry()
    static let latencyBuckets: [Duration] = [
        .milliseconds(1), .milliseconds(2), .milliseconds(5), .milliseconds(10), .milliseconds(20), .milliseconds(50),
        .milliseconds(100), .milliseconds(200), .milliseconds(500), .seconds(1), .seconds(2), .seconds(5), .seconds(10), .seconds(30),
    ]

    package init() {}

    private func descriptor(_ name: String, _ help: String) -> MetricNameDescriptor {
        MetricNameDescriptor(metricName: name, unitName: "", helpText: help)
    }

    /// Handles already made, by name and labels: the registry checks names
    /// and help texts on every make, which is not for every request.
    private let made = Mutex<[String: any Sendable]>([:])

    private func cached<M: Sendable>(_ name: String, _ labels: [(String, String)], make: () -> M) -> M {
        var key = name
        for (k, v) in labels { key += "\u{0}" + k + "\u{0}" + v }
        if let m = made.withLock({ $0[key] }) as? M { return m }
        let m = make()
        made.withLock { $0[key] = m }
        return m
    }

    private func counter(_ name: String, labels: [(String, String)], help: String) -> Counter {
        cached(name, labels) { registry.makeCounter(descriptor: descriptor(name, help), labels: labels) }
    }

    private func gauge(_ name: String, labels: [(String, String)], help: String) -> Gauge {
        cached(name, labels) { registry.makeGauge(descriptor: descriptor(name, help), labels: labels) }
    }

    private func histogram(_ name: String, labels: [(String, String)], buckets: [Duration], help: String) -> DurationHistogram {
        cached(name, labels) { registry.makeDurationHistogram(descriptor: descriptor(name, help), labels: labels, buckets: buckets) }
    }

    /// Requests answered, by outcome (ok, worker-error, worker-died, timeout,
    /// queue-full, unavailable, too-large).
    func requests(_ tenant: String, _ outcome: String) -> Counter {
        counter( "stockaded_requests_total", labels: [("tenant", tenant), ("outcome", outcome)],
                             help: "Inference requests by tenant and outcome")
    }

    func latency(_ tenant: String) -> DurationHistogram {
        histogram( "stockaded_request_duration_seconds", labels: [("tenant", tenant)],
                                       buckets: Self.latencyBuckets,
                                       help: "Time from accepting an inference request to its answer, queueing included")
    }

    func workerLatency(_ tenant: String) -> DurationHistogram {
        histogram( "stockaded_worker_duration_seconds", labels: [("tenant", tenant)],
                                       buckets: Self.latencyBuckets,
                                       help: "Time a worker took to answer a request over its channel")
    }

    func spawnLatency(_ tenant: String) -> DurationHistogram {
        histogram( "stockaded_worker_start_seconds", labels: [("tenant", tenant)],
                                       buckets: Self.latencyBuckets,
                                       help: "Time to launch a jailed worker and finish its channel handshake")
    }

    func queueDepth(_ tenant: String) -> Gauge {
        gauge( "stockaded_queue_depth", labels: [("tenant", tenant)],
                           help: "Requests waiting for a free worker")
    }

    func workers(_ tenant: String, _ state: String) -> Gauge {
        gauge( "stockaded_workers", labels: [("tenant", tenant), ("state", state)],
                           help: "Workers by state (starting, idle, busy, stopping)")
    }

    func exits(_ tenant: String, _ reason: String) -> Counter {
        counter( "stockaded_worker_exits_total", labels: [("tenant", tenant), ("reason", reason)],
                             help: "Worker exits by reason (exited, signaled, oom, killed, time-limit)")
    }

    func oomKills(_ tenant: String) -> Counter {
        counter( "stockaded_oom_kills_total", labels: [("tenant", tenant)],
                             help: "Workers killed by the kernel's OOM killer inside their budget")
    }

    func seccompKills(_ tenant: String) -> Counter {
        counter( "stockaded_seccomp_kills_total", labels: [("tenant", tenant)],
                             help: "Workers killed by SIGSYS (a system call their seccomp filter kills on)")
    }

    func seccompDenials(_ tenant: String, _ syscall: String) -> Counter {
        counter("stockaded_seccomp_denials_total", labels: [("tenant", tenant), ("syscall", syscall)],
                help: "System calls the workers' seccomp profiles denied (answered with the profile's errno, or ending the worker under on_denial)")
    }

    func landlockDenials(_ tenant: String) -> Counter {
        counter("stockaded_landlock_denials_total", labels: [("tenant", tenant)],
                help: "Accesses the workers' Landlock domains denied, from the kernel's audit records (only where audit is enabled and readable)")
    }

    /// on_denial acting: policy kill or quarantine, trigger first-denial or per-minute.
    func denialActions(_ tenant: String, _ policy: String, _ trigger: String) -> Counter {
        counter("stockaded_denial_actions_total", labels: [("tenant", tenant), ("policy", policy), ("trigger", trigger)],
                help: "Workers ended by on_denial, by policy (kill, quarantine) and trigger (first-denial, per-minute)")
    }

    func launchFailures(_ tenant: String) -> Counter {
        counter( "stockaded_worker_launch_failures_total", labels: [("tenant", tenant)],
                             help: "Worker launches that failed (jail set-up, handshake, model integrity)")
    }

    func cpuSeconds(_ tenant: String) -> Gauge {
        gauge( "stockaded_cpu_seconds", labels: [("tenant", tenant)],
                           help: "CPU time used by the tenant's workers, live and exited")
    }

    func throttledSeconds(_ tenant: String) -> Gauge {
        gauge( "stockaded_cpu_throttled_seconds", labels: [("tenant", tenant)],
                           help: "Time the tenant's workers were held back by their CPU quota, live and exited")
    }

    func memoryPeak(_ tenant: String) -> Gauge {
        gauge( "stockaded_memory_peak_bytes", labels: [("tenant", tenant)],
                           help: "Largest memory peak of any of the tenant's workers")
    }

    func denied(_ reason: String) -> Counter {
        counter( "stockaded_denied_total", labels: [("reason", reason)],
                             help: "API calls refused (unauthenticated, forbidden)")
    }

    func violations(_ tenant: String) -> Counter {
        counter( "stockaded_channel_violations_total", labels: [("tenant", tenant)],
                             help: "Channel protocol violations by workers (each kills the worker)")
    }

    func auditWriteFailures() -> Counter {
        counter("stockaded_audit_write_failures_total", labels: [],
                help: "Audit records that could not be written (nothing of them is left in the log)")
    }

    /// Every answer the API gave, by status and code (ok or the error word).
    func answers(_ status: Int, _ code: String) -> Counter {
        // Most answers are 200 ok: that handle is kept at hand.
        let ok = status == 200 && code == "ok"
        if ok, let c = answeredOK.withLock({ $0 }) { return c }
        let c = counter("stockaded_answers_total", labels: [("status", String(status)), ("code", code)],
                        help: "API answers by HTTP status and code, refusals before the request was read included")
        if ok { answeredOK.withLock { $0 = c } }
        return c
    }
    private let answeredOK = Mutex<Counter?>(nil)

    func undelivered() -> Counter {
        counter("stockaded_answers_undelivered_total", labels: [],
                help: "Answers not written because the client had closed the connection")
    }
}
