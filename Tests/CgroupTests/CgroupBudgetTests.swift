import Foundation
import Testing
@testable import StockadeCore
#if canImport(Glibc)
import Glibc
#endif

/// Budgets enforced by the real kernel, on whichever backend the host has:
/// cgroup v1 on our hybrid build hosts, cgroup v2 in the qemu VM
/// (`scripts/vm/run-vm-tests.sh`, part of `make test`) and on pure v2 hosts.
/// The workloads are plain child processes placed in the jail cgroups.
@Suite("CgroupBudget", .serialized, .enabled(if: CgroupTestHost.canManageCgroups, "needs root and a cgroup hierarchy with memory, cpu and pids"))
struct CgroupBudgetTests {
    @Test func memoryHogIsOOMKilledAtMemoryMaxWhileSiblingSurvives() throws {
        let manager = try makeManager()
        defer { closeAndExpectNothingLeft(manager) }
        let asked: UInt64 = 64 << 20
        let hogJail = try manager.jail(limits: LimitsSection(memoryMax: asked, swapMax: 0))
        let siblingJail = try manager.jail(limits: LimitsSection(memoryMax: 32 << 20))

        let sibling = try Workload.start(["sleep"])
        try siblingJail.attach(pid: sibling.pid)
        sibling.go()
        let hog = try Workload.start(["hog", "512"])
        try hogJail.attach(pid: hog.pid)
        hog.go()

        let status = hog.wait(seconds: 120)
        let lines = hog.readAll(seconds: 1)
        #expect(status.signal == SIGKILL, "the hog was not OOM-killed: \(lines.suffix(3))")
        #expect(!lines.contains("hog done 512"))
        let usage = try hogJail.usage()
        #expect((usage.oomKills ?? 0) >= 1, "no OOM kill recorded: \(usage)")
        let peak = try #require(usage.memoryPeakBytes)
        #expect(peak <= asked, "peak \(peak) above memory_max \(asked)")
        #expect(peak >= asked / 2, "peak \(peak) far below memory_max \(asked): the limit was not what stopped it")
        let reached = (lines.last { $0.hasPrefix("hog ") }?.split(separator: " ").last).flatMap { Int($0) } ?? 0
        report(manager, "memory_max \(asked >> 20) MiB: peak \(peak) bytes (\(String(format: "%.1f", Double(peak) / Double(asked) * 100))% of asked), hog reached \(reached) MiB, oom_kill \(usage.oomKills ?? 0)")

        // The sibling jail and the launcher (this process) are untouched.
        #expect(sibling.isRunning)
        #expect(siblingJail.processes == [sibling.pid])
        #expect((try siblingJail.usage().oomKills ?? 0) == 0)

        try hogJail.remove()
        try siblingJail.kill()
        #expect(sibling.wait(seconds: 30).signal == SIGKILL)
        try siblingJail.remove()
    }

