import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// stockade-runtime driven as containerd's runc shim drives it: separate
/// processes for create, start, state, kill, delete, exec, ... against one
/// --root, a bundle of busybox-static, the real kernel and cgroups.
@Suite("OCIRuntime", .serialized)
struct RuntimeLifecycleTests {
    init() throws {
        try #require(getuid() == 0, "stockade-runtime runs as root, as containerd runs runc")
        try #require(FileManager.default.isExecutableFile(atPath: runtimeBinary), "build stockade-runtime first (swift build --build-tests)")
        try #require(FileManager.default.isExecutableFile(atPath: "/bin/busybox"), "install busybox-static (make deps)")
    }

    static let schemaDirectory = packageRoot + "/Tests/OCITests/TestData"

    @Test("create, start, kill, delete: created, running, stopped, gone; the state matches runtime-spec's schema")
    func lifecycle() throws {
        let f = try RuntimeFixture("life")
        let id = "life1"
        try RuntimeFixture.writeConfig(f.bundle, args: ["sh", "-c", "echo hello from $(hostname); exec sleep 60"],
                                       cgroupsPath: f.cgroupsPath(id))
        let schema = try SchemaChecker(directory: Self.schemaDirectory)
        let output = f.dir + "/container-output"
        let pidFile = f.dir + "/init.pid"
        let created = try f.run(["create", "--bundle", f.bundle, "--pid-file", pidFile, id], stdout: output)
        #expect(created.status == 0, "\(created)")

        // The pid file: the bare decimal pid, no newline.
        let pidText = try String(contentsOfFile: pidFile, encoding: .utf8)
        let pidIsBare = !pidText.isEmpty && pidText.allSatisfy { $0.isNumber }
        #expect(pidIsBare, "pid file: \(pidText.debugDescription)")
        let state = try f.state(id)
        #expect(state["status"] as? String == "created")
        #expect(state["pid"] as? Int == Int(pidText))
        #expect(state["id"] as? String == id && state["bundle"] as? String == f.bundle)
        #expect((state["annotations"] as? [String: String])?["org.example.test"] == "lifecycle")
        #expect(state["rootfs"] as? String == f.bundle + "/rootfs" && state["owner"] as? String == "root")
        #expect((state["created"] as? String).map { ISO8601DateFormatter.withFraction.date(from: $0) != nil } == true, "\(state)")
        #expect(schema.check(state: state).isEmpty, "\(schema.check(state: state))")
        // Created: built but nothing of the container's own has run.
        usleep(200_000)
        #expect(try String(contentsOfFile: output, encoding: .utf8).isEmpty)

        let started = try f.run(["start", id])
        #expect(started.status == 0, "\(started)")
        #expect(f.waitForOutput(output, containing: "hello").contains("hello from busybox"))
        let running = try f.state(id)
        #expect(running["status"] as? String == "running")
        #expect(schema.check(state: running).isEmpty, "\(schema.check(state: running))")

        let killed = try f.run(["kill", id, "SIGTERM"])
        #expect(killed.status == 0, "\(killed)")
        #expect(try f.waitFor(id, "stopped") == "stopped")
        let stopped = try f.state(id)
        #expect(stopped["pid"] as? Int == 0)
        #expect(schema.check(state: stopped).isEmpty, "\(schema.check(state: stopped))")

        let deleted = try f.run(["delete", id])
        #expect(deleted.status == 0, "\(deleted)")
        let gone = try f.run(["state", id])
        #expect(gone.status != 0 && gone.stderr.contains("does not exist"), "\(gone)")
        #expect(memoryLimitFile(cgroupPath: f.cgroupsPath(id)) == nil, "the container's cgroup outlived delete")
    }

    @Test("start twice fails, start after exit fails, each with runc's wording")
    func startTwice() throws {
        let f = try RuntimeFixture("twice")
        let id = "twice1"
        try f.startContainer(id, args: ["sleep", "60"])
        let again = try f.run(["start", id])
        #expect(again.status != 0 && again.stderr.contains("cannot start an already running container"), "\(again)")
        #expect(try f.run(["kill", id, "9"]).status == 0)
        #expect(try f.waitFor(id, "stopped") == "stopped")
        let late = try f.run(["start", id])
        #expect(late.status != 0 && late.stderr.contains("cannot start a container that has stopped"), "\(late)")
        let notRunning = try f.run(["kill", id, "KILL"])
        #expect(notRunning.status != 0 && notRunning.stderr.contains("container not running"), "\(notRunning)")
        #expect(try f.run(["delete", id]).status == 0)
    }

