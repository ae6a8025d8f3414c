import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// config.json's kernel state of the container's own: process.user.umask,
/// linux.rootfsPropagation (a rootfs on a shared host mount must not become
/// a peer of it) and linux.sysctl (namespaced keys only, written in the
/// container's namespaces, never through a path its rootfs could shape).
@Suite("OCISpecKernel", .serialized)
struct SpecKernelTests {
    init() throws {
        try #require(getuid() == 0, "stockade-runtime runs as root, as containerd runs runc")
        try #require(FileManager.default.isExecutableFile(atPath: runtimeBinary), "build stockade-runtime first (swift build --build-tests)")
    }

    /// Creates and starts `id` with `args`, stdout to a file; returns its path.
    func run(_ f: RuntimeFixture, _ id: String, args: [String], edit: @escaping (inout [String: Any]) -> Void) throws -> String {
        try RuntimeFixture.writeConfig(f.bundle, args: args, cgroupsPath: f.cgroupsPath(id), edit: edit)
        let output = f.dir + "/out-\(id)"
        // The container's stderr too: an exec that fails says why there.
        let created = try f.run(["create", "--bundle", f.bundle, id], stdout: output, stderr: output)
        try #require(created.status == 0, "\(created)")
        try #require(try f.run(["start", id]).status == 0)
        return output
    }

    static func editProcess(_ config: inout [String: Any], _ body: (inout [String: Any]) -> Void) {
        var process = config["process"] as! [String: Any]
        body(&process)
        config["process"] = process
    }

    static func editLinux(_ config: inout [String: Any], _ body: (inout [String: Any]) -> Void) {
        var linux = config["linux"] as! [String: Any]
        body(&linux)
        config["linux"] = linux
    }

    @Test("process.user.umask is the program's umask; without it the runtime's; out of range is refused")
    func umask() throws {
        let f = try RuntimeFixture("umask")
        let out = try run(f, "umask1", args: ["sh", "-c", "umask; touch /tmp/f; ls -l /tmp/f; echo done; sleep 60"]) { config in
            Self.editProcess(&config) { p in
                var user = p["user"] as! [String: Any]
                user["umask"] = 0o027
                p["user"] = user
            }
        }
        let text = f.waitForOutput(out, containing: "done")
        #expect(text.contains("0027") && text.contains("-rw-r-----"), "\(text)")
        _ = try f.run(["delete", "--force", "umask1"])

        try RuntimeFixture.writeConfig(f.bundle, args: ["true"], cgroupsPath: f.cgroupsPath("umask2")) { config in
            Self.editProcess(&config) { p in
                var user = p["user"] as! [String: Any]
                user["umask"] = 0o1777
                p["user"] = user
            }
        }
        let r = try f.run(["create", "--bundle", f.bundle, "umask2"])
        #expect(r.status != 0 && r.stderr.contains("process.user.umask"), "\(r)")
    }

    /// A rootfs on a tmpfs of its own, made shared on the host (as every
    /// mount is on a systemd host).
    func sharedRootfs(_ f: RuntimeFixture) throws -> String {
        let area = f.dir + "/shared"
        mkdir(area, 0o755)
        try #require(mount("tmpfs", area, "tmpfs", 0, "size=64m") == 0, "mount tmpfs: \(errno)")
        try #require(mount(nil, area, nil, UInt(MS_SHARED), nil) == 0)
        let rootfs = area + "/rootfs"
        try ExecutableFiles.copy(f.bundle + "/rootfs", to: rootfs)
        return rootfs
    }

    func rootLine(pid: Int) throws -> String {
        let info = try String(contentsOfFile: "/proc/\(pid)/mountinfo", encoding: .utf8)
        return info.split(separator: "\n").map(String.init).first { $0.split(separator: " ")[4] == "/" } ?? ""
    }

    func mountPoints(pid: Int) throws -> [String] {
        try String(contentsOfFile: "/proc/\(pid)/mountinfo", encoding: .utf8).split(separator: "\n").map { String($0.split(separator: " ")[4]) }
    }

    @Test("rootfsPropagation: a rootfs on a shared host mount is private by default, slave on request, shared refused")
    func propagation() throws {
        let f = try RuntimeFixture("propagation")
        let rootfs = try sharedRootfs(f)
        defer { umount2(f.dir + "/shared", Int32(MNT_DETACH)) }
        let caps = ["CAP_SYS_ADMIN", "CAP_KILL"]
        // The container may mount (CAP_SYS_ADMIN in its user namespace) and tries to reach the host with it.
        let out = try run(f, "prop1", args: ["sh", "-c", "busybox mount -t tmpfs evil /root && echo mounted; echo done; sleep 60"]) { config in
            config["root"] = ["path": rootfs, "readonly": false]
            Self.editProcess(&config) { $0["capabilities"] = ["bounding": caps, "effective": caps, "permitted": caps] }
        }
        let text = f.waitForOutput(out, containing: "done")
        let pid = try #require(try f.state("prop1")["pid"] as? Int)
        try #require(pid > 0, "prop1 stopped before it printed done; its output: \(text); the runtime's log: \(f.logLines())")
        let root = try rootLine(pid: pid)
        #expect(!root.contains("shared:") && !root.contains("master:"), "the container's root is tied to the host's mount: \(root)")
        // Nothing the container mounted reached the host, mounted or not.
        let host = try String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8)
        #expect(!host.contains(rootfs + "/root"), "a container's mount propagated to the host (\(text))")
        // Nor does a host mount below the rootfs reach the container.
        mkdir(rootfs + "/mnt/later", 0o755)
        try #require(mount("tmpfs", rootfs + "/mnt/later", "tmpfs", 0, "size=1m") == 0)
        #expect(!(try mountPoints(pid: pid)).contains("/mnt/later"))
        umount2(rootfs + "/mnt/later", Int32(MNT_DETACH))
        _ = try f.run(["delete", "--force", "prop1"])