    @Test func forkBombStopsAtPidsMax() throws {
        let manager = try makeManager()
        defer { closeAndExpectNothingLeft(manager) }
        let jail = try manager.jail(limits: LimitsSection(pidsMax: 16))
        let bomb = try Workload.start(["forkbomb"])
        try jail.attach(pid: bomb.pid)
        bomb.go()

        let line = try #require(bomb.readLine(seconds: 120), "the fork bomb never hit a limit")
        // "forked N errno E": N children besides the bomb itself.
        let parts = line.split(separator: " ")
        let forked = try #require(parts.count == 4 ? Int(parts[1]) : nil, "unexpected line \(line)")
        #expect(parts[3] == "\(EAGAIN)", "fork failed with errno \(parts[3]), not EAGAIN")
        #expect(forked == 15, "pids.max = 16 allows the bomb and 15 children, it made \(forked)")
        #expect(jail.processes.count <= 16)
        let usage = try jail.usage()
        if let peak = usage.pidsPeak { #expect(peak == 16) }
        report(manager, "pids_max 16: the fork bomb made \(forked) children, then fork failed with EAGAIN; pids.peak \(usage.pidsPeak.map(String.init) ?? "n/a")")

        try jail.kill()
        #expect(jail.processes.isEmpty)
        #expect(bomb.wait(seconds: 30).signal == SIGKILL)
        try jail.remove()
    }

    @Test func busyLoopUnderHalfCPUUsesHalfACPU() throws {
        // A high weight keeps the measurement about the quota, not about
        // whoever else is busy on a shared build host.
        let tenant = TenantBudget(name: "cpu", limits: LimitsSection(cpuWeight: 10_000))
        let manager = try makeManager(tenants: [tenant])
        defer { closeAndExpectNothingLeft(manager) }
        // The base competes with every other process at the root of the
        // host's tree: weight it too (on a quiet host this changes nothing).
        try manager.backend.apply(LimitsSection(cpuWeight: 10_000), to: "")
        let quota = try #require(CPUQuota(parsing: "50000 100000"))
        let jail = try manager.jail(tenant: "cpu", limits: LimitsSection(cpu: quota, cpuWeight: 10_000))
        // Two spinning processes ask for two CPUs; the quota allows half of one.
        let spin = try Workload.start(["spin", "2"])
        try jail.attach(pid: spin.pid)
        spin.go()
        usleep(1_000_000)

        // CPU time the kernel charged to the cgroup over a fixed wall interval.
        let t0 = CgroupFS.monotonicSeconds()
        let c0 = try cpuMicros(jail)
        usleep(6_000_000)
        let c1 = try cpuMicros(jail)
        let t1 = CgroupFS.monotonicSeconds()
        let share = Double(c1 - c0) / 1e6 / (t1 - t0)
        let usage = try jail.usage()
        report(manager, "cpu.max 50000 100000 (0.5 CPU): used \(String(format: "%.3f", share)) CPU over \(String(format: "%.1f", t1 - t0)) s (\(String(format: "%+.1f", (share / 0.5 - 1) * 100))%), throttled \(usage.throttledMicros.map(String.init) ?? "n/a") µs")
        #expect(share > 0.45 && share < 0.55, "0.5 CPU asked, \(share) used")
        #expect((usage.throttledMicros ?? 0) > 0, "the quota never throttled")

        try jail.kill()
        spin.wait(seconds: 30)
        try jail.remove()
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
        let idle = try Workload.start(["sleep"])
        try small.attach(pid: idle.pid)
        idle.go()
        let alphaHog = try Workload.start(["hog", "512"])
        try greedy.attach(pid: alphaHog.pid)
        let betaHog = try Workload.start(["hog", "100"])
        try betaJail.attach(pid: betaHog.pid)
        alphaHog.go()
        betaHog.go()

        let alphaStatus = alphaHog.wait(seconds: 120)
        let betaStatus = betaHog.wait(seconds: 120)
        #expect(alphaStatus.signal == SIGKILL, "alpha's hog was not stopped by alpha's budget")
        #expect(betaStatus.exitCode == 0, "beta's hog did not finish within beta's budget")
        #expect(betaHog.readAll(seconds: 1).contains("hog done 100"))
        let alphaUsage = try greedy.usage()
        #expect((alphaUsage.oomKills ?? 0) >= 1)
        #expect((alphaUsage.memoryPeakBytes ?? .max) <= 96 << 20)
        #expect((try betaJail.usage().oomKills ?? 0) == 0)
        #expect(idle.isRunning, "alpha's idle jail was killed by its sibling's OOM")
        report(manager, "tenant alpha memory 96M: jail without own limit peaked at \(alphaUsage.memoryPeakBytes ?? 0) bytes and was OOM-killed; tenant beta's jail ran 100M to the end")

        for j in [small, greedy, betaJail] { try j.remove() }
        idle.wait(seconds: 30)
    }

    @Test func freezeThawAndKillThroughTheCgroup() throws {
        let manager = try makeManager()
        defer { closeAndExpectNothingLeft(manager) }
        let jail = try manager.jail(limits: LimitsSection())
        let spin = try Workload.start(["spin", "2"])
        try jail.attach(pid: spin.pid)
        spin.go()
        #expect(CgroupFS.wait(seconds: 30) { jail.processes.count == 2 })

        try jail.freeze()
        #expect(jail.isFrozen)
        let frozenAt = try cpuMicros(jail)
        usleep(500_000)
        #expect(try cpuMicros(jail) == frozenAt, "a frozen jail kept using CPU")

        try jail.thaw()
        #expect(!jail.isFrozen)
        #expect(CgroupFS.wait(seconds: 30) { ((try? cpuMicros(jail)) ?? 0) > frozenAt }, "the thawed jail did not run")

        // Kill a frozen jail too: the kill must not wait for a thaw.
        try jail.freeze()
        try jail.kill()
        #expect(jail.processes.isEmpty)
        #expect(spin.wait(seconds: 30).signal == SIGKILL)
        try jail.remove()
        #expect(!FileManager.default.fileExists(atPath: jail.path))
        try jail.remove() // twice is fine
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
        let left = try Workload.start(["sleep"])
        try orphan.attach(pid: left.pid)
        left.go()

        // This launcher's own jail must survive a sweep by another manager.
        let next = try makeManager(sweep: true, name: name)
        #expect(next.swept == [orphan.path])
        #expect(left.wait(seconds: 30).signal == SIGKILL, "the stale jail's process was not killed")
        #expect(!FileManager.default.fileExists(atPath: orphan.path))

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
}
