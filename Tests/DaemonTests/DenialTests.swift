// Denials in the daemon, with real jails and the Python worker: a worker
// that calls something its profile denies is counted (metrics, the workers
// API), audited once per call name, and handled as its tenant's on_denial
// says.
import Foundation
import Testing
@testable import StockadeDaemon
import StockadeJail
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

@Suite(.serialized, .enabled(if: Fixture.hasVenv, "needs the venv (make venv) for the jailed Python worker"),
       .enabled(if: SeccompSupervisor.unavailableReason == nil, "this kernel has no seccomp user notification"))
struct DenialTests {
    /// sethostname: not in the stock allowlist, so minimal.toml denies it with EPERM.
    static let denied = "170"

    static func tenant(_ name: String, _ extra: String = "") -> Fixture.Tenant {
        Fixture.Tenant(name: name, min: 1, max: 1, extra: extra, access: ["alice": "admin", "viewer": "viewer"], worker: "denial_worker.py")
    }

    static func workers(_ d: RunningDaemon, _ tenant: String) throws -> [[String: Any]] {
        (try d.client("viewer").get("/v1/tenants/\(tenant)/workers").json["workers"] as? [[String: Any]]) ?? []
    }

    @Test("on_denial = log: every denied call counted exactly (API, metrics), one audit line per call name, the worker sees EPERM")
    func logPolicy() throws {
        let d = try RunningDaemon(tenants: [Self.tenant("watched")])
        defer { d.close() }
        let alice = d.client("alice")
        #expect(d.waitUntil(60) { (try? Self.workers(d, "watched").first) != nil })
        let before = try #require(try Self.workers(d, "watched").first)
        let startup = before["denials"] as? Int ?? -1
        let r = try alice.infer("watched", "deny:\(Self.denied),50")
        #expect(r.status == 200 && r.text == "errno 1 count 50 other 0", "\(r.status) \(r.text)")
        let r2 = try alice.infer("watched", "deny:\(Self.denied),7")
        #expect(r2.text == "errno 1 count 7 other 0")
        let w = try #require(try Self.workers(d, "watched").first)
        #expect(w["denials"] as? Int == startup + 57, "\(w)")
        #expect((w["denialsByCall"] as? [String: Int])?["sethostname"] == 57, "\(w)")
        let metrics = try alice.get("/metrics").text
        #expect(metrics.contains("stockaded_seccomp_denials_total{tenant=\"watched\",syscall=\"sethostname\"} 57"), "\(metrics)")
        let lines = d.auditEvents().filter { $0["event"] as? String == "seccomp-denial" && $0["syscall"] as? String == "sethostname" }
        #expect(lines.count == 1, "one line per worker and call name: \(lines)")
        #expect(lines.first?["example"] as? String == "sethostname(0x0, 0x0, 0x0)")
        #expect(lines.first?["policy"] as? String == "log")
        #expect(lines.first?["worker"] as? String == w["id"] as? String)
    }

    @Test("on_denial = kill ends the worker before its denied call returns; the request gets denied-call; a new worker serves")
    func killPolicy() throws {
        let d = try RunningDaemon(tenants: [Self.tenant("strict", "on_denial = \"kill\"")])
        defer { d.close() }
        let alice = d.client("alice")
        let r = try alice.infer("strict", "deny:\(Self.denied),5")
        #expect(r.status == 502, "\(r.status) \(r.text)")
        #expect(r.json["error"] as? String == "denied-call", "\(r.text)")
        #expect((r.json["message"] as? String)?.contains("sethostname(0x0, 0x0, 0x0), which its profile denies; on_denial = kill") == true, "\(r.text)")
        #expect(d.waitUntil(60) { (try? alice.infer("strict", "echo:x"))?.text == "strict:x" })
        #expect(d.waitUntil(10) { d.auditEvents().contains { $0["event"] as? String == "denial-policy" } })
        let acted = d.auditEvents().filter { $0["event"] as? String == "denial-policy" }
        #expect(acted.count == 1 && acted.first?["policy"] as? String == "kill" && acted.first?["outcome"] as? String == "first-denial", "\(acted)")
        let metrics = try alice.get("/metrics").text
        #expect(metrics.contains("stockaded_denial_actions_total{tenant=\"strict\",policy=\"kill\",trigger=\"first-denial\"} 1"), "\(metrics)")
        // Its one denied call was counted, and it made no second.
        #expect(metrics.contains("stockaded_seccomp_denials_total{tenant=\"strict\",syscall=\"sethostname\"} 1"), "\(metrics)")
    }

