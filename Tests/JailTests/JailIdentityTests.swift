import Foundation
import StockadeJail
import StockadeSystem
import SystemPackage
import Synchronization
import Testing

/// The CLI built beside the tests; STOCKADE_CLI names another build of it
/// (e.g. the static release image, .build/release/stockade).
let stockadeCLI = ProcessInfo.processInfo.environment["STOCKADE_CLI"] ?? packageRoot + "/.build/debug/stockade"

/// A jail started with its stdout on a pipe the test reads while it runs.
struct RunningJail {
    var jail: Jail
    var stdout: FileDescriptor

    /// Reads one line the jail printed (blocking).
    func line() throws -> String {
        var bytes: [UInt8] = []
        var byte: UInt8 = 0
        while true {
            let n = try withUnsafeMutableBytes(of: &byte) { try stdout.read(into: $0) }
            if n == 0 || byte == UInt8(ascii: "\n") { break }
            bytes.append(byte)
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    func end() {
        jail.kill()
        _ = try? jail.wait()
        try? stdout.close()
    }
}

func startJailed(_ profile: Profile, _ command: [String], configure: (inout LaunchRequest) throws -> Void = { _ in }) throws -> RunningJail {
    let out = try PipeEnds.make()
    var request = LaunchRequest(profile: profile, command: command)
    request.passedFDs = [(out.write.rawValue, 1), (out.write.rawValue, 2)]
    try configure(&request)
    try JailSecurity.prepare(&request)
    defer { try? out.write.close() }
    do {
        return RunningJail(jail: try Launcher.launch(request), stdout: out.read)
    } catch {
        try? out.read.close()
        throw error
    }
}

/// The host range a jail's uid_map maps inside 0 to (read from the host).
func mappedRange(pid: Int32) throws -> (first: UInt64, count: UInt64) {
    let text = try String(contentsOfFile: "/proc/\(pid)/uid_map", encoding: .utf8)
    let fields = text.split(whereSeparator: { $0 == " " || $0 == "\n" }).compactMap { UInt64($0) }
    try #require(fields.count == 3, "uid_map: \(text)")
    return (fields[1], fields[2])
}

/// Every id range the host's account files name, parsed here (not by the
/// allocator under test).
func hostAccountRanges() -> [(file: String, first: UInt64, last: UInt64)] {
    var result: [(String, UInt64, UInt64)] = []
    for file in ["/etc/passwd", "/etc/group"] {
        for line in (try? String(contentsOfFile: file, encoding: .utf8))?.split(separator: "\n") ?? [] {
            let f = line.split(separator: ":", omittingEmptySubsequences: false)
            if f.count > 2, let id = UInt64(f[2]) { result.append((file, id, id)) }
        }
    }
    for file in ["/etc/subuid", "/etc/subgid"] {
        for line in (try? String(contentsOfFile: file, encoding: .utf8))?.split(separator: "\n") ?? [] {
            let f = line.split(separator: ":")
            if f.count == 3, let a = UInt64(f[1]), let n = UInt64(f[2]), n > 0 { result.append((file, a, a + n - 1)) }
        }
    }
    return result
}

/// A command started with posix_spawn, its stdout and stderr in a file.
/// Not Foundation's Process: its exit monitoring needs a loopback socket,
/// which the VM suite's kernel does not bring up, and then never returns.
struct Spawned {
    var pid: pid_t
    var outputPath: String

    var output: String { (try? String(contentsOfFile: outputPath, encoding: .utf8)) ?? "" }

    /// Waits for it to end: its output and shell-style status.
    func wait() -> (output: String, status: Int32) {
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        defer { unlink(outputPath) }
        let code = status & 0x7f == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
        return (output, code)
    }

    /// Polls its output until it contains `text` (up to `seconds`).
    func waitForOutput(_ text: String, seconds: Int = 30) -> Bool {
        for _ in 0..<(seconds * 20) {
            if output.contains(text) { return true }
            usleep(50_000)
        }
        return false
    }
}

func spawnCommand(_ argv: [String], environment: [String: String]? = nil) throws -> Spawned {
    let path = "/tmp/stockade-test-out-\(getpid())-\(UInt64.random(in: 0...UInt64.max))"
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
    posix_spawn_file_actions_addopen(&actions, 1, path, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
    posix_spawn_file_actions_adddup2(&actions, 1, 2)
    let env = (environment ?? ProcessInfo.processInfo.environment).map { "\($0.key)=\($0.value)" }
    let cArgs = argv.map { strdup($0) } + [nil]
    let cEnv = env.map { strdup($0) } + [nil]
    defer { for p in cArgs + cEnv { free(p) } }
    var pid: pid_t = 0
    let rc = posix_spawn(&pid, argv[0], &actions, nil, cArgs, cEnv)
    guard rc == 0 else { throw Errno(rawValue: rc) }
    return Spawned(pid: pid, outputPath: path)
}

func runCommand(_ argv: [String], environment: [String: String]? = nil) throws -> (output: String, status: Int32) {
    try spawnCommand(argv, environment: environment).wait()
}

/// A private lock directory (root-owned, 0700) for pools the tests make up.
func privateLockDirectory() throws -> String {
    let dir = "/tmp/stockade-ids-test-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
    try #require(mkdir(dir, 0o700) == 0)
    return dir
}

@Suite("Each root-launched jail has host ids of its own", .serialized,
       .enabled(if: getuid() == 0, "root launches only: a rootless jail maps the caller's one uid"))
struct HostIDTests {
    @Test("the host's account and subordinate-id files are read line by line: comments, blank lines and malformed ids skipped, every well-formed id kept")
    func hostEntriesParsed() throws {
        let etc = try privateLockDirectory()
        defer { try? FileManager.default.removeItem(atPath: etc) }
        try FileManager.default.createDirectory(atPath: etc + "/etc", withIntermediateDirectories: true)
        try "# comment:x:1:1\n\nroot:x:0:0::/root:/bin/sh\nplus:x:+42:1::/:/bin/sh\nbad:x:4x2:1::/:/bin/sh\nhuge:x:18446744073709551616:1\nmax:x:18446744073709551615:1\nshort:x\nlast:x:7"
            .write(toFile: etc + "/etc/passwd", atomically: true, encoding: .utf8)
        try "g:x:5:\n".write(toFile: etc + "/etc/group", atomically: true, encoding: .utf8)
        try "m:100000:65536\nzero:5:0\nneg:-1:5\nn:200000:10\n".write(toFile: etc + "/etc/subuid", atomically: true, encoding: .utf8)
        let entries = try HostIDAllocator.hostEntries(root: etc)
        let got = entries.map { "\($0.file) \($0.name) \($0.first) \($0.count)" }
        #expect(got == ["/etc/passwd root 0 1", "/etc/passwd plus 42 1", "/etc/passwd max 18446744073709551615 1",
                        "/etc/passwd last 7 1", "/etc/group g 5 1",
                        "/etc/subuid m 100000 65536", "/etc/subuid n 200000 10"])
    }

    @Test("numbers are written in decimal as string interpolation writes them, after what the buffer holds")
    func decimalsWritten() {
        let unsigned: [UInt64] = [0, 1, 9, 10, 11, 99, 100, 101, 65535, 65536, 1_000_000, UInt64(UInt32.max), UInt64.max - 1, .max]
        for n in unsigned {
            var out = Array("x=".utf8)
            ASCIIDecimal.append(n, to: &out)
            #expect(String(decoding: out, as: UTF8.self) == "x=\(n)")
        }
        for n: Int64 in [0, -1, -9, -10, 42, .min, .max, .min + 1] {
            var out: [UInt8] = []
            ASCIIDecimal.append(n, to: &out)
            #expect(String(decoding: out, as: UTF8.self) == "\(n)")
        }
    }

    @Test("a pool block overlapping a /etc/subuid or /etc/subgid entry is never given out; a full pool refuses by name, and a range is reused only after its release")
    func poolSkipsSubordinateRanges() throws {
        // A made-up /etc (the host's own must not be edited for a test):
        // mallory's subordinate uids cover the pool's first block, her
        // subgids touch the second by one id.
        let etc = try privateLockDirectory()
        defer { try? FileManager.default.removeItem(atPath: etc) }
        let first: UInt32 = 0x6F00_0000
        try FileManager.default.createDirectory(atPath: etc + "/etc", withIntermediateDirectories: true)
        try "mallory:\(first + 100):65536\n".write(toFile: etc + "/etc/subuid", atomically: true, encoding: .utf8)
        try "mallory:\(first + 2 * 65536 - 1):1\n".write(toFile: etc + "/etc/subgid", atomically: true, encoding: .utf8)
        try "root:x:0:0::/root:/bin/sh\nmallory:x:\(first + 3 * 65536 + 7):100::/home/m:/bin/sh\n"
            .write(toFile: etc + "/etc/passwd", atomically: true, encoding: .utf8)
        let locks = try privateLockDirectory()
        defer { try? FileManager.default.removeItem(atPath: locks) }
        let pool = try #require(HostIDPool(first: first, ranges: 5, lockDirectory: locks))
        // Blocks 0 (subuid), 1 (subgid's last id), 3 (a passwd uid) overlap: only 2 and 4 are clear.
        let a = try HostIDAllocator.acquire(from: pool, etcRoot: etc)
        let b = try HostIDAllocator.acquire(from: pool, etcRoot: etc)
        #expect(Set([a.range.first, b.range.first]) == Set([first + 2 * 65536, first + 4 * 65536]))
        #expect(throws: JailError.self) { try HostIDAllocator.acquire(from: pool, etcRoot: etc) }
        do {
            _ = try HostIDAllocator.acquire(from: pool, etcRoot: etc)
        } catch {
            #expect("\(error)".contains("no free host id range in the pool"), "\(error)")
        }
        let freed = a.range
        a.release()
        // flock belongs to the open file: a jail child that another suite
        // cloned in this process while the lock was open holds a copy of
        // it until that child closes its inherited fds (seen in the TCG VM,
        // where that takes long). The range then stays held a moment longer,
        // the safe way; it must come back soon after.
        let reuseBy = Date().addingTimeInterval(10)
        var reused: HostIDLease?
        while reused == nil {
            do {
                reused = try HostIDAllocator.acquire(from: pool, etcRoot: etc)
            } catch {
                if Date() > reuseBy { throw error }
                usleep(20_000)
            }
        }
        let c = try #require(reused)
        #expect(c.range == freed)
        b.release()
        c.release()
    }

    @Test("a lock directory someone else could write is refused")
    func lockDirectoryMustBeRootOnly() throws {
        let dir = try privateLockDirectory()
        defer { rmdir(dir) }
        chmod(dir, 0o777)
        let pool = try #require(HostIDPool(first: 0x6F00_0000, ranges: 1, lockDirectory: dir))
        do {
            _ = try HostIDAllocator.acquire(from: pool)
            Issue.record("a world-writable lock directory was used")
        } catch {
            #expect("\(error)".contains("must be owned by root and writable by no one else"), "\(error)")
        }
    }

    @Test("a jail's host ids are clear of every account and subordinate range on this host, and not the old shared 100000")
    func jailRangeIsClear() throws {
        let running = try startJailed(try minimalProfile(), ["/bin/sleep", "5"])
        defer { running.end() }
        let (first, count) = try mappedRange(pid: running.jail.pid)
        #expect(count == 65536)
        #expect(first != 100_000)
        #expect(running.jail.hostIDs.map { UInt64($0.first) } == first)
        for entry in hostAccountRanges() {
            #expect(!(entry.first <= first + count - 1 && first <= entry.last), "jail ids \(first)+\(count) overlap \(entry)")
        }
        let gids = try String(contentsOfFile: "/proc/\(running.jail.pid)/gid_map", encoding: .utf8)
        #expect(gids.split(whereSeparator: { $0 == " " || $0 == "\n" }) == ["0", "\(first)", "65536"])
    }

    @Test("concurrent jails, in one launcher and across launcher processes, never share a host id")
    func concurrentJailsNeverShare() throws {
        // In one process: four jails started from four threads at once
        // (threads of their own: a dispatch pool may be only as wide as the
        // CPUs, and other suites' tests block in it).
        let results = Mutex<[Result<RunningJail, any Error>]>([])
        let done = DispatchSemaphore(value: 0)
        for _ in 0..<4 {
            Thread.detachNewThread {
                let r = Result { try startJailed(try minimalProfile(), ["/bin/sleep", "10"]) }
                results.withLock { $0.append(r) }
                done.signal()
            }
        }
        for _ in 0..<4 { done.wait() }
        let jails = try results.withLock { try $0.map { try $0.get() } }
        defer { for j in jails { j.end() } }
        var ranges = try jails.map { try mappedRange(pid: $0.jail.pid) }
        // Across processes: three CLI launchers at once, each jail printing its own map.
        try #require(FileManager.default.isExecutableFile(atPath: stockadeCLI), "build the CLI first")
        let processes = try (0..<3).map { _ in
            try spawnCommand([stockadeCLI, "run", "-p", packageRoot + "/profiles/minimal.toml", "--", "/bin/sh", "-c",
                              "cat /proc/self/uid_map; sleep 1"])
        }
        for p in processes {
            let (out, status) = p.wait()
            #expect(status == 0, "\(out)")
            let line = out.split(separator: "\n").first { !$0.hasPrefix("stockade:") } ?? ""
            let f = line.split(separator: " ").compactMap { UInt64($0) }
            try #require(f.count == 3, "\(out)")
            // Inside, the jail's uid 1000 is its own 0..65535 map seen from its namespace: 0 FIRST 65536.
            ranges.append((f[1], f[2]))
        }
        for i in ranges.indices {
            for j in ranges.indices where j > i {
                let a = ranges[i], b = ranges[j]
                #expect(a.first + a.count <= b.first || b.first + b.count <= a.first, "jails \(i) and \(j) share host ids: \(a) \(b)")
            }
        }
    }

    @Test("host_base is checked like a pool range: not over a host account (host_base = 1 with gid 41), not over a live jail")
    func fixedBaseIsChecked() throws {
        let low = try minimalProfile { $0.replacingOccurrences(of: "[user]\nuid = 1000\ngid = 1000", with: "[user]\nuid = 1000\ngid = 41\nhost_base = 1") }
        do {
            _ = try runJailed(low, ["/bin/true"])
            Issue.record("host_base = 1 was accepted")
        } catch {
            let text = "\(error)"
            #expect(text.contains("minimal.toml:"), "\(text)")
            #expect(text.contains("host_base = 1"), "\(text)")
            #expect(text.contains("overlap /etc/passwd entry daemon (id 1)"), "\(text)")
        }
        // A free base works and is what the jail maps.
        let base: UInt32 = 0x6F70_0000
        let fixed = try minimalProfile { $0.replacingOccurrences(of: "[user]\n", with: "[user]\nhost_base = \(base)\n") }
        let running = try startJailed(fixed, ["/bin/sleep", "10"])
        defer { running.end() }
        #expect(try mappedRange(pid: running.jail.pid).first == UInt64(base))
        // A second jail may not take ids the first holds, by the same base or one that overlaps it.
        for other in [base, base + 30000] {
            let clash = try minimalProfile { $0.replacingOccurrences(of: "[user]\n", with: "[user]\nhost_base = \(other)\n") }
            do {
                _ = try runJailed(clash, ["/bin/true"])
                Issue.record("host_base = \(other) shared ids with a live jail")
            } catch {
                #expect("\(error)".contains("in use by a live jail"), "\(error)")
            }
        }
    }

    @Test("a range is held while its jail lives, refused to the next launcher, and free again after the holder is killed with SIGKILL")
    func heldUntilTheLauncherDies() throws {
        try #require(FileManager.default.isExecutableFile(atPath: stockadeCLI), "build the CLI first")
        // A pool of one range no other launcher on this host uses.
        let pool = "\(0x6FE0_0000):1"
        var env = ProcessInfo.processInfo.environment
        env["STOCKADE_ID_POOL"] = pool
        let holder = try spawnCommand([stockadeCLI, "run", "-p", packageRoot + "/profiles/minimal.toml", "--", "/bin/sh", "-c",
                                       "echo up; sleep 60"], environment: env)
        var ended = false
        defer { if !ended { kill(holder.pid, SIGKILL); _ = holder.wait() } }
        #expect(holder.waitForOutput("up"), "\(holder.output)")
        let refused = try runCommand([stockadeCLI, "run", "-p", packageRoot + "/profiles/minimal.toml", "--", "/bin/true"], environment: env)
        #expect(refused.status == 125, "\(refused.output)")
        #expect(refused.output.contains("no free host id range in the pool \(0x6FE0_0000)-"), "\(refused.output)")
        kill(holder.pid, SIGKILL)
        _ = holder.wait()
        ended = true
        // The kernel dropped the dead launcher's lock; its jail died with it.
        var after = (output: "", status: Int32(-1))
        for _ in 0..<50 {
            after = try runCommand([stockadeCLI, "run", "-p", packageRoot + "/profiles/minimal.toml", "--", "/bin/cat", "/proc/self/uid_map"], environment: env)
            if after.status == 0 { break }
            usleep(100_000)
        }
        #expect(after.status == 0, "\(after.output)")
        #expect(after.output.contains("\(0x6FE0_0000)"), "\(after.output)")
    }
}

@Suite("A jail's kernel counts are charged to its own host uid", .serialized,
       .enabled(if: getuid() == 0, "root launches only: rootless, the caller's uid owns the jail's user namespace"))
struct KernelCountTests {
    @Test("the jail's user namespace belongs to the first id of its range, not to root")
    func namespaceOwner() throws {
        let running = try startJailed(try minimalProfile(), ["/bin/sleep", "10"])
        defer { running.end() }
        let fd = open("/proc/\(running.jail.pid)/ns/user", O_RDONLY | O_CLOEXEC)
        try #require(fd >= 0)
        defer { close(fd) }
        var owner: uid_t = 0
        // NS_GET_OWNER_UID = _IO(0xb7, 0x4)
        #expect(ioctl(fd, 0xb704, &owner) == 0)
        #expect(UInt64(owner) == (try mappedRange(pid: running.jail.pid)).first)
        #expect(owner != 0)
    }

