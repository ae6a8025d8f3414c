public import Foundation
public import StockadeJail
public import StockadeCgroups
import StockadeSystem
import SystemPackage
import CStockadeSpawn
#if canImport(Glibc)
import Glibc
#endif

/// The status of a container, as runtime-spec's state names it.
public enum ContainerStatus: String, Sendable {
    case creating, created, running, paused, stopped
}

/// runtime-spec's state document (what `state` prints).
public struct ContainerState: Codable, Sendable {
    public var ociVersion: String
    public var id: String
    public var status: String
    public var pid: Int32
    public var bundle: String
    public var rootfs: String
    public var created: String
    public var owner: String
    public var annotations: [String: String]?
}

/// The runc-compatible operations of `stockade-runtime`, one per command.
/// Every process a command starts is a child of the caller (the shim, a
/// subreaper), and stays its descendant when the command exits.
public struct Runtime: Sendable {
    public static let specVersion = "1.1.0"
    public let store: StateStore
    /// `--systemd-cgroup`: read cgroupsPath as `slice:prefix:name`.
    public let systemdCgroup: Bool

    public init(root: String, systemdCgroup: Bool) throws(RuntimeError) {
        store = try StateStore(root: root)
        self.systemdCgroup = systemdCgroup
    }

    // MARK: create

    public struct CreateOptions: Sendable {
        public var bundle: String
        public var pidFile: String?
        public var consoleSocket: String?
        public init(bundle: String, pidFile: String?, consoleSocket: String?) {
            self.bundle = bundle
            self.pidFile = pidFile
            self.consoleSocket = consoleSocket
        }
    }

