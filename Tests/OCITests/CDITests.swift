import Foundation
import Testing
@testable import StockadeOCI
#if canImport(Glibc)
import Glibc
#endif

/// CDI devices for GPU pods: requested by `cdi.k8s.io/` annotations or by
/// `NVIDIA_VISIBLE_DEVICES`, resolved in the spec directories, their edits
/// applied through the spec's devices, mounts, hooks and environment.
///
/// No GPU exists here, and no NVIDIA driver: the GPU itself is what cannot
/// be tested on this host. The CDI specs below describe a "GPU" whose node
/// is a real, harmless character device made by the test under another
/// name in a temporary directory (the numbers of /dev/fuse or /dev/net/tun, outside
/// Stockade's own /dev, so the device cgroup's allowlist shows it), and a
/// "driver library" that is a plain file; everything else (the resolution,
/// the bind of the node, the cgroup rule, the mount, the hook, the
/// environment) is real.
@Suite("OCICDI", .serialized)
struct CDITests {
    init() throws {
        try #require(getuid() == 0, "stockade-runtime runs as root")
        try #require(FileManager.default.isExecutableFile(atPath: runtimeBinary), "build stockade-runtime first")
    }

    /// The numbers of /dev/fuse (or /dev/net/tun): a character device
    /// outside Stockade's own /dev whose open is harmless.
    static func fuseNumbers() throws -> (major: Int, minor: Int) {
        let node = try #require(SpecDevicesTests.grantable, "this host has neither /dev/fuse nor /dev/net/tun to copy the numbers of")
        try #require(node.path != "/dev/kmsg", "this host has neither /dev/fuse nor /dev/net/tun (opening /dev/kmsg needs CAP_SYSLOG)")
        return (node.major, node.minor)
    }

    /// A CDI directory with a spec of kind `example.com/gpu` (gpu0, gpu1)
    /// and one of `nvidia.com/gpu` (0), nodes made with mknod in `dir`.
    static func makeSpecs(_ f: RuntimeFixture) throws -> (dirs: String, hookLog: String) {
        let (major, minor) = try fuseNumbers()
        let cdi = f.dir + "/cdi", later = f.dir + "/cdi-run"
        for d in [cdi, later] { mkdir(d, 0o755) }
        for name in ["fakegpu0", "fakegpu1", "nvidia0"] {
            #expect(mknod(f.dir + "/" + name, S_IFCHR | 0o666, dev_t((major & 0xfff) << 8 | (minor & 0xff) | (minor & ~0xff) << 12)) == 0, "mknod \(name): \(errno)")
            chmod(f.dir + "/" + name, 0o666)  // bound, the host node's mode is the container's
        }
        try "fake-driver\n".write(toFile: f.dir + "/libfakegpu.so", atomically: true, encoding: .utf8)
        let hookLog = f.dir + "/hook.log"
        let hook = f.dir + "/cdi-hook.sh"
        try ExecutableFiles.write("#!/bin/sh\necho \"$1 $(cat | grep -o '\"status\":\"[a-z]*\"')\" >> \(hookLog)\n", to: hook)
        func node(_ host: String, _ path: String) -> [String: Any] {
            ["path": path, "hostPath": f.dir + "/" + host, "type": "c", "permissions": "rw"]
        }
        let example: [String: Any] = [
            "cdiVersion": "0.6.0", "kind": "example.com/gpu",
            "devices": [
                ["name": "gpu0", "containerEdits": ["deviceNodes": [node("fakegpu0", "/dev/fakegpu0")], "env": ["FAKE_GPU=gpu0"]]],
                ["name": "gpu1", "containerEdits": ["deviceNodes": [node("fakegpu1", "/dev/fakegpu1")], "env": ["FAKE_GPU=gpu1"]]],
            ],
            "containerEdits": [
                "env": ["FAKE_DRIVER=1"],
                "mounts": [["hostPath": f.dir + "/libfakegpu.so", "containerPath": "/usr/lib/libfakegpu.so", "options": ["ro", "nosuid", "nodev", "bind"]]],
                "hooks": [["hookName": "createRuntime", "path": hook, "args": [hook, "createRuntime"]],
                          ["hookName": "poststop", "path": hook, "args": [hook, "poststop"]]],
            ] as [String: Any],
        ]
        let nvidia: [String: Any] = [
            "cdiVersion": "0.5.0", "kind": "nvidia.com/gpu",
            "devices": [["name": "0", "containerEdits": ["deviceNodes": [["path": "/dev/nvidia0", "hostPath": f.dir + "/nvidia0", "permissions": "r"]]]]],
        ]
        // The second directory's description of gpu1 wins over the first's.
        let override: [String: Any] = [
            "cdiVersion": "0.6.0", "kind": "example.com/gpu",
            "devices": [["name": "gpu1", "containerEdits": ["deviceNodes": [node("fakegpu1", "/dev/fakegpu1-late")]]]],
        ]
        for (dir, name, object) in [(cdi, "example.json", example), (cdi, "nvidia.json", nvidia), (later, "late.json", override)] {
            try JSONSerialization.data(withJSONObject: object).write(to: URL(fileURLWithPath: dir + "/" + name))
            chmod(dir + "/" + name, 0o644)
        }
        // A spec written as YAML, as the NVIDIA toolkit writes them.
        let yaml = """
            cdiVersion: "0.6.0"
            kind: example.com/yamlgpu
            devices:
              - name: y0
                containerEdits:
                  deviceNodes:
                    - path: /dev/yamlgpu0
                      hostPath: \(f.dir)/fakegpu0
                      type: c
                      permissions: rw
                  env: ["FAKE_GPU=yaml0"]

            """
        try yaml.write(toFile: later + "/yaml.yaml", atomically: true, encoding: .utf8)
        chmod(later + "/yaml.yaml", 0o644)
        return (cdi + ":" + later, hookLog)
    }

