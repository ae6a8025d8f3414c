// Jails built before they are asked for (`stockade run --via SOCKET`).
//
// Each pool keeps `ready` jails of its profile fully built: namespaces,
// mounts, cgroup, credentials dropped, PID 1 running stockade-init. Their
// worker waits, before Landlock, seccomp and execve, on a socket only the
// daemon holds. A caller connects to the [via] socket (SOCK_SEQPACKET),
// is checked by SO_PEERCRED against the pool's uids, and sends its stdin,
// stdout and stderr (SCM_RIGHTS) with argv and its environment. The daemon
// checks the fds, builds the jail's command exactly as `stockade run` would
// (the profile's [env], its `pass` names from the caller's environment,
// --setenv) and hands both to one waiting jail, which runs it once. The
// caller gets the exit status; its signals are forwarded; its hang-up
// kills the jail. The jail is then torn down (cgroup removed, host ids
// released) and a new one is built in the background. No jail is used twice.
import StockadeCgroups
import StockadeJail
import StockadeSystem
import CStockadeSpawn
import SystemPackage
import Logging
import Dispatch
import Synchronization
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A jail that is built and waits for its command on `socket`.
final class WaitingJail: Sendable {
    let jail: Jail
    /// The daemon's end of the jail's command socket.
    let socket: FileDescriptor

    init(jail: Jail, socket: FileDescriptor) {
        self.jail = jail
        self.socket = socket
    }

    /// Ends the jail and removes what it had (cgroup, host ids).
    func discard() {
        try? socket.close()
        jail.kill()
        _ = try? jail.wait()
    }
}

/// One pool: its waiting jails and the thread that builds them.
final class JailPool: @unchecked Sendable {
    let config: JailPoolConfig
    private let cgroups: CgroupManager?
    private let logger: Logger
    private let devNull: Int32
    private let launcherFiles: [String]
    private let state = Mutex<State>(State())
    private let wake = DispatchSemaphore(value: 0)
    private let builderDone = DispatchSemaphore(value: 0)

    private struct State {
        var ready: [WaitingJail] = []
        var running = true
        /// Consecutive failed builds (the builder backs off).
        var failures = 0
        var lastError: String?
        /// Jails taken and not yet ended.
        var inUse = 0
    }

    init(config: JailPoolConfig, cgroups: CgroupManager?, logger: Logger, devNull: Int32, launcherFiles: [String]) throws {
        var config = config
        if !config.profile.limits.isEmpty && cgroups == nil {
            // No cgroup here: the profile's budget is held by rlimits where
            // they can hold it, else the profile must waive it.
            do {
                _ = try config.profile.holdLimitsWithoutCgroup(reason: "the daemon runs without cgroups (cgroups = false in [daemon])")
            } catch {
                throw DaemonError("jail pool \(config.name): \(error)")
            }
        }
        self.config = config
        self.cgroups = cgroups
        self.logger = logger
        self.devNull = devNull
        self.launcherFiles = launcherFiles
    }

    var readyCount: Int { state.withLock { $0.ready.count } }

    /// The host pids of the waiting jails' PID 1s (tests).
    var readyPIDs: [Int32] { state.withLock { $0.ready.map(\.jail.pid) } }

    func start() {
        Thread.detachNewThread { [self] in
            builderLoop()
            builderDone.signal()
        }
    }

    /// Kills the waiting jails; jails in use are ended by their connections.
    func stop() {
        state.withLock { $0.running = false }
        wake.signal()
        builderDone.wait()
        let left = state.withLock { s -> [WaitingJail] in
            defer { s.ready = [] }
            return s.ready
        }
        for w in left { w.discard() }
    }