    public func create(id: String, _ options: CreateOptions) throws {
        let bundle = options.bundle.hasPrefix("/") ? options.bundle : SpecFiles.currentDirectory() + "/" + options.bundle
        var spec = try SpecFiles.readConfig(bundle: bundle)
        // CDI devices (and NVIDIA_VISIBLE_DEVICES) become the spec's devices, mounts, hooks.
        let cdi = try SpecCDI.apply(&spec)
        let dir = try store.create(id)
        var launched: Jail?
        var group: JailGroup?
        var stateFD: Int32?
        defer { if let stateFD { close(stateFD) } }
        do {
            var request = try SpecJail.request(spec: spec, bundle: bundle, store: store)
            defer { for j in (request.oci?.join ?? []) + (request.oci?.enterBeforeClone ?? []) { close(j.fd) } }
            // Hooks: the build-time ones while the child waits before its
            // root switch, startContainer in the worker after `start`.
            let created = Self.now()
            let rootfs = request.oci?.rootDirectory ?? ""
            let owner = Self.owner()
            let annotations = spec.annotations ?? [:]
            let ociVersion = spec.ociVersion
            @Sendable func document(_ pid: Int32, _ status: ContainerStatus) -> ContainerState {
                ContainerState(ociVersion: ociVersion, id: id, status: status.rawValue, pid: pid, bundle: bundle,
                               rootfs: rootfs, created: created, owner: owner,
                               annotations: annotations.isEmpty ? nil : annotations)
            }
            request.oci?.startHooks = ContainerHooks.start(spec.hooks)
            if request.oci?.startHooks.isEmpty == false {
                stateFD = try ContainerHooks.stateFile(document(0, .creating))
                request.oci?.startStateFD = stateFD
            }
            let (driver, path) = try Self.cgroupPath(spec.linux?.cgroupsPath, id: id, systemd: systemdCgroup)
            group = try CgroupPlace.open(path, limits: request.profile.limits, create: true)
            request.cgroup = group
            // Without a user namespace of its own the container's nodes are made with mknod.
            let ownUserns = request.profile.namespaces.contains(.user) || request.oci?.join.contains { $0.namespace == .user } == true
            let mknod = ownUserns ? nil : SpecDevices.MknodPlace(dir: dir.rawValue, path: store.path + "/" + id)
            if let devices = try SpecDevices.plan(spec, mknodIn: mknod, profile: request.profile, request: &request), let group {
                request.cgroup = try SpecDevices.enforce(devices, on: group, path: path)
                request.devices = devices
            }
            request.oci?.hooks = ContainerHooks.pause(spec.hooks, cgroup: request.cgroup) { pid in document(pid, .creating) }
            try JailSecurity.prepare(&request)

            // The exec FIFO: the container's worker holds it open read-write
            // and blocks on it until `start` writes one byte.
            guard mkfifoat(dir.rawValue, "exec.fifo", 0o600) == 0 else {
                throw RuntimeError("mkfifo exec.fifo: \(errnoName(errno))")
            }
            let fifo = openat(dir.rawValue, "exec.fifo", O_RDWR | O_NOFOLLOW | O_CLOEXEC)
            guard fifo >= 0 else { throw RuntimeError("open exec.fifo: \(errnoName(errno))") }
            defer { close(fifo) }
            request.oci?.execWaitFD = fifo

            var terminal: PseudoTerminal?
            if spec.process?.terminal == true {
                terminal = try Console.attach(&request, socket: options.consoleSocket)
            }
            defer { try? terminal?.peer.close() }
            if let adj = spec.process?.oomScoreAdj { try Self.setOOMScoreAdj(adj) }

            let jail: Jail
            do {
                defer { if let devpts = request.oci?.devpts { close(devpts.fd) } }
                jail = try Launcher.launch(request)
            }
            launched = jail
            try? terminal?.master.close()
            _ = try jail.holdHostIDsUntilExit()
            // The start time tells the container's first process from a
            // later one at the same pid: without it no later command could
            // trust the pid, so create fails.
            guard let startTime = ProcessStat.startTime(jail.pid), startTime != 0 else {
                throw SpecError("cannot read the start time of the container's first process (/proc/\(jail.pid)/stat)")
            }
            let record = ContainerRecord(
                id: id, bundle: bundle, rootfs: rootfs, pid: jail.pid,
                pidStartTime: startTime, created: created,
                annotations: spec.annotations ?? [:], owner: Self.owner(), cgroupDriver: driver, cgroupPath: path,
                hostIDs: jail.hostIDs?.description, ociVersion: spec.ociVersion,
                hooks: [("poststart", spec.hooks?.poststart), ("poststop", spec.hooks?.poststop)]
                    .filter { !($0.1 ?? []).isEmpty }.map(\.0),
                cdiHooks: cdi.hooks)
            try StateStore.write(try JSONEncoder().encode(record), "state.json", in: dir)
            // startContainer hooks read the state as `start` leaves it.
            if let stateFD { try ContainerHooks.writeState(document(jail.pid, .created), to: stateFD) }
            if let pidFile = options.pidFile { try Self.writePidFile(pidFile, pid: jail.pid) }
        } catch {
            launched?.kill()
            if let pid = launched?.pid { _ = waitpid(pid, nil, 0) }
            try? group?.kill()
            try? group?.remove()
            if let path = try? Self.cgroupPath(spec.linux?.cgroupsPath, id: id, systemd: systemdCgroup).path {
                SpecDevices.removeV1(path)
            }
            try? dir.close()
            store.remove(id)
            throw error
        }
        try? dir.close()
    }

    // MARK: start, state, kill, delete

    public func start(id: String) throws {
        let (record, dir) = try load(id)
        defer { try? dir.close() }
        try StateStore.locked(dir) {
            switch status(record, dir: dir) {
            case .created: break
            case .stopped: throw RuntimeError("cannot start a container that has stopped")
            case .running, .paused: throw RuntimeError("cannot start an already running container")
            case .creating: throw RuntimeError("cannot start a container that is still being created")
            }
            // Open without blocking: ENXIO means the worker no longer waits.
            let fifo = openat(dir.rawValue, "exec.fifo", O_WRONLY | O_NONBLOCK | O_NOFOLLOW | O_CLOEXEC)
            guard fifo >= 0 else { throw RuntimeError("cannot start a container that has stopped (exec fifo: \(errnoName(errno)))") }
            defer { close(fifo) }
            var byte: UInt8 = 0
            guard write(fifo, &byte, 1) == 1 else { throw RuntimeError("start: write exec fifo: \(errnoName(errno))") }
            unlinkat(dir.rawValue, "exec.fifo", 0)
        }
        // config.json is read again only when it had poststart hooks (start is on every pod's path).
        guard record.mayHave(hooks: "poststart") else { return }
        let spec = try? SpecFiles.readConfig(bundle: record.bundle)
        try Hooks.run((spec?.hooks?.poststart ?? []) + (record.cdiHooks?.poststart ?? []), name: "poststart",
                      state: stateDocument(record, status: .running))
    }

