public import StockadeCgroups
import SystemPackage
import StockadeSystem
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

/// Why a jail could not be started. Every case reads as one line a person
/// can act on.
public enum JailError: Error, CustomStringConvertible, Sendable {
    /// A step in the child failed: `mount /proc: EPERM (/newroot/proc)`.
    case setupFailed(step: String, number: Int, of: Int, errno: Int32, detail: String)
    /// clone3 itself failed.
    case cloneFailed(errno: Int32, hint: String)
    /// The kernel lacks something the profile needs.
    case missingKernelFeature(String)
    /// A launcher-side step (uid map, cgroup, pipes) failed.
    case launcherStep(String, errno: Int32)
    /// The request itself is wrong (missing bind source, empty command, ...).
    case invalidRequest(String)

    public var description: String {
        switch self {
        case let .setupFailed(step, number, total, errno, detail):
            let where_ = detail.isEmpty ? "" : " (\(detail))"
            return "jail setup failed at \(step): \(errnoName(errno))\(where_) (step \(number) of \(total))"
        case let .cloneFailed(errno, hint):
            return "jail setup failed at clone3: \(errnoName(errno))\(hint.isEmpty ? "" : " (\(hint))")"
        case let .missingKernelFeature(what):
            return "jail setup failed: \(what)"
        case let .launcherStep(step, errno):
            return "jail setup failed at \(step): \(errnoName(errno))"
        case let .invalidRequest(what):
            return what
        }
    }
}

/// Landlock rules ready for the child (computed from the profile).
public struct LaunchLandlock: Sendable, Equatable {
    public var abi: Int32
    public var fsHandled: UInt64
    public var netHandled: UInt64
    public var rules: [Rule]
    public var tcpPorts: [Port]
    public var required: Bool
    /// ABI 6 scopes (abstract unix sockets, signals) confined to the jail's domain.
    public var scoped: UInt64

    public struct Rule: Sendable, Equatable {
        public var path: String
        public var access: UInt64
        public var optional: Bool
        public init(path: String, access: UInt64, optional: Bool) {
            self.path = path
            self.access = access
            self.optional = optional
        }
    }

    public struct Port: Sendable, Equatable {
        public var port: UInt16
        public var access: UInt64
        public init(port: UInt16, access: UInt64) {
            self.port = port
            self.access = access
        }
    }

    public init(abi: Int32, fsHandled: UInt64, netHandled: UInt64, rules: [Rule], tcpPorts: [Port], required: Bool,
                scoped: UInt64 = 0) {
        self.scoped = scoped
        self.abi = abi
        self.fsHandled = fsHandled
        self.netHandled = netHandled
        self.rules = rules
        self.tcpPorts = tcpPorts
        self.required = required
    }
}

/// Everything one launch needs besides the profile.
public struct LaunchRequest: Sendable {
    public var profile: Profile
    /// argv; `command[0]` is looked up in the jail's PATH when it has no '/'.
    public var command: [String]
    /// Mounts added after the profile's (e.g. `--ro-bind` on the command
    /// line), in the order given; they get every check the profile's get.
    public var extraMounts: [MountSpec] = []
    /// Files the launcher read to build this jail besides the profile and
    /// its own binary (a tenants file, a daemon config): no writable bind
    /// may hold them.
    public var launcherFiles: [String] = []
    /// Variables added after the profile's `[env]`.
    public var extraEnvironment: [(String, String)] = []
    /// Launcher fds that appear in the jail as `to` (the channel, stdio
    /// redirections); checked by type (``JailFDs``).
    public var passedFDs: [(from: Int32, to: Int32)] = []
    /// The jail's own pseudo-terminal (the fd of ``PseudoTerminal/peer``), the only
    /// terminal that may be among `passedFDs`; it becomes the controlling
    /// terminal of the jail's new session.
    public var terminal: Int32?
    /// The finished seccomp BPF program (8 bytes per instruction); empty: none.
    public var seccompFilter: [UInt8] = []
    public var seccompFlags: UInt32 = 0
    /// Send this jail's denied calls to ``SeccompSupervisor`` (nil: the
    /// kernel answers them alone, unseen). ``JailSecurity/prepare(_:)``
    /// fills in its program.
    public var seccompObservation: SeccompObservation?
    public var landlock: LaunchLandlock?
    /// The cgroup the jail is born in.
    public var cgroup: (any JailCgroup)?
    /// Device nodes, driver files and /proc entries from the profile's
    /// `[devices]` (filled by ``JailSecurity/prepare(_:)``).
    public var devices: DevicePlan?
    /// Where a root launch takes the jail's host ids from when the profile
    /// sets no `host_base`; nil: ``HostIDPool/configured()``.
    public var idPool: HostIDPool?
    /// An OCI container's additions (``OCILaunch``); nil for every other jail.
    public var oci: OCILaunch?
    /// A jail built ahead of its command (``ViaJail``): the jail's end of
    /// its command socket. `command` is then a placeholder; the worker runs
    /// what arrives on this socket.
    public var viaSocket: Int32?
    /// The caller launches from the process's main thread and waits there
    /// for the jail (a command-line `run`): the main thread outlives the
    /// jail, so it clones the jail itself, without the hand-over to the
    /// spawner thread (a thread, two pipes and two wake-ups at every start).
    /// Ignored on any other thread: a thread that may end before its jail
    /// would take the jail with it (the parent-death signal).
    public var cloneOnMainThread = false