    /// A waiting jail, taken out of the pool for good: a ready one, else
    /// one built now (and the builder woken to refill the pool).
    /// Every take, also a failed one, is followed by one ``replace()``.
    func take() throws -> WaitingJail {
        let (ready, admitted) = state.withLock { s -> (WaitingJail?, Bool) in
            s.inUse += 1
            guard s.inUse <= config.maxRunning else { return (nil, false) }
            return (s.ready.isEmpty ? nil : s.ready.removeFirst(), true)
        }
        guard admitted else {
            throw DaemonError("jail pool \"\(config.name)\" runs \(config.maxRunning) commands already (max_running); try again")
        }
        if let ready { return ready }
        wake.signal()
        return try build()
    }

    /// A taken jail has ended: the builder replaces it now, not while it
    /// ran, so that the build does not compete with the caller's command
    /// for the CPU.
    func replace() {
        state.withLock { $0.inUse -= 1 }
        wake.signal()
    }

    private func builderLoop() {
        while true {
            let (running, need, failures) = state.withLock { ($0.running, $0.ready.count < config.ready, $0.failures) }
            guard running else { return }
            guard need else {
                wake.wait()
                continue
            }
            do {
                let w = try build()
                let kept = state.withLock { s -> Bool in
                    s.failures = 0
                    s.lastError = nil
                    guard s.running else { return false }
                    s.ready.append(w)
                    return true
                }
                if !kept { w.discard() }
            } catch {
                state.withLock {
                    $0.failures += 1
                    $0.lastError = "\(error)"
                }
                logger.error("jail pool: a jail could not be built", metadata: ["pool": "\(config.name)", "error": "\(error)"])
                // 0.1 s, doubling to 10 s, unless woken by a take or a stop.
                let pause = min(10.0, 0.1 * pow(2.0, Double(min(failures, 7))))
                _ = wake.wait(timeout: .now() + pause)
            }
        }
    }

    /// Launches one jail that waits for its command.
    private func build() throws -> WaitingJail {
        let (daemonEnd, jailEnd) = try ViaJail.socketPair()
        var jailEndOpen = true
        defer { if jailEndOpen { try? jailEnd.close() } }
        var request = LaunchRequest(profile: config.profile, command: ViaJail.placeholderCommand)
        request.launcherFiles = launcherFiles
        request.viaSocket = jailEnd.rawValue
        // /dev/null until the caller's own arrive: the daemon's stdio never enters.
        request.passedFDs = [(devNull, 0), (devNull, 1), (devNull, 2)]
        if let cgroups, !config.profile.limits.isEmpty {
            request.cgroup = try cgroups.jail(limits: config.profile.limits)
        }
        let jail: Jail
        do {
            try JailSecurity.prepare(&request)
            jail = try Launcher.launch(request)
        } catch {
            try? request.cgroup?.remove()
            try? daemonEnd.close()
            throw error
        }
        try? jailEnd.close()
        jailEndOpen = false
        return WaitingJail(jail: jail, socket: daemonEnd)
    }
}

