import Foundation
@testable import StockadeConfig
@testable import StockadeJail
import Testing

@Suite("[devices] in profiles")
struct DevicesSectionTests {
    @Test("no section: every standard node, nothing else, no GPU")
    func defaults() throws {
        let profile = try shippedProfile("minimal")
        #expect(profile.devices.standard == DevicesSection.StandardNode.allCases)
        #expect(profile.devices.allow.isEmpty)
        #expect(profile.devices.gpus == .none)
        #expect(!profile.devices.declared)
    }

    @Test("the GPU profile parses: GPU 0, no uvm-tools, libraries from the loader cache")
    func gpuProfile() throws {
        let profile = try shippedProfile("inference-gpu")
        #expect(profile.devices.gpus == .some(["0"]))
        #expect(!profile.devices.nvidiaUVMTools)
        #expect(profile.devices.driverLibraries == .loaderCache)
        #expect(profile.name == "inference-gpu")
    }

    @Test("paths, numbers, gpus and libraries are read; duplicates collapse")
    func reads() throws {
        let p = try minimalWithDevices("""
            standard = ["null", "urandom", "null"]
            allow = ["/dev/fuse", "c 10:200", "226:128"]
            gpus = ["1", "GPU-8f2a0000-1111", "1"]
            nvidia_uvm_tools = true
            driver_libraries = "/usr/lib/nvidia"
            """)
        #expect(p.devices.standard == [.null, .urandom])
        #expect(p.devices.allow == [.path("/dev/fuse"), .number(major: 10, minor: 200), .number(major: 226, minor: 128)])
        #expect(p.devices.gpus == .some(["1", "GPU-8f2a0000-1111"]))
        #expect(p.devices.nvidiaUVMTools)
        #expect(p.devices.driverLibraries == .directory("/usr/lib/nvidia"))
        #expect(try minimalWithDevices("gpus = \"all\"").devices.gpus == .all)
        #expect(try minimalWithDevices("gpus = [\"all\"]").devices.gpus == .all)
        #expect(try minimalWithDevices("gpus = []").devices.gpus == .none)
    }

    @Test("mistakes name the key and say what to write", arguments: [
        ("allow = [\"b 8:0\"]", "devices.allow", "only character devices"),
        ("allow = [\"/etc/passwd\"]", "devices.allow", "under /dev"),
        ("allow = [\"/dev/../etc\"]", "devices.allow", "under /dev"),
        ("allow = [\"fuse\"]", "devices.allow", "c MAJOR:MINOR"),
        ("allow = [\"c 10:99999999\"]", "devices.allow", "c MAJOR:MINOR"),
        ("standard = [\"mem\"]", "devices.standard", "not one of the jail's standard nodes"),
        ("gpus = \"first\"", "devices.gpus", "use \"all\""),
        ("gpus = [0]", "devices.gpus", "use \"all\""),
        ("gpus = [\"zero\"]", "devices.gpus", "neither a GPU index nor a GPU-UUID"),
        ("nvidia_uvm_tools = true", "devices.nvidia_uvm_tools", "needs gpus"),
        ("driver_libraries = \"lib\"", "devices.driver_libraries", "ldcache"),
        ("gpu = [\"0\"]", "devices.gpu", "unknown key"),
    ])
    func mistakes(_ text: String, _ key: String, _ message: String) throws {
        do {
            _ = try minimalWithDevices(text)
            Issue.record("accepted: \(text)")
        } catch let error as ProfileError {
            #expect(error.key == key, "\(error)")
            #expect(error.message.contains(message), "\(error)")
            #expect(error.line != nil)
        }
    }
}

