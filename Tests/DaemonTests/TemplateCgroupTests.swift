// A budget per forked worker: each fork of a template tenant in a cgroup of
// its own below the template's jail, on the real kernel (cgroup v1 on a
// hybrid host, v2 in the VM). A fork that outgrows its memory budget is
// killed by the kernel alone; its sibling and the template keep serving.
import Foundation
import Testing
@testable import StockadeDaemon
import StockadeCgroups
import StockadeConfig
#if canImport(Glibc)
import Glibc
#endif

/// The cgroup a host process is in for `controller` (v1), or its v2 path,
/// as /proc/PID/cgroup says.
private func cgroupLine(of pid: Int32, controller: String) -> String? {
    guard let text = try? String(contentsOfFile: "/proc/\(pid)/cgroup", encoding: .utf8) else { return nil }
    var unified: String?
    for line in text.split(separator: "\n") {
        let parts = line.split(separator: ":", maxSplits: 2, omittingEmptySubsequences: false)
        guard parts.count == 3 else { continue }
        if parts[1].split(separator: ",").contains(Substring(controller)) { return String(parts[2]) }
        if parts[0] == "0" { unified = String(parts[2]) }
    }
    return unified
}

/// The directory of `pid`'s cgroup that holds `controller`'s files: its
/// hierarchy's on v1, the unified one on v2.
private func controllerDirectory(of pid: Int32, _ controller: String) -> String? {
    guard let line = cgroupLine(of: pid, controller: controller) else { return nil }
    let v1 = "/sys/fs/cgroup/" + controller
    return FileManager.default.fileExists(atPath: v1 + "/cgroup.procs") ? v1 + line : "/sys/fs/cgroup" + line
}

/// Whether this kernel attaches a pidfd of a sender to unix messages
/// (SO_PASSPIDFD, Linux 6.5), which templates need: the VM's 6.1 kernel
/// does not; CgroupForkGroupTests covers the fork groups there.
private let kernelPassesPidfds: Bool = {
    var pair: [Int32] = [-1, -1]
    guard socketpair(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &pair) == 0 else { return false }
    defer { close(pair[0]); close(pair[1]) }
    var on: Int32 = 1
    return setsockopt(pair[0], SOL_SOCKET, 76 /* SO_PASSPIDFD */, &on, socklen_t(MemoryLayout<Int32>.size)) == 0
}()

@Suite(.serialized, .enabled(if: Fixture.hasVenv && Fixture.isRoot, "needs the venv (make venv) and root for cgroups"),
       .enabled(if: kernelPassesPidfds, "templates need SO_PASSPIDFD (Linux 6.5 or later), which this kernel lacks"))
struct TemplateCgroupTests {
    static let tenant = Fixture.Tenant(name: "tpl", min: 2, max: 2, extra: """
        template = true
        [tenant.tpl.fork_limits]
        memory_max = "48M"
        pids_max = 16
        """, access: ["alice": "invoker"], memoryMax: "384M", worker: "template_worker.py")

