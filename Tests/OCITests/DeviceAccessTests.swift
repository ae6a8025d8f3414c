import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// Read-only device rules and `update` of the device rules, on a running
/// container, checked by opening the node from inside (a process `exec`ed
/// into the container, which the allowlist holds as it holds the container).
@Suite("OCIDeviceAccess", .serialized)
struct DeviceAccessTests {
    init() throws {
        try #require(getuid() == 0, "stockade-runtime runs as root")
        try #require(FileManager.default.isExecutableFile(atPath: runtimeBinary), "build stockade-runtime first")
    }

    /// Tries to open `path` read-write and read-only from inside the container.
    static func probe(_ f: RuntimeFixture, _ id: String, _ path: String) throws -> String {
        let process = f.dir + "/probe.json"
        let script = "(exec 3<>\(path)) 2>/dev/null && echo RW-OK || echo RW-REFUSED; "
            + "(exec 3<\(path)) 2>/dev/null && echo R-OK || echo R-REFUSED; echo x > /dev/null && echo NULL-OK"
        let doc: [String: Any] = ["user": ["uid": 0, "gid": 0], "args": ["sh", "-c", script], "env": ["PATH=/bin"], "cwd": "/"]
        try JSONSerialization.data(withJSONObject: doc).write(to: URL(fileURLWithPath: process))
        let r = try f.run(["exec", "--process", process, id])
        try #require(r.status == 0, "exec: \(r)")
        return r.stdout
    }