    public init(profile: Profile, command: [String]) {
        self.profile = profile
        self.command = command
    }
}

/// Starts jails: builds the ``SpawnPlan`` (and from it the C plan), clones,
/// maps ids, releases the child, and turns a failed setup step into a
/// ``JailError``.
public enum Launcher {
    /// Starts the jail and returns once the worker has been exec'd.
    public static func launch(_ request: LaunchRequest) throws -> Jail {
        let started = ContinuousClock.now
        let profile = request.profile
        guard let program = request.command.first, !program.isEmpty else {
            throw JailError.invalidRequest("no command given")
        }
        try checkKernel(profile)
        let rootless = getuid() != 0
        let spawnPlan = try SpawnPlan(request)
        defer { spawnPlan.closeRootFD() }
        // PID 1 is stockade-init, opened here while the host's tree is ours.
        let initFD = try InitExecutable.open()
        defer { try? initFD.close() }
        // Root: the jail's own host ids, held until it has ended.
        let lease = try rootless || !profile.namespaces.contains(.user) || request.oci?.idMaps != nil
            ? nil : leaseHostIDs(request)
        var leaseHandedOver = false
        defer { if !leaseHandedOver { lease?.release() } }

        let sync = try PipeEnds.make()
        let errors = try PipeEnds.make()
        let status = try PipeEnds.make()
        var keepParentEnds = false
        var childEndsOpen = true
        // Each fd is closed exactly once: a second close could hit an fd
        // number another thread's launch has reused in the meantime.
        func closeChildEnds() {
            guard childEndsOpen else { return }
            childEndsOpen = false
            try? sync.read.close()
            try? errors.write.close()
            try? status.write.close()
        }
        defer {
            closeChildEnds()
            if !keepParentEnds {
                try? sync.write.close()
                try? status.read.close()
            }
            try? errors.read.close()
        }

        let fds = try JailFDs.plan(request)
        defer { for fd in fds.opened { close(fd) } }
        // Observation: the worker sends the listener that loading its filter
        // returns over this pair (see SeccompSupervisor).
        let observed = request.seccompObservation?.observed
        let notifyPair = try observed.map { _ in try UnixSocketPair.make() }
        if let notifyPair {
            // The worker's pid (as this process sees it) comes with its message.
            var on: Int32 = 1
            setsockopt(notifyPair.0.rawValue, SOL_SOCKET, SO_PASSCRED, &on, socklen_t(MemoryLayout<Int32>.size))
        }
        var notifyChildOpen = notifyPair != nil
        func closeNotifyChildEnd() {
            if notifyChildOpen, let pair = notifyPair { try? pair.1.close() }
            notifyChildOpen = false
        }
        defer {
            closeNotifyChildEnd()
            try? notifyPair?.0.close()
        }
        let arena = PlanArena()
        var plan = try spawnPlan.cPlan(request, program: program, rootless: rootless, fds: fds, initFD: initFD,
                                       chargeIDs: lease?.range, sync: sync, errors: errors, status: status, arena: arena)
        try arena.refuseNUL()
        if let notifyPair {
            plan.notify_fd = notifyPair.1.rawValue
            plan.parent_fds.3 = notifyPair.0.rawValue
            plan.seccomp_flags |= SeccompObservation.listenerFlags
        }
        if request.viaSocket != nil, notifyPair == nil, ViaJail.filterAllowsTheWait(request.seccompFilter) {
            plan.via_filter_first = 1
        }

        // clone3 on the long-lived spawner thread: the parent-death signal
        // follows the thread that cloned, so it must outlive every jail.
        let frozenPlan = UnsafeSendable(plan)
        let before: [(fd: Int32, name: String, type: Int32)] = (request.oci?.enterBeforeClone ?? []).map {
            (fd: $0.fd, name: $0.namespace.procName, type: Int32(truncatingIfNeeded: $0.namespace.cloneFlag))
        }
        let fresh: [(name: String, type: Int32)] = (request.oci?.unshareBeforeClone ?? []).map {
            (name: $0.procName, type: Int32(truncatingIfNeeded: $0.cloneFlag))
        }
        let hostname = request.oci?.hostnameBeforeClone
        let podSysctls = request.oci?.launcherSysctls ?? []
        let spawned: SpawnResult = withExtendedLifetime(arena) {
            SpawnerThread.run(onMainThread: request.cloneOnMainThread) { () -> SpawnResult in
                var plan = frozenPlan.value
                var result = SpawnResult()
                // The namespaces to start in: entered by this thread only
                // (setns of net, ipc and uts is per thread), left right after.
                var left: [(own: Int32, type: Int32, name: String)] = []
                defer {
                    for entered in left.reversed() {
                        let back = stk_setns(entered.own, entered.type)
                        precondition(back == 0, "the spawner thread cannot return to its own \(entered.name) namespace: errno \(errno)")
                        close(entered.own)
                    }
                }
                for ns in before {
                    let own = open("/proc/thread-self/ns/\(ns.name)", O_RDONLY | O_CLOEXEC)
                    guard own >= 0 else {
                        result.entering = (ns.name, errno)
                        return result
                    }
                    guard stk_setns(ns.fd, ns.type) == 0 else {
                        result.entering = (ns.name, errno)
                        close(own)
                        return result
                    }
                    left.append((own, ns.type, ns.name))
                }
                for ns in fresh {
                    let own = open("/proc/thread-self/ns/\(ns.name)", O_RDONLY | O_CLOEXEC)
                    guard own >= 0 else {
                        result.entering = (ns.name, errno)
                        return result
                    }
                    guard stk_unshare(ns.type) == 0 else {
                        result.entering = (ns.name, errno)
                        close(own)
                        return result
                    }
                    left.append((own, ns.type, ns.name))
                }
                if let hostname, fresh.contains(where: { $0.name == "uts" }) {
                    guard stk_sethostname(hostname, hostname.utf8.count) == 0 else {
                        result.entering = ("uts (sethostname \(hostname))", errno)
                        return result
                    }
                }
                if let (key, error) = PodSysctls.writeInThisThread(podSysctls) {
                    result.sysctl = (key, error)
                    return result
                }
                result.pid = stk_spawn(&plan, &result.pidfd, &result.into)
                return result
            }
        }
        if let (name, error) = spawned.entering {
            throw JailError.launcherStep("enter or make the \(name) namespace to clone in (a pod's, which the launcher enters for the clone)",
                                         errno: error)
        }
        if let (key, error) = spawned.sysctl {
            let namespace = podSysctls.first { $0.key == key }.map { " in the pod's \(PodSysctls.name($0.namespace)) namespace" } ?? ""
            throw JailError.launcherStep("write the sysctl \(key)\(namespace)", errno: error)
        }
        let (pid, pidfd, intoCgroup) = (spawned.pid, spawned.pidfd, spawned.into)
        if pid < 0 {
            try checkNamespaces(profile)
            throw JailError.cloneFailed(errno: -pid, hint: cloneHint(errno: -pid, rootless: rootless))
        }
        let process = ProcessHandle(fd: FileDescriptor(rawValue: pidfd), pid: pid)
        // The child's ends belong to the child now.
        closeChildEnds()
        closeNotifyChildEnd()

        func abort(_ error: any Error) -> any Error {
            try? process.send(signal: SIGKILL)
            _ = try? process.reap()
            try? process.fd.close()
            return error
        }

        do {
            if let cgroup = request.cgroup, intoCgroup == 0 {
                try cgroup.attach(pid: pid)
            }
            // A joined user namespace (an OCI pod's, an exec) has its maps already.
            if let maps = request.oci?.idMaps, profile.namespaces.contains(.user) {
                try writeProcFile(pid: pid, "uid_map", maps.uid)
                try writeProcFile(pid: pid, "gid_map", maps.gid)
            } else if profile.namespaces.contains(.user) {
                try writeIDMaps(pid: pid, user: profile.user, hostIDs: lease?.range)
            }
        } catch {
            throw abort(error)
        }

        // Release the child; it now builds the jail and execs.
        let go: [UInt8] = [1]
        do {
            _ = try go.withUnsafeBytes { try sync.write.write($0) }
        } catch {
            throw abort(JailError.launcherStep("release child", errno: (error as? Errno)?.rawValue ?? EIO))
        }
        // The listener arrives before the exec (or never, when a step
        // failed): served from here on, so that no call of the worker waits.
        var watch: SeccompWatch?
        var workerPID: Int32?
        if let notifyPair, let observed, let observation = request.seccompObservation {
            do {
                if let (listener, sender) = try receiveListener(notifyPair.0, errors: errors.read) {
                    watch = SeccompSupervisor.shared.watch(listener: listener, program: observed, options: observation.options)
                    workerPID = sender > 0 ? sender : nil
                }
            } catch {
                throw abort(error)
            }
        }
        var record: [UInt8]
        do {
            func readReport() throws -> [UInt8] {
                do {
                    return try errors.read.readUpTo(MemoryLayout<stk_error>.size)
                } catch {
                    throw JailError.launcherStep("read the child's report", errno: error.rawValue)
                }
            }
            record = try readReport()
            // An OCI container paused for its hooks (a record of
            // STK_STEP_HOOKS with errno 0): run them, then release it again.
            if let hooks = request.oci?.hooks, Self.isHooksPause(record) {
                guard let root = spawnPlan.rootDirectory else {
                    throw JailError.invalidRequest("OCI hooks need the container's root directory")
                }
                try OCILaunch.runHooks(hooks, pid: pid, root: root)
                _ = try go.withUnsafeBytes { try sync.write.write($0) }
                record = try readReport()
            }
        } catch {
            // Kill and reap before letting go of the listener, for the
            // reason given below: the child may be waiting on it.
            let failure = abort(error)
            watch?.stop()
            throw failure
        }
        if !record.isEmpty {
            // The child still holds its copy of the listener (close-on-exec,
            // and the exec did not happen) and exits under its filter: a
            // profile that does not allow exit_group sends that call to the
            // supervisor. Stopping the watch first would leave the call with
            // nobody to answer it and the listener open in the child, so the
            // child would wait for ever. It has reported its step and has
            // nothing left to do: kill it, reap it, then let go of the
            // listener.
            try? process.send(signal: SIGKILL)
            _ = try? process.reap()
            watch?.stop()
            var e = stk_error()
            withUnsafeMutableBytes(of: &e) { raw in
                record.withUnsafeBytes { raw.copyMemory(from: UnsafeRawBufferPointer(rebasing: $0.prefix(raw.count))) }
            }
            let detail = withUnsafeBytes(of: e.detail) { raw in
                String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
            }
            try? process.fd.close()
            throw JailError.setupFailed(step: String(cString: stk_step_name(e.step)), number: Int(e.step),
                                        of: Int(STK_STEP_COUNT.rawValue) - 1, errno: e.err,
                                        detail: detail.replacing("/newroot/", with: "/"))
        }
        keepParentEnds = true
        leaseHandedOver = true
        // Landlock denials of an observed jail, where the kernel reports them.
        var landlockWatch: LandlockWatch?
        var landlockUnobserved: String?
        if let observation = request.seccompObservation, let ll = request.landlock, ll.abi > 0 {
            if let why = LandlockAudit.unavailableReason {
                landlockUnobserved = why
            } else if let worker = workerPID {
                landlockWatch = LandlockAudit.shared.watch(workerPID: worker, onDenial: observation.onLandlockDenial)
            } else {
                landlockUnobserved = "the worker's pid did not come with its seccomp listener"
            }
        }
        return Jail(process: process, liveness: sync.write, status: status.read, cgroup: request.cgroup,
                    hasReaper: plan.use_reaper != 0, profileName: profile.name, startedAt: started, hostIDs: lease,
                    killSignal: profile.namespaces.contains(.pid) ? SIGKILL : STK_SIG_KILL_JAIL,
                    seccompWatch: watch, seccompUnobserved: request.seccompObservation?.unavailable,
                    landlockWatch: landlockWatch, landlockUnobserved: landlockUnobserved)
    }

