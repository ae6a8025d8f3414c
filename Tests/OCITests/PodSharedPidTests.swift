import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// A pod whose containers share one pid namespace (CRI `pid: POD`), as
/// containerd writes the specs: the sandbox container makes it, a pod
/// container names it as /proc/SANDBOX/ns/pid and joins the sandbox's user
/// namespace with it. And every way a spec could point a container at a pid
/// namespace that is not its own pod's sandbox's, refused.
@Suite("OCIPodSharedPid", .serialized)
struct PodSharedPidTests {
    init() throws {
        try #require(getuid() == 0, "stockade-runtime runs as root, as containerd runs runc")
        try #require(FileManager.default.isExecutableFile(atPath: runtimeBinary), "build stockade-runtime first (swift build --build-tests)")
    }

    /// A sandbox's spec as containerd writes one (own pid, ipc, uts, net;
    /// the annotations naming it the pod's sandbox).
    static func sandboxConfig(_ config: inout [String: Any], id: String) {
        config["annotations"] = ["io.kubernetes.cri.container-type": "sandbox", "io.kubernetes.cri.sandbox-id": id]
    }

    /// A pod container's: the sandbox's namespaces by /proc path.
    static func podContainerConfig(_ config: inout [String: Any], sandboxID: String, sandboxPID: Int32,
                                   pidPath: String? = nil, extra: [String: String] = [:]) {
        var annotations = ["io.kubernetes.cri.container-type": "container", "io.kubernetes.cri.sandbox-id": sandboxID]
        annotations.merge(extra) { $1 }
        config["annotations"] = annotations
        var linux = config["linux"] as! [String: Any]
        linux["namespaces"] = [
            ["type": "pid", "path": pidPath ?? "/proc/\(sandboxPID)/ns/pid"],
            ["type": "ipc", "path": "/proc/\(sandboxPID)/ns/ipc"],
            ["type": "uts", "path": "/proc/\(sandboxPID)/ns/uts"],
            ["type": "network", "path": "/proc/\(sandboxPID)/ns/net"],
            ["type": "mount"], ["type": "cgroup"],
        ]
        config["linux"] = linux
    }

    func startSandbox(_ f: RuntimeFixture, _ id: String) throws -> Int32 {
        try RuntimeFixture.writeConfig(f.bundle, args: ["sh", "-c", "echo pause-\(id); exec sleep 600"], cgroupsPath: f.cgroupsPath(id)) {
            Self.sandboxConfig(&$0, id: id)
        }
        let created = try f.run(["create", "--bundle", f.bundle, id], stdout: f.dir + "/out-\(id)")
        try #require(created.status == 0, "\(created)")
        try #require(try f.run(["start", id]).status == 0)
        return try #require(try f.state(id)["pid"] as? Int32)
    }

    func link(_ path: String) -> String { (try? FileManager.default.destinationOfSymbolicLink(atPath: path)) ?? "?\(path)" }

