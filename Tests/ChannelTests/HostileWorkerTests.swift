// A hostile worker against the real launcher side: a Python worker
// (python/tests/hostile_worker.py) plays one attack each, and the launcher
// uses SecureChannel the way the daemon's pools do (connect, request under
// a watchdog that calls interrupt(), shutdown). Each test checks that the
// attack is named as a violation (or bounded by a deadline) and that the
// launcher's open descriptors, threads and memory stay flat.
//
// Descriptors are counted by what they point at: the worker's socket end,
// the hostile memfds and the standard streams the worker inherited, which is
// everything a worker can pass; none may be left in the launcher. Threads and
// memory are of this whole test process, where other suites run in parallel:
// a sample over the bound is retaken for up to 3 s (their transient use goes,
// a leak stays), and the bounds sit far below what each attack costs an
// unprotected launcher (thousands of descriptors, hundreds of MiB).
import Foundation
import Synchronization
import Testing
import SystemPackage
import StockadeSystem
@testable import StockadeChannel
#if canImport(Glibc)
import Glibc
#endif

/// What the launcher process holds right now.
struct LauncherResources: CustomStringConvertible {
    var descriptors: Int
    /// Descriptors that point at something the worker could have passed.
    var fromWorker: Int
    var threads: Int
    var rssKiB: Int
    var shmemKiB: Int

