// A template worker: one jailed process that loads the model once and, on
// the daemon's word, forks workers that share the loaded pages
// copy-on-write (the SDK's serve_template; docs/PROTOCOL.md, "Templates").
//
// The template has no request channel. Its control channel is a unix
// seqpacket socket pair: the daemon's end receives the senders' credentials
// and a pidfd of each sender from the kernel (SO_PASSCRED, SO_PASSPIDFD),
// so the daemon learns which process a forked worker is from the kernel,
// never from what the template says. For each worker the daemon makes a
// fresh channel (``ChannelBootstrap``: its own socket pair, its own PSK in a
// sealed memfd) and sends the worker's two descriptors with a FORK message;
// the forked child announces itself (FORKED, from its own pid), closes the
// control channel and everything of the template's, and answers the Noise
// handshake on its own channel.
package import StockadeChannel
package import StockadeCgroups
package import StockadeJail
package import StockadeSystem
import SystemPackage
import Synchronization
package import Logging
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// An error of a template or of one fork.
package struct TemplateError: Error, CustomStringConvertible, Sendable {
    package var description: String
    init(_ description: String) { self.description = description }
}

/// The control channel's messages: magic, kind, 3 reserved bytes, number
/// (u32), value (i32), big-endian; 20 bytes each.
enum TemplateMessage {
    static let magic = Array("STKTMPL1".utf8)
    static let size = 20
    static let ready: UInt8 = 1, fork: UInt8 = 2, forked: UInt8 = 3, exited: UInt8 = 4, refused: UInt8 = 5, spare: UInt8 = 6
    /// REFUSED values above any errno.
    static let refusedThreads: Int32 = 1 << 16
    static let refusedDescriptors: Int32 = (1 << 16) + 1

    static func encode(kind: UInt8, number: UInt32, value: Int32 = 0) -> [UInt8] {
        var out = magic
        out += [kind, 0, 0, 0]
        for shift in stride(from: 24, through: 0, by: -8) { out.append(UInt8(truncatingIfNeeded: number >> UInt32(shift))) }
        let v = UInt32(bitPattern: value)
        for shift in stride(from: 24, through: 0, by: -8) { out.append(UInt8(truncatingIfNeeded: v >> UInt32(shift))) }
        return out
    }

    static func decode(_ b: [UInt8]) -> (kind: UInt8, number: UInt32, value: Int32)? {
        guard b.count == size, Array(b[0..<8]) == magic, b[9] == 0, b[10] == 0, b[11] == 0 else { return nil }
        func u32(_ at: Int) -> UInt32 { b[at..<at + 4].reduce(0) { $0 << 8 | UInt32($1) } }
        return (b[8], u32(12), Int32(bitPattern: u32(16)))
    }

    /// Why a fork was refused, in words.
    static func refusal(_ value: Int32) -> String {
        if value > refusedThreads + 0, value < refusedThreads + (1 << 15) {
            let threads = value - refusedThreads
            return "the template runs \(threads) threads and forks only with one (set OPENBLAS_NUM_THREADS=1, OMP_NUM_THREADS=1 "
                + "and TOKENIZERS_PARALLELISM=false before numpy and the tokenizer load, and start no thread in load())"
        }
        if value == refusedDescriptors { return "the FORK message did not carry exactly two descriptors" }
        return "fork() failed: \(String(cString: strerror(value))) (errno \(value)); the jail's pids budget may be spent"
    }
}

