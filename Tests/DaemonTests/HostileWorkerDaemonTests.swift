// A hostile worker against stockaded: each attack on the channel (its own
// socket passed back with an answer, a descriptor flood, unsolicited ping
// replies, a request it never answers) ends with that worker killed and
// replaced, while another tenant is served throughout without delay, and
// the daemon's descriptors, threads and memory stay flat (within a few of
// each: this is the whole test process; the channel suite's hostile tests
// count the descriptors a worker could pass exactly).
import Foundation
import Testing
@testable import StockadeDaemon
#if canImport(Glibc)
import Glibc
#endif

/// The daemon process (this test process): descriptors, threads, RSS in KiB.
private func daemonResources() -> (fds: Int, threads: Int, rssKiB: Int) {
    let fds = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd").count) ?? -1
    let status = procStatus(["Threads", "VmRSS"])
    return (fds, status["Threads"]!, status["VmRSS"]!)
}

@Suite(.serialized, .enabled(if: Fixture.hasVenv, "needs the venv (make venv) for the jailed Python worker"))
struct HostileWorkerDaemonTests {
    @Test(arguments: [
        ("own-socket", 502, "violation"),
        ("fd-flood", 502, "violation"),
        ("ping-replies", 502, "violation"),
        ("hang", 504, "timeout"),
    ])
    func anAttackKillsOnlyThatWorker(attack: String, status: Int, code: String) throws {
        let d = try RunningDaemon(tenants: [
            .init(name: "alpha", min: 1, max: 1, timeout: "3s", access: ["alice": "invoker"], worker: "hostile_worker.py"),
            .init(name: "beta", min: 1, max: 1, access: ["bob": "invoker"]),
        ])
        defer { d.close() }
        let alice = d.client("alice"), bob = d.client("bob")
        #expect(try alice.infer("alpha", "echo:warm").status == 200)
        #expect(try bob.infer("beta", "echo:warm").status == 200)
        let hostile = try #require(d.daemon.pool("alpha")?.workers().first)
        let bystander = try #require(d.daemon.pool("beta")?.workers().first)
        let before = daemonResources()

        // The other tenant is served all through the attack.
        let stop = Mutex_(false)
        let served = Mutex_<[Double]>([])
        let failures = Mutex_<[String]>([])
        let bystanderDone = DispatchSemaphore(value: 0)
        Thread.detachNewThread {
            while !stop.value {
                let start = Date()
                do {
                    let r = try bob.infer("beta", "echo:x")
                    if r.status == 200 { served.mutate { $0.append(Date().timeIntervalSince(start)) } } else {
                        failures.mutate { $0.append("\(r.status) \(r.text)") }
                    }
                } catch {
                    failures.mutate { $0.append("\(error)") }
                }
                usleep(20_000)
            }
            bystanderDone.signal()
        }

        let answer = try alice.infer("alpha", "attack:" + attack)
        #expect(answer.status == status, "\(answer.text)")
        #expect(answer.json["error"] as? String == code, "\(answer.text)")
        #expect(answer.headers["x-stockade-worker"] == hostile.id)
        // The hostile worker is gone and replaced; the other tenant's is not.
        #expect(d.waitUntil(20) { d.daemon.pool("alpha")?.workers().contains { $0.id != hostile.id && $0.state == "idle" } == true })
        #expect(d.daemon.pool("alpha")?.workers().contains { $0.id == hostile.id } == false)
        #expect(try alice.infer("alpha", "echo:after").status == 200)
        stop.mutate { $0 = true }
        bystanderDone.wait()
        #expect(d.daemon.pool("beta")?.workers().map(\.id) == [bystander.id])
        #expect(failures.value == [])
        let latencies = served.value.sorted()
        #expect(latencies.count >= 3, "the other tenant was served \(latencies.count) times during the attack")
        let worst = latencies.last ?? 0
        // A bystander held up by the attack would wait out the attacker's 3 s
        // timeout; the bound sits below that and above what a loaded 2-core
        // machine adds to an echo (1.2 s seen there).
        #expect(worst < 2.5, "the other tenant's slowest answer during the attack took \(worst) s")

        // This process also runs other suites (their daemons and jails open
        // descriptors and threads too): a sample over the bounds is retaken
        // for up to 10 s, and the slack (32) is far below what these attacks
        // cost an unprotected launcher (thousands of descriptors).
        let slack = 32
        func within(_ r: (fds: Int, threads: Int, rssKiB: Int)) -> Bool {
            r.fds <= before.fds + slack && r.threads <= before.threads + slack && r.rssKiB <= before.rssKiB + 64 * 1024
        }
        var after = daemonResources()
        let deadline = Date().addingTimeInterval(10)
        while !within(after) && Date() < deadline {
            usleep(200_000)
            after = daemonResources()
        }
        print("daemon under \(attack): \(before.fds) -> \(after.fds) fds, \(before.threads) -> \(after.threads) threads, RSS \(before.rssKiB / 1024) -> \(after.rssKiB / 1024) MiB; other tenant served \(latencies.count) times, slowest \(String(format: "%.3f", worst)) s")
        #expect(after.fds <= before.fds + slack, "fds \(before.fds) -> \(after.fds)")
        #expect(after.threads <= before.threads + slack, "threads \(before.threads) -> \(after.threads)")
        #expect(after.rssKiB <= before.rssKiB + 64 * 1024, "RSS \(before.rssKiB) -> \(after.rssKiB) KiB")
        let violations = d.auditEvents().filter { $0["event"] as? String == "violation" }
        if code == "violation" {
            #expect(violations.contains { $0["worker"] as? String == hostile.id }, "the violation is in the audit log")
        }
    }

    /// A worker that acknowledges the shutdown but keeps its socket open
    /// cannot hold up an admin drain: the shutdown's deadline passes and it
    /// is killed.
    @Test func drainKillsAWorkerThatLingersAfterShutdown() throws {
        let d = try RunningDaemon(tenants: [
            .init(name: "alpha", min: 1, max: 1, access: ["alice": "admin"], worker: "hostile_worker.py"),
            .init(name: "beta", min: 1, max: 1, access: ["bob": "invoker"]),
        ])
        defer { d.close() }
        let alice = d.client("alice"), bob = d.client("bob")
        #expect(try alice.infer("alpha", "attack:linger").status == 200)
        #expect(try bob.infer("beta", "echo:warm").status == 200)
        let start = Date()
        #expect(try alice.post("/v1/tenants/alpha/drain").status == 202)
        #expect(d.waitUntil(20) { d.daemon.pool("alpha")?.workers().isEmpty == true })
        let took = Date().timeIntervalSince(start)
        print("drain of a lingering worker took \(String(format: "%.1f", took)) s")
        #expect(took < 10, "the shutdown deadline (5 s) and the exit grace (2 s) bound the drain: \(took) s")
        #expect(try bob.infer("beta", "echo:still").status == 200)
    }
}