    @Test("a jail that opens inotify instances until the kernel refuses leaves host root's inotify_init1 working")
    func inotifyExhaustion() throws {
        let script = """
        import ctypes, sys, time
        libc = ctypes.CDLL(None, use_errno=True)
        n = 0
        while libc.inotify_init1(0) >= 0:
            n += 1
            if n > 100000: break
        print(n, ctypes.get_errno(), flush=True)
        time.sleep(20)
        """
        let running = try startJailed(try minimalProfile(), ["/usr/bin/python3", "-c", script])
        defer { running.end() }
        let line = try running.line()
        let fields = line.split(separator: " ")
        try #require(fields.count == 2, "jail said: \(line)")
        // The jail hit the per-user limit (EMFILE), not the fd limit.
        #expect(fields[1] == "\(EMFILE)", "jail said: \(line)")
        // Host root is not the one charged: it still gets instances.
        let fd = inotify_init1(Int32(IN_CLOEXEC))
        #expect(fd >= 0, "host root's inotify_init1 failed with errno \(errno) while the jail holds \(fields[0]) instances")
        if fd >= 0 { close(fd) }
    }
}

@Suite("Every jail starts in a fresh session keyring", .serialized)
struct KeyringTests {
    @Test("with keyctl allowed, the jail can neither find nor read a key in the launcher's session keyring")
    func launcherKeyIsInvisible() throws {
        try #require(FileManager.default.isExecutableFile(atPath: stockadeCLI), "build the CLI first")
        let secret = "stockade-key-\(UInt64.random(in: 0...UInt64.max))"
        // The jail tries: search its session keyring for the key by name,
        // read it by id, and describe its session keyring.
        let jailScript = """
        import ctypes, sys
        libc = ctypes.CDLL(None, use_errno=True)
        SYS_keyctl = 250
        key = int(sys.argv[1])
        found = libc.syscall(SYS_keyctl, 10, ctypes.c_long(-3), b"user", b"stockade-test-key", 0)
        print("search", found, ctypes.get_errno())
        buf = ctypes.create_string_buffer(256)
        n = libc.syscall(SYS_keyctl, 11, key, buf, 256)
        print("read", n, ctypes.get_errno(), buf.raw[:max(n, 0)].decode(errors="replace"))
        n = libc.syscall(SYS_keyctl, 6, ctypes.c_long(-3), buf, 256)
        print("session", buf.raw[:max(n - 1, 0)].decode(errors="replace"))
        """
        // The launcher: a new session keyring holding the key, then exec stockade.
        let launcherScript = """
        import ctypes, os, sys
        libc = ctypes.CDLL(None, use_errno=True)
        assert libc.syscall(250, 1, b"stockade-launcher-session") >= 0
        secret = sys.argv[1].encode()
        key = libc.syscall(248, b"user", b"stockade-test-key", secret, len(secret), ctypes.c_long(-3))
        assert key > 0, ctypes.get_errno()
        os.execv(sys.argv[2], [sys.argv[2], "run", "-p", sys.argv[3], "--", "/usr/bin/python3", "-c", sys.argv[4], str(key)])
        """
        let result = try runCommand(["/usr/bin/python3", "-c", launcherScript, secret, stockadeCLI,
                               packageRoot + "/Tests/JailTests/Fixtures/keyctl-allowed.toml", jailScript])
        #expect(result.status == 0, "\(result.output)")
        #expect(!result.output.contains(secret), "the jail read the launcher's key: \(result.output)")
        let lines = result.output.split(separator: "\n").filter { !$0.hasPrefix("stockade:") }
        #expect(lines.first { $0.hasPrefix("search ") } == "search -1 \(ENOKEY)", "\(result.output)")
        #expect(lines.first { $0.hasPrefix("read ") }?.hasPrefix("read -1 ") == true, "\(result.output)")
        // keyctl itself works: the session keyring is an anonymous one of the jail's own.
        let session = lines.first { $0.hasPrefix("session ") } ?? ""
        #expect(session.hasSuffix(";_ses"), "\(result.output)")
        #expect(!session.contains("stockade-launcher-session"), "\(result.output)")
    }
}

@Suite("PID 1 of a jail is stockade-init, with nothing of the launcher", .serialized)
struct InitTests {
    static let probe = "tr '\\0' ' ' < /proc/1/cmdline; echo; cat /proc/1/comm; "
        + "cat /proc/1/environ >/dev/null 2>&1 && echo environ-readable; "
        + "head -c 1 /proc/1/mem >/dev/null 2>&1 && echo mem-readable; "
        + "cat /proc/1/maps >/dev/null 2>&1 && echo maps-readable; "
        + "readlink /proc/1/exe >/dev/null 2>&1 && echo exe-readable; echo done"

