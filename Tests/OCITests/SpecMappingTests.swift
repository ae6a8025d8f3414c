import Foundation
import Testing
import StockadeOCI
#if canImport(Glibc)
import Glibc
#endif

/// config.json fields that need no container to check, and the ones a
/// Stockade profile adds by annotation.
@Suite("OCISpecMapping")
struct SpecMappingTests {
    @Test("cgroupsPath: cgroupfs paths as given, systemd's slice:prefix:name as the unit's path, none under /stockade-runtime")
    func cgroupPaths() throws {
        #expect(try Runtime.cgroupPath("/kubepods/pod1/ctr", id: "c", systemd: false) == ("cgroupfs", "/kubepods/pod1/ctr"))
        #expect(try Runtime.cgroupPath("default/c", id: "c", systemd: false) == ("cgroupfs", "/default/c"))
        #expect(try Runtime.cgroupPath(nil, id: "c9", systemd: false) == ("cgroupfs", "/stockade-runtime/c9"))
        #expect(try Runtime.cgroupPath("kubepods-besteffort-pod12.slice:cri-containerd:abc", id: "c", systemd: true)
            == ("systemd", "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod12.slice/cri-containerd-abc.scope"))
        #expect(try Runtime.cgroupPath(":cri:abc", id: "c", systemd: true) == ("systemd", "/system.slice/cri-abc.scope"))
        #expect(throws: SpecError.self) { try Runtime.cgroupPath("/a/../b", id: "c", systemd: false) }
        #expect(throws: SpecError.self) { try Runtime.cgroupPath("notthreeparts", id: "c", systemd: true) }
    }

    @Test("signals by number and by name, with or without SIG")
    func signals() {
        #expect(Signals.number("9") == 9 && Signals.number("KILL") == 9 && Signals.number("SIGKILL") == 9)
        #expect(Signals.number("sigterm") == 15 && Signals.number("SIGRTMIN+1") == 35)
        #expect(Signals.number("0") == nil && Signals.number("65") == nil && Signals.number("SIGFLY") == nil)
    }

    @Test("resources: shares become a weight, swap is memory plus swap, quota and pids as given")
    func resources() throws {
        let json = #"{"memory":{"limit":1048576,"swap":3145728},"cpu":{"shares":1024,"quota":50000,"period":100000},"pids":{"limit":7}}"#
        let r = try Spec.decode(Spec.Resources.self, from: Data(json.utf8), file: "t")
        let l = try SpecJail.limits(r, base: .init())
        #expect(l.memoryMax == 1 << 20 && l.swapMax == 2 << 20 && l.pidsMax == 7)
        #expect(l.cpuWeight == 39 && l.cpu?.quota == 50000 && l.cpu?.period == 100000)
    }
}

/// `stockade.io/profile` and `stockade.io/userns` on a real container.
@Suite("OCIAnnotations", .serialized)
struct AnnotationTests {
    init() throws {
        try #require(getuid() == 0, "stockade-runtime runs as root")
        try #require(FileManager.default.isExecutableFile(atPath: runtimeBinary), "build stockade-runtime first")
    }

    @Test("stockade.io/profile: the named profile's budget applies where the spec sets none; an unknown name is refused")
    func profileAnnotation() throws {
        let f = try RuntimeFixture("profile")
        let profiles = f.dir + "/profiles"
        mkdir(profiles, 0o755)
        try "[limits]\npids_max = 23\n".write(toFile: profiles + "/tight.toml", atomically: true, encoding: .utf8)
        f.environment["STOCKADE_PROFILE_DIR"] = profiles
        let id = "prof1"
        try RuntimeFixture.writeConfig(f.bundle, args: ["sleep", "60"], cgroupsPath: f.cgroupsPath(id)) { config in
            config["annotations"] = ["stockade.io/profile": "tight"]
            var linux = config["linux"] as! [String: Any]
            linux["resources"] = ["memory": ["limit": 64 << 20]]
            config["linux"] = linux
        }
        let created = try f.run(["create", "--bundle", f.bundle, id])
        #expect(created.status == 0, "\(created)")
        let path = f.cgroupsPath(id)
        let candidates: [String] = ["/sys/fs/cgroup/pids\(path)/pids.max", "/sys/fs/cgroup\(path)/pids.max"]
        let pidsMax = candidates.first { access($0, F_OK) == 0 }
        let value = try pidsMax.map { try String(contentsOfFile: $0, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines) }
        #expect(value == "23", "pids.max: \(value ?? "no pids controller")")
        _ = try f.run(["delete", "--force", id])

        try RuntimeFixture.writeConfig(f.bundle, args: ["sleep", "60"], cgroupsPath: f.cgroupsPath("prof2")) { config in
            config["annotations"] = ["stockade.io/profile": "../../etc/passwd"]
        }
        let escape = try f.run(["create", "--bundle", f.bundle, "prof2"])
        #expect(escape.status != 0 && escape.stderr.contains("stockade.io/profile") && escape.stderr.contains("not a profile name"), "\(escape)")
        try RuntimeFixture.writeConfig(f.bundle, args: ["sleep", "60"], cgroupsPath: f.cgroupsPath("prof3")) { config in
            config["annotations"] = ["stockade.io/profile": "absent"]
        }
        let absent = try f.run(["create", "--bundle", f.bundle, "prof3"])
        #expect(absent.status != 0 && absent.stderr.contains("stockade.io/profile"), "\(absent)")
    }

