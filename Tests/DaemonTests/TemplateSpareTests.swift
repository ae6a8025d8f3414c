// The spare a template forks ahead of need: it waits holding nothing of
// the template's but stdio and two sockets, and the next FORK turns it into
// a worker with every property a worker forked on the word has.
import Foundation
import Testing
@testable import StockadeDaemon
import StockadeChannel
#if canImport(Glibc)
import Glibc
#endif

/// The host pids of `pid`'s children.
private func children(of pid: Int32) -> Set<Int32> {
    let text = (try? String(contentsOfFile: "/proc/\(pid)/task/\(pid)/children", encoding: .utf8)) ?? ""
    return Set(text.split(separator: " ").compactMap { Int32($0.trimmingCharacters(in: .whitespacesAndNewlines)) })
}

/// Link targets of a host process's descriptors (root reads them even for
/// a non-dumpable process).
private func descriptors(of pid: Int32) -> [String: String] {
    var out: [String: String] = [:]
    for name in (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd")) ?? [] {
        out[name] = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/fd/\(name)")) ?? "?"
    }
    return out
}

@Suite(.serialized, .enabled(if: Fixture.hasVenv && Fixture.isRoot, "needs the venv (make venv), and root to read the jailed processes' /proc"))
struct TemplateSpareTests {
    @Test("A quiet template holds one spare with stdio and two sockets; the next fork is that process, set up as any fork")
    func theNextForkIsTheSpare() throws {
        let (template, log) = try TemplateFixture.launch("python/tests/template_probe_worker.py")
        defer { _ = template.stop() }
        let first = try template.fork(tenant: "t", worker: "first")
        // Quiet for longer than the SDK's SPARE_DELAY (50 ms): a spare appears.
        var spare: Int32?
        let deadline = ContinuousClock.now + .seconds(10)
        while spare == nil, ContinuousClock.now < deadline {
            usleep(20_000)
            spare = children(of: template.process.pid).subtracting([first.pid]).first
        }
        let sparePid = try #require(spare, "no spare beside \(first.pid); log: \(TemplateFixture.log(log))")
        // Once set up (it closes the template's descriptors first thing;
        // caught right after the fork it still holds them).
        var fds = descriptors(of: sparePid)
        while fds.count != 5, ContinuousClock.now < deadline {
            usleep(10_000)
            fds = descriptors(of: sparePid)
        }
        #expect(Set(fds.keys).subtracting(["0", "1", "2"]).count == 2, "the spare holds \(fds)")
        #expect(fds.values.filter { $0.hasPrefix("socket:") }.count == 2, "the spare holds \(fds)")
        #expect(!fds.values.contains { $0.contains("memfd") || $0.contains("pipe:") }, "the spare holds \(fds)")

        let worker = try template.fork(tenant: "t", worker: "from-spare")
        #expect(worker.pid == sparePid, "the fork was made on the word (\(worker.pid)), not taken from the spare \(sparePid)")
        let own = try TemplateFixture.json(worker.channel, ["op": "fds"]) as! [String: String]
        #expect(Set(own.keys) == ["0", "1", "2", "3"], "\(own)")
        let me = try TemplateFixture.json(worker.channel, ["op": "whoami"])
        #expect(me["dumpable"] as? Int == 0)
        #expect(me["oom_score_adj"] as? Int == WorkerTemplate.forkedOOMScoreAdjustment)
        // Its own socket, not the first worker's.
        let firstFds = try TemplateFixture.json(first.channel, ["op": "fds"]) as! [String: String]
        #expect(firstFds["3"] != own["3"])
        // A sibling still cannot reach it, nor it the sibling.
        let r = try TemplateFixture.json(first.channel, ["op": "attack", "pid": me["pid"] as! Int]) as! [String: String]
        for key in ["mem", "environ", "ptrace-attach", "pidfd_getfd"] {
            #expect(r[key]?.hasPrefix("denied") == true, "\(key): \(r[key] ?? "missing")")
        }
        // A spare that dies unused is replaced.
        var next: Int32?
        while next == nil, ContinuousClock.now < deadline + .seconds(10) {
            usleep(20_000)
            next = children(of: template.process.pid).subtracting([first.pid, worker.pid]).first
        }
        let nextSpare = try #require(next)
        kill(nextSpare, SIGKILL)
        var replaced: Int32?
        while replaced == nil, ContinuousClock.now < deadline + .seconds(20) {
            usleep(20_000)
            replaced = children(of: template.process.pid).subtracting([first.pid, worker.pid, nextSpare]).first
        }
        #expect(replaced != nil, "no new spare after the last was killed")
        let third = try template.fork(tenant: "t", worker: "third")
        #expect(try TemplateFixture.json(third.channel, ["op": "whoami"])["dumpable"] as? Int == 0)
    }
}
