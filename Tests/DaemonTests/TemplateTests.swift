// Templates on the real kernel: a jailed template loads once and forks
// workers, each with its own channel and key. The embeddings of forked
// MiniLM workers are compared byte for byte with a normally launched
// worker's; the isolation claims of the README are tried as an attacker
// would, from inside one forked worker against a sibling and the template.
import Foundation
import Testing
import Synchronization
@testable import StockadeDaemon
import StockadeChannel
import StockadeJail
import StockadeSystem
import SystemPackage
import Logging
import StockadeConfig
#if canImport(Glibc)
import Glibc
#endif

enum TemplateFixture {
    /// A launch request for `script` under profiles/inference-cpu.toml with
    /// the venv and the script's directory bound read-only, stdout and
    /// stderr into a log file (read back when a test fails).
    static func request(_ script: String, environment: [(String, String)] = []) throws -> (LaunchRequest, String) {
        let profile = try Profile.load(path: Fixture.repo + "/profiles/inference-cpu.toml")
        let path = Fixture.repo + "/" + script
        var request = LaunchRequest(profile: profile, command: [Fixture.venvPython, path])
        for dir in [Fixture.repo + "/.venv", (path as NSString).deletingLastPathComponent] {
            request.extraMounts.append(MountSpec(kind: .bind, source: dir, target: dir))
        }
        request.extraEnvironment = environment
        let log = NSTemporaryDirectory() + "stockade-template-\(getpid())-\(counter.add(1, ordering: .relaxed).newValue).log"
        let out = open(log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        let null = open("/dev/null", O_RDONLY | O_CLOEXEC)
        request.passedFDs = [(null, 0), (out, 1), (out, 2)]
        try JailSecurity.prepare(&request)
        return (request, log)
    }

    /// Launches, then closes this process's copies of the stdio fds.
    static func launch(_ script: String, environment: [(String, String)] = [],
                       onExit: @escaping @Sendable (UInt32, Int32) -> Void = { _, _ in }) throws -> (WorkerTemplate, String) {
        let (request, log) = try self.request(script, environment: environment)
        defer { for fd in Set(request.passedFDs.map(\.from)) { close(fd) } }
        return (try WorkerTemplate.launch(request, logger: Logger(label: "test.template"), onExit: onExit), log)
    }

    static func log(_ path: String) -> String { (try? String(contentsOfFile: path, encoding: .utf8)) ?? "" }

    private static let counter = Atomic<Int>(0)

    static func json(_ channel: SecureChannel, _ command: [String: Any]) throws -> [String: Any] {
        let answer = try channel.request(Array(try JSONSerialization.data(withJSONObject: command)))
        return try JSONSerialization.jsonObject(with: Data(answer)) as! [String: Any]
    }

    /// A daemon configuration of one tenant `t` under inference-cpu.toml,
    /// with `tenantLines` added to its table (line 8 is the first of them).
    static func config(_ tenantLines: String) throws(ProfileError) -> DaemonConfig {
        let text = """
            [daemon]
            socket = "/run/s.sock"
            audit_log = "/var/log/a.jsonl"
            [tenant.t]
            profile = "\(Fixture.repo)/profiles/inference-cpu.toml"
            command = ["/usr/bin/python3", "/w.py"]
            \(tenantLines)
            """
        return try DaemonConfig.parse(text: text, file: "/etc/x.toml")
    }

    /// The reference texts as a MiniLM request.
    static func minilmPayload() throws -> [UInt8] {
        let data = try Data(contentsOf: URL(fileURLWithPath: Fixture.repo + "/examples/minilm/reference.json"))
        let ref = try JSONSerialization.jsonObject(with: data) as! [String: Any]
        return Array(try JSONSerialization.data(withJSONObject: ["texts": ref["texts"]!]))
    }
}

@Suite(.serialized, .enabled(if: Fixture.hasVenv, "needs the venv (make venv) for the jailed Python worker"))
struct TemplateTests {
    @Test("Forked MiniLM workers answer with exactly the bytes a normally launched worker does")
    func embeddingsUnchanged() throws {
        let payload = try TemplateFixture.minilmPayload()
        // A worker launched the usual way: its own jail, its own load.
        var (request, normalLog) = try TemplateFixture.request("examples/minilm/worker.py")
        let bootstrap = try ChannelBootstrap(tenant: "t", worker: "normal", limits: ChannelLimits(maxBulkLength: 16 << 20))
        request.passedFDs += bootstrap.passedFDs
        request.extraEnvironment.append(bootstrap.environment)
        let jail = try Launcher.launch(request)
        for fd in Set(request.passedFDs.prefix(3).map(\.from)) { close(fd) }
        bootstrap.closeWorkerEnds()
        defer { jail.kill(); _ = try? jail.wait() }
        let normal = try bootstrap.connect(handshakeTimeoutMilliseconds: 120_000)
        let expected = try normal.request(payload)
        try? normal.shutdown()
        #expect(expected.count > 8, "\(TemplateFixture.log(normalLog))")

        let (template, log) = try TemplateFixture.launch("examples/minilm/worker.py")
        defer { _ = template.stop() }
        var forks: [ForkedWorker] = []
        for i in 0..<3 {
            forks.append(try template.fork(tenant: "t", worker: "fork-\(i)", limits: ChannelLimits(maxBulkLength: 16 << 20)))
        }
        for f in forks {
            let got = try f.channel.request(payload)
            #expect(got == expected, "worker \(f.id) answered differently; log: \(TemplateFixture.log(log))")
        }
        #expect(Set(forks.map(\.pid)).count == 3)
        #expect(!forks.map(\.pid).contains(template.process.pid))
    }