    public func state(id: String) throws -> ContainerState {
        let (record, dir) = try load(id)
        defer { try? dir.close() }
        return stateDocument(record, status: status(record, dir: dir))
    }

    public func list() -> [ContainerState] {
        store.ids().compactMap { try? state(id: $0) }
    }

    public func kill(id: String, signal: Int32, all: Bool) throws {
        let (record, dir) = try load(id)
        defer { try? dir.close() }
        let now = status(record, dir: dir)
        // `--all` reaches what is left in the cgroup after the first
        // process ended, as runc's does: a container in its pod's pid
        // namespace leaves its processes there (the shim kills them so).
        guard now != .stopped || all else { throw RuntimeError("container not running") }
        if all {
            let group = try CgroupPlace.open(record.cgroupPath, limits: LimitsSection(), create: false)
            // Frozen, none of the container's processes can exit, so no pid
            // read from the cgroup is reused by another process before its
            // signal. A container that was paused stays paused (it takes
            // the signal once resumed), except for SIGKILL, which must not wait.
            let wasFrozen = group.isFrozen
            try? group.freeze()
            for pid in group.processes { Glibc.kill(pid, signal) }
            if !wasFrozen || signal == SIGKILL { try? group.thaw() }
        } else {
            guard let pidfd = record.firstProcessPidfd() else { throw RuntimeError("container not running") }
            defer { close(pidfd) }
            guard stk_pidfd_send_signal(pidfd, signal) == 0 else { throw RuntimeError("kill: \(errnoName(errno))") }
        }
    }

    public func delete(id: String, force: Bool) throws {
        guard let (record, dir) = try store.record(id) else {
            // A create that did not finish leaves a directory without a record.
            store.remove(id)
            if force { return }
            throw RuntimeError("container does not exist")
        }
        defer { try? dir.close() }
        let now = status(record, dir: dir)
        if now != .stopped && now != .created && !force {
            throw RuntimeError("cannot delete container \(id) that is not stopped: \(now.rawValue)")
        }
        let group = try? CgroupPlace.open(record.cgroupPath, limits: LimitsSection(), create: false)
        if now != .stopped {
            try? group?.thaw()
            if let pidfd = record.firstProcessPidfd() {
                _ = stk_pidfd_send_signal(pidfd, SIGKILL)
                close(pidfd)
            }
            try? group?.kill()
            for _ in 0..<200 where status(record, dir: dir) != .stopped { usleep(10_000) }
        }
        try? group?.kill()
        try? group?.remove()
        SpecDevices.removeV1(record.cgroupPath)
        store.remove(id)
        guard record.mayHave(hooks: "poststop") else { return }
        let spec = try? SpecFiles.readConfig(bundle: record.bundle)
        // poststop failures are logged by runc, not fatal: the container is gone.
        try? Hooks.run((spec?.hooks?.poststop ?? []) + (record.cdiHooks?.poststop ?? []), name: "poststop",
                       state: stateDocument(record, status: .stopped))
    }

    // MARK: ps, pause, resume, update

    public func processes(id: String) throws -> [Int32] {
        let (record, dir) = try load(id)
        defer { try? dir.close() }
        guard let group = try? CgroupPlace.open(record.cgroupPath, limits: LimitsSection(), create: false) else { return [] }
        return group.processes.sorted()
    }

    public func pause(id: String) throws {
        let (record, dir) = try load(id)
        defer { try? dir.close() }
        guard status(record, dir: dir) == .running else { throw RuntimeError("container not running") }
        try CgroupPlace.open(record.cgroupPath, limits: LimitsSection(), create: false).freeze()
    }