@Suite("NVIDIA discovery against a fake driver tree")
struct NvidiaDiscoveryTests {
    @Test("both GPUs are found in PCI order with their nodes and UUIDs")
    func discover() throws {
        let fake = try FakeDriver()
        defer { fake.remove() }
        let driver = try NvidiaDriver.discover(fake.environment)
        #expect(driver.gpus.map(\.index) == [0, 1])
        #expect(driver.gpus.map(\.busID) == ["0000:01:00.0", "0000:02:00.0"])
        #expect(driver.gpus.map(\.minor) == [0, 1])
        #expect(driver.gpus.map(\.uuid) == [fake.uuid0, fake.uuid1])
        #expect(driver.gpus[1].node == fake.environment.devRoot + "/nvidia1")
        #expect(driver.uvm == fake.environment.devRoot + "/nvidia-uvm")
        #expect(driver.uvmTools == fake.environment.devRoot + "/nvidia-uvm-tools")
    }

    @Test("GPU 1 only: its node, the control and uvm nodes; not GPU 0, not uvm-tools")
    func oneGPU() throws {
        let fake = try FakeDriver()
        defer { fake.remove() }
        var section = DevicesSection()
        section.gpus = .some(["1"])
        let plan = try DevicePlan.resolve(section, environment: fake.environment)
        let dev = fake.environment.devRoot
        let nodes = plan.mounts.filter { $0.kind == .deviceNode }
        #expect(nodes == [
            .init(kind: .deviceNode, source: dev + "/nvidiactl", target: "/dev/nvidiactl"),
            .init(kind: .deviceNode, source: dev + "/nvidia1", target: "/dev/nvidia1"),
            .init(kind: .deviceNode, source: dev + "/nvidia-uvm", target: "/dev/nvidia-uvm"),
        ])
        #expect(plan.rules.contains(DeviceRule(major: 195, minor: 1)))
        #expect(plan.rules.contains(DeviceRule(major: 195, minor: 255)))
        #expect(plan.rules.contains(DeviceRule(major: 511, minor: 0)))
        #expect(!plan.rules.contains { $0.permits(major: 195, minor: 0) }, "GPU 0 is allowed")
        #expect(!plan.rules.contains { $0.permits(major: 511, minor: 1) }, "uvm-tools is allowed")
        #expect(!plan.rules.contains { $0.permits(major: 195, minor: 254) }, "modeset is allowed")
        // The standard nodes stay allowed.
        #expect(plan.rules.contains(DeviceRule(major: 1, minor: 3)))

        #expect(plan.environment.first { $0.name == "CUDA_VISIBLE_DEVICES" }?.value == fake.uuid1)
        #expect(plan.gpus.map(\.busID) == ["0000:02:00.0"])
        // /proc/driver: only nvidia, read-only, with GPU 0's entry hidden.
        #expect(plan.unmaskedProc == ["/proc/driver"])
        let procSteps = plan.mounts.filter { $0.target.hasPrefix("/proc/") }
        #expect(procSteps == [
            .init(kind: .mask, source: nil, target: "/proc/driver/rtc"),
            .init(kind: .readOnly, source: nil, target: "/proc/driver/nvidia"),
            .init(kind: .mask, source: nil, target: "/proc/driver/nvidia/gpus/0000:01:00.0"),
        ])
    }

    @Test("the driver libraries come from the loader cache: real files read-only, soname links beside them")
    func libraries() throws {
        let fake = try FakeDriver()
        defer { fake.remove() }
        var section = DevicesSection()
        section.gpus = .some(["0"])
        let plan = try DevicePlan.resolve(section, environment: fake.environment)
        let lib = fake.libDir
        let libs = plan.mounts.filter { $0.kind == .readOnlyBind || $0.kind == .symlink }
        #expect(Set(libs.map(\.description)) == Set([
            "readOnlyBind \(lib)/libcuda.so.550.54.15 -> \(lib)/libcuda.so.550.54.15",
            "symlink libcuda.so.550.54.15 -> \(lib)/libcuda.so.1",
            "readOnlyBind \(lib)/libnvidia-ml.so.550.54.15 -> \(lib)/libnvidia-ml.so.550.54.15",
            "symlink libnvidia-ml.so.550.54.15 -> \(lib)/libnvidia-ml.so.1",
            "readOnlyBind \(lib)/libnvidia-ptxjitcompiler.so.550.54.15 -> \(lib)/libnvidia-ptxjitcompiler.so.550.54.15",
            "symlink libnvidia-ptxjitcompiler.so.550.54.15 -> \(lib)/libnvidia-ptxjitcompiler.so.1",
        ]), "\(libs)")
        #expect(plan.landlockMounts.map(\.target) == libs.filter { $0.kind == .readOnlyBind }.map(\.target))
        // A profile that already binds the directory gets no extra binds.
        let covered = try DevicePlan.resolve(section, profileMounts: [MountSpec(kind: .bind, source: fake.tree.root + "/usr", target: fake.tree.root + "/usr")],
                                             environment: fake.environment)
        #expect(!covered.mounts.contains { $0.kind == .readOnlyBind || $0.kind == .symlink })
        // Through a profile symlink (/lib -> usr/lib on merged-/usr systems).
        let linked = DevicePlan.Coverage([MountSpec(kind: .bind, source: "/usr", target: "/usr"),
                                          MountSpec(kind: .symlink, source: "usr/lib", target: "/lib")])
        #expect(linked.contains("/lib/x86_64-linux-gnu/libcuda.so.1"))
        #expect(!linked.contains("/opt/nvidia/libcuda.so.1"))
        // A directory instead of the cache.
        section.driverLibraries = .directory(lib)
        let fromDir = try DevicePlan.resolve(section, environment: fake.environment)
        #expect(fromDir.mounts.filter { $0.kind == .readOnlyBind }.count == 3)
        section.driverLibraries = .none
        #expect(try DevicePlan.resolve(section, environment: fake.environment).mounts.filter { $0.kind == .readOnlyBind }.isEmpty)
    }

    @Test("all GPUs, and uvm-tools when asked")
    func allGPUs() throws {
        let fake = try FakeDriver()
        defer { fake.remove() }
        var section = DevicesSection()
        section.gpus = .all
        section.nvidiaUVMTools = true
        let plan = try DevicePlan.resolve(section, environment: fake.environment)
        #expect(Set(plan.mounts.filter { $0.kind == .deviceNode }.map(\.target))
                == ["/dev/nvidiactl", "/dev/nvidia0", "/dev/nvidia1", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools"])
        #expect(plan.environment.first { $0.name == "CUDA_VISIBLE_DEVICES" }?.value == "\(fake.uuid0),\(fake.uuid1)")
        #expect(!plan.mounts.contains { $0.target.hasPrefix("/proc/driver/nvidia/gpus/") })
        // By UUID.
        section.gpus = .some([fake.uuid1.uppercased().replacingOccurrences(of: "GPU-", with: "GPU-")])
        #expect(try DevicePlan.resolve(section, environment: fake.environment).gpus.map(\.index) == [1])
    }

    @Test("the spawn plan's device mounts: nodes keep dev, host sources under /oldroot and recorded, masks over /dev/null")
    func plannedMounts() throws {
        let fake = try FakeDriver()
        defer { fake.remove() }
        var section = DevicesSection()
        section.gpus = .some(["0"])
        let plan = try DevicePlan.resolve(section, environment: fake.environment)
        let planned = try SpawnPlan.plan(devices: plan).map(\.mount)
        #expect(planned.count == plan.mounts.count)
        let ctl = try #require(planned.first { $0.target == "/dev/nvidiactl" })
        #expect(ctl.kind == 9) // STK_MOUNT_DEVNODE
        #expect(ctl.source == "/oldroot" + fake.environment.devRoot + "/nvidiactl")
        #expect(ctl.recorded?.path == fake.environment.devRoot + "/nvidiactl")
        #expect(ctl.flags & 1 != 0, "device binds stay writable")
        let mask = try #require(planned.first { $0.target == "/proc/driver/nvidia/gpus/0000:02:00.0" })
        #expect(mask.kind == 7 && mask.source == "/oldroot/dev/null")
        let link = try #require(planned.first { $0.kind == 6 })
        #expect(link.source == "libcuda.so.550.54.15" || link.source?.hasPrefix("lib") == true)
    }

    @Test("a profile without its own /dev or /proc cannot take devices or GPUs")
    func profileChecks() throws {
        let fake = try FakeDriver()
        defer { fake.remove() }
        let noDev = try shippedProfile("inference-gpu") { $0.replacingOccurrences(of: "root_size = \"1M\"", with: "root_size = \"1M\"\ndev = false") }
        #expect {
            _ = try DevicePlan.resolve(for: noDev, environment: fake.environment)
        } throws: { error in
            "\(error)".contains("remove [filesystem] dev = false")
        }
        let plan = try DevicePlan.resolve(for: try shippedProfile("inference-gpu"), environment: fake.environment)
        #expect(plan.gpus.map(\.index) == [0])
    }

    @Test("a host without a GPU refuses a GPU profile, naming what is missing")
    func noGPU() throws {
        let fake = try FakeDriver(gpus: false)
        defer { fake.remove() }
        var section = DevicesSection()
        section.gpus = .some(["0"])
        #expect {
            _ = try DevicePlan.resolve(section, environment: fake.environment)
        } throws: { error in
            "\(error)".hasPrefix("no NVIDIA GPU found: \(fake.environment.devRoot)/nvidiactl missing")
        }
        // A profile without gpus does not look for the driver at all.
        section.gpus = .none
        #expect(try DevicePlan.resolve(section, environment: fake.environment).gpus.isEmpty)
    }

    @Test("a GPU the host lacks, a missing uvm node, a library-less cache: each says so")
    func missingPieces() throws {
        let fake = try FakeDriver()
        defer { fake.remove() }
        var section = DevicesSection()
        section.gpus = .some(["2"])
        #expect {
            _ = try DevicePlan.resolve(section, environment: fake.environment)
        } throws: { error in
            "\(error)" == "GPU 2 was asked for, but this host has 2 NVIDIA GPUs: 0 (0000:01:00.0, \(fake.uuid0)), 1 (0000:02:00.0, \(fake.uuid1))"
        }
        let noUVM = try FakeDriver(uvm: false)
        defer { noUVM.remove() }
        section.gpus = .all
        #expect {
            _ = try DevicePlan.resolve(section, environment: noUVM.environment)
        } throws: { error in
            "\(error)".contains("nvidia-uvm missing")
        }
        var env = fake.environment
        env.ldCache = fake.tree.root + "/no-cache"
        #expect {
            _ = try DevicePlan.resolve(section, environment: env)
        } throws: { error in
            "\(error)".contains("cannot read the loader cache")
        }
    }

    @Test("extra devices by path and by number; standard nodes and non-devices are refused")
    func extraDevices() throws {
        let fake = try FakeDriver()
        defer { fake.remove() }
        var section = DevicesSection()
        section.allow = [.path("/dev/fuse")]
        let byPath = try DevicePlan.resolve(section, environment: fake.environment)
        #expect(byPath.mounts == [.init(kind: .deviceNode, source: fake.environment.devRoot + "/fuse", target: "/dev/fuse")])
        #expect(byPath.rules.contains(DeviceRule(major: 10, minor: 229)))
        section.allow = [.number(major: 10, minor: 229)]
        #expect(try DevicePlan.resolve(section, environment: fake.environment).mounts == byPath.mounts)

        for (selector, message) in [
            (DevicesSection.DeviceSelector.path("/dev/zero"), "part of the jail's own /dev"),
            (.path("/dev/missing"), "does not exist on this host"),
            (.number(major: 10, minor: 1), "no character device 10:1"),
        ] {
            section.allow = [selector]
            #expect {
                _ = try DevicePlan.resolve(section, environment: fake.environment)
            } throws: { error in
                "\(error)".contains(message)
            }
        }
        // On the real host: a regular file is not a device.
        var real = DeviceEnvironment()
        real.devRoot = fake.tree.root
        section.allow = [.path("/dev/ld.so.cache")]
        #expect {
            _ = try DevicePlan.resolve(section, environment: real)
        } throws: { error in
            "\(error)".contains("is not a device node")
        }
    }

    @Test("a block device cannot be granted", .enabled(if: firstBlockDevice() != nil, "needs a block device node under /dev"))
    func blockDevice() throws {
        let name = try #require(firstBlockDevice())
        var section = DevicesSection()
        section.allow = [.path("/dev/" + name)]
        #expect {
            _ = try DevicePlan.resolve(section)
        } throws: { error in
            "\(error)".contains("is a block device")
        }
    }

    @Test("real device numbers: /dev/null is 1:3, found again by number")
    func realNumbers() throws {
        var section = DevicesSection()
        section.allow = [.number(major: 1, minor: 11)] // /dev/kmsg
        if FileManager.default.fileExists(atPath: "/dev/kmsg") {
            let plan = try DevicePlan.resolve(section)
            #expect(plan.mounts.map(\.target) == ["/dev/kmsg"])
        }
        var st = stat()
        #expect(stat("/dev/null", &st) == 0)
        #expect(DeviceNumber(rdev: UInt64(st.st_rdev)) == DeviceNumber(major: 1, minor: 3))
    }
}

