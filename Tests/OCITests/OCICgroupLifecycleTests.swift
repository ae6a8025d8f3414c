import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// The lifecycle (create, start, state, pause, resume, update, kill,
/// delete) with the container's budget read back from its cgroup's own
/// files: memory, pids and cpu, the freezer, and the cgroup gone after
/// delete. Runs on the build host (cgroup v1 controllers here) and, its
/// type name matching the VM suite's filter ("Cgroup"), inside the pure
/// cgroup v2 VM (scripts/vm/run-vm-tests.sh), where it insists on v2.
@Suite("OCICgroupLifecycle", .serialized)
struct OCICgroupLifecycleTests {
    init() throws {
        try #require(getuid() == 0, "stockade-runtime runs as root, as containerd runs runc")
        try #require(FileManager.default.isExecutableFile(atPath: runtimeBinary), "build stockade-runtime first (swift build --build-tests)")
    }

    static var expectV2: Bool { ProcessInfo.processInfo.environment["STOCKADE_EXPECT_CGROUP"] == "v2" }

    /// The cgroup file of the container: v2's `name2` in the unified
    /// hierarchy, else v1's `name1` in the hierarchy of `controller`.
    static func file(_ path: String, v2 name2: String, v1 controller: String, _ name1: String) -> (path: String, v2: Bool)? {
        for base in ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"] where access(base + path + "/" + name2, F_OK) == 0 {
            return (base + path + "/" + name2, true)
        }
        let v1 = "/sys/fs/cgroup/" + controller + path + "/" + name1
        return access(v1, F_OK) == 0 ? (v1, false) : nil
    }

    static func read(_ file: (path: String, v2: Bool)?) -> String {
        guard let file else { return "(no file)" }
        return ((try? String(contentsOfFile: file.path, encoding: .utf8)) ?? "(unreadable)").trimmingCharacters(in: .whitespacesAndNewlines)
    }

    @Test("create, start, pause, resume, update, kill, delete: memory, pids, cpu and the freezer in the container's cgroup files")
    func lifecycle() throws {
        let f = try RuntimeFixture("cglife")
        let id = "cg1"
        let path = f.cgroupsPath(id)
        try RuntimeFixture.writeConfig(f.bundle, args: ["sh", "-c", "while :; do echo tick; sleep 0.05; done"], cgroupsPath: path) { config in
            var linux = config["linux"] as! [String: Any]
            linux["resources"] = ["memory": ["limit": 64 << 20], "pids": ["limit": 64],
                                  "cpu": ["shares": 512, "quota": 50_000, "period": 100_000]]
            config["linux"] = linux
        }
        let output = f.dir + "/ticks"
        let created = try f.run(["create", "--bundle", f.bundle, id], stdout: output)
        try #require(created.status == 0, "\(created)")
        #expect(try f.status(id) == "created")

        let memory = Self.file(path, v2: "memory.max", v1: "memory", "memory.limit_in_bytes")
        let pids = Self.file(path, v2: "pids.max", v1: "pids", "pids.max")
        let cpuMax = Self.file(path, v2: "cpu.max", v1: "cpu", "cpu.cfs_quota_us")
        let weight = Self.file(path, v2: "cpu.weight", v1: "cpu", "cpu.shares")
        let procs = Self.file(path, v2: "cgroup.procs", v1: "memory", "cgroup.procs")
        if Self.expectV2 {
            #expect(memory?.v2 == true && pids?.v2 == true && cpuMax?.v2 == true, "the VM suite expects cgroup v2 files")
        }
        #expect(Self.read(memory) == "\(64 << 20)")
        #expect(Self.read(pids) == "64")
        // runc's shares-to-weight conversion: 512 shares is weight 20 (v1: 20 × 1024 / 100 shares).
        if cpuMax?.v2 == true {
            #expect(Self.read(cpuMax) == "50000 100000")
        } else {
            #expect(Self.read(cpuMax) == "50000")
        }
        #expect(Self.read(weight) == (weight?.v2 == true ? "20" : "204"), "\(weight?.path ?? "-")")
        let pid = try #require(try f.state(id)["pid"] as? Int)
        #expect(Self.read(procs).split(separator: "\n").contains(Substring("\(pid)")), "the container's init is not in its cgroup")

        #expect(try f.run(["start", id]).status == 0)
        #expect(try f.status(id) == "running")
        _ = f.waitForOutput(output, containing: "tick")

        // pause and resume: the freezer's own file says so.
        let freezer = Self.file(path, v2: "cgroup.freeze", v1: "freezer", "freezer.state")
        #expect(try f.run(["pause", id]).status == 0)
        #expect(try f.status(id) == "paused")
        #expect(Self.read(freezer) == (freezer?.v2 == true ? "1" : "FROZEN"))
        #expect(try f.run(["resume", id]).status == 0)
        #expect(try f.status(id) == "running")
        #expect(Self.read(freezer) == (freezer?.v2 == true ? "0" : "THAWED"))

        // update: memory, pids, cpu quota.
        let updated = try f.run(["update", "--resources", "-", id],
                                stdin: #"{"memory":{"limit":33554432},"pids":{"limit":16},"cpu":{"quota":20000,"period":100000}}"#)
        #expect(updated.status == 0, "\(updated)")
        #expect(Self.read(memory) == "33554432")
        #expect(Self.read(pids) == "16")
        #expect(Self.read(cpuMax) == (cpuMax?.v2 == true ? "20000 100000" : "20000"))

        // kill, then delete removes the cgroup.
        #expect(try f.run(["kill", id, "KILL"]).status == 0)
        #expect(try f.waitFor(id, "stopped") == "stopped")
        #expect(try f.run(["delete", id]).status == 0)
        #expect(memory.map { access(URL(fileURLWithPath: $0.path).deletingLastPathComponent().path, F_OK) != 0 } == true,
                "the container's cgroup is left behind")
        #expect(try f.run(["state", id]).stderr.contains("does not exist"))
    }
}