    public func resume(id: String) throws {
        let (record, dir) = try load(id)
        defer { try? dir.close() }
        guard status(record, dir: dir) == .paused else { throw RuntimeError("container not paused") }
        try CgroupPlace.open(record.cgroupPath, limits: LimitsSection(), create: false).thaw()
    }

    public func update(id: String, resources: Data, source: String) throws {
        let (record, dir) = try load(id)
        defer { try? dir.close() }
        guard status(record, dir: dir) != .stopped else { throw RuntimeError("container not running") }
        let r = try Spec.decode(Spec.Resources.self, from: resources, file: source)
        let group = try CgroupPlace.open(record.cgroupPath, limits: LimitsSection(), create: false)
        try group.update(try SpecJail.limits(r, base: LimitsSection()))
        if let rules = r.devices {
            var spec = try SpecFiles.readConfig(bundle: record.bundle)
            try SpecCDI.apply(&spec)
            try SpecDevices.update(spec, rules: rules, group: group, path: record.cgroupPath)
        }
    }

    // MARK: exec

    public struct ExecOptions: Sendable {
        public var process: Data
        public var processFile: String
        public var detach: Bool
        public var pidFile: String?
        public var consoleSocket: String?
        public init(process: Data, processFile: String, detach: Bool, pidFile: String?, consoleSocket: String?) {
            self.process = process
            self.processFile = processFile
            self.detach = detach
            self.pidFile = pidFile
            self.consoleSocket = consoleSocket
        }
    }

    /// Starts a process in a running container; returns its exit status
    /// when not detached, else nil once it runs.
    public func exec(id: String, _ options: ExecOptions) throws -> Int32? {
        let (record, dir) = try load(id)
        defer { try? dir.close() }
        let now = status(record, dir: dir)
        guard now == .running || now == .created else { throw RuntimeError("cannot exec in a stopped or paused container") }
        let process = try Spec.decode(Spec.Process.self, from: options.process, file: options.processFile)
        var spec = try SpecFiles.readConfig(bundle: record.bundle)
        spec.process = process
        var request = try SpecJail.execRequest(spec: spec, initPID: record.pid, bundle: record.bundle)
        defer { for j in (request.oci?.join ?? []) + (request.oci?.enterBeforeClone ?? []) { close(j.fd) } }
        let group = try CgroupPlace.open(record.cgroupPath, limits: LimitsSection(), create: false)
        request.cgroup = group
        // cgroup v1: the container's devices cgroup too, so that its device
        // allowlist holds for the exec as for the container.
        if group.directory == nil, let devices = SpecDevices.devicesDirectory(record.cgroupPath),
           access(devices + "/cgroup.procs", F_OK) == 0 {
            request.cgroup = DevicesV1Cgroup(inner: group, devices: devices)
        }
        try JailSecurity.prepare(&request)
        var terminal: PseudoTerminal?
        if process.terminal == true { terminal = try Console.attach(&request, socket: options.consoleSocket, initPID: record.pid) }
        defer { try? terminal?.peer.close() }
        if let adj = process.oomScoreAdj { try Self.setOOMScoreAdj(adj) }
        let jail = try Launcher.launch(request)
        try? terminal?.master.close()
        if let pidFile = options.pidFile { try Self.writePidFile(pidFile, pid: jail.pid) }
        if options.detach { return nil }
        var status: Int32 = 0
        while waitpid(jail.pid, &status, 0) < 0 && errno == EINTR {}
        return ProcessTermination(waitStatus: status).shellStatus
    }

    // MARK: helpers

    func load(_ id: String) throws -> (ContainerRecord, FileDescriptor) {
        guard let found = try store.record(id) else { throw RuntimeError("container does not exist") }
        return found
    }