    @Test("stockade.io/userns: host is refused where the host does not allow it")
    func usernsOptOut() throws {
        try #require(access(SpecJail.allowHostUsernsFile, F_OK) != 0, "this host allows the opt-out; the refusal cannot be checked here")
        let f = try RuntimeFixture("userns")
        try RuntimeFixture.writeConfig(f.bundle, args: ["sleep", "60"], cgroupsPath: f.cgroupsPath("u1")) { config in
            config["annotations"] = ["stockade.io/userns": "host"]
        }
        let r = try f.run(["create", "--bundle", f.bundle, "u1"])
        #expect(r.status != 0 && r.stderr.contains("does not allow containers without a user namespace"), "\(r)")
    }

    @Test("kill --all signals every process of the container")
    func killAll() throws {
        let f = try RuntimeFixture("killall")
        let id = "all1"
        try f.startContainer(id, args: ["sh", "-c", "sleep 60 & sleep 60 & wait"])
        var pids: [Int] = []
        for _ in 0..<50 where pids.count < 4 {
            usleep(50_000)
            pids = try JSONSerialization.jsonObject(with: Data(try f.run(["ps", "--format", "json", id]).stdout.utf8)) as? [Int] ?? []
        }
        #expect(pids.count >= 4, "init, sh and two sleeps: \(pids)")
        #expect(try f.run(["kill", "--all", id, "KILL"]).status == 0)
        #expect(try f.waitFor(id, "stopped") == "stopped")
        #expect(pids.allSatisfy { kill(Int32($0), 0) != 0 || (try? String(contentsOfFile: "/proc/\($0)/stat", encoding: .utf8))?.contains(") Z") == true })
        #expect(try f.run(["delete", id]).status == 0)
    }

    /// `kill --all` freezes the container while it reads and signals its
    /// pids (so none is reused meanwhile): a running one is running again
    /// after it, a paused one stays paused and takes the signal once resumed.
    @Test("kill --all leaves a running container running and a paused one paused")
    func killAllKeepsTheFreezerState() throws {
        let f = try RuntimeFixture("killall-freeze")
        let id = "all2"
        let out = f.dir + "/out-" + id
        try RuntimeFixture.writeConfig(f.bundle, args: ["sh", "-c", "trap 'echo USR1' USR1; echo ready; while :; do sleep 0.1; done"],
                                       cgroupsPath: f.cgroupsPath(id))
        #expect(try f.run(["create", "--bundle", f.bundle, id], stdout: out, stderr: out).status == 0)
        #expect(try f.run(["start", id]).status == 0)
        #expect(f.waitForOutput(out, containing: "ready").contains("ready"))
        #expect(try f.run(["kill", "--all", id, "USR1"]).status == 0)
        #expect(try f.status(id) == "running")
        #expect(f.waitForOutput(out, containing: "USR1").contains("USR1"))

        #expect(try f.run(["pause", id]).status == 0)
        #expect(try f.run(["kill", "--all", id, "USR1"]).status == 0)
        #expect(try f.status(id) == "paused")
        #expect(try f.run(["resume", id]).status == 0)
        var text = ""
        for _ in 0..<100 where text.components(separatedBy: "USR1").count < 3 {
            usleep(50_000)
            text = (try? String(contentsOfFile: out, encoding: .utf8)) ?? ""
        }
        #expect(text.components(separatedBy: "USR1").count == 3, "the second USR1 after resume: \(text)")
        #expect(try f.run(["delete", "--force", id]).status == 0)
    }
}
