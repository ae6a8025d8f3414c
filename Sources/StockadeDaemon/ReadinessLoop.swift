// One thread that waits on many fds: what the daemon watches per worker
// (its jail's pidfd, its stdout and stderr pipes) costs an entry here, not a
// thread of its own. A thousand idle workers would otherwise hold two
// thousand threads, each with its stack and its kernel task, for nothing but
// a blocked wait.
//
// Handlers run on the loop's thread, one at a time: they must not block
// (hand slow work to a queue). An entry is known by a token, never by its
// fd number, so an fd closed and reused elsewhere is never mistaken for it.
import Synchronization
import StockadeSystem
import Foundation
#if canImport(Glibc)
import Glibc
#endif

final class ReadinessLoop: @unchecked Sendable {
    /// What a handler wants next for its fd.
    enum Next {
        /// Wait for the next readiness.
        case keep
        /// Stop watching (the handler closed the fd, or hands it on).
        case remove
        /// Stop watching until then (a rate limit), then wait again.
        case pause(until: ContinuousClock.Instant)
    }

    typealias Handler = @Sendable (_ revents: Int16) -> Next

    /// The jails' pidfds: a readable pidfd is an ended process.
    static let exits = ReadinessLoop(name: "stockaded-exits")
    /// The workers' stdout and stderr pipes.
    static let logs = ReadinessLoop(name: "stockaded-logs")

    private struct Entry {
        var fd: Int32
        var handler: Handler
        var pausedUntil: ContinuousClock.Instant?
    }

    private let name: String
    private let entries = Mutex<[UInt64: Entry]>([:])
    private let nextToken = Atomic<UInt64>(1)
    private let wakeup: PipeEnds
    private let started = Atomic<Bool>(false)

    init(name: String) {
        self.name = name
        wakeup = try! PipeEnds.make()
        // Neither end blocks: a burst of additions fills the pipe at most,
        // and the loop drains whatever is there.
        for fd in [wakeup.read.rawValue, wakeup.write.rawValue] {
            _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
        }
    }

    /// Watches `fd` for input or hang-up until `handler` says otherwise.
    func add(fd: Int32, handler: @escaping Handler) {
        let token = nextToken.add(1, ordering: .relaxed).oldValue
        entries.withLock { $0[token] = Entry(fd: fd, handler: handler) }
        if !started.exchange(true, ordering: .acquiringAndReleasing) {
            Thread.detachNewThread { [self] in run() }
        }
        var byte: UInt8 = 1
        _ = write(wakeup.write.rawValue, &byte, 1)
    }

    /// Entries watched now (for tests and the density bench).
    var count: Int { entries.withLock { $0.count } }

    private func run() {
        Thread.current.name = name
        var scratch = [UInt8](repeating: 0, count: 64)
        while true {
            let now = ContinuousClock.now
            // The fds to wait on (paused ones whose time is up go back in)
            // and the nearest end of a pause.
            var tokens: [UInt64] = []
            var fds: [pollfd] = [pollfd(fd: wakeup.read.rawValue, events: Int16(POLLIN), revents: 0)]
            var nearest: ContinuousClock.Instant?
            entries.withLock { all in
                tokens.reserveCapacity(all.count)
                fds.reserveCapacity(all.count + 1)
                for (token, entry) in all {
                    if let until = entry.pausedUntil {
                        if until > now {
                            nearest = min(nearest ?? until, until)
                            continue
                        }
                        all[token]?.pausedUntil = nil
                    }
                    tokens.append(token)
                    fds.append(pollfd(fd: entry.fd, events: Int16(POLLIN), revents: 0))
                }
            }
            let timeout = nearest.map { Self.milliseconds($0 - now) } ?? -1
            let n = poll(&fds, nfds_t(fds.count), timeout)
            if n < 0 { continue }  // EINTR
            if fds[0].revents != 0 {
                while scratch.withUnsafeMutableBytes({ read(wakeup.read.rawValue, $0.baseAddress, $0.count) }) > 0 {}
            }
            for i in 1..<fds.count where fds[i].revents != 0 {
                let token = tokens[i - 1]
                guard let handler = entries.withLock({ $0[token]?.handler }) else { continue }
                switch handler(fds[i].revents) {
                case .keep: break
                case .remove: _ = entries.withLock { $0.removeValue(forKey: token) }
                case .pause(let until): entries.withLock { $0[token]?.pausedUntil = until }
                }
            }
        }
    }
}

extension ReadinessLoop {
    /// Milliseconds for poll until `left` has passed: at least 1, rounded up.
    static func milliseconds(_ left: Duration) -> Int32 {
        let (seconds, attoseconds) = left.components
        guard seconds >= 0 else { return 1 }
        return Int32(clamping: max(1, seconds * 1000 + attoseconds / 1_000_000_000_000_000 + 1))
    }
}
