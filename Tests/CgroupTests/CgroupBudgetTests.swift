import Foundation
import Testing
@testable import StockadeCgroups
#if canImport(Glibc)
import Glibc
#endif

/// Budgets enforced by the real kernel, on whichever backend the host has:
/// cgroup v1 on our hybrid build hosts, cgroup v2 in the qemu VM
/// (`scripts/vm/run-vm-tests.sh`, part of `make test`) and on pure v2 hosts.
/// The workloads run in real jails (`Launcher`, the shipped minimal
/// profile), placed in their cgroups by the launcher.
/// How far past memory.max a task being OOM-killed may still charge while
/// it exits (seen: 240 KiB on 6.1 under qemu).
let oomExitSlack: UInt64 = 1 << 20

@Suite("CgroupBudget", .serialized, .enabled(if: CgroupTestHost.canManageCgroups, "needs root and a cgroup hierarchy with memory, cpu and pids"))
struct CgroupBudgetTests {
    @Test func memoryHogIsOOMKilledAtMemoryMaxWhileSiblingSurvives() throws {
        let manager = try makeManager()
        defer { closeAndExpectNothingLeft(manager) }
        let asked: UInt64 = 64 << 20
        let hogJail = try manager.jail(limits: LimitsSection(memoryMax: asked, swapMax: 0))
        let siblingJail = try manager.jail(limits: LimitsSection(memoryMax: 32 << 20))

        let sibling = try JailedWorkload(siblingJail, ["sleep"])
        let hog = try JailedWorkload(hogJail, ["hog", "512"])
        // Read the accounting before the launcher removes the cgroup.
        let exit = try hog.wait()
        let lines = hog.readAll(seconds: 1)
        #expect(exit.reason == .outOfMemory, "the hog was not OOM-killed: \(exit), \(lines.suffix(3))")
        #expect(exit.signal == SIGKILL)
        #expect(!lines.contains("hog done 512"))
        let usage = try #require(exit.usage)
        #expect((usage.oomKills ?? 0) >= 1, "no OOM kill recorded: \(usage)")
        let peak = try #require(usage.memoryPeakBytes)
        #expect(peak <= asked + oomExitSlack, "peak \(peak) above memory_max \(asked)")
        #expect(peak >= asked / 2, "peak \(peak) far below memory_max \(asked): the limit was not what stopped it")
        let reached = (lines.last { $0.hasPrefix("hog ") }?.split(separator: " ").last).flatMap { Int($0) } ?? 0
        report(manager, "memory_max \(asked >> 20) MiB: peak \(peak) bytes (\(String(format: "%.2f", Double(peak) / Double(asked) * 100))% of asked), hog reached \(reached) MiB, oom_kill \(usage.oomKills ?? 0)")
        #expect(!FileManager.default.fileExists(atPath: hogJail.path), "the launcher did not remove the jail's cgroup")

        // The sibling jail and the launcher (this process) are untouched.
        #expect(sibling.isRunning)
        #expect((try siblingJail.usage().oomKills ?? 0) == 0)
        sibling.jail.kill()
        #expect(try sibling.wait().reason == .killed)
    }

