// `stockade run --via`: a daemon with a [via] section keeps jails built,
// and the real `stockade` client runs commands in them. Real kernel, real
// daemon in this process, the client binary from this build.
import Foundation
import Testing
@testable import StockadeDaemon
import StockadeJail
import StockadeSystem
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

@Suite("stockade run --via: jails built ahead", .serialized)
struct ViaTests {
    /// STOCKADE_CLI runs the suite against another build of the client
    /// (e.g. the static release image, .build/release/stockade).
    static var client: String { ProcessInfo.processInfo.environment["STOCKADE_CLI"] ?? Fixture.repo + "/.build/debug/stockade" }

    /// The probe battery's binary (`make probe`), built when missing.
    static let probe: String? = {
        let path = Fixture.repo + "/.build/stockade-probe"
        if !FileManager.default.isExecutableFile(atPath: path) {
            let make = Process()
            make.executableURL = URL(fileURLWithPath: "/usr/bin/env")
            make.arguments = ["make", "-s", "-C", Fixture.repo, ".build/stockade-probe"]
            try? make.run()
            make.waitUntilExit()
        }
        return FileManager.default.isExecutableFile(atPath: path) ? path : nil
    }()

    /// A daemon with pool `minimal` (this uid; the shipped minimal profile
    /// plus the probe binary at /stockade-probe) and pool `others` (another
    /// uid only).
    final class Harness {
        let dir: String
        let daemon: Daemon
        var socket: String { dir + "/via.sock" }

        init(ready: Int = 2, profileTail: String = "") throws {
            dir = try Fixture.makeDirectory()
            let base = try String(contentsOfFile: Fixture.repo + "/profiles/minimal.toml", encoding: .utf8)
            var profile = base + profileTail
            if let probe = ViaTests.probe {
                profile += "\n[[mount]]\ntype = \"bind\"\nsource = \"\(probe)\"\ntarget = \"/stockade-probe\"\n"
            }
            try profile.write(toFile: dir + "/minimal.toml", atomically: true, encoding: .utf8)
            let text = """
                [daemon]
                socket = "api.sock"
                audit_log = "audit.jsonl"
                cgroups = \(Fixture.isRoot ? "true" : "false")
                cgroup_base = "\(Fixture.uniqueCgroupBase())"
                drain_timeout = "5s"

                [via]
                socket = "via.sock"

                [via.pool.minimal]
                profile = "minimal.toml"
                ready = \(ready)
                uids = [\(getuid())]

                max_running = 2

                [via.pool.others]
                profile = "minimal.toml"
                ready = 1
                uids = [\(getuid() == 0 ? 4242 : getuid())]
                """
            try text.write(toFile: dir + "/stockaded.toml", atomically: true, encoding: .utf8)
            daemon = try Daemon(config: try DaemonConfig.load(path: dir + "/stockaded.toml"))
            try daemon.start()
            // Wait for the pool to be built (at most 30 s), so that runs
            // take a jail built ahead rather than one built on the spot.
            let deadline = Date() + 30
            while (daemon.jailPools?.readyCounts()["minimal"] ?? 0) < ready, Date() < deadline { usleep(20_000) }
        }

        deinit {
            daemon.stop()
            Fixture.removeDirectory(dir)
        }

        struct Result {
            var status: Int32
            var stdout: String
            var stderr: String
        }

        /// Starts `stockade run --via -- command`, its stdout on the pipe returned.
        func start(_ command: [String]) throws -> (Process, Pipe) {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: ViaTests.client)
            p.arguments = ["run", "--via", socket, "--"] + command
            let out = Pipe()
            p.standardOutput = out
            try p.run()
            return (p, out)
        }

