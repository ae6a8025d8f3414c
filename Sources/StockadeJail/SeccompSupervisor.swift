public import StockadeSeccomp
import StockadeSystem
public import SystemPackage
import CStockadeSpawn
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// One system call that reached the supervisor through a jail's seccomp
/// listener. Only register values: the arguments are the caller's registers
/// at the call (no memory of the caller is read, so nothing here can change
/// under the supervisor's feet).
public struct SeccompEvent: Sendable, CustomStringConvertible {
    public var number: Int32
    public var name: String
    /// `AUDIT_ARCH_*` of the call (always the native one: the prelude kills others).
    public var arch: UInt32
    public var args: [UInt64]
    public var instructionPointer: UInt64
    /// The calling thread's id in the launcher's pid namespace.
    public var thread: Int32
    /// `/proc/<thread>/exe`, read while the call waited (checked with
    /// SECCOMP_IOCTL_NOTIF_ID_VALID); nil when not asked for or gone.
    public var executable: String?
    /// What the unobserved filter answers for this call, and who decided it.
    public var verdict: SeccompAction
    public var origin: ObservedSeccomp.Origin
    public var time: ContinuousClock.Instant

    /// `socket(AF_NETLINK, SOCK_RAW, 0)`.
    public var description: String { SyscallDescription.describe(number: number, args: args) }
}

/// How the supervisor answers one notification.
public enum SeccompAnswer: Sendable, Equatable {
    /// What the unobserved filter answers: the profile's errno. A kill or
    /// trap verdict (only notified when asked to) kills the calling thread's
    /// process.
    case verdict
    /// Fail the call with this errno.
    case errno(Int32)
    /// Let the call run (SECCOMP_USER_NOTIF_FLAG_CONTINUE). The kernel then
    /// runs it as if the filter had allowed it; there is no second check,
    /// so this is for recording runs, never for deciding on arguments in
    /// the caller's memory (which another thread can change after the
    /// supervisor looked). Refused for the always-on prelude's denials:
    /// those are answered with the prelude's errno.
    case continueCall
    /// No answer: the caller stays blocked until it is killed (the handler
    /// is ending the jail). It never runs another instruction of its own.
    case withhold
}

/// Per-jail settings of the supervisor.
public struct SeccompWatchOptions: Sendable {
    /// The answer when there is no handler.
    public var answer: SeccompAnswer = .verdict
    /// At most this many notifications a second (with a burst of as many)
    /// are served for this jail; the rest wait in the kernel, so a jail that
    /// floods denials slows itself down and nobody else. nil: no bound.
    public var ratePerSecond: Int? = 5000
    /// Read the executable for every event; otherwise only for the first
    /// example of each call.
    public var executableForEvery = false
    /// Called on the supervisor thread for every notification before it is
    /// answered; returns the answer. It must not block: every jail of this
    /// process waits while it runs. `firstOfCall`: the first of this call
    /// number in this jail.
    public var handler: (@Sendable (_ event: SeccompEvent, _ firstOfCall: Bool) -> SeccompAnswer)?

    public init(answer: SeccompAnswer = .verdict, ratePerSecond: Int? = 5000, executableForEvery: Bool = false,
                handler: (@Sendable (SeccompEvent, Bool) -> SeccompAnswer)? = nil) {
        self.answer = answer
        self.ratePerSecond = ratePerSecond
        self.executableForEvery = executableForEvery
        self.handler = handler
    }
}

/// What a watched jail's calls came to: counts by call name, each with its
/// first example.
public struct SeccompTally: Sendable, Codable, Equatable {
    public struct Call: Sendable, Codable, Equatable {
        public var name: String
        public var number: Int32
        public var count: Int
        /// The first occurrence, decoded: `socket(AF_NETLINK, SOCK_RAW, 0)`.
        public var example: String
        public var executable: String?
        /// The answer the first occurrence got: `errno:EPERM`, `continue`, `withheld`.
        public var answer: String
        /// `profile` or `prelude` (the always-on hardening).
        public var origin: String
    }

    public var total: Int = 0
    public var calls: [String: Call] = [:]
    /// Times this jail's notifications waited because it was over its rate.
    public var throttled: Int = 0

    public init() {}

    /// `{name: count}`.
    public var byCall: [String: Int] { calls.mapValues(\.count) }
    /// The calls, most frequent first.
    public var sorted: [Call] { calls.values.sorted { $0.count != $1.count ? $0.count > $1.count : $0.name < $1.name } }
}

