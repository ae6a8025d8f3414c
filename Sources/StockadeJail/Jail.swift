public import StockadeCgroups
public import SystemPackage
public import StockadeSystem
import CStockadeSpawn
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// How and why a jail ended, as `stockade run --report json` prints it.
public struct JailExit: Sendable, Codable, Equatable {
    public enum Reason: String, Sendable, Codable {
        /// The worker exited on its own.
        case exited
        /// The worker was killed by a signal it did not choose (see `signal`).
        case signaled
        /// The wall-clock limit ran out and the jail was killed.
        case timeLimit = "time-limit"
        /// The kernel's OOM killer ended the worker inside its memory budget.
        case outOfMemory = "oom"
        /// The launcher killed the jail on request.
        case killed
    }

    public var reason: Reason
    /// The worker's exit status, when it exited.
    public var exitCode: Int32?
    /// The signal that ended the worker, when one did.
    public var signal: Int32?
    public var signalName: String?
    public var wallSeconds: Double
    /// The shell-style status: exit code, or 128 + signal.
    public var status: Int32
    public var profile: String
    public var usage: CgroupUsage?
}

/// A running jail: its PID 1, the pipe that ties its life to the launcher,
/// and its cgroup.
public final class Jail: Sendable {
    public let process: ProcessHandle
    public var pid: Int32 { process.pid }
    public let cgroup: (any JailCgroup)?
    public let profileName: String
    public let startedAt: ContinuousClock.Instant
    /// The jail's host ids (root launches with a user namespace), held until
    /// the jail has ended.
    public var hostIDs: HostIDRange? { lease?.range }
    private let lease: HostIDLease?
    /// The launcher's end of the sync pipe: the jail sees POLLHUP when it closes.
    private let liveness: FileDescriptor
    /// PID 1 writes the worker's raw wait status here before it exits.
    private let status: FileDescriptor
    private let hasReaper: Bool
    /// What ends the whole jail when sent to PID 1: SIGKILL in a pid
    /// namespace (the kernel kills the rest); outside one, the signal on
    /// which PID 1 kills every process of the jail's Landlock domain.
    private let killSignal: Int32
    private let state = Mutex<State>(State())
    /// The supervisor's view of this jail's denied calls (observation on).
    public let seccompWatch: SeccompWatch?
    /// Why observation was asked for but this jail runs unobserved.
    public let seccompUnobserved: String?
    /// The jail's Landlock denials from the kernel's audit records.
    public let landlockWatch: LandlockWatch?
    /// Why an observed jail's Landlock denials are not counted.
    public let landlockUnobserved: String?

    private struct State {
        var killedFor: JailExit.Reason?
        var exit: JailExit?
        /// The worker's raw wait status, once read by ``reportedStatus()``.
        var workerStatus: Int32?
    }

    /// Readable once PID 1 has written the worker's wait status (or has
    /// exited without one): poll it to learn the worker's end before PID 1
    /// and the jail's namespaces are gone; then ``reportedStatus()``.
    public var statusDescriptor: FileDescriptor { status }

    /// The worker's shell-style status when PID 1 has reported it (call
    /// once ``statusDescriptor`` is readable; it blocks until then); nil
    /// when PID 1 ended without one. ``wait(timeLimit:onStatus:)`` still
    /// reaps and cleans up afterwards.
    public func reportedStatus() -> Int32? {
        if let raw = state.withLock({ $0.workerStatus }) { return ProcessTermination(waitStatus: raw).shellStatus }
        guard hasReaper, let bytes = try? status.readUpTo(4), bytes.count == 4 else { return nil }
        let raw = bytes.withUnsafeBytes { $0.loadUnaligned(as: Int32.self) }
        state.withLock { $0.workerStatus = raw }
        return ProcessTermination(waitStatus: raw).shellStatus
    }

    init(process: ProcessHandle, liveness: FileDescriptor, status: FileDescriptor, cgroup: (any JailCgroup)?,
         hasReaper: Bool, profileName: String, startedAt: ContinuousClock.Instant, hostIDs: HostIDLease? = nil,
         killSignal: Int32 = SIGKILL, seccompWatch: SeccompWatch? = nil, seccompUnobserved: String? = nil,
         landlockWatch: LandlockWatch? = nil, landlockUnobserved: String? = nil) {
        self.landlockWatch = landlockWatch
        self.landlockUnobserved = landlockUnobserved
        self.killSignal = killSignal
        self.seccompWatch = seccompWatch
        self.seccompUnobserved = seccompUnobserved
        self.lease = hostIDs
        self.process = process
        self.liveness = liveness
        self.status = status
        self.cgroup = cgroup
        self.hasReaper = hasReaper
        self.profileName = profileName
        self.startedAt = startedAt
    }