    static let listing = "ls -l /dev/fakegpu0 /dev/fakegpu1 /dev/fakegpu1-late /dev/nvidia0 /dev/yamlgpu0 2>&1; exec 3<>/dev/fakegpu0 && echo OPENED-GPU0; "
        + "cat /usr/lib/libfakegpu.so; echo FAKE_GPU=$FAKE_GPU FAKE_DRIVER=$FAKE_DRIVER; "
        + "[ -c /dev/nvidia0 ] && { (exec 4<>/dev/nvidia0) 2>/dev/null && echo NV-RW || echo NV-NOT-RW; (exec 4</dev/nvidia0) && echo NV-R; }; echo done"

    func create(_ f: RuntimeFixture, _ id: String, annotations: [String: String], env: [String] = []) throws -> RuntimeRun {
        try RuntimeFixture.writeConfig(f.bundle, args: ["sh", "-c", Self.listing + "; sleep 60"], cgroupsPath: f.cgroupsPath(id)) { config in
            config["annotations"] = annotations
            var process = config["process"] as! [String: Any]
            process["env"] = ["PATH=/bin"] + env
            config["process"] = process
            SpecDevicesTests.config(&config, devices: nil, rules: SpecDevicesTests.containerdRules)
        }
        return try f.run(["create", "--bundle", f.bundle, id], stdout: f.dir + "/out-" + id, stderr: f.dir + "/out-" + id)
    }

    @Test("a cdi.k8s.io annotation: the node bound and allowed in the device cgroup, the mount, env and hooks applied; other devices not")
    func annotationRequest() throws {
        let f = try RuntimeFixture("cdi")
        let (dirs, hookLog) = try Self.makeSpecs(f)
        f.environment["STOCKADE_CDI_SPEC_DIRS"] = dirs
        let (major, minor) = try Self.fuseNumbers()
        let id = "cdi1"
        let created = try create(f, id, annotations: ["cdi.k8s.io/devices": "example.com/gpu=gpu0"])
        try #require(created.status == 0, "\(created)")
        if let list = try? String(contentsOfFile: "/sys/fs/cgroup/devices" + f.cgroupsPath(id) + "/devices.list", encoding: .utf8) {
            #expect(list.contains("c \(major):\(minor) rw") && !list.contains("a *:*"), "\(list)")
        }
        #expect(try f.run(["start", id]).status == 0)
        let text = f.waitForOutput(f.dir + "/out-" + id, containing: "done")
        #expect(text.contains("/dev/fakegpu0") && text.contains("\(major),") && text.contains("OPENED-GPU0"), "\(text)")
        #expect(text.contains("fake-driver") && text.contains("FAKE_GPU=gpu0 FAKE_DRIVER=1"), "\(text)")
        for absent in ["/dev/fakegpu1:", "/dev/nvidia0:"] {
            #expect(text.contains(absent) && text.contains("No such file"), "not requested, not there: \(absent) in \(text)")
        }
        #expect(try f.run(["delete", "--force", id]).status == 0)
        let hooks = (try? String(contentsOfFile: hookLog, encoding: .utf8)) ?? ""
        #expect(hooks.contains("createRuntime \"status\":\"creating\"") && hooks.contains("poststop \"status\":\"stopped\""), "\(hooks)")
    }

