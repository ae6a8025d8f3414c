// Part `channel`: round-trip latency (64-byte requests) and echo throughput
// (64 KiB, 1 MiB, 64 MiB) over the encrypted channel, Swift to Swift and
// Swift to Python, each beside the same echo over a raw unencrypted
// socketpair, for AES-256-GCM and ChaCha20-Poly1305. Payloads over 1 MiB
// travel through bulk memfds on the channel, and through the socket raw.
import Foundation
import Dispatch
import StockadeChannel
import StockadeSystem
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

private struct ChannelBenchError: Error, CustomStringConvertible {
    let description: String
}

/// One echo peer, encrypted or raw.
private protocol EchoPeer {
    mutating func roundTrip(_ payload: [UInt8]) throws -> Int
    /// Sends `count` requests of `payload` (first byte 0x01: the Swift
    /// servers answer with an 8-byte acknowledgement) keeping up to
    /// `window` in flight: one-way throughput, sender and receiver working
    /// at the same time.
    mutating func stream(_ payload: [UInt8], count: Int, window: Int) throws
    mutating func finish() throws
}

private struct EncryptedPeer: EchoPeer {
    let channel: SecureChannel
    let finishPeer: () -> Void
    mutating func roundTrip(_ payload: [UInt8]) throws -> Int { try channel.request(payload).count }
    mutating func stream(_ payload: [UInt8], count: Int, window: Int) throws {
        var inFlight = 0
        for _ in 0..<count {
            try channel.send(type: .request, requestID: channel.makeRequestID(), payload: payload)
            inFlight += 1
            if inFlight == window {
                guard try channel.receive()?.type == .response else { throw ChannelBenchError(description: "no ack") }
                inFlight -= 1
            }
        }
        while inFlight > 0 {
            guard try channel.receive()?.type == .response else { throw ChannelBenchError(description: "no ack") }
            inFlight -= 1
        }
    }
    mutating func finish() throws {
        try channel.shutdown()
        finishPeer()
    }
}

/// `u32 length ‖ bytes` frames over a plain socket, buffers reused.
private struct RawPeer: EchoPeer {
    let socket: FileDescriptor
    var buffer = [UInt8](repeating: 0, count: 64 << 20)
    let finishPeer: () -> Void

    mutating func roundTrip(_ payload: [UInt8]) throws -> Int {
        var header: [UInt8] = []
        header.reserveCapacity(4)
        withUnsafeBytes(of: UInt32(payload.count).bigEndian) { header += $0 }
        try header.withUnsafeBytes { try socket.sendAll($0) }
        try payload.withUnsafeBytes { try socket.sendAll($0) }
        try readExact(4)
        let n = Int(buffer[0]) << 24 | Int(buffer[1]) << 16 | Int(buffer[2]) << 8 | Int(buffer[3])
        try readExact(n)
        return n
    }

    mutating func stream(_ payload: [UInt8], count: Int, window: Int) throws {
        var inFlight = 0
        var header: [UInt8] = []
        withUnsafeBytes(of: UInt32(payload.count).bigEndian) { header += $0 }
        for _ in 0..<count {
            try header.withUnsafeBytes { try socket.sendAll($0) }
            try payload.withUnsafeBytes { try socket.sendAll($0) }
            inFlight += 1
            if inFlight == window {
                try readExact(12)
                inFlight -= 1
            }
        }
        while inFlight > 0 {
            try readExact(12)
            inFlight -= 1
        }
    }

    private mutating func readExact(_ n: Int) throws {
        var got = 0
        let fd = socket
        try buffer.withUnsafeMutableBytes { buf in
            while got < n {
                let k = try fd.read(into: UnsafeMutableRawBufferPointer(rebasing: buf[got..<n]))
                if k == 0 { throw ChannelBenchError(description: "raw peer closed") }
                got += k
            }
        }
    }

    mutating func finish() throws {
        try socket.close()
        finishPeer()
    }
}