    /// created while the worker waits on the FIFO; stopped once PID 1 is
    /// gone (or a zombie, or another process under a reused pid); paused
    /// while the cgroup is frozen.
    func status(_ record: ContainerRecord, dir: FileDescriptor) -> ContainerStatus {
        guard ProcessStat.isAlive(record.pid, startTime: record.pidStartTime) else { return .stopped }
        var st = stat()
        if fstatat(dir.rawValue, "exec.fifo", &st, AT_SYMLINK_NOFOLLOW) == 0 { return .created }
        if let group = try? CgroupPlace.open(record.cgroupPath, limits: LimitsSection(), create: false), group.isFrozen {
            return .paused
        }
        return .running
    }

    public func stateDocument(_ r: ContainerRecord, status: ContainerStatus) -> ContainerState {
        ContainerState(ociVersion: r.ociVersion, id: r.id, status: status.rawValue, pid: status == .stopped ? 0 : r.pid,
                       bundle: r.bundle, rootfs: r.rootfs, created: r.created, owner: r.owner,
                       annotations: r.annotations.isEmpty ? nil : r.annotations)
    }

    /// cgroupsPath in the driver's form, as a path below the hierarchy's
    /// root. cgroupfs: "/a/b" (relative paths are taken from the root);
    /// systemd: "slice:prefix:name" -> "/slice.../prefix-name.scope". None:
    /// "/stockade-runtime/ID".
    public static func cgroupPath(_ given: String?, id: String, systemd: Bool) throws -> (driver: String, path: String) {
        guard let given, !given.isEmpty else {
            return (systemd ? "systemd" : "cgroupfs", "/stockade-runtime/" + id)
        }
        if systemd {
            let parts = given.split(separator: ":", omittingEmptySubsequences: false).map(String.init)
            guard parts.count == 3, !parts[2].isEmpty else {
                throw SpecError("config.json linux.cgroupsPath: \"\(given)\" is not slice:prefix:name (--systemd-cgroup)")
            }
            // A slice "a-b-c.slice" lives at /a.slice/a-b.slice/a-b-c.slice.
            var path = ""
            let slice = parts[0].isEmpty ? "system.slice" : parts[0]
            if slice != "-.slice" {
                guard slice.hasSuffix(".slice") else {
                    throw SpecError("config.json linux.cgroupsPath: \"\(slice)\" is not a slice name")
                }
                let words = slice.dropLast(".slice".count).split(separator: "-")
                for i in words.indices { path += "/" + words[...i].joined(separator: "-") + ".slice" }
            }
            let unit = parts[1].isEmpty ? parts[2] : parts[1] + "-" + parts[2]
            return ("systemd", path + "/" + (unit.hasSuffix(".slice") ? unit : unit + ".scope"))
        }
        let clean = "/" + given.split(separator: "/").joined(separator: "/")
        guard !given.split(separator: "/").contains(where: { $0 == ".." || $0 == "." }) else {
            throw SpecError("config.json linux.cgroupsPath: \"\(given)\" contains . or ..")
        }
        return ("cgroupfs", clean)
    }

    static func setOOMScoreAdj(_ adj: Int) throws {
        let fd = open("/proc/self/oom_score_adj", O_WRONLY | O_CLOEXEC)
        guard fd >= 0 else { throw RuntimeError("process.oomScoreAdj: open /proc/self/oom_score_adj: \(errnoName(errno))") }
        defer { close(fd) }
        let text = Array("\(adj)".utf8)
        guard write(fd, text, text.count) == text.count else {
            throw RuntimeError("process.oomScoreAdj: write \(adj): \(errnoName(errno))")
        }
    }

