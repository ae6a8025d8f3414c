import Foundation
import SystemPackage
import StockadeSystem
public import StockadeJail
public import StockadeCgroups
#if canImport(Glibc)
import Glibc
#endif

/// `linux.devices` and `linux.resources.devices` onto Stockade's device
/// allowlist: the nodes are the host's, bound (a container in a user
/// namespace of its own cannot mknod) after a check by fd that the host's
/// node is the character device the spec names; the rules become the
/// allowlist the kernel enforces on the container's cgroup (the eBPF device
/// program on cgroup v2, `devices.deny`/`devices.allow` in the container's
/// devices cgroup on v1). Block devices and "every device" are never granted.
public enum SpecDevices {
    /// The device plan for a container, or nil when the spec has neither
    /// `linux.devices` nor `linux.resources.devices` (no allowlist then,
    /// as before: the container has only Stockade's harmless /dev nodes).
    ///
    /// `mknodIn`: the container has no user namespace of its own, so its
    /// `linux.devices` nodes are made with mknod (by number, with the
    /// spec's `fileMode`, `uid`, `gid`) in this directory of the runtime's
    /// and bound from there; nil (the default, a container in its own user
    /// namespace, where the kernel refuses mknod): the host's node is bound.
    public static func plan(_ spec: Spec, mknodIn: MknodPlace? = nil) throws -> DevicePlan? {
        let devices = spec.linux?.devices ?? []
        let rules = spec.linux?.resources?.devices
        guard !devices.isEmpty || rules != nil else { return nil }
        var allowed = DevicePlan.standardRules
        for rule in try allowlist(rules ?? []) where !allowed.contains(where: { $0.major == rule.major && $0.minor == rule.minor }) {
            allowed.append(rule)
        }
        var mounts: [DevicePlan.Mount] = []
        for (i, d) in devices.enumerated() {
            let (mount, rule) = try node(d, index: i, mknodIn: d.hostPath == nil ? mknodIn : nil)
            if let mount { mounts.append(mount) }
            // A node is allowed read-write unless a rule of the spec names
            // its number: then the rules decide (read-only, or denied).
            let named = (rules ?? []).contains { r in
                (r.type == "c" || r.type == "u") && r.major.map { $0 == Int64(rule.major) } == true
                    && (r.minor == nil || r.minor! < 0 || r.minor == Int64(rule.minor ?? 0))
            }
            if !named && !allowed.contains(where: { $0.permits(major: rule.major, minor: rule.minor ?? 0) }) {
                allowed.append(rule)
            }
        }
        return DevicePlan(rules: allowed, mounts: mounts)
    }

    /// `linux.resources.devices` in order (a later rule overrides an earlier
    /// one for the devices and access it names) as an allowlist of
    /// character devices, each read-write, read-only or write-only.
    static func allowlist(_ rules: [Spec.Resources.DeviceRule]) throws -> [DeviceRule] {
        var allowed: [DeviceRule] = []
        for (i, r) in rules.enumerated() {
            let field = "config.json linux.resources.devices[\(i)]"
            let type = r.type ?? "a"
            guard ["a", "c", "u", "b", "p"].contains(type) else { throw SpecError("\(field).type: unknown device type \"\(type)\"") }
            let letters = r.access ?? "rwm"
            guard !letters.isEmpty, letters.allSatisfy({ "rwm".contains($0) }) else {
                throw SpecError("\(field).access: \"\(letters)\" is not a subset of \"rwm\"")
            }
            // mknod ("m") is never granted: no container in its own user namespace can mknod.
            var access: DeviceRule.Access = []
            if letters.contains("r") { access.insert(.read) }
            if letters.contains("w") { access.insert(.write) }
            let major = (r.major ?? -1) < 0 ? nil : UInt32(clamping: r.major!)
            let minor = (r.minor ?? -1) < 0 ? nil : UInt32(clamping: r.minor!)
            if !r.allow {
                guard !access.isEmpty else { continue }
                // What the denial covers loses the access it names.
                func covered(_ rule: DeviceRule) -> Bool {
                    if type == "a" || ((type == "c" || type == "u") && major == nil) { return true }
                    guard type == "c" || type == "u", let major, rule.major == major else { return false }
                    return minor == nil || rule.minor == minor
                }
                if let major, let minor, allowed.contains(where: { $0.major == major && $0.minor == nil }) {
                    throw SpecError("\(field): denying c \(major):\(minor) inside an earlier allow of c \(major):* is not supported (the device allowlist has no exceptions)")
                }
                allowed = allowed.compactMap { rule in
                    guard covered(rule) else { return rule }
                    var left = rule
                    left.access.subtract(access)
                    return left.access.isEmpty ? nil : left
                }
                continue
            }
            guard !access.isEmpty else { continue }
            switch type {
            case "b": throw SpecError("\(field): block devices are not granted to Stockade containers")
            case "p": continue
            case "a": throw SpecError("\(field): allowing every device is not granted to Stockade containers; allow character devices by major (and minor)")
            default: break
            }
            guard let major else {
                throw SpecError("\(field): allowing every character device is not granted to Stockade containers; name a major")
            }
            if let j = allowed.firstIndex(where: { $0.major == major && $0.minor == minor }) {
                allowed[j].access.formUnion(access)
            } else {
                allowed.append(DeviceRule(major: major, minor: minor, access: access))
            }
        }
        return allowed
    }