    @Test func forkBombStopsAtPidsMax() throws {
        let manager = try makeManager()
        defer { closeAndExpectNothingLeft(manager) }
        let group = try manager.jail(limits: LimitsSection(pidsMax: 16))
        let bomb = try JailedWorkload(group, ["forkbomb"])

        let line = try #require(bomb.readLine(seconds: 120), "the fork bomb never hit a limit")
        // "forked N errno E": N children besides the bomb (and the jail's PID 1).
        let parts = line.split(separator: " ")
        let forked = try #require(parts.count == 4 ? Int(parts[1]) : nil, "unexpected line \(line)")
        #expect(parts[3] == "\(EAGAIN)", "fork failed with errno \(parts[3]), not EAGAIN")
        let inJail = group.processes.count
        #expect(inJail == 16, "pids.max = 16, the jail holds \(inJail) processes")
        #expect(forked >= 13 && forked <= 15)
        let usage = try group.usage()
        if let peak = usage.pidsPeak { #expect(peak == 16) }
        report(manager, "pids_max 16: the fork bomb made \(forked) children (\(inJail) processes in the jail), then fork failed with EAGAIN; pids.peak \(usage.pidsPeak.map(String.init) ?? "n/a")")

        try group.kill()
        #expect(group.processes.isEmpty)
        let exit = try bomb.wait()
        #expect(exit.signal == SIGKILL)
    }

    @Test func busyLoopUnderHalfCPUUsesHalfACPU() throws {
        // A high weight keeps the measurement about the quota, not about
        // whoever else is busy on a shared build host.
        let tenant = TenantBudget(name: "cpu", limits: LimitsSection(cpuWeight: 10_000))
        // The base competes with every other process at the root of the
        // host's tree: weight it too (on a quiet host this changes nothing).
        let manager = try makeManager(tenants: [tenant], baseWeight: 10_000)
        defer { closeAndExpectNothingLeft(manager) }
        let quota = try #require(CPUQuota(parsing: "50000 100000"))
        let group = try manager.jail(tenant: "cpu", limits: LimitsSection(cpu: quota, cpuWeight: 10_000))
        // Two spinning processes ask for two CPUs; the quota allows half of one.
        let spin = try JailedWorkload(group, ["spin", "2"])
        usleep(1_000_000)

        // CPU time the kernel charged to the cgroup over a fixed wall interval.
        let t0 = CgroupFS.monotonicSeconds()
        let c0 = try cpuMicros(group)
        usleep(6_000_000)
        let c1 = try cpuMicros(group)
        let t1 = CgroupFS.monotonicSeconds()
        let share = Double(c1 - c0) / 1e6 / (t1 - t0)
        let usage = try group.usage()
        report(manager, "cpu.max 50000 100000 (0.5 CPU): used \(String(format: "%.3f", share)) CPU over \(String(format: "%.1f", t1 - t0)) s (\(String(format: "%+.1f", (share / 0.5 - 1) * 100))%), throttled \(usage.throttledMicros.map(String.init) ?? "n/a") µs")
        // cgroup v2 (the target, tested in the VM) holds the quota within 10%,
        // the v1 fallback on a loaded VM host within 15%. Above the quota the
        // kernel allows more by design: CFS bandwidth hands each CPU runtime
        // in slices (kernel.sched_cfs_bandwidth_slice_us) that, since Linux
        // 5.4, do not expire at the period's end, so a group running on n
        // CPUs may use up to n slices a period beyond its quota (the kernel's
        // sched-bwc documentation). Measured on a quiet 2-CPU v1 host: +15.4%,
        // inside that bound (+20%). Without any quota the two spinners would
        // use 2 CPUs (+300%).
        let tolerance = manager.version == 2 ? 0.10 : 0.15
        let slice = Double(((try? String(contentsOfFile: "/proc/sys/kernel/sched_cfs_bandwidth_slice_us", encoding: .utf8))
            .flatMap { Int($0.trimmingCharacters(in: .whitespacesAndNewlines)) }) ?? 5_000)
        let cpusUsed = Double(min(2, ProcessInfo.processInfo.activeProcessorCount))
        let overrun = max(tolerance, cpusUsed * slice / 50_000)
        #expect(share / 0.5 - 1 > -tolerance && share / 0.5 - 1 < overrun,
                "0.5 CPU asked, \(share) used (cgroup v\(manager.version); allowed -\(tolerance) to +\(overrun))")
        #expect((usage.throttledMicros ?? 0) > 0, "the quota never throttled")

        spin.jail.kill()
        let exit = try spin.wait()
        #expect((exit.usage?.throttledMicros ?? 0) > 0)
    }

