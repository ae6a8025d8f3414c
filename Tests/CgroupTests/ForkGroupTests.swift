// A cgroup per forked worker below a template's jail (JailGroup with
// forks: true, makeForkGroup), on the real kernel: v1 here, v2 in the VM.
import Foundation
import Testing
@testable import StockadeCgroups
#if canImport(Glibc)
import Glibc
#endif

@Suite("CgroupForkGroup", .serialized, .enabled(if: CgroupTestHost.canManageCgroups, "needs root and a cgroup hierarchy with memory, cpu and pids"))
struct CgroupForkGroupTests {
    @Test("A fork over its own memory budget is OOM-killed alone; the template and a sibling fork keep running")
    func forkOOMIsKilledAlone() throws {
        let manager = try makeManager()
        defer { closeAndExpectNothingLeft(manager) }
        let jail = try manager.jail(limits: LimitsSection(memoryMax: 256 << 20, pidsMax: 64), forks: true)
        if manager.version == 2 {
            // No internal processes: the jail hands controllers down and its
            // processes live in the leaf.
            #expect(jail.leaf == jail.rel + "/" + JailGroup.templateLeaf)
            let control = CgroupFS.read(jail.path + "/cgroup.subtree_control") ?? ""
            #expect(control.contains("memory") && control.contains("pids"), "\(control)")
        }
        let template = try Workload.start(["sleep"])
        try jail.attach(pid: template.pid)
        template.go()
        let hogGroup = try jail.makeForkGroup(limits: LimitsSection(memoryMax: 32 << 20, swapMax: 0, pidsMax: 8))
        let siblingGroup = try jail.makeForkGroup(limits: LimitsSection(memoryMax: 32 << 20))
        #expect(hogGroup.path != siblingGroup.path)
        #expect((hogGroup.path as NSString).deletingLastPathComponent == jail.path, "\(hogGroup.path) is not below \(jail.path)")
        let sibling = try Workload.start(["sleep"])
        try siblingGroup.attach(pid: sibling.pid)
        sibling.go()
        let hog = try Workload.start(["hog", "128"])
        try hogGroup.attach(pid: hog.pid)
        #expect(hogGroup.processes == [hog.pid])
        hog.go()
        let status = hog.wait(seconds: 120)
        let lines = hog.readAll(seconds: 1)
        #expect(status.signal == SIGKILL, "the hog was not killed: \(status.raw), \(lines.suffix(2))")
        #expect(!lines.contains("hog done 128"))
        let usage = try #require(hogGroup.usage())
        #expect((usage.oomKills ?? 0) >= 1, "no OOM kill in the fork's cgroup: \(usage)")
        #expect((usage.memoryPeakBytes ?? .max) <= (32 << 20) + oomExitSlack, "\(usage)")
        report(manager, "fork memory_max 32 MiB under a 256 MiB jail: peak \(usage.memoryPeakBytes ?? 0), oom_kill \(usage.oomKills ?? 0)")
        // Only the hog: the template and the sibling fork run on, and no
        // OOM kill is counted against them.
        #expect(template.isRunning)
        #expect(sibling.isRunning)
        #expect((siblingGroup.usage()?.oomKills ?? 0) == 0)
        try hogGroup.remove()
        #expect(!FileManager.default.fileExists(atPath: hogGroup.path))
        // Removing the jail takes the forks' cgroups and what runs in them.
        try jail.remove()
        #expect(sibling.wait(seconds: 10).signal == SIGKILL)
        #expect(template.wait(seconds: 10).signal == SIGKILL)
        #expect(!FileManager.default.fileExists(atPath: siblingGroup.path))
        #expect(!FileManager.default.fileExists(atPath: jail.path))
    }

    @Test("A jail launched into a template's cgroup runs in its leaf (v2: CLONE_INTO_CGROUP), and its end removes the forks' cgroups")
    func jailInATemplateCgroup() throws {
        let manager = try makeManager()
        defer { closeAndExpectNothingLeft(manager) }
        let group = try manager.jail(limits: LimitsSection(memoryMax: 128 << 20), forks: true)
        let jailed = try JailedWorkload(group, ["sleep"])
        let leafPath = manager.backend.path(group.leaf)
        let inLeaf = CgroupFS.procs(leafPath)
        #expect(inLeaf.contains(jailed.jail.pid), "the jail's PID 1 \(jailed.jail.pid) is not in \(leafPath): \(inLeaf)")
        if manager.version == 2 { #expect(CgroupFS.procs(group.path).isEmpty, "processes in the jail's own cgroup on v2") }
        let fork = try group.makeForkGroup(limits: LimitsSection(pidsMax: 4))
        #expect(FileManager.default.fileExists(atPath: fork.path))
        jailed.jail.kill()
        _ = try jailed.wait()
        #expect(!FileManager.default.fileExists(atPath: fork.path), "the jail's end left \(fork.path)")
        #expect(!FileManager.default.fileExists(atPath: group.path))
    }

    @Test("A fork's limits are checked like a jail's, and on v2 only a jail made for forks takes them")
    func forkGroupsNeedATemplateJail() throws {
        let manager = try makeManager()
        defer { closeAndExpectNothingLeft(manager) }
        let plain = try manager.jail(limits: LimitsSection(memoryMax: 64 << 20))
        if manager.version == 2 {
            let error = #expect(throws: CgroupError.self) { _ = try plain.makeForkGroup(limits: LimitsSection(memoryMax: 16 << 20)) }
            #expect(error?.description.contains("forks: true") == true, "\(error?.description ?? "")")
        }
        try plain.remove()
        let jail = try manager.jail(limits: LimitsSection(memoryMax: 64 << 20), forks: true)
        let group = try jail.makeForkGroup(limits: LimitsSection(memoryMax: 16 << 20, pidsMax: 4))
        #expect(manager.backend.limits(of: group.rel).memoryMax == 16 << 20)
        #expect(manager.backend.limits(of: group.rel).pidsMax == 4)
        try jail.remove()
        #expect(!FileManager.default.fileExists(atPath: group.path))
    }
}