    @Test("on_denial = quarantine: the worker is killed and the tenant refuses requests until an admin resumes it")
    func quarantinePolicy() throws {
        let d = try RunningDaemon(tenants: [Self.tenant("quarantined", "on_denial = \"quarantine\"")])
        defer { d.close() }
        let alice = d.client("alice")
        let r = try alice.infer("quarantined", "deny:\(Self.denied),1")
        #expect(r.status == 502 && r.json["error"] as? String == "denied-call", "\(r.text)")
        let refused = try alice.infer("quarantined", "echo:x")
        #expect(refused.status == 503 && refused.json["error"] as? String == "quarantined", "\(refused.text)")
        let info = try d.client("viewer").get("/v1/tenants/quarantined").json
        #expect(info["state"] as? String == "quarantined")
        #expect((info["quarantine"] as? String)?.contains("sethostname") == true, "\(info)")
        // A viewer cannot lift it; an admin can.
        #expect(try d.client("viewer").post("/v1/tenants/quarantined/resume").status == 403)
        #expect(try alice.post("/v1/tenants/quarantined/resume").status == 202)
        #expect(d.waitUntil(60) { (try? alice.infer("quarantined", "echo:y"))?.text == "quarantined:y" })
        #expect(d.waitUntil(10) { d.auditEvents().contains { $0["event"] as? String == "denial-policy" } })
        let acted = d.auditEvents().filter { $0["event"] as? String == "denial-policy" }
        #expect(acted.first?["policy"] as? String == "quarantine", "\(acted)")
    }

    @Test("denials_per_minute: below the threshold the worker lives and sees EPERM; past it, the policy acts")
    func threshold() throws {
        let d = try RunningDaemon(tenants: [Self.tenant("noisy", "on_denial = \"kill\"\ndenials_per_minute = 10")])
        defer { d.close() }
        let alice = d.client("alice")
        let ok = try alice.infer("noisy", "deny:\(Self.denied),10")
        #expect(ok.status == 200 && ok.text == "errno 1 count 10 other 0", "\(ok.text)")
        let over = try alice.infer("noisy", "deny:\(Self.denied),1")
        #expect(over.status == 502 && over.json["error"] as? String == "denied-call", "\(over.text)")
        #expect((over.json["message"] as? String)?.contains("more than 10 denied calls within a minute") == true, "\(over.text)")
        #expect(d.waitUntil(10) { d.auditEvents().contains { $0["event"] as? String == "denial-policy" } })
        let acted = d.auditEvents().filter { $0["event"] as? String == "denial-policy" }
        #expect(acted.first?["outcome"] as? String == "per-minute", "\(acted)")
    }

    @Test("Landlock denials reach the metrics and the worker's landlockDenials where the kernel's audit reports them",
          .enabled(if: Fixture.isRoot, "reading audit records needs CAP_AUDIT_READ (root)"),
          .enabled(if: LandlockPlan.kernelABI() >= 7, "Landlock writes audit records from ABI 7 (Linux 6.15)"))
    func landlockDenials() throws {
        // Audit on for this test only where it is off (the host's setting comes back after it).
        try LandlockAudit.withAuditEnabled { try landlockDenialsCounted() }
    }

    func landlockDenialsCounted() throws {
        let d = try RunningDaemon(tenants: [Self.tenant("fenced")])
        defer { d.close() }
        let alice = d.client("alice")
        // The profile grants no TCP port: Landlock refuses the bind (EACCES).
        let r = try alice.infer("fenced", "bind:8081")
        #expect(r.text == "errno 13", "\(r.text)")
        #expect(d.waitUntil(10) {
            ((try? alice.get("/metrics").text) ?? "").contains("stockaded_landlock_denials_total{tenant=\"fenced\"} 1")
        })
        let w = try #require(try Self.workers(d, "fenced").first)
        #expect(w["landlockDenials"] as? Int == 1, "\(w)")
    }

    @Test("a tenant flooding denials does not slow another tenant's requests (latency measured)")
    func floodIsolation() throws {
        let d = try RunningDaemon(tenants: [Self.tenant("flood"), Self.tenant("calm")])
        defer { d.close() }
        let alice = d.client("alice")
        func latencies(_ n: Int) throws -> [Double] {
            var out: [Double] = []
            for i in 0..<n {
                let t0 = Date()
                let r = try alice.infer("calm", "echo:\(i)")
                out.append(Date().timeIntervalSince(t0) * 1000)
                #expect(r.text == "calm:\(i)")
            }
            return out.sorted()
        }
        _ = try latencies(5)
        let quiet = try latencies(30)
        let done = DispatchSemaphore(value: 0)
        let floodAnswer = Mutex<String>("")
        Thread.detachNewThread {
            let r = try? alice.infer("flood", "deny:\(Self.denied),20000")
            floodAnswer.withLock { $0 = r?.text ?? "no answer" }
            done.signal()
        }
        usleep(300_000)
        let loaded = try latencies(30)
        done.wait()
        #expect(floodAnswer.withLock { $0 } == "errno 1 count 20000 other 0")
        let p50q = quiet[quiet.count / 2], p50l = loaded[loaded.count / 2]
        print("denial flood: calm tenant echo latency p50 \(String(format: "%.2f", p50q)) ms alone, \(String(format: "%.2f", p50l)) ms while another tenant's worker made 20000 denied calls")
        #expect(p50l < max(p50q * 4, p50q + 20), "calm p50 \(p50l) ms vs \(p50q) ms alone")
    }
}