    @Test("Each forked worker is in a cgroup of its own with the fork budget, below the template's jail")
    func aCgroupPerFork() throws {
        let d = try RunningDaemon(tenants: [Self.tenant])
        defer { d.close() }
        let pool = try #require(d.daemon.pool("tpl"))
        #expect(d.waitUntil(60) { pool.workers().filter { $0.state == "idle" }.count == 2 }, "\(pool.info())")
        let workers = pool.workers()
        try #require(workers.count == 2, "\(pool.info())")
        let templatePid = try #require(hostParent(of: workers[0].pid))
        let templateGroup = try #require(cgroupLine(of: templatePid, controller: "memory"))
        var seen: Set<String> = []
        for w in workers {
            let path = try #require(w.cgroup, "worker \(w.id) reports no cgroup")
            #expect(path.split(separator: "/").last?.hasPrefix("fork-") == true, "\(path)")
            // The kernel's word: the worker runs in that cgroup, a child of
            // the jail the template is in (v2: beside the template's leaf).
            let mine = try #require(cgroupLine(of: w.pid, controller: "memory"))
            #expect(path.hasSuffix(mine) || (path as NSString).lastPathComponent == (mine as NSString).lastPathComponent,
                    "worker \(w.id) is in \(mine), reported \(path)")
            let jail = (mine as NSString).deletingLastPathComponent
            #expect(templateGroup == jail || templateGroup == jail + "/" + JailGroup.templateLeaf,
                    "template in \(templateGroup), fork in \(mine)")
            let memory = try #require(controllerDirectory(of: w.pid, "memory"))
            #expect((CgroupFS.readNumber(memory + "/memory.max") ?? CgroupFS.readNumber(memory + "/memory.limit_in_bytes")) == 48 << 20,
                    "\(memory)")
            let pids = try #require(controllerDirectory(of: w.pid, "pids"))
            #expect(CgroupFS.readNumber(pids + "/pids.max") == 16, "\(pids)")
            seen.insert(mine)
        }
        #expect(seen.count == 2, "each fork has a cgroup of its own: \(seen)")
        // The template's spare is in a fork cgroup of its own before any
        // FORK reaches it (the daemon moved it on its SPARE).
        var spareGroup: String?
        let deadline = ContinuousClock.now + .seconds(20)
        while spareGroup == nil, ContinuousClock.now < deadline {
            usleep(20_000)
            let text = (try? String(contentsOfFile: "/proc/\(templatePid)/task/\(templatePid)/children", encoding: .utf8)) ?? ""
            let spares = text.split(separator: " ").compactMap { Int32($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
                .filter { !workers.map(\.pid).contains($0) }
            if let spare = spares.first, let group = cgroupLine(of: spare, controller: "memory"),
               (group as NSString).lastPathComponent.hasPrefix("fork-") {
                spareGroup = group
            }
        }
        let placed = try #require(spareGroup, "no spare in a fork cgroup of its own")
        #expect(!seen.contains(placed))
        // A fork that ends takes its cgroup with it.
        let gone = workers[0]
        kill(gone.pid, SIGKILL)
        #expect(d.waitUntil(30) { !FileManager.default.fileExists(atPath: gone.cgroup ?? "") })
        #expect(d.waitUntil(30) { pool.workers().filter { $0.state == "idle" && $0.id != gone.id }.count == 2 })
    }

    @Test("A fork over its memory budget is OOM-killed alone; its sibling and the template serve on, and it is replaced")
    func oomKillsTheForkAlone() throws {
        let d = try RunningDaemon(tenants: [Self.tenant])
        defer { d.close() }
        let pool = try #require(d.daemon.pool("tpl"))
        func idle() -> [WorkerInfo] { pool.workers().filter { $0.state == "idle" } }
        #expect(d.waitUntil(60) { idle().count == 2 }, "\(pool.info())")
        let before = idle()
        let templatePid = try #require(hostParent(of: before[0].pid))
        let alice = d.client("alice")
        // 8 MiB fits the 48M fork budget; 96 MiB does not (the jail's 384M would).
        #expect(try alice.infer("tpl", "alloc:8").text == "8")
        let r = try alice.infer("tpl", "alloc:96")
        #expect(r.status == 502, "\(r.status) \(r.text)")
        #expect((r.json["message"] as? String)?.contains("OOM") == true, "\(r.text)")
        // Only one worker died; the other still runs, under the same template.
        #expect(d.waitUntil(30) { idle().count == 2 }, "\(pool.workers())")
        let after = idle()
        let survivors = Set(before.map(\.pid)).intersection(after.map(\.pid))
        #expect(survivors.count == 1, "before \(before.map(\.pid)), after \(after.map(\.pid))")
        for w in after { #expect(hostParent(of: w.pid) == templatePid, "worker \(w.id) is not a fork of the first template") }
        for _ in 0..<4 {
            let ok = try alice.infer("tpl", "echo:on")
            #expect(ok.status == 200 && ok.text == "tpl:on")
        }
        let info = try alice.get("/v1/tenants/tpl").json
        #expect(info["oomKills"] as? Int == 1, "\(info)")
        let exits = d.auditEvents().filter { $0["event"] as? String == "exit" }
        #expect(exits.count == 1 && exits.first?["outcome"] as? String == "oom", "\(exits)")
        #expect(!d.auditEvents().contains { $0["event"] as? String == "launch" && $0["worker"] as? String == "tpl-template-2" })
    }
}

@Suite("fork_limits in a template tenant's configuration")
struct TemplateForkLimitsConfigTests {
    private func config(template: Bool = true, _ forkLimits: String?) throws(ProfileError) -> DaemonConfig {
        try TemplateFixture.config("template = \(template)\n" + (forkLimits.map { "[tenant.t.fork_limits]\n" + $0 } ?? ""))
    }

    @Test("Without the table a fork gets the profile's memory_max, pids_max and cpu; with it, its own")
    func defaultsAndOwn() throws {
        let tenant = try config(nil).tenants[0]
        let jail: LimitsSection = tenant.profile.limits
        let byDefault: LimitsSection = tenant.forkLimits
        #expect(byDefault.memoryMax == jail.memoryMax)
        #expect(byDefault.pidsMax == jail.pidsMax)
        #expect(byDefault.cpu?.microCPUs == jail.cpu?.microCPUs)
        #expect(byDefault.memoryMax != nil, "inference-cpu.toml sets memory_max")
        let own: LimitsSection = try config("memory_max = \"64M\"\npids_max = 8\ncpu = 0.5").tenants[0].forkLimits
        #expect(own.memoryMax == 64 << 20)
        #expect(own.pidsMax == 8)
        #expect(own.cpu?.cpus == 0.5)
    }

    @Test("A fork limit above the jail's, a key a fork's cgroup does not take, or the table without template = true is an error at its line")
    func refusals() {
        let cases: [(String, Bool, String, String)] = [
            ("memory_max = \"64G\"", true, "memory_max", "above the profile's"),
            ("cpuset = \"0\"", true, "cpuset", "whole jail"),
            ("memory_max = \"64M\"", false, "fork_limits", "template = true"),
        ]
        for (forkLimits, template, key, words) in cases {
            do {
                _ = try config(template: template, forkLimits)
                Issue.record("accepted \(forkLimits) (template = \(template))")
            } catch {
                #expect(error.key.hasSuffix(key) && error.description.contains(words), "\(error)")
            }
        }
    }
}
