// The daemon against real jails, real channels and a real unix socket.
import Foundation
import Testing
@testable import StockadeDaemon
import StockadeConfig
#if canImport(Glibc)
import Glibc
#endif

@Suite(.serialized, .enabled(if: Fixture.hasVenv, "needs the venv (make venv) for the jailed Python worker"))
struct DaemonTests {
    @Test func twoTenantsUnderLoadLoseAndMisrouteNothing() throws {
        let d = try RunningDaemon(tenants: [
            .init(name: "alpha", min: 1, max: 2, access: ["alice": "invoker"]),
            .init(name: "beta", min: 1, max: 2, access: ["bob": "invoker"]),
        ])
        defer { d.close() }
        let perThread = 25
        let threads = 8
        let failures = Mutex_<[String]>([])
        DispatchQueue.concurrentPerform(iterations: threads) { i in
            let tenant = i % 2 == 0 ? "alpha" : "beta"
            let client = d.client(tenant == "alpha" ? "alice" : "bob")
            for n in 0..<perThread {
                let tag = "\(i)-\(n)-\(UUID().uuidString)"
                do {
                    let r = try client.infer(tenant, "echo:" + tag)
                    if r.status != 200 || r.text != "\(tenant):\(tag)" {
                        failures.mutate { $0.append("\(tenant) \(tag): \(r.status) \(r.text)") }
                    }
                } catch {
                    failures.mutate { $0.append("\(tenant) \(tag): \(error)") }
                }
            }
        }
        #expect(failures.value == [])
        let alpha = try d.client("alice").get("/v1/tenants/alpha").json
        let beta = try d.client("bob").get("/v1/tenants/beta").json
        #expect(alpha["served"] as? Int == perThread * threads / 2)
        #expect(beta["served"] as? Int == perThread * threads / 2)
        // The audit log has one request entry per inference.
        let inferences = d.auditEvents().filter { ($0["path"] as? String)?.hasSuffix("/infer") == true && $0["event"] as? String == "request" }
        #expect(inferences.count == perThread * threads)
    }

    @Test func aWorkerKilledMidRequestGivesAnExplicitErrorAndIsReplaced() throws {
        let d = try RunningDaemon(tenants: [.init(name: "alpha", min: 1, max: 1, access: ["alice": "admin"])])
        defer { d.close() }
        let client = d.client("alice")
        #expect(try client.infer("alpha", "echo:warm").status == 200)
        let before = try #require(d.daemon.pool("alpha")?.workers().first)

        // A request the worker holds when it is killed from outside.
        let answer = Mutex_<APIClient.Response?>(nil)
        let done = DispatchSemaphore(value: 0)
        Thread.detachNewThread {
            answer.mutate { $0 = try? client.infer("alpha", "sleep:120") }
            done.signal()
        }
        #expect(d.waitUntil { d.daemon.pool("alpha")?.worker(before.id)?.state == "busy" })
        kill(before.pid, SIGKILL)
        done.wait()
        let r = try #require(answer.value)
        #expect(r.status == 502)
        #expect(r.json["error"] as? String == "worker-died")
        #expect((r.json["message"] as? String)?.contains("not retried") == true)
        #expect(r.headers["x-stockade-worker"] == before.id)

        // A fresh worker takes its place and serves.
        #expect(d.waitUntil { d.daemon.pool("alpha")?.workers().contains { $0.id != before.id && $0.state == "idle" } == true })
        let again = try client.infer("alpha", "echo:after")
        #expect(again.status == 200)
        #expect(again.text == "alpha:after")
        #expect(again.headers["x-stockade-worker"] != before.id)

        // A worker that kills itself mid-request: the same.
        let crash = try client.infer("alpha", "crash")
        #expect(crash.status == 502)
        #expect(crash.json["error"] as? String == "worker-died")
        #expect((crash.json["message"] as? String)?.contains("SIGKILL") == true, "\(crash.text)")
        #expect(try client.infer("alpha", "echo:again").status == 200)

        // A handler exception is the worker's answer, not a death.
        let failed = try client.infer("alpha", "fail")
        #expect(failed.status == 502)
        #expect(failed.json["error"] as? String == "worker-error")

        let exits = d.auditEvents().filter { $0["event"] as? String == "exit" }
        #expect(exits.count >= 2)
        let info = try client.get("/v1/tenants/alpha").json
        #expect((info["workerExits"] as? Int ?? 0) >= 2)
    }

