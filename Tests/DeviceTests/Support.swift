import Foundation
import StockadeCgroups
import StockadeJail
import StockadeSystem
import SystemPackage

/// The package root, found from this file's path.
let packageRoot: String = {
    var url = URL(fileURLWithPath: #filePath)
    for _ in 0..<3 { url.deleteLastPathComponent() }
    return url.path
}()

/// A shipped profile, with `edit` applied to its text first.
func shippedProfile(_ name: String, _ edit: (String) -> String = { $0 }) throws -> Profile {
    let text = try String(contentsOfFile: packageRoot + "/profiles/\(name).toml", encoding: .utf8)
    return try Profile.parse(text: edit(text), file: "\(name).toml")
}

/// The minimal profile with a `[devices]` section appended.
func minimalWithDevices(_ devices: String) throws -> Profile {
    try shippedProfile("minimal") { $0 + "\n[devices]\n" + devices + "\n" }
}

/// What a jailed command printed and how it ended.
struct JailRun {
    var exit: JailExit
    var stdout: String
    var lines: [String] { stdout.split(separator: "\n").map(String.init) }
}

/// Runs `command` in a jail from `profile` in `cgroup`, stdout and stderr
/// both captured through one pipe passed in as fds 1 and 2.
func runJailed(_ profile: Profile, _ command: [String], cgroup: (any JailCgroup)?) throws -> JailRun {
    let out = try PipeEnds.make()
    var request = LaunchRequest(profile: profile, command: command)
    request.passedFDs = [(out.write.rawValue, 1), (out.write.rawValue, 2)]
    request.cgroup = cgroup
    let jail: Jail
    do {
        jail = try Launcher.launch(request)
    } catch {
        try? out.read.close()
        try? out.write.close()
        throw error
    }
    try out.write.close()
    let box = Box()
    let done = DispatchSemaphore(value: 0)
    DispatchQueue.global().async {
        box.bytes = (try? out.read.readToEnd()) ?? []
        try? out.read.close()
        done.signal()
    }
    let exit = try jail.wait(timeLimit: .seconds(60))
    done.wait()
    return JailRun(exit: exit, stdout: String(decoding: box.bytes, as: UTF8.self))
}

final class Box: @unchecked Sendable {
    var bytes: [UInt8] = []
}

/// Shell lines that try to open each path for reading and print
/// `<path>: open`, `<path>: EPERM`, `<path>: EACCES`, `<path>: absent`.
func openScript(_ paths: [String]) -> String {
    paths.map { p in
        """
        if [ ! -e \(p) ]; then echo "\(p): absent"; \
        else msg=$( (exec 3<\(p)) 2>&1 ) && echo "\(p): open" || \
        case "$msg" in *"not permitted"*) echo "\(p): EPERM";; *"ermission denied"*) echo "\(p): EACCES";; *) echo "\(p): $msg";; esac; fi
        """
    }.joined(separator: "\n")
}

/// A fresh directory under /tmp, removed by `remove()`.
struct TempTree {
    let root: String

    init(_ label: String) throws {
        root = NSTemporaryDirectory() + "stockade-\(label)-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
    }

    func file(_ rel: String, _ text: String = "") throws {
        let path = root + "/" + rel
        try FileManager.default.createDirectory(atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        try text.write(toFile: path, atomically: false, encoding: .utf8)
    }

    func link(_ rel: String, to text: String) throws {
        try FileManager.default.createSymbolicLink(atPath: root + "/" + rel, withDestinationPath: text)
    }

    func remove() {
        try? FileManager.default.removeItem(atPath: root)
    }
}

/// A fake NVIDIA driver tree: two GPUs, the control and unified-memory
/// nodes (plain files with their numbers in a table, as a user namespace
/// cannot mknod), the driver's /proc tree and libraries, and a loader
/// cache that lists them. No GPU is needed; this is what the discovery
/// code reads on a real host.
struct FakeDriver {
    let tree: TempTree
    var environment: DeviceEnvironment
    var libDir: String { tree.root + "/usr/lib/nvidia" }
    let uuid0 = "GPU-11111111-2222-3333-4444-555555555555"
    let uuid1 = "GPU-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"

    init(gpus: Bool = true, uvm: Bool = true) throws {
        let t = try TempTree("fakedrv")
        let dev = t.root + "/dev"
        var numbers: [String: DeviceNumber] = [:]
        func node(_ name: String, _ major: UInt32, _ minor: UInt32) throws {
            try t.file("dev/" + name)
            numbers[dev + "/" + name] = DeviceNumber(major: major, minor: minor)
        }
        try FileManager.default.createDirectory(atPath: dev, withIntermediateDirectories: true)
        if gpus {
            try node("nvidiactl", 195, 255)
            try node("nvidia0", 195, 0)
            try node("nvidia1", 195, 1)
            try node("nvidia-modeset", 195, 254)
            if uvm {
                try node("nvidia-uvm", 511, 0)
                try node("nvidia-uvm-tools", 511, 1)
            }
            try t.file("proc/driver/nvidia/version", "NVRM version: fake\n")
            try t.file("proc/driver/nvidia/params", "ModifyDeviceFiles: 1\n")
            try t.file("proc/driver/nvidia/gpus/0000:01:00.0/information",
                          "Model: \t Fake GPU\nIRQ: 30\nGPU UUID: \t \(uuid0)\nBus Location: 0000:01:00.0\nDevice Minor: \t 0\n")
            try t.file("proc/driver/nvidia/gpus/0000:02:00.0/information",
                          "Model: \t Fake GPU\nIRQ: 31\nGPU UUID: \t \(uuid1)\nBus Location: 0000:02:00.0\nDevice Minor: \t 1\n")
        }
        try node("fuse", 10, 229)
        try t.file("proc/driver/rtc", "rtc_time: 00:00:00\n")

        // Libraries: real files with soname links, as the driver installs them.
        try t.file("usr/lib/nvidia/libcuda.so.550.54.15", "ELF")
        try t.link("usr/lib/nvidia/libcuda.so.1", to: "libcuda.so.550.54.15")
        try t.file("usr/lib/nvidia/libnvidia-ml.so.550.54.15", "ELF")
        try t.link("usr/lib/nvidia/libnvidia-ml.so.1", to: "libnvidia-ml.so.550.54.15")
        try t.file("usr/lib/nvidia/libnvidia-ptxjitcompiler.so.550.54.15", "ELF")
        try t.link("usr/lib/nvidia/libnvidia-ptxjitcompiler.so.1", to: "libnvidia-ptxjitcompiler.so.550.54.15")
        try t.file("usr/lib/other/libz.so.1", "ELF")
        try t.file("usr/lib/i386/libcuda.so.1", "ELF")
        let lib = t.root + "/usr/lib"
        let native: Int32 = 0x0303 // libc6, x86-64
        #if arch(arm64)
        let nativeFlags: Int32 = 0x0a03
        #else
        let nativeFlags: Int32 = native
        #endif
        let cache = LoaderCache.encode([
            .init(name: "libz.so.1", path: lib + "/other/libz.so.1", flags: nativeFlags),
            .init(name: "libnvidia-ptxjitcompiler.so.1", path: lib + "/nvidia/libnvidia-ptxjitcompiler.so.1", flags: nativeFlags),
            .init(name: "libnvidia-ml.so.1", path: lib + "/nvidia/libnvidia-ml.so.1", flags: nativeFlags),
            .init(name: "libcuda.so.1", path: lib + "/nvidia/libcuda.so.1", flags: nativeFlags),
            .init(name: "libcuda.so.1", path: lib + "/i386/libcuda.so.1", flags: 0x0003), // 32-bit: not ours
        ])
        try Data(cache).write(to: URL(fileURLWithPath: t.root + "/ld.so.cache"))
        tree = t
        environment = DeviceEnvironment(devRoot: dev, procRoot: t.root + "/proc", ldCache: t.root + "/ld.so.cache",
                                        deviceNumbers: numbers)
    }

    func remove() { tree.remove() }
}

/// A cgroup v2 leaf made directly in the cgroup2 mount, for hosts where
/// the cgroup manager serves jails from v1 (the hybrid layout of our build
/// machines): a device program works on any cgroup2 cgroup, whatever the
/// controllers, and the kernel checks it on every device open.
final class TestV2Cgroup: JailCgroup {
    let path: String
    let fd: FileDescriptor

    init(mount: String) throws {
        path = mount + "/stockade-devtest-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        guard mkdir(path, 0o755) == 0 else { throw Errno(rawValue: errno) }
        fd = try FileDescriptor.open(path, .readOnly, options: [.directory, .closeOnExec])
    }

    var directory: FileDescriptor? { fd }

    func attach(pid: Int32) throws {
        try "\(pid)".write(toFile: path + "/cgroup.procs", atomically: false, encoding: .utf8)
    }

    func kill() throws {
        if access(path + "/cgroup.kill", F_OK) == 0 {
            try "1".write(toFile: path + "/cgroup.kill", atomically: false, encoding: .utf8)
        }
    }

    func usage() throws -> CgroupUsage { CgroupUsage() }

    func remove() throws {
        try? fd.close()
        for _ in 0..<200 {
            if rmdir(path) == 0 || errno == ENOENT { return }
            usleep(10_000)
        }
        throw Errno(rawValue: errno)
    }
}

/// The cgroup2 mount point, if any (`/sys/fs/cgroup` or `/sys/fs/cgroup/unified`).
let cgroup2Mount: String? = {
    guard let info = try? String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8) else { return nil }
    for line in info.split(separator: "\n") {
        let f = line.split(separator: " ")
        if let dash = f.firstIndex(of: "-"), dash + 1 < f.count, f[dash + 1] == "cgroup2" { return String(f[4]) }
    }
    return nil
}()

/// The cgroup v1 devices hierarchy's mount point, if any.
let devicesV1Mount: String? = {
    guard let info = try? String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8) else { return nil }
    for line in info.split(separator: "\n") {
        let f = line.split(separator: " ")
        if let dash = f.firstIndex(of: "-"), dash + 3 < f.count, f[dash + 1] == "cgroup",
           f[dash + 3].split(separator: ",").contains("devices") { return String(f[4]) }
    }
    return nil
}()

let isRoot = getuid() == 0