    @Test func twoTenantsBudgetsHoldAtOnce() throws {
        let alpha = TenantBudget(name: "alpha", limits: LimitsSection(memoryMax: 96 << 20, swapMax: 0, pidsMax: 64,
                                                                      cpu: CPUQuota(cpus: 1)), maxJails: 2)
        let beta = TenantBudget(name: "beta", limits: LimitsSection(memoryMax: 160 << 20, swapMax: 0), maxJails: 1)
        let manager = try makeManager(tenants: [alpha, beta])
        defer { closeAndExpectNothingLeft(manager) }

        // Admission: each refusal names the limit, what was asked and what is left.
        let small = try manager.jail(tenant: "alpha", limits: LimitsSection(memoryMax: 64 << 20, pidsMax: 16, cpu: CPUQuota(cpus: 0.5)))
        do {
            _ = try manager.jail(tenant: "alpha", limits: LimitsSection(memoryMax: 64 << 20))
            Issue.record("a jail asking 64M was admitted with 32M left")
        } catch {
            #expect(error.code == .overBudget)
            #expect(error.message.contains("memory_max asked 64M, left 32M of the tenant's 96M"), "\(error)")
        }
        do {
            _ = try manager.jail(tenant: "alpha", limits: LimitsSection(cpu: CPUQuota(cpus: 0.75)))
            Issue.record("a jail asking 0.75 CPU was admitted with 0.5 left")
        } catch {
            #expect(error.message.contains("cpu asked 0.75 CPUs, left 0.5 CPUs"), "\(error)")
        }
        do {
            _ = try manager.jail(tenant: "alpha", limits: LimitsSection(pidsMax: 60))
            Issue.record("a jail asking 60 pids was admitted with 48 left")
        } catch {
            #expect(error.message.contains("pids_max asked 60, left 48"), "\(error)")
        }
        do {
            _ = try manager.jail(tenant: "gamma", limits: LimitsSection())
            Issue.record("an unknown tenant was accepted")
        } catch {
            #expect(error.code == .tenant)
        }
        // A jail without its own memory limit shares what alpha has left.
        let greedy = try manager.jail(tenant: "alpha", limits: LimitsSection())
        do {
            _ = try manager.jail(tenant: "alpha", limits: LimitsSection())
            Issue.record("a third jail was admitted beyond max_jails = 2")
        } catch {
            #expect(error.message.contains("max_jails = 2"), "\(error)")
        }
        let betaJail = try manager.jail(tenant: "beta", limits: LimitsSection(memoryMax: 128 << 20))

        // Both tenants at once: alpha's greedy jail runs into alpha's total
        // (96M), beta's jail allocates 100M inside its own budget untouched.
        let idle = try JailedWorkload(small, ["sleep"])
        let alphaHog = try JailedWorkload(greedy, ["hog", "512"])
        let betaHog = try JailedWorkload(betaJail, ["hog", "100"])

        let alphaExit = try alphaHog.wait()
        let betaExit = try betaHog.wait()
        #expect(alphaExit.reason == .outOfMemory, "alpha's hog was not stopped by alpha's budget: \(alphaExit)")
        #expect(betaExit.exitCode == 0, "beta's hog did not finish within beta's budget: \(betaExit)")
        #expect(betaHog.readAll(seconds: 1).contains("hog done 100"))
        let alphaUsage = try #require(alphaExit.usage)
        #expect((alphaUsage.oomKills ?? 0) >= 1)
        // The kernel lets a task it has chosen to OOM-kill charge a little
        // past the limit while it exits; memory.peak records that.
        #expect((alphaUsage.memoryPeakBytes ?? .max) <= (96 << 20) + oomExitSlack)
        #expect((betaExit.usage?.oomKills ?? 0) == 0)
        #expect(idle.isRunning, "alpha's idle jail was killed by its sibling's OOM")
        report(manager, "tenant alpha memory 96M: jail without own limit peaked at \(alphaUsage.memoryPeakBytes ?? 0) bytes and was OOM-killed; tenant beta's jail ran 100M to the end")

        idle.jail.kill()
        try idle.wait()
    }