    @Test("a read-only rule lets the node be opened for reading only; update narrows, removes and widens the rules of a running container")
    func readOnlyAndUpdate() throws {
        let node = try #require(SpecDevicesTests.grantable, "this host has none of /dev/fuse, /dev/net/tun, /dev/kmsg")
        try #require(node.path != "/dev/kmsg", "opening /dev/kmsg needs the host's CAP_SYSLOG: no device here to open from a container")
        let f = try RuntimeFixture("devaccess")
        let restore = openToAll(node.path)
        defer { restore() }
        let id = "acc1"
        let device: [String: Any] = ["path": node.path, "type": "c", "major": node.major, "minor": node.minor]
        // The node's own rule: allowed with `access`, or denied (nil).
        func rules(_ access: String?) -> [[String: Any]] {
            SpecDevicesTests.containerdRules + [["allow": access != nil, "type": "c", "major": node.major, "minor": node.minor, "access": access ?? "rwm"]]
        }
        try RuntimeFixture.writeConfig(f.bundle, args: ["sleep", "60"], cgroupsPath: f.cgroupsPath(id)) {
            SpecDevicesTests.config(&$0, devices: [device], rules: rules("r"))
        }
        let created = try f.run(["create", "--bundle", f.bundle, id])
        try #require(created.status == 0, "\(created)")
        #expect(try f.run(["start", id]).status == 0)
        let v1List = "/sys/fs/cgroup/devices" + f.cgroupsPath(id) + "/devices.list"
        func list() -> String? { try? String(contentsOfFile: v1List, encoding: .utf8) }
        if let l = list() { #expect(l.contains("c \(node.major):\(node.minor) r\n"), "\(l)") }
        var seen = try Self.probe(f, id, node.path)
        #expect(seen.contains("RW-REFUSED") && seen.contains("R-OK") && seen.contains("NULL-OK"), "read-only at create: \(seen)")

        func update(_ access: String?) throws {
            let json = try JSONSerialization.data(withJSONObject: ["devices": rules(access)])
            let r = try f.run(["update", "--resources", "-", id], stdin: String(decoding: json, as: UTF8.self))
            #expect(r.status == 0, "update \(access ?? "none"): \(r)")
        }
        try update("rw")
        seen = try Self.probe(f, id, node.path)
        #expect(seen.contains("RW-OK") && seen.contains("R-OK"), "widened to rw: \(seen)")
        if let l = list() { #expect(l.contains("c \(node.major):\(node.minor) rw"), "\(l)") }

        try update("r")
        seen = try Self.probe(f, id, node.path)
        #expect(seen.contains("RW-REFUSED") && seen.contains("R-OK"), "narrowed to r: \(seen)")

        try update(nil)
        seen = try Self.probe(f, id, node.path)
        #expect(seen.contains("RW-REFUSED") && seen.contains("R-REFUSED") && seen.contains("NULL-OK"), "removed: \(seen)")
        if let l = list() { #expect(!l.contains("c \(node.major):\(node.minor)") && l.contains("c 1:3 rw"), "\(l)") }

        // The next try: an update cannot grant what create never would.
        let all = try JSONSerialization.data(withJSONObject: ["devices": [["allow": true, "access": "rwm"]]])
        let r = try f.run(["update", "--resources", "-", id], stdin: String(decoding: all, as: UTF8.self))
        #expect(r.status != 0 && r.stderr.contains("allowing every device is not granted"), "\(r)")
        seen = try Self.probe(f, id, node.path)
        #expect(seen.contains("R-REFUSED"), "\(seen)")
        #expect(try f.run(["delete", "--force", id]).status == 0)
    }

    @Test("linux.devices with fileMode, uid, gid: made with mknod without a user namespace of its own, the host's node bound within one")
    func mknodOrBind() throws {
        let f = try RuntimeFixture("mknod")
        // The host allows the user-namespace opt-out only through a root-owned
        // file; the test names one of its own instead of /etc's.
        let allow = f.dir + "/allow-host-userns"
        try "".write(toFile: allow, atomically: true, encoding: .utf8)
        f.environment["STOCKADE_OCI_ALLOW_HOST_USERNS"] = allow
        // /dev/full's numbers under a name the host does not have, and /dev/fuse's.
        let devices: [[String: Any]] = [
            ["path": "/dev/stockade-full", "type": "c", "major": 1, "minor": 7, "fileMode": 0o640, "uid": 0, "gid": 0],
            ["path": "/dev/stockade-owned", "type": "c", "major": 1, "minor": 7, "fileMode": 0o600, "uid": 1234, "gid": 5678],
        ]
        let script = "ls -ln /dev/stockade-full /dev/stockade-owned; echo x > /dev/stockade-full; echo done; sleep 60"
        try RuntimeFixture.writeConfig(f.bundle, args: ["sh", "-c", script], cgroupsPath: f.cgroupsPath("mk1")) { config in
            config["annotations"] = ["stockade.io/userns": "host"]
            SpecDevicesTests.config(&config, devices: devices, rules: SpecDevicesTests.containerdRules)
        }
        let output = f.dir + "/out-mk1"
        let created = try f.run(["create", "--bundle", f.bundle, "mk1"], stdout: output, stderr: output)
        try #require(created.status == 0, "\(created)")
        #expect(try f.run(["start", "mk1"]).status == 0)
        let text = f.waitForOutput(output, containing: "done")
        let lines = text.split(separator: "\n")
        let full = lines.first { $0.hasSuffix("/dev/stockade-full") }, owned = lines.first { $0.hasSuffix("/dev/stockade-owned") }
        #expect(full?.hasPrefix("crw-r-----") == true && full?.contains(" 0        0 ") == true && full?.contains("1,   7") == true, "\(text)")
        #expect(owned?.hasPrefix("crw-------") == true && owned?.contains("1234") == true && owned?.contains("5678") == true, "\(text)")
        #expect(text.contains("No space left on device"), "the node is /dev/full's device: \(text)")
        #expect(try f.run(["delete", "--force", "mk1"]).status == 0)
        #expect(access(f.root + "/mk1", F_OK) != 0, "the made nodes go with the container's directory")

        // In its own user namespace the kernel refuses mknod: the host's node
        // is what gets bound, and a name the host lacks is refused.
        try RuntimeFixture.writeConfig(f.bundle, args: ["true"], cgroupsPath: f.cgroupsPath("mk2")) { config in
            SpecDevicesTests.config(&config, devices: devices, rules: SpecDevicesTests.containerdRules)
        }
        let r = try f.run(["create", "--bundle", f.bundle, "mk2"])
        #expect(r.status != 0 && r.stderr.contains("/dev/stockade-full") && r.stderr.contains("cannot mknod"), "\(r)")
    }

    @Test("stockade.io/profile's [devices] grants its nodes beside containerd's rules; without the annotation they are absent")
    func profileDevices() throws {
        let node = try #require(SpecDevicesTests.grantable, "this host has none of /dev/fuse, /dev/net/tun, /dev/kmsg")
        try #require(node.path != "/dev/kmsg", "opening /dev/kmsg needs the host's CAP_SYSLOG")
        let f = try RuntimeFixture("profdev")
        let restore = openToAll(node.path)
        defer { restore() }
        let profiles = f.dir + "/profiles"
        mkdir(profiles, 0o755)
        try "[devices]\nallow = [\"\(node.path)\"]\n\n[[mount]]\ntype = \"bind\"\nsource = \"/bin\"\n"
            .write(toFile: profiles + "/dev.toml", atomically: true, encoding: .utf8)
        f.environment["STOCKADE_PROFILE_DIR"] = profiles
        for (id, annotated) in [("pd1", true), ("pd2", false)] {
            // [ -c ] first: <> on a missing name would create a plain file.
            let script = "[ -c \(node.path) ] && (exec 3<>\(node.path)) && echo OPENED; echo done; sleep 60"
            try RuntimeFixture.writeConfig(f.bundle, args: ["sh", "-c", script], cgroupsPath: f.cgroupsPath(id)) { config in
                if annotated { config["annotations"] = ["stockade.io/profile": "dev"] }
                SpecDevicesTests.config(&config, devices: nil, rules: SpecDevicesTests.containerdRules)
            }
            let output = f.dir + "/out-" + id
            let created = try f.run(["create", "--bundle", f.bundle, id], stdout: output, stderr: output)
            try #require(created.status == 0, "\(created)")
            #expect(try f.run(["start", id]).status == 0)
            let text = f.waitForOutput(output, containing: "done")
            #expect(text.contains("OPENED") == annotated, "annotated \(annotated): \(text)")
            #expect(try f.run(["delete", "--force", id]).status == 0)
        }
    }
}
