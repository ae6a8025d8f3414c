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
    /// Mounts added after the profile's (e.g. `--ro-bind` on the command line).
    public var extraMounts: [MountSpec] = []
    /// Variables added after the profile's `[env]`.
    public var extraEnvironment: [(String, String)] = []
    /// Launcher fds that appear in the jail as `to` (the channel, stdio redirections).
    public var passedFDs: [(from: Int32, to: Int32)] = []
    /// The finished seccomp BPF program (8 bytes per instruction); empty: none.
    public var seccompFilter: [UInt8] = []
    public var seccompFlags: UInt32 = 0
    public var landlock: LaunchLandlock?
    /// The cgroup the jail is born in.
    public var cgroup: (any JailCgroup)?
    /// Device nodes, driver files and /proc entries from the profile's
    /// `[devices]` (filled by ``JailSecurity/prepare(_:)``).
    public var devices: DevicePlan?

    public init(profile: Profile, command: [String]) {
        self.profile = profile
        self.command = command
    }
}

/// Starts jails: builds the C plan, clones, maps ids, releases the child,
/// and turns a failed setup step into a ``JailError``.
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
        let mounts = try resolveMounts(request)

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

        let arena = PlanArena()
        var plan = stk_plan()
        plan.clone_flags = profile.namespaces.reduce(0) { $0 | $1.cloneFlag }
        plan.cgroup_fd = request.cgroup?.directory?.rawValue ?? -1
        plan.use_reaper = profile.namespaces.contains(.pid) ? 1 : 0
        plan.sync_fd = sync.read.rawValue
        plan.error_fd = errors.write.rawValue
        plan.status_fd = status.write.rawValue
        plan.parent_fds = (sync.write.rawValue, errors.read.rawValue, status.read.rawValue, -1)
        plan.staging = arena.string("/tmp")
        plan.root_options = arena.string("size=\(profile.filesystem.rootSize),mode=0755")
        let cMounts = mounts.map { m in
            stk_mount(kind: m.kind, flags: m.flags, mode: m.mode, _pad: 0,
                      source: arena.optionalString(m.source), target: arena.string(m.target), data: arena.optionalString(m.data))
        }
        plan.mounts = arena.array(cMounts)
        plan.n_mounts = UInt32(cMounts.count)
        plan.root_readonly = profile.filesystem.readonlyRoot ? 1 : 0
        plan.hostname = profile.namespaces.contains(.uts) ? arena.optionalString(profile.hostname) : nil
        plan.uid = profile.user.uid
        plan.gid = profile.user.gid
        plan.drop_groups = rootless ? 0 : 1
        plan.become_root = rootless ? 0 : 1
        plan.cap_last_cap = capLastCap()
        let rlimits = profile.rlimits.map {
            stk_rlimit(resource: $0.resource, _pad: 0, soft: $0.soft ?? UInt64.max, hard: $0.hard ?? UInt64.max)
        }
        plan.rlimits = arena.array(rlimits)
        plan.n_rlimits = UInt32(rlimits.count)
        plan.new_session = profile.newSession ? 1 : 0
        var fdMap = profile.passFDs.map { stk_fd_map(from: $0, to: $0) }
        fdMap += request.passedFDs.map { stk_fd_map(from: $0.from, to: $0.to) }
        for m in fdMap {
            guard (0...255).contains(m.to) else {
                throw JailError.invalidRequest("fd \(m.from) cannot land on \(m.to) in the jail (0...255)")
            }
            guard fcntl(m.from, F_GETFD) >= 0 else {
                throw JailError.invalidRequest("fd \(m.from) is to be passed into the jail but is not open")
            }
        }
        guard Set(fdMap.map(\.to)).count == fdMap.count else {
            throw JailError.invalidRequest("two fds are passed to the same number in the jail")
        }
        plan.fds = arena.array(fdMap)
        plan.n_fds = UInt32(fdMap.count)
        plan.cwd = arena.string(profile.cwd)
        if let ll = request.landlock, ll.abi > 0 {
            plan.landlock_abi = ll.abi
            plan.landlock_required = ll.required ? 1 : 0
            plan.landlock_fs_handled = ll.fsHandled
            plan.landlock_net_handled = ll.netHandled
            plan.landlock_scoped = ll.abi >= 6 ? ll.scoped : 0
            let rules = ll.rules.map {
                stk_landlock_rule(path: arena.string($0.path), access: $0.access, optional: $0.optional ? 1 : 0, _pad: 0)
            }
            plan.landlock_rules = arena.array(rules)
            plan.n_landlock_rules = UInt32(rules.count)
            let ports = ll.tcpPorts.map { stk_landlock_port(port: UInt64($0.port), access: $0.access) }
            plan.landlock_ports = arena.array(ports)
            plan.n_landlock_ports = UInt32(ports.count)
        }
        if !request.seccompFilter.isEmpty {
            guard request.seccompFilter.count % 8 == 0, request.seccompFilter.count / 8 <= 4096 else {
                throw JailError.invalidRequest("seccomp program is malformed (\(request.seccompFilter.count) bytes)")
            }
            plan.seccomp_filter = arena.bytes(request.seccompFilter)?.assumingMemoryBound(to: sock_filter.self)
            plan.seccomp_len = UInt32(request.seccompFilter.count / 8)
            plan.seccomp_flags = request.seccompFlags
        }
        let environment = buildEnvironment(request)
        let execPaths = executableCandidates(program, environment: environment)
        plan.exec_paths = UnsafePointer(arena.stringVector(execPaths).withMemoryRebound(to: UnsafePointer<CChar>?.self, capacity: execPaths.count + 1) { $0 })
        plan.n_exec_paths = UInt32(execPaths.count)
        plan.argv = arena.stringVector(request.command)
        plan.envp = arena.stringVector(environment.map { "\($0.0)=\($0.1)" })

        // clone3 on the long-lived spawner thread: the parent-death signal
        // follows the thread that cloned, so it must outlive every jail.
        let frozenPlan = UnsafeSendable(plan)
        let (pid, pidfd, intoCgroup) = withExtendedLifetime(arena) {
            SpawnerThread.shared.run {
                var plan = frozenPlan.value
                var pidfd: Int32 = -1
                var into: Int32 = 0
                let pid = stk_spawn(&plan, &pidfd, &into)
                return (pid, pidfd, into)
            }
        }
        if pid < 0 {
            throw JailError.cloneFailed(errno: -pid, hint: cloneHint(errno: -pid, rootless: rootless))
        }
        let process = ProcessHandle(fd: FileDescriptor(rawValue: pidfd), pid: pid)
        // The child's ends belong to the child now.
        closeChildEnds()

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
            try writeIDMaps(pid: pid, user: profile.user, rootless: rootless)
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
        let record = try errors.read.readUpTo(MemoryLayout<stk_error>.size)
        if !record.isEmpty {
            var e = stk_error()
            withUnsafeMutableBytes(of: &e) { raw in
                record.withUnsafeBytes { raw.copyMemory(from: UnsafeRawBufferPointer(rebasing: $0.prefix(raw.count))) }
            }
            let detail = withUnsafeBytes(of: e.detail) { raw in
                String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
            }
            _ = try? process.reap()
            try? process.fd.close()
            throw JailError.setupFailed(step: String(cString: stk_step_name(e.step)), number: Int(e.step),
                                        of: Int(STK_STEP_COUNT.rawValue) - 1, errno: e.err,
                                        detail: detail.replacing("/newroot/", with: "/"))
        }
        keepParentEnds = true
        return Jail(process: process, liveness: sync.write, status: status.read, cgroup: request.cgroup,
                    hasReaper: plan.use_reaper != 0, profileName: profile.name, startedAt: started)
    }

    /// The mount list the child carries out: /dev, /proc and its masks, the
    /// profile's mounts, then extra masks. Host sources are resolved here
    /// (symlinks included), so the child never follows a host symlink.
    struct PlannedMount {
        var kind: UInt32
        var flags: UInt32 = 0
        var mode: UInt32 = 0
        var source: String?
        var target: String
        var data: String?
    }

    static func resolveMounts(_ request: LaunchRequest) throws -> [PlannedMount] {
        let profile = request.profile
        var result: [PlannedMount] = []
        let newroot = "/newroot"
        let devNull = "/oldroot/dev/null"
        if profile.filesystem.dev {
            result.append(PlannedMount(kind: STK_MOUNT_DEV.rawValue, target: newroot + "/dev"))
        }
        if profile.filesystem.proc {
            result.append(PlannedMount(kind: STK_MOUNT_PROC.rawValue, target: newroot + "/proc"))
            let unmasked = Set(request.devices?.unmaskedProc ?? [])
            for path in ProcMasks.hidden where !unmasked.contains(path) {
                result.append(PlannedMount(kind: STK_MOUNT_MASK.rawValue, source: devNull, target: newroot + path))
            }
            for path in ProcMasks.readOnly {
                result.append(PlannedMount(kind: STK_MOUNT_RO.rawValue, target: newroot + path))
            }
        }
        // Read-only mounts made so far: a later mount point inside one of
        // them cannot be created there, so it must already exist.
        var readOnly: [(target: String, hostSource: String?)] = []
        for (i, m) in (profile.mounts + request.extraMounts).enumerated() {
            let label = i < profile.mounts.count ? "\(profile.file): mount[\(i)]" : "mount"
            if let outer = readOnly.last(where: { m.target.hasPrefix($0.target == "/" ? "/" : $0.target + "/") && m.target != $0.target }) {
                let rest = String(m.target.dropFirst(outer.target.count))
                let exists = outer.hostSource.map { FileManager.default.fileExists(atPath: $0 + rest) } ?? false
                if !exists {
                    let place = outer.hostSource.map { "the read-only bind \(outer.target), and \($0 + rest) does not exist on the host" }
                        ?? "the read-only tmpfs \(outer.target), which is empty"
                    throw JailError.invalidRequest("\(label): the mount point \(m.target) lies inside \(place); "
                        + "a mount point cannot be created in a read-only mount: create it in the source, mount it elsewhere, or make \(outer.target) writable")
                }
            }
            var planned = PlannedMount(kind: 0, target: newroot + m.target)
            if m.writable { planned.flags |= STK_MF_WRITABLE.rawValue }
            if m.optional { planned.flags |= STK_MF_OPTIONAL.rawValue }
            if m.noexec { planned.flags |= STK_MF_NOEXEC.rawValue }
            switch m.kind {
            case .bind:
                let source = m.source ?? m.target
                guard let real = realPath(source) else {
                    if m.optional { continue }
                    throw JailError.invalidRequest("\(label): bind source \(source) does not exist")
                }
                planned.kind = STK_MOUNT_BIND.rawValue
                planned.source = "/oldroot" + (real == "/" ? "" : real)
                if !m.writable { readOnly.append((m.target, real == "/" ? "" : real)) }
            case .tmpfs:
                planned.kind = STK_MOUNT_TMPFS.rawValue
                var options = "mode=\(String(m.mode ?? 0o1777, radix: 8))"
                if let size = m.size { options += ",size=\(size)" }
                planned.data = options
                if !m.writable { readOnly.append((m.target, nil)) }
            case .dir:
                planned.kind = STK_MOUNT_DIR.rawValue
                planned.mode = m.mode ?? 0o755
            case .symlink:
                planned.kind = STK_MOUNT_SYMLINK.rawValue
                planned.source = m.source
            }
            result.append(planned)
        }
        result += request.devices?.plannedMounts() ?? []
        for path in profile.filesystem.masked {
            result.append(PlannedMount(kind: STK_MOUNT_MASK.rawValue, source: devNull, target: newroot + path))
        }
        return result
    }

    static func realPath(_ path: String) -> String? {
        guard let p = realpath(path, nil) else { return nil }
        defer { free(p) }
        return String(cString: p)
    }

    static func buildEnvironment(_ request: LaunchRequest) -> [(String, String)] {
        var env: [(String, String)] = []
        func set(_ name: String, _ value: String) {
            env.removeAll { $0.0 == name }
            env.append((name, value))
        }
        for pair in request.profile.environment.set { set(pair.name, pair.value) }
        for name in request.profile.environment.pass {
            if let value = getenv(name) { set(name, String(cString: value)) }
        }
        for (name, value) in request.extraEnvironment { set(name, value) }
        return env
    }

    static func executableCandidates(_ program: String, environment: [(String, String)]) -> [String] {
        if program.contains("/") { return [program] }
        let path = environment.last(where: { $0.0 == "PATH" })?.1 ?? "/usr/local/bin:/usr/bin:/bin"
        return path.split(separator: ":").map { "\($0)/\(program)" }
    }

    static func checkKernel(_ profile: Profile) throws {
        for ns in profile.namespaces.sorted() where access("/proc/self/ns/\(ns.procName)", F_OK) != 0 {
            throw JailError.missingKernelFeature("the \(ns.rawValue) namespace is not available on this kernel (no /proc/self/ns/\(ns.procName)); remove \"\(ns.rawValue)\" from [jail] namespaces in \(profile.file)")
        }
        if access("/tmp", F_OK) != 0 {
            throw JailError.missingKernelFeature("/tmp does not exist on the host; the jail's staging root is mounted there")
        }
    }

    static func capLastCap() -> Int32 {
        guard let text = try? String(contentsOfFile: "/proc/sys/kernel/cap_last_cap", encoding: .utf8),
              let n = Int32(text.trimmingCharacters(in: " \n")) else { return 63 }
        return n
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

    /// Rootless: the caller's one uid/gid maps to the profile's ids (setgroups
    /// must be denied first). Root: inside ids 0-65535 map to `hostBase`
    /// onwards, an unprivileged range no host account uses, so inside uid 0
    /// (used only during set-up) is no host privilege either.
    static func writeIDMaps(pid: Int32, user: Profile.UserSpec, rootless: Bool) throws {
        if rootless {
            try writeProcFile(pid: pid, "setgroups", "deny")
            try writeProcFile(pid: pid, "uid_map", "\(user.uid) \(getuid()) 1\n")
            try writeProcFile(pid: pid, "gid_map", "\(user.gid) \(getgid()) 1\n")
        } else {
            try writeProcFile(pid: pid, "uid_map", "0 \(user.hostBase) 65536\n")
            try writeProcFile(pid: pid, "gid_map", "0 \(user.hostBase) 65536\n")
        }
    }

    static func writeProcFile(pid: Int32, _ name: String, _ text: String) throws {
        let path = "/proc/\(pid)/\(name)"
        do {
            let fd = try FileDescriptor.open(path, .writeOnly, options: .closeOnExec)
            defer { try? fd.close() }
            _ = try fd.writeAll(Array(text.utf8))
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