    /// The plan for a container: the spec's (above), with the device
    /// grants of its `stockade.io/profile` (`[devices]`: nodes by path or
    /// number, NVIDIA GPUs with their driver files) added, whatever the
    /// spec's rules say; their environment goes to `request`, and the
    /// driver files they bind get read and execute in its Landlock domain.
    public static func plan(_ spec: Spec, mknodIn: MknodPlace?, profile: Profile, request: inout LaunchRequest) throws -> DevicePlan? {
        let fromSpec = try plan(spec, mknodIn: mknodIn)
        guard spec.annotations?[SpecJail.profileAnnotation] != nil, profile.devices.declared else { return fromSpec }
        let granted: DevicePlan
        do {
            granted = try DevicePlan.resolve(for: profile)
        } catch {
            throw SpecError("annotations[\"\(SpecJail.profileAnnotation)\"]: \(error)")
        }
        var merged = fromSpec ?? DevicePlan(rules: DevicePlan.standardRules)
        for rule in granted.rules where !merged.rules.contains(rule) { merged.rules.append(rule) }
        for m in granted.mounts where !merged.mounts.contains(where: { $0.target == m.target }) { merged.mounts.append(m) }
        merged.unmaskedProc += granted.unmaskedProc
        merged.environment += granted.environment
        merged.gpus += granted.gpus
        request.extraEnvironment += granted.environment.map { ($0.name, $0.value) }
        if var landlock = request.landlock {
            let handled = landlock.fsHandled & (LandlockPlan.FS.readFile | LandlockPlan.FS.execute)
            for m in granted.landlockMounts where !landlock.rules.contains(where: { $0.path == m.target }) {
                landlock.rules.append(.init(path: m.target, access: handled, optional: false))
            }
            request.landlock = landlock
        }
        return merged
    }

    /// Where a container's device nodes are made with mknod: its state
    /// directory, open as `dir` at `path`.
    public struct MknodPlace {
        public var dir: Int32
        public var path: String
        public init(dir: Int32, path: String) {
            self.dir = dir
            self.path = path
        }
    }