/// The raw echo server on a thread.
private func rawSwiftServer(_ socket: FileDescriptor) -> Thread {
    let thread = Thread {
        var peer = RawPeer(socket: socket, finishPeer: {})
        var header = [UInt8](repeating: 0, count: 4)
        while true {
            let n: Int
            do {
                let k = try header.withUnsafeMutableBytes { try socket.read(into: $0) }
                if k == 0 { break }
                var got = k
                while got < 4 {
                    let more = try header.withUnsafeMutableBytes { try socket.read(into: UnsafeMutableRawBufferPointer(rebasing: $0[got...])) }
                    if more == 0 { return }
                    got += more
                }
                n = Int(header[0]) << 24 | Int(header[1]) << 16 | Int(header[2]) << 8 | Int(header[3])
                var received = 0
                try peer.buffer.withUnsafeMutableBytes { buf in
                    while received < n {
                        let k = try socket.read(into: UnsafeMutableRawBufferPointer(rebasing: buf[received..<n]))
                        if k == 0 { throw ChannelBenchError(description: "eof") }
                        received += k
                    }
                }
                let reply = n > 0 && peer.buffer[0] == 1 ? 8 : n
                let replyHeader = withUnsafeBytes(of: UInt32(reply).bigEndian) { Array($0) }
                try replyHeader.withUnsafeBytes { try socket.sendAll($0) }
                try peer.buffer.withUnsafeBytes { try socket.sendAll(UnsafeRawBufferPointer(rebasing: $0[0..<reply])) }
            } catch { break }
        }
        try? socket.close()
    }
    thread.start()
    return thread
}

private func spawnChild(_ argv: [String], socket: FileDescriptor, params: FileDescriptor?) throws -> pid_t {
    var high: [CInt] = []
    defer { for fd in high { close(fd) } }
    for fd in [socket] + (params.map { [$0] } ?? []) {
        high.append(fcntl(fd.rawValue, F_DUPFD_CLOEXEC, 100))
    }
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_adddup2(&actions, high[0], 3)
    if high.count > 1 { posix_spawn_file_actions_adddup2(&actions, high[1], 4) }
    let env = [high.count > 1 ? ChannelBootstrap.environmentEntry() : "STOCKADE_CHANNEL=sock=3", "PATH=/usr/bin:/bin"]
    let cArgs = argv.map { strdup($0) } + [nil]
    let cEnv = env.map { strdup($0) } + [nil]
    defer { for p in cArgs + cEnv { free(p) } }
    var pid: pid_t = 0
    let rc = posix_spawn(&pid, argv[0], &actions, nil, cArgs, cEnv)
    guard rc == 0 else { throw ChannelBenchError(description: "spawn \(argv[0]): \(Errno(rawValue: rc))") }
    return pid
}

private func reap(_ pid: pid_t) {
    var status: Int32 = 0
    _ = try? retryingSyscall { waitpid(pid, &status, 0) }
}

/// The Python peers: the SDK worker with a bytes handler, and the same
/// worker with `serve(views=True)`, whose handler gets and returns views.
private enum PeerKind: String { case swift = "swift", python = "python", pythonViews = "py-views" }