        /// Runs `stockade run --via` with `args` before `--` and `command` after it.
        func run(_ command: [String], leading: [String] = [], args: [String] = [], stdin: String? = nil,
                 stdinFD: Int32? = nil) throws -> Result {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: ViaTests.client)
            p.arguments = ["run"] + leading + ["--via", socket] + args + ["--"] + command
            let out = Pipe(), err = Pipe()
            p.standardOutput = out
            p.standardError = err
            let input = Pipe()
            if let stdinFD {
                p.standardInput = FileHandle(fileDescriptor: stdinFD, closeOnDealloc: false)
            } else {
                p.standardInput = input
            }
            try p.run()
            if let stdin { input.fileHandleForWriting.write(Data(stdin.utf8)) }
            try? input.fileHandleForWriting.close()
            let o = out.fileHandleForReading.readDataToEndOfFile()
            let e = err.fileHandleForReading.readDataToEndOfFile()
            p.waitUntilExit()
            return Result(status: p.terminationStatus, stdout: String(decoding: o, as: UTF8.self),
                          stderr: String(decoding: e, as: UTF8.self))
        }
    }

    @Test("[via] mistakes are refused with the file, line and key", arguments: [
        ("socket = \"api.sock\"\n[via.pool.p]\nprofile = \"PROFILE\"\nuids = [0]", "give [via] a socket of its own"),
        ("socket = \"via.sock\"\n[via.pool.p]\nprofile = \"PROFILE\"", "uids"),
        ("socket = \"via.sock\"\n[via.pool.p]\nprofile = \"PROFILE\"\nuids = [-1]", "not a uid"),
        ("socket = \"via.sock\"\n[via.pool.p]\nprofile = \"PROFILE\"\nuids = [0]\nready = 0", "ready"),
        ("socket = \"via.sock\"", "no pools"),
        ("socket = \"via.sock\"\n[via.pool.p]\nprofile = \"PROFILE\"\nuids = [0]\nworkers = 3", "workers"),
    ])
    func configErrors(via: String, expected: String) throws {
        let text = "[daemon]\nsocket = \"api.sock\"\naudit_log = \"audit.jsonl\"\n\n[via]\n"
            + via.replacingOccurrences(of: "PROFILE", with: Fixture.repo + "/profiles/minimal.toml") + "\n"
        do {
            _ = try DaemonConfig.parse(text: text, file: "/tmp/via-config-test.toml")
            Issue.record("accepted: \(via)")
        } catch {
            #expect(error.description.contains(expected), "\(error.description)")
            #expect(error.description.contains("/tmp/via-config-test.toml"), "\(error.description)")
        }
    }

    @Test("output, error output and exit status come back through --via")
    func outputAndStatus() throws {
        let h = try Harness()
        let r = try h.run(["/bin/sh", "-c", "echo out; echo err >&2; exit 7"])
        #expect(r.status == 7, "\(r)")
        #expect(r.stdout == "out\n")
        #expect(r.stderr == "err\n")
        let t = try h.run(["/bin/true"])
        #expect(t.status == 0, "\(t)")
        // --via after another option with its value is still a run --via.
        let after = try h.run(["/bin/sh", "-c", "exit 3"], leading: ["--profile", "minimal", "--setenv", "A=1"])
        #expect(after.status == 3, "\(after)")
        // Without --via, run builds its jail on the spot as before (its own
        // quick parser reads the same command lines).
        let plain = Process()
        plain.executableURL = URL(fileURLWithPath: ViaTests.client)
        plain.arguments = ["run", "-p", Fixture.repo + "/profiles/minimal.toml", "--setenv", "A=1", "--", "/bin/sh", "-c", "exit 4"]
        try plain.run()
        plain.waitUntilExit()
        #expect(plain.terminationStatus == 4)
        // An option of a jail built on the spot is refused, by name.
        let bind = try h.run(["/bin/true"], args: ["--ro-bind", "/etc"])
        #expect(bind.status == 64 && bind.stderr.contains("--ro-bind"), "\(bind)")
        // A program that is not there: the jail's execve failure, worded as `stockade run` words it.
        let missing = try h.run(["/no/such/program"])
        #expect(missing.status == 125)
        #expect(missing.stderr.contains("execve: ENOENT (/no/such/program)"), "\(missing.stderr)")
    }

    @Test("the caller's stdin is piped in, and argv and --setenv arrive as data")
    func stdinArgvEnv() throws {
        let h = try Harness()
        let r = try h.run(["/bin/cat"], stdin: "hello through a built jail\n")
        #expect(r.status == 0, "\(r)")
        #expect(r.stdout == "hello through a built jail\n")
        // Quotes, newlines, a $ and a leading dash: passed as they are, never through a shell.
        let odd = "a \"b\" $HOME\n-c 'x'"
        let e = try h.run(["/usr/bin/printf", "%s|%s", odd, "$X"], args: ["--setenv", "X=1"])
        #expect(e.stdout == "\(odd)|$X", "\(e)")
        let env = try h.run(["/usr/bin/env"], args: ["--setenv", "VIA_TEST=yes=really"])
        #expect(env.stdout.split(separator: "\n").contains("VIA_TEST=yes=really"), "\(env.stdout)")
        // The caller's own environment does not leak in beyond the profile's `pass` names.
        #expect(!env.stdout.contains("HOME=/root"), "\(env.stdout)")
    }

    @Test("each run gets a fresh jail: another pid namespace, other host ids, nothing the last run wrote")
    func freshJail() throws {
        let h = try Harness()
        let script = "readlink /proc/self/ns/pid; readlink /proc/self/ns/net; cat /proc/self/uid_map; ls /tmp; echo mark > /tmp/left-behind"
        let first = try h.run(["/bin/sh", "-c", script])
        let second = try h.run(["/bin/sh", "-c", script])
        #expect(first.status == 0 && second.status == 0, "\(first) \(second)")
        let a = first.stdout.split(separator: "\n"), b = second.stdout.split(separator: "\n")
        #expect(a.count >= 3 && b.count >= 3, "\(first.stdout) / \(second.stdout)")
        guard a.count >= 3, b.count >= 3 else { return }
        #expect(a[0] != b[0], "the same pid namespace twice: \(a[0])")
        #expect(a[1] != b[1], "the same network namespace twice: \(a[1])")
        if Fixture.isRoot {
            #expect(a[2] != b[2], "the same host ids twice: \(a[2])")
        }
        #expect(!second.stdout.contains("left-behind"), "the second run saw the first's file: \(second.stdout)")
    }

    @Test("a caller refused: a pool its uid may not use, an unknown pool, a directory as stdin")
    func refusals() throws {
        let h = try Harness()
        if getuid() == 0 {
            let r = try h.run(["/bin/true"], args: ["--profile", "others"])
            #expect(r.status == 125)
            // A pool it may not use reads as one that does not exist.
            #expect(r.stderr.contains("uid 0 may use no jail pool \"others\""), "\(r.stderr)")
        }
        if getuid() == 0 {
            // A uid with no pool is refused by its uid alone: the daemon
            // answers and closes before reading the request, so the client
            // may find the socket closed when it sends; the answer still
            // says why.
            let p = Process()
            p.executableURL = URL(fileURLWithPath: "/usr/bin/setpriv")
            p.arguments = ["--reuid=4343", "--regid=4343", "--clear-groups", ViaTests.client, "run", "--via", h.socket, "--", "/bin/true"]
            let err = Pipe()
            p.standardError = err
            p.standardOutput = FileHandle.nullDevice
            p.standardInput = FileHandle.nullDevice
            try p.run()
            let e = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            p.waitUntilExit()
            #expect(p.terminationStatus == 125 && e.contains("uid 4343 may not use any jail pool of this daemon"), "\(e)")
        }
        let unknown = try h.run(["/bin/true"], args: ["--profile", "nonesuch"])
        #expect(unknown.status == 125)
        #expect(unknown.stderr.contains("may use no jail pool \"nonesuch\""), "\(unknown.stderr)")
        #expect(!unknown.stderr.contains("others"), "a pool the caller may not use is named to it: \(unknown.stderr)")
        // A directory reaches outside the jail's root (openat(fd, "..")): never passed in.
        let dirFD = open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        defer { close(dirFD) }
        let dir = try h.run(["/bin/true"], stdinFD: dirFD)
        #expect(dir.status == 125)
        #expect(dir.stderr.contains("stdin is a directory"), "\(dir.stderr)")
        // An O_PATH fd: the jail could reopen it through /proc with rights the caller never had.
        let pathFD = open("/etc/hostname", 0o10000000 /* O_PATH */ | O_CLOEXEC)
        defer { close(pathFD) }
        let opath = try h.run(["/bin/true"], stdinFD: pathFD)
        #expect(opath.status == 125)
        #expect(opath.stderr.contains("O_PATH"), "\(opath.stderr)")
        // A malformed request on the socket itself: refused with a message, no jail used.
        let conn = try ViaJail.connect(path: h.socket)
        defer { try? conn.close() }
        let junk: [UInt8] = Array("not a request".utf8)
        _ = try junk.withUnsafeBytes { try conn.sendMessage($0) }
        var buffer = [UInt8](repeating: 0, count: 4096)
        let got = try buffer.withUnsafeMutableBytes { try conn.receiveMessage(into: $0, maxDescriptors: 0) }
        let answer = ViaWire.decode(buffer[..<got.byteCount], magic: ViaWire.answerMagic, lists: 1)
        #expect(answer?.first?.first == "error", "\(String(describing: answer))")
    }

    @Test("no fd of the daemon's is in the jail: the program has the caller's 0, 1, 2 only")
    func onlyCallerFDs() throws {
        let h = try Harness()
        // ls's own directory fd (3, on /proc/<pid>/fd) is the only other one.
        let r = try h.run(["/bin/ls", "-l", "/proc/self/fd/"])
        #expect(r.status == 0, "\(r)")
        var fds: [String: String] = [:]
        for line in r.stdout.split(separator: "\n") {
            guard let arrow = line.range(of: " -> ") else { continue }
            let name = line[..<arrow.lowerBound].split(separator: " ").last.map(String.init) ?? ""
            fds[name] = String(line[arrow.upperBound...])
        }
        #expect(Set(fds.keys) == ["0", "1", "2", "3"], "\(r.stdout)")
        #expect(fds["3"]?.hasPrefix("/proc/") == true, "\(r.stdout)")
        for n in ["0", "1", "2"] { #expect(fds[n]?.hasPrefix("pipe:") == true, "fd \(n): \(fds[n] ?? "none")") }
    }

    @Test("while it waits, a jail holds none of the daemon's fds but its socket, however high their numbers (both filter paths)",
          arguments: ["", "\n[seccomp]\ndeny = [\"dup3\"]\n"])
    func waitingHoldsOnlyItsSocket(_ profileTail: String) throws {
        // A close-on-exec fd of the daemon's (here: this test process's)
        // above 1024, open while the jails are built.
        let null = open("/dev/null", O_RDONLY | O_CLOEXEC)
        defer { close(null) }
        let high = fcntl(null, F_DUPFD_CLOEXEC, 1500)
        try #require(high >= 1500, "cannot open an fd above 1500 (RLIMIT_NOFILE): errno \(errno)")
        defer { close(high) }
        let h = try Harness(profileTail: profileTail)
        let pids = h.daemon.jailPools?.readyPIDs("minimal") ?? []
        #expect(!pids.isEmpty, "no waiting jail")
        for pid in pids {
            let child = try String(contentsOfFile: "/proc/\(pid)/task/\(pid)/children", encoding: .utf8)
                .split(separator: " ").first.map(String.init) ?? "0"
            let fds = try FileManager.default.contentsOfDirectory(atPath: "/proc/\(child)/fd").compactMap { Int($0) }.sorted()
            let links = fds.map { (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(child)/fd/\($0)")) ?? "?" }
            #expect(fds.count == 4 && fds.prefix(3) == [0, 1, 2], "the waiting worker's fds: \(fds) \(links)")
            #expect(links.last?.hasPrefix("socket:") == true, "\(fds) \(links)")
        }
        // The late path still serves its command.
        let r = try h.run(["/bin/echo", "served"])
        #expect(r.status == 0 && r.stdout == "served\n", "\(r)")
    }

    @Test("the escape-probe battery's launcher probes pass inside a jail built ahead")
    func probeBattery() throws {
        guard let probe = Self.probe else {
            Issue.record("the probe binary could not be built (make probe): the battery cannot run")
            return
        }
        _ = probe
        let h = try Harness()
        let r = try h.run([ProbeBattery.jailPath, "--json"])
        let report = try JSONDecoder().decode(ProbeReport.self, from: Data(r.stdout.utf8))
        #expect(report.probes.count >= 41, "the battery ran \(report.probes.count) probes")
        let bad = report.failures.filter { ProbeBattery.launcherProbes.contains($0.number) }
        #expect(bad.isEmpty, "\(bad.map { "\($0.number) \($0.name): \($0.result)" }.joined(separator: "\n"))")
        // The seccomp probes too: every probe passes but the budget one (31),
        // which needs a cgroup with pids and memory limits (root here).
        let others = report.failures.filter { $0.number != 31 || Fixture.isRoot }
        #expect(others.isEmpty, "\(others.map { "\($0.number) \($0.name): \($0.result)" }.joined(separator: "\n"))")
        // The seccomp layer is in force before the caller's program runs:
        // the kernel shows the worker under a filter, no_new_privs set.
        let status = try h.run(["/bin/sh", "-c", "grep -E '^(Seccomp|NoNewPrivs|CapEff):' /proc/self/status"])
        #expect(status.stdout.contains("Seccomp:\t2"), "\(status.stdout)")
        #expect(status.stdout.contains("NoNewPrivs:\t1"), "\(status.stdout)")
        #expect(status.stdout.contains("CapEff:\t0000000000000000"), "\(status.stdout)")
    }

    /// The `Seccomp:` and `Seccomp_filters:` lines of each waiting jail's
    /// worker (PID 1's child), read from the host's /proc.
    static func waitingWorkers(_ h: Harness, pool: String = "minimal") throws -> [String] {
        let pids = h.daemon.jailPools?.readyPIDs(pool) ?? []
        #expect(!pids.isEmpty, "no waiting jail in pool \(pool)")
        return try pids.map { pid in
            let children = try String(contentsOfFile: "/proc/\(pid)/task/\(pid)/children", encoding: .utf8)
                .split(separator: " ").map(String.init)
            #expect(children.count == 1, "PID 1 (\(pid)) has children \(children)")
            let child = children.first ?? "0"
            let status = try String(contentsOfFile: "/proc/\(child)/status", encoding: .utf8)
            let cmdline = try String(contentsOfFile: "/proc/\(child)/cmdline", encoding: .utf8)
                .split(separator: "\0", omittingEmptySubsequences: false).prefix(2).joined(separator: " ")
            return status.split(separator: "\n").filter { $0.hasPrefix("Seccomp") || $0.hasPrefix("VmSize") }
                .joined(separator: " ") + " cmdline: " + cmdline
        }
    }

    @Test("a waiting jail is under its filter before its command comes when the filter allows the wait; the command runs under that one filter")
    func filterBeforeTheWait() throws {
        let h = try Harness()
        for line in try Self.waitingWorkers(h) {
            #expect(line.contains("Seccomp:\t2") && line.contains("Seccomp_filters:\t1"), "\(line)")
            // It waits in stockade-init's waiting program, not in a copy of
            // the daemon's (here: this test process's) memory.
            #expect(line.hasSuffix("cmdline: stockade-init via"), "\(line)")
            let afterSize = line.split(separator: "VmSize:").last?.drop(while: { $0 == " " || $0 == "\t" }) ?? ""
            let size = Int(afterSize.prefix(while: \.isNumber)) ?? Int.max
            #expect(size < 16 * 1024, "the waiting process maps \(size) kB: \(line)")
        }
        let r = try h.run(["/bin/sh", "-c", "grep -E '^Seccomp' /proc/self/status; echo fd >&2"])
        #expect(r.status == 0, "\(r)")
        #expect(r.stdout.contains("Seccomp:\t2") && r.stdout.contains("Seccomp_filters:\t1"), "\(r.stdout)")
        #expect(r.stderr == "fd\n", "\(r.stderr)")
    }

    @Test("a filter that denies a call of the wait (dup3) is loaded after the command came, and the command still runs under it")
    func filterAfterTheWait() throws {
        let h = try Harness(profileTail: "\n[seccomp]\ndeny = [\"dup3\"]\n")
        // Loaded before the wait, this filter would refuse the worker the
        // dup3 that puts the caller's fds on 0, 1 and 2: no command could run.
        for line in try Self.waitingWorkers(h) {
            #expect(line.contains("Seccomp:\t0"), "\(line)")
            #expect(!line.contains("cmdline: stockade-init"), "\(line)")
        }
        let r = try h.run(["/bin/sh", "-c", "grep -E '^Seccomp' /proc/self/status; echo fd >&2"])
        #expect(r.status == 0, "\(r)")
        #expect(r.stdout.contains("Seccomp:\t2") && r.stdout.contains("Seccomp_filters:\t1"), "\(r.stdout)")
        #expect(r.stderr == "fd\n", "\(r.stderr)")
        // The profile's filter holds in the command: dup3 is refused there.
        let denied = try h.run(["/usr/bin/python3", "-c", "import os\ntry:\n os.dup2(1, 5, inheritable=False)\n print('allowed')\nexcept OSError as e:\n print('denied', e.errno)"])
        #expect(denied.stdout.hasPrefix("denied"), "\(denied)")
    }

    @Test("callers that connect and send nothing keep no other caller waiting")
    func silentCallers() throws {
        let h = try Harness()
        // More silent connections than threads wait in accept when the
        // daemon is idle: each holds its thread for the 10 s receive timeout.
        var silent: [FileDescriptor] = []
        defer { for fd in silent { try? fd.close() } }
        for _ in 0..<4 { silent.append(try ViaJail.connect(path: h.socket)) }
        let started = ContinuousClock.now
        let r = try h.run(["/bin/echo", "served"])
        let took = ContinuousClock.now - started
        #expect(r.status == 0 && r.stdout == "served\n", "\(r)")
        #expect(took < .seconds(8), "a caller behind four silent ones waited \(took)")
    }

    @Test("a signal to the client reaches the command; a client that dies takes its jail with it")
    func signals() throws {
        let h = try Harness()
        let (p, out) = try h.start(["/bin/sh", "-c", "trap 'echo got-term; exit 9' TERM; echo ready; while :; do sleep 0.05; done"])
        // Wait for "ready": the trap is set.
        var seen = Data()
        while !String(decoding: seen, as: UTF8.self).contains("ready") {
            let chunk = out.fileHandleForReading.availableData
            if chunk.isEmpty { break }
            seen.append(chunk)
        }
        kill(p.processIdentifier, SIGTERM)
        seen.append(out.fileHandleForReading.readDataToEndOfFile())
        p.waitUntilExit()
        #expect(p.terminationStatus == 9, "\(String(decoding: seen, as: UTF8.self))")
        #expect(String(decoding: seen, as: UTF8.self).contains("got-term"))

        // A client killed outright (no signal to forward): its hang-up ends the jail.
        let (q, qout) = try h.start(["/bin/sh", "-c", "trap '' TERM HUP INT; echo ready; while :; do sleep 0.05; done"])
        _ = qout.fileHandleForReading.availableData
        // The daemon counts the jail once its supervision starts, a moment after the command does.
        let started = Date() + 10
        while (h.daemon.jailPools?.activeCount ?? 0) == 0, Date() < started { usleep(1_000) }
        #expect(h.daemon.jailPools?.activeCount == 1)
        kill(q.processIdentifier, SIGKILL)
        q.waitUntilExit()
        let deadline = Date() + 10
        while (h.daemon.jailPools?.activeCount ?? 0) > 0, Date() < deadline { usleep(10_000) }
        #expect(h.daemon.jailPools?.activeCount == 0, "the jail outlived its caller")
    }

    @Test("a pool runs at most max_running commands at once; the next caller is refused, and served again after")
    func maxRunning() throws {
        let h = try Harness()
        let long = ["/bin/sh", "-c", "echo ready; exec sleep 30"]
        let (a, aout) = try h.start(long)
        let (b, bout) = try h.start(long)
        defer {
            for p in [a, b] where p.isRunning { kill(p.processIdentifier, SIGKILL) }
        }
        _ = aout.fileHandleForReading.availableData
        _ = bout.fileHandleForReading.availableData
        let third = try h.run(["/bin/true"])
        #expect(third.status == 125)
        #expect(third.stderr.contains("max_running"), "\(third.stderr)")
        kill(a.processIdentifier, SIGKILL)
        a.waitUntilExit()
        let deadline = Date() + 10
        while (h.daemon.jailPools?.activeCount ?? 0) > 1, Date() < deadline { usleep(10_000) }
        // The freed place is given back once the first jail is torn down.
        var fourth = try h.run(["/bin/true"])
        for _ in 0..<20 where fourth.status != 0 {
            usleep(50_000)
            fourth = try h.run(["/bin/true"])
        }
        #expect(fourth.status == 0, "\(fourth)")
    }
}