    @Test("a pod container joins its sandbox's pid namespace and user namespace: it sees the sandbox's processes, has the sandbox's id map, and reaches no process outside the pod")
    func shared() throws {
        let f = try RuntimeFixture("sharedpid")
        let sandbox = try startSandbox(f, "sb")
        let out = f.dir + "/out-app"
        let hostPID = getpid()
        try RuntimeFixture.writeConfig(f.bundle, args: ["sh", "-c", """
            for p in /proc/[0-9]*; do echo "proc ${p#/proc/} $(cat $p/cmdline | tr '\\0' ' ')"; done
            echo "map $(cat /proc/self/uid_map)"
            kill -0 \(hostPID) 2>/dev/null && echo "host-signal reached" || echo "host-signal refused"
            echo done; sleep 60
            """], cgroupsPath: f.cgroupsPath("app")) {
            Self.podContainerConfig(&$0, sandboxID: "sb", sandboxPID: sandbox)
        }
        let created = try f.run(["create", "--bundle", f.bundle, "app"], stdout: out)
        try #require(created.status == 0, "\(created)")
        try #require(try f.run(["start", "app"]).status == 0)
        let text = f.waitForOutput(out, containing: "done")
        let app = try #require(try f.state("app")["pid"] as? Int32)
        // The sandbox's first process (stockade-init) is PID 1 of the pod, its pause below it.
        #expect(text.contains("proc 1 "), "\(text)")
        #expect(text.contains("sleep 600"), "the sandbox's pause is not visible in the pod container: \(text)")
        #expect(text.contains("host-signal refused"), "\(text)")
        // One user namespace for the pod, the sandbox's, and its id map.
        #expect(link("/proc/\(app)/ns/user") == link("/proc/\(sandbox)/ns/user"))
        #expect(link("/proc/\(app)/ns/user") != link("/proc/self/ns/user"))
        #expect(link("/proc/\(app)/ns/pid_for_children") == link("/proc/\(sandbox)/ns/pid"))
        let sandboxMap = try String(contentsOfFile: "/proc/\(sandbox)/uid_map", encoding: .utf8).split(whereSeparator: \.isWhitespace)
        let mapLine = text.split(separator: "\n").first { $0.hasPrefix("map ") }.map { $0.dropFirst(4).split(whereSeparator: \.isWhitespace) }
        #expect(mapLine == sandboxMap, "\(text)")
        // Its own mount and cgroup namespaces, made inside the pod's user namespace.
        #expect(link("/proc/\(app)/ns/mnt") != link("/proc/\(sandbox)/ns/mnt"))
        // An exec into it lands in the pod's pid namespace too.
        try RuntimeFixture.writeConfig(f.bundle, args: ["true"])
        let process = f.dir + "/exec.json"
        try JSONSerialization.data(withJSONObject: ["args": ["sh", "-c", "cat /proc/1/cmdline | tr '\\0' ' '"], "cwd": "/", "env": ["PATH=/bin"],
                                                    "user": ["uid": 0, "gid": 0]]).write(to: URL(fileURLWithPath: process))
        let exec = try f.run(["exec", "--process", process, "app"])
        #expect(exec.status == 0 && exec.stdout.contains("stockade-init"), "\(exec)")
        // Its first process killed, its others (the shell's sleep) are left
        // in the pod's pid namespace; `kill --all` (what the shim sends then) still reaches them.
        func podProcesses() -> [String] {
            let pidns = link("/proc/\(sandbox)/ns/pid")
            return ((try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []).filter {
                Int($0) != nil && link("/proc/\($0)/ns/pid") == pidns
                    && (try? String(contentsOfFile: "/proc/\($0)/cmdline", encoding: .utf8)) == "sleep\060\0"
            }
        }
        #expect(!podProcesses().isEmpty)
        #expect(try f.run(["kill", "app", "KILL"]).status == 0)
        #expect(try f.waitFor("app", "stopped") == "stopped")
        #expect(try f.run(["kill", "app", "KILL"]).stderr.contains("container not running"))
        #expect(try f.run(["kill", "--all", "app", "KILL"]).status == 0)
        for _ in 0..<100 where !podProcesses().isEmpty { usleep(50_000) }
        #expect(podProcesses().isEmpty, "the container's worker outlived kill --all")
        #expect(try f.run(["delete", "--force", "app"]).status == 0)
        #expect(try f.run(["delete", "--force", "sb"]).status == 0)
    }

    @Test("a createContainer hook of a pod container stays out of the pod's pid namespace: the pod's processes cannot see it while its root is the host's tree")
    func hookOutOfThePod() throws {
        let f = try RuntimeFixture("sharedpidhook")
        let sandbox = try startSandbox(f, "sb")
        // The hook runs as the container's root, an unprivileged host id.
        let out = f.dir + "/hook"
        try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
        chmod(out, 0o777)
        let seen = out + "/pidns"
        try RuntimeFixture.writeConfig(f.bundle, args: ["true"], cgroupsPath: f.cgroupsPath("app")) {
            Self.podContainerConfig(&$0, sandboxID: "sb", sandboxPID: sandbox)
            $0["hooks"] = ["createContainer": [["path": "/bin/sh", "args": ["sh", "-c", "readlink /proc/self/ns/pid > \(seen)"]]]]
        }
        let created = try f.run(["create", "--bundle", f.bundle, "app"])
        try #require(created.status == 0, "\(created)")
        let hookNamespace = try String(contentsOfFile: seen, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(hookNamespace == link("/proc/self/ns/pid") && hookNamespace != link("/proc/\(sandbox)/ns/pid"), "\(hookNamespace)")
        // A container with a pid namespace of its own still runs its hooks in it.
        try RuntimeFixture.writeConfig(f.bundle, args: ["true"], cgroupsPath: f.cgroupsPath("own")) {
            $0["hooks"] = ["createContainer": [["path": "/bin/sh", "args": ["sh", "-c", "readlink /proc/self/ns/pid > \(seen)-own"]]]]
        }
        let ownCreated = try f.run(["create", "--bundle", f.bundle, "own"])
        try #require(ownCreated.status == 0, "\(ownCreated)")
        let own = try #require(try f.state("own")["pid"] as? Int32)
        #expect(try String(contentsOfFile: seen + "-own", encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines) == link("/proc/\(own)/ns/pid"))
    }

    /// (Its /proc/PID/mountinfo, which the kernel shows to whoever sees the
    /// process, lists the host's mount table meanwhile, as under runc.)
    @Test("while a pod container is being built (its mount namespace still holds the host's tree), the pod's processes see its first process but cannot reach its root, working directory or namespaces")
    func buildingContainerOutOfReach() throws {
        let f = try RuntimeFixture("sharedpidbuild")
        let sandbox = try startSandbox(f, "sb")
        let marker = f.dir + "/marker"
        try "host-only\n".write(toFile: marker, atomically: true, encoding: .utf8)
        chmod(marker, 0o644)
        // An exec into the sandbox while the pod container's child waits for
        // its createRuntime hook, after its mounts, before its root switch.
        let process = f.dir + "/attack.json"
        let script = "for p in /proc/[0-9]*; do cat $p/root\(marker) $p/cwd\(marker) 2>/dev/null; "
            + "if grep -q stockade-runtime $p/cmdline; then echo child; ls -l $p/ns/mnt 2>&1; ls -l $p/ns/user 2>&1; "
            + "ls $p/root/ 2>&1 | head -1; ls $p/cwd/ 2>&1 | head -1; fi; done; echo scanned"
        try JSONSerialization.data(withJSONObject: ["args": ["sh", "-c", script], "cwd": "/", "env": ["PATH=/bin"],
                                                    "user": ["uid": 0, "gid": 0]]).write(to: URL(fileURLWithPath: process))
        let seen = f.dir + "/attack.out"
        let hook = "\(runtimeBinary) --root \(f.root) exec --process \(process) sb > \(seen) 2>&1"
        try RuntimeFixture.writeConfig(f.bundle, args: ["true"], cgroupsPath: f.cgroupsPath("app")) {
            Self.podContainerConfig(&$0, sandboxID: "sb", sandboxPID: sandbox)
            $0["hooks"] = ["createRuntime": [["path": "/bin/sh", "args": ["sh", "-c", hook]]]]
        }
        let created = try f.run(["create", "--bundle", f.bundle, "app"])
        try #require(created.status == 0, "\(created)")
        let text = try String(contentsOfFile: seen, encoding: .utf8)
        #expect(text.contains("scanned"), "\(text)")
        // The child (a copy of the runtime until it execs) was there to try.
        let lines = text.split(separator: "\n")
        let child = try #require(lines.firstIndex(of: "child"), "the building container's child was not visible to the pod: \(text)")
        #expect(!text.contains("host-only"), "the pod read a host file through the building container: \(text)")
        let tried = lines[(child + 1)...].prefix { $0 != "child" && $0 != "scanned" }
        // Both links unreadable (ls shows no target), root and cwd refused.
        #expect(!tried.contains { $0.contains("->") }, "\(text)")
        #expect(tried.filter { $0.contains("Permission denied") }.count == 4, "\(text)")
    }

    @Test("a pid namespace that is not the pod's sandbox's is refused, named, before anything starts: the host's, another pod's, a reused pid, a forged record, a bind path")
    func refused() throws {
        let f = try RuntimeFixture("sharedpidbad")
        let sandbox = try startSandbox(f, "sb1")
        let other = try startSandbox(f, "sb2")
        // A host process, and a record under --root forged to name it.
        // (posix_spawn: Foundation's Process needs a run loop the cgroup v2 VM lacks.)
        var hostPID: pid_t = 0
        var argv: [UnsafeMutablePointer<CChar>?] = [strdup("sleep"), strdup("60"), nil]
        defer { for a in argv { free(a) } }
        try #require(posix_spawn(&hostPID, "/bin/sleep", nil, nil, &argv, environ) == 0)
        defer { kill(hostPID, SIGKILL); waitpid(hostPID, nil, 0) }
        usleep(100_000)
        let record = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: f.root + "/sb1/state.json"))) as! [String: Any]
        func forge(_ id: String, pid: Int32, startTime: UInt64?) throws {
            var forged = record
            forged["id"] = id
            forged["pid"] = pid
            if let startTime { forged["pidStartTime"] = startTime }
            try FileManager.default.createDirectory(atPath: f.root + "/" + id, withIntermediateDirectories: true)
            try JSONSerialization.data(withJSONObject: forged).write(to: URL(fileURLWithPath: f.root + "/\(id)/state.json"))
        }
        let stat = try String(contentsOfFile: "/proc/\(hostPID)/stat", encoding: .utf8)
        let hostStart = UInt64(stat[stat.index(after: stat.lastIndex(of: ")")!)...].split(separator: " ")[19])!
        try forge("forged", pid: hostPID, startTime: hostStart)
        try forge("reused", pid: hostPID, startTime: nil) // sb1's start time, another process at the pid