    @Test(.enabled(if: Fixture.isRoot, "memory budgets need cgroups (root)"))
    func anOOMKilledWorkerIsReportedAndReplaced() throws {
        let d = try RunningDaemon(tenants: [
            .init(name: "alpha", min: 1, max: 1, access: ["alice": "viewer", "bob": "invoker"],
                  memoryMax: "128M"),
        ])
        defer { d.close() }
        let client = d.client("bob")
        #expect(try client.infer("alpha", "alloc:8").text == "8")
        let r = try client.infer("alpha", "alloc:1024")
        #expect(r.status == 502)
        #expect(r.json["error"] as? String == "worker-died")
        #expect((r.json["message"] as? String)?.contains("OOM") == true, "\(r.text)")
        #expect(d.waitUntil { d.daemon.pool("alpha")?.workers().first?.state == "idle" })
        #expect(try client.infer("alpha", "echo:x").text == "alpha:x")
        let info = try d.client("alice").get("/v1/tenants/alpha").json
        #expect(info["oomKills"] as? Int == 1)
        let metrics = try d.client("alice").get("/metrics").text
        #expect(metrics.contains("stockaded_oom_kills_total{tenant=\"alpha\"} 1"))
        #expect(d.auditEvents().contains { $0["event"] as? String == "exit" && $0["outcome"] as? String == "oom" })
    }