    func check(_ output: String, secret: String) {
        let lines = output.split(separator: "\n").filter { !$0.hasPrefix("stockade: note:") }.map(String.init)
        #expect(lines == ["stockade-init 2 ", "stockade-init", "done"], "\(output)")
        #expect(!output.contains(secret), "\(output)")
    }

    @Test("as root: /proc/1/cmdline is stockade-init's own, and its environ, memory, maps and exe are closed to the worker",
          .enabled(if: getuid() == 0, "the root half; the rootless half runs as any user"))
    func pid1AsRoot() throws {
        try #require(FileManager.default.isExecutableFile(atPath: stockadeCLI), "build the CLI first")
        let secret = "launcher-secret-\(UInt64.random(in: 0...UInt64.max))"
        let result = try runCommand([stockadeCLI, "run", "-p", packageRoot + "/profiles/minimal.toml", "--setenv", "TOKEN=\(secret)",
                               "--", "/bin/sh", "-c", Self.probe])
        #expect(result.status == 0, "\(result.output)")
        check(result.output, secret: secret)
    }

    @Test("rootless: the same", .enabled(if: getuid() == 0, "needs root to switch to an unprivileged user"))
    func pid1Rootless() throws {
        try #require(FileManager.default.isExecutableFile(atPath: stockadeCLI), "build the CLI first")
        let secret = "launcher-secret-\(UInt64.random(in: 0...UInt64.max))"
        let result = try runCommand(["/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", stockadeCLI, "run",
                               "-p", packageRoot + "/profiles/minimal.toml", "--setenv", "TOKEN=\(secret)",
                               "--", "/bin/sh", "-c", Self.probe])
        #expect(result.status == 0, "\(result.output)")
        check(result.output, secret: secret)
    }