        // rslave: host mounts below the rootfs appear inside, nothing goes back.
        _ = try run(f, "prop2", args: ["sleep", "60"]) { config in
            config["root"] = ["path": rootfs, "readonly": false]
            Self.editLinux(&config) { $0["rootfsPropagation"] = "rslave" }
        }
        let pid2 = try #require(try f.state("prop2")["pid"] as? Int)
        try #require(pid2 > 0, "prop2 stopped at once; the runtime's log: \(f.logLines())")
        let root2 = try rootLine(pid: pid2)
        #expect(root2.contains("master:"), "\(root2)")
        try #require(mount("tmpfs", rootfs + "/mnt/later", "tmpfs", 0, "size=1m") == 0)
        defer { umount2(rootfs + "/mnt/later", Int32(MNT_DETACH)) }
        #expect(try mountPoints(pid: pid2).contains("/mnt/later"))
        _ = try f.run(["delete", "--force", "prop2"])

        for bad in ["rshared", "shared", "sideways"] {
            try RuntimeFixture.writeConfig(f.bundle, args: ["true"], cgroupsPath: f.cgroupsPath("prop3")) { config in
                Self.editLinux(&config) { $0["rootfsPropagation"] = bad }
            }
            let r = try f.run(["create", "--bundle", f.bundle, "prop3"])
            #expect(r.status != 0 && r.stderr.contains("linux.rootfsPropagation"), "\(bad): \(r)")
        }
    }

    @Test("linux.sysctl: namespaced keys are set in the container's namespaces, the host's stay; the rest is refused as runc refuses it")
    func sysctl() throws {
        let f = try RuntimeFixture("sysctl")
        let hostForward = try String(contentsOfFile: "/proc/sys/net/ipv4/ip_forward", encoding: .utf8)
        let hostShmmni = try String(contentsOfFile: "/proc/sys/kernel/shmmni", encoding: .utf8)
        // The rootfs plants a /proc/sys of its own below the proc mount point.
        let planted = f.bundle + "/rootfs/proc/sys/net/ipv4"
        try FileManager.default.createDirectory(atPath: planted, withIntermediateDirectories: true)
        try "planted\n".write(toFile: planted + "/ip_forward", atomically: false, encoding: .utf8)
        let out = try run(f, "sysctl1", args: ["sh", "-c", "cat /proc/sys/net/ipv4/ip_forward /proc/sys/kernel/shmmni /proc/sys/net/ipv4/ip_default_ttl; echo done; sleep 60"]) { config in
            Self.editLinux(&config) { $0["sysctl"] = ["net.ipv4.ip_forward": "1", "kernel.shmmni": "1234", "net/ipv4/ip_default_ttl": "33"] }
        }
        let text = f.waitForOutput(out, containing: "done")
        #expect(text == "1\n1234\n33\ndone\n", "\(text)")
        #expect(try String(contentsOfFile: "/proc/sys/net/ipv4/ip_forward", encoding: .utf8) == hostForward)
        #expect(try String(contentsOfFile: "/proc/sys/kernel/shmmni", encoding: .utf8) == hostShmmni)
        #expect(try String(contentsOfFile: planted + "/ip_forward", encoding: .utf8) == "planted\n")
        _ = try f.run(["delete", "--force", "sysctl1"])

        let refused: [([String: String], [[String: Any]]?, String)] = [
            (["kernel.panic": "1"], nil, "sysctl \"kernel.panic\" is not in a separate kernel namespace"),
            (["vm.overcommit_memory": "1"], nil, "is not in a separate kernel namespace"),
            (["net.ipv4.ip_forward": "1"], [["type": "mount"], ["type": "pid"]], "sysctl \"net.ipv4.ip_forward\" is not allowed in the hosts network namespace"),
            (["kernel.shmmax": "1"], [["type": "mount"], ["type": "network"]], "is not allowed in the hosts ipc namespace"),
            (["net/../kernel/panic": "1"], nil, "is not a sysctl name"),
            (["net.ipv4.ip_forward\u{0}x": "1"], nil, "is not a sysctl name"),
            (["net.ipv4.ip_forward": "1\u{0}"], nil, "the value holds a NUL byte"),
            (["kernel.hostname": "x"], nil, "conflicts with the hostname field"),
        ]
        for (i, (map, namespaces, message)) in refused.enumerated() {
            try RuntimeFixture.writeConfig(f.bundle, args: ["true"], cgroupsPath: f.cgroupsPath("bad\(i)")) { config in
                Self.editLinux(&config) { linux in
                    linux["sysctl"] = map
                    if let namespaces { linux["namespaces"] = namespaces }
                }
            }
            let r = try f.run(["create", "--bundle", f.bundle, "bad\(i)"])
            #expect(r.status != 0 && r.stderr.contains("linux.sysctl") && r.stderr.contains(message), "\(map): \(r)")
            #expect(f.logLines().contains { $0["level"] == "error" && ($0["msg"] ?? "").contains(message) })
        }
        // A sysctl the kernel refuses names the key and the step.
        try RuntimeFixture.writeConfig(f.bundle, args: ["true"], cgroupsPath: f.cgroupsPath("bad-value")) { config in
            Self.editLinux(&config) { $0["sysctl"] = ["net.ipv4.ip_forward": "not-a-number"] }
        }
        let r = try f.run(["create", "--bundle", f.bundle, "bad-value"])
        #expect(r.status != 0 && r.stderr.contains("write a sysctl") && r.stderr.contains("net/ipv4/ip_forward"), "\(r)")
    }
}
