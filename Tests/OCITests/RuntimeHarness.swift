import Foundation
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// The package root, found from this file's path.
let packageRoot: String = {
    var url = URL(fileURLWithPath: #filePath)
    for _ in 0..<3 { url.deleteLastPathComponent() }
    return url.path
}()

/// The built runtime, called as containerd's shim calls it: a child
/// process with global flags before the command.
let runtimeBinary = packageRoot + "/.build/debug/stockade-runtime"

/// What one runtime command printed and how it ended.
struct RuntimeRun: CustomStringConvertible {
    var status: Int32
    var stdout: String
    var stderr: String
    var description: String { "status \(status), stdout: \(stdout), stderr: \(stderr)" }
}

/// One test's state directory, log, bundle (busybox-static as the rootfs)
/// and cgroup parent; removed (containers force-deleted) at the end.
final class RuntimeFixture {
    let dir: String
    let root: String
    let log: String
    let bundle: String
    let cgroupParent: String
    /// Variables set for this fixture's runtime commands only (suites run
    /// in parallel: a setenv in one would reach another's runtime).
    var environment: [String: String] = [:]

    init(_ name: String) throws {
        dir = "/tmp/stockade-oci-\(name)-\(getpid())"
        try? FileManager.default.removeItem(atPath: dir)
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true,
                                                attributes: [.posixPermissions: 0o755])
        root = dir + "/state"
        log = dir + "/log.json"
        bundle = dir + "/bundle"
        // A parent per fixture: suites run in parallel, and two creating one
        // v1 cpuset parent at once can leave it without cpus (ENOSPC).
        cgroupParent = "/stockade-oci-tests-\(getpid())-\(name)"
        try Self.makeBundle(bundle)
    }

    deinit {
        for id in (try? FileManager.default.contentsOfDirectory(atPath: root)) ?? [] {
            _ = try? run(["delete", "--force", id])
        }
        try? FileManager.default.removeItem(atPath: dir)
        // The containers' parent cgroup, in every hierarchy (empty by now;
        // a test that ran in parallel may still use it, then it stays).
        let hierarchies = ((try? FileManager.default.contentsOfDirectory(atPath: "/sys/fs/cgroup")) ?? []).map { "/sys/fs/cgroup/" + $0 }
        for h in hierarchies + ["/sys/fs/cgroup"] { rmdir(h + cgroupParent) }
    }

    /// A rootfs of busybox-static and its applets, with every mount point
    /// the spec below needs (the container's root cannot create them: it
    /// owns nothing of a root-owned rootfs).
    static func makeBundle(_ bundle: String) throws {
        let fm = FileManager.default
        let rootfs = bundle + "/rootfs"
        for d in ["bin", "proc", "sys", "dev", "tmp", "etc", "root", "mnt"] {
            try fm.createDirectory(atPath: rootfs + "/" + d, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o755])
        }
        chmod(rootfs + "/tmp", 0o1777)
        try ExecutableFiles.copy("/bin/busybox", to: rootfs + "/bin/busybox")
        for applet in ["sh", "sleep", "echo", "cat", "ps", "id", "ls", "true", "hostname", "grep", "mkdir", "touch", "head"] {
            try fm.createSymbolicLink(atPath: rootfs + "/bin/" + applet, withDestinationPath: "busybox")
        }
        try "stockade-oci-test\n".write(toFile: bundle + "/hostdata", atomically: true, encoding: .utf8)
        try writeConfig(bundle, args: ["sh", "-c", "echo hello from $(hostname); sleep 60"])
    }

    /// config.json as `runc spec` writes it, trimmed; `edit` changes the object.
    static func writeConfig(_ bundle: String, args: [String], cgroupsPath: String? = nil,
                            edit: (inout [String: Any]) -> Void = { _ in }) throws {
        let caps = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
        var config: [String: Any] = [
            "ociVersion": "1.0.2",
            "process": [
                "terminal": false,
                "user": ["uid": 0, "gid": 0, "additionalGids": [10]],
                "args": args,
                "env": ["PATH=/bin", "TERM=xterm"],
                "cwd": "/",
                "capabilities": ["bounding": caps, "effective": caps, "permitted": caps],
                "rlimits": [["type": "RLIMIT_NOFILE", "hard": 1024, "soft": 512]],
                "noNewPrivileges": true,
            ] as [String: Any],
            "root": ["path": "rootfs", "readonly": true],
            "hostname": "busybox",
            "mounts": [
                ["destination": "/proc", "type": "proc", "source": "proc"],
                ["destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]],
                ["destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]],
                ["destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]],
                ["destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]],
                ["destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]],
                ["destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "size=1m"]],
                ["destination": "/mnt/hostdata", "type": "bind", "source": "hostdata", "options": ["rbind", "ro", "rprivate"]],
            ],
            "annotations": ["org.example.test": "lifecycle"],
            "linux": [
                "resources": ["memory": ["limit": 64 << 20], "pids": ["limit": 64]],
                "cgroupsPath": cgroupsPath ?? "",
                "namespaces": [["type": "pid"], ["type": "network"], ["type": "ipc"], ["type": "uts"], ["type": "mount"], ["type": "cgroup"]],
                "maskedPaths": ["/proc/kcore", "/sys/firmware"],
                "readonlyPaths": ["/proc/sys"],
            ] as [String: Any],
        ]
        edit(&config)
        let data = try JSONSerialization.data(withJSONObject: config, options: [.prettyPrinted])
        try data.write(to: URL(fileURLWithPath: bundle + "/config.json"))
    }

    /// config.json for `args` with `process.terminal` set.
    static func writeTerminalConfig(_ bundle: String, args: [String], cgroupsPath: String) throws {
        try writeConfig(bundle, args: args, cgroupsPath: cgroupsPath) { config in
            var process = config["process"] as! [String: Any]
            process["terminal"] = true
            config["process"] = process
        }
    }

    /// A container of the fixture's bundle running `args`, created and started.
    func startContainer(_ id: String, args: [String]) throws {
        try Self.writeConfig(bundle, args: args, cgroupsPath: cgroupsPath(id))
        let created = try run(["create", "--bundle", bundle, id])
        guard created.status == 0 else { throw RuntimeTestError("create \(id): \(created)") }
        let started = try run(["start", id])
        guard started.status == 0 else { throw RuntimeTestError("start \(id): \(started)") }
    }

    /// The cgroup path each test's container gets (`/parent/ID`).
    func cgroupsPath(_ id: String) -> String { cgroupParent + "/" + id }

    /// Runs the runtime with `--root`, `--log`, `--log-format json` before
    /// `args`. Output goes to files, not pipes: a created container keeps the
    /// stdio it inherited, and a pipe would never reach EOF.
    @discardableResult
    /// `inherited`: one more fd number the runtime starts with (/dev/null
    /// there), as a caller's stray descriptor.
    func run(_ args: [String], stdin: String? = nil, stdout: String? = nil, stderr: String? = nil, inherited: Int32? = nil) throws -> RuntimeRun {
        // posix_spawn and waitpid, not Foundation's Process: its exit
        // notification needs a CFRunLoop socket pair, which the cgroup v2
        // VM's test process cannot make.
        let out = stdout ?? dir + "/out-\(UUID().uuidString)"
        let err = stderr ?? dir + "/err-\(UUID().uuidString)"
        let input = dir + "/in-\(UUID().uuidString)"
        try Data((stdin ?? "").utf8).write(to: URL(fileURLWithPath: input))
        defer { unlink(input) }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, stdin == nil ? "/dev/null" : input, O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, out, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND, 0o644)
        posix_spawn_file_actions_addopen(&actions, 2, err, O_WRONLY | O_CREAT | O_APPEND, 0o644)
        if let inherited { posix_spawn_file_actions_addopen(&actions, inherited, "/dev/null", O_RDONLY, 0) }
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var none = sigset_t(), piped = sigset_t()
        sigemptyset(&none)
        sigemptyset(&piped)
        sigaddset(&piped, SIGPIPE)
        posix_spawnattr_setsigmask(&attributes, &none)
        posix_spawnattr_setsigdefault(&attributes, &piped)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
        let argv = [runtimeBinary, "--root", root, "--log", log, "--log-format", "json"] + args
        var cArgs = argv.map { strdup($0) } + [nil]
        defer { for a in cArgs { free(a) } }
        var pid: pid_t = 0
        var inherited: [String] = []
        var entry = environ
        while let p = entry.pointee {
            let text = String(cString: p)
            if !environment.keys.contains(where: { text.hasPrefix($0 + "=") }) { inherited.append(text) }
            entry += 1
        }
        var cEnv = (inherited + environment.map { "\($0)=\($1)" }).map { strdup($0) } + [nil]
        defer { for e in cEnv { free(e) } }
        let rc = posix_spawn(&pid, runtimeBinary, &actions, &attributes, &cArgs, &cEnv)
        guard rc == 0 else { throw RuntimeTestError("posix_spawn \(runtimeBinary): \(rc)") }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        let code = (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
        let result = RuntimeRun(status: code,
                                stdout: stdout == nil ? (try String(contentsOfFile: out, encoding: .utf8)) : "",
                                stderr: try String(contentsOfFile: err, encoding: .utf8))
        if stdout == nil { unlink(out) }
        if stderr == nil { unlink(err) }
        return result
    }

    /// `state ID` decoded as a JSON object.
    func state(_ id: String) throws -> [String: Any] {
        let r = try run(["state", id])
        guard r.status == 0, let object = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any] else {
            throw RuntimeTestError("state \(id): \(r)")
        }
        return object
    }

    func status(_ id: String) throws -> String { (try state(id)["status"] as? String) ?? "?" }

    /// Polls `state` until it reports `wanted` (5 s at most).
    func waitFor(_ id: String, _ wanted: String) throws -> String {
        var now = try status(id)
        for _ in 0..<100 where now != wanted {
            usleep(50_000)
            now = try status(id)
        }
        return now
    }

    /// Reads a file the container writes to its stdout, waiting for `text`.
    func waitForOutput(_ path: String, containing text: String) -> String {
        var content = ""
        for _ in 0..<100 {
            content = (try? String(contentsOfFile: path, encoding: .utf8)) ?? ""
            if content.contains(text) { break }
            usleep(50_000)
        }
        return content
    }

    /// The log's lines, each decoded.
    func logLines() -> [[String: String]] {
        let text = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
        return text.split(separator: "\n").compactMap {
            try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: String]
        }
    }
}

/// Files the runtime or a container executes are written by a child process.
/// Suites run in parallel and fork all the time: a descriptor this process
/// opens for writing is copied into every child forked while it is open and
/// stays open there until that child's exec, and executing the file in that
/// window fails with ETXTBSY. `cp`'s write descriptor lives in `cp` alone.
enum ExecutableFiles {
    /// Copies `source` (a file or a whole tree, links as links) to `destination`.
    /// posix_spawn and waitpid, as `RuntimeFixture.run` (Foundation's
    /// Process cannot learn of an exit in the cgroup v2 VM).
    static func copy(_ source: String, to destination: String) throws {
        let argv = ["/bin/cp", "-a", "--", source, destination]
        var cArgs = argv.map { strdup($0) } + [nil]
        defer { for a in cArgs { free(a) } }
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, argv[0], nil, nil, &cArgs, environ)
        guard rc == 0 else { throw RuntimeTestError("posix_spawn /bin/cp: \(rc)") }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        guard status == 0 else { throw RuntimeTestError("cp -a \(source) \(destination): wait status \(status)") }
    }

    /// Writes `text` to `path` with mode 0755: staged in a file that is never
    /// executed, then copied.
    static func write(_ text: String, to path: String) throws {
        let staged = path + ".staged"
        try text.write(toFile: staged, atomically: false, encoding: .utf8)
        defer { unlink(staged) }
        try copy(staged, to: path)
        guard chmod(path, 0o755) == 0 else { throw RuntimeTestError("chmod \(path): errno \(errno)") }
    }
}

struct RuntimeTestError: Error, CustomStringConvertible {
    var description: String
    init(_ d: String) { description = d }
}

/// The cgroup file of a container's memory limit, v1 or v2, on this host.
func memoryLimitFile(cgroupPath: String) -> String? {
    for candidate in ["/sys/fs/cgroup/memory" + cgroupPath + "/memory.limit_in_bytes",
                      "/sys/fs/cgroup" + cgroupPath + "/memory.max",
                      "/sys/fs/cgroup/unified" + cgroupPath + "/memory.max"] where access(candidate, F_OK) == 0 {
        return candidate
    }
    return nil
}

/// A small JSON-schema (draft 4) checker for the subset runtime-spec's
/// state schema uses: type, properties, required, enum, minimum, $ref
/// (into defs.json), oneOf, patternProperties. Returns the violations.
struct SchemaChecker {
    let documents: [String: [String: Any]]

    init(directory: String) throws {
        var docs: [String: [String: Any]] = [:]
        for name in ["state-schema.json", "defs.json"] {
            let data = try Data(contentsOf: URL(fileURLWithPath: directory + "/" + name))
            docs[name] = try JSONSerialization.jsonObject(with: data) as? [String: Any]
        }
        documents = docs
    }

    func check(_ value: Any, against schema: [String: Any], in file: String = "state-schema.json", at path: String = "$") -> [String] {
        var errors: [String] = []
        if let ref = schema["$ref"] as? String {
            let parts = ref.split(separator: "#", maxSplits: 1).map(String.init)
            let target = ref.hasPrefix("#") ? file : parts[0]
            var node: Any? = documents[target]
            for key in (ref.hasPrefix("#") ? parts[0] : parts.count > 1 ? parts[1] : "").split(separator: "/") {
                node = (node as? [String: Any])?[String(key)]
            }
            guard let resolved = node as? [String: Any] else { return ["\(path): unresolved $ref \(ref)"] }
            return check(value, against: resolved, in: target, at: path)
        }
        if let options = schema["oneOf"] as? [[String: Any]] {
            let matching = options.filter { check(value, against: $0, in: file, at: path).isEmpty }.count
            if matching != 1 { errors.append("\(path): matches \(matching) of oneOf, not 1") }
        }
        if let type = schema["type"] as? String {
            let ok: Bool
            switch type {
            case "object": ok = value is [String: Any]
            case "string": ok = value is String
            case "integer": ok = value is Int || (value as? Double).map { $0 == $0.rounded() } ?? false
            case "array": ok = value is [Any]
            case "null": ok = value is NSNull
            default: ok = true
            }
            if !ok { errors.append("\(path): not of type \(type)") ; return errors }
        }
        if let allowed = schema["enum"] as? [String], let s = value as? String, !allowed.contains(s) {
            errors.append("\(path): \(s) not in \(allowed)")
        }
        if let minimum = schema["minimum"] as? Double, let n = value as? NSNumber, n.doubleValue < minimum {
            errors.append("\(path): \(n) below \(minimum)")
        }
        if let object = value as? [String: Any] {
            for key in schema["required"] as? [String] ?? [] where object[key] == nil {
                errors.append("\(path).\(key): required")
            }
            for (key, sub) in schema["properties"] as? [String: [String: Any]] ?? [:] {
                if let v = object[key] { errors += check(v, against: sub, in: file, at: "\(path).\(key)") }
            }
            for (_, sub) in schema["patternProperties"] as? [String: [String: Any]] ?? [:] {
                for (key, v) in object where !key.isEmpty { errors += check(v, against: sub, in: file, at: "\(path).\(key)") }
            }
        }
        return errors
    }

    func check(state: [String: Any]) -> [String] {
        check(state, against: documents["state-schema.json"] ?? [:])
    }
}

/// A listening unix socket at `path`, as the shim's console socket.
func consoleListener(_ path: String) throws -> Int32 {
    let listener = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
    var addr = sockaddr_un()
    addr.sun_family = sa_family_t(AF_UNIX)
    withUnsafeMutableBytes(of: &addr.sun_path) { raw in
        for (i, b) in path.utf8.enumerated() { raw[i] = b }
    }
    let bound = withUnsafePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(listener, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
    }
    guard bound == 0, listen(listener, 1) == 0 else {
        close(listener)
        throw RuntimeTestError("console socket \(path): \(errno)")
    }
    return listener
}

/// One recvmsg on `conn`: the payload's length and the descriptors it carries.
func receiveDescriptors(_ conn: Int32) -> (Int, [Int32]) {
    var buffer = [UInt8](repeating: 0, count: 256)
    var control = [UInt8](repeating: 0, count: 256)
    var received: [Int32] = []
    let n = buffer.withUnsafeMutableBytes { data in
        control.withUnsafeMutableBytes { ctl in
            var iov = iovec(iov_base: data.baseAddress, iov_len: data.count)
            return withUnsafeMutablePointer(to: &iov) { iovp in
                var msg = msghdr()
                msg.msg_iov = iovp
                msg.msg_iovlen = 1
                msg.msg_control = ctl.baseAddress
                msg.msg_controllen = ctl.count
                let n = recvmsg(conn, &msg, 0)
                var cmsg = msg.msg_controllen > 0 ? UnsafeMutablePointer<cmsghdr>(OpaquePointer(ctl.baseAddress)) : nil
                while let c = cmsg, Int(c.pointee.cmsg_len) > MemoryLayout<cmsghdr>.size {
                    if c.pointee.cmsg_level == SOL_SOCKET && c.pointee.cmsg_type == Int32(SCM_RIGHTS) {
                        let count = (Int(c.pointee.cmsg_len) - MemoryLayout<cmsghdr>.size) / 4
                        let fds = UnsafeRawPointer(c + 1).assumingMemoryBound(to: Int32.self)
                        for i in 0..<count { received.append(fds[i]) }
                    }
                    let next = UnsafeMutableRawPointer(c) + ((Int(c.pointee.cmsg_len) + 7) & ~7)
                    cmsg = next < ctl.baseAddress! + msg.msg_controllen ? next.assumingMemoryBound(to: cmsghdr.self) : nil
                }
                return n
            }
        }
    }
    return (n, received)
}

/// Everything the pty leader `fd` gives until `text` appears (5 s at most).
func readTerminal(_ fd: Int32, until text: String) -> String {
    var output = ""
    for _ in 0..<100 where !output.contains(text) {
        var poll = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        if Glibc.poll(&poll, 1, 50) > 0 {
            var chunk = [UInt8](repeating: 0, count: 4096)
            let n = read(fd, &chunk, chunk.count)
            if n <= 0 { break }
            output += String(decoding: chunk[0..<n], as: UTF8.self)
        }
    }
    return output
}

/// The bound host node's own mode applies inside (the container's root is
/// not the host's): where it is not rw for all (the cgroup v2 VM's udev
/// leaves /dev/fuse 0600; this host has it 0666) it is made so for the
/// test and put back, so that only the device allowlist decides.
/// Suites run in parallel and several open the same node: the first to
/// widen it keeps its original mode, and the last to finish puts it back
/// (a test that restored it while another still used it failed that one).
func openToAll(_ path: String) -> () -> Void {
    let widened = openToAllHolders.withLock { holders -> Bool in
        if var held = holders[path] {
            held.count += 1
            holders[path] = held
            return true
        }
        var st = stat()
        guard stat(path, &st) == 0, st.st_mode & 0o666 != 0o666 else { return false }
        let mode = st.st_mode & 0o7777
        chmod(path, mode | 0o666)
        holders[path] = (mode, 1)
        return true
    }
    guard widened else { return {} }
    return {
        openToAllHolders.withLock { holders in
            guard var held = holders[path] else { return }
            held.count -= 1
            if held.count == 0 {
                chmod(path, held.mode)
                holders[path] = nil
            } else {
                holders[path] = held
            }
        }
    }
}

/// The nodes ``openToAll(_:)`` widened: their original mode and how many
/// tests use them now.
private let openToAllHolders = Mutex<[String: (mode: mode_t, count: Int)]>([:])
