import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// linux.devices (the host's node, bound after a check by fd) and
/// linux.resources.devices (the allowlist the kernel enforces on the
/// container's cgroup); block devices, "every device" and nodes that are
/// not what the spec says are refused.
@Suite("OCISpecDevices", .serialized)
struct SpecDevicesTests {
    init() throws {
        try #require(getuid() == 0, "stockade-runtime runs as root, as containerd runs runc")
        try #require(FileManager.default.isExecutableFile(atPath: runtimeBinary), "build stockade-runtime first (swift build --build-tests)")
    }

    /// containerd's default rules for a pod: deny everything, mknod of any
    /// node (ignored: no container can mknod), then the usual nodes.
    static var containerdRules: [[String: Any]] { [
        ["allow": false, "access": "rwm"],
        ["allow": true, "type": "c", "access": "m"],
        ["allow": true, "type": "b", "access": "m"],
        ["allow": true, "type": "c", "major": 1, "minor": 3, "access": "rwm"],
        ["allow": true, "type": "c", "major": 136, "access": "rwm"],
        ["allow": true, "type": "c", "major": 5, "minor": 2, "access": "rwm"],
    ] }

    static func config(_ config: inout [String: Any], devices: [[String: Any]]?, rules: [[String: Any]]?) {
        var linux = config["linux"] as! [String: Any]
        if let devices { linux["devices"] = devices }
        var resources = linux["resources"] as! [String: Any]
        if let rules { resources["devices"] = rules }
        linux["resources"] = resources
        config["linux"] = linux
    }

    /// A character device of the host's outside Stockade's own /dev, with
    /// its numbers: /dev/fuse here, /dev/net/tun or /dev/kmsg where fuse is
    /// not loaded (the cgroup v2 VM).
    static var grantable: (path: String, major: Int, minor: Int)? {
        for path in ["/dev/fuse", "/dev/net/tun", "/dev/kmsg"] {
            var st = stat()
            if lstat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFCHR {
                return (path, Int(st.st_rdev >> 8) & 0xfff, Int(st.st_rdev & 0xff) | Int((st.st_rdev >> 12) & 0xfff00))
            }
        }
        return nil
    }

    @Test("a linux.devices node is the host's, present inside, and the cgroup allows it and the standard nodes only")
    func deviceNode() throws {
        let node = try #require(Self.grantable, "this host has none of /dev/fuse, /dev/net/tun, /dev/kmsg to grant")
        let f = try RuntimeFixture("devices")
        let restore = openToAll(node.path)
        defer { restore() }
        let id = "dev1"
        // kmsg needs CAP_SYSLOG of the host to read: open it only where it is fuse or tun.
        let open = node.path == "/dev/kmsg" ? "echo opened-node" : "exec 3<>\(node.path) && echo opened-node"
        let device: [String: Any] = ["path": node.path, "type": "c", "major": node.major, "minor": node.minor, "fileMode": 0o666]
        try RuntimeFixture.writeConfig(f.bundle, args: ["sh", "-c", "ls -l \(node.path); \(open); echo done; sleep 60"],
                                       cgroupsPath: f.cgroupsPath(id)) { Self.config(&$0, devices: [device], rules: Self.containerdRules) }
        let output = f.dir + "/out"
        let created = try f.run(["create", "--bundle", f.bundle, id], stdout: output)
        try #require(created.status == 0, "\(created)")
        if let list = try? String(contentsOfFile: "/sys/fs/cgroup/devices" + f.cgroupsPath(id) + "/devices.list", encoding: .utf8) {
            // cgroup v1: the kernel's list is the allowlist, nothing more.
            #expect(!list.contains("a *:*") && list.contains("c \(node.major):\(node.minor) rw") && list.contains("c 1:3 rw"), "\(list)")
            #expect(!list.contains("b "), "\(list)")
        }
        #expect(try f.run(["start", id]).status == 0)
        let text = f.waitForOutput(output, containing: "done")
        #expect(text.contains("\(node.major),") && text.contains(" \(node.minor) ") && text.contains("opened-node"), "\(text)")
        #expect(try f.run(["delete", "--force", id]).status == 0)
        #expect(access("/sys/fs/cgroup/devices" + f.cgroupsPath(id), F_OK) != 0, "the devices cgroup is left behind")
    }

    @Test("refused: a node that is not what the spec says, a link, a block device, allowing every device or a block device")
    func refused() throws {
        let node = try #require(Self.grantable, "this host has none of /dev/fuse, /dev/net/tun, /dev/kmsg")
        let f = try RuntimeFixture("devices-bad")
        let link = f.dir + "/fuse-link"
        symlink(node.path, link)
        let cases: [([[String: Any]]?, [[String: Any]]?, String)] = [
            ([["path": node.path, "type": "c", "major": node.major, "minor": node.minor + 1]], nil,
             "is c \(node.major):\(node.minor), not c \(node.major):\(node.minor + 1)"),
            ([["path": "/etc/hostname", "type": "c", "major": 1, "minor": 3]], nil, "is not a character device"),
            ([["path": link, "type": "c", "major": node.major, "minor": node.minor]], nil, "is a symlink"),
            ([["path": "/dev/no-such-node", "type": "c", "major": 10, "minor": 229]], nil, "no such node to bind"),
            ([["path": "/dev/loop0", "type": "b", "major": 7, "minor": 0]], nil, "block devices are not granted"),
            ([["path": "/dev/../etc/shadow", "type": "c", "major": 1, "minor": 3]], nil, "without . or .."),
            (nil, [["allow": true, "access": "rwm"]], "allowing every device is not granted"),
            (nil, [["allow": true, "type": "c", "access": "rw"]], "allowing every character device is not granted"),
            (nil, [["allow": true, "type": "b", "major": 8, "access": "r"]], "block devices are not granted"),
            (nil, [["allow": true, "type": "c", "major": 136, "access": "rw"], ["allow": false, "type": "c", "major": 136, "minor": 1, "access": "rw"]], "is not supported"),
            (nil, [["allow": true, "type": "c", "major": 1, "minor": 3, "access": "rwx"]], "is not a subset of \"rwm\""),
        ]
        for (i, (devices, rules, message)) in cases.enumerated() {
            try RuntimeFixture.writeConfig(f.bundle, args: ["true"], cgroupsPath: f.cgroupsPath("bad\(i)")) {
                Self.config(&$0, devices: devices, rules: rules)
            }
            let r = try f.run(["create", "--bundle", f.bundle, "bad\(i)"])
            #expect(r.status != 0 && r.stderr.contains(message) && r.stderr.contains("config.json linux."), "case \(i): \(r)")
            #expect(f.logLines().contains { $0["level"] == "error" && ($0["msg"] ?? "").contains(message) }, "case \(i)")
            #expect(try f.run(["state", "bad\(i)"]).stderr.contains("does not exist"))
        }
    }
}
