import Foundation
import Testing
@testable import StockadeConfig
@testable import StockadeCgroups
@testable import StockadeJail

@Suite("CgroupLimitsParsing")
struct LimitsParsingTests {
    func limits(_ body: String) throws(ProfileError) -> LimitsSection {
        try Profile.parse(text: "[limits]\n" + body, file: "p.toml").limits
    }

    func message(_ body: String) -> String {
        do {
            _ = try limits(body)
            return "(accepted)"
        } catch {
            return error.description
        }
    }

    @Test func everyKnobIsRead() throws {
        let l = try limits("""
            memory_max = "512M"
            memory_high = "400M"
            swap_max = 0
            pids_max = 64
            cpu = 0.5
            cpu_weight = 200
            cpuset = "0-1,3"
            io_max = ["8:0 rbps=1048576 wiops=100", "259:0 wbps=2M"]
            """)
        #expect(l.memoryMax == 512 << 20)
        #expect(l.memoryHigh == 400 << 20)
        #expect(l.swapMax == 0)
        #expect(l.pidsMax == 64)
        #expect(l.cpu?.description == "50000 100000")
        #expect(l.cpuWeight == 200)
        #expect(l.cpuset?.description == "0-1,3")
        #expect(l.ioMax.map(\.description) == ["8:0 rbps=1048576 wbps=max riops=max wiops=100",
                                               "259:0 rbps=max wbps=2097152 riops=max wiops=max"])
    }

    @Test func cpuForms() throws {
        #expect(try limits("cpu = 2").cpu?.description == "200000 100000")
        #expect(try limits("cpu = \"0.25\"").cpu?.description == "25000 100000")
        #expect(try limits("cpu_max = \"50000 100000\"").cpu?.cpus == 0.5)
        #expect(message("cpu = 0.5\ncpu_max = \"50000 100000\"").contains("either cpu"))
        #expect(message("cpu_max = \"50000\"").contains("QUOTA PERIOD"))
        #expect(message("cpu = 0").contains("cannot be enforced"))
    }

    @Test func maxMeansNoLimit() throws {
        let l = try limits("memory_max = \"max\"\npids_max = \"max\"")
        #expect(l.memoryMax == nil && l.pidsMax == nil)
        #expect(l.isEmpty)
    }

    @Test func waiveNamesLimitsAndIsNotALimit() throws {
        let l = try limits("memory_max = \"64M\"\npids_max = 8\ncpu = 0.5\nwaive = [\"memory_max\", \"cpu\"]")
        #expect(l.waived == ["memory_max", "cpu"] && !l.isEmpty)
        #expect(l.lines["pids_max"] == 3 && l.lines["waive"] == 5)
        // Only a limit that is set can be waived, by its own name.
        #expect(message("pids_max = 8\nwaive = [\"memory_max\"]").hasPrefix("p.toml:3: limits.waive: entry 0: \"memory_max\" is not a limit set"))
        #expect(message("waive = [\"pidsmax\"]").hasPrefix("p.toml:2: limits.waive:"))
        #expect(message("waive = \"memory_max\"").hasPrefix("p.toml:2: limits.waive:"))
        // The old all-or-nothing switch says what to write instead.
        #expect(message("pids_max = 8\nrequired = false").contains("waive = ["))
    }

    @Test func withoutCgroupHoldsPidsAndRefusesWhatIsNotWaived() throws {
        let both = try limits("memory_max = \"64M\"\npids_max = 8")
        let e = #expect(throws: ProfileError.self) { _ = try both.withoutCgroup(reason: "EACCES") }
        #expect(e?.description.hasPrefix("p.toml:2: limits.memory_max: memory_max cannot be enforced: no cgroup for this jail (EACCES)") == true,
                "\(String(describing: e))")
        #expect(e?.description.contains("waive = [\"memory_max\"]") == true)
        let waived = try limits("memory_max = \"64M\"\npids_max = 8\nwaive = [\"memory_max\"]").withoutCgroup(reason: "EACCES")
        #expect(waived.nproc == 8)
        #expect(waived.notes.contains { $0.contains("pids_max = 8 is held as RLIMIT_NPROC") })
        #expect(waived.notes.contains { $0.contains("waived by the profile (p.toml:4): memory_max") })
        let pidsOnly = try limits("pids_max = 8").withoutCgroup(reason: "EACCES")
        #expect(pidsOnly.nproc == 8 && pidsOnly.notes.count == 1)
        // Each limit no rlimit can hold is named in turn.
        for key in ["memory_high = \"64M\"", "swap_max = 0", "cpu = 0.5", "cpu_max = \"50000 100000\"", "cpu_weight = 100", "cpuset = \"0\""] {
            let name = String(key.prefix { $0 != " " })
            let e = #expect(throws: ProfileError.self) { _ = try limits("pids_max = 8\n" + key).withoutCgroup(reason: "x") }
            #expect(e?.description.hasPrefix("p.toml:3: limits.\(name):") == true, "\(key): \(String(describing: e))")
        }
    }

    @Test func mistakesNameTheKeyAndLine() {
        #expect(message("memory_max = \"lots\"") .hasPrefix("p.toml:2: limits.memory_max:"))
        #expect(message("memory_max = \"64M\"\nmemory_high = \"128M\"").contains("above memory_max"))
        #expect(message("memory_max = \"64K\"").contains("too small"))
        #expect(message("cpu_weight = 0").contains("out of range"))
        #expect(message("cpuset = \"a-b\"").contains("CPU list"))
        #expect(message("io_max = [\"sda rbps=1\"]").contains("MAJOR:MINOR"))
        #expect(message("io_max = [\"8:0 speed=1\"]").contains("MAJOR:MINOR"))
        #expect(message("memory = 1").contains("unknown key"))
    }

    @Test func tenantsFile() throws {
        let file = try TenantsFile.load(path: CgroupTestHost.repositoryRoot + "/examples/tenants.toml")
        #expect(file.tenants.map(\.name) == ["batch", "research"])
        let research = try #require(file["research"])
        #expect(research.limits.memoryMax == 8 << 30)
        #expect(research.limits.cpu?.cpus == 4)
        #expect(research.maxJails == 16)
        #expect(file["batch"]?.limits.cpu?.description == "100000 100000")
    }

    @Test func tenantsFileMistakes() {
        func message(_ text: String) -> String {
            do { _ = try TenantsFile.parse(text: text, file: "t.toml"); return "(accepted)" } catch { return error.description }
        }
        #expect(message("").contains("no tenants"))
        #expect(message("[tenant.\"a b\"]\nmax_jails = 1").contains("tenant name"))
        #expect(message("[tenant.a]\nmax_jails = 0").contains("out of range"))
        #expect(message("[tenant.a]\nmemory_high = \"1G\"").contains("per jail"))
        #expect(message("[tenant.a]\nram = 1").contains("t.toml:2: tenant.a.ram: unknown key"))
    }

    @Test func cpuSetRoundTrips() {
        #expect(CPUSet(parsing: "3,0-1,2")?.description == "0-3")
        #expect(CPUSet(parsing: "0,2,4-6")?.description == "0,2,4-6")
        #expect(CPUSet(parsing: "") == nil)
        #expect(CPUSet(parsing: "3-1") == nil)
    }
}

