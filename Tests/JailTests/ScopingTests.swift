import Foundation
import Testing
import StockadeJail
import StockadeConfig
import StockadeSystem
import SystemPackage
import CStockadeSpawn

/// A jail that shares the host's pid or network namespace is held in by
/// Landlock's scoping alone: it must not signal another jail's processes,
/// and without scoping it must not start.
@Suite("Jails without a pid or net namespace")
struct ScopingTests {
    static func profile(namespaces: String, landlock: String = "") throws -> Profile {
        // A fresh /proc needs a pid namespace of its own.
        try minimalProfile {
            $0.replacingOccurrences(of: #"namespaces = ["user", "pid", "mount", "net", "ipc", "uts", "cgroup"]"#, with: "namespaces = \(namespaces)")
                .replacingOccurrences(of: #"root_size = "1M""#, with: #"root_size = "1M""# + (namespaces.contains("pid") ? "" : "\nproc = false"))
                + (landlock.isEmpty ? "" : "\n[landlock]\n\(landlock)\n")
        }
    }

    @Test("refused with Landlock disabled, or on a kernel without scoping (ABI < 6); waived only by a reason")
    func refusedWithoutScoping() throws {
        for ns in [#"["user", "mount", "net"]"#, #"["user", "mount", "pid"]"#] {
            let p = try Self.profile(namespaces: ns, landlock: "enabled = false")
            let e = #expect(throws: ProfileError.self) { _ = try LandlockPlan(profile: p, abi: 6) }
            #expect(e?.description.contains("landlock.enabled") == true && e?.description.contains("scoping") == true, "\(String(describing: e))")
            let q = try Self.profile(namespaces: ns)
            let old = #expect(throws: ProfileError.self) { _ = try LandlockPlan(profile: q, abi: 5) }
            #expect(old?.description.contains("needs Landlock ABI 6; this kernel offers ABI 5") == true, "\(String(describing: old))")
            #expect(throws: ProfileError.self) { _ = try LandlockPlan(profile: q, abi: -38) }
            let plan = try LandlockPlan(profile: q, abi: 6)
            #expect(plan.required && plan.scoped != 0, "scoping is enforced, not best effort")
            let waived = try Self.profile(namespaces: ns, landlock: "enabled = false\nunscoped = \"a test\"")
            #expect(try LandlockPlan(profile: waived, abi: 6).abi == 0)
        }
        // With both namespaces nothing changes.
        let full = try minimalProfile { $0 + "\n[landlock]\nenabled = false\n" }
        #expect(try LandlockPlan(profile: full, abi: 5).abi == 0)
        let e = #expect(throws: ProfileError.self) { _ = try Self.profile(namespaces: #"["user", "mount"]"#, landlock: "unscoped = \"\"") }
        #expect(e?.description.contains("unscoped") == true)
    }

    @Test("a jail without a pid namespace cannot signal another jail's worker",
          .enabled(if: LandlockPlan.kernelABI() >= 6, "needs Landlock ABI 6 (scoping); the refusal is tested above"))
    func cannotSignalAnotherJail() throws {
        // The victim: an ordinary jail, asleep.
        var request = LaunchRequest(profile: try minimalProfile(), command: ["/bin/sleep", "30"])
        try JailSecurity.prepare(&request)
        let victim = try Launcher.launch(request)
        defer { victim.kill(); _ = try? victim.wait() }
        // The attacker shares the host's pid namespace and tries every way
        // of sending a signal it has: kill(2) on PID 1 of the victim and on
        // the victim's worker (its child), and a process group.
        let worker = (try? String(contentsOfFile: "/proc/\(victim.pid)/task/\(victim.pid)/children", encoding: .utf8))?
            .split(separator: " ").first.map(String.init) ?? "0"
        let attacker = try Self.profile(namespaces: #"["user", "mount", "net", "ipc", "uts"]"#)
        let run = try runJailed(attacker, ["/bin/sh", "-c",
            "for p in \(victim.pid) \(worker) -\(victim.pid); do kill -0 -- $p 2>/dev/null && echo reached $p || echo refused $p; done; kill -0 $$ && echo self"])
        #expect(run.exit.status == 0, "\(run)")
        #expect(!run.stdout.contains("reached"), "\(run.stdout)")
        #expect(run.stdout.contains("refused \(victim.pid)") && run.stdout.contains("self"), "\(run.stdout)")
        #expect(access("/proc/\(victim.pid)", F_OK) == 0, "the victim died")
    }
}