private func makePeer(_ kind: PeerKind, suite: CipherSuite?) throws -> any EchoPeer {
    let python = ProcessInfo.processInfo.environment["STOCKADE_PYTHON"] ?? ".venv/bin/python3"
    if let suite {
        let bootstrap = try ChannelBootstrap(tenant: "bench", worker: "echo", suites: [suite])
        switch kind {
        case .swift:
            let socket = FileDescriptor(rawValue: fcntl(bootstrap.workerSocket.rawValue, F_DUPFD_CLOEXEC, 0))
            let params = FileDescriptor(rawValue: fcntl(bootstrap.paramsMemfd.rawValue, F_DUPFD_CLOEXEC, 0))
            let done = DispatchSemaphore(value: 0)
            Thread {
                if let parameters = try? WorkerChannel.readParameters(from: params),
                   let channel = try? SecureChannel.respond(socket: socket, parameters: parameters) {
                    try? WorkerChannel.serve(channel) { $0.first == 1 ? [UInt8](repeating: 0, count: 8) : $0 }
                }
                done.signal()
            }.start()
            bootstrap.closeWorkerEnds()
            return EncryptedPeer(channel: try bootstrap.connect(), finishPeer: { done.wait() })
        case .python, .pythonViews:
            let argv = [python, "python/tests/echo_worker.py"] + (kind == .pythonViews ? ["--views"] : [])
            let pid = try spawnChild(argv, socket: bootstrap.workerSocket, params: bootstrap.paramsMemfd)
            bootstrap.closeWorkerEnds()
            return EncryptedPeer(channel: try bootstrap.connect(), finishPeer: { reap(pid) })
        }
    }
    let (mine, theirs) = try UnixSocketPair.make()
    switch kind {
    case .swift:
        let thread = rawSwiftServer(theirs)
        _ = thread
        return RawPeer(socket: mine, finishPeer: {})
    case .python, .pythonViews:
        let pid = try spawnChild([python, "python/tests/raw_echo.py"], socket: theirs, params: nil)
        try theirs.close()
        return RawPeer(socket: mine, finishPeer: { reap(pid) })
    }
}

/// Seconds for `iterations` echoes of `size` bytes (after a warm-up).
private func measure(_ peer: inout any EchoPeer, size: Int, iterations: Int) throws -> Double {
    // 0x7e: not one of the echo worker's command prefixes.
    let payload = [UInt8](repeating: 0x7e, count: size)
    for _ in 0..<max(1, iterations / 20) {
        guard try peer.roundTrip(payload) == size else { throw ChannelBenchError(description: "short echo") }
    }
    let start = ContinuousClock.now
    for _ in 0..<iterations {
        guard try peer.roundTrip(payload) == size else { throw ChannelBenchError(description: "short echo") }
    }
    let elapsed = ContinuousClock.now - start
    return elapsed.inSeconds
}

private func sizeName(_ n: Int) -> String {
    n >= 1 << 20 ? "\(n >> 20) MiB" : n >= 1 << 10 ? "\(n >> 10) KiB" : "\(n) B"
}

