public import Foundation
import Yams
import StockadeSystem
import StockadeJail
#if canImport(Glibc)
import Glibc
#endif

/// Devices a container asks for through the Container Device Interface
/// (CDI): the vendor's specs in `/etc/cdi` and `/var/run/cdi` (the later
/// directory wins for a device both describe) describe each device by a
/// fully qualified name `vendor.com/class=name` and the edits it needs
/// (device nodes, mounts, environment, hooks, additional groups), plus
/// edits for every container that gets any device of that spec.
///
/// A container asks by the `cdi.k8s.io/<anything>` annotations (what
/// containerd passes on for a device plugin's CDI devices: names separated
/// by commas), or by the NVIDIA convention, `NVIDIA_VISIBLE_DEVICES` in
/// its environment (`0,1`, a UUID, `all` as `nvidia.com/gpu=<each>`, or
/// fully qualified names; `none`, `void` or empty: none). An image sets
/// that variable itself (CUDA images say `all`), so it is honoured only on
/// hosts that opt in with a root-owned ``allowNvidiaEnvFile``; elsewhere
/// it is ignored, as runc ignores it.
///
/// The edits become the container's spec: nodes its `linux.devices` (the
/// host's node at `hostPath`, checked by fd, bound at `path`) and allowed
/// in its device cgroup, mounts its `mounts`, hooks its `hooks`, so every
/// check those get applies. A device no spec describes, a spec file any
/// other user can write, and edits Stockade does not apply (`intelRdt`,
/// `netDevices`) are refused, naming the device and the file. Spec files
/// are JSON (`.json`) or YAML (`.yaml`, `.yml`), as the CDI tools write them.
/// A device whose nodes the spec already has (containerd with CDI enabled
/// injects devices itself and keeps the annotations) is not applied again.
public enum SpecCDI {
    public static let annotationPrefix = "cdi.k8s.io/"
    public static let nvidiaVariable = "NVIDIA_VISIBLE_DEVICES"

    /// The spec directories, lowest priority first (`STOCKADE_CDI_SPEC_DIRS`,
    /// colon-separated, replaces them).
    public static var specDirectories: [String] {
        if let dirs = getenv("STOCKADE_CDI_SPEC_DIRS") {
            return String(cString: dirs).split(separator: ":").map(String.init)
        }
        return ["/etc/cdi", "/var/run/cdi"]
    }

    /// A root-owned file whose presence makes the runtime honour
    /// `NVIDIA_VISIBLE_DEVICES` (`STOCKADE_OCI_ALLOW_NVIDIA_ENV` names another).
    public static var allowNvidiaEnvFile: String {
        getenv("STOCKADE_OCI_ALLOW_NVIDIA_ENV").map { String(cString: $0) } ?? "/etc/stockade/oci-allow-nvidia-visible-devices"
    }

    static var nvidiaEnvAllowed: Bool {
        var st = stat()
        return lstat(allowNvidiaEnvFile, &st) == 0 && st.st_uid == 0 && (st.st_mode & S_IFMT) == S_IFREG
    }

    // MARK: the spec format

    struct File: Decodable {
        var cdiVersion: String
        var kind: String
        var devices: [Device]
        var containerEdits: Edits?
    }

    struct Device: Decodable {
        var name: String
        var containerEdits: Edits?
    }

    struct Edits: Decodable {
        var env: [String]?
        var deviceNodes: [Node]?
        var hooks: [Hook]?
        var mounts: [Mount]?
        var additionalGids: [UInt32]?
        var intelRdt: Present?
        var netDevices: Present?
    }

    struct Node: Decodable {
        var path: String
        var hostPath: String?
        var type: String?
        var major: Int64?
        var minor: Int64?
        var fileMode: UInt32?
        var permissions: String?
        var uid: UInt32?
        var gid: UInt32?
    }

    struct Mount: Decodable {
        var hostPath: String
        var containerPath: String
        var options: [String]?
        var type: String?
    }

    struct Hook: Decodable {
        var hookName: String
        var path: String
        var args: [String]?
        var env: [String]?
        var timeout: Int?
    }