    @Test func freezeThawAndKillThroughTheCgroup() throws {
        let manager = try makeManager()
        defer { closeAndExpectNothingLeft(manager) }
        let group = try manager.jail(limits: LimitsSection())
        let spin = try JailedWorkload(group, ["spin", "2"])
        // PID 1 of the jail and two spinners.
        #expect(CgroupFS.wait(seconds: 30) { group.processes.count == 3 })

        try group.freeze()
        #expect(group.isFrozen)
        // CPU time is charged to the cgroup a little late (per-CPU counts
        // are flushed on read): let it settle, then the two spinners, which
        // would use 1 s of CPU in the next 0.5 s, must use none.
        usleep(200_000)
        let frozenAt = try cpuMicros(group)
        usleep(500_000)
        let frozenUse = try cpuMicros(group) - frozenAt
        #expect(frozenUse < 10_000, "a frozen jail kept using CPU: \(frozenUse) µs in 0.5 s")

        try group.thaw()
        #expect(!group.isFrozen)
        #expect(CgroupFS.wait(seconds: 30) { ((try? cpuMicros(group)) ?? 0) > frozenAt }, "the thawed jail did not run")

        // Kill a frozen jail too: the kill must not wait for a thaw.
        try group.freeze()
        try group.kill()
        #expect(group.processes.isEmpty)
        let exit = try spin.wait()
        #expect(exit.signal == SIGKILL)
        #expect(!FileManager.default.fileExists(atPath: group.path))
        try group.remove() // the launcher removed it already; twice is fine
    }

