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

/// The repository, the venv's python and `worker` (relative to the
/// repository), or nil after saying why the part is skipped.
private func benchWorker(_ part: String, _ worker: String) -> (repo: String, python: String, worker: String)? {
    let repo = FileManager.default.currentDirectoryPath
    let python = repo + "/.venv/bin/python3"
    guard FileManager.default.isExecutableFile(atPath: python), FileManager.default.fileExists(atPath: repo + "/" + worker) else {
        print("\(part): skipped (needs make venv and \(worker); run from the repository root)")
        return nil
    }
    return (repo, python, repo + "/" + worker)
}

func daemonBench() throws {
    guard let (repo, python, worker) = benchWorker("daemon", "examples/minilm/worker.py") else { return }
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
            binds = ["\(repo)/.venv", "\(repo)/examples/minilm"]
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
func benchPayload(repo: String) throws -> [UInt8] {
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
    try startUnjailed([python, worker], name: name)
}

/// Starts `args` without a jail, with the channel at fds 3 and 4, and runs
/// the handshake.
func startUnjailed(_ args: [String], name: String) throws -> (pid_t, SecureChannel) {
    let program = args[0]
    let bootstrap = try ChannelBootstrap(tenant: "bench", worker: name)
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_adddup2(&actions, bootstrap.workerSocket.rawValue, ChannelBootstrap.workerSocketFD)
    posix_spawn_file_actions_adddup2(&actions, bootstrap.paramsMemfd.rawValue, ChannelBootstrap.workerParamsFD)
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
    let argv = args.map { strdup($0) } + [nil]
    defer { for p in argv { free(p) } }
    var env = ProcessInfo.processInfo.environment
    env[ChannelBootstrap.environmentVariable] = ChannelBootstrap.environmentValue()
    let envp = env.map { strdup("\($0.key)=\($0.value)") } + [nil]
    defer { for p in envp { free(p) } }
    var pid: pid_t = 0
    let rc = posix_spawn(&pid, program, &actions, nil, argv, envp)
    guard rc == 0 else { throw DaemonError("posix_spawn \(program): \(String(cString: strerror(rc)))") }
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

    /// One request, its answer read and checked. The head is scanned as
    /// bytes (no String or Foundation search per call), so the client's own
    /// cost stays small next to what it measures.
    func infer(_ tenant: String, _ body: [UInt8]) throws {
        let head = "POST /v1/tenants/\(tenant)/infer HTTP/1.1\r\nHost: stockaded\r\nAuthorization: Bearer \(token)\r\nContent-Length: \(body.count)\r\n\r\n"
        var out = Array(head.utf8)
        out += body
        do {
            try out.withUnsafeBytes { try FileDescriptor(rawValue: fd).sendAll($0) }
        } catch {
            throw DaemonError("send: \(error)")
        }
        var scanned = 0
        var headEnd = -1
        while headEnd < 0 {
            while scanned + 3 < buffer.count {
                if buffer[scanned] == 13, buffer[scanned + 1] == 10, buffer[scanned + 2] == 13, buffer[scanned + 3] == 10 {
                    headEnd = scanned + 4
                    break
                }
                scanned += 1
            }
            if headEnd < 0 { try fill() }
        }
        // "HTTP/1.1 200"
        guard buffer.count > 12, buffer[9] == 0x32, buffer[10] == 0x30, buffer[11] == 0x30 else {
            throw DaemonError("daemon answered: \(String(decoding: buffer.prefix(min(80, headEnd)), as: UTF8.self))")
        }
        let key = Array("\r\ncontent-length:".utf8)
        var length = 0
        var i = 0
        search: while i + key.count < headEnd {
            for j in 0..<key.count where (buffer[i + j] | (j >= 2 ? 0x20 : 0)) != key[j] { i += 1; continue search }
            var k = i + key.count
            while buffer[k] == 0x20 { k += 1 }
            while buffer[k] >= 0x30 && buffer[k] <= 0x39 { length = length * 10 + Int(buffer[k] - 0x30); k += 1 }
            break
        }
        let total = headEnd + length
        while buffer.count < total { try fill() }
        buffer.removeSubrange(0..<total)
    }

    private var chunk = [UInt8](repeating: 0, count: 65536)

    private func fill() throws {
        let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        guard n > 0 else { throw DaemonError("recv: \(n == 0 ? "closed" : "errno \(errno)")") }
        buffer.append(contentsOf: chunk[0..<n])
    }
}

// Part `broker`: what stockaded itself adds to a request. A 64-byte request
// to a trivial echo worker (python/tests/echo_worker.py), one at a time,
// through the daemon (HTTP on the unix socket with keep-alive, token check,
// routing, the tenant queue, the audit line, the channel) against the same
// request over a direct channel to the same worker run unjailed. Rounds
// alternate so both see the same load; the difference of the medians is
// the broker's dispatch overhead. Goal: at most 100 microseconds at p50.
func brokerBench() throws {
    guard let (repo, python, worker) = benchWorker("broker", "python/tests/echo_worker.py") else { return }
    let rounds = 10, perRound = 300
    let payload = [UInt8](repeating: 0x61, count: 64)
    print("broker: 64-byte requests to an echo worker, one at a time, \(rounds) interleaved rounds of \(perRound)")
    let (pid, direct) = try startUnjailed(python: python, worker: worker, name: "direct-echo")
    defer {
        try? direct.shutdown()
        var status: Int32 = 0
        kill(pid, SIGTERM)
        waitpid(pid, &status, 0)
    }
    let dir = NSTemporaryDirectory() + "stockade-bench-broker-\(getpid())"
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    chmod(dir, 0o755)
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let token = "bench-token-0123456789abcdef"
    let config = """
        [daemon]
        socket = "api.sock"
        audit_log = "audit.jsonl"
        cgroups = false
        [client.bench]
        token = "\(token)"
        uid = \(getuid())
        [tenant.echo]
        profile = "\(repo)/profiles/minimal.toml"
        command = ["\(python)", "\(worker)"]
        binds = ["\(repo)/.venv", "\(repo)/python"]
        workers_min = 1
        workers_max = 1
        [tenant.echo.access]
        bench = "invoker"
        """
    try config.write(toFile: dir + "/stockaded.toml", atomically: true, encoding: .utf8)
    let daemon = try Daemon(config: try DaemonConfig.load(path: dir + "/stockaded.toml"))
    try daemon.start()
    defer { daemon.stop() }
    let deadline = Date().addingTimeInterval(60)
    while daemon.pool("echo")!.workers().first?.state != "idle" {
        guard Date() < deadline else { throw DaemonError("the echo worker did not start within 60 s") }
        usleep(50_000)
    }
    let client = try KeepAliveClient(socket: dir + "/api.sock", token: token)
    func ms(_ d: Duration) -> Double { Double(d.components.seconds) * 1000 + Double(d.components.attoseconds) / 1e15 }
    for _ in 0..<200 {
        _ = try direct.request(payload)
        try client.infer("echo", payload)
    }
    // CPU time of this process (client, channel and, on the daemon's
    // rounds, the whole broker): the difference per request is what the
    // broker spends of its own, apart from waiting for a CPU.
    func cpuSeconds() -> Double {
        var u = rusage()
        getrusage(RUSAGE_SELF.rawValue, &u)
        return Double(u.ru_utime.tv_sec + u.ru_stime.tv_sec) + Double(u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6
    }
    var viaDirect: [Double] = [], viaDaemon: [Double] = []
    var cpuDirect = 0.0, cpuDaemon = 0.0
    for _ in 0..<rounds {
        var c0 = cpuSeconds()
        for _ in 0..<perRound {
            let t0 = ContinuousClock.now
            _ = try direct.request(payload)
            viaDirect.append(ms(ContinuousClock.now - t0))
        }
        cpuDirect += cpuSeconds() - c0
        c0 = cpuSeconds()
        for _ in 0..<perRound {
            let t0 = ContinuousClock.now
            try client.infer("echo", payload)
            viaDaemon.append(ms(ContinuousClock.now - t0))
        }
        cpuDaemon += cpuSeconds() - c0
    }
    let d = Stats(samples: viaDirect), b = Stats(samples: viaDaemon)
    print("  \(pad("", 34)) \(pad("p50 us", 9)) \(pad("p99 us", 9))")
    print("  \(pad("direct channel", 34)) \(pad(fmt(d.median * 1000, 1), 9)) \(pad(fmt(d.percentile(0.99) * 1000, 1), 9))")
    print("  \(pad("through stockaded", 34)) \(pad(fmt(b.median * 1000, 1), 9)) \(pad(fmt(b.percentile(0.99) * 1000, 1), 9))")
    print("  \(pad("added by the broker", 34)) \(pad(fmt((b.median - d.median) * 1000, 1), 9)) \(pad(fmt((b.percentile(0.99) - d.percentile(0.99)) * 1000, 1), 9))")
    let n = Double(rounds * perRound)
    print("  CPU per request: \(fmt(cpuDirect / n * 1e6, 1)) us direct, \(fmt(cpuDaemon / n * 1e6, 1)) us through stockaded "
          + "(\(fmt((cpuDaemon - cpuDirect) / n * 1e6, 1)) us of the broker's own; the rest of the added latency is waiting for a CPU)")
    var load = [Double](repeating: 0, count: 3)
    if getloadavg(&load, 3) == 3 { print("  load average during the run: \(fmt(load[0], 1)) on \(ProcessInfo.processInfo.activeProcessorCount) CPUs") }
    print("  goal: at most 100 us added at p50")
}