func firstBlockDevice() -> String? {
    for name in (try? FileManager.default.contentsOfDirectory(atPath: "/dev"))?.sorted() ?? [] {
        var st = stat()
        if stat("/dev/" + name, &st) == 0 && st.st_mode & S_IFMT == S_IFBLK { return name }
    }
    return nil
}

@Suite("The loader cache")
struct LoaderCacheTests {
    @Test("the host's /etc/ld.so.cache reads as ldconfig -p prints it", .enabled(if: FileManager.default.fileExists(atPath: "/etc/ld.so.cache"), "needs /etc/ld.so.cache (glibc's loader cache) on the host"))
    func matchesLdconfig() throws {
        let cache = try LoaderCache.load(path: "/etc/ld.so.cache")
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/sbin/ldconfig")
        process.arguments = ["-p"]
        let pipe = Pipe()
        process.standardOutput = pipe
        try process.run()
        let text = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        // "\tlibz.so.1 (libc6,x86-64) => /lib/x86_64-linux-gnu/libz.so.1"
        var expected: [String] = []
        for line in text.split(separator: "\n").dropFirst() {
            guard let arrow = line.range(of: " => "), let paren = line.range(of: " (") else { continue }
            expected.append(line[..<paren.lowerBound].trimmingCharacters(in: .whitespaces) + " " + line[arrow.upperBound...])
        }
        #expect(!expected.isEmpty)
        #expect(cache.entries.map { "\($0.name) \($0.path)" } == expected)
        #expect(cache.native.contains { $0.name == "libc.so.6" })
    }

    @Test("garbage and truncation are refused with a reason")
    func corrupt() throws {
        #expect(throws: DeviceError.self) { try LoaderCache(bytes: Array("not a cache at all, really".utf8)) }
        var good = LoaderCache.encode([.init(name: "libx.so.1", path: "/x/libx.so.1", flags: 0x0303)])
        #expect(try LoaderCache(bytes: good).entries.map(\.path) == ["/x/libx.so.1"])
        good.removeLast(20)
        #expect(throws: DeviceError.self) { try LoaderCache(bytes: good) }
        var lying = LoaderCache.encode([])
        lying[20] = 0xff // a count the file cannot hold
        #expect(throws: DeviceError.self) { try LoaderCache(bytes: lying) }
    }
}