    /// A whole record naming STK_STEP_HOOKS with errno 0: the child waits for its hooks.
    static func isHooksPause(_ record: [UInt8]) -> Bool {
        guard record.count == MemoryLayout<stk_error>.size else { return false }
        var e = stk_error()
        withUnsafeMutableBytes(of: &e) { raw in record.withUnsafeBytes { raw.copyMemory(from: $0) } }
        return e.step == Int32(STK_STEP_HOOKS.rawValue) && e.err == 0
    }

    /// Waits for the worker's seccomp listener on `socket`, or for the
    /// error pipe to show that the child failed (a record) or exec'd
    /// without sending one; nil in those cases. With the listener comes the
    /// worker's pid in this process's pid namespace (SO_PASSCRED).
    static func receiveListener(_ socket: FileDescriptor, errors: FileDescriptor) throws -> (FileDescriptor, Int32)? {
        var fds = [pollfd(fd: socket.rawValue, events: Int16(POLLIN), revents: 0),
                   pollfd(fd: errors.rawValue, events: Int16(POLLIN), revents: 0)]
        while true {
            let n = poll(&fds, 2, -1)
            if n < 0 {
                if errno == EINTR { continue }
                throw JailError.launcherStep("wait for the seccomp listener", errno: errno)
            }
            if fds[0].revents != 0 { break }
            // The socket's message, when there is one, precedes the exec.
            if fds[1].revents != 0, poll(&fds, 1, 0) == 0 { return nil }
        }
        var listener: Int32 = -1
        var sender: Int32 = -1
        switch stk_recv_listener(socket.rawValue, &listener, &sender) {
        case 1: return (FileDescriptor(rawValue: listener), sender)
        case 0: return nil
        default: throw JailError.launcherStep("receive the seccomp listener", errno: errno)
        }
    }