/// One jail's listener as the supervisor serves it. Its tally can be read
/// from any thread; the supervisor closes the listener once the jail has
/// no process left (or ``stop()`` is called).
public final class SeccompWatch: Sendable {
    public let options: SeccompWatchOptions
    public let program: ObservedSeccomp
    let listener: FileDescriptor
    private let state = Mutex<State>(State())
    private let closedSignal = Mutex<Bool>(false)

    struct State {
        var tally = SeccompTally()
        var tokens: Double = 0
        var lastRefill: ContinuousClock.Instant = .now
        var throttledUntil: ContinuousClock.Instant?
    }

    init(listener: FileDescriptor, program: ObservedSeccomp, options: SeccompWatchOptions) {
        self.listener = listener
        self.program = program
        self.options = options
        state.withLock { $0.tokens = Double(options.ratePerSecond ?? 0) }
    }

    /// The counts so far.
    public func tally() -> SeccompTally { state.withLock { $0.tally } }

    /// Whether the supervisor has let go of the listener.
    public var isClosed: Bool { closedSignal.withLock { $0 } }

    /// Stops serving this jail: the listener is closed by the supervisor
    /// thread (its calls then fail with ENOSYS, as with no listener).
    public func stop() { SeccompSupervisor.shared.remove(self) }

    func markClosed() { closedSignal.withLock { $0 = true } }

    /// Takes one token; false (and the time to wait) when over the rate.
    func admit(now: ContinuousClock.Instant) -> Bool {
        guard let rate = options.ratePerSecond, rate > 0 else { return true }
        return state.withLock { s in
            let elapsed = Double((now - s.lastRefill).inSeconds)
            s.tokens = min(Double(rate), s.tokens + elapsed * Double(rate))
            s.lastRefill = now
            if s.tokens >= 1 {
                s.tokens -= 1
                s.throttledUntil = nil
                return true
            }
            s.throttledUntil = now + .nanoseconds(Int64((1 - s.tokens) / Double(rate) * 1e9) + 1)
            s.tally.throttled += 1
            return false
        }
    }

    var throttledUntil: ContinuousClock.Instant? { state.withLock { $0.throttledUntil } }

    /// Counts one event; true when it is the first of its call.
    func record(_ event: SeccompEvent, answer: SeccompAnswer) -> Bool {
        state.withLock { s in
            s.tally.total += 1
            if s.tally.calls[event.name] != nil {
                s.tally.calls[event.name]!.count += 1
                return false
            }
            s.tally.calls[event.name] = .init(name: event.name, number: event.number, count: 1, example: event.description,
                                              executable: event.executable, answer: Self.describe(answer, event),
                                              origin: event.origin.rawValue)
            return true
        }
    }

    func isFirst(_ name: String) -> Bool { state.withLock { $0.tally.calls[name] == nil } }

    static func describe(_ answer: SeccompAnswer, _ event: SeccompEvent) -> String {
        switch answer {
        case .verdict: return event.verdict.description
        case .errno(let e): return SeccompAction.errno(e).description
        case .continueCall: return "continue"
        case .withhold: return "withheld"
        }
    }
}

/// The seccomp user-notification supervisor: one thread per process serves
/// the listeners of every jail this process launched with observation on,
/// in one poll loop. It never waits on a jail: a listener is read only
/// when the kernel says a notification is pending, answers are
/// SECCOMP_IOCTL_NOTIF_SEND (which does not block), each listener is served
/// at most ``batch`` notifications per round (round robin), and a listener
/// over its rate is left out of the poll until its bucket refills, so its
/// jail's calls wait in the kernel while every other jail is served.
public final class SeccompSupervisor: @unchecked Sendable {
    public static let shared = SeccompSupervisor()

    /// SECCOMP_USER_NOTIF_FLAG_CONTINUE.
    static let continueFlag: UInt32 = 1

    /// Notifications served per listener per round.
    static let batch = 64

    /// Why this kernel cannot observe seccomp denials; nil when it can.
    public static let unavailableReason: String? = {
        if stk_seccomp_action_available(SeccompAction.retUserNotif) == 0 { return nil }
        let e = errno
        if e == EOPNOTSUPP || e == EINVAL || e == ENOSYS {
            return "this kernel has no seccomp user notification (Linux 5.0 or newer); denied calls are answered in the kernel with the profile's errno and are not counted"
        }
        return "seccomp(SECCOMP_GET_ACTION_AVAIL, SECCOMP_RET_USER_NOTIF) failed: \(errnoName(e)); denied calls are answered in the kernel and not counted"
    }()

