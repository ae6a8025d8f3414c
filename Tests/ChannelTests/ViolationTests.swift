import Foundation
import Testing
import SystemPackage
import StockadeSystem
import Synchronization
@testable import StockadeChannel
#if canImport(Glibc)
import Glibc
#endif

/// A launcher connected to a Swift worker thread, with a raw duplicate of
/// the launcher's socket for writing bytes the channel would never write.
private func connectedPair(limits: ChannelLimits = ChannelLimits()) throws -> (SecureChannel, FileDescriptor, ThreadWorker) {
    let bootstrap = try ChannelBootstrap(tenant: "acme", worker: "w-v", limits: limits)
    let worker = try ThreadWorker(bootstrap) { $0 }
    bootstrap.closeWorkerEnds()
    let raw = try dupCloseOnExec(bootstrap.launcherSocket)
    let channel = try bootstrap.connect()
    return (channel, raw, worker)
}

@Suite struct WorkerSideViolationTests {
    @Test func oversizedRecordHeaderIsRejectedBeforeAllocation() throws {
        let (channel, raw, worker) = try connectedPair()
        defer { channel.close(); try? raw.close() }
        var header: [UInt8] = []
        header.appendBigEndian(UInt32(0x7fff_ffff))
        header.append(MessageType.request.rawValue)
        try header.withUnsafeBytes { try raw.sendAll($0) }
        #expect(worker.join()?.violation?.kind == .oversized)
    }

    @Test func unknownRecordTypeIsRejected() throws {
        let (channel, raw, worker) = try connectedPair()
        defer { channel.close(); try? raw.close() }
        try [0, 0, 0, 40, 0xee].withUnsafeBytes { try raw.sendAll($0) }
        #expect(worker.join()?.violation?.kind == .malformed)
    }

    @Test func truncatedStreamIsAViolation() throws {
        let (channel, raw, worker) = try connectedPair()
        try [0, 0, 0, 40, MessageType.request.rawValue, 1, 2, 3].withUnsafeBytes { try raw.sendAll($0) }
        try raw.close()
        channel.close()
        #expect(worker.join()?.violation?.kind == .truncated)
    }

    @Test func descriptorOnAnOrdinaryRecordIsRejected() throws {
        let (channel, raw, worker) = try connectedPair()
        defer { channel.close(); try? raw.close() }
        // A descriptor a bulk record could carry (a sealed memfd), on a ping.
        let stray = try FileDescriptor.memfd(name: "stray")
        defer { try? stray.close() }
        _ = try stray.resize(to: 4096)
        try stray.addSeals(.immutable)
        try channel.sendRawRecordForTesting(type: .ping, requestID: 1, payload: [], passing: [stray])
        #expect(worker.join()?.violation?.kind == .unexpectedFileDescriptors)
    }

    @Test func descriptorThatIsNotAMemfdIsRejectedOnArrival() throws {
        let (channel, raw, worker) = try connectedPair()
        defer { channel.close(); try? raw.close() }
        let stray = try FileDescriptor.open("/dev/null", .readOnly, options: .closeOnExec)
        defer { try? stray.close() }
        try channel.sendRawRecordForTesting(type: .ping, requestID: 1, payload: [], passing: [stray])
        let violation = worker.join()?.violation
        #expect(violation?.kind == .unsealedMemfd)
        #expect(violation?.reason.contains("not a regular file") == true)
    }

    @Test func unsealedBulkMemfdIsRejected() throws {
        let (channel, raw, worker) = try connectedPair()
        defer { channel.close(); try? raw.close() }
        let (descriptor, memfd) = try channel.makeBulkForTesting(innerType: .request, requestID: 1, payload: [UInt8](repeating: 1, count: 10000))
        defer { try? memfd.close() }
        try channel.sendRawRecordForTesting(type: .bulk, requestID: 1, payload: descriptor, passing: [memfd])
        #expect(worker.join()?.violation?.kind == .unsealedMemfd)
    }

    @Test func bulkRecordWithoutMemfdIsRejected() throws {
        let (channel, raw, worker) = try connectedPair()
        defer { channel.close(); try? raw.close() }
        let (descriptor, memfd) = try channel.makeBulkForTesting(innerType: .request, requestID: 1, payload: [1, 2, 3])
        try memfd.close()
        try channel.sendRawRecordForTesting(type: .bulk, requestID: 1, payload: descriptor)
        #expect(worker.join()?.violation?.kind == .unexpectedFileDescriptors)
    }

    @Test func tamperedBulkChunkIsRejected() throws {
        let (channel, raw, worker) = try connectedPair()
        defer { channel.close(); try? raw.close() }
        let (descriptor, memfd) = try channel.makeBulkForTesting(innerType: .request, requestID: 1, payload: [UInt8](repeating: 1, count: 10000))
        defer { try? memfd.close() }
        _ = try [0xff].withUnsafeBytes { try memfd.write(toAbsoluteOffset: 5000, $0) }
        try memfd.addSeals(.immutable)
        try channel.sendRawRecordForTesting(type: .bulk, requestID: 1, payload: descriptor, passing: [memfd])
        #expect(worker.join()?.violation?.kind == .badTag)
    }

