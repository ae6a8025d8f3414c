// Part `daemon`: requests per second and p50/p99 latency of MiniLM
// embeddings through stockaded (HTTP on the unix socket, tenant queue,
// encrypted channel, jailed worker) against the same worker run unjailed and
// called directly over the same channel. The two are interleaved in rounds
// so that both see the same machine load. Needs `make venv` and a build
// that can launch jails (root, or unprivileged user namespaces).
import Foundation
import StockadeChannel
import StockadeDaemon
import StockadeSystem
import Synchronization
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

private let workers = 2
private let requestsPerClientPerRound = 15
private let rounds = 10

func daemonBench() throws {
    let repo = FileManager.default.currentDirectoryPath
    let python = repo + "/.venv/bin/python3"
    let worker = repo + "/examples/minilm/worker.py"
    guard FileManager.default.isExecutableFile(atPath: python), FileManager.default.fileExists(atPath: worker) else {
        print("daemon: skipped (needs make venv and examples/minilm; run from the repository root)")
        return
    }
    let payload = try benchPayload(repo: repo)
    print("daemon: MiniLM embeddings of 8 sentences per request, \(workers) workers, \(workers) clients, "
          + "\(rounds) interleaved rounds of \(requestsPerClientPerRound) requests per client")

    // Unjailed workers, called directly over the channel.
    var direct: [(pid_t, SecureChannel)] = []
    defer {
        for (pid, channel) in direct {
            try? channel.shutdown()
            var status: Int32 = 0
            kill(pid, SIGTERM)
            waitpid(pid, &status, 0)
        }
    }
    for i in 0..<workers {
        direct.append(try startUnjailed(python: python, worker: worker, name: "direct-\(i)"))
    }

    // Daemons in this process, each with one tenant of jailed workers: one
    // with the tenant's cgroups (as deployed when run as root) and one
    // without, which isolates what the jail and the channel cost from what
    // the tenant's CPU share costs on a busy host (on cgroup v1 the whole
    // tenant competes with the host's other tasks as one group).
    var daemons: [(label: String, daemon: Daemon, socket: String)] = []
    var dirs: [String] = []
    defer {
        for d in daemons { d.daemon.stop() }
        for dir in dirs { try? FileManager.default.removeItem(atPath: dir) }
    }
    let token = "bench-token-0123456789abcdef"
    let variants: [(String, Bool)] = getuid() == 0
        ? [("stockaded -> jailed worker", true), ("same, without tenant cgroups", false)]
        : [("stockaded -> jailed worker", false)]
    for (i, (label, cgroups)) in variants.enumerated() {
        let dir = NSTemporaryDirectory() + "stockade-bench-\(getpid())-\(i)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        chmod(dir, 0o755)
        dirs.append(dir)
        let config = """
            [daemon]
            socket = "api.sock"
            audit_log = "audit.jsonl"
            cgroups = \(cgroups)
            cgroup_base = "stockade-bench"
            [client.bench]
            token = "\(token)"
            uid = \(getuid())
            [tenant.bench]
            profile = "\(repo)/profiles/inference-cpu.toml"
            command = ["\(python)", "\(worker)"]
            binds = ["\(repo)/.venv", "\(repo)/examples/minilm", "\(repo)/python"]
            workers_min = \(workers)
            workers_max = \(workers)
            queue = 64
            [tenant.bench.access]
            bench = "invoker"
            """
        try config.write(toFile: dir + "/stockaded.toml", atomically: true, encoding: .utf8)
        let daemon = try Daemon(config: try DaemonConfig.load(path: dir + "/stockaded.toml"))
        try daemon.start()
        daemons.append((label, daemon, dir + "/api.sock"))
    }
    for d in daemons {
        let deadline = Date().addingTimeInterval(120)
        while d.daemon.pool("bench")!.workers().filter({ $0.state == "idle" }).count < workers {
            guard Date() < deadline else { throw DaemonError("the daemon's workers did not start within 120 s") }
            usleep(100_000)
        }
    }

    // Warm-up: every worker answers a few requests each way.
    _ = try runClients(count: workers, requests: 3) { i in
        let channel = direct[i].1
        return { _ = try channel.request(payload) }
    }
    for d in daemons {
        _ = try runClients(count: workers, requests: 3) { _ in
            let client = try KeepAliveClient(socket: d.socket, token: token)
            return { try client.infer("bench", payload) }
        }
    }

    var directSamples: [Double] = []
    var directWall = 0.0
    var daemonSamples = [[Double]](repeating: [], count: daemons.count)
    var daemonWall = [Double](repeating: 0, count: daemons.count)
    for _ in 0..<rounds {
        let d = try runClients(count: workers, requests: requestsPerClientPerRound) { i in
            let channel = direct[i].1
            return { _ = try channel.request(payload) }
        }
        directSamples += d.samples
        directWall += d.wall
        for (k, daemon) in daemons.enumerated() {
            let j = try runClients(count: workers, requests: requestsPerClientPerRound) { _ in
                let client = try KeepAliveClient(socket: daemon.socket, token: token)
                return { try client.infer("bench", payload) }
            }
            daemonSamples[k] += j.samples
            daemonWall[k] += j.wall
        }
    }
    let directRPS = Double(directSamples.count) / directWall
    let ds = Stats(samples: directSamples)
    print("  \(pad("", 34)) \(pad("req/s", 9)) \(pad("p50 ms", 9)) \(pad("p99 ms", 9)) throughput cost")
    print("  \(pad("unjailed worker, direct channel", 34)) \(pad(fmt(directRPS, 1), 9)) \(pad(fmt(ds.median), 9)) \(pad(fmt(ds.percentile(0.99)), 9)) -")
    for (k, daemon) in daemons.enumerated() {
        let rps = Double(daemonSamples[k].count) / daemonWall[k]
        let js = Stats(samples: daemonSamples[k])
        print("  \(pad(daemon.label, 34)) \(pad(fmt(rps, 1), 9)) \(pad(fmt(js.median), 9)) \(pad(fmt(js.percentile(0.99)), 9)) \(fmt((1 - rps / directRPS) * 100, 1))%")
    }
    print("  target: jailing and the channel cost at most 5% of throughput")
}