    @Test("read from the host, PID 1's memory holds no launcher secret and maps no launcher library",
          .enabled(if: getuid() == 0, "reading another process's memory needs root"))
    func pid1MemoryFromHost() throws {
        try #require(FileManager.default.isExecutableFile(atPath: stockadeCLI), "build the CLI first")
        let secret = "launcher-secret-\(UInt64.random(in: 0...UInt64.max))"
        let cli = try spawnCommand([stockadeCLI, "run", "-p", packageRoot + "/profiles/minimal.toml", "--setenv", "TOKEN=\(secret)",
                                    "--", "/bin/sh", "-c", "echo up; sleep 30"])
        defer { kill(cli.pid, SIGKILL); _ = cli.wait() }
        #expect(cli.waitForOutput("up"), "\(cli.output)")
        // The CLI's children: the jail's PID 1.
        let children = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(cli.pid)/task")) ?? []
        let pids = children.flatMap { tid in
            ((try? String(contentsOfFile: "/proc/\(cli.pid)/task/\(tid)/children", encoding: .utf8)) ?? "")
                .split(separator: " ").compactMap { Int32($0) }
        }
        let pid1 = try #require(pids.first, "no jail under the CLI")
        // The launcher process holds the secret (its argv): the scan can find it.
        #expect(try memoryContains(pid: cli.pid, Array(secret.utf8)), "scan found the secret nowhere, not even in the launcher")
        let maps = try String(contentsOfFile: "/proc/\(pid1)/maps", encoding: .utf8)
        #expect(!maps.contains(".so"), "PID 1 maps libraries: \(maps)")
        #expect(maps.contains("stockade-init"), "\(maps)")
        #expect(!(try memoryContains(pid: pid1, Array(secret.utf8))), "the secret is in PID 1's memory")
        let status = try String(contentsOfFile: "/proc/\(pid1)/status", encoding: .utf8)
        #expect(status.contains("Name:\tstockade-init"), "\(status)")
    }
}

extension InitTests {
    /// stockade-init beside the CLI the tests run.
    static var initPath: String { URL(fileURLWithPath: stockadeCLI).deletingLastPathComponent().appendingPathComponent("stockade-init").path }