        let cases: [(String, String, Int32, String?, String)] = [
            ("host init", "sb1", sandbox, "/proc/1/ns/pid", "pid 1 is not the pod's sandbox sb1"),
            ("another pod's sandbox", "sb1", sandbox, "/proc/\(other)/ns/pid", "pid \(other) is not the pod's sandbox sb1"),
            ("an unknown sandbox", "nope", sandbox, nil, "the pod's sandbox nope is not a container of this runtime"),
            ("a bind path", "sb1", sandbox, "/proc/self/ns/pid", "is not the namespace of a Stockade container of this pod"),
            ("pid_for_children", "sb1", sandbox, "/proc/\(sandbox)/ns/pid_for_children", "is not the namespace of a Stockade container of this pod"),
            ("a host process with a forged record", "forged", hostPID, nil, "is the host's pid namespace"),
            ("a reused pid", "reused", hostPID, nil, "pid \(hostPID) is no longer container reused"),
        ]
        for (i, (what, sandboxID, pid, path, message)) in cases.enumerated() {
            try RuntimeFixture.writeConfig(f.bundle, args: ["true"], cgroupsPath: f.cgroupsPath("bad\(i)")) {
                Self.podContainerConfig(&$0, sandboxID: sandboxID, sandboxPID: pid, pidPath: path)
                if sandboxID == "forged" || sandboxID == "reused" {
                    // Only the pid namespace: the forged record's process is a host one.
                    var linux = $0["linux"] as! [String: Any]
                    linux["namespaces"] = [["type": "pid", "path": "/proc/\(pid)/ns/pid"], ["type": "mount"], ["type": "network"]]
                    $0["linux"] = linux
                }
            }
            let r = try f.run(["create", "--bundle", f.bundle, "bad\(i)"])
            #expect(r.status != 0 && r.stderr.contains("linux.namespaces") && r.stderr.contains(message), "\(what): \(r)")
            #expect(try f.run(["state", "bad\(i)"]).status != 0, "\(what): a refused container was recorded")
        }
        // The sandbox named by a pod container must be a sandbox.
        try RuntimeFixture.writeConfig(f.bundle, args: ["sleep", "30"], cgroupsPath: f.cgroupsPath("app")) {
            Self.podContainerConfig(&$0, sandboxID: "sb1", sandboxPID: sandbox)
        }
        try #require(try f.run(["create", "--bundle", f.bundle, "app"]).status == 0)
        let app = try #require(try f.state("app")["pid"] as? Int32)
        try RuntimeFixture.writeConfig(f.bundle, args: ["true"], cgroupsPath: f.cgroupsPath("bad-app")) {
            Self.podContainerConfig(&$0, sandboxID: "app", sandboxPID: app)
        }
        let r = try f.run(["create", "--bundle", f.bundle, "bad-app"])
        #expect(r.status != 0 && r.stderr.contains("app is not a pod sandbox"), "\(r)")
        for id in ["forged", "reused"] { try? FileManager.default.removeItem(atPath: f.root + "/" + id) }
    }
}