    @Test(.enabled(if: Fixture.isRoot, "host id ranges are given to root-launched jails; rootless, every jail maps the caller"))
    func everyWorkerOfEveryTenantHasHostUIDsOfItsOwn() throws {
        let d = try RunningDaemon(tenants: [
            .init(name: "alpha", min: 2, max: 2, access: ["alice": "viewer"]),
            .init(name: "beta", min: 2, max: 2, access: ["alice": "viewer"]),
        ])
        defer { d.close() }
        let client = d.client("alice")
        var ranges: [String: String] = [:]
        d.waitUntil {
            let list = (try? client.get("/v1/tenants").json["tenants"] as? [[String: Any]]) ?? []
            ranges = [:]
            for t in list {
                for (worker, range) in (t["workerHostIDs"] as? [String: String]) ?? [:] { ranges[worker] = range }
            }
            return ranges.count == 4
        }
        #expect(ranges.count == 4, "\(ranges)")
        // Each range is what the worker's user namespace really maps (read from the host).
        var firsts: [UInt64] = []
        for tenant in ["alpha", "beta"] {
            let workers = (try client.get("/v1/tenants/\(tenant)/workers").json["workers"] as? [[String: Any]]) ?? []
            for w in workers {
                let id = try #require(w["id"] as? String), pid = try #require(w["pid"] as? Int)
                let range = try #require(w["hostIDs"] as? String)
                #expect(ranges[id] == range)
                let map = try String(contentsOfFile: "/proc/\(pid)/uid_map", encoding: .utf8)
                    .split(whereSeparator: { $0 == " " || $0 == "\n" })
                #expect(map.count == 3 && "\(map[1])-\(UInt64(map[1])! + UInt64(map[2])! - 1)" == range, "\(map) vs \(range)")
                firsts.append(UInt64(map[1]) ?? 0)
            }
        }
        // No two workers, of one tenant or of two, share a host uid.
        firsts.sort()
        #expect(firsts.count == 4)
        for (a, b) in zip(firsts, firsts.dropFirst()) { #expect(b - a >= 65536, "\(firsts)") }
        #expect(!firsts.contains(100_000))
    }

    @Test func clientsAreAuthenticatedAndHeldToTheirRoles() throws {
        let d = try RunningDaemon(tenants: [
            .init(name: "alpha", min: 1, max: 1, access: ["alice": "invoker", "viewer": "viewer", "stranger": "admin"]),
            .init(name: "beta", min: 0, max: 1, access: ["bob": "admin"]),
        ])
        defer { d.close() }
        // No token.
        let none = try d.client(nil).infer("alpha", "echo:x")
        #expect(none.status == 401)
        #expect(none.headers["www-authenticate"] != nil)
        // A token nobody has.
        #expect(try APIClient(socket: d.socket, token: "forged-token-0123456789abcdef").infer("alpha", "echo:x").status == 401)
        // Another tenant's token.
        #expect(try d.client("bob").infer("alpha", "echo:x").status == 403)
        #expect(try d.client("alice").infer("beta", "echo:x").status == 403)
        // A viewer may look but not invoke.
        #expect(try d.client("viewer").get("/v1/tenants/alpha").status == 200)
        #expect(try d.client("viewer").get("/v1/tenants/alpha/workers").status == 200)
        #expect(try d.client("viewer").infer("alpha", "echo:x").status == 403)
        // An invoker may not drain.
        #expect(try d.client("alice").post("/v1/tenants/alpha/drain").status == 403)
        // A valid token from the wrong uid (peer credentials): refused even though it is admin.
        #expect(try d.client("stranger").infer("alpha", "echo:x").status == 401)
        // The tenant list shows only the client's tenants.
        let list = try d.client("bob").get("/v1/tenants").json["tenants"] as? [[String: Any]]
        #expect(list?.compactMap { $0["name"] as? String } == ["beta"])
        // And the invoker is served.
        #expect(try d.client("alice").infer("alpha", "echo:x").text == "alpha:x")

        let denied = d.auditEvents().filter { $0["event"] as? String == "denied" }
        #expect(denied.count == 7)
        let metrics = try d.client("alice").get("/metrics").text
        #expect(metrics.contains("stockaded_denied_total{reason=\"forbidden\"} 4"))
        #expect(metrics.contains("stockaded_denied_total{reason=\"unauthenticated\"} 3"))
    }

    @Test func aTamperedModelFileIsRefused() throws {
        let dir = try Fixture.makeDirectory()
        let good = dir + "/good.bin", bad = dir + "/bad.bin"
        let original = Array("weights v1 ".utf8) + (0..<100_000).map { UInt8(truncatingIfNeeded: $0 &* 7) }
        try Data(original).write(to: URL(fileURLWithPath: good))
        try Data(original).write(to: URL(fileURLWithPath: bad))
        chmod(good, 0o644)
        chmod(bad, 0o644)
        let digest = try ModelDigest.sha256(path: good)
        // The tampered copy: one byte changed after its digest was pinned.
        var tampered = original
        tampered[5] ^= 1
        try Data(tampered).write(to: URL(fileURLWithPath: bad))
        chmod(bad, 0o644)
        defer { Fixture.removeDirectory(dir) }

        let d = try RunningDaemon(tenants: [
            .init(name: "honest", min: 1, max: 1, extra: "models = [\"good\"]", access: ["alice": "invoker"]),
            .init(name: "tampered", min: 1, max: 1, extra: "models = [\"bad\"]", access: ["alice": "invoker"]),
        ], preamble: """
            [[model.good.file]]
            path = "\(good)"
            name = "w.bin"
            sha256 = "\(digest)"

            [[model.bad.file]]
            path = "\(bad)"
            name = "w.bin"
            sha256 = "\(digest)"
            """)
        defer { d.close() }
        // The honest tenant's worker reads the pinned bytes from the sealed memfd it was given.
        let seen = try d.client("alice").infer("honest", "modelfd:w.bin")
        #expect(seen.status == 200)
        #expect(seen.text == digest)
        // The tampered tenant never gets a worker.
        let refused = try d.client("alice").infer("tampered", "echo:x")
        #expect(refused.status == 503)
        #expect((refused.json["message"] as? String)?.contains("SHA-256") == true)
        #expect(d.daemon.pool("tampered")?.workers().isEmpty == true)
        let rejected = d.auditEvents().filter { $0["event"] as? String == "model-rejected" }
        #expect(!rejected.isEmpty)
        #expect(rejected.allSatisfy { $0["tenant"] as? String == "tampered" })
        #expect(!d.auditEvents().contains { $0["event"] as? String == "launch" && $0["tenant"] as? String == "tampered" })
    }

    @Test func theQueueIsBoundedAnswers429() throws {
        let d = try RunningDaemon(tenants: [.init(name: "alpha", min: 1, max: 1, queue: 1, access: ["alice": "admin"])])
        defer { d.close() }
        let client = d.client("alice")
        #expect(try client.infer("alpha", "echo:warm").status == 200)
        let group = DispatchGroup()
        let statuses = Mutex_<[Int]>([])
        // One request holds the worker, one waits in the queue.
        for sent in 1...2 {
            group.enter()
            Thread.detachNewThread {
                let s = (try? client.infer("alpha", "sleep:3").status) ?? -1
                statuses.mutate { $0.append(s) }
                group.leave()
            }
            #expect(d.waitUntil {
                let t = try? client.get("/v1/tenants/alpha").json
                return (t?["busy"] as? Int ?? 0) + (t?["queued"] as? Int ?? 0) == sent
            })
        }
        let full = try client.infer("alpha", "echo:x")
        #expect(full.status == 429)
        #expect(full.json["error"] as? String == "queue-full")
        group.wait()
        #expect(statuses.value == [200, 200])
    }

    @Test func drainStopsNewRequestsAndResumeRestartsWorkers() throws {
        let d = try RunningDaemon(tenants: [.init(name: "alpha", min: 1, max: 1, access: ["alice": "admin"])])
        defer { d.close() }
        let client = d.client("alice")
        #expect(try client.infer("alpha", "echo:1").status == 200)
        #expect(try client.post("/v1/tenants/alpha/drain").status == 202)
        #expect(try client.infer("alpha", "echo:2").status == 503)
        #expect(d.waitUntil { d.daemon.pool("alpha")?.workers().isEmpty == true })
        let exit = d.auditEvents().last { $0["event"] as? String == "exit" }
        #expect(exit?["outcome"] as? String == "exited")
        #expect(try client.post("/v1/tenants/alpha/resume").status == 202)
        #expect(d.waitUntil { d.daemon.pool("alpha")?.workers().first?.state == "idle" })
        #expect(try client.infer("alpha", "echo:3").text == "alpha:3")
    }

    @Test(.enabled(if: Fixture.isRoot, "stale cgroups exist only when the daemon makes cgroups (root)"))
    func aDaemonKilledWithSIGKILLLeavesNothingBehindAfterRestart() throws {
        let binary = Fixture.repo + "/.build/debug/stockaded"
        try #require(FileManager.default.isExecutableFile(atPath: binary), "build stockaded first (swift build)")
        let dir = try Fixture.makeDirectory()
        defer { Fixture.removeDirectory(dir) }
        let config = try Fixture.writeConfig(in: dir, tenants: [.init(name: "alpha", min: 2, max: 2, access: ["alice": "viewer"])],
                                             cgroupBase: "stockaded-sweep-test")
        // The small tmpfs the audit-log test mounts (under a test directory
        // of its own, in a suite that may run meanwhile) is not a jail's.
        func hostMounts() throws -> [Substring] {
            try String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8).split(separator: "\n")
                .filter { !$0.contains(" /tmp/stockaded-test-") }
        }
        let mountsBefore = try hostMounts()

        let process = Process()
        process.executableURL = URL(fileURLWithPath: binary)
        process.arguments = ["--config", config, "--log-level", "warning"]
        try process.run()
        let client = APIClient(socket: dir + "/api.sock", token: Fixture.tokens["alice"])
        var workers: [[String: Any]] = []
        let deadline = Date().addingTimeInterval(60)
        while Date() < deadline {
            workers = ((try? client.get("/v1/tenants/alpha/workers").json["workers"]) as? [[String: Any]]) ?? []
            if workers.count == 2, workers.allSatisfy({ $0["state"] as? String == "idle" }) { break }
            usleep(100_000)
        }
        try #require(workers.count == 2)
        let pids = workers.compactMap { ($0["pid"] as? Int).map(Int32.init) }
        let cgroups = workers.compactMap { $0["cgroup"] as? String }
        #expect(cgroups.count == 2)
        #expect(cgroups.allSatisfy { FileManager.default.fileExists(atPath: $0) })

        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
        // The jails die with the daemon (their parent-death signal).
        let gone = { pids.allSatisfy { kill($0, 0) != 0 && errno == ESRCH } }
        let deadline2 = Date().addingTimeInterval(30)
        while !gone() && Date() < deadline2 { usleep(50_000) }
        #expect(gone())

        // A new daemon on the same host sweeps the dead one's cgroups.
        let again = try Daemon(config: try DaemonConfig.load(path: config))
        #expect(Set(cgroups).isSubset(of: Set(again.swept)))
        #expect(again.swept.allSatisfy { $0.contains("/stockaded-sweep-test/tenant-alpha/jail-\(process.processIdentifier)-") })
        #expect(cgroups.allSatisfy { !FileManager.default.fileExists(atPath: $0) })
        try again.start()
        let bases = again.cgroups?.basePaths ?? []
        again.stop()
        // A clean stop removes the base and its tenants, though the daemon
        // killed before made them.
        #expect(!bases.isEmpty)
        #expect(bases.allSatisfy { !FileManager.default.fileExists(atPath: $0) }, "left behind: \(bases)")
        // Jails mount inside their own mount namespaces: the host's table is unchanged.
        let mountsAfter = try hostMounts()
        #expect(mountsAfter == mountsBefore)
    }

    @Test func theConfigurationNamesFileLineAndKey() throws {
        let text = """
            [daemon]
            socket = "s.sock"
            audit_log = "a.jsonl"

            [tenant.alpha]
            profile = "\(Fixture.repo)/profiles/minimal.toml"
            command = ["/bin/true"]
            workers_min = 3
            workers_max = 2
            """
        #expect {
            _ = try DaemonConfig.parse(text: text, file: "/etc/x.toml")
        } throws: { error in
            let e = error as? ProfileError
            return e?.key == "tenant.alpha.workers_max" && e?.line == 9
        }
        let badRole = """
            [daemon]
            socket = "s.sock"
            audit_log = "a.jsonl"
            [client.c]
            token = "0123456789abcdef0123"
            uid = 0
            [tenant.alpha]
            profile = "\(Fixture.repo)/profiles/minimal.toml"
            command = ["/bin/true"]
            [tenant.alpha.access]
            c = "owner"
            """
        #expect {
            _ = try DaemonConfig.parse(text: badRole, file: "/etc/x.toml")
        } throws: { error in
            (error as? ProfileError)?.message.contains("unknown role") == true
        }
    }

    @Test func aBudgetTooSmallForTheWorkersItAllowsIsRefused() throws {
        // minimal.toml reserves 256M and 128 pids per jail.
        func config(memory: String, pids: Int) -> String {
            """
            [daemon]
            socket = "s.sock"
            audit_log = "a.jsonl"
            [tenant.alpha]
            profile = "\(Fixture.repo)/profiles/minimal.toml"
            command = ["/bin/true"]
            workers_max = 2
            [tenant.alpha.budget]
            memory_max = "\(memory)"
            pids_max = \(pids)
            """
        }
        _ = try DaemonConfig.parse(text: config(memory: "512M", pids: 256), file: "/etc/x.toml")
        #expect {
            _ = try DaemonConfig.parse(text: config(memory: "384M", pids: 256), file: "/etc/x.toml")
        } throws: { error in
            let e = error as? ProfileError
            return e?.key == "tenant.alpha.budget.memory_max" && e?.line == 9
                && e?.message.contains("memory_max 2 x 256M") == true
        }
        #expect {
            _ = try DaemonConfig.parse(text: config(memory: "1G", pids: 200), file: "/etc/x.toml")
        } throws: { error in
            (error as? ProfileError)?.key == "tenant.alpha.budget.pids_max"
        }
        // The shipped example fits (make run starts every worker it allows).
        let example = try DaemonConfig.load(path: Fixture.repo + "/examples/stockaded.toml")
        #expect(example.tenants.count == 2)
    }
}

/// A value shared between test threads.
final class Mutex_<T>: @unchecked Sendable {
    private var v: T
    private let lock = NSLock()
    init(_ v: T) { self.v = v }
    var value: T { lock.withLock { v } }
    func mutate(_ f: (inout T) -> Void) { lock.withLock { f(&v) } }
}