/// The `[via]` socket and its pools.
package final class JailPools: @unchecked Sendable {
    let config: ViaConfig
    private let pools: [String: JailPool]
    private let logger: Logger
    private let listener = Mutex<FileDescriptor?>(nil)
    private let active = Mutex<[ObjectIdentifier: Jail]>([:])
    private let running = Atomic<Bool>(false)
    /// The threads that accept callers. Each serves the caller it accepted
    /// and then waits for the next, so that a caller does not wait for a
    /// thread to be made: two wait when the daemon is idle, and the thread
    /// that takes the last waiting place starts another at once.
    /// Open connections are bounded, so that callers (any uid may connect
    /// before it is checked) cannot exhaust threads; one past the bound is
    /// answered and closed.
    private let acceptors = Mutex<Acceptors>(Acceptors())
    private struct Acceptors {
        /// Threads in (or about to enter) `accept`.
        var waiting = 0
        /// Threads serving a caller.
        var serving = 0
    }
    static let maxConnections = 512
    /// Threads kept waiting in `accept` once their caller is served.
    static let spareAcceptors = 2

    /// The signals a caller may forward into its jail.
    static let forwardable: Set<Int32> = [SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGALRM, SIGWINCH, SIGCONT, SIGTSTP]

    init(config: ViaConfig, cgroups: CgroupManager?, logger: Logger, devNull: Int32, launcherFiles: [String]) throws {
        // A rootless daemon's jails run with its own uid: a caller of
        // another uid could reach that uid's files through them.
        let me = getuid()
        if me != 0 {
            for pool in config.pools {
                if let other = pool.uids.first(where: { $0 != me }) {
                    throw DaemonError("[via.pool.\(pool.name)] uids: uid \(other) is not this daemon's (\(me)); the jails of a daemon not run as root run with its uid, so only that uid may use them")
                }
            }
        }
        self.config = config
        self.logger = logger
        var pools: [String: JailPool] = [:]
        for p in config.pools {
            pools[p.name] = try JailPool(config: p, cgroups: cgroups, logger: logger, devNull: devNull, launcherFiles: launcherFiles)
        }
        self.pools = pools
    }

    /// Waiting jails per pool (tests and metrics).
    package func readyCounts() -> [String: Int] { pools.mapValues(\.readyCount) }

    /// The host pids of a pool's waiting jails' PID 1s (tests).
    package func readyPIDs(_ pool: String) -> [Int32] { pools[pool]?.readyPIDs ?? [] }

    /// Jails running a caller's command now.
    package var activeCount: Int { active.withLock { $0.count } }

    package func start() throws {
        let fd = try Self.listen(path: config.socketPath, mode: config.socketMode)
        listener.withLock { $0 = fd }
        running.store(true, ordering: .releasing)
        for p in pools.values { p.start() }
        for _ in 0..<Self.spareAcceptors {
            Thread.detachNewThread { [self] in acceptLoop(fd) }
        }
        logger.info("jail pools listening", metadata: ["socket": "\(config.socketPath)", "pools": "\(pools.keys.sorted())"])
    }

    package func stop() {
        guard running.exchange(false, ordering: .acquiringAndReleasing) else { return }
        if let fd = listener.withLock({ $0 }) {
            // Every accept now fails at once; the fd is closed only when no
            // thread is in (or about to enter) one, so none accepts on a
            // number reused meanwhile.
            _ = shutdown(fd.rawValue, Int32(SHUT_RDWR))
            while acceptors.withLock({ $0.waiting }) > 0 { usleep(1_000) }
            try? fd.close()
            listener.withLock { $0 = nil }
            unlink(config.socketPath)
        }
        for p in pools.values { p.stop() }
        // Jails in use die now; their connections send the callers their end.
        for jail in active.withLock({ Array($0.values) }) { jail.kill() }
    }

    static func listen(path: String, mode: UInt32) throws -> FileDescriptor {
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: addr.sun_path) else { throw DaemonError("[via] socket: path too long") }
        withUnsafeMutableBytes(of: &addr.sun_path) { raw in for (i, b) in bytes.enumerated() { raw[i] = b } }
        let fd = socket(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw DaemonError("[via] socket: socket: \(errnoName(errno))") }
        // The daemon's instance lock is held: a socket file left here is a dead daemon's.
        var st = stat()
        if lstat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFSOCK { unlink(path) }
        let bound = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard bound == 0 else {
            let e = errno
            close(fd)
            throw DaemonError("[via] socket: cannot bind \(path): \(errnoName(e))")
        }
        guard chmod(path, mode_t(mode)) == 0, Glibc.listen(fd, 128) == 0 else {
            let e = errno
            close(fd)
            unlink(path)
            throw DaemonError("[via] socket: \(path): \(errnoName(e))")
        }
        return FileDescriptor(rawValue: fd)
    }

    private func acceptLoop(_ listening: FileDescriptor) {
        // The request's buffer, this thread's for every caller it serves.
        var buffer = [UInt8](repeating: 0, count: ViaWire.maxMessage + 1)
        while true {
            // Checked and counted under the lock `stop` reads: a thread that
            // passes here while the daemon runs is waited for before the
            // listener's fd is closed.
            let enter = acceptors.withLock { a -> Bool in
                guard running.load(ordering: .acquiring) else { return false }
                a.waiting += 1
                return true
            }
            guard enter else { return }
            let conn = stk_accept_cloexec(listening.rawValue)
            let failure = conn < 0 ? errno : 0
            let admitted = acceptors.withLock { a -> Bool in
                a.waiting -= 1
                guard conn >= 0, a.serving < Self.maxConnections else { return false }
                a.serving += 1
                return true
            }
            if conn < 0 {
                if failure == EINTR || failure == ECONNABORTED { continue }
                if failure == EMFILE || failure == ENFILE || failure == ENOBUFS || failure == ENOMEM {
                    usleep(10_000)
                    continue
                }
                return
            }
            let fd = FileDescriptor(rawValue: conn)
            guard admitted else {
                answer(fd, ["error", "the daemon has \(Self.maxConnections) run --via callers already; try again", "125"])
                try? fd.close()
                continue
            }
            // This thread took the last waiting place: another one waits
            // from now on, so that a caller who sends nothing (it may hold
            // its connection for the receive timeout) keeps no one else
            // waiting. With spare threads waiting, as for a caller alone,
            // none is made.
            let start = acceptors.withLock { a -> Bool in
                guard a.waiting == 0, running.load(ordering: .acquiring) else { return false }
                a.waiting += 1  // counted now, so that no second thread starts for it
                return true
            }
            if start {
                Thread.detachNewThread { [self] in
                    acceptors.withLock { $0.waiting -= 1 }
                    acceptLoop(listening)
                }
            }
            serve(fd, buffer: &buffer)
            let leave = acceptors.withLock { a -> Bool in
                a.serving -= 1
                return a.waiting >= Self.spareAcceptors
            }
            if leave { return }
        }
    }

    // MARK: One caller

    private func answer(_ conn: FileDescriptor, _ fields: [String]) {
        let bytes = ViaWire.encode(magic: ViaWire.answerMagic, [fields])
        _ = try? bytes.withUnsafeBytes { try conn.sendMessage($0) }
    }

    private func refuse(_ conn: FileDescriptor, _ message: String, uid: UInt32?, pool: String?) {
        logger.warning("run --via refused", metadata: ["uid": "\(uid.map(String.init) ?? "?")", "pool": "\(pool ?? "?")", "why": "\(message)"])
        answer(conn, ["error", message, "125"])
    }

    private func serve(_ conn: FileDescriptor, buffer: inout [UInt8]) {
        defer { try? conn.close() }
        var cred = PeerCredentials(pid: 0, uid: 0, gid: 0)
        var len = socklen_t(MemoryLayout<PeerCredentials>.size)
        guard getsockopt(conn.rawValue, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0 else {
            refuse(conn, "the caller's credentials could not be read", uid: nil, pool: nil)
            return
        }
        let uid = cred.uid
        // A uid that may use no pool is answered and closed before anything
        // is read: it cannot hold one of the connection slots.
        guard config.pools.contains(where: { $0.uids.contains(uid) }) else {
            refuse(conn, "uid \(uid) may not use any jail pool of this daemon", uid: uid, pool: nil)
            return
        }
        // The request comes at once: a caller that holds a connection open
        // without one is dropped.
        try? conn.setReceiveTimeout(milliseconds: 10_000)
        let received: ReceivedMessage
        do {
            received = try buffer.withUnsafeMutableBytes { try conn.receiveMessage(into: $0, maxDescriptors: 3) }
        } catch {
            return
        }
        var fds = received.descriptors
        defer { for fd in fds { try? fd.close() } }
        try? conn.setReceiveTimeout(milliseconds: nil)
        guard received.byteCount > 0 else { return }
        guard received.byteCount <= ViaWire.maxMessage,
              let lists = ViaWire.decode(buffer[..<received.byteCount], magic: ViaWire.requestMagic, lists: 4),
              lists[0].count == 1 else {
            refuse(conn, "malformed request (a client of another version?)", uid: uid, pool: nil)
            return
        }
        let name = lists[0][0]
        let argv = lists[1]
        // The pool: named, or the only one this uid may use.
        let usable = config.pools.filter { $0.uids.contains(uid) }.map(\.name)
        let poolName: String
        if name.isEmpty {
            guard usable.count == 1 else {
                refuse(conn, usable.isEmpty ? "uid \(uid) may not use any jail pool of this daemon"
                       : "name a jail pool with --profile (this daemon's pools for uid \(uid): \(usable.joined(separator: ", ")))",
                       uid: uid, pool: nil)
                return
            }
            poolName = usable[0]
        } else {
            poolName = name
        }
        // A pool this uid may not use reads as one that does not exist, and
        // only the pools it may use are named to it: a caller learns nothing
        // of the others.
        guard let pool = pools[poolName], pool.config.uids.contains(uid) else {
            refuse(conn, "uid \(uid) may use no jail pool \"\(poolName)\"" + (usable.isEmpty ? "" : " (its pools: \(usable.joined(separator: ", ")))"),
                   uid: uid, pool: poolName)
            return
        }
        guard !received.controlTruncated, fds.count == 3 else {
            refuse(conn, "expected the caller's stdin, stdout and stderr with the request", uid: uid, pool: poolName)
            return
        }
        for (i, fd) in fds.enumerated() {
            if let why = ViaJail.refusal(callerFD: fd.rawValue, number: i) {
                refuse(conn, why, uid: uid, pool: poolName)
                return
            }
        }
        var setenv: [(String, String)] = []
        for pair in lists[3] {
            guard let eq = pair.firstIndex(of: "="), eq != pair.startIndex else {
                refuse(conn, "--setenv takes name=value, got \"\(pair)\"", uid: uid, pool: poolName)
                return
            }
            setenv.append((String(pair[..<eq]), String(pair[pair.index(after: eq)...])))
        }
        let message: [UInt8]
        do {
            message = try ViaJail.jailMessage(profile: pool.config.profile, argv: argv, callerEnvironment: lists[2], setenv: setenv)
        } catch {
            refuse(conn, "\(error)", uid: uid, pool: poolName)
            return
        }
        guard running.load(ordering: .acquiring) else {
            refuse(conn, "the daemon is stopping", uid: uid, pool: poolName)
            return
        }
        // A waiting jail whose worker died meanwhile refuses the message
        // (EPIPE): discarded, and the next one taken.
        // Whatever becomes of the jails taken here, the pool is refilled
        // once this caller is done.
        var takes = 0
        defer { for _ in 0..<takes { pool.replace() } }
        var taken: WaitingJail?
        for _ in 0..<3 {
            let w: WaitingJail
            takes += 1
            do {
                w = try pool.take()
            } catch {
                refuse(conn, "\(error)", uid: uid, pool: poolName)
                return
            }
            do {
                try message.withUnsafeBytes { _ = try w.socket.sendMessage($0, passing: fds) }
                taken = w
                break
            } catch {
                logger.warning("jail pool: a waiting jail was gone", metadata: ["pool": "\(poolName)", "error": "\(error)"])
                w.discard()
            }
        }
        // The caller's fds are the jail's now; the daemon keeps none.
        for fd in fds { try? fd.close() }
        fds = []
        guard let w = taken else {
            refuse(conn, "no jail of pool \"\(poolName)\" could take the command", uid: uid, pool: poolName)
            return
        }
        supervise(w, conn: conn, timeLimit: pool.config.profile.timeLimit)
    }

    /// Waits for the jail's end, forwarding the caller's signals, and sends
    /// the caller its status before the jail is torn down.
    private func supervise(_ w: WaitingJail, conn: FileDescriptor, timeLimit: Duration?) {
        let jail = w.jail
        let key = ObjectIdentifier(jail)
        active.withLock { $0[key] = jail }
        defer { active.withLock { _ = $0.removeValue(forKey: key) } }
        if !running.load(ordering: .acquiring) { jail.kill() }
        let deadline = timeLimit.map { ContinuousClock.now + min($0, .seconds(Int64(1) << 40)) }
        var failure: JailError?
        var timedOut = false
        var socketOpen = true
        var callerGone = false
        var scratch = [UInt8](repeating: 0, count: 512)
        // The jail's end is seen on its status pipe: PID 1 writes the
        // worker's status there before it exits and the kernel tears the
        // namespaces down, which the caller need not wait for.
        while true {
            var entries = [pollfd(fd: jail.statusDescriptor.rawValue, events: Int16(POLLIN), revents: 0),
                           pollfd(fd: callerGone ? -1 : conn.rawValue, events: Int16(POLLIN), revents: 0),
                           pollfd(fd: socketOpen ? w.socket.rawValue : -1, events: Int16(POLLIN), revents: 0)]
            var timeout: Int32 = -1
            if let deadline, !timedOut {
                let left = deadline - .now
                if left <= .zero {
                    timedOut = true
                    jail.kill(reason: .timeLimit)
                } else {
                    timeout = Jail.pollTimeout(left)
                }
            }
            let n = poll(&entries, 3, timeout)
            if n < 0 && errno != EINTR { jail.kill(); break }
            if entries[0].revents != 0 { break }
            if entries[2].revents != 0 {
                // A failure record (execve, Landlock, seccomp), or end of
                // file: the command was exec'd (the socket is close-on-exec).
                let got = (try? scratch.withUnsafeMutableBytes { try w.socket.receiveMessage(into: $0, maxDescriptors: 0) })?.byteCount ?? 0
                if got > 0 {
                    failure = ViaJail.failure(Array(scratch[..<got]))
                    if failure == nil { jail.kill() }  // not what the trampoline sends
                }
                try? w.socket.close()
                socketOpen = false
            }
            if entries[1].revents != 0 {
                let got = (try? scratch.withUnsafeMutableBytes { try conn.receiveMessage(into: $0, maxDescriptors: 0) })
                if let got, got.byteCount > 0 {
                    if let lists = ViaWire.decode(scratch[..<got.byteCount], magic: ViaWire.signalMagic, lists: 1),
                       lists[0].count == 1, let sig = Int32(lists[0][0]), Self.forwardable.contains(sig) {
                        try? jail.signal(sig)
                    }
                } else {
                    // The caller hung up (or its socket failed): the jail ends with it.
                    callerGone = true
                    jail.kill()
                }
            }
        }
        if socketOpen {
            // A failure record the worker sent just before it exited, not
            // yet read when PID 1's exit ended the loop.
            let got = scratch.withUnsafeMutableBytes { recv(w.socket.rawValue, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
            if got > 0 { failure = ViaJail.failure(Array(scratch[..<got])) }
            try? w.socket.close()
        }
        // PID 1 reported the worker's status, or ended without one (killed):
        // then its own end, after the teardown, gives the status.
        let reported = jail.reportedStatus()
        func tell(_ status: Int32) {
            if callerGone { return }
            if let failure {
                answer(conn, ["error", failure.description, "125"])
            } else {
                answer(conn, ["exit", String(status), timedOut ? JailExit.Reason.timeLimit.rawValue : "exited"])
            }
        }
        if let reported { tell(reported) }
        let exit = try? jail.wait { status in if reported == nil { tell(status) } }
        if exit == nil, reported == nil, !callerGone { answer(conn, ["error", "the jail could not be waited for", "125"]) }
    }
}