    /// The pid file: the bare decimal pid, no newline, written to a
    /// temporary name beside it and renamed, as the shim expects.
    static func writePidFile(_ path: String, pid: Int32) throws {
        let absolute = path.hasPrefix("/") ? path : SpecFiles.currentDirectory() + "/" + path
        let parent = String(absolute[..<(absolute.lastIndex(of: "/") ?? absolute.startIndex)])
        let name = String(absolute[absolute.index(after: absolute.lastIndex(of: "/")!)...])
        let dir = open(parent.isEmpty ? "/" : parent, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard dir >= 0 else { throw RuntimeError("--pid-file \(path): open \(parent): \(errnoName(errno))") }
        defer { close(dir) }
        let tmp = "." + name + ".tmp"
        unlinkat(dir, tmp, 0)
        let fd = openat(dir, tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw RuntimeError("--pid-file \(path): create: \(errnoName(errno))") }
        let text = Array("\(pid)".utf8)
        let written = write(fd, text, text.count)
        close(fd)
        guard written == text.count, renameat(dir, tmp, dir, name) == 0 else {
            unlinkat(dir, tmp, 0)
            throw RuntimeError("--pid-file \(path): write: \(errnoName(errno))")
        }
    }

    static func now() -> String {
        let f = ISO8601DateFormatter()
        f.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        return f.string(from: Date())
    }

    static func owner() -> String {
        guard let pw = getpwuid(geteuid()) else { return "\(geteuid())" }
        return String(cString: pw.pointee.pw_name)
    }
}

/// Where containers' cgroups live: the base is the parent of the container's
/// cgroup, so that every command finds the same cgroup by its path.
enum CgroupPlace {
    static func open(_ path: String, limits: LimitsSection, create: Bool) throws -> JailGroup {
        var parts = path.split(separator: "/").map(String.init)
        guard !parts.isEmpty else { throw RuntimeError("cgroup path \(path) is the root") }
        let leaf = parts.removeLast()
        if parts.isEmpty { parts = ["stockade-runtime"] }
        let manager = try CgroupManager(configuration: .init(base: .path("/" + parts.joined(separator: "/")), sweepStale: false))
        return try manager.container(leaf, limits: limits, create: create)
    }
}

extension ContainerRecord {
    /// A pidfd of the container's first process, taken while its pid is
    /// still that process's (alive, with the recorded start time, after the
    /// open), or nil: a pid the container left and another process took
    /// meanwhile is never signalled through it.
    func firstProcessPidfd() -> Int32? {
        if case .open(let pidfd) = openFirstProcess() { return pidfd }
        return nil
    }

    /// What opening the first process's pidfd found.
    enum FirstProcess {
        case open(Int32)
        /// pidfd_open failed (ESRCH: no process has the pid).
        case gone(errno: Int32)
        /// A process has the pid, but not the recorded one (or none, by the time of the check).
        case replaced
    }

    /// The one rule for reaching the first process: open the pidfd, then
    /// check that the pid is still the recorded process, so that the fd
    /// holds that process and no other that took its pid.
    func openFirstProcess() -> FirstProcess {
        let pidfd = stk_pidfd_open(pid)
        guard pidfd >= 0 else { return .gone(errno: errno) }
        guard ProcessStat.isAlive(pid, startTime: pidStartTime) else {
            close(pidfd)
            return .replaced
        }
        return .open(pidfd)
    }
}

/// /proc/PID/stat, read for liveness and start time.
enum ProcessStat {
    static func fields(_ pid: Int32) -> [Substring]? {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = text.lastIndex(of: ")") else { return nil }
        // After "pid (comm)": state is field 3, starttime field 22.
        return text[text.index(after: close)...].split(separator: " ")
    }

    static func startTime(_ pid: Int32) -> UInt64? {
        guard let f = fields(pid), f.count > 19 else { return nil }
        return UInt64(f[19])
    }

    /// Whether `pid` is still the process that started at `startTime`
    /// (field 22 of its stat) and has not exited. A recorded start time of
    /// 0 matches nothing: such a record cannot tell its process from
    /// another one at the same pid.
    static func isAlive(_ pid: Int32, startTime: UInt64) -> Bool {
        guard pid > 0, startTime != 0, let f = fields(pid), f.count > 19 else { return false }
        if f[0] == "Z" || f[0] == "X" { return false }
        return UInt64(f[19]) == startTime
    }
}

/// config.json and friends, read from the bundle (a directory containerd
/// or the caller made; never one a container can write).
public enum SpecFiles {
    public static func readConfig(bundle: String) throws -> Spec {
        let path = bundle + "/config.json"
        guard let data = FileManager.default.contents(atPath: path) else {
            throw SpecError("\(path): cannot be read (\(String(cString: strerror(errno))))")
        }
        return try Spec.decode(Spec.self, from: data, file: "config.json")
    }

