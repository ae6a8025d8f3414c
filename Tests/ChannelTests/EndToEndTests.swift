import Foundation
import Testing
import SystemPackage
@testable import StockadeChannel

private func pattern(_ n: Int, seed: UInt8 = 0) -> [UInt8] { (0..<n).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ Int(seed)) } }

@Suite struct SwiftToSwiftTests {
    @Test(arguments: CipherSuite.allCases)
    func requestsPingsBulkAndShutdown(suite: CipherSuite) throws {
        let bootstrap = try ChannelBootstrap(tenant: "acme", worker: "w-1", suites: [suite],
                                             limits: ChannelLimits(rekeyInterval: 5))
        let worker = try ThreadWorker(bootstrap) { payload in
            if payload == Array("fail".utf8) { throw ChannelError.remote("asked to fail") }
            return payload.reversed()
        }
        bootstrap.closeWorkerEnds()
        let channel = try bootstrap.connect()
        #expect(channel.suite == suite)
        #expect(channel.peerAgent == SecureChannel.agent)
        for size in [0, 1, 64, 65536, 1 << 20, (1 << 20) + 1, 3 << 20] {
            let payload = pattern(size, seed: UInt8(size & 0xff))
            #expect(try channel.request(payload) == payload.reversed(), "size \(size)")
        }
        try channel.ping(Array("are you there".utf8))
        #expect(throws: ChannelError.self) { try channel.request(Array("fail".utf8)) }
        #expect(try channel.request([1, 2, 3]) == [3, 2, 1])
        try channel.shutdown()
        #expect(channel.isClosed)
        #expect(worker.join() == nil)
    }

    /// Requests pipelined up to the credit limit; one more is refused
    /// locally with noCredit, and responses come back in order.
    @Test func creditsLimitRequestsInFlight() throws {
        let bootstrap = try ChannelBootstrap(tenant: "acme", worker: "w-2", limits: ChannelLimits(maxRequestsInFlight: 4))
        let worker = try ThreadWorker(bootstrap) { $0 }
        bootstrap.closeWorkerEnds()
        let channel = try bootstrap.connect()
        var ids: [UInt64] = []
        for i in 0..<4 {
            let id = channel.makeRequestID()
            try channel.send(type: .request, requestID: id, payload: [UInt8(i)])
            ids.append(id)
        }
        let extra = channel.makeRequestID()
        let refused = Result { () throws(ChannelError) in try channel.send(type: .request, requestID: extra, payload: [9]) }
        if case .failure(.noCredit) = refused {} else { Issue.record("a fifth request must be refused: \(refused)") }
        for (i, id) in ids.enumerated() {
            let message = try #require(try channel.receive())
            #expect(message.type == .response && message.requestID == id && message.payload == [UInt8(i)])
        }
        try channel.shutdown()
        #expect(worker.join() == nil)
    }
}

@Suite(.enabled(if: Paths.venvIsBuilt, "needs the venv: make venv"))
struct SwiftToPythonTests {
    /// With `views`, the worker's handler gets memoryviews and echoes by
    /// returning the view it got (`serve(views=True)`).
    @Test(arguments: CipherSuite.allCases, [false, true])
    func pythonSDKWorker(suite: CipherSuite, views: Bool) throws {
        let (child, bootstrap) = try startPythonWorker("echo_worker.py", arguments: views ? ["--views"] : [], suites: [suite],
                                                       limits: ChannelLimits(rekeyInterval: 3))
        let channel = try bootstrap.connect()
        #expect(channel.peerAgent == "stockade-python/1")
        #expect(try channel.request(Array("reverse:hello".utf8)) == Array("olleh".utf8))
        let data = pattern(100_000)
        #expect(try channel.request(Array("sha256:".utf8) + data) == Crypto.sha256(data))
        for size in [0, 64, 65536, 1 << 20] {
            let payload = [0x7e] + pattern(size)
            #expect(try channel.request(payload) == payload, "size \(size)")
        }
        // A bulk request and a bulk response.
        let big = [0x7e] + pattern(3 << 20)
        #expect(try channel.request(big) == big)
        let bigResponse = try channel.request(Array("size:5000000".utf8))
        #expect(bigResponse.count == 5_000_000 && bigResponse.allSatisfy { $0 == 0x5a })
        let failed = Result { () throws(ChannelError) in try channel.request(Array("fail".utf8)) }
        if case .failure(.remote(let message)) = failed {
            #expect(message.contains("asked to fail"))
        } else {
            Issue.record("a failing handler must come back as an error: \(failed)")
        }
        try channel.ping([1, 2, 3])
        try channel.shutdown()
        #expect(child.wait() == 0)
    }