    /// One `linux.devices` entry: the host's node (at `hostPath` for a CDI
    /// device, else at the same path), checked by fd to be the character
    /// device the spec names, or a node made in `mknodIn`; nil mount for
    /// the nodes Stockade's /dev already has.
    static func node(_ d: Spec.Device, index i: Int, mknodIn: MknodPlace?) throws -> (DevicePlan.Mount?, DeviceRule) {
        let field = d.origin ?? "config.json linux.devices[\(i)] (\(d.path))"
        let host = d.hostPath ?? d.path
        let parts = d.path.split(separator: "/")
        guard d.path.hasPrefix("/"), !parts.isEmpty, !parts.contains(where: { $0 == "." || $0 == ".." }) else {
            throw SpecError("\(field).path: not an absolute path without . or ..")
        }
        switch d.type {
        case "c", "u": break
        case "b": throw SpecError("\(field): block devices are not granted to Stockade containers")
        case "p": throw SpecError("\(field): FIFOs are not supported as devices; make one in the rootfs")
        default: throw SpecError("\(field).type: unknown device type \"\(d.type)\"")
        }
        guard host.hasPrefix("/"), !host.split(separator: "/").contains(where: { $0 == "." || $0 == ".." }) else {
            throw SpecError("\(field): host path \(host) is not an absolute path without . or ..")
        }
        // A CDI device may leave the numbers to the host's node.
        let given = d.hostPath == nil || (d.major != nil && d.minor != nil)
        guard !given || (d.major.map { (0...0xFFF).contains($0) } == true && d.minor.map { (0...0xF_FFFF).contains($0) } == true) else {
            throw SpecError("\(field): major and minor must be given (0-4095, 0-1048575)")
        }
        if let place = mknodIn, let major = d.major, let minor = d.minor {
            return try made(d, major: UInt32(major), minor: UInt32(minor), name: "dev-\(i)", in: place, field: field)
        }
        // The host's node at this path, opened without following a link at its end.
        let fd = open(host, OpenFlags.path | O_NOFOLLOW | O_CLOEXEC)
        guard fd >= 0 else {
            throw SpecError("\(field): the host has no such node to bind (\(host): \(errnoName(errno))); a container in its own user namespace cannot mknod")
        }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw SpecError("\(field): fstat: \(errnoName(errno))") }
        guard st.st_mode & S_IFMT != S_IFLNK else {
            throw SpecError("\(field): the host's \(host) is a symlink; name the node itself")
        }
        guard st.st_mode & S_IFMT == S_IFCHR else {
            throw SpecError("\(field): the host's \(host) is not a character device")
        }
        let number = DeviceNumber(rdev: UInt64(st.st_rdev))
        if let major = d.major, let minor = d.minor {
            guard number.major == UInt32(major), number.minor == UInt32(minor) else {
                throw SpecError("\(field): the host's \(host) is c \(number), not c \(major):\(minor)")
            }
        }
        let rule = DeviceRule(major: number.major, minor: number.minor)
        let name = d.path.hasPrefix("/dev/") ? String(d.path.dropFirst(5)) : ""
        if DevicesSection.StandardNode(rawValue: name) != nil { return (nil, rule) }
        return (DevicePlan.Mount(kind: .deviceNode, source: host, target: d.path), rule)
    }

    /// A node made by number in the runtime's directory for the container,
    /// with the spec's mode (0666 when none is given) and owner, to be bound
    /// at its path; the host need not have it.
    static func made(_ d: Spec.Device, major: UInt32, minor: UInt32, name: String, in place: MknodPlace,
                     field: String) throws -> (DevicePlan.Mount?, DeviceRule) {
        let rule = DeviceRule(major: major, minor: minor)
        let short = d.path.hasPrefix("/dev/") ? String(d.path.dropFirst(5)) : ""
        if DevicesSection.StandardNode(rawValue: short) != nil { return (nil, rule) }
        let mode = (d.fileMode ?? 0o666) & 0o7777
        let number = dev_t(major & 0xfff) << 8 | dev_t(minor & 0xff) | dev_t(major & ~0xfff) << 32 | dev_t(minor & ~0xff) << 12
        unlinkat(place.dir, name, 0)
        guard mknodat(place.dir, name, S_IFCHR | 0o600, number) == 0 else {
            throw SpecError("\(field): mknod c \(major):\(minor): \(errnoName(errno))")
        }
        guard fchownat(place.dir, name, d.uid ?? 0, d.gid ?? 0, AT_SYMLINK_NOFOLLOW) == 0,
              fchmodat(place.dir, name, mode, 0) == 0 else {
            throw SpecError("\(field): set the owner \(d.uid ?? 0):\(d.gid ?? 0) and mode \(String(mode, radix: 8)): \(errnoName(errno))")
        }
        return (DevicePlan.Mount(kind: .deviceNode, source: place.path + "/" + name, target: d.path), rule)
    }

    /// Makes the kernel enforce `plan.rules` for the container: the device
    /// program on its cgroup v2 directory, or, on cgroup v1, its own
    /// devices cgroup at `path` (the container's cgroup path) with
    /// everything denied but the rules. Returns the cgroup to launch in.
    public static func enforce(_ plan: DevicePlan, on group: JailGroup, path: String) throws -> any JailCgroup {
        if group.directory != nil {
            do {
                return try plan.enforce(on: group)
            } catch {
                throw RuntimeError("linux.resources.devices: \(error)")
            }
        }
        guard let dir = devicesDirectory(path) else {
            throw RuntimeError("linux.resources.devices: the container's cgroup is not a cgroup v2 directory and no cgroup v1 devices hierarchy is mounted")
        }
        do {
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            // A new v1 devices cgroup copies its parent's list: start from nothing.
            try write(dir + "/devices.deny", "a")
            for rule in plan.rules { try write(dir + "/devices.allow", rule.v1Line) }
        } catch {
            rmdir(dir)
            throw RuntimeError("linux.resources.devices: \(dir): \(error)")
        }
        return DevicesV1Cgroup(inner: group, devices: dir)
    }

    /// `update` with `devices`: the container's allowlist becomes the one
    /// `create` would make with these rules (the standard nodes, its
    /// `linux.devices` and CDI nodes in `spec`, then the rules). cgroup v2: a
    /// new program replaces the old (both hold for a moment: only what both
    /// allow). v1: the new rules are allowed first, then what they no longer
    /// allow is denied, so no device the update keeps is refused meanwhile.
    public static func update(_ spec: Spec, rules: [Spec.Resources.DeviceRule], group: JailGroup, path: String) throws {
        var updated = spec
        var linux = updated.linux ?? Spec.Linux()
        var resources = linux.resources ?? Spec.Resources()
        resources.devices = rules
        linux.resources = resources
        updated.linux = linux
        guard let plan = try plan(updated) else { return }
        if let directory = group.directory {
            do {
                try DeviceProgram(rules: plan.rules).replace(on: directory, describing: path)
            } catch {
                throw RuntimeError("update: linux.resources.devices: \(error)")
            }
            return
        }
        guard let dir = devicesDirectory(path), access(dir + "/devices.list", F_OK) == 0 else {
            throw RuntimeError("update: linux.resources.devices: the container was created without a device allowlist (no devices cgroup \(path)); one cannot be added to a running container")
        }
        let before = (try? String(contentsOfFile: dir + "/devices.list", encoding: .utf8)) ?? ""
        do {
            for rule in plan.rules { try write(dir + "/devices.allow", rule.v1Line) }
            for line in before.split(separator: "\n") {
                let parts = line.split(separator: " ")
                guard parts.count == 3 else { continue }
                let key = parts[0] + " " + parts[1]
                let kept = plan.rules.first { "c \($0.major):\($0.minor.map(String.init) ?? "*")" == key }?.access.letters ?? ""
                let removed = parts[2].filter { !kept.contains($0) }
                if !removed.isEmpty { try write(dir + "/devices.deny", key + " " + removed) }
            }
        } catch {
            throw RuntimeError("update: linux.resources.devices: \(dir): \(error)")
        }
    }

    /// The container's cgroup in the v1 devices hierarchy, if one is mounted.
    public static func devicesDirectory(_ path: String) -> String? {
        let info = (try? String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8)) ?? ""
        for line in info.split(separator: "\n") {
            let fields = line.split(separator: " ")
            guard let dash = fields.firstIndex(of: "-"), dash + 3 < fields.count, fields[dash + 1] == "cgroup",
                  fields[dash + 3].split(separator: ",").contains("devices") else { continue }
            return String(fields[4]) + path
        }
        return nil
    }

    /// Removes the container's v1 devices cgroup (after its processes are gone).
    public static func removeV1(_ path: String) {
        guard let dir = devicesDirectory(path) else { return }
        for _ in 0..<100 where rmdir(dir) != 0 && errno == EBUSY { usleep(10_000) }
    }

    static func write(_ file: String, _ text: String) throws {
        let fd = open(file, O_WRONLY | O_CLOEXEC)
        guard fd >= 0 else { throw Errno(rawValue: errno) }
        defer { close(fd) }
        let bytes = Array(text.utf8)
        guard Glibc.write(fd, bytes, bytes.count) == bytes.count else { throw Errno(rawValue: errno) }
    }
}

/// A container's cgroup on a cgroup v1 host with its devices cgroup beside
/// it (at the same path in the devices hierarchy); the launcher attaches
/// the container's first process to both before it runs.
final class DevicesV1Cgroup: JailCgroup {
    let inner: JailGroup
    let devices: String

    init(inner: JailGroup, devices: String) {
        self.inner = inner
        self.devices = devices
    }

    var directory: FileDescriptor? { nil }

    func attach(pid: Int32) throws {
        do {
            try SpecDevices.write(devices + "/cgroup.procs", "\(pid)")
        } catch {
            throw RuntimeError("linux.resources.devices: place the container in \(devices): \(error)")
        }
        try inner.attach(pid: pid)
    }

    func kill() throws { try inner.kill() }
    func usage() throws -> CgroupUsage { try inner.usage() }
    func remove() throws {
        try inner.remove()
        rmdir(devices)
    }
}