    static func checkKernel(_ profile: Profile) throws {
        if access(SpawnPlan.staging, F_OK) != 0 {
            throw JailError.missingKernelFeature("\(SpawnPlan.staging) does not exist on the host; the jail's staging root is mounted there")
        }
        // Every mount is resolved with openat2 (Linux 5.6): no fallback that follows links.
        if !SpawnPlan.kernelHasOpenat2 {
            throw JailError.missingKernelFeature("this kernel has no openat2 (Linux 5.6 or newer is needed to resolve mount paths without following symlinks)")
        }
    }

    /// A namespace the profile asks for that this kernel lacks, named;
    /// asked only once clone3 has failed, so a launch that works pays no
    /// look at /proc/self/ns for it.
    static func checkNamespaces(_ profile: Profile) throws {
        for ns in profile.namespaces.sorted() where access("/proc/self/ns/\(ns.procName)", F_OK) != 0 {
            throw JailError.missingKernelFeature("the \(ns.rawValue) namespace is not available on this kernel (no /proc/self/ns/\(ns.procName)); remove \"\(ns.rawValue)\" from [jail] namespaces in \(profile.file)")
        }
    }

    static func cloneHint(errno: Int32, rootless: Bool) -> String {
        switch errno {
        case EPERM where rootless, EACCES where rootless:
            return "unprivileged user namespaces are disabled here (sysctl kernel.unprivileged_userns_clone, or an AppArmor/SELinux policy)"
        case ENOSPC:
            return "too many namespaces (sysctl user.max_user_namespaces and friends)"
        case ENOSYS:
            return "the kernel has no clone3 (Linux 5.3 or newer is needed)"
        case EINVAL:
            return "the kernel rejected a namespace flag; check [jail] namespaces"
        default:
            return ""
        }
    }

