// A tenant with `template = true`: its workers are forked from one jailed
// template that loaded the model once (WorkerTemplate). The template is
// launched when the first worker is wanted and again after it ends; a
// forked worker that ends is replaced by a new fork like any other worker.
import StockadeCgroups
import StockadeChannel
import StockadeJail
import StockadeSystem
import Synchronization
import Logging
import Foundation

/// The tenant's current template, launched once at a time.
final class TemplateHolder: @unchecked Sendable {
    private let lock = NSLock()
    private var current: WorkerTemplate?
    private var generation = 0
    private var stopped = false
    /// Woken when a template's jail has been reaped.
    private let reaped = Wakeups()
    private let watchers = Mutex<Int>(0)

    /// The live template, launching one (with `launch`) when there is none
    /// or the last one has ended.
    func template(_ launch: (Int) throws -> WorkerTemplate) throws -> WorkerTemplate {
        lock.lock()
        defer { lock.unlock() }
        if stopped { throw TemplateError("the tenant is stopping") }
        if let t = current, t.endedReason == nil { return t }
        current = nil
        generation += 1
        let t = try launch(generation)
        current = t
        return t
    }

    /// Reaps `template`'s jail when it ends, then calls `ended` with how.
    func watch(_ template: WorkerTemplate, ended: @escaping @Sendable (JailExit?) -> Void) {
        watchers.withLock { $0 += 1 }
        Thread.detachNewThread { [self] in
            let exit = try? template.jail.wait()
            lock.lock()
            if current === template { current = nil }
            lock.unlock()
            ended(exit)
            watchers.withLock { $0 -= 1 }
            reaped.broadcast()
        }
    }

    /// The template's cgroup usage (its forked workers' with it).
    func usage() -> CgroupUsage? {
        lock.lock()
        let t = current
        lock.unlock()
        return try? t?.jail.cgroup?.usage()
    }

    /// Ends the template (its forked workers end with it) and waits until its
    /// jail is reaped.
    func stop() {
        lock.lock()
        stopped = true
        let t = current
        current = nil
        lock.unlock()
        t?.shutdown(grace: .seconds(5))
        reaped.wait(until: ContinuousClock.now + .seconds(30)) { watchers.withLock { $0 == 0 } }
    }
}

extension TenantPool {
    /// A worker forked from the tenant's template (launched first if need be).
    func forkWorker(id: String) throws -> Worker {
        let template = try self.template.template { generation in try launchTemplate(generation) }
        let forked = try template.fork(tenant: name, worker: id, limits: channelLimits, timeout: .seconds(60))
        return Worker(id: id, jail: template.jail, channel: forked.channel, forked: forked, requestTimeout: config.requestTimeout)
    }

    /// Launches the template jail: the tenant's profile, binds and models,
    /// a control channel instead of a request channel.
    private func launchTemplate(_ generation: Int) throws -> WorkerTemplate {
        let id = "\(name)-template-\(generation)"
        let output = try WorkerLog()
        var started = false
        defer { if !started { output.abandon() } }
        var (request, denials) = try jailRequest(id: id, output: output)
        try JailSecurity.prepare(&request)
        let start = ContinuousClock.now
        let template: WorkerTemplate
        do {
            template = try WorkerTemplate.launch(request, readyTimeout: .seconds(120), logger: logger,
                                                 forkLimits: request.cgroup == nil ? nil : config.forkLimits)
        } catch {
            try? request.cgroup?.remove()
            throw DaemonError("template \(id): \(error)")
        }
        started = true
        denials.attach(template.jail)
        output.closeWriteEnds()
        output.start(logger: logger, tenant: name, worker: id)
        var event = AuditEvent(.launch, tenant: name, worker: id)
        event.pid = template.process.pid
        event.durationMs = (ContinuousClock.now - start).inMilliseconds
        audit.record(event)
        logger.info("template ready", metadata: ["template": "\(id)", "pid": "\(template.process.pid)"])
        self.template.watch(template) { [audit, logger, name] exit in
            var e = AuditEvent(.exit, tenant: name, worker: id, reason: describe(exit))
            e.pid = template.process.pid
            e.exitCode = exit?.exitCode
            e.signal = exit?.signalName
            e.outcome = exit?.reason.rawValue
            audit.record(e)
            logger.notice("template ended; its forked workers end with it and the next worker launches a new one",
                          metadata: ["template": "\(id)", "how": "\(describe(exit))"])
        }
        return template
    }
}
