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

    static var fuse: [String: Any] { ["path": "/dev/fuse", "type": "c", "major": 10, "minor": 229, "fileMode": 0o666] }

    @Test("a linux.devices node is the host's, usable inside, and the cgroup allows it and the standard nodes only")
    func deviceNode() throws {
        try #require(access("/dev/fuse", F_OK) == 0, "this host has no /dev/fuse to grant")
        let f = try RuntimeFixture("devices")
        let id = "dev1"
        try RuntimeFixture.writeConfig(f.bundle, args: ["sh", "-c", "ls -l /dev/fuse; exec 3<>/dev/fuse && echo opened-fuse; echo done; sleep 60"],
                                       cgroupsPath: f.cgroupsPath(id)) { Self.config(&$0, devices: [Self.fuse], rules: Self.containerdRules) }
        let output = f.dir + "/out"
        let created = try f.run(["create", "--bundle", f.bundle, id], stdout: output)
        try #require(created.status == 0, "\(created)")
        if let list = try? String(contentsOfFile: "/sys/fs/cgroup/devices" + f.cgroupsPath(id) + "/devices.list", encoding: .utf8) {
            // cgroup v1: the kernel's list is the allowlist, nothing more.
            #expect(!list.contains("a *:*") && list.contains("c 10:229 rw") && list.contains("c 1:3 rw"), "\(list)")
            #expect(!list.contains("b "), "\(list)")
        }
        #expect(try f.run(["start", id]).status == 0)
        let text = f.waitForOutput(output, containing: "done")
        #expect(text.contains("10,") && text.contains("229") && text.contains("opened-fuse"), "\(text)")
        #expect(try f.run(["delete", "--force", id]).status == 0)
        #expect(access("/sys/fs/cgroup/devices" + f.cgroupsPath(id), F_OK) != 0, "the devices cgroup is left behind")
    }

    @Test("refused: a node that is not what the spec says, a link, a block device, allowing every device or a block device")
    func refused() throws {
        let f = try RuntimeFixture("devices-bad")
        let link = f.dir + "/fuse-link"
        symlink("/dev/fuse", link)
        let cases: [([[String: Any]]?, [[String: Any]]?, String)] = [
            ([["path": "/dev/fuse", "type": "c", "major": 10, "minor": 230]], nil, "is c 10:229, not c 10:230"),
            ([["path": "/etc/hostname", "type": "c", "major": 1, "minor": 3]], nil, "is not a character device"),
            ([["path": link, "type": "c", "major": 10, "minor": 229]], nil, "is a symlink"),
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