@Suite("CgroupDetection")
struct CgroupDetectionTests {
    // What /proc/self/mountinfo and /proc/self/cgroup say on three kinds of host.
    static let hybridMounts = """
        30 25 0:26 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
        31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw
        32 30 0:28 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid shared:9 - cgroup cgroup rw,cpu,cpuacct
        33 30 0:29 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory
        34 30 0:30 / /sys/fs/cgroup/pids rw,nosuid - cgroup cgroup rw,pids
        35 30 0:31 / /sys/fs/cgroup/systemd rw,nosuid - cgroup cgroup rw,xattr,name=systemd
        """
    static let hybridSelf = """
        5:pids:/user.slice
        4:memory:/user.slice/session-2.scope
        2:cpu,cpuacct:/
        1:name=systemd:/user.slice/session-2.scope
        0::/user.slice/session-2.scope
        """

    static func fakeFS(magic: [String: Int], files: [String: String]) -> ((String) -> Int?, (String) -> String?) {
        ({ magic[$0] }, { files[$0] })
    }

    @Test func hybridHostIsDiagnosed() {
        let (magic, read) = Self.fakeFS(
            magic: ["/sys/fs/cgroup/unified": CgroupFS.cgroup2Magic, "/sys/fs/cgroup/cpu,cpuacct": CgroupFS.cgroup1Magic,
                    "/sys/fs/cgroup/memory": CgroupFS.cgroup1Magic, "/sys/fs/cgroup/pids": CgroupFS.cgroup1Magic,
                    "/sys/fs/cgroup/systemd": CgroupFS.cgroup1Magic],
            files: ["/sys/fs/cgroup/unified/cgroup.controllers": "hugetlb\n"])
        let host = CgroupHost.detect(mountinfo: Self.hybridMounts, selfCgroup: Self.hybridSelf, magic: magic, read: read)
        #expect(host.layout == .hybrid)
        #expect(host.hierarchies.count == 3, "name=systemd is not a controller hierarchy")
        #expect(host.hierarchy(for: "cpuacct")?.mountPoint == "/sys/fs/cgroup/cpu,cpuacct")
        #expect(host.hierarchy(for: "memory")?.ownPath == "/user.slice/session-2.scope")
        #expect(host.hierarchy(for: "pids")?.ownPath == "/user.slice")
        #expect(host.unified?.ownPath == "/user.slice/session-2.scope")
        #expect(host.v2Absence("memory") == "this host mounts it as cgroup v1 at /sys/fs/cgroup/memory")
        #expect(host.diagnosis.contains("cgroup v2 at /sys/fs/cgroup/unified has only hugetlb"))
    }