    /// The host ids of a root launch: the profile's `host_base` when it sets
    /// one (checked and held like a pool range), else a range of the pool.
    static func leaseHostIDs(_ request: LaunchRequest) throws -> HostIDLease {
        let pool = try request.idPool ?? HostIDPool.configured()
        if let base = request.profile.user.hostBase {
            let place = request.profile.user.hostBaseLine.map { "\(request.profile.file):\($0)" } ?? request.profile.file
            return try HostIDAllocator.acquire(fixedBase: base, lockDirectory: pool.lockDirectory, place: place)
        }
        return try HostIDAllocator.acquire(from: pool)
    }

    /// Rootless: the caller's one uid/gid maps to the profile's ids (setgroups
    /// must be denied first). Root: inside ids 0-65535 map to the jail's own
    /// host range, unprivileged and used by nothing else, so inside uid 0
    /// (used only during set-up) is no host privilege either.
    static func writeIDMaps(pid: Int32, user: Profile.UserSpec, hostIDs: HostIDRange?) throws {
        if let hostIDs {
            try writeProcFile(pid: pid, "uid_map", "0 \(hostIDs.first) \(hostIDs.count)\n")
            try writeProcFile(pid: pid, "gid_map", "0 \(hostIDs.first) \(hostIDs.count)\n")
        } else {
            try writeProcFile(pid: pid, "setgroups", "deny")
            try writeProcFile(pid: pid, "uid_map", "\(user.uid) \(getuid()) 1\n")
            try writeProcFile(pid: pid, "gid_map", "\(user.gid) \(getgid()) 1\n")
        }
    }