    @Test("A forked worker holds stdio and its own channel only, is not dumpable, and goes first under OOM")
    func onlyItsOwnDescriptors() throws {
        let (template, log) = try TemplateFixture.launch("python/tests/template_probe_worker.py")
        defer { _ = template.stop() }
        let a = try template.fork(tenant: "t", worker: "a")
        let b = try template.fork(tenant: "t", worker: "b")
        for w in [a, b] {
            let fds = try TemplateFixture.json(w.channel, ["op": "fds"]) as! [String: String]
            // 0-2 stdio; 3 the channel socket; nothing else. (The params
            // memfd at 4 was read and closed by the SDK.)
            #expect(Set(fds.keys) == ["0", "1", "2", "3"], "worker \(w.id) holds \(fds); log: \(TemplateFixture.log(log))")
            #expect(fds["3"]?.hasPrefix("socket:") == true)
            let me = try TemplateFixture.json(w.channel, ["op": "whoami"])
            #expect(me["dumpable"] as? Int == 0)
            // The OOM killer takes a forked worker before the template, and
            // the worker cannot undo that.
            #expect(me["oom_score_adj"] as? Int == WorkerTemplate.forkedOOMScoreAdjustment)
            let lowered = try w.channel.request(Array(#"{"op":"lower-oom"}"#.utf8))
            #expect(String(decoding: lowered, as: UTF8.self).contains("denied"), "\(String(decoding: lowered, as: UTF8.self))")
        }
        // Each has its own socket: not the same inode.
        let fa = try TemplateFixture.json(a.channel, ["op": "fds"]) as! [String: String]
        let fb = try TemplateFixture.json(b.channel, ["op": "fds"]) as! [String: String]
        #expect(fa["3"] != fb["3"])
    }

    @Test("A forked worker cannot read, trace or take descriptors from a sibling or the template")
    func siblingsCannotReachEachOther() throws {
        let (template, log) = try TemplateFixture.launch("python/tests/template_probe_worker.py")
        defer { _ = template.stop() }
        let attacker = try template.fork(tenant: "t", worker: "attacker")
        let victim = try template.fork(tenant: "t", worker: "victim")
        let v = try TemplateFixture.json(victim.channel, ["op": "whoami"])
        let me = try TemplateFixture.json(attacker.channel, ["op": "whoami"])
        let victimPid = v["pid"] as! Int, templatePid = me["ppid"] as! Int
        #expect(v["ppid"] as? Int == templatePid)
        // The probe's own check: the same attacks on a same-uid process that
        // made itself dumpable again succeed (so a denial below is the
        // kernel's answer to non-dumpable, not a broken probe).
        let control = try TemplateFixture.json(attacker.channel, ["op": "control"]) as! [String: String]
        #expect(control["mem"]?.hasPrefix("allowed") == true, "control \(control); log: \(TemplateFixture.log(log))")
        #expect(control["environ"]?.hasPrefix("allowed") == true, "control \(control)")
        for (target, label) in [(victimPid, "sibling"), (templatePid, "template")] {
            let r = try TemplateFixture.json(attacker.channel, ["op": "attack", "pid": target]) as! [String: String]
            for key in ["mem", "environ", "maps", "fd-dir", "ptrace-attach", "ptrace-seize", "process_vm_readv", "pidfd_getfd"] {
                #expect(r[key]?.hasPrefix("denied") == true, "\(label) \(key): \(r[key] ?? "missing")")
            }
            // What the README says siblings do share: the pid namespace and
            // uid, so /proc/PID/status is readable and a signal can be sent.
            #expect(r["status"]?.hasPrefix("allowed") == true, "\(label) status: \(r["status"] ?? "missing")")
            #expect(r["signal-0"]?.hasPrefix("allowed") == true, "\(label) signal: \(r["signal-0"] ?? "missing")")
        }
        // The victim still serves.
        #expect(try TemplateFixture.json(victim.channel, ["op": "whoami"])["pid"] as? Int == victimPid)
    }

    @Test("A crashed forked worker is reported with its status and the next fork works")
    func crashedWorkerIsReported() throws {
        let exits = Mutex<[UInt32: Int32]>([:])
        let wake = Wakeups()
        let (template, _) = try TemplateFixture.launch("python/tests/template_probe_worker.py") { number, status in
            exits.withLock { $0[number] = status }
            wake.broadcast()
        }
        defer { _ = template.stop() }
        let w = try template.fork(tenant: "t", worker: "crasher")
        #expect(template.liveWorkers[w.number] == w.pid)
        #expect(throws: ChannelError.self) { _ = try w.channel.request(Array(#"{"op":"crash"}"#.utf8)) }
        #expect(wake.wait(until: .now + .seconds(10)) { exits.withLock { $0[w.number] } != nil })
        #expect(exits.withLock { $0[w.number] } == 3 << 8, "exit status 3 as a wait status")
        #expect(template.liveWorkers[w.number] == nil)
        #expect(w.waitForExit(milliseconds: 1000))
        let next = try template.fork(tenant: "t", worker: "next")
        #expect(try TemplateFixture.json(next.channel, ["op": "whoami"])["dumpable"] as? Int == 0)
    }

    @Test("When the template dies its forked workers end, are reported, and a fork says why it cannot be made")
    func templateCrash() throws {
        let exits = Mutex<[UInt32: Int32]>([:])
        let (template, _) = try TemplateFixture.launch("python/tests/template_probe_worker.py") { number, status in
            exits.withLock { $0[number] = status }
        }
        defer { _ = template.stop() }
        let a = try template.fork(tenant: "t", worker: "a")
        let b = try template.fork(tenant: "t", worker: "b")
        try template.process.send(signal: SIGKILL)
        #expect(a.waitForExit(milliseconds: 10_000))
        #expect(b.waitForExit(milliseconds: 10_000))
        let exit = try template.jail.wait()
        #expect(exit.reason != .exited || exit.exitCode != 0)
        let deadline = ContinuousClock.now + .seconds(10)
        while template.endedReason == nil, ContinuousClock.now < deadline { usleep(10_000) }
        #expect(template.endedReason != nil)
        #expect(Set(exits.withLock { Array($0.keys) }) == [a.number, b.number])
        let error = #expect(throws: TemplateError.self) { _ = try template.fork(tenant: "t", worker: "c") }
        #expect(error?.description.contains("the template is gone") == true)
    }

    @Test("A template that runs a second thread after loading is refused at launch, with the count")
    func threadedTemplateRefused() throws {
        let error = #expect(throws: TemplateError.self) {
            _ = try TemplateFixture.launch("python/tests/template_probe_worker.py", environment: [("PROBE_THREADS", "1")])
        }
        #expect(error?.description.contains("runs 2 threads") == true, "\(error?.description ?? "")")
        #expect(error?.description.contains("OPENBLAS_NUM_THREADS=1") == true)
    }
}

/// The PPid line of a host process's /proc status (the daemon's view).
func hostParent(of pid: Int32) -> Int32? {
    guard let text = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return nil }
    for line in text.split(separator: "\n") where line.hasPrefix("PPid:") {
        return Int32(line.dropFirst(5).trimmingCharacters(in: .whitespaces))
    }
    return nil
}

@Suite(.serialized, .enabled(if: Fixture.hasVenv, "needs the venv (make venv) for the jailed Python worker"))
struct TemplateTenantTests {
    @Test("A template tenant serves from forked workers; a dead fork is replaced by a fork, a dead template by a new template")
    func templateTenant() throws {
        let d = try RunningDaemon(tenants: [Fixture.Tenant(name: "tpl", min: 2, max: 2, extra: "template = true",
                                                           access: ["alice": "invoker"], worker: "template_worker.py")])
        defer { d.close() }
        let pool = try #require(d.daemon.pool("tpl"))
        func idle() -> [WorkerInfo] { pool.workers().filter { $0.state == "idle" } }
        #expect(d.waitUntil(60) { idle().count == 2 }, "\(pool.info())")
        let first = idle()
        let templatePid = try #require(hostParent(of: first[0].pid))
        #expect(hostParent(of: first[1].pid) == templatePid, "both workers are children of one template")
        #expect(!first.map(\.pid).contains(templatePid))
        let alice = d.client("alice")
        for _ in 0..<4 {
            let r = try alice.infer("tpl", "echo:hi")
            #expect(r.status == 200 && r.text == "tpl:hi", "\(r.status) \(r.text)")
        }

        // A forked worker that dies is replaced by a new fork of the same template.
        kill(first[0].pid, SIGKILL)
        #expect(d.waitUntil(30) { let w = idle(); return w.count == 2 && !w.map(\.id).contains(first[0].id) }, "\(pool.workers())")
        let second = idle()
        for w in second { #expect(hostParent(of: w.pid) == templatePid) }

        // The template dies: its workers end with it, and a new template forks their replacements.
        kill(templatePid, SIGKILL)
        #expect(d.waitUntil(60) {
            let w = idle()
            return w.count == 2 && Set(w.map(\.id)).isDisjoint(with: second.map(\.id))
        }, "\(pool.workers())")
        let third = idle()
        let newTemplate = try #require(hostParent(of: third[0].pid))
        #expect(newTemplate != templatePid)
        #expect(hostParent(of: third[1].pid) == newTemplate)
        let r = try alice.infer("tpl", "echo:again")
        #expect(r.status == 200 && r.text == "tpl:again")
        let launches = d.auditEvents().filter { $0["event"] as? String == "launch" }.compactMap { $0["worker"] as? String }
        #expect(launches.contains("tpl-template-1") && launches.contains("tpl-template-2"), "\(launches)")
    }
}