    @Test func requestsBeyondTheCreditAreAViolation() throws {
        let (channel, raw, worker) = try connectedPair(limits: ChannelLimits(maxRequestsInFlight: 2))
        defer { channel.close(); try? raw.close() }
        // The worker answers one at a time, so the fourth request is read
        // while... it is not: it answers each before reading the next. A
        // request that reuses an id still in flight is the observable breach.
        try channel.sendRawRecordForTesting(type: .request, requestID: 5, payload: [1])
        try channel.sendRawRecordForTesting(type: .hello, requestID: 0, payload: [])
        #expect(worker.join()?.violation?.kind == .unexpectedMessage)
    }

    @Test func unsealedParamsMemfdIsRefused() throws {
        let name = "stockade-unsealed-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        let memfd = try FileDescriptor.memfd(name: name)
        let params = ChannelParameters(psk: [UInt8](repeating: 1, count: 32), tenant: "t", worker: "w",
                                       spawnNonce: [UInt8](repeating: 2, count: 16), suites: [.aesGCM])
        _ = try params.encoded().withUnsafeBytes { try memfd.write(toAbsoluteOffset: 0, $0) }
        #expect(throws: ChannelError.self) { _ = try WorkerChannel.readParameters(from: memfd) }
        // readParameters closed it either way. Tests run in parallel and may
        // reuse the number at once, so look at what the number now holds.
        let now = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/fd/\(memfd.rawValue)")
        #expect(now?.hasPrefix("/memfd:\(name)") != true, "\(now ?? "")")
    }

    @Test func malformedParametersAreRefused() throws {
        let good = ChannelParameters(psk: [UInt8](repeating: 1, count: 32), tenant: "t", worker: "w",
                                     spawnNonce: [UInt8](repeating: 2, count: 16), suites: [.aesGCM]).encoded()
        #expect(try ChannelParameters(decoding: good).tenant == "t")
        for cut in 0..<good.count {
            #expect(throws: ChannelViolation.self) { _ = try ChannelParameters(decoding: Array(good[0..<cut])) }
        }
        #expect(throws: ChannelViolation.self) { _ = try ChannelParameters(decoding: good + [0]) }
    }

    @Test func environmentValueParsing() throws {
        #expect(try WorkerChannel.parseEnvironmentValue("sock=3,params=4") == (3, 4))
        for bad in ["", "sock=3", "sock=3,params=3", "sock=3,params=4,x=5", "sock=a,params=4", "sock=3,sock=4"] {
            #expect(throws: ChannelError.self) { _ = try WorkerChannel.parseEnvironmentValue(bad) }
        }
    }
}

/// Device and inode of what `path` leads to (a `/proc/self/fd` entry is
/// followed to the open file).
private func fileIdentity(_ path: String) -> (UInt, UInt)? {
    var status = stat()
    guard stat(path, &status) == 0 else { return nil }
    return (UInt(status.st_dev), UInt(status.st_ino))
}

@Suite struct LauncherSideViolationTests {
    /// A worker that answers the handshake and then sends garbage: the
    /// launcher reports a violation, records it, and closes.
    @Test func garbageFromWorkerIsReported() throws {
        let bootstrap = try ChannelBootstrap(tenant: "acme", worker: "w-g")
        let socket = try dupCloseOnExec(bootstrap.workerSocket)
        let raw = try dupCloseOnExec(bootstrap.workerSocket)
        let params = try dupCloseOnExec(bootstrap.paramsMemfd)
        bootstrap.closeWorkerEnds()
        let thread = Thread {
            guard let parameters = try? WorkerChannel.readParameters(from: params),
                  let channel = try? SecureChannel.respond(socket: socket, parameters: parameters) else { return }
            _ = try? [UInt8](repeating: 0x5a, count: 64).withUnsafeBytes { try raw.sendAll($0) }
            _ = channel
            Thread.sleep(forTimeInterval: 0) // keep `channel` alive until the bytes are out
            withExtendedLifetime(channel) {}
        }
        thread.start()
        let channel = try bootstrap.connect()
        var caught: ChannelViolation?
        do { _ = try channel.request([1]) } catch { caught = error.violation }
        #expect(caught != nil)
        #expect(channel.violation == caught)
        #expect(channel.isClosed)
        try? raw.close()
    }

