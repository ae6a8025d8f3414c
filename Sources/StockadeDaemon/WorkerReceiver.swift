// The thread that reads a worker's answers.
//
// Each worker has one, always waiting on its channel's socket, so that an
// answer wakes the thread that reads it and nothing else: the event loop
// sends a small request itself and goes back to its connections, the
// worker's answer wakes this thread, which opens it and hands the outcome
// to the connection's event loop. No thread is woken to send a request, and
// no timer is armed for one.
//
// The request's deadline is kept here too: the wait on the socket ends at
// the deadline of the request in flight. While the worker is idle the wait
// ends after at most `idleWait` (the tenant's request timeout), so that a
// request handed over during an idle wait is never checked later than its
// deadline; an idle worker costs one wakeup per `idleWait`.
import StockadeChannel
import StockadeSystem
import Synchronization
import Foundation

final class WorkerReceiver: Sendable {
    typealias Handler = @Sendable (Result<[UInt8], ChannelError>) -> Void

    private struct Job {
        var id: UInt64
        var deadline: ContinuousClock.Instant
        var handler: Handler
    }

    private struct State {
        var job: Job?
        /// The thread waits for a job (not on the socket): the worker sent
        /// something, or ended, while it held none.
        var parked = false
        var stopped = false
    }

    private let channel: SecureChannel
    private let idleWait: Duration
    private let state = Mutex<State>(State())
    private let wakeups = Wakeups()

    /// Starts the thread; it runs until ``stop()``.
    init(channel: SecureChannel, idleWait: Duration, name: String) {
        self.channel = channel
        self.idleWait = idleWait
        let thread = Thread { [self] in run() }
        // The kernel keeps 15 bytes of a thread's name.
        thread.name = String("rx.\(name)".utf8.prefix(15))
        // The thread's stack holds a few frames of channel code.
        thread.stackSize = 256 << 10
        thread.start()
    }

    /// Request `id` is about to be sent: its answer, its failure or its
    /// deadline calls `handler`, exactly once, on this thread (or on the
    /// thread that calls ``fail(_:_:)`` first).
    func expect(_ id: UInt64, deadline: ContinuousClock.Instant, handler: @escaping Handler) {
        let wake = state.withLock { s in
            precondition(s.job == nil, "a worker holds one request at a time")
            s.job = Job(id: id, deadline: deadline, handler: handler)
            return s.parked
        }
        if wake { wakeups.broadcast() }
    }

    /// The send of request `id` failed: its handler gets `error` now, and
    /// the channel is interrupted (the worker is not used again).
    func fail(_ id: UInt64, _ error: ChannelError) {
        guard let job = take(id) else { return }
        channel.interrupt()
        job.handler(.failure(error))
    }

    /// Ends the thread (the worker is gone); a request still held is
    /// answered by whoever ends its wait on the channel.
    func stop() {
        state.withLock { $0.stopped = true }
        wakeups.broadcast()
    }

    private func take(_ id: UInt64) -> Job? {
        state.withLock { s in
            guard let job = s.job, job.id == id else { return nil }
            s.job = nil
            return job
        }
    }

    private func run() {
        while true {
            let (job, stopped) = state.withLock { ($0.job, $0.stopped) }
            if stopped, job == nil { return }
            let ready = channel.waitForInput(until: job?.deadline ?? ContinuousClock.now + idleWait)
            guard let current = state.withLock({ $0.job }) else {
                if ready {
                    // Input while no request is held (the worker's end of
                    // stream, the reply to a shutdown, a stray record): it is
                    // read with the next request, or by the shutdown.
                    state.withLock { $0.parked = true }
                    wakeups.wait { state.withLock { $0.job != nil || $0.stopped } }
                    state.withLock { $0.parked = false }
                }
                continue
            }
            // The idle wait ended before a request handed over meanwhile
            // was due: wait again, until its deadline.
            if !ready, ContinuousClock.now < current.deadline { continue }
            let result: Result<[UInt8], ChannelError>
            do throws(ChannelError) {
                result = .success(try channel.awaitResponse(to: current.id, deadline: current.deadline, inputReady: ready))
            } catch {
                result = .failure(error)
            }
            take(current.id)?.handler(result)
        }
    }
}