    static func currentDirectory() -> String {
        var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        guard getcwd(&buffer, buffer.count) != nil else { return "/" }
        return String(cString: buffer)
    }
}

/// A container's terminal: a pty whose leader goes to the console socket
/// (one fd, one SCM_RIGHTS message, a short payload) and whose follower is
/// the container's stdio and controlling terminal.
enum Console {
    /// `create`: the pty is opened in a devpts instance of the container's
    /// own (its /dev/pts, with /dev/console bound to the pty), so `ttyname`
    /// inside names it. `exec` (`initPID`): in the container's /dev/pts.
    static func attach(_ request: inout LaunchRequest, socket: String?, initPID: Int32? = nil) throws -> PseudoTerminal {
        guard let socket else { throw RuntimeError("process.terminal is true but no --console-socket was given") }
        let pty: PseudoTerminal
        if let initPID {
            pty = try ContainerTerminal.inContainer(initPID: initPID)
        } else {
            let (terminal, devpts, name) = try ContainerTerminal.newInstance()
            pty = terminal
            request.oci?.devpts = (devpts, name)
        }
        do {
            let conn = try UnixSocket.connect(path: socket)
            defer { try? conn.close() }
            let payload = Array("/dev/ptmx".utf8)
            _ = try payload.withUnsafeBytes { try conn.sendMessage($0, passing: [pty.master]) }
        } catch {
            try? pty.master.close()
            try? pty.peer.close()
            throw RuntimeError("--console-socket \(socket): \(error)")
        }
        request.terminal = pty.peer.rawValue
        request.passedFDs += [(pty.peer.rawValue, 0), (pty.peer.rawValue, 1), (pty.peer.rawValue, 2)]
        return pty
    }
}

/// runtime-spec hooks: run on the host with the state on stdin, each with
/// its timeout; a failure names the hook.
enum Hooks {
    static func run(_ hooks: [Spec.Hook]?, name: String, state: ContainerState) throws {
        guard let hooks, !hooks.isEmpty else { return }
        let input = try JSONEncoder().encode(state)
        for (i, hook) in hooks.enumerated() {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: hook.path)
            p.arguments = Array((hook.args ?? [hook.path]).dropFirst())
            var env: [String: String] = [:]
            for entry in hook.env ?? [] {
                if let eq = entry.firstIndex(of: "=") { env[String(entry[..<eq])] = String(entry[entry.index(after: eq)...]) }
            }
            p.environment = env
            let stdin = Pipe()
            p.standardInput = stdin
            do {
                try p.run()
            } catch {
                throw RuntimeError("hooks.\(name)[\(i)] \(hook.path): cannot execute: \(Self.reason(error))")
            }
            // A hook need not read its stdin (EPIPE, not SIGPIPE: main ignores it).
            try? stdin.fileHandleForWriting.write(contentsOf: input)
            try? stdin.fileHandleForWriting.close()
            let deadline = Date().addingTimeInterval(Double(hook.timeout ?? 30))
            while p.isRunning && Date() < deadline { usleep(5_000) }
            if p.isRunning {
                p.terminate()
                throw RuntimeError("hooks.\(name)[\(i)] \(hook.path): timed out after \(hook.timeout ?? 30) s")
            }
            guard p.terminationStatus == 0 else {
                throw RuntimeError("hooks.\(name)[\(i)] \(hook.path): exited with status \(p.terminationStatus)")
            }
        }
    }

    /// Foundation reports a failed spawn as a Cocoa error wrapping the errno;
    /// the message names the errno (`ENOENT`, `EACCES`, `ETXTBSY`).
    static func reason(_ error: any Error) -> String {
        let ns = error as NSError
        let posix = ns.domain == NSPOSIXErrorDomain ? ns : ns.userInfo[NSUnderlyingErrorKey] as? NSError
        guard let posix, posix.domain == NSPOSIXErrorDomain else { return "\(error)" }
        return "\(errnoName(Int32(posix.code))) (\(String(cString: strerror(Int32(posix.code)))))"
    }
}