    /// `workerSocket`: the link target of the worker's socket end.
    static func now(workerSocket: String) -> LauncherResources {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? []
        func target(_ name: String) -> String { (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/fd/" + name)) ?? "" }
        let stdio = Set(["0", "1", "2"].map(target))
        let fromWorker = names.filter { name in
            guard !["0", "1", "2"].contains(name) else { return false }
            let t = target(name)
            guard !t.isEmpty else { return false }  // gone meanwhile (the listing's own descriptor)
            return t == workerSocket || t.hasPrefix("/memfd:hostile") || stdio.contains(t)
        }.count
        var out = LauncherResources(descriptors: names.count, fromWorker: fromWorker, threads: -1, rssKiB: -1, shmemKiB: -1)
        let status = (try? String(contentsOfFile: "/proc/self/status", encoding: .utf8)) ?? ""
        for line in status.split(separator: "\n") {
            let parts = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            guard parts.count >= 2, let value = Int(parts[1]) else { continue }
            switch parts[0] {
            case "Threads:": out.threads = value
            case "VmRSS:": out.rssKiB = value
            case "RssShmem:": out.shmemKiB = value
            default: break
            }
        }
        return out
    }

    var description: String {
        "\(descriptors) fds (\(fromWorker) of the worker's kind), \(threads) threads, RSS \(rssKiB / 1024) MiB (shmem \(shmemKiB / 1024) MiB)"
    }
}

/// Starts `hostile_worker.py <attack> <args>`: the child, the launcher's
/// side of the bootstrap and the worker socket's link target.
private func startAttack(_ attack: String, _ args: [String] = [], limits: ChannelLimits = ChannelLimits()) throws -> (Child, ChannelBootstrap, String) {
    let bootstrap = try ChannelBootstrap(tenant: "acme", worker: "w-hostile", limits: limits)
    let workerSocket = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/fd/\(bootstrap.workerSocket.rawValue)")
    let child = try Child.spawn(
        [Paths.venvPython, Paths.pythonDir + "/tests/hostile_worker.py", attack] + args,
        environment: [ChannelBootstrap.environmentEntry(), "PATH=/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE=1"],
        mapping: [(bootstrap.workerSocket, 3), (bootstrap.paramsMemfd, 4)])
    bootstrap.closeWorkerEnds()
    return (child, bootstrap, workerSocket)
}

/// Runs `body` on a thread of its own and waits at most `seconds` for it:
/// an attack that hangs the launcher fails the test instead of hanging it.
/// `onTimeout` then gets a chance to unblock the thread.
private func bounded<T: Sendable>(_ seconds: Double, onTimeout: @Sendable () -> Void = {},
                                  _ body: @escaping @Sendable () -> T) -> T? {
    let done = DispatchSemaphore(value: 0)
    let box = ResultBox<T>()
    Thread {
        box.set(body())
        done.signal()
    }.start()
    if done.wait(timeout: .now() + seconds) == .timedOut {
        onTimeout()
        _ = done.wait(timeout: .now() + 10)
        return nil
    }
    return box.get()
}

private final class ResultBox<T: Sendable>: Sendable {
    private let value = Mutex<T?>(nil)
    func set(_ v: T) { value.withLock { $0 = v } }
    func get() -> T? { value.withLock { $0 } }
}

/// The launcher's resources must come back to where they were: no
/// descriptor of the worker's kind left, threads and memory within bounds
/// (retaken for up to 3 s while other suites' use passes).
private func expectFlat(_ before: LauncherResources, workerSocket: String, rssSlackMiB: Int = 48,
                        sourceLocation: SourceLocation = #_sourceLocation) {
    func within(_ r: LauncherResources) -> Bool {
        r.fromWorker <= before.fromWorker && r.threads <= before.threads + 4
            && r.rssKiB <= before.rssKiB + rssSlackMiB * 1024 && r.shmemKiB <= before.shmemKiB + rssSlackMiB * 1024
    }
    var after = LauncherResources.now(workerSocket: workerSocket)
    let deadline = ContinuousClock.now + .seconds(3)
    while !within(after) && ContinuousClock.now < deadline {
        usleep(200_000)
        after = LauncherResources.now(workerSocket: workerSocket)
    }
    // The numbers, for whoever reads the test log.
    print("launcher resources: before \(before); after \(after)")
    #expect(after.fromWorker <= before.fromWorker, "descriptors: \(before) -> \(after)", sourceLocation: sourceLocation)
    #expect(after.threads <= before.threads + 4, "threads: \(before) -> \(after)", sourceLocation: sourceLocation)
    #expect(after.rssKiB <= before.rssKiB + rssSlackMiB * 1024, "memory: \(before) -> \(after)", sourceLocation: sourceLocation)
    #expect(after.shmemKiB <= before.shmemKiB + rssSlackMiB * 1024, "shared memory: \(before) -> \(after)", sourceLocation: sourceLocation)
}

/// A request as a pool makes it: with a watchdog that interrupts the
/// channel and kills the worker when `watchdog` seconds pass.
private func pooledRequest(_ channel: SecureChannel, _ child: Child, watchdog: Double = 20) -> Result<[UInt8], ChannelError>? {
    let timer = DispatchWorkItem {
        channel.interrupt()
        child.kill()
    }
    DispatchQueue.global().asyncAfter(deadline: .now() + watchdog, execute: timer)
    defer { timer.cancel() }
    return bounded(watchdog + 10, onTimeout: { channel.interrupt() }) {
        Result { () throws(ChannelError) in try channel.request(Array("hello".utf8)) }
    }
}

/// Plays `attack` while the launcher makes a pooled request, and expects
/// the request to fail with a violation of `kind` whose reason contains
/// `reason`, the launcher as flat afterwards as before.
private func expectRequestRefused(_ attack: String, _ args: [String] = [], kind: ChannelViolation.Kind, reason: String? = nil,
                                  rssSlackMiB: Int = 48, sourceLocation: SourceLocation = #_sourceLocation) throws {
    let before = LauncherResources.now(workerSocket: "")
    let (child, bootstrap, workerSocket) = try startAttack(attack, args)
    let channel = try bootstrap.connect()
    let result = pooledRequest(channel, child)
    #expect(result?.failureViolation?.kind == kind, "\(String(describing: result))", sourceLocation: sourceLocation)
    if let reason {
        #expect(channel.violation?.reason.contains(reason) == true, "\(String(describing: channel.violation))", sourceLocation: sourceLocation)
    }
    // Measured while the worker may still be alive: the launcher's side must already be clean.
    expectFlat(before, workerSocket: workerSocket, rssSlackMiB: rssSlackMiB, sourceLocation: sourceLocation)
    child.kill()
    _ = child.wait()
}

@Suite(.serialized, .enabled(if: Paths.venvIsBuilt, "needs the venv: make venv"))
struct HostileWorkerTests {
    /// Replies to pings never sent, 1 MiB each, while a request waits: the
    /// first is `unexpected-message`, and nothing is kept.
    @Test func unsolicitedPingRepliesAreRefused() throws {
        try expectRequestRefused("unsolicited-ping-replies", ["300"], kind: .unexpectedMessage, reason: "no ping is waiting")
    }

    /// Four descriptors with every byte, after the handshake: the first is
    /// refused at once and closed, the table stays as it was.
    @Test func descriptorFloodIsRefusedAtOnce() throws {
        try expectRequestRefused("fd-flood", kind: .unexpectedFileDescriptors)
    }

    /// The same during the handshake.
    @Test func descriptorsDuringTheHandshakeAreRefused() throws {
        let before = LauncherResources.now(workerSocket: "")
        let (child, bootstrap, workerSocket) = try startAttack("handshake-fds")
        var caught: ChannelError?
        do { _ = try bootstrap.connect(handshakeTimeoutMilliseconds: 10_000) } catch { caught = error }
        #expect(caught?.violation?.kind == .unexpectedFileDescriptors, "\(String(describing: caught))")
        expectFlat(before, workerSocket: workerSocket)
        child.kill()
        _ = child.wait()
    }

    /// A handshake frame can only be 2 or 48 bytes: a 65535-byte one is
    /// refused from its length prefix.
    @Test func oversizedHandshakeFrameIsRefusedFromItsLength() throws {
        let (child, bootstrap, _) = try startAttack("handshake-oversized-frame")
        var caught: ChannelError?
        do { _ = try bootstrap.connect(handshakeTimeoutMilliseconds: 10_000) } catch { caught = error }
        #expect(caught?.violation?.kind == .oversized, "\(String(describing: caught))")
        child.kill()
        _ = child.wait()
    }

    /// One byte every 0.4 s keeps each read short, but the handshake has
    /// one deadline: 1 s in all.
    @Test func tricklingHandshakeMissesTheOneDeadline() throws {
        let (child, bootstrap, _) = try startAttack("handshake-trickle", ["0.4"])
        let start = ContinuousClock.now
        var caught: ChannelError?
        do { _ = try bootstrap.connect(handshakeTimeoutMilliseconds: 1_000) } catch { caught = error }
        let took = ContinuousClock.now - start
        #expect(caught?.violation?.kind == .timedOut, "\(String(describing: caught))")
        #expect(took < .milliseconds(1_500), "took \(took)")
        child.kill()
        _ = child.wait()
    }

    /// The handshake completes but the hello never comes: the deadline
    /// covers the hellos too.
    @Test func workerThatNeverSaysHelloMissesTheDeadline() throws {
        let (child, bootstrap, _) = try startAttack("no-hello")
        let start = ContinuousClock.now
        let launcher = UncheckedSendable(bootstrap)
        let caught = bounded(10) { () -> ChannelError? in
            do throws(ChannelError) { _ = try launcher.value.connect(handshakeTimeoutMilliseconds: 1_000) } catch { return error }
            return nil
        }
        #expect(caught??.violation?.kind == .timedOut, "\(String(describing: caught))")
        #expect(ContinuousClock.now - start < .milliseconds(1_500))
        child.kill()
        _ = child.wait()
    }

    /// A valid answer that carries the worker's own socket end (and one
    /// byte more), then the worker exits: the descriptor is checked as it
    /// arrives (a socket is not a memfd) and closed, so the launcher never
    /// holds the worker's end and the request does not hang.
    @Test func workerSocketPassedWithAnAnswerIsRefused() throws {
        try expectRequestRefused("own-socket-with-answer", kind: .unsealedMemfd, reason: "not a regular file")
    }

    /// A real sealed memfd, but on a plain answer instead of a bulk record:
    /// `unexpected-fds`, and it is closed.
    @Test func memfdOnAPlainAnswerIsRefused() throws {
        try expectRequestRefused("memfd-with-answer", kind: .unexpectedFileDescriptors, reason: "with a response record")
    }

    /// The same socket claimed as a bulk memfd: refused before it is kept
    /// (not a regular file).
    @Test func socketClaimedAsBulkMemfdIsRefused() throws {
        try expectRequestRefused("own-socket-as-bulk", kind: .unsealedMemfd, reason: "not a regular file")
    }

    /// A sealed 64 MiB memfd of holes as a bulk answer: refused from
    /// fstat, nothing mapped, the launcher's shared memory flat.
    @Test func sparseBulkMemfdIsRefusedUnmapped() throws {
        try expectRequestRefused("sparse-bulk", kind: .malformed, reason: "holes", rssSlackMiB: 16)
    }

    /// A bulk answer for a request never sent: refused before its memfd is
    /// touched.
    @Test func bulkForARequestNotInFlightIsRefusedUntouched() throws {
        try expectRequestRefused("bulk-not-in-flight", kind: .unexpectedMessage, reason: "not in flight", rssSlackMiB: 16)
    }

    /// Pings that are never read fill the socket, and the launcher's answer
    /// blocks in send; the watchdog's interrupt() ends it.
    @Test func blockedPingAnswerEndsAtTheWatchdog() throws {
        try expectWatchdogEnds("ping-flood-no-read", watchdog: 2)
    }

    /// A worker that never answers: the watchdog's interrupt() ends the
    /// request at once, whatever the worker does with its end.
    @Test func hungRequestEndsAtTheWatchdog() throws {
        try expectWatchdogEnds("hang-request", watchdog: 1)
    }

    /// A pooled request during `attack` fails and its thread comes back soon
    /// after the watchdog fires; the launcher is flat afterwards.
    private func expectWatchdogEnds(_ attack: String, watchdog: Double, sourceLocation: SourceLocation = #_sourceLocation) throws {
        let before = LauncherResources.now(workerSocket: "")
        let (child, bootstrap, workerSocket) = try startAttack(attack)
        let channel = try bootstrap.connect()
        let start = ContinuousClock.now
        let result = pooledRequest(channel, child, watchdog: watchdog)
        #expect(result != nil, "the request thread must come back", sourceLocation: sourceLocation)
        if case .success = result { Issue.record("a request without an answer cannot succeed", sourceLocation: sourceLocation) }
        #expect(ContinuousClock.now - start < .seconds(watchdog + 2), sourceLocation: sourceLocation)
        _ = child.wait()
        expectFlat(before, workerSocket: workerSocket, sourceLocation: sourceLocation)
    }

    /// The same two attacks against a request with a deadline of its own
    /// (as the daemon's pools make them, with no watchdog thread): the
    /// request ends at the deadline as `timed-out` and the channel closes,
    /// whatever the worker does with its end.
    @Test(arguments: ["hang-request", "ping-flood-no-read"])
    func requestEndsAtItsDeadline(attack: String) throws {
        let before = LauncherResources.now(workerSocket: "")
        let workerSocket = try expectTimedOut(attack) { (channel, deadline) throws(ChannelError) in
            _ = try channel.request(Array("hello".utf8), deadline: deadline)
        }
        expectFlat(before, workerSocket: workerSocket)
    }

    /// The worker answers the shutdown but keeps its socket open: the
    /// shutdown ends at its deadline as `timed-out`.
    @Test func lingeringShutdownEndsAtItsDeadline() throws {
        try expectTimedOut("shutdown-linger") { (channel, _) throws(ChannelError) in try channel.shutdown(timeoutMilliseconds: 1_000) }
    }

    /// Plays `attack` while `call` waits on the channel with a deadline 1 s
    /// away: it ends as `timed-out` within 1.5 s and the channel is closed.
    /// Returns the worker's socket (for ``expectFlat``).
    @discardableResult
    private func expectTimedOut(_ attack: String, sourceLocation: SourceLocation = #_sourceLocation,
                                _ call: @escaping @Sendable (SecureChannel, ContinuousClock.Instant) throws(ChannelError) -> Void) throws -> String {
        let (child, bootstrap, workerSocket) = try startAttack(attack)
        let channel = try bootstrap.connect()
        let start = ContinuousClock.now
        let caught = bounded(10, onTimeout: { channel.interrupt() }) { () -> ChannelError? in
            do throws(ChannelError) { try call(channel, start + .seconds(1)) } catch { return error }
            return nil
        }
        #expect(caught??.violation?.kind == .timedOut, "\(String(describing: caught))", sourceLocation: sourceLocation)
        #expect(ContinuousClock.now - start < .milliseconds(1_500), sourceLocation: sourceLocation)
        #expect(channel.isClosed, sourceLocation: sourceLocation)
        child.kill()
        _ = child.wait()
        return workerSocket
    }

    /// The worker starts a child that outlives it. The SDK's channel socket
    /// is close-on-exec, so the child does not hold it and the launcher sees
    /// the worker's end of stream at once.
    @Test func childOfTheWorkerDoesNotHoldTheChannel() throws {
        let (child, bootstrap, _) = try startAttack("child-holds-socket")
        let channel = try bootstrap.connect()
        let answer = try channel.request(Array("hello".utf8))
        let grandchild = pid_t(String(decoding: answer, as: UTF8.self)) ?? 0
        defer { if grandchild > 0 { _ = Glibc.kill(grandchild, SIGKILL) } }
        let caught = bounded(5, onTimeout: { channel.interrupt() }) { () -> ChannelError? in
            do throws(ChannelError) { _ = try channel.receive() } catch { return error }
            return nil
        }
        #expect(caught??.violation?.kind == .closed, "the worker's end of stream must show at once: \(String(describing: caught))")
        _ = child.wait()
    }
}

extension Result where Failure == ChannelError {
    var failureViolation: ChannelViolation? {
        if case .failure(let e) = self { return e.violation }
        return nil
    }
}