func channelBench() throws {
    let env = ProcessInfo.processInfo.environment
    let scale = Double(env["BENCH_SCALE"] ?? "") ?? 1.0
    // BENCH_SIZES (bytes, comma-separated) and BENCH_PEERS (swift,python)
    // pick cases, e.g. to profile one of them.
    let sizes = env["BENCH_SIZES"].map { Set($0.split(separator: ",").compactMap { Int($0) }) }
    let peers = env["BENCH_PEERS"].map { Set($0.split(separator: ",").map(String.init)) }
    // (size, iterations for Swift, iterations for Python)
    let cases: [(Int, Int, Int)] = [(64, 20000, 5000), (64 << 10, 3000, 500), (1 << 20, 400, 60), (64 << 20, 8, 3)]
        .filter { sizes?.contains($0.0) ?? true }
    let kinds: [PeerKind] = (FileManager.default.isExecutableFile(atPath: env["STOCKADE_PYTHON"] ?? ".venv/bin/python3")
        ? [.swift, .python, .pythonViews] : [.swift]).filter { peers?.contains($0.rawValue) ?? true }
    if kinds == [.swift], peers == nil { print("channel: .venv/bin/python3 missing (make venv); Swift only") }
    print("channel: echo round trips; latency is per round trip, throughput is payload MB/s (each way)")
    print("AES-NI present: \(CipherSuite.hardwareHasAES)")
    for suite in CipherSuite.allCases {
        let n = max(1, Int(200 * scale))
        let t = try ChannelBenchmarking.aeadRoundTrips(suite: suite, size: 1 << 20, iterations: n)
        print("AEAD alone, \(suite), 1 MiB seal+open in place: \(fmt(Double(2 << 20) * Double(n) / t / 1e6, 0)) MB/s per pass")
    }
    print(pad("peer", 10) + pad("size", 9) + pad("raw", 14) + pad("AESGCM", 14) + pad("ratio", 9) + pad("ChaChaPoly", 14) + "ratio")
    for kind in kinds {
        var raw = try makePeer(kind, suite: nil)
        var aes = try makePeer(kind, suite: .aesGCM)
        var chacha = try makePeer(kind, suite: .chaChaPoly)
        for (size, swiftN, pythonN) in cases {
            let n = max(1, Int(Double(kind == .swift ? swiftN : pythonN) * scale))
            let tRaw = try measure(&raw, size: size, iterations: n)
            let tAES = try measure(&aes, size: size, iterations: n)
            let tChaCha = try measure(&chacha, size: size, iterations: n)
            func cell(_ t: Double) -> String {
                size == 64 ? fmt(t / Double(n) * 1e6, 1) + " us" : fmt(Double(size) * Double(n) / t / 1e6, 0) + " MB/s"
            }
            // Ratio: latency encrypted/raw for 64 B (lower is better);
            // throughput encrypted/raw for the rest (higher is better).
            func ratio(_ t: Double) -> String { size == 64 ? fmt(t / tRaw) + "x" : fmt(tRaw / t) + "x" }
            print(pad(kind.rawValue, 10) + pad(sizeName(size), 9) + pad(cell(tRaw), 14) + pad(cell(tAES), 14) + pad(ratio(tAES), 9)
                  + pad(cell(tChaCha), 14) + ratio(tChaCha))
        }
        try raw.finish()
        try aes.finish()
        try chacha.finish()
    }
    if kinds.contains(.swift), kinds.contains(.python) {
        try pythonAgainstSwift(rounds: max(1, Int(env["BENCH_ROUNDS"] ?? "") ?? 5), scale: scale, sizes: sizes)
    }
    // One-way streaming, Swift only (the Python workers echo everything).
    let oneWay = [(64 << 10, 4000), (1 << 20, 400), (64 << 20, 8)].filter { sizes?.contains($0.0) ?? true }
    guard !oneWay.isEmpty, kinds.contains(.swift) else { return }
    print("one-way (Swift to Swift, 4 requests in flight, 8-byte acks): payload MB/s")
    print(pad("peer", 8) + pad("size", 9) + pad("raw", 14) + pad("AESGCM", 14) + pad("ratio", 9) + pad("ChaChaPoly", 14) + "ratio")
    do {
        var raw = try makePeer(.swift, suite: nil)
        var aes = try makePeer(.swift, suite: .aesGCM)
        var chacha = try makePeer(.swift, suite: .chaChaPoly)
        for (size, iterations) in oneWay {
            let n = max(4, Int(Double(iterations) * scale))
            var payload = [UInt8](repeating: 0x7e, count: size)
            payload[0] = 1
            func time(_ peer: inout any EchoPeer) throws -> Double {
                try peer.stream(payload, count: max(4, n / 10), window: 4)
                let start = ContinuousClock.now
                try peer.stream(payload, count: n, window: 4)
                let elapsed = ContinuousClock.now - start
                return elapsed.inSeconds
            }
            let tRaw = try time(&raw), tAES = try time(&aes), tChaCha = try time(&chacha)
            func cell(_ t: Double) -> String { fmt(Double(size) * Double(n) / t / 1e6, 0) + " MB/s" }
            print(pad("swift", 8) + pad(sizeName(size), 9) + pad(cell(tRaw), 14) + pad(cell(tAES), 14) + pad(fmt(tRaw / tAES) + "x", 9)
                  + pad(cell(tChaCha), 14) + fmt(tRaw / tChaCha) + "x")
        }
        try raw.finish()
        try aes.finish()
        try chacha.finish()
    }
    print("ratio: 64 B is encrypted/raw latency (target <= 2x, Swift); larger sizes are encrypted/raw throughput (target >= 0.5x at 1 MiB, Swift)")
}