    /// Keeps the jail's host id range held after this process exits, for as
    /// long as the jail's PID 1 lives (an OCI container outlives `create`):
    /// a holder process inherits the range's locks and exits with the jail.
    /// Returns the holder's pid; nil when the jail holds no range.
    public func holdHostIDsUntilExit() throws -> Int32? {
        guard let fds = lease?.lockFDs, !fds.isEmpty else { return nil }
        let pid = fds.withUnsafeBufferPointer { stk_hold_until_exit(process.fd.rawValue, $0.baseAddress, Int32($0.count)) }
        if pid < 0 { throw JailError.launcherStep("fork the host id holder", errno: -pid) }
        return pid
    }

    /// Sends `signal` to the jail's PID 1, which forwards it to the worker.
    public func signal(_ signal: Int32) throws(Errno) {
        try process.send(signal: signal)
    }

    /// Kills everything in the jail (PID 1 first: the kernel then kills the
    /// whole pid namespace; the cgroup catches anything that escaped it).
    public func kill(reason: JailExit.Reason = .killed) {
        state.withLock { if $0.killedFor == nil { $0.killedFor = reason } }
        try? process.send(signal: killSignal)
        try? cgroup?.kill()
    }

    /// Waits for the jail to end, killing it when `timeLimit` runs out, then
    /// reads its accounting and removes its cgroup.
    /// `onStatus` gets the worker's shell-style status as soon as it is
    /// known, before the cgroup is read and removed.
    public func wait(timeLimit: Duration? = nil, onStatus: ((Int32) -> Void)? = nil) throws -> JailExit {
        if let done = state.withLock({ $0.exit }) { return done }
        // Capped far beyond any limit a file or the command line may give
        // (a year), so that the addition cannot overflow.
        let deadline = timeLimit.map { startedAt + min($0, .seconds(Int64(1) << 40)) }
        while true {
            var timeout: Int32 = -1
            if let deadline {
                let left = deadline - .now
                if left <= .zero {
                    kill(reason: .timeLimit)
                    timeout = -1
                } else {
                    timeout = Self.pollTimeout(left)
                }
            }
            if try process.waitForExit(timeoutMilliseconds: timeout) { break }
        }
        return try finish(onStatus: onStatus)
    }

    /// Milliseconds for one poll when `left` remains (rounded up, at least
    /// 1; saturating at Int32.max for any longer duration, so that no time
    /// limit a caller passes can overflow here).
    public static func pollTimeout(_ left: Duration) -> Int32 {
        let (seconds, attoseconds) = left.components
        guard seconds >= 0 else { return 0 }
        guard seconds < Int64(Int32.max / 1000) else { return Int32.max }
        return Int32(seconds * 1000 + attoseconds / 1_000_000_000_000_000 + 1)
    }

    private func finish(onStatus: ((Int32) -> Void)? = nil) throws -> JailExit {
        let pid1 = try process.reap()
        let wall = ContinuousClock.now - startedAt
        var worker = pid1
        if hasReaper {
            if let value = state.withLock({ $0.workerStatus }) {
                worker = ProcessTermination(waitStatus: value)
            } else {
                let raw = (try? status.readUpTo(4)) ?? []
                if raw.count == 4 {
                    let value = raw.withUnsafeBytes { $0.loadUnaligned(as: Int32.self) }
                    worker = ProcessTermination(waitStatus: value)
                }
            }
        }
        onStatus?(worker.shellStatus)
        try? status.close()
        try? liveness.close()
        // Every notified call was answered before its process could exit.
        seccompWatch?.stop()
        // Landlock's audit records come through the kernel's audit thread,
        // the domain's final count when it is freed: wait a moment for them.
        if let landlockWatch {
            usleep(20_000)
            landlockWatch.settle(timeout: .milliseconds(200))
            landlockWatch.stop()
        }
        try? process.fd.close()
        // Anything left in the cgroup (a process that left the pid namespace
        // cannot, but be thorough) dies before the cgroup is read and removed.
        try? cgroup?.kill()
        let usage = try? cgroup?.usage()
        try? cgroup?.remove()
        // Nothing of the jail runs any more: its host ids may go to the next.
        lease?.release()
        let killedFor = state.withLock { $0.killedFor }
        var exit = JailExit(reason: .exited, exitCode: nil, signal: nil, signalName: nil,
                            wallSeconds: wall.inSeconds,
                            status: worker.shellStatus, profile: profileName, usage: usage)
        switch worker {
        case .exited(let code):
            exit.exitCode = code
        case .signaled(let sig, _):
            exit.signal = sig
            exit.signalName = signalName(sig)
            exit.reason = .signaled
        }
        if let killedFor {
            exit.reason = killedFor
        } else if exit.signal == SIGKILL, let kills = usage?.oomKills, kills > 0 {
            exit.reason = .outOfMemory
        }
        state.withLock { $0.exit = exit }
        return exit
    }
}

