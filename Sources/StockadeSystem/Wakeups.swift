// The wait half of a condition variable, for state kept in a
// Synchronization.Mutex (which has no wait of its own).
import Dispatch
import Synchronization

/// Threads waiting for a condition on some Mutex-guarded state.
///
/// Whoever changes that state calls ``broadcast()`` after the change; a
/// waiter calls ``wait(until:_:)`` with a condition that reads the state
/// under its Mutex. A waiter registers its semaphore *before* it tests the
/// condition, so a change followed by a broadcast is never missed: either
/// the test sees the change, or the broadcast finds the semaphore and
/// signals it. Each wait has its own semaphore, signalled at most once.
package final class Wakeups: Sendable {
    private struct Waiters {
        var next: UInt64 = 0
        var list: [(id: UInt64, semaphore: DispatchSemaphore)] = []
    }
    private let waiters = Mutex<Waiters>(Waiters())

    package init() {}

    /// Wakes every thread now waiting, so each tests its condition again.
    package func broadcast() {
        let woken = waiters.withLock { w in
            defer { w.list.removeAll() }
            return w.list.map(\.semaphore)
        }
        for semaphore in woken { semaphore.signal() }
    }

    /// Waits until `condition()` is true or `deadline` (nil: never) has
    /// passed. Returns the condition's last value.
    @discardableResult
    package func wait(until deadline: ContinuousClock.Instant? = nil, _ condition: () -> Bool) -> Bool {
        while true {
            let semaphore = DispatchSemaphore(value: 0)
            let id = waiters.withLock { w in
                defer { w.next += 1 }
                w.list.append((w.next, semaphore))
                return w.next
            }
            if condition() {
                remove(id)
                return true
            }
            if let deadline {
                let left = ContinuousClock.now.duration(to: deadline)
                // Capped at about 34 years, so the product cannot overflow.
                let nanoseconds = left <= .zero ? 0 : min(left.components.seconds, 1 << 30) * 1_000_000_000 + left.components.attoseconds / 1_000_000_000
                if semaphore.wait(timeout: .now() + .nanoseconds(Int(nanoseconds))) == .timedOut {
                    // A broadcast may signal it after this; the semaphore is
                    // dropped with a count above zero, which is allowed.
                    remove(id)
                    return condition()
                }
            } else {
                semaphore.wait()
            }
        }
    }

    private func remove(_ id: UInt64) {
        waiters.withLock { w in w.list.removeAll { $0.id == id } }
    }
}