/// A worker forked from a template: its own channel, its pidfd from the kernel.
package final class ForkedWorker: Sendable {
    package let id: String
    package let number: UInt32
    /// The worker's pid in the daemon's pid namespace.
    package let pid: Int32
    package let process: ProcessHandle
    package let channel: SecureChannel
    package let startedAt = ContinuousClock.now
    /// Why the daemon killed it, if it did.
    private let killedFor = Mutex<JailExit.Reason?>(nil)
    /// The worker's own cgroup below the template's, when it has one.
    package let cgroup: ForkGroup?
    /// The wait status the template reported, waiting up to the given time.
    private let reportedStatus: @Sendable (Duration) -> Int32?

    init(id: String, number: UInt32, process: ProcessHandle, channel: SecureChannel, cgroup: ForkGroup?,
         reportedStatus: @escaping @Sendable (Duration) -> Int32?) {
        self.id = id
        self.number = number
        self.pid = process.pid
        self.process = process
        self.channel = channel
        self.cgroup = cgroup
        self.reportedStatus = reportedStatus
    }

    /// SIGKILL through the pidfd (never a recycled pid).
    package func kill(reason: JailExit.Reason = .killed) {
        killedFor.withLock { if $0 == nil { $0 = reason } }
        try? process.send(signal: SIGKILL)
    }

    /// Waits up to `milliseconds` for the process to end (its parent, the
    /// template, reaps it); true when it has ended.
    package func waitForExit(milliseconds: Int32) -> Bool {
        (try? process.waitForExit(timeoutMilliseconds: milliseconds)) ?? true
    }

    /// Blocks until the worker has ended and says how, from the status the
    /// template reaped (waiting a moment for its report) and its cgroup's
    /// accounting (then removes the cgroup).
    package func wait(profile: String) -> JailExit {
        while !waitForExit(milliseconds: -1) {}
        let status = reportedStatus(.seconds(2))
        let killedFor = killedFor.withLock { $0 }
        var exit = JailExit(forkedWaitStatus: status, killedFor: killedFor,
                            wallSeconds: (ContinuousClock.now - startedAt).inSeconds, profile: profile)
        if let cgroup {
            exit.usage = cgroup.usage()
            if killedFor == nil, exit.signal == SIGKILL, let kills = exit.usage?.oomKills, kills > 0 {
                exit.reason = .outOfMemory
            }
            try? cgroup.remove()
        }
        return exit
    }

    deinit {
        try? process.fd.close()
    }
}