    /// Any JSON value: the edit is there, whatever it holds.
    struct Present: Decodable {
        init(from decoder: any Decoder) throws {}
    }

    // MARK: requests

    /// The devices `spec` asks for, each with what asked for it, in order, once.
    public static func requested(_ spec: Spec) throws -> [(name: String, by: String)] {
        var result: [(name: String, by: String)] = []
        func add(_ name: String, _ by: String) throws {
            guard qualified(name) != nil else {
                throw SpecError("\(by): \"\(name)\" is not a CDI device name (vendor.com/class=name)")
            }
            if !result.contains(where: { $0.name == name }) { result.append((name, by)) }
        }
        for key in (spec.annotations ?? [:]).keys.sorted() where key.hasPrefix(annotationPrefix) {
            let by = "config.json annotations[\"\(key)\"]"
            for part in spec.annotations![key]!.split(separator: ",") {
                let name = part.trimmingCharacters(in: .whitespaces)
                if !name.isEmpty { try add(name, by) }
            }
        }
        if let value = spec.process?.env?.last(where: { $0.hasPrefix(nvidiaVariable + "=") })?.dropFirst(nvidiaVariable.count + 1),
           !["", "none", "void"].contains(value), nvidiaEnvAllowed {
            for part in value.split(separator: ",") {
                let entry = part.trimmingCharacters(in: .whitespaces)
                guard !entry.isEmpty else { continue }
                try add(entry.contains("=") ? entry : "nvidia.com/gpu=" + entry, "config.json process.env \(nvidiaVariable)")
            }
        }
        return result
    }

    /// `vendor.com/class=name` split into kind and name; nil when malformed.
    static func qualified(_ name: String) -> (kind: String, device: String)? {
        guard let eq = name.firstIndex(of: "=") else { return nil }
        let kind = String(name[..<eq]), device = String(name[name.index(after: eq)...])
        let parts = kind.split(separator: "/", omittingEmptySubsequences: false)
        // Letters, digits, - _ . (and : in a device name: MIG devices are `0:1`).
        func ok(_ s: Substring, colon: Bool) -> Bool {
            !s.isEmpty && s.utf8.allSatisfy { c in
                (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5A) || (c >= 0x61 && c <= 0x7A) || c == 0x2D || c == 0x5F || c == 0x2E
                    || (colon && c == 0x3A)
            }
        }
        guard parts.count == 2, ok(parts[0], colon: false), ok(parts[1], colon: false), ok(Substring(device), colon: true) else {
            return nil
        }
        return (kind, device)
    }

    // MARK: loading

    struct Loaded {
        var file: File
        var path: String
    }

    /// Every spec of the directories, JSON or YAML, in name order (a later
    /// directory's device replaces an earlier one's of the same name).
    static func load(_ dirs: [String]) throws -> [Loaded] {
        var specs: [Loaded] = []
        for dir in dirs {
            let dfd = open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
            guard dfd >= 0 else { continue }
            defer { close(dfd) }
            try checkOwner(dfd, dir)
            let names = ((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []).sorted()
            for name in names {
                let path = dir + "/" + name
                let isYAML = name.hasSuffix(".yaml") || name.hasSuffix(".yml")
                guard isYAML || name.hasSuffix(".json") else { continue }
                let fd = openat(dfd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC)
                guard fd >= 0 else { throw SpecError("CDI spec \(path): open: \(errnoName(errno))") }
                let handle = FileHandle(fileDescriptor: fd, closeOnDealloc: true)
                try checkOwner(fd, path)
                let data = try handle.readToEnd() ?? Data()
                do {
                    let file = isYAML ? try YAMLDecoder().decode(File.self, from: data) : try JSONDecoder().decode(File.self, from: data)
                    specs.append(Loaded(file: file, path: path))
                } catch {
                    throw SpecError.decoding(error, file: "CDI spec \(path)", format: isYAML ? "YAML" : "JSON")
                }
            }
        }
        return specs
    }

    /// A spec grants host devices, mounts and hooks run as root: it must be
    /// root's (the runtime's user's) and writable by no one else, as its directory.
    static func checkOwner(_ fd: Int32, _ path: String) throws {
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw SpecError("CDI spec \(path): fstat: \(errnoName(errno))") }
        let kind = st.st_mode & S_IFMT
        guard kind == S_IFREG || kind == S_IFDIR else { throw SpecError("CDI spec \(path): not a regular file") }
        guard st.st_uid == geteuid(), st.st_mode & 0o022 == 0 else {
            throw SpecError("CDI spec \(path): must belong to uid \(geteuid()) and be writable by no one else (owner \(st.st_uid), mode \(String(st.st_mode & 0o7777, radix: 8)))")
        }
    }