    @Test func jailsOfADeadLauncherAreSweptOnTheNextStart() throws {
        // A launcher that is gone: a process that ran and was reaped.
        let gone = try Workload.spawn(["/bin/true"], stdinPipe: false)
        let start = LauncherIdentity.startTime(of: gone.pid)
        gone.wait(seconds: 30)
        let deadLauncher = LauncherIdentity(pid: gone.pid, startTime: try #require(start))
        #expect(!deadLauncher.isAlive)

        let name = "stockade-test-\(getpid())-sweep"
        let crashed = try makeManager(identity: deadLauncher, name: name)
        let orphan = try crashed.jail(limits: LimitsSection(pidsMax: 8))
        let left = try JailedWorkload(orphan, ["sleep"])

        // The next manager on the host removes the dead launcher's jail...
        let next = try makeManager(sweep: true, name: name)
        #expect(next.swept == [orphan.path])
        #expect(try left.wait(seconds: 30).signal == SIGKILL, "the stale jail's process was not killed")
        #expect(!FileManager.default.fileExists(atPath: orphan.path))

        // ...but never the jail of a launcher that still runs.
        let mine = try next.jail(limits: LimitsSection())
        let third = try makeManager(sweep: true, name: name)
        #expect(third.swept.isEmpty)
        #expect(FileManager.default.fileExists(atPath: mine.path))

        try mine.remove()
        try third.close()
        try next.close()
        closeAndExpectNothingLeft(crashed)
    }

    @Test func directoryFDIsOfferedOnlyOnV2() throws {
        let manager = try makeManager()
        defer { closeAndExpectNothingLeft(manager) }
        let jail = try manager.jail(limits: LimitsSection(pidsMax: 4))
        if manager.version == 2 {
            let fd = try #require(jail.directory)
            var st = stat()
            #expect(fstat(fd.rawValue, &st) == 0 && (st.st_mode & S_IFMT) == S_IFDIR)
        } else {
            #expect(jail.directory == nil)
        }
        try jail.remove()
        #expect(jail.directory == nil)
    }

    @Test func plainProcessesCanBeAttached() throws {
        // attach(pid:) on its own, for launchers that clone without
        // CLONE_INTO_CGROUP: the workload waits on stdin until it is placed.
        let manager = try makeManager()
        defer { closeAndExpectNothingLeft(manager) }
        let group = try manager.jail(limits: LimitsSection(pidsMax: 4))
        let sleeper = try Workload.start(["sleep"])
        try group.attach(pid: sleeper.pid)
        sleeper.go()
        #expect(group.processes == [sleeper.pid])
        try group.kill()
        #expect(sleeper.wait(seconds: 30).signal == SIGKILL)
        try group.remove()
    }
}

/// The "no internal processes" rule, on a real cgroup v2 tree: a launcher
/// whose own (delegated) cgroup holds it moves itself into a leaf beside the
/// base before it hands controllers down. This test moves the test process
/// itself, so it runs only where it may (cgroup v2, as root, in the root
/// cgroup: the VM suite) and puts the process back afterwards.
/// It belongs to the serialized suite: no other cgroup test runs while the
/// test process sits in a cgroup of its own.
extension CgroupBudgetTests {
    @Test(.enabled(if: CgroupTestHost.v2InRootCgroup, "needs root in the root cgroup of a cgroup v2 tree with memory, cpu and pids"))
    func launcherMovesItselfIntoALeafBesideTheBase() throws {
        let host = CgroupHost.detect()
        let u = try #require(host.unified)
        let own = "/stockade-test-\(getpid())-delegated"
        let ownDir = u.mountPoint + own
        // As systemd does for a unit with Delegate=yes: the root hands the
        // controllers to the unit's cgroup, which holds the launcher.
        try CgroupFS.write(u.mountPoint + "/cgroup.subtree_control", "+memory +pids +cpu")
        try CgroupFS.mkdir(ownDir, existingOK: false)
        try CgroupFS.write(ownDir + "/cgroup.procs", "\(getpid())")
        defer {
            try? CgroupFS.write(u.mountPoint + "/cgroup.procs", "\(getpid())")
            _ = CgroupFS.rmdir(ownDir + "/stockade")
            _ = CgroupFS.rmdir(ownDir + "/launcher")
            _ = CgroupFS.rmdir(ownDir)
        }
        let backend = CgroupV2Backend(host: host, mount: u.mountPoint, basePath: own + "/stockade", ownDelegated: own)
        try backend.prepare()
        let selfCgroup = CgroupFS.read("/proc/self/cgroup") ?? ""
        #expect(selfCgroup.contains("0::\(own)/launcher"), "the launcher did not move into a leaf: \(selfCgroup)")
        let delegated = Set(words(CgroupFS.read(ownDir + "/cgroup.subtree_control")))
        #expect(delegated.isSuperset(of: ["memory", "pids", "cpu"]))
        let base = Set(words(CgroupFS.read(ownDir + "/stockade/cgroup.subtree_control")))
        #expect(base.isSuperset(of: ["memory", "pids", "cpu"]), "the base does not hand controllers to tenants")

        // Another process in the launcher's cgroup blocks delegation, with a message.
        let other = "/stockade-test-\(getpid())-crowded"
        try CgroupFS.mkdir(u.mountPoint + other, existingOK: false)
        let sleeper = try Workload.start(["sleep"])
        try CgroupFS.write(u.mountPoint + other + "/cgroup.procs", "\(sleeper.pid)")
        try CgroupFS.write(u.mountPoint + other + "/cgroup.procs", "\(getpid())")
        defer {
            try? CgroupFS.write(u.mountPoint + "/cgroup.procs", "\(getpid())")
            Glibc.kill(sleeper.pid, SIGKILL)
            sleeper.wait(seconds: 30)
            _ = CgroupFS.wait(seconds: 5) { CgroupFS.rmdir(u.mountPoint + other + "/launcher") == nil }
            _ = CgroupFS.wait(seconds: 5) { CgroupFS.rmdir(u.mountPoint + other) == nil }
        }
        let crowded = CgroupV2Backend(host: host, mount: u.mountPoint, basePath: other + "/stockade", ownDelegated: other)
        do {
            try crowded.prepare()
            Issue.record("delegation succeeded although another process shares the launcher's cgroup")
        } catch {
            #expect(error.message.contains("also holds processes \(sleeper.pid)"), "\(error)")
        }
        try CgroupFS.write(u.mountPoint + "/cgroup.procs", "\(getpid())")
    }
}

extension CgroupBudgetTests {
    /// The file that carries a knob: its v2 name, or the v1 file of the
    /// hierarchy that holds the controller.
    func knob(_ manager: CgroupManager, _ group: JailGroup, v2: String, v1: (controller: String, file: String)) -> String? {
        if let backend = manager.backend as? CgroupV1Backend {
            return backend.file(v1.controller, group.rel, v1.file).flatMap(CgroupFS.readTrimmed)
        }
        return CgroupFS.readTrimmed(group.path + "/" + v2)
    }