    @Test("unknown ids: state, start, kill and delete say 'does not exist'; delete --force succeeds; errors reach the log as JSON")
    func unknownIDs() throws {
        let f = try RuntimeFixture("unknown")
        for command in [["state", "nope"], ["start", "nope"], ["kill", "nope", "9"], ["delete", "nope"], ["pause", "nope"]] {
            let r = try f.run(command)
            #expect(r.status != 0 && r.stderr.contains("container does not exist"), "\(command): \(r)")
        }
        #expect(try f.run(["delete", "--force", "nope"]).status == 0)
        let lines = f.logLines()
        #expect(lines.count == 5, "\(lines)")
        #expect(lines.allSatisfy { $0["level"] == "error" && $0["msg"] == "container does not exist" && $0["time"] != nil }, "\(lines)")
        // An id that is a path is refused before anything touches the store.
        let escape = try f.run(["state", "../../etc"])
        #expect(escape.status != 0 && escape.stderr.contains("invalid id format"), "\(escape)")
    }

    @Test("a created container that is deleted never runs its program")
    func deleteCreated() throws {
        let f = try RuntimeFixture("delcreated")
        let id = "delc1"
        try RuntimeFixture.writeConfig(f.bundle, args: ["sh", "-c", "echo ran"], cgroupsPath: f.cgroupsPath(id))
        let output = f.dir + "/out"
        #expect(try f.run(["create", "--bundle", f.bundle, id], stdout: output).status == 0)
        let pid = try f.state(id)["pid"] as? Int ?? 0
        #expect(try f.run(["delete", id]).status == 0)
        let stat = (try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8)) ?? ""
        #expect(stat.isEmpty || stat.contains(") Z"), "\(stat)")
        #expect(try String(contentsOfFile: output, encoding: .utf8).isEmpty)
    }

    @Test("a record without its process's start time names no process: state says stopped, kill signals nothing")
    func recordWithoutStartTime() throws {
        let f = try RuntimeFixture("nostart")
        try RuntimeFixture.writeConfig(f.bundle, args: ["sleep", "30"], cgroupsPath: f.cgroupsPath("real"))
        #expect(try f.run(["create", "--bundle", f.bundle, "real"]).status == 0)
        defer { _ = try? f.run(["delete", "--force", "real"]) }
        // A host process, and a record of it with start time 0.
        var hostPID: pid_t = 0
        var argv: [UnsafeMutablePointer<CChar>?] = [strdup("sleep"), strdup("60"), nil]
        defer { for a in argv { free(a) } }
        try #require(posix_spawn(&hostPID, "/bin/sleep", nil, nil, &argv, environ) == 0)
        defer { kill(hostPID, SIGKILL); waitpid(hostPID, nil, 0) }
        var record = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: f.root + "/real/state.json"))) as! [String: Any]
        #expect((record["pidStartTime"] as? Int ?? 0) > 0, "create recorded no start time: \(record)")
        record["id"] = "zero"
        record["pid"] = hostPID
        record["pidStartTime"] = 0
        try FileManager.default.createDirectory(atPath: f.root + "/zero", withIntermediateDirectories: true)
        try JSONSerialization.data(withJSONObject: record).write(to: URL(fileURLWithPath: f.root + "/zero/state.json"))
        #expect(try f.status("zero") == "stopped")
        _ = try f.run(["kill", "zero", "KILL"])
        usleep(100_000)
        var status: Int32 = 0
        #expect(waitpid(hostPID, &status, WNOHANG) == 0, "kill reached the host process behind the record")
    }

    @Test("a created container waits for start holding none of the runtime's fds, however high their numbers")
    func createdHoldsNoRuntimeFD() throws {
        let f = try RuntimeFixture("createdfds")
        let id = "cfd1"
        try RuntimeFixture.writeConfig(f.bundle, args: ["sh", "-c", "echo ran"], cgroupsPath: f.cgroupsPath(id))
        #expect(try f.run(["create", "--bundle", f.bundle, id], inherited: 1500).status == 0)
        defer { _ = try? f.run(["delete", "--force", id]) }
        // The container's first process is its PID 1 (stockade-init); its
        // program waits in PID 1's child.
        let pid = try f.state(id)["pid"] as? Int ?? 0
        let child = try String(contentsOfFile: "/proc/\(pid)/task/\(pid)/children", encoding: .utf8)
            .split(separator: " ").first.map(String.init) ?? "0"
        let fds = try FileManager.default.contentsOfDirectory(atPath: "/proc/\(child)/fd").compactMap { Int($0) }.sorted()
        #expect(!fds.contains(1500), "the waiting container holds the runtime's fd 1500: \(fds)")
        // stdio, and the exec FIFO it waits on.
        #expect(fds.count == 4 && fds.prefix(3) == [0, 1, 2], "\(fds)")
    }

    @Test("exec: a process in the container's namespaces, root and cgroup; its status comes back; --detach writes the pid file")
    func exec() throws {
        let f = try RuntimeFixture("exec")
        let id = "exec1"
        try f.startContainer(id, args: ["sleep", "60"])
        let process: [String: Any] = [
            "user": ["uid": 0, "gid": 0], "cwd": "/", "env": ["PATH=/bin"],
            "args": ["sh", "-c", "hostname; cat /proc/1/cmdline | head -c 13; echo; cat /mnt/hostdata; cat /proc/2/comm; exit 3"],
        ]
        let file = f.dir + "/process.json"
        try JSONSerialization.data(withJSONObject: process).write(to: URL(fileURLWithPath: file))
        let r = try f.run(["exec", "--process", file, id])
        #expect(r.status == 3, "\(r)")
        #expect(r.stdout.contains("busybox\nstockade-init\nstockade-oci-test\nsleep\n"), "\(r)")

        let pidFile = f.dir + "/exec.pid"
        let detached = try f.run(["exec", "--process", file, "--detach", "--pid-file", pidFile, id])
        #expect(detached.status == 0, "\(detached)")
        let pidText = try String(contentsOfFile: pidFile, encoding: .utf8)
        #expect(Int32(pidText) != nil && !pidText.hasSuffix("\n"), "\(pidText.debugDescription)")
        // The exec'd process is counted in the container's cgroup while it runs.
        let ps = try f.run(["ps", "--format", "json", id])
        let pids = try JSONSerialization.jsonObject(with: Data(ps.stdout.utf8)) as? [Int] ?? []
        #expect(pids.count >= 2, "\(ps)")
        #expect(try f.run(["delete", "--force", id]).status == 0)
        let stopped = try f.run(["exec", "--process", file, id])
        #expect(stopped.status != 0, "exec into a deleted container: \(stopped)")
    }

    @Test("Stockade's guarantees: the container's root is a host id range of its own; capabilities, groups and rlimits are the spec's")
    func guarantees() throws {
        let f = try RuntimeFixture("guarantee")
        let id = "guar1"
        try f.startContainer(id, args: ["sleep", "60"])
        let file = f.dir + "/process.json"
        let process: [String: Any] = [
            "user": ["uid": 0, "gid": 0], "cwd": "/", "env": ["PATH=/bin"],
            "args": ["sh", "-c", "cat /proc/self/uid_map; grep -E '^(CapEff|CapBnd|Groups|NoNewPrivs)' /proc/2/status; grep 'open files' /proc/2/limits"],
        ]
        try JSONSerialization.data(withJSONObject: process).write(to: URL(fileURLWithPath: file))
        let r = try f.run(["exec", "--process", file, id])
        #expect(r.status == 0, "\(r)")
        let map = r.stdout.split(separator: "\n").first?.split(separator: " ").map(String.init) ?? []
        #expect(map.count == 3 && map[0] == "0" && (UInt32(map[1]) ?? 0) >= 65536 && map[2] == "65536", "uid_map: \(r.stdout)")
        // CAP_KILL (5), CAP_NET_BIND_SERVICE (10), CAP_AUDIT_WRITE (29).
        #expect(r.stdout.contains("CapEff:\t0000000020000420"), "\(r.stdout)")
        #expect(r.stdout.contains("CapBnd:\t0000000020000420"), "\(r.stdout)")
        #expect(r.stdout.contains("Groups:\t10"), "\(r.stdout)")
        #expect(r.stdout.contains("NoNewPrivs:\t1"), "\(r.stdout)")
        #expect(r.stdout.range(of: #"Max open files\s+512\s+1024"#, options: .regularExpression) != nil, "\(r.stdout)")
        #expect(try f.run(["delete", "--force", id]).status == 0)
    }

    @Test("pause and resume freeze and thaw the container's cgroup")
    func pauseResume() throws {
        let f = try RuntimeFixture("pause")
        let id = "pause1"
        try RuntimeFixture.writeConfig(f.bundle, args: ["sh", "-c", "while :; do echo tick; sleep 0.05; done"], cgroupsPath: f.cgroupsPath(id))
        let output = f.dir + "/ticks"
        #expect(try f.run(["create", "--bundle", f.bundle, id], stdout: output).status == 0)
        #expect(try f.run(["start", id]).status == 0)
        _ = f.waitForOutput(output, containing: "tick")
        #expect(try f.run(["pause", id]).status == 0)
        #expect(try f.status(id) == "paused")
        let frozenAt = try String(contentsOfFile: output, encoding: .utf8).count
        usleep(400_000)
        #expect(try String(contentsOfFile: output, encoding: .utf8).count == frozenAt, "a paused container kept writing")
        let twice = try f.run(["pause", id])
        #expect(twice.status != 0 && twice.stderr.contains("container not running"), "\(twice)")
        #expect(try f.run(["resume", id]).status == 0)
        #expect(try f.status(id) == "running")
        usleep(400_000)
        #expect(try String(contentsOfFile: output, encoding: .utf8).count > frozenAt, "a resumed container did not run")
        let resumed = try f.run(["resume", id])
        #expect(resumed.status != 0 && resumed.stderr.contains("container not paused"), "\(resumed)")
        #expect(try f.run(["delete", "--force", id]).status == 0)
    }

    @Test("update --resources - and --resources=- change the cgroup's limits")
    func update() throws {
        let f = try RuntimeFixture("update")
        let id = "upd1"
        try RuntimeFixture.writeConfig(f.bundle, args: ["sleep", "60"], cgroupsPath: f.cgroupsPath(id))
        #expect(try f.run(["create", "--bundle", f.bundle, id]).status == 0)
        let file = try #require(memoryLimitFile(cgroupPath: f.cgroupsPath(id)), "no memory controller for the container's cgroup")
        #expect(try String(contentsOfFile: file, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines) == "\(64 << 20)")
        #expect(try f.run(["start", id]).status == 0)
        let spaced = try f.run(["update", "--resources", "-", id], stdin: #"{"memory":{"limit":33554432}}"#)
        #expect(spaced.status == 0, "\(spaced)")
        #expect(try String(contentsOfFile: file, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines) == "33554432")
        let joined = try f.run(["update", "--resources=-", id], stdin: #"{"memory":{"limit":50331648},"pids":{"limit":32}}"#)
        #expect(joined.status == 0, "\(joined)")
        #expect(try String(contentsOfFile: file, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines) == "50331648")
        let bad = try f.run(["update", "--resources", "-", id], stdin: #"{"memory":{"limit":"lots"}}"#)
        #expect(bad.status != 0 && bad.stderr.contains("memory.limit"), "\(bad)")
        #expect(try f.run(["delete", "--force", id]).status == 0)
    }

    @Test("features, list and --version")
    func features() throws {
        let f = try RuntimeFixture("features")
        let r = try f.run(["features"])
        #expect(r.status == 0, "\(r)")
        let doc = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any] ?? [:]
        #expect(doc["ociVersionMax"] as? String == "1.1.0" && doc["ociVersionMin"] as? String == "1.0.0")
        let linux = doc["linux"] as? [String: Any] ?? [:]
        #expect((linux["namespaces"] as? [String])?.contains("user") == true)
        #expect((linux["capabilities"] as? [String])?.contains("CAP_SYS_ADMIN") == true)
        #expect((linux["seccomp"] as? [String: Any])?["enabled"] as? Bool == true)
        #expect((doc["hooks"] as? [String])?.contains("poststop") == true)

        let id = "list1"
        try RuntimeFixture.writeConfig(f.bundle, args: ["sleep", "60"], cgroupsPath: f.cgroupsPath(id))
        #expect(try f.run(["create", "--bundle", f.bundle, id]).status == 0)
        let list = try f.run(["list", "--format", "json"])
        let entries = try JSONSerialization.jsonObject(with: Data(list.stdout.utf8)) as? [[String: Any]] ?? []
        #expect(entries.count == 1 && entries.first?["id"] as? String == id && entries.first?["status"] as? String == "created", "\(list)")
        #expect(try f.run(["delete", id]).status == 0)

        let version = try f.run(["--version"])
        #expect(version.status == 0 && version.stdout.contains("stockade-runtime version") && version.stdout.contains("spec: 1.1.0"))
    }

    @Test("config.json mistakes name the field; a missing program fails create, not start")
    func configErrors() throws {
        let f = try RuntimeFixture("errors")
        try RuntimeFixture.writeConfig(f.bundle, args: ["sleep", "1"], cgroupsPath: f.cgroupsPath("e1")) { config in
            var linux = config["linux"] as! [String: Any]
            linux["namespaces"] = [["type": "pid"], ["type": "mount"], ["type": "bogus"]]
            config["linux"] = linux
        }
        let badNS = try f.run(["create", "--bundle", f.bundle, "e1"])
        #expect(badNS.status != 0 && badNS.stderr.contains("linux.namespaces[2].type"), "\(badNS)")
        try RuntimeFixture.writeConfig(f.bundle, args: ["sleep", "1"], cgroupsPath: f.cgroupsPath("e2")) { config in
            var process = config["process"] as! [String: Any]
            process["capabilities"] = ["bounding": ["CAP_FLY"]]
            config["process"] = process
        }
        let badCap = try f.run(["create", "--bundle", f.bundle, "e2"])
        #expect(badCap.status != 0 && badCap.stderr.contains("process.capabilities.bounding[0]") && badCap.stderr.contains("CAP_FLY"), "\(badCap)")
        try RuntimeFixture.writeConfig(f.bundle, args: ["/bin/nope"], cgroupsPath: f.cgroupsPath("e3"))
        let missing = try f.run(["create", "--bundle", f.bundle, "e3"])
        #expect(missing.status != 0 && missing.stderr.contains("execve") && missing.stderr.contains("ENOENT") && missing.stderr.contains("/bin/nope"), "\(missing)")
        try RuntimeFixture.writeConfig(f.bundle, args: ["sleep", "1"], cgroupsPath: f.cgroupsPath("e4")) { config in
            config["process"] = nil
        }
        let noProcess = try f.run(["create", "--bundle", f.bundle, "e4"])
        #expect(noProcess.status != 0 && noProcess.stderr.contains("process is missing"), "\(noProcess)")
        // A mapping of host root is refused: a container's root is never host root.
        try RuntimeFixture.writeConfig(f.bundle, args: ["sleep", "1"], cgroupsPath: f.cgroupsPath("e5")) { config in
            var linux = config["linux"] as! [String: Any]
            linux["uidMappings"] = [["containerID": 0, "hostID": 0, "size": 65536]]
            linux["gidMappings"] = [["containerID": 0, "hostID": 0, "size": 65536]]
            config["linux"] = linux
        }
        let hostRoot = try f.run(["create", "--bundle", f.bundle, "e5"])
        #expect(hostRoot.status != 0 && hostRoot.stderr.contains("linux.uidMappings[0]"), "\(hostRoot)")
        // Nothing of a failed create is left: the ids are free again.
        let list = try f.run(["list", "--format", "json"])
        #expect(list.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == "[]", "\(list)")
    }

    @Test("the spec's seccomp filter (errnoRet, masked equality) applies under Stockade's prelude")
    func seccomp() throws {
        let f = try RuntimeFixture("seccomp")
        let id = "sec1"
        try RuntimeFixture.writeConfig(f.bundle, args: ["sh", "-c", "mkdir /tmp/x 2>&1; echo mkdir=$?; touch /tmp/y && echo touch-ok; cat /proc/self/status | grep Seccomp:"],
                                       cgroupsPath: f.cgroupsPath(id)) { config in
            var linux = config["linux"] as! [String: Any]
            linux["seccomp"] = [
                "defaultAction": "SCMP_ACT_ALLOW",
                "architectures": ["SCMP_ARCH_X86_64"],
                "syscalls": [
                    ["names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38],
                    // open flags with O_EXCL (0o200) set: refused; touch opens with O_CREAT only.
                    ["names": ["openat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1,
                     "args": [["index": 2, "value": 0o200, "valueTwo": 0o200, "op": "SCMP_CMP_MASKED_EQ"]]],
                ],
            ] as [String: Any]
            config["linux"] = linux
        }
        let output = f.dir + "/out"
        #expect(try f.run(["create", "--bundle", f.bundle, id], stdout: output).status == 0)
        #expect(try f.run(["start", id]).status == 0)
        let text = f.waitForOutput(output, containing: "Seccomp:")
        #expect(text.contains("Function not implemented") && text.contains("mkdir=1"), "\(text)")
        #expect(text.contains("touch-ok"), "\(text)")
        #expect(text.contains("Seccomp:\t2"), "\(text)")
        _ = try f.run(["delete", "--force", id])
    }

    @Test("the state directory: a symlinked or shared --root is refused")
    func hostileRoot() throws {
        let f = try RuntimeFixture("hostile")
        let real = f.dir + "/real"
        mkdir(real, 0o700)
        symlink(real, f.dir + "/link")
        let linked = try RuntimeFixture.runRaw(["--root", f.dir + "/link", "list"])
        #expect(linked.status != 0 && linked.stderr.contains("--root"), "\(linked)")
        let shared = f.dir + "/shared"
        mkdir(shared, 0o777)
        chmod(shared, 0o777)
        let open = try RuntimeFixture.runRaw(["--root", shared, "list"])
        #expect(open.status != 0 && open.stderr.contains("writable by no one else"), "\(open)")
    }
}

extension RuntimeFixture {
    /// The runtime with exactly `args`.
    static func runRaw(_ args: [String]) throws -> RuntimeRun {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: runtimeBinary)
        process.arguments = args
        let out = Pipe(), err = Pipe()
        process.standardOutput = out
        process.standardError = err
        try process.run()
        let o = out.fileHandleForReading.readDataToEndOfFile()
        let e = err.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return RuntimeRun(status: process.terminationStatus, stdout: String(decoding: o, as: UTF8.self), stderr: String(decoding: e, as: UTF8.self))
    }
}

extension ISO8601DateFormatter {
    static var withFraction: ISO8601DateFormatter {
        let f = ISO8601DateFormatter()
        f.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        return f
    }
}

/// The parts of the protocol around the container: its terminal, its hooks,
/// and a rootfs that tries to lead the runtime's mount points out of it.
@Suite("OCIRuntimeProtocol", .serialized)
struct RuntimeProtocolTests {
    init() throws {
        try #require(getuid() == 0, "stockade-runtime runs as root, as containerd runs runc")
        try #require(FileManager.default.isExecutableFile(atPath: runtimeBinary), "build stockade-runtime first (swift build --build-tests)")
    }

    @Test("terminal: the console socket gets exactly one fd (the pty leader) in one message; the container's stdio is the follower")
    func consoleSocket() throws {
        let f = try RuntimeFixture("console")
        let id = "tty1"
        try RuntimeFixture.writeTerminalConfig(f.bundle, args: ["sh", "-c", "[ -t 0 ] && [ -t 1 ] && echo stdio-is-a-tty; echo typed-$(head -c 5)"], cgroupsPath: f.cgroupsPath(id))
        let socketPath = f.dir + "/console.sock"
        let listener = try consoleListener(socketPath)
        defer { close(listener) }
        let created = try f.run(["create", "--bundle", f.bundle, "--console-socket", socketPath, id])
        #expect(created.status == 0, "\(created)")
        let conn = accept(listener, nil, nil)
        try #require(conn >= 0)
        defer { close(conn) }
        // One recvmsg: the payload and the descriptors it carries.
        let (n, received) = receiveDescriptors(conn)
        #expect(n > 0 && n < 256, "payload of \(n) bytes")
        #expect(received.count == 1, "descriptors: \(received)")
        let leader = try #require(received.first)
        defer { close(leader) }
        #expect(isatty(leader) == 1)
        #expect(try f.run(["start", id]).status == 0)
        _ = "hello\n".withCString { write(leader, $0, 6) }
        let output = readTerminal(leader, until: "typed-hello")
        #expect(output.contains("stdio-is-a-tty") && output.contains("typed-hello"), "\(output.debugDescription)")
        _ = try f.run(["delete", "--force", id])
    }

    @Test("host hooks get the state on stdin: createRuntime (creating) at create, poststart at start, poststop at delete")
    func hooks() throws {
        let f = try RuntimeFixture("hooks")
        let id = "hook1"
        let script = f.dir + "/hook.sh"
        try ExecutableFiles.write("#!/bin/sh\ncat > \(f.dir)/hook-$1.json\n", to: script)
        try RuntimeFixture.writeConfig(f.bundle, args: ["sleep", "60"], cgroupsPath: f.cgroupsPath(id)) { config in
            config["hooks"] = [
                "createRuntime": [["path": script, "args": ["hook.sh", "createRuntime"]]],
                "poststart": [["path": script, "args": ["hook.sh", "poststart"]]],
                "poststop": [["path": script, "args": ["hook.sh", "poststop"]]],
            ]
        }
        #expect(try f.run(["create", "--bundle", f.bundle, id]).status == 0)
        let pid = try f.state(id)["pid"] as? Int
        func hookState(_ name: String) -> [String: Any]? {
            guard let data = FileManager.default.contents(atPath: f.dir + "/hook-\(name).json") else { return nil }
            return try? JSONSerialization.jsonObject(with: data) as? [String: Any]
        }
        #expect(hookState("createRuntime")?["status"] as? String == "creating")
        #expect(hookState("createRuntime")?["pid"] as? Int == pid)
        #expect(hookState("poststart") == nil)
        #expect(try f.run(["start", id]).status == 0)
        #expect(hookState("poststart")?["status"] as? String == "running")
        #expect(try f.run(["delete", "--force", id]).status == 0)
        #expect(hookState("poststop")?["status"] as? String == "stopped" && hookState("poststop")?["id"] as? String == id)

        // A failing createRuntime hook fails create and leaves nothing behind.
        try ExecutableFiles.write("#!/bin/sh\nexit 4\n", to: script)
        let failed = try f.run(["create", "--bundle", f.bundle, "hook2"])
        #expect(failed.status != 0 && failed.stderr.contains("hooks.createRuntime[0]") && failed.stderr.contains("status 4"), "\(failed)")
        #expect(try f.run(["state", "hook2"]).stderr.contains("does not exist"))

        // A hook that cannot be executed is named with the errno, not Foundation's error object.
        try RuntimeFixture.writeConfig(f.bundle, args: ["sleep", "60"], cgroupsPath: f.cgroupsPath("hook3")) { config in
            config["hooks"] = ["createRuntime": [["path": f.dir + "/no-such-hook"]]]
        }
        let missing = try f.run(["create", "--bundle", f.bundle, "hook3"])
        #expect(missing.status != 0 && missing.stderr.contains("hooks.createRuntime[0] \(f.dir)/no-such-hook: cannot execute: ENOENT"), "\(missing)")
        #expect(!missing.stderr.contains("NSCocoaErrorDomain"), "\(missing)")
    }

    @Test("a rootfs whose mount point is a symlink out of it: create is refused and nothing is made on the host")
    func symlinkedMountPoint() throws {
        let f = try RuntimeFixture("symlink")
        let outside = f.dir + "/outside"
        mkdir(outside, 0o755)
        let rootfs = f.bundle + "/rootfs"
        // The image's /mnt leads to a host directory, absolutely and relatively.
        for link in [outside, "../../outside"] {
            try? FileManager.default.removeItem(atPath: rootfs + "/mnt")
            try FileManager.default.createSymbolicLink(atPath: rootfs + "/mnt", withDestinationPath: link)
            let r = try f.run(["create", "--bundle", f.bundle, "sym1"])
            #expect(r.status != 0 && r.stderr.contains("mounts[7]") && r.stderr.contains("symlink"), "\(link): \(r)")
            #expect(try FileManager.default.contentsOfDirectory(atPath: outside).isEmpty, "a mount point was made outside the rootfs")
        }
        // A symlink as the last component (the file itself) is refused too.
        try FileManager.default.removeItem(atPath: rootfs + "/mnt")
        mkdir(rootfs + "/mnt", 0o755)
        try FileManager.default.createSymbolicLink(atPath: rootfs + "/mnt/hostdata", withDestinationPath: outside + "/planted")
        let last = try f.run(["create", "--bundle", f.bundle, "sym2"])
        #expect(last.status != 0, "\(last)")
        #expect(!FileManager.default.fileExists(atPath: outside + "/planted"))
    }
}