    /// A pipe whose read end wakes the loop (non-blocking at both ends).
    private let wake: PipeEnds
    private let pending = Mutex<(add: [SeccompWatch], remove: [ObjectIdentifier])>(([], []))
    /// Owned by the supervisor thread.
    private var watches: [SeccompWatch] = []
    private let started = Mutex<Bool>(false)

    private init() {
        do {
            wake = try PipeEnds.make()
        } catch {
            preconditionFailure("a pipe for the seccomp supervisor: \(errnoName(error.rawValue))")
        }
        _ = stk_fcntl_int(wake.read.rawValue, F_SETFL, O_NONBLOCK)
        _ = stk_fcntl_int(wake.write.rawValue, F_SETFL, O_NONBLOCK)
    }

    /// Starts serving `listener` (which the supervisor now owns and closes).
    public func watch(listener: FileDescriptor, program: ObservedSeccomp, options: SeccompWatchOptions) -> SeccompWatch {
        let w = SeccompWatch(listener: listener, program: program, options: options)
        pending.withLock { $0.add.append(w) }
        startIfNeeded()
        poke()
        return w
    }

    func remove(_ w: SeccompWatch) {
        pending.withLock { $0.remove.append(ObjectIdentifier(w)) }
        poke()
    }

    private func poke() {
        var one: UInt8 = 1
        _ = Glibc.write(wake.write.rawValue, &one, 1)
    }

    private func startIfNeeded() {
        let first = started.withLock { s -> Bool in
            defer { s = true }
            return !s
        }
        guard first else { return }
        var thread = pthread_t()
        let me = Unmanaged.passRetained(self).toOpaque()
        let rc = pthread_create(&thread, nil, { arg in
            Unmanaged<SeccompSupervisor>.fromOpaque(arg!).takeUnretainedValue().loop()
        }, me)
        precondition(rc == 0, "cannot start the seccomp supervisor thread: \(errnoName(rc))")
        pthread_detach(thread)
    }

    private func takePending() {
        let (add, remove) = pending.withLock { p in
            defer { p = ([], []) }
            return (p.add, p.remove)
        }
        watches += add
        for id in remove {
            if let i = watches.firstIndex(where: { ObjectIdentifier($0) == id }) { close(watches.remove(at: i)) }
        }
    }

    private func close(_ w: SeccompWatch) {
        try? w.listener.close()
        w.markClosed()
    }

    private func loop() -> Never {
        var fds: [pollfd] = []
        var polled: [SeccompWatch] = []
        while true {
            takePending()
            let now = ContinuousClock.now
            fds.removeAll(keepingCapacity: true)
            polled.removeAll(keepingCapacity: true)
            fds.append(pollfd(fd: wake.read.rawValue, events: Int16(POLLIN), revents: 0))
            var timeout: Int32 = -1
            for w in watches {
                if let until = w.throttledUntil, until > now {
                    let ms = Jail.pollTimeout(until - now)
                    timeout = timeout < 0 ? ms : min(timeout, ms)
                    continue
                }
                fds.append(pollfd(fd: w.listener.rawValue, events: Int16(POLLIN), revents: 0))
                polled.append(w)
            }
            let n = poll(&fds, nfds_t(fds.count), timeout)
            if n < 0 { continue }
            if fds[0].revents != 0 {
                var drain = [UInt8](repeating: 0, count: 64)
                while Glibc.read(wake.read.rawValue, &drain, drain.count) > 0 {}
            }
            var ended: [SeccompWatch] = []
            for (i, w) in polled.enumerated() {
                let revents = Int32(fds[i + 1].revents)
                if revents & Int32(POLLIN) != 0 {
                    serve(w)
                } else if revents & (Int32(POLLHUP) | Int32(POLLERR) | Int32(POLLNVAL)) != 0 {
                    // No process of the jail holds the filter any more.
                    ended.append(w)
                }
            }
            for w in ended {
                watches.removeAll { $0 === w }
                close(w)
            }
        }
    }

    /// Up to ``batch`` notifications of one listener.
    private func serve(_ w: SeccompWatch) {
        var n = stk_notification()
        for _ in 0..<Self.batch {
            var ready = pollfd(fd: w.listener.rawValue, events: Int16(POLLIN), revents: 0)
            guard poll(&ready, 1, 0) == 1, ready.revents & Int16(POLLIN) != 0 else { return }
            let now = ContinuousClock.now
            guard w.admit(now: now) else { return }
            guard stk_notify_recv(w.listener.rawValue, &n) == 0 else {
                // ENOENT: the caller died before it was received; EINTR: try again later.
                return
            }
            handle(n, for: w, at: now)
        }
    }