/// The Python peer against the Swift peer in the same run (AES-GCM): each
/// round measures every peer at every size in turn, so a busy machine
/// slows them alike; the ratios are per round, reported as the median and
/// the range. Python/Swift is throughput (higher is better, goal >= 0.8x
/// at 1 MiB and 64 MiB); at 64 B each peer's latency is also put against
/// the same peer's raw socketpair echo (goal <= 2x).
private func pythonAgainstSwift(rounds: Int, scale: Double, sizes: Set<Int>?) throws {
    let cases = [(64, 2000), (1 << 20, 100), (64 << 20, 3)].filter { sizes?.contains($0.0) ?? true }
    let kinds: [PeerKind] = [.swift, .python, .pythonViews]
    var encrypted: [PeerKind: any EchoPeer] = [:]
    var raw: [PeerKind: any EchoPeer] = [:]
    for kind in kinds {
        encrypted[kind] = try makePeer(kind, suite: .aesGCM)
        if kind != .pythonViews { raw[kind] = try makePeer(kind, suite: nil) }
    }
    // [size: [kind: seconds per round trip, one per round]]
    var times: [Int: [PeerKind: [Double]]] = [:]
    var rawTimes: [PeerKind: [Double]] = [:]
    for _ in 0..<rounds {
        for (size, iterations) in cases {
            let n = max(1, Int(Double(iterations) * scale))
            for kind in kinds {
                times[size, default: [:]][kind, default: []].append(try measure(&encrypted[kind]!, size: size, iterations: n) / Double(n))
                if size == 64, kind != .pythonViews {
                    rawTimes[kind, default: []].append(try measure(&raw[kind]!, size: size, iterations: n) / Double(n))
                }
            }
        }
    }
    for kind in kinds {
        try encrypted[kind]!.finish()
        try raw[kind]?.finish()
    }
    func summary(_ ratios: [Double]) -> String {
        let s = Stats(samples: ratios)
        return fmt(s.median) + "x [" + fmt(s.percentile(0)) + "-" + fmt(s.percentile(1)) + "]"
    }
    print("python against swift, interleaved (AESGCM, \(rounds) rounds): per-round ratios, median [min-max]")
    print(pad("size", 9) + pad("swift", 14) + pad("python", 14) + pad("python/swift", 22) + pad("py-views", 14) + "py-views/swift")
    for (size, _) in cases {
        guard let t = times[size] else { continue }
        func cell(_ kind: PeerKind) -> String {
            let m = Stats(samples: t[kind]!).median
            return size == 64 ? fmt(m * 1e6, 1) + " us" : fmt(Double(size) / m / 1e6, 0) + " MB/s"
        }
        // Throughput ratio: the Swift peer's time over the Python peer's.
        func ratios(_ kind: PeerKind) -> [Double] { zip(t[.swift]!, t[kind]!).map { $0 / $1 } }
        print(pad(sizeName(size), 9) + pad(cell(.swift), 14) + pad(cell(.python), 14) + pad(summary(ratios(.python)), 22)
              + pad(cell(.pythonViews), 14) + summary(ratios(.pythonViews)))
    }
    if let t = times[64] {
        // Latency against the same peer's raw echo (lower is better).
        let swiftRaw = rawTimes[.swift]!, pythonRaw = rawTimes[.python]!
        print("64 B round trip / raw socketpair: swift " + summary(zip(t[.swift]!, swiftRaw).map { $0 / $1 })
              + ", python " + summary(zip(t[.python]!, pythonRaw).map { $0 / $1 })
              + ", py-views " + summary(zip(t[.pythonViews]!, pythonRaw).map { $0 / $1 }))
    }
}
