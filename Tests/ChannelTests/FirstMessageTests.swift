// The launcher's first handshake message sent before the worker runs
// (ChannelBootstrap.sendFirstMessage, one suite offered): every responder
// still completes the handshake, and the Python SDK, finding the message
// waiting, answers its suite, message 2 and its hello in one write.
import Testing
import StockadeChannel
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

@Suite(.enabled(if: Paths.venvIsBuilt, "needs the venv: make venv"))
struct FirstMessageTests {
    @Test("With one suite offered, the first message goes out before the Python worker starts", arguments: CipherSuite.allCases)
    func pythonWorker(suite: CipherSuite) throws {
        // The worker answers in one write: the first time the launcher's end
        // is readable it holds the selection (2+2 bytes), message 2 (2+48)
        // and the hello record (5 + 12 + agent + 16), not the selection alone.
        let (child, bootstrap) = try startPythonWorker("echo_worker.py", suites: [suite], firstMessageEarly: true)
        #expect(try bootstrap.launcherSocket.waitReadable(timeoutMilliseconds: 30_000))
        var peek = [UInt8](repeating: 0, count: 4096)
        let first = peek.withUnsafeMutableBytes { recv(bootstrap.launcherSocket.rawValue, $0.baseAddress, $0.count, Int32(MSG_PEEK | MSG_DONTWAIT)) }
        #expect(first >= 4 + 50 + 33, "the first bytes the worker sent: \(first)")
        let channel = try bootstrap.connect()
        #expect(channel.peerAgent == "stockade-python/1")
        #expect(try channel.request(Array("reverse:hello".utf8)) == Array("olleh".utf8))
        try channel.shutdown()
        #expect(child.wait() == 0)
    }

    @Test("The independent Noise peer, which reads message 1 after naming its suite, takes it too")
    func independentPeer() throws {
        let (child, bootstrap) = try startPythonWorker("noiseprotocol_peer.py", suites: [.chaChaPoly], firstMessageEarly: true)
        let channel = try bootstrap.connect()
        #expect(try channel.request(Array("abc".utf8)) == Array("cba".utf8))
        try channel.shutdown()
        #expect(child.wait() == 0)
    }
}

@Suite struct FirstMessageSwiftTests {
    @Test("A Swift responder takes the early first message; with two suites offered nothing goes early")
    func swiftResponder() throws {
        for suites in [[CipherSuite.aesGCM], [.chaChaPoly, .aesGCM]] {
            let bootstrap = try ChannelBootstrap(tenant: "acme", worker: "w-1", suites: suites)
            try bootstrap.sendFirstMessage()
            var pending = [UInt8](repeating: 0, count: 256)
            let early = pending.withUnsafeMutableBytes { recv(bootstrap.workerSocket.rawValue, $0.baseAddress, $0.count, Int32(MSG_PEEK | MSG_DONTWAIT)) }
            #expect(early == (suites.count == 1 ? 2 + 48 : -1), "suites \(suites): \(early) bytes waiting for the worker")
            let worker = try ThreadWorker(bootstrap) { $0.reversed() }
            bootstrap.closeWorkerEnds()
            let channel = try bootstrap.connect()
            #expect(try channel.request([1, 2, 3]) == [3, 2, 1])
            try channel.shutdown()
            if let error = worker.join() { Issue.record("the Swift worker failed: \(error)") }
        }
    }
}
