// Wakeups: the wait half of a condition for Mutex-guarded state.
import Dispatch
import Foundation
import Synchronization
import Testing
import StockadeSystem

@Suite struct WakeupsTests {
    @Test func aWaitForAConditionThatNeverHoldsEndsAtItsDeadlineWithFalse() {
        let wakeups = Wakeups()
        let start = ContinuousClock.now
        let held = wakeups.wait(until: start + .milliseconds(50)) { false }
        #expect(!held)
        #expect(ContinuousClock.now - start >= .milliseconds(50))
        // The timed-out waiter is gone: a broadcast now wakes nobody.
        wakeups.broadcast()
    }

    @Test func aConditionThatAlreadyHoldsDoesNotWait() {
        #expect(Wakeups().wait(until: nil) { true })
    }

    /// Two threads hand a turn back and forth, each waiting for its own turn
    /// with no deadline: one lost wakeup leaves both waiting for ever, which
    /// the bound turns into a failure.
    @Test func aChangeFollowedByABroadcastIsNeverMissed() {
        let rounds = 20_000
        let turn = Mutex(0)
        let wakeups = Wakeups()
        let finished = DispatchSemaphore(value: 0)
        for parity in 0..<2 {
            Thread {
                for _ in 0..<(rounds / 2) {
                    wakeups.wait { turn.withLock { $0 % 2 == parity } }
                    turn.withLock { $0 += 1 }
                    wakeups.broadcast()
                }
                finished.signal()
            }.start()
        }
        let first = finished.wait(timeout: .now() + 60)
        let second = finished.wait(timeout: .now() + 5)
        #expect(first == .success && second == .success, "a wakeup was lost after \(turn.withLock { $0 }) of \(rounds) turns")
        #expect(turn.withLock { $0 } == rounds)
    }

    /// Waiters with deadlines time out and leave while broadcasts race them.
    @Test func timedOutWaitersLeaveCleanlyWhileBroadcastsRace() {
        let wakeups = Wakeups()
        let stop = Atomic<Bool>(false)
        let broadcaster = DispatchSemaphore(value: 0)
        Thread {
            while !stop.load(ordering: .relaxed) { wakeups.broadcast() }
            broadcaster.signal()
        }.start()
        for _ in 0..<200 {
            #expect(!wakeups.wait(until: ContinuousClock.now + .microseconds(200)) { false })
        }
        stop.store(true, ordering: .relaxed)
        #expect(broadcaster.wait(timeout: .now() + 10) == .success)
    }
}