    // MARK: applying

    /// What CDI added to a container: the device names, and the poststart
    /// and poststop hooks (kept in the container's record, since `start`
    /// and `delete` read config.json again, which lacks them).
    public struct Injected: Sendable {
        public var devices: [String] = []
        public var hooks: Spec.Hooks?
    }

    /// Resolves the devices `spec` asks for and applies their edits to it.
    @discardableResult
    public static func apply(_ spec: inout Spec, directories: [String] = specDirectories) throws -> Injected {
        let wanted = try requested(spec)
        var injected = Injected()
        guard !wanted.isEmpty else { return injected }
        let specs = try load(directories)
        var specsUsed: [Int] = []
        for (name, by) in wanted {
            let (kind, device) = qualified(name)!
            // The last directory's description wins; two in one directory conflict.
            let matches = specs.indices.filter { specs[$0].file.kind == kind && specs[$0].file.devices.contains { $0.name == device } }
            guard let index = matches.last else {
                let known = specs.filter { $0.file.kind == kind }.flatMap { $0.file.devices.map(\.name) }
                var why = "\(by): unknown CDI device \"\(name)\": no spec in \(directories.joined(separator: ", ")) describes it"
                why += known.isEmpty ? " (no spec of kind \(kind))" : " (\(kind) has \(known.joined(separator: ", ")))"
                throw SpecError(why)
            }
            let dir = specs[index].path.prefix(upTo: specs[index].path.lastIndex(of: "/")!)
            if let other = matches.dropLast().last(where: { specs[$0].path.hasPrefix(dir + "/") }) {
                throw SpecError("\(by): CDI device \"\(name)\" is described twice in \(dir): \(specs[other].path) and \(specs[index].path)")
            }
            let file = specs[index]
            let dev = file.file.devices.last { $0.name == device }!
            // containerd with CDI enabled injects the devices itself and
            // keeps the annotations: its edits are not applied twice.
            if let edits = dev.containerEdits, applied(edits, in: spec) { continue }
            if let edits = dev.containerEdits {
                try apply(edits, to: &spec, injected: &injected, origin: "CDI device \(name) (\(file.path))")
            }
            if !specsUsed.contains(index) { specsUsed.append(index) }
            injected.devices.append(name)
        }
        for index in specsUsed {
            if let edits = specs[index].file.containerEdits {
                try apply(edits, to: &spec, injected: &injected, origin: "CDI spec \(specs[index].path) containerEdits")
            }
        }
        return injected
    }

    /// Whether `spec` already has what `edits` adds: every device node's
    /// path (or, without nodes, every mount's destination, or every variable).
    static func applied(_ edits: Edits, in spec: Spec) -> Bool {
        if let nodes = edits.deviceNodes, !nodes.isEmpty {
            let paths = Set((spec.linux?.devices ?? []).map(\.path))
            return nodes.allSatisfy { paths.contains($0.path) }
        }
        if let mounts = edits.mounts, !mounts.isEmpty {
            let targets = Set((spec.mounts ?? []).map(\.destination))
            return mounts.allSatisfy { targets.contains($0.containerPath) }
        }
        if let env = edits.env, !env.isEmpty {
            let have = Set(spec.process?.env ?? [])
            return env.allSatisfy { have.contains($0) }
        }
        return false
    }

    /// A node's numbers: the spec's, or its host node's (nil: none there,
    /// which the node's own check reports).
    static func number(of n: Node, host: String) -> (Int64, Int64)? {
        if let major = n.major, let minor = n.minor { return (major, minor) }
        var st = stat()
        guard lstat(host, &st) == 0, st.st_mode & S_IFMT == S_IFCHR else { return nil }
        let number = DeviceNumber(rdev: UInt64(st.st_rdev))
        return (Int64(number.major), Int64(number.minor))
    }