    @Test("a device described by a YAML spec: its node bound and allowed, its env applied")
    func yamlSpec() throws {
        let f = try RuntimeFixture("cdi-yaml")
        let (dirs, _) = try Self.makeSpecs(f)
        f.environment["STOCKADE_CDI_SPEC_DIRS"] = dirs
        let (major, minor) = try Self.fuseNumbers()
        let id = "cdiy"
        let created = try create(f, id, annotations: ["cdi.k8s.io/devices": "example.com/yamlgpu=y0"])
        try #require(created.status == 0, "\(created)")
        if let list = try? String(contentsOfFile: "/sys/fs/cgroup/devices" + f.cgroupsPath(id) + "/devices.list", encoding: .utf8) {
            #expect(list.contains("c \(major):\(minor) rw"), "\(list)")
        }
        #expect(try f.run(["start", id]).status == 0)
        let text = f.waitForOutput(f.dir + "/out-" + id, containing: "done")
        let node = text.split(separator: "\n").first { $0.hasSuffix("/dev/yamlgpu0") }
        #expect(node?.hasPrefix("c") == true && text.contains("FAKE_GPU=yaml0 FAKE_DRIVER=\n"), "\(text)")
        #expect(try f.run(["delete", "--force", id]).status == 0)
    }

    @Test("the later directory's description wins; NVIDIA_VISIBLE_DEVICES only where the host allows it")
    func priorityAndNvidia() throws {
        let f = try RuntimeFixture("cdi-nv")
        let (dirs, _) = try Self.makeSpecs(f)
        f.environment["STOCKADE_CDI_SPEC_DIRS"] = dirs
        let allow = f.dir + "/allow-nvidia"
        f.environment["STOCKADE_OCI_ALLOW_NVIDIA_ENV"] = allow

        // Not allowed on this host: the image's variable is ignored, as runc ignores it.
        try #require(try create(f, "nv1", annotations: ["cdi.k8s.io/x": "example.com/gpu=gpu1"], env: ["NVIDIA_VISIBLE_DEVICES=0"]).status == 0)
        #expect(try f.run(["start", "nv1"]).status == 0)
        let first = f.waitForOutput(f.dir + "/out-nv1", containing: "done")
        #expect(first.contains("/dev/nvidia0: No such file"), "NVIDIA_VISIBLE_DEVICES ignored: \(first)")
        #expect(first.contains("/dev/fakegpu1: No such file") && first.contains("FAKE_GPU= FAKE_DRIVER=\n"), "the later directory's gpu1: \(first)")
        let late = first.split(separator: "\n").first { $0.hasSuffix("/dev/fakegpu1-late") }
        #expect(late?.hasPrefix("c") == true, "\(first)")
        _ = try f.run(["delete", "--force", "nv1"])

        try "".write(toFile: allow, atomically: true, encoding: .utf8)
        try #require(try create(f, "nv2", annotations: [:], env: ["NVIDIA_VISIBLE_DEVICES=0"]).status == 0)
        #expect(try f.run(["start", "nv2"]).status == 0)
        let second = f.waitForOutput(f.dir + "/out-nv2", containing: "done")
        let nodeLine = second.split(separator: "\n").first { $0.hasSuffix("/dev/nvidia0") }
        #expect(nodeLine?.hasPrefix("c") == true, "nvidia.com/gpu=0 by the variable: \(second)")
        #expect(second.contains("NV-NOT-RW") && second.contains("NV-R\n"), "its permissions \"r\": read-only: \(second)")
        _ = try f.run(["delete", "--force", "nv2"])

        for (i, value) in ["none", "void", ""].enumerated() {
            let r = try create(f, "nvoff\(i)", annotations: [:], env: ["NVIDIA_VISIBLE_DEVICES=\(value)"])
            #expect(r.status == 0, "\(value): \(r)")
            _ = try f.run(["delete", "--force", "nvoff\(i)"])
        }
    }