    /// A worker sends a ping and, right behind it, a bulk record with its
    /// memfd, then goes away: one read brings both, answering the ping
    /// fails (the peer is gone), and the memfd that waited for its record
    /// is closed with the channel, not kept until the channel object is
    /// freed (a launcher keeps a closed channel's object while it reaps).
    @Test func memfdBehindAFailedPingAnswerIsClosedWithTheChannel() throws {
        let bootstrap = try ChannelBootstrap(tenant: "acme", worker: "w-p")
        let socket = try dupCloseOnExec(bootstrap.workerSocket)
        let params = try dupCloseOnExec(bootstrap.paramsMemfd)
        bootstrap.closeWorkerEnds()
        let sent = DispatchSemaphore(value: 0)
        let memfdIdentity = Mutex<(UInt, UInt)?>(nil)
        let thread = Thread {
            defer { sent.signal() }
            guard let parameters = try? WorkerChannel.readParameters(from: params),
                  let worker = try? SecureChannel.respond(socket: socket, parameters: parameters),
                  let (descriptor, memfd) = try? worker.makeBulkForTesting(innerType: .response, requestID: 1, payload: [UInt8](repeating: 4, count: 9000))
            else { return }
            defer { try? memfd.close() }
            try? memfd.addSeals(.immutable)
            memfdIdentity.withLock { $0 = fileIdentity("/proc/self/fd/\(memfd.rawValue)") }
            try? worker.sendRawRecordForTesting(type: .ping, requestID: 7, payload: [1])
            try? worker.sendRawRecordForTesting(type: .bulk, requestID: 1, payload: descriptor, passing: [memfd])
            worker.close()
        }
        thread.start()
        let channel = try bootstrap.connect()
        sent.wait()
        var caught: ChannelError?
        do { _ = try channel.receive() } catch { caught = error }
        guard case .system = caught else {
            Issue.record("expected the ping answer to fail, got \(String(describing: caught))")
            return
        }
        #expect(channel.isClosed)
        let identity = try #require(memfdIdentity.withLock { $0 })
        let open = ((try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? []).filter {
            fileIdentity("/proc/self/fd/\($0)").map { $0 == identity } ?? false
        }
        #expect(open.isEmpty, "the worker's memfd is still open as descriptor \(open)")
        withExtendedLifetime(channel) {}
    }

    /// The worker offered a suite the launcher did not: refused.
    @Test func unofferedSuiteIsRefused() throws {
        let bootstrap = try ChannelBootstrap(tenant: "acme", worker: "w-s", suites: [.aesGCM])
        let socket = try dupCloseOnExec(bootstrap.workerSocket)
        bootstrap.closeWorkerEnds()
        try [0, 2, 1, CipherSuite.chaChaPoly.rawValue].withUnsafeBytes { try socket.sendAll($0) }
        var caught: ChannelError?
        do { _ = try bootstrap.connect() } catch { caught = error }
        #expect(caught?.violation?.kind == .badSuite)
        try socket.close()
    }
}

@Suite(.enabled(if: Paths.venvIsBuilt, "needs the venv: make venv"))
struct PythonSideViolationTests {
    /// The Python worker refuses a descriptor on an ordinary record and
    /// exits; the launcher sees the channel end without a shutdown.
    @Test func pythonRejectsStrayDescriptor() throws {
        let (child, bootstrap) = try startPythonWorker("echo_worker.py")
        let channel = try bootstrap.connect()
        let stray = try FileDescriptor.open("/dev/null", .readOnly, options: .closeOnExec)
        defer { try? stray.close() }
        try channel.sendRawRecordForTesting(type: .ping, requestID: 1, payload: [], passing: [stray])
        var caught: ChannelViolation?
        do { _ = try channel.receive() } catch { caught = error.violation }
        #expect(caught?.kind == .closed)
        #expect(child.wait() != 0)
    }

    @Test func pythonRejectsUnsealedBulk() throws {
        let (child, bootstrap) = try startPythonWorker("echo_worker.py")
        let channel = try bootstrap.connect()
        let (descriptor, memfd) = try channel.makeBulkForTesting(innerType: .request, requestID: 1, payload: [UInt8](repeating: 3, count: 9000))
        defer { try? memfd.close() }
        try channel.sendRawRecordForTesting(type: .bulk, requestID: 1, payload: descriptor, passing: [memfd])
        var caught: ChannelViolation?
        do { _ = try channel.receive() } catch { caught = error.violation }
        #expect(caught?.kind == .closed)
        #expect(child.wait() != 0)
    }

    @Test func pythonRefusesUnsealedParams() throws {
        let (a, b) = try UnixSocketPair.make()
        defer { try? a.close() }
        let memfd = try FileDescriptor.memfd(name: "stockade-channel")
        let params = ChannelParameters(psk: [UInt8](repeating: 1, count: 32), tenant: "t", worker: "w",
                                       spawnNonce: [UInt8](repeating: 2, count: 16), suites: [.aesGCM])
        _ = try params.encoded().withUnsafeBytes { try memfd.write(toAbsoluteOffset: 0, $0) }
        let child = try Child.spawn([Paths.venvPython, Paths.pythonDir + "/tests/echo_worker.py"],
                                    environment: [ChannelBootstrap.environmentEntry()], mapping: [(b, 3), (memfd, 4)])
        try b.close()
        try memfd.close()
        #expect(child.wait() != 0)
    }
}