    private func handle(_ n: stk_notification, for w: SeccompWatch, at now: ContinuousClock.Instant) {
        let args = [n.args.0, n.args.1, n.args.2, n.args.3, n.args.4, n.args.5]
        let data = SeccompData(nr: n.nr, arch: n.arch, instructionPointer: n.ip, args: args)
        let (verdict, origin) = w.program.verdict(for: data)
        let name = SyscallDescription.name(of: n.nr)
        var event = SeccompEvent(number: n.nr, name: name, arch: n.arch, args: args, instructionPointer: n.ip,
                                 thread: Int32(bitPattern: n.pid), executable: nil, verdict: verdict, origin: origin, time: now)
        let first = w.isFirst(name)
        if first || w.options.executableForEvery {
            event.executable = Self.executable(of: event.thread, listener: w.listener, id: n.id)
        }
        var answer = w.options.handler?(event, first) ?? w.options.answer
        // The always-on prelude is never weakened, whoever asks.
        if answer == .continueCall, origin == .prelude { answer = .verdict }
        _ = w.record(event, answer: answer)
        switch answer {
        case .withhold:
            return
        case .continueCall:
            _ = stk_notify_send(w.listener.rawValue, n.id, 0, 0, SeccompSupervisor.continueFlag)
        case .errno(let e):
            _ = stk_notify_send(w.listener.rawValue, n.id, 0, -e, 0)
        case .verdict:
            switch verdict {
            case .errno(let e):
                _ = stk_notify_send(w.listener.rawValue, n.id, 0, -e, 0)
            case .allow, .log:
                _ = stk_notify_send(w.listener.rawValue, n.id, 0, 0, SeccompSupervisor.continueFlag)
            case .killProcess, .killThread, .trap, .notify, .trace:
                // Kill the caller's process while it still waits for this
                // answer (the id check makes sure the pid is still it), and
                // never answer.
                if stk_notify_id_valid(w.listener.rawValue, n.id) == 0 {
                    _ = Glibc.kill(event.thread, SIGKILL)
                }
            }
        }
    }

    /// `/proc/<tid>/exe`, trusted only if the call is still waiting
    /// afterwards (the tid cannot have been reused in between).
    static func executable(of tid: Int32, listener: FileDescriptor, id: UInt64) -> String? {
        var buffer = [CChar](repeating: 0, count: 4096)
        let n = readlink("/proc/\(tid)/exe", &buffer, buffer.count - 1)
        guard n > 0, stk_notify_id_valid(listener.rawValue, id) == 0 else { return nil }
        return String(decoding: buffer[..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}

/// A launch's request to observe its jail's calls through the supervisor.
public struct SeccompObservation: Sendable {
    /// Which verdicts notify (denial monitoring: ``SeccompNotifySet/denials``).
    public var notify: SeccompNotifySet
    public var options: SeccompWatchOptions
    /// The rewritten filter and its verdicts. ``JailSecurity/prepare(_:)``
    /// builds it from the profile; a caller with its own program sets it
    /// (with `program.observing(...)`) and the request's `seccompFilter`.
    public var observed: ObservedSeccomp?
    /// Set when this jail cannot be observed (the kernel lacks user
    /// notification, or the filter denies the hand-over): it then runs with
    /// the plain filter, and ``Jail/seccompUnobserved`` says why.
    public var unavailable: String?

    public init(notify: SeccompNotifySet = .denials, options: SeccompWatchOptions = SeccompWatchOptions(),
                observed: ObservedSeccomp? = nil) {
        self.notify = notify
        self.options = options
        self.observed = observed
    }

    /// SECCOMP_FILTER_FLAG_NEW_LISTENER | WAIT_KILLABLE_RECV (the child
    /// drops the second on kernels before 6.0).
    static let listenerFlags: UInt32 = 1 << 3 | 1 << 5

    /// The worker sends the listener with sendmsg after its filter is
    /// loaded: the filter must let that through in the kernel.
    public static func handoverProblem(_ observed: ObservedSeccomp) -> String? {
        guard let sendmsg = Syscalls.number(of: "sendmsg") else { return "sendmsg is unknown here" }
        if observed.allowsInKernel(sendmsg, args: [256, 0, 0x4000 /* MSG_NOSIGNAL */]) { return nil }
        return "the profile does not allow sendmsg, which hands the seccomp listener to the launcher; denied calls are answered in the kernel and not counted"
    }
}