    static func apply(_ edits: Edits, to spec: inout Spec, injected: inout Injected, origin: String) throws {
        if edits.intelRdt != nil { throw SpecError("\(origin): intelRdt is not supported by Stockade") }
        if edits.netDevices != nil { throw SpecError("\(origin): netDevices is not supported by Stockade") }
        for (i, entry) in (edits.env ?? []).enumerated() where !entry.contains("=") || entry.hasPrefix("=") {
            throw SpecError("\(origin): env[\(i)]: \"\(entry)\" is not NAME=VALUE")
        }
        if var process = spec.process {
            process.env = (process.env ?? []) + (edits.env ?? [])
            process.user.additionalGids = (process.user.additionalGids ?? []) + (edits.additionalGids ?? [])
            spec.process = process
        }
        var linux = spec.linux ?? Spec.Linux()
        for (i, n) in (edits.deviceNodes ?? []).enumerated() {
            let field = "\(origin): deviceNodes[\(i)] (\(n.path))"
            var d = Spec.Device(path: n.path, type: n.type ?? "c", major: n.major, minor: n.minor,
                                hostPath: n.hostPath ?? n.path, origin: field)
            d.fileMode = n.fileMode
            d.uid = n.uid
            d.gid = n.gid
            if let p = n.permissions, p.isEmpty || !p.allSatisfy({ "rwm".contains($0) }) {
                throw SpecError("\(field).permissions: \"\(p)\" is not a subset of \"rwm\"")
            }
            linux.devices = (linux.devices ?? []) + [d]
            // Permissions: a rule for the node's number (the host node's when
            // the spec gives none), so "r" makes it read-only.
            if let p = n.permissions, let (major, minor) = number(of: n, host: d.hostPath ?? d.path) {
                var resources = linux.resources ?? Spec.Resources()
                resources.devices = (resources.devices ?? []) + [Spec.Resources.DeviceRule(allow: true, type: "c", major: major, minor: minor, access: p)]
                linux.resources = resources
            }
        }
        spec.linux = linux
        for (i, m) in (edits.mounts ?? []).enumerated() {
            guard m.hostPath.hasPrefix("/"), m.containerPath.hasPrefix("/") else {
                throw SpecError("\(origin): mounts[\(i)]: hostPath and containerPath must be absolute")
            }
            spec.mounts = (spec.mounts ?? []) + [Spec.Mount(destination: m.containerPath, type: m.type ?? "bind",
                                                            source: m.hostPath, options: m.options ?? ["rbind"])]
        }
        var hooks = spec.hooks ?? Spec.Hooks()
        var late = injected.hooks ?? Spec.Hooks()
        for (i, h) in (edits.hooks ?? []).enumerated() {
            guard h.path.hasPrefix("/") else { throw SpecError("\(origin): hooks[\(i)].path: \(h.path) is not absolute") }
            let hook = Spec.Hook(path: h.path, args: h.args, env: h.env, timeout: h.timeout)
            switch h.hookName {
            case "prestart": hooks.prestart = (hooks.prestart ?? []) + [hook]
            case "createRuntime": hooks.createRuntime = (hooks.createRuntime ?? []) + [hook]
            case "createContainer": hooks.createContainer = (hooks.createContainer ?? []) + [hook]
            case "startContainer": hooks.startContainer = (hooks.startContainer ?? []) + [hook]
            case "poststart":
                hooks.poststart = (hooks.poststart ?? []) + [hook]
                late.poststart = (late.poststart ?? []) + [hook]
            case "poststop":
                hooks.poststop = (hooks.poststop ?? []) + [hook]
                late.poststop = (late.poststop ?? []) + [hook]
            default:
                throw SpecError("\(origin): hooks[\(i)].hookName: unknown \"\(h.hookName)\"")
            }
        }
        spec.hooks = hooks
        if late.poststart != nil || late.poststop != nil { injected.hooks = late }
    }
}