    @Test("refused: unknown devices, bad names, specs others can write, unsupported edits, a YAML spec that does not parse")
    func refused() throws {
        let f = try RuntimeFixture("cdi-bad")
        let (dirs, _) = try Self.makeSpecs(f)
        f.environment["STOCKADE_CDI_SPEC_DIRS"] = dirs
        f.environment["STOCKADE_OCI_ALLOW_NVIDIA_ENV"] = f.dir + "/allow"
        try "".write(toFile: f.dir + "/allow", atomically: true, encoding: .utf8)
        let cdi = String(dirs.split(separator: ":")[0])

        var r = try create(f, "u1", annotations: ["cdi.k8s.io/d": "example.com/gpu=gpu9"])
        #expect(r.status != 0 && r.stderr.contains("unknown CDI device \"example.com/gpu=gpu9\"") && r.stderr.contains("gpu0"), "\(r)")
        r = try create(f, "u2", annotations: [:], env: ["NVIDIA_VISIBLE_DEVICES=3"])
        #expect(r.status != 0 && r.stderr.contains("unknown CDI device \"nvidia.com/gpu=3\"") && r.stderr.contains("NVIDIA_VISIBLE_DEVICES"), "\(r)")
        r = try create(f, "u3", annotations: ["cdi.k8s.io/d": "gpu0"])
        #expect(r.status != 0 && r.stderr.contains("is not a CDI device name"), "\(r)")
        r = try create(f, "u4", annotations: ["cdi.k8s.io/d": "example.com/gpu=../../x"])
        #expect(r.status != 0 && r.stderr.contains("is not a CDI device name"), "\(r)")
        #expect(try f.run(["state", "u1"]).stderr.contains("does not exist"))

        // A spec another user could have written grants nothing.
        chmod(cdi + "/example.json", 0o666)
        r = try create(f, "w1", annotations: ["cdi.k8s.io/d": "example.com/gpu=gpu0"])
        #expect(r.status != 0 && r.stderr.contains("example.json") && r.stderr.contains("writable by no one else"), "\(r)")
        chmod(cdi + "/example.json", 0o644)

        // A node whose host path is a link, and edits Stockade does not apply.
        symlink("/dev/fuse", f.dir + "/linkgpu")
        let bad: [String: Any] = ["cdiVersion": "0.7.0", "kind": "example.com/bad", "devices": [
            ["name": "link", "containerEdits": ["deviceNodes": [["path": "/dev/linkgpu", "hostPath": f.dir + "/linkgpu"]]]],
            ["name": "rdt", "containerEdits": ["intelRdt": ["closID": "x"]]],
        ]]
        try JSONSerialization.data(withJSONObject: bad).write(to: URL(fileURLWithPath: cdi + "/bad.json"))
        chmod(cdi + "/bad.json", 0o644)
        r = try create(f, "l1", annotations: ["cdi.k8s.io/d": "example.com/bad=link"])
        #expect(r.status != 0 && r.stderr.contains("CDI device example.com/bad=link") && r.stderr.contains("is a symlink"), "\(r)")
        r = try create(f, "l2", annotations: ["cdi.k8s.io/d": "example.com/bad=rdt"])
        #expect(r.status != 0 && r.stderr.contains("intelRdt is not supported"), "\(r)")

        // A YAML spec that does not parse fails every request, naming the file and the line.
        try "cdiVersion: \"0.6.0\"\nkind: example.com/broken\ndevices:\n  - name: [unclosed\n".write(toFile: cdi + "/broken.yaml", atomically: true, encoding: .utf8)
        chmod(cdi + "/broken.yaml", 0o644)
        r = try create(f, "y1", annotations: ["cdi.k8s.io/d": "example.com/gpu=gpu0"])
        #expect(r.status != 0 && r.stderr.contains("CDI spec \(cdi)/broken.yaml") && r.stderr.contains("line"), "\(r)")
    }

    @Test("a device containerd already injected (its nodes in linux.devices) is not applied twice")
    func injectedByContainerd() throws {
        let f = try RuntimeFixture("cdi-twice")
        let (dirs, _) = try Self.makeSpecs(f)
        let json = """
            {"ociVersion": "1.0.2", "annotations": {"cdi.k8s.io/devices": "example.com/gpu=gpu0"},
             "process": {"user": {"uid": 0, "gid": 0}, "cwd": "/", "args": ["true"], "env": ["FAKE_GPU=gpu0", "FAKE_DRIVER=1"]},
             "mounts": [{"destination": "/usr/lib/libfakegpu.so", "type": "bind", "source": "/x", "options": ["ro", "bind"]}],
             "linux": {"devices": [{"path": "/dev/fakegpu0", "type": "c", "major": 10, "minor": 229}]}}
            """
        var spec = try Spec.decode(Spec.self, from: Data(json.utf8), file: "config.json")
        let injected = try SpecCDI.apply(&spec, directories: dirs.split(separator: ":").map(String.init))
        #expect(injected.devices.isEmpty && spec.linux?.devices?.count == 1 && spec.mounts?.count == 1, "\(spec)")
        #expect(spec.process?.env == ["FAKE_GPU=gpu0", "FAKE_DRIVER=1"] && spec.hooks?.createRuntime == nil)

        // Not injected yet: applied once, with the spec's own edits.
        var fresh = spec
        fresh.linux?.devices = []
        fresh.mounts = []
        fresh.process?.env = []
        let applied = try SpecCDI.apply(&fresh, directories: dirs.split(separator: ":").map(String.init))
        #expect(applied.devices == ["example.com/gpu=gpu0"] && fresh.linux?.devices?.count == 1 && fresh.mounts?.count == 1)
        #expect(fresh.hooks?.createRuntime?.count == 1 && fresh.hooks?.poststop?.count == 1 && applied.hooks?.poststop?.count == 1)
    }
}