    @Test("stockade-init has no C library: static, no interpreter, no TLS, none of glibc's start-up (its tunables among it)")
    func pid1WithoutLibc() throws {
        let bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: Self.initPath)))
        try #require(bytes.count > 64 && bytes[0..<4] == [0x7f, 0x45, 0x4c, 0x46] && bytes[4] == 2, "not an ELF64 file")
        func u16(_ at: Int) -> Int { Int(bytes[at]) | Int(bytes[at + 1]) << 8 }
        func u64(_ at: Int) -> Int { (0..<8).reduce(0) { $0 | Int(bytes[at + $1]) << (8 * $1) } }
        let (phoff, phentsize, phnum) = (u64(32), u16(54), u16(56))
        let types = (0..<phnum).map { u16(phoff + $0 * phentsize) }
        #expect(!types.contains(3), "PT_INTERP: a dynamic program")
        #expect(!types.contains(7), "PT_TLS: the C library's thread-local storage")
        #expect(u16(16) == 2, "not a fixed-address executable (ET_EXEC)")
        // glibc's static start reads GLIBC_TUNABLES from the environment;
        // without the library the name is nowhere in the program.
        let needle = Array("GLIBC_TUNABLES".utf8)
        let found = bytes.indices.dropLast(needle.count).contains { i in bytes[i] == needle[0] && Array(bytes[i..<(i + needle.count)]) == needle }
        #expect(!found, "glibc's start-up is linked in")
        #expect(bytes.count < 256 * 1024, "\(bytes.count) bytes")
    }
}

