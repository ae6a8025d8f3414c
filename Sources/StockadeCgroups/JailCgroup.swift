public import SystemPackage

/// The cgroup a jail runs in, as the launcher needs it.
///
/// On cgroup v2 the launcher hands ``directory`` to `clone3`
/// (`CLONE_INTO_CGROUP`), so the jail's first instruction already runs under
/// its budget. Where that is not possible (cgroup v1, older kernels) the
/// launcher calls ``attach(pid:)`` after clone and before it releases the
/// child, which is still blocked on the sync pipe and has run no user code.
public protocol JailCgroup: AnyObject, Sendable {
    /// An `O_DIRECTORY` fd of the jail's cgroup for `CLONE_INTO_CGROUP`, or nil.
    var directory: FileDescriptor? { get }
    /// Moves `pid` into the cgroup (`cgroup.procs`).
    func attach(pid: Int32) throws
    /// Kills every process in the cgroup (`cgroup.kill`, or signal each pid on v1).
    func kill() throws
    /// Reads the accounting (peak memory, CPU time, OOM kills, pids peak).
    func usage() throws -> CgroupUsage
    /// Removes the cgroup; called once the jail has exited.
    func remove() throws
}

/// What a jail used, read back from its cgroup when it ends.
public struct CgroupUsage: Sendable, Equatable, Codable {
    public var memoryPeakBytes: UInt64?
    public var cpuUserMicros: UInt64?
    public var cpuSystemMicros: UInt64?
    public var throttledMicros: UInt64?
    public var pidsPeak: UInt64?
    public var oomKills: UInt64?

    public init(memoryPeakBytes: UInt64? = nil, cpuUserMicros: UInt64? = nil, cpuSystemMicros: UInt64? = nil,
                throttledMicros: UInt64? = nil, pidsPeak: UInt64? = nil, oomKills: UInt64? = nil) {
        self.memoryPeakBytes = memoryPeakBytes
        self.cpuUserMicros = cpuUserMicros
        self.cpuSystemMicros = cpuSystemMicros
        self.throttledMicros = throttledMicros
        self.pidsPeak = pidsPeak
        self.oomKills = oomKills
    }
}