    /// A block device of this machine (`MAJ:MIN`), for io.max.
    static var blockDevice: String? {
        for name in ((try? FileManager.default.contentsOfDirectory(atPath: "/sys/block")) ?? []).sorted() where name.hasPrefix("vd") || name.hasPrefix("sd") || name.hasPrefix("nvme") {
            if let dev = CgroupFS.readTrimmed("/sys/block/\(name)/dev") { return dev }
        }
        return nil
    }

    @Test func everyKnobIsWrittenAsAsked() throws {
        let manager = try makeManager()
        defer { closeAndExpectNothingLeft(manager) }
        let device = Self.blockDevice
        var limits = LimitsSection(memoryMax: 256 << 20, memoryHigh: 192 << 20, swapMax: 0, pidsMax: 100,
                                   cpu: CPUQuota(quota: 150_000, period: 200_000), cpuWeight: 50, cpuset: CPUSet([0]))
        if let device { limits.ioMax = [try #require(IOLimit(parsing: "\(device) rbps=1048576 wiops=100"))] }
        let group = try manager.jail(limits: limits)

        #expect(knob(manager, group, v2: "memory.max", v1: ("memory", "memory.limit_in_bytes")) == "\(256 << 20)")
        #expect(knob(manager, group, v2: "memory.high", v1: ("memory", "memory.soft_limit_in_bytes")) == "\(192 << 20)")
        #expect(knob(manager, group, v2: "pids.max", v1: ("pids", "pids.max")) == "100")
        #expect(knob(manager, group, v2: "cpuset.cpus", v1: ("cpuset", "cpuset.cpus")) == "0")
        if manager.version == 2 {
            #expect(knob(manager, group, v2: "memory.swap.max", v1: ("", "")) == "0")
            #expect(knob(manager, group, v2: "cpu.max", v1: ("", "")) == "150000 200000")
            #expect(knob(manager, group, v2: "cpu.weight", v1: ("", "")) == "50")
            if let device {
                #expect(knob(manager, group, v2: "io.max", v1: ("", "")) == "\(device) rbps=1048576 wbps=max riops=max wiops=100")
            }
        } else {
            #expect(knob(manager, group, v2: "", v1: ("cpu", "cpu.cfs_quota_us")) == "150000")
            #expect(knob(manager, group, v2: "", v1: ("cpu", "cpu.cfs_period_us")) == "200000")
            #expect(knob(manager, group, v2: "", v1: ("cpu", "cpu.shares")) == "512")
            if let device {
                #expect(knob(manager, group, v2: "", v1: ("blkio", "blkio.throttle.read_bps_device")) == "\(device) 1048576")
                #expect(knob(manager, group, v2: "", v1: ("blkio", "blkio.throttle.write_iops_device")) == "\(device) 100")
            }
            #expect(group.notes.contains { $0.contains("memory_high") })
        }
        // What admission reads back is what was written.
        let back = manager.backend.limits(of: group.rel)
        #expect(back.memoryMax == 256 << 20 && back.pidsMax == 100 && back.cpu?.description == "150000 200000")
        report(manager, "knobs written: \(limits.asked.map(\.key).joined(separator: " "))\(device == nil ? " (no block device for io_max)" : " on \(device!)")")
        try group.remove()
    }
}