    static func writeProcFile(pid: Int32, _ name: String, _ text: String) throws {
        let path = "/proc/\(pid)/\(name)"
        do {
            let fd = try FileDescriptor.open(path, .writeOnly, options: .closeOnExec)
            defer { try? fd.close() }
            // One write, as the kernel wants an id map (and without the
            // generic writeAll, whose first use instantiates its metadata).
            var bytes = text
            let written = try bytes.withUTF8 { try fd.write(UnsafeRawBufferPointer($0)) }
            guard written == bytes.utf8.count else { throw Errno.ioError }
        } catch let e as Errno {
            throw JailError.launcherStep("write \(name)", errno: e.rawValue)
        }
    }
}

/// A value moved to another thread on purpose (the plan's raw pointers stay
/// valid: the arena outlives the call).
struct UnsafeSendable<T>: @unchecked Sendable {
    var value: T
    init(_ value: T) { self.value = value }
}

/// The one thread that calls clone3. A child's parent-death signal fires
/// when the *thread* that cloned it exits, and the Swift runtime retires
/// idle threads; this thread never exits, so jails die with the launcher
/// process and not before. Requests are handed over through two pipes.
final class SpawnerThread: @unchecked Sendable {
    static let shared = SpawnerThread()

    private let callers = Mutex<Void>(())
    private var job: (() -> Void)?
    private let request: PipeEnds
    private let reply: PipeEnds

    private init() {
        request = try! PipeEnds.make()
        reply = try! PipeEnds.make()
        var thread = pthread_t()
        let me = Unmanaged.passRetained(self).toOpaque()
        let rc = pthread_create(&thread, nil, { arg in
            Unmanaged<SpawnerThread>.fromOpaque(arg!).takeUnretainedValue().loop()
        }, me)
        precondition(rc == 0, "cannot start the spawner thread: \(errnoName(rc))")
        pthread_detach(thread)
    }

    private func loop() -> Never {
        var byte: UInt8 = 0
        while true {
            guard Glibc.read(request.read.rawValue, &byte, 1) == 1 else { continue }
            job?()
            _ = Glibc.write(reply.write.rawValue, &byte, 1)
        }
    }

    /// Runs `body` on the spawner thread, or on the calling thread where
    /// that is the main thread and the caller asked for it (see
    /// `LaunchRequest.cloneOnMainThread`); the spawner thread is then never
    /// started.
    static func run<T: Sendable>(onMainThread: Bool, _ body: @escaping @Sendable () -> T) -> T {
        if onMainThread && stk_on_main_thread() == 1 { return body() }
        return shared.run(body)
    }

    func run<T: Sendable>(_ body: @escaping @Sendable () -> T) -> T {
        callers.withLock { _ in
            var result: T?
            job = { result = body() }
            var byte: UInt8 = 1
            while Glibc.write(request.write.rawValue, &byte, 1) != 1 {}
            while Glibc.read(reply.read.rawValue, &byte, 1) != 1 {}
            job = nil
            return result!
        }
    }
}

/// What the spawner thread's clone gave: the child's pid (or -errno) and
/// pidfd, whether it was cloned into its cgroup, or the namespace it could
/// not enter first (name, errno).
private struct SpawnResult: Sendable {
    var pid: pid_t = -1
    var pidfd: Int32 = -1
    var into: Int32 = 0
    var entering: (String, Int32)?
    var sysctl: (String, Int32)?
}