extension TemplateTests {
    @Test("A template that fails while loading is reported with how it ended")
    func failedLoad() throws {
        let error = #expect(throws: TemplateError.self) {
            _ = try TemplateFixture.launch("python/tests/template_probe_worker.py", environment: [("PROBE_FAIL_LOAD", "1")])
        }
        #expect(error?.description.contains("before READY") == true, "\(error?.description ?? "")")
        #expect(error?.description.contains("exited with status 1") == true, "\(error?.description ?? "")")
    }
}

@Suite("template = true in a tenant's configuration")
struct TemplateConfigTests {
    private func config(_ extra: String, budget: String = "") throws(ProfileError) -> DaemonConfig {
        try TemplateFixture.config("workers_max = 8\n\(extra)\n\(budget)")
    }

    @Test("It is read, defaults to false, and a template tenant's budget reserves one jail, not workers_max")
    func budgetReservesOneJail() throws {
        #expect(try config("").tenants.first?.template == false)
        #expect(try config("template = true").tenants.first?.template == true)
        // Room for one jail of inference-cpu's 384M: refused for eight
        // separate jails, taken for one template of eight forks.
        let budget = "[tenant.t.budget]\nmemory_max = \"512M\"\nmax_jails = 1"
        #expect(throws: ProfileError.self) { _ = try config("", budget: budget) }
        #expect(try config("template = true", budget: budget).tenants.first?.template == true)
    }

    @Test("A template that is not a boolean is an error at its line")
    func notABoolean() {
        do {
            _ = try config("template = \"yes\"")
            Issue.record("accepted template = \"yes\"")
        } catch {
            #expect(error.line == 8 && error.key.hasSuffix("template"), "\(error)")
        }
    }
}
