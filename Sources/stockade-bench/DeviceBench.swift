// `stockade-bench devices`: what the device allowlist costs. Setting it up
// (assembling and loading the cgroup v2 program, attaching it; making a v1
// devices cgroup) happens once per jail; the program then runs on every
// open() of a device node, so open+close of /dev/null is timed with and
// without it. Needs root and a cgroup2 mount for the v2 numbers, the v1
// devices controller for the v1 number.
import StockadeCgroups
import StockadeJail
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// A bare cgroup v2 leaf the bench moves itself into.
private final class BenchCgroup: JailCgroup {
    let path: String
    let fd: FileDescriptor
    init?(under mount: String) {
        path = mount + "/stockade-bench-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        guard mkdir(path, 0o755) == 0, let fd = try? FileDescriptor.open(path, .readOnly, options: [.directory, .closeOnExec]) else { return nil }
        self.fd = fd
    }
    var directory: FileDescriptor? { fd }
    func attach(pid: Int32) throws {}
    func kill() throws {}
    func usage() throws -> CgroupUsage { CgroupUsage() }
    func remove() throws { try? fd.close(); rmdir(path) }
}

private func nowNanos() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}

private func median(_ xs: [Double]) -> Double {
    let s = xs.sorted()
    return s[s.count / 2]
}

/// ns per open+close of /dev/null, median of `rounds` rounds.
private func openCloseNanos(rounds: Int = 15, per: Int = 20_000) -> Double {
    var samples: [Double] = []
    for _ in 0..<rounds {
        let t0 = nowNanos()
        for _ in 0..<per {
            let fd = open("/dev/null", O_RDONLY | O_CLOEXEC)
            close(fd)
        }
        samples.append(Double(nowNanos() - t0) / Double(per))
    }
    return median(samples)
}

private func moveSelf(to dir: String) -> Bool {
    let fd = open(dir + "/cgroup.procs", O_WRONLY | O_CLOEXEC)
    guard fd >= 0 else { return false }
    defer { close(fd) }
    let text = Array("\(getpid())".utf8)
    return write(fd, text, text.count) == text.count
}

private func cgroupMount(_ fstype: String, option: String? = nil) -> String? {
    guard let f = fopen("/proc/self/mountinfo", "re") else { return nil }
    defer { fclose(f) }
    var line: UnsafeMutablePointer<CChar>? = nil
    var cap = 0
    defer { free(line) }
    while getline(&line, &cap, f) > 0 {
        let fields = String(cString: line!).split(whereSeparator: { $0 == " " || $0 == "\n" })
        guard let dash = fields.firstIndex(of: "-"), dash + 3 < fields.count, fields[dash + 1] == fstype else { continue }
        if let option, !fields[dash + 3].split(separator: ",").contains(Substring(option)) { continue }
        return String(fields[4])
    }
    return nil
}

func deviceBench() throws {
    print("== devices: the device allowlist")
    let standard = DevicePlan.standardRules
    let program = DeviceProgram(rules: standard)
    print("program: \(standard.count) rules (the standard /dev), \(program.instructions.count) instructions")
    guard getuid() == 0 else {
        print("skipped: loading cgroup device programs and writing devices.* need root")
        return
    }

    var loads: [Double] = []
    for _ in 0..<50 {
        let t0 = nowNanos()
        let loaded = try program.load()
        loads.append(Double(nowNanos() - t0) / 1000)
        _ = loaded
    }
    print(String(format: "load (assemble + verify) : %8.1f µs median of 50", median(loads)))

    if let mount = cgroupMount("cgroup2") {
        var attaches: [Double] = []
        for _ in 0..<20 {
            guard let leaf = BenchCgroup(under: mount) else { break }
            let t0 = nowNanos()
            _ = try DevicePlan(rules: standard).enforce(on: leaf)
            attaches.append(Double(nowNanos() - t0) / 1000)
            try leaf.remove()
        }
        if !attaches.isEmpty {
            print(String(format: "v2 load + attach per jail : %8.1f µs median of %d", median(attaches), attaches.count))
        }
        // open() cost: this process in a bare leaf, then in a leaf with the program.
        var ownV2 = "/"
        if let f = fopen("/proc/self/cgroup", "re") {
            var line: UnsafeMutablePointer<CChar>? = nil
            var cap = 0
            while getline(&line, &cap, f) > 0 {
                let s = String(cString: line!).trimmingCharacters(in: .newlines)
                if s.hasPrefix("0::") { ownV2 = String(s.dropFirst(3)) }
            }
            free(line)
            fclose(f)
        }
        if let bare = BenchCgroup(under: mount), let guarded = BenchCgroup(under: mount) {
            _ = try DevicePlan(rules: standard).enforce(on: guarded)
            let home = ownV2 == "/" ? mount : mount + ownV2
            var without: [Double] = [], with: [Double] = []
            for _ in 0..<9 {
                if moveSelf(to: bare.path) { without.append(openCloseNanos()) }
                if moveSelf(to: guarded.path) { with.append(openCloseNanos()) }
            }
            _ = moveSelf(to: home)
            try bare.remove()
            try guarded.remove()
            if !without.isEmpty && !with.isEmpty {
                let a = median(without), b = median(with)
                print(String(format: "open+close /dev/null     : %8.1f ns bare cgroup, %8.1f ns with the program (+%.1f ns)", a, b, b - a))
            }
        }
    } else {
        print("no cgroup2 mount: v2 numbers skipped")
    }

    if cgroupMount("cgroup", option: "devices") != nil {
        var setups: [Double] = []
        for _ in 0..<20 {
            let t0 = nowNanos()
            let group = try DevicePlan(rules: standard).enforce(on: nil)
            setups.append(Double(nowNanos() - t0) / 1000)
            try group.remove()
        }
        print(String(format: "v1 devices cgroup setup  : %8.1f µs median of 20 (mkdir, deny a, %d allow lines)", median(setups), standard.count))
    }
}

extension String {
    fileprivate func trimmingCharacters(in set: Set<Character>) -> String {
        var s = Substring(self)
        while let l = s.last, set.contains(l) { s = s.dropLast() }
        return String(s)
    }
}

extension Set where Element == Character {
    fileprivate static var newlines: Set<Character> { ["\n", "\r"] }
}
