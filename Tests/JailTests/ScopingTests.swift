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

    static let noPidNamespace = #"["user", "mount", "net", "ipc", "uts"]"#

    static func running(_ marker: String) throws -> Bool {
        try host(["/usr/bin/pgrep", "-f", "^/bin/sleep \(marker)$"]).status == 0
    }

    static func waitUntil(_ condition: () throws -> Bool) rethrows -> Bool {
        for _ in 0..<100 {
            if try condition() { return true }
            usleep(50_000)
        }
        return false
    }

    @Test("without a pid namespace, a setsid'd double fork dies with the launcher's kill -9",
          .enabled(if: LandlockPlan.kernelABI() >= 6, "needs Landlock ABI 6 (scoping); without it such a profile is refused"))
    func setsidEscapeDiesWithLauncher() throws {
        let stockade = stockadeCLI
        try #require(FileManager.default.isExecutableFile(atPath: stockade), "build the CLI first")
        let text = try String(contentsOfFile: packageRoot + "/profiles/minimal.toml", encoding: .utf8)
            .replacingOccurrences(of: #"namespaces = ["user", "pid", "mount", "net", "ipc", "uts", "cgroup"]"#, with: "namespaces = \(Self.noPidNamespace)")
            .replacingOccurrences(of: #"root_size = "1M""#, with: "root_size = \"1M\"\nproc = false")
        let path = "/tmp/stockade-nopid-\(getpid()).toml"
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        defer { unlink(path) }
        let worker = "41\(getpid() % 1000)1", escaped = "41\(getpid() % 1000)2"
        let process = Process()
        process.executableURL = URL(fileURLWithPath: stockade)
        process.arguments = ["run", "-p", path, "--", "/bin/sh", "-c",
                             "/usr/bin/setsid /bin/sh -c '/bin/sleep \(escaped) & exit 0'; exec /bin/sleep \(worker)"]
        try process.run()
        #expect(try Self.waitUntil { try Self.running(worker) && Self.running(escaped) }, "the jail never started both")
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
        #expect(try Self.waitUntil { try !Self.running(worker) && !Self.running(escaped) }, "a jail process outlived its launcher")
    }

    @Test("without a pid namespace, what the worker left behind dies with it, and with a time-limit kill",
          .enabled(if: LandlockPlan.kernelABI() >= 6, "needs Landlock ABI 6 (scoping); without it such a profile is refused"))
    func leftoversDieWithTheJail() throws {
        let profile = try Self.profile(namespaces: Self.noPidNamespace)
        // The leftovers hold no stdio: the test must not wait on their pipes.
        let daemon = "42\(getpid() % 1000)1"
        let run = try runJailed(profile, ["/bin/sh", "-c", "/usr/bin/setsid /bin/sh -c '(/bin/sleep \(daemon) &) ; exit 0' </dev/null >/dev/null 2>&1; sleep 0.3; exit 3"])
        #expect(run.exit.status == 3, "\(run)")
        #expect(try Self.waitUntil { try !Self.running(daemon) }, "a setsid'd daemon outlived the jail")
        let hung = "42\(getpid() % 1000)2"
        let killed = try runJailed(profile, ["/bin/sh", "-c", "/usr/bin/setsid /bin/sh -c '(/bin/sleep \(hung) &)' </dev/null >/dev/null 2>&1; exec /bin/sleep 100"],
                                   timeLimit: .seconds(1))
        #expect(killed.exit.reason == .timeLimit && killed.exit.signal == SIGKILL, "\(killed.exit)")
        #expect(try Self.waitUntil { try !Self.running(hung) }, "a setsid'd process outlived the time-limit kill")
    }
}