    /// PROBES 35: once the handshake is done the worker holds no descriptor
    /// of the params memfd (it is closed, so /proc/self/fd cannot reopen it).
    @Test func pskMemfdIsGoneAfterHandshake() throws {
        let (child, bootstrap) = try startPythonWorker("echo_worker.py")
        let channel = try bootstrap.connect()
        let fds = child.openDescriptors()
        #expect(!fds.isEmpty, "could not read /proc/\(child.pid)/fd")
        #expect(!fds.values.contains { $0.contains("stockade-channel") }, "worker fds: \(fds)")
        #expect(fds["4"] == nil, "fd 4 (params) is still open: \(fds)")
        #expect(fds["3"]?.hasPrefix("socket:") == true)
        // The worker's own view agrees.
        let own = String(decoding: try channel.request(Array("fds".utf8)), as: UTF8.self)
        #expect(!own.contains("stockade-channel") && !own.contains("memfd:"), "worker sees \(own)")
        try channel.shutdown()
        #expect(child.wait() == 0)
    }
}

@Suite(.enabled(if: Paths.venvIsBuilt, "needs the venv: make venv"))
struct NoiseprotocolPeerTests {
    /// The independent implementation (`noiseprotocol` on PyPI) as the
    /// worker, with a rekey every 2 records to check Rekey() as well.
    @Test(arguments: CipherSuite.allCases)
    func independentPeer(suite: CipherSuite) throws {
        let (child, bootstrap) = try startPythonWorker("noiseprotocol_peer.py", suites: [suite],
                                                       limits: ChannelLimits(rekeyInterval: 2))
        let channel = try bootstrap.connect()
        #expect(channel.peerAgent == "noiseprotocol-peer/1")
        for i in 0..<10 {
            let payload = pattern(100 * i + 1, seed: UInt8(i))
            #expect(try channel.request(payload) == payload.reversed())
        }
        try channel.ping(Array("ping".utf8))
        try channel.shutdown()
        #expect(child.wait() == 0)
    }
}

/// The example Swift worker (examples/swift-worker) as a child process.
@Suite(.enabled(if: FileManager.default.isExecutableFile(atPath: Paths.swiftWorker), "build stockade-swift-worker first"))
struct SwiftWorkerExecutableTests {
    @Test func exampleWorkerServes() throws {
        let bootstrap = try ChannelBootstrap(tenant: "acme", worker: "swift-1")
        let child = try Child.spawn([Paths.swiftWorker], environment: [ChannelBootstrap.environmentEntry()],
                                    mapping: [(bootstrap.workerSocket, 3), (bootstrap.paramsMemfd, 4)])
        bootstrap.closeWorkerEnds()
        let channel = try bootstrap.connect()
        #expect(try channel.request(Array("reverse:abc".utf8)) == Array("cba".utf8))
        #expect(try channel.request(Array("sha256:abc".utf8)) == SHA256.hash(Array("abc".utf8)))
        #expect(hex(SHA256.hash(Array("abc".utf8))) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        let big = Array("echo:".utf8) + [UInt8](repeating: 9, count: 2 << 20)
        #expect(try channel.request(big) == Array(big.dropFirst(5)))
        #expect(throws: ChannelError.self) { try channel.request(Array("nope:1".utf8)) }
        #expect(!child.openDescriptors().values.contains { $0.contains("stockade-channel") })
        try channel.shutdown()
        #expect(child.wait() == 0)
    }
}