/// Whether `needle` occurs in any readable mapping of `pid`.
func memoryContains(pid: Int32, _ needle: [UInt8]) throws -> Bool {
    let maps = try String(contentsOfFile: "/proc/\(pid)/maps", encoding: .utf8)
    let mem = open("/proc/\(pid)/mem", O_RDONLY | O_CLOEXEC)
    guard mem >= 0 else { throw Errno(rawValue: errno) }
    defer { close(mem) }
    for line in maps.split(separator: "\n") {
        let fields = line.split(separator: " ")
        guard fields.count > 1, fields[1].hasPrefix("r") else { continue }
        if line.hasSuffix("[vvar]") || line.hasSuffix("[vsyscall]") { continue }
        let bounds = fields[0].split(separator: "-").compactMap { UInt64($0, radix: 16) }
        guard bounds.count == 2 else { continue }
        let size = Int(bounds[1] - bounds[0])
        guard size <= 1 << 30 else { continue }
        var buf = [UInt8](repeating: 0, count: size)
        let n = buf.withUnsafeMutableBytes { pread(mem, $0.baseAddress, size, off_t(bounds[0])) }
        guard n > 0 else { continue }
        let region = buf[..<n]
        if region.firstRange(of: needle) != nil { return true }
    }
    return false
}

@Suite("The cgroup namespace is rooted at the jail's cgroup, on v1 as on v2", .serialized,
       .enabled(if: getuid() == 0, "a cgroup of the jail's own needs root (or a delegated v2 tree)"))
struct CgroupNamespaceTests {
    @Test("/proc/self/cgroup in a jail with a budget shows no host path")
    func noHostPath() throws {
        try #require(FileManager.default.isExecutableFile(atPath: stockadeCLI), "build the CLI first")
        let result = try runCommand([stockadeCLI, "run", "-p", packageRoot + "/profiles/minimal.toml", "--", "/bin/cat", "/proc/self/cgroup"])
        #expect(result.status == 0, "\(result.output)")
        let lines = result.output.split(separator: "\n").filter { !$0.hasPrefix("stockade:") }
        #expect(!lines.isEmpty)
        for line in lines {
            #expect(line.hasSuffix(":/"), "the jail sees a host cgroup path: \(line)")
        }
        #expect(!result.output.contains("stockade/") && !result.output.contains("jail-"), "\(result.output)")
    }
}
