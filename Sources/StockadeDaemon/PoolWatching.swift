// What a pool holds per idle worker, kept small: a thousand idle workers in
// one daemon are a goal (stockade-bench density).
//   - No thread per worker waits for its jail to end: the jail's pidfd is
//     an entry on one loop (ReadinessLoop.exits), and the end is accounted
//     for on a queue once the pidfd is readable.
//   - Launches run a few at a time: a pool of a thousand starts them as
//     earlier ones finish, not all at once (which would hold a thousand
//     half-built jails, their fds and their threads, and run every
//     handshake into its deadline on a small machine).
import Dispatch
import Foundation

extension TenantPool {
    /// Launches of one pool in flight at once.
    static let concurrentLaunches = max(4, 2 * ProcessInfo.processInfo.activeProcessorCount)

    /// Accounts for the worker's end (``watch(_:)``) once its jail's PID 1
    /// (a forked worker: its own process; the jail is its template's) has
    /// exited; nothing blocks until then.
    func watchExit(_ worker: Worker) {
        let pidfd = (worker.forked?.process ?? worker.jail.process).fd.rawValue
        ReadinessLoop.exits.add(fd: pidfd) { [self] _ in
            // The pidfd stays open (the jail's or the forked worker's wait
            // reaps and closes it): off the loop, since the accounting
            // reads and removes the cgroup, or waits for the template's word.
            DispatchQueue.global().async { [self] in watch(worker) }
            return .remove
        }
    }
}