    @Test func tmpfsIsNotTakenForACgroupMount() {
        // A cgroup2 line whose mount point is not a cgroup2 filesystem (a
        // stale entry, or a tmpfs mounted over it) is ignored.
        let mounts = "31 30 0:27 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw"
        let (magic, read) = Self.fakeFS(magic: ["/sys/fs/cgroup": 0x0102_1994], files: [:])
        let host = CgroupHost.detect(mountinfo: mounts, selfCgroup: "0::/", magic: magic, read: read)
        #expect(host.layout == .none)
    }

    @Test func unifiedHostInANamespace() {
        // A mount of a subtree (a container's view) shows its root in
        // mountinfo field 4; our path is taken relative to it.
        let mounts = "40 30 0:27 /system.slice/app.service /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate"
        let (magic, read) = Self.fakeFS(magic: ["/sys/fs/cgroup": CgroupFS.cgroup2Magic],
                                        files: ["/sys/fs/cgroup/cgroup.controllers": "cpuset cpu io memory pids\n"])
        let host = CgroupHost.detect(mountinfo: mounts, selfCgroup: "0::/system.slice/app.service/worker",
                                     magic: magic, read: read)
        #expect(host.layout == .unified)
        #expect(host.unified?.ownPath == "/worker")
        #expect(host.v2Controllers == ["cpuset", "cpu", "io", "memory", "pids"])
    }

    @Test func thisHostIsDetected() {
        let host = CgroupHost.detect()
        // Whatever the host is, detection names a layout and explains it.
        #expect(!host.diagnosis.isEmpty)
        if CgroupFS.magic("/sys/fs/cgroup") == CgroupFS.cgroup2Magic {
            #expect(host.layout == .unified)
        }
        if CgroupFS.magic("/sys/fs/cgroup/memory") == CgroupFS.cgroup1Magic {
            #expect(host.hierarchy(for: "memory")?.mountPoint == "/sys/fs/cgroup/memory")
        }
    }

    @Test func v1RefusesALimitNoHierarchyServes() throws {
        // A v1 host without blkio: io_max cannot be enforced and says why.
        let host = CgroupHost(unified: nil, hierarchies: [
            .init(mountPoint: "/sys/fs/cgroup/memory", controllers: ["memory"], ownPath: "/"),
            .init(mountPoint: "/sys/fs/cgroup/pids", controllers: ["pids"], ownPath: "/"),
        ])
        let backend = CgroupV1Backend(host: host) { _ in "/stockade" }
        let io = try #require(IOLimit(parsing: "8:0 rbps=1000"))
        do {
            _ = try backend.check(LimitsSection(ioMax: [io]), parent: "", owner: "jail x")
            Issue.record("io_max was accepted without a blkio hierarchy")
        } catch {
            #expect(error.code == .unsupported)
            #expect(error.message.contains("io_max needs the io controller"), "\(error)")
        }
        let notes = try backend.check(LimitsSection(memoryHigh: 64 << 20), parent: "", owner: "jail x")
        #expect(notes.first?.contains("memory.soft_limit_in_bytes") == true)
    }

    @Test func jailNamesCarryTheirLauncher() {
        let me = LauncherIdentity.current()
        #expect(me.isAlive)
        let name = me.jailName(7)
        #expect(LauncherIdentity.owner(ofJail: name) == me)
        #expect(LauncherIdentity.owner(ofJail: "tenant-x") == nil)
        // Same pid, other start time: a reused pid is not the launcher.
        #expect(!LauncherIdentity(pid: me.pid, startTime: me.startTime + 1).isAlive)
    }
}

extension LimitsParsingTests {
    @Test func hugeQuotaIsRefusedNotOverflowed() throws {
        #expect(message("cpu_max = \"18446744073709551615 100000\"").contains("QUOTA PERIOD"))
        let most = try #require(CPUQuota(quota: 1 << 40, period: 1000))
        #expect(most.microCPUs == UInt64(1 << 40) * 1000)
    }
}