/// A template's jail, its control channel and the reader of that channel.
package final class WorkerTemplate: @unchecked Sendable {
    /// The descriptor number of the control channel inside the jail.
    package static let controlFD: Int32 = 3
    package static let environmentVariable = "STOCKADE_TEMPLATE"

    package let jail: Jail
    /// The template process (the jail's command; PID 1 is stockade-init).
    package let process: ProcessHandle
    private let control: FileDescriptor
    private let logger: Logger

    private enum Outcome { case forked(ProcessHandle, ForkGroup?), refused(String), unmoved(String) }
    private struct State {
        var nextNumber: UInt32 = 1
        /// Spares that announced themselves (SPARE), by pid, already moved
        /// into the cgroup they will have as workers.
        var spares: [Int32: (process: ProcessHandle, group: ForkGroup)] = [:]
        var outcomes: [UInt32: Outcome] = [:]
        var waiting: Set<UInt32> = []
        var live: [UInt32: Int32] = [:]
        /// Wait statuses the template reported, until a worker's watcher takes them.
        var reported: [UInt32: Int32] = [:]
        /// Why the control channel ended; nil while it is open.
        var ended: String?
        var readerDone = false
    }
    private let state = Mutex<State>(State())
    private let wakeups = Wakeups()
    /// Called (from the reader thread) with a forked worker's number and
    /// wait status when the template has reaped it.
    private let onExit: @Sendable (UInt32, Int32) -> Void
    /// Each fork's own budget, in a cgroup below the jail's; nil: forks
    /// share the jail's cgroup.
    private let forkLimits: LimitsSection?

    /// Launches the template in a jail built from `request` (the caller's
    /// profile, mounts, stdio and environment), with the control channel at
    /// fd 3, and waits up to `readyTimeout` for it to load and say READY.
    /// With `forkLimits`, each fork gets a cgroup of its own with them below
    /// the jail's, which must then be a ``JailGroup`` made with `forks: true`.
    package static func launch(_ request: LaunchRequest, readyTimeout: Duration = .seconds(120), logger: Logger,
                               forkLimits: LimitsSection? = nil,
                               onExit: @escaping @Sendable (UInt32, Int32) -> Void = { _, _ in }) throws -> WorkerTemplate {
        if forkLimits != nil, !(request.cgroup is JailGroup) {
            throw TemplateError("a cgroup per forked worker needs the template's jail in a cgroup made for forks")
        }
        var fds: [Int32] = [-1, -1]
        guard socketpair(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &fds) == 0 else {
            throw TemplateError("socketpair for the template's control channel: \(String(cString: strerror(errno)))")
        }
        let mine = FileDescriptor(rawValue: fds[0]), theirs = FileDescriptor(rawValue: fds[1])
        var on: Int32 = 1
        for (option, name) in [(soPassCred, "SO_PASSCRED"), (soPassPidfd, "SO_PASSPIDFD")]
            where setsockopt(mine.rawValue, SOL_SOCKET, option, &on, socklen_t(MemoryLayout<Int32>.size)) != 0 {
            let e = errno
            try? mine.close()
            try? theirs.close()
            throw TemplateError("setsockopt \(name) on the control channel: \(String(cString: strerror(e)))"
                + (name == "SO_PASSPIDFD" ? " (templates need Linux 6.5 or later)" : ""))
        }
        var request = request
        request.passedFDs.append((theirs.rawValue, controlFD))
        request.extraEnvironment.append((environmentVariable, "ctl=\(controlFD)"))
        let jail: Jail
        do {
            jail = try Launcher.launch(request)
        } catch {
            try? mine.close()
            try? theirs.close()
            throw error
        }
        try? theirs.close()
        // READY comes from the template process itself: its pidfd is the kernel's.
        let process: ProcessHandle
        do {
            guard try mine.waitReadable(timeoutMilliseconds: Int(readyTimeout.inMilliseconds)) else {
                throw TemplateError("the template did not say READY within \(readyTimeout) (still loading?)")
            }
            guard let m = try receive(mine), m.kind == TemplateMessage.ready, let pidfd = m.pidfd, let pid = m.pid else {
                throw TemplateError("the template closed its control channel or sent something else before READY")
            }
            if m.value != 1 {
                try? pidfd.close()
                throw TemplateError("after loading, \(TemplateMessage.refusal(TemplateMessage.refusedThreads + m.value))")
            }
            process = ProcessHandle(fd: pidfd, pid: pid)
        } catch {
            // A template that failed while loading is ending on its own:
            // its exit status says more than our kill would.
            if (try? jail.process.waitForExit(timeoutMilliseconds: 1_000)) != true { jail.kill() }
            let exit = try? jail.wait()
            try? mine.close()
            // How it ended says why when it died while loading.
            throw TemplateError("\(error); the template \(describe(exit))")
        }
        let template = WorkerTemplate(jail: jail, process: process, control: mine,
                                      logger: logger, forkLimits: forkLimits, onExit: onExit)
        Thread.detachNewThread { template.readLoop() }
        return template
    }

    private init(jail: Jail, process: ProcessHandle, control: FileDescriptor, logger: Logger,
                 forkLimits: LimitsSection?, onExit: @escaping @Sendable (UInt32, Int32) -> Void) {
        self.jail = jail
        self.process = process
        self.control = control
        self.logger = logger
        self.forkLimits = forkLimits
        self.onExit = onExit
    }

    /// Forks a worker: a fresh channel and key, sent over the control
    /// channel; waits up to `timeout` for the child to announce itself and
    /// answer the handshake.
    package func fork(tenant: String, worker id: String, limits: ChannelLimits = ChannelLimits(),
                      timeout: Duration = .seconds(10)) throws -> ForkedWorker {
        // One suite (the SDK takes either): the first handshake message goes
        // out with the socket, before the fork exists, and the worker answers
        // it, its suite and its hello in one write.
        let bootstrap = try ChannelBootstrap(tenant: tenant, worker: id, suites: [ChannelBootstrap.defaultSuites[0]], limits: limits)
        try bootstrap.sendFirstMessage()
        let number: UInt32 = try state.withLock { s in
            if let why = s.ended { throw TemplateError("the template is gone: \(why)") }
            defer { s.nextNumber &+= 1 }
            s.waiting.insert(s.nextNumber)
            return s.nextNumber
        }
        let message = TemplateMessage.encode(kind: TemplateMessage.fork, number: number)
        do {
            _ = try message.withUnsafeBytes {
                try control.sendMessage($0, passing: [bootstrap.workerSocket, bootstrap.paramsMemfd])
            }
        } catch {
            _ = state.withLock { $0.waiting.remove(number) }
            throw TemplateError("sending FORK to the template: \(error)")
        }
        // The template and the child hold them now; ours would keep a dead
        // child's channel from showing end of stream.
        bootstrap.closeWorkerEnds()
        let deadline = ContinuousClock.now + timeout
        // The handshake runs while FORKED is on its way to the reader: the
        // child sends FORKED before it answers the handshake, so it is here
        // by the time the handshake is done (one wakeup less per fork). A
        // refused fork ends the handshake at once: nobody holds the
        // worker's end of the socket then.
        var channelLogger = logger
        channelLogger[metadataKey: "worker"] = "\(id)"
        let handshake: Result<SecureChannel, ChannelError>
        do throws(ChannelError) {
            handshake = .success(try bootstrap.connect(logger: channelLogger,
                                                       handshakeTimeoutMilliseconds: max(1, Int(timeout.inMilliseconds))))
        } catch {
            handshake = .failure(error)
        }
        let wait: ContinuousClock.Instant = if case .success = handshake { deadline } else { min(deadline, .now + .seconds(2)) }
        wakeups.wait(until: wait) { state.withLock { $0.outcomes[number] != nil || $0.ended != nil } }
        let outcome: Outcome? = state.withLock { s in
            s.waiting.remove(number)
            return s.outcomes.removeValue(forKey: number)
        }
        switch (outcome, handshake) {
        case (.forked(let process, let group)?, .success(let channel)):
            // Under the jail's memory budget the kernel's OOM killer then
            // picks a forked worker (the one that grew) before the template,
            // whose end would take every sibling with it. Raising a score
            // needs no privilege; the worker cannot lower it again.
            Self.raiseOOMScore(pid: process.pid)
            return ForkedWorker(id: id, number: number, process: process, channel: channel, cgroup: group) { [weak self] wait in
                self?.takeStatus(of: number, waitingUpTo: wait)
            }
        case (.forked(let process, let group)?, .failure(let error)):
            try? process.send(signal: SIGKILL)
            try? group?.remove()
            try? process.fd.close()
            throw TemplateError("worker \(id) forked (pid \(process.pid)) but its handshake failed: \(error)")
        case (.refused(let why)?, _):
            if case .success(let channel) = handshake { channel.close() }
            throw TemplateError("the template refused to fork worker \(id): \(why)")
        case (.unmoved(let why)?, _):
            // The cgroup stays, with what it holds.
            if case .success(let channel) = handshake { channel.close() }
            throw TemplateError("worker \(id): \(why)")
        case (nil, _):
            if case .success(let channel) = handshake { channel.close() }
            let why = state.withLock { $0.ended } ?? "no FORKED message from the worker within \(timeout)"
            throw TemplateError("fork of worker \(id): \(why)")
        }
    }

    /// The most spares the daemon keeps a cgroup ready for: the SDK makes
    /// one at a time, and a template that announces more gets no more.
    static let sparesTracked = 2

    /// A spare that announced itself goes into the cgroup it will have as
    /// a worker now, while nothing waits for it: the move is a write of
    /// cgroup.procs, which on cgroup v1 waits for an RCU grace period (10 ms
    /// and more on a loaded host). Spares that ended unused are dropped first.
    private func placeSpare(_ spare: ProcessHandle) {
        guard let forkLimits, let jailGroup = jail.cgroup as? JailGroup else {
            try? spare.fd.close()
            return
        }
        let ended: [(process: ProcessHandle, group: ForkGroup)] = state.withLock { s in
            let gone = s.spares.filter { (try? $0.value.process.waitForExit(timeoutMilliseconds: 0)) != false }
            for pid in gone.keys { s.spares[pid] = nil }
            return Array(gone.values)
        }
        for e in ended {
            try? e.group.remove()
            try? e.process.fd.close()
        }
        guard state.withLock({ $0.spares.count }) < Self.sparesTracked else {
            try? spare.fd.close()
            logger.warning("more spares announced than the daemon keeps cgroups for; this one gets its cgroup when it is used")
            return
        }
        do {
            let group = try jailGroup.makeForkGroup(limits: forkLimits)
            do {
                try Self.move(spare, into: group)
                state.withLock { $0.spares[spare.pid] = (spare, group) }
            } catch {
                if group.processes.isEmpty { try? group.remove() }
                try? spare.fd.close()
            }
        } catch {
            try? spare.fd.close()
            logger.error("no cgroup for a spare", metadata: ["error": "\(error)"])
        }
    }

    /// The cgroup of a fork that sent FORKED: its own as a spare when it
    /// was one (its pidfd from then still shows this pid, so the pid was
    /// not reused in between and it is the same process), else a new one
    /// it is moved into now. Returns the refusal when it cannot be placed.
    private func placeFork(_ fork: ProcessHandle) -> (ForkGroup?, Outcome?) {
        guard let forkLimits, let jailGroup = jail.cgroup as? JailGroup else { return (nil, nil) }
        if let spare = state.withLock({ $0.spares.removeValue(forKey: fork.pid) }) {
            let same = Self.pidfdPid(spare.process.fd) == fork.pid
            try? spare.process.fd.close()
            if same { return (spare.group, nil) }
            try? spare.group.remove()
        }
        let group: ForkGroup
        do {
            group = try jailGroup.makeForkGroup(limits: forkLimits)
        } catch {
            return (nil, .refused("its cgroup: \(error)"))
        }
        do {
            try Self.move(fork, into: group)
            return (group, nil)
        } catch {
            // The fork had ended; whatever is there now came with a pid
            // reused within microseconds and is not killed.
            let strangers = group.processes
            guard strangers.isEmpty else {
                logger.error("a process not of this template is in a fork's cgroup; it is left there",
                             metadata: ["cgroup": "\(group.path)", "pids": "\(strangers)"])
                return (nil, .unmoved("moving it into its cgroup \(group.path): \(error)"))
            }
            try? group.remove()
            return (nil, .refused("moving it into its cgroup \(group.path): \(error)"))
        }
    }

    /// Moves a forked worker into its cgroup by its pid, tied to the
    /// process by its pidfd: a pid is not given to another process until
    /// its process is reaped, and a pidfd's fdinfo says -1 from then on; so
    /// when the pidfd still shows the pid after the write, the write moved
    /// this process. A worker that ended meanwhile (a sibling may kill it)
    /// fails the fork, and what the cgroup holds stays there to be killed
    /// with it: on the (pid-space-wrapping) chance that the pid was reused,
    /// the cgroup is logged by whoever removes it.
    static func move(_ process: ProcessHandle, into group: ForkGroup) throws {
        guard pidfdPid(process.fd) == process.pid else {
            throw TemplateError("worker pid \(process.pid) ended before it could be moved")
        }
        try group.attach(pid: process.pid)
        guard pidfdPid(process.fd) == process.pid else {
            throw TemplateError("worker pid \(process.pid) ended while it was moved")
        }
    }

    /// The pid a pidfd refers to in this process's pid namespace, from
    /// `/proc/self/fdinfo`; nil once the process has been reaped (-1 there).
    static func pidfdPid(_ fd: FileDescriptor) -> Int32? {
        let info = open("/proc/self/fdinfo/\(fd.rawValue)", O_RDONLY | O_CLOEXEC)
        guard info >= 0 else { return nil }
        defer { close(info) }
        var buffer = [UInt8](repeating: 0, count: 512)
        let n = buffer.withUnsafeMutableBytes { read(info, $0.baseAddress, $0.count) }
        guard n > 0 else { return nil }
        for line in String(decoding: buffer[0..<n], as: UTF8.self).split(separator: "\n") where line.hasPrefix("Pid:") {
            guard let pid = Int32(line.dropFirst(4).trimmingCharacters(in: .whitespaces)), pid > 0 else { return nil }
            return pid
        }
        return nil
    }

    /// The oom_score_adj of every forked worker: above the template's 0.
    package static let forkedOOMScoreAdjustment = 500

    private static func raiseOOMScore(pid: Int32) {
        let fd = open("/proc/\(pid)/oom_score_adj", O_WRONLY | O_CLOEXEC | O_NOFOLLOW)
        guard fd >= 0 else { return }
        defer { close(fd) }
        let text = Array("\(forkedOOMScoreAdjustment)\n".utf8)
        _ = text.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
    }

    /// The forked workers alive now, by number, with their pids.
    package var liveWorkers: [UInt32: Int32] { state.withLock { $0.live } }

    /// Why the control channel ended, nil while the template serves.
    package var endedReason: String? { state.withLock { $0.ended } }

    /// The wait status the template reported for worker `number`, waiting
    /// up to `wait` for it; nil when none came.
    func takeStatus(of number: UInt32, waitingUpTo wait: Duration) -> Int32? {
        wakeups.wait(until: ContinuousClock.now + wait) { state.withLock { $0.reported[number] != nil || $0.readerDone } }
        return state.withLock { $0.reported.removeValue(forKey: number) }
    }

    /// Closes the control channel: the template kills and reaps its forked
    /// workers and exits. Waits up to `grace` for it, then kills the jail.
    /// Whoever waits on the jail reaps it (``stop(grace:)`` does).
    package func shutdown(grace: Duration = .seconds(5)) {
        try? control.shutdownBoth()
        if (try? process.waitForExit(timeoutMilliseconds: Int32(grace.inMilliseconds))) != true {
            jail.kill()
        }
    }

    /// ``shutdown(grace:)``, then reaps the jail and waits for the reader.
    package func stop(grace: Duration = .seconds(5)) -> JailExit? {
        shutdown(grace: grace)
        let exit = try? jail.wait()
        wakeups.wait(until: ContinuousClock.now + .seconds(5)) { state.withLock { $0.readerDone } }
        return exit
    }

    private func readLoop() {
        var why = "the template closed its control channel"
        while true {
            let m: (kind: UInt8, number: UInt32, value: Int32, pidfd: FileDescriptor?, pid: Int32?)?
            do {
                m = try Self.receive(control)
            } catch {
                why = "reading the control channel: \(error)"
                break
            }
            guard let m else { break }
            switch m.kind {
            case TemplateMessage.forked:
                guard let pidfd = m.pidfd, let pid = m.pid, pid != process.pid else {
                    try? m.pidfd?.close()
                    logger.error("a FORKED message without the sender's pidfd, or from the template itself; ignored",
                                 metadata: ["number": "\(m.number)"])
                    continue
                }
                let handle = ProcessHandle(fd: pidfd, pid: pid)
                let expected: Bool = state.withLock { s in s.waiting.contains(m.number) && s.outcomes[m.number] == nil }
                guard expected else {
                    try? pidfd.close()
                    logger.error("a FORKED message for no fork the daemon is waiting on; ignored", metadata: ["number": "\(m.number)", "pid": "\(pid)"])
                    break
                }
                // Into its own cgroup before the daemon hands it a request
                // (its handshake runs meanwhile): a spare is there already.
                let (group, refusal) = placeFork(handle)
                let taken: Bool = state.withLock { s in
                    guard s.waiting.contains(m.number), s.outcomes[m.number] == nil else { return false }
                    if let refusal {
                        s.outcomes[m.number] = refusal
                        return false
                    }
                    s.outcomes[m.number] = .forked(handle, group)
                    s.live[m.number] = pid
                    return true
                }
                if !taken {
                    try? handle.send(signal: SIGKILL)
                    try? pidfd.close()
                    if refusal == nil { try? group?.remove() }
                }
            case TemplateMessage.spare:
                guard let pidfd = m.pidfd, let pid = m.pid, pid != process.pid else {
                    try? m.pidfd?.close()
                    logger.error("a SPARE message without the sender's pidfd, or from the template itself; ignored")
                    continue
                }
                placeSpare(ProcessHandle(fd: pidfd, pid: pid))
            case TemplateMessage.refused:
                try? m.pidfd?.close()
                state.withLock { s in
                    if s.waiting.contains(m.number) { s.outcomes[m.number] = .refused(TemplateMessage.refusal(m.value)) }
                }
            case TemplateMessage.exited:
                try? m.pidfd?.close()
                let known = state.withLock { s in
                    guard s.live.removeValue(forKey: m.number) != nil else { return false }
                    s.reported[m.number] = m.value
                    return true
                }
                if known { onExit(m.number, m.value) }
            default:
                try? m.pidfd?.close()
                logger.error("an unexpected control message; ignored", metadata: ["kind": "\(m.kind)"])
            }
            wakeups.broadcast()
        }
        let spares = state.withLock { s in
            defer { s.spares = [:] }
            return Array(s.spares.values)
        }
        // Their cgroups go with the jail's.
        for spare in spares { try? spare.process.fd.close() }
        let orphans: [UInt32] = state.withLock { s in
            s.ended = why
            s.readerDone = true
            defer { s.live = [:] }
            for n in s.live.keys { s.reported[n] = Int32(SIGKILL) }
            return Array(s.live.keys)
        }
        // The forked workers end with the template (PR_SET_PDEATHSIG and the
        // jail's pid namespace); their exits are no longer reported one by one.
        for n in orphans { onExit(n, Int32(SIGKILL)) }
        wakeups.broadcast()
    }

    /// One control message with its sender's pidfd and pid (from the
    /// kernel); nil at the end of the channel. Any other descriptor that
    /// arrives is closed: the daemon takes none from a jail.
    private static func receive(_ fd: FileDescriptor) throws
        -> (kind: UInt8, number: UInt32, value: Int32, pidfd: FileDescriptor?, pid: Int32?)? {
        var buffer = [UInt8](repeating: 0, count: TemplateMessage.size + 1)
        let controlSpace = 256
        let control = UnsafeMutableRawPointer.allocate(byteCount: controlSpace, alignment: MemoryLayout<cmsghdr>.alignment)
        defer { control.deallocate() }
        var pidfd: FileDescriptor?
        var pid: Int32?
        var others: [FileDescriptor] = []
        let count: Int = try buffer.withUnsafeMutableBytes { raw throws -> Int in
            var iov = iovec(iov_base: raw.baseAddress, iov_len: raw.count)
            return try withUnsafeMutablePointer(to: &iov) { iovp throws -> Int in
                var header = msghdr()
                header.msg_iov = iovp
                header.msg_iovlen = 1
                header.msg_control = control
                header.msg_controllen = controlSpace
                let n = try retryingSyscall { recvmsg(fd.rawValue, &header, Int32(MSG_CMSG_CLOEXEC)) }
                let headerSize = MemoryLayout<cmsghdr>.size
                let align = MemoryLayout<Int>.size
                func aligned(_ x: Int) -> Int { (x + align - 1) & ~(align - 1) }
                var offset = 0
                while offset + headerSize <= header.msg_controllen {
                    let c = (control + offset).assumingMemoryBound(to: cmsghdr.self)
                    let len = c.pointee.cmsg_len
                    guard len >= headerSize, offset + len <= header.msg_controllen else { break }
                    let data = control + offset + aligned(headerSize)
                    let dataLength = len - aligned(headerSize)
                    if c.pointee.cmsg_level == SOL_SOCKET {
                        if c.pointee.cmsg_type == scmPidfd, dataLength >= 4 {
                            pidfd = FileDescriptor(rawValue: data.loadUnaligned(as: Int32.self))
                        } else if c.pointee.cmsg_type == scmCredentials, dataLength >= 12 {
                            // struct ucred { pid_t pid; uid_t uid; gid_t gid; }
                            pid = data.loadUnaligned(as: Int32.self)
                        } else if c.pointee.cmsg_type == Int32(SCM_RIGHTS) {
                            for i in 0..<(dataLength / 4) {
                                others.append(FileDescriptor(rawValue: data.loadUnaligned(fromByteOffset: i * 4, as: Int32.self)))
                            }
                        }
                    }
                    offset += aligned(len)
                }
                return n
            }
        }
        for o in others { try? o.close() }
        if count == 0 {
            try? pidfd?.close()
            return nil
        }
        guard let m = TemplateMessage.decode(Array(buffer[0..<count])) else {
            try? pidfd?.close()
            return (0, 0, 0, nil, nil)
        }
        // A pid of 0 in the credentials: the sender is in no pid namespace
        // the daemon can see; its pidfd is not trusted either.
        if pid == nil || pid == 0 {
            try? pidfd?.close()
            return (m.kind, m.number, m.value, nil, nil)
        }
        return (m.kind, m.number, m.value, pidfd, pid)
    }

    deinit {
        try? control.close()
        try? process.fd.close()
    }
}

/// SO_PASSCRED and SCM_CREDENTIALS: the kernel attaches the sender's
/// pid, uid and gid, translated into the receiver's namespaces.
private let soPassCred: Int32 = 16
private let scmCredentials: Int32 = 2
/// SO_PASSPIDFD and SCM_PIDFD (Linux 6.5): the kernel attaches a pidfd of
/// the sending process to each message. Not in every libc's headers.
private let soPassPidfd: Int32 = 76
private let scmPidfd: Int32 = 4