/// The request: the first eight reference sentences.
private func benchPayload(repo: String) throws -> [UInt8] {
    let data = try Data(contentsOf: URL(fileURLWithPath: repo + "/examples/minilm/reference.json"))
    guard let ref = try JSONSerialization.jsonObject(with: data) as? [String: Any], let texts = ref["texts"] as? [String] else {
        throw DaemonError("examples/minilm/reference.json has no texts")
    }
    return Array(try JSONSerialization.data(withJSONObject: ["texts": Array(texts.prefix(8))]))
}

/// `count` client threads, each running `requests` calls of the closure
/// `make(i)` returns; per-call latencies in ms and the wall time in s.
private struct Results {
    var samples: [Double] = []
    var failure: (any Error)?
}

private func runClients(count: Int, requests: Int, _ make: (Int) throws -> @Sendable () throws -> Void) throws -> (samples: [Double], wall: Double) {
    let calls = try (0..<count).map(make)
    let results = Mutex(Results())
    let start = ContinuousClock.now
    DispatchQueue.concurrentPerform(iterations: count) { i in
        var mine: [Double] = []
        for _ in 0..<requests {
            let t0 = ContinuousClock.now
            do { try calls[i]() } catch {
                results.withLock { $0.failure = error }
                return
            }
            let took = ContinuousClock.now - t0
            mine.append(took.inMilliseconds)
        }
        results.withLock { $0.samples += mine }
    }
    let wall = ContinuousClock.now - start
    let (samples, failure) = results.withLock { ($0.samples, $0.failure) }
    if let failure { throw failure }
    return (samples, wall.inSeconds)
}

/// Starts worker.py without a jail, with the channel at fds 3 and 4, and
/// runs the handshake.
private func startUnjailed(python: String, worker: String, name: String) throws -> (pid_t, SecureChannel) {
    let bootstrap = try ChannelBootstrap(tenant: "bench", worker: name)
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_adddup2(&actions, bootstrap.workerSocket.rawValue, ChannelBootstrap.workerSocketFD)
    posix_spawn_file_actions_adddup2(&actions, bootstrap.paramsMemfd.rawValue, ChannelBootstrap.workerParamsFD)
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
    let args: [String] = [python, worker]
    let argv = args.map { strdup($0) } + [nil]
    defer { for p in argv { free(p) } }
    var env = ProcessInfo.processInfo.environment
    env[ChannelBootstrap.environmentVariable] = ChannelBootstrap.environmentValue()
    let envp = env.map { strdup("\($0.key)=\($0.value)") } + [nil]
    defer { for p in envp { free(p) } }
    var pid: pid_t = 0
    let rc = posix_spawn(&pid, python, &actions, nil, argv, envp)
    guard rc == 0 else { throw DaemonError("posix_spawn \(python): \(String(cString: strerror(rc)))") }
    bootstrap.closeWorkerEnds()
    return (pid, try bootstrap.connect(handshakeTimeoutMilliseconds: 120_000))
}

/// HTTP/1.1 with keep-alive on the daemon's unix socket.
private final class KeepAliveClient: @unchecked Sendable {
    let fd: Int32
    let token: String
    var buffer: [UInt8] = []

    init(socket: String, token: String) throws {
        self.token = token
        do {
            fd = try UnixSocket.connect(path: socket).rawValue
        } catch {
            throw DaemonError("connect \(socket): \(error)")
        }
    }

    deinit { close(fd) }

    func infer(_ tenant: String, _ body: [UInt8]) throws {
        let head = "POST /v1/tenants/\(tenant)/infer HTTP/1.1\r\nHost: stockaded\r\nAuthorization: Bearer \(token)\r\nContent-Length: \(body.count)\r\n\r\n"
        let out = Array(head.utf8) + body
        do {
            try out.withUnsafeBytes { try FileDescriptor(rawValue: fd).sendAll($0) }
        } catch {
            throw DaemonError("send: \(error)")
        }
        var headEnd: Range<Int>?
        while true {
            if let r = buffer.firstRange(of: [13, 10, 13, 10]) { headEnd = r; break }
            try fill()
        }
        let headText = String(decoding: buffer[..<headEnd!.lowerBound], as: UTF8.self)
        guard headText.hasPrefix("HTTP/1.1 200") else { throw DaemonError("daemon answered: \(headText.prefix(80))") }
        var length = 0
        for line in headText.components(separatedBy: "\r\n") where line.lowercased().hasPrefix("content-length:") {
            length = Int(line.dropFirst(15).trimmingCharacters(in: .whitespaces)) ?? 0
        }
        let total = headEnd!.upperBound + length
        while buffer.count < total { try fill() }
        buffer.removeFirst(total)
    }

    private func fill() throws {
        var chunk = [UInt8](repeating: 0, count: 65536)
        let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        guard n > 0 else { throw DaemonError("recv: \(n == 0 ? "closed" : "errno \(errno)")") }
        buffer += chunk[0..<n]
    }
}
