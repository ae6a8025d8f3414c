/// What a profile's `[devices]` turns into for one launch on this host: the
/// nodes and files to bind into the jail, the /proc paths to show or hide,
/// the environment, and the allowlist the kernel enforces.
///
/// Made by ``resolve(_:profileMounts:environment:)`` in the parent before
/// clone; the spawn plan (`SpawnPlan.plan(devices:)`) turns ``mounts``
/// into entries of the child's mount list (after the built-in /dev and
/// /proc, after the profile's own mounts, host sources resolved like binds) and
/// ``environment`` to the worker's, and hands its cgroup to
/// ``enforce(on:)`` (see there) before the child is released.
public struct DevicePlan: Sendable, Equatable {
    /// One step for the child's mount list. Paths are absolute; `target` is
    /// inside the jail, `source` on the host (symlink: the link text).
    public struct Mount: Sendable, Equatable, CustomStringConvertible {
        public enum Kind: String, Sendable {
            /// Bind host device node `source` at `target`, usable (not nodev),
            /// writable, nosuid, noexec: `STK_MOUNT_DEVNODE`.
            case deviceNode
            /// Bind host file `source` at `target` read-only: `STK_MOUNT_BIND`.
            case readOnlyBind
            /// A symlink at `target` whose text is `source`: `STK_MOUNT_SYMLINK`.
            case symlink
            /// Hide `target` (a /proc entry): `STK_MOUNT_MASK` with /dev/null.
            case mask
            /// Make the mount at `target` read-only: `STK_MOUNT_RO`.
            case readOnly
        }
        public var kind: Kind
        public var source: String?
        public var target: String

        public init(kind: Kind, source: String?, target: String) {
            self.kind = kind
            self.source = source
            self.target = target
        }

        public var description: String {
            "\(kind.rawValue) \(source.map { "\($0) -> " } ?? "")\(target)"
        }
    }

    public struct Variable: Sendable, Equatable {
        public var name: String
        public var value: String
    }

    /// What the kernel lets the jail open (char devices, read and write).
    public var rules: [DeviceRule]
    public var mounts: [Mount]
    /// Entries of the launcher's built-in /proc masks that this plan
    /// replaces with finer ones (`/proc/driver` when a GPU's driver tree
    /// must stay visible: the plan masks every other entry under it).
    public var unmaskedProc: [String]
    public var environment: [Variable]
    /// The GPUs granted, in the order the jail numbers them.
    public var gpus: [NvidiaDriver.GPU]

    public init(rules: [DeviceRule], mounts: [Mount] = [], unmaskedProc: [String] = [], environment: [Variable] = [],
                gpus: [NvidiaDriver.GPU] = []) {
        self.rules = rules
        self.mounts = mounts
        self.unmaskedProc = unmaskedProc
        self.environment = environment
        self.gpus = gpus
    }

    /// The host files this plan binds read-only (the driver libraries), as
    /// binds for the Landlock plan: the loader maps them executable, so
    /// they need `execute read_file` where the profile's rules do not
    /// already cover them (`LandlockPlan(profile:extraMounts:)`).
    public var landlockMounts: [MountSpec] {
        mounts.filter { $0.kind == .readOnlyBind }.map { MountSpec(kind: .bind, source: $0.source, target: $0.target) }
    }

    /// The rules for every standard node of the jail's own /dev.
    public static var standardRules: [DeviceRule] {
        DevicesSection.StandardNode.allCases.flatMap(\.rules)
    }

    /// Names under /dev that the jail's own /dev already has.
    static let builtIn: Set<String> = ["null", "zero", "full", "random", "urandom", "tty", "pts", "ptmx", "shm", "fd",
                                      "stdin", "stdout", "stderr"]

    /// Resolves the profile's `[devices]` for one launch: `extraMounts` are
    /// the launch's own binds (`--ro-bind`), counted with the profile's when
    /// deciding which driver libraries still need binding.
    public static func resolve(for profile: Profile, extraMounts: [MountSpec] = [],
                               environment env: DeviceEnvironment = .host) throws(DeviceError) -> DevicePlan {
        let grants = !profile.devices.allow.isEmpty || profile.devices.gpus != .none
        if grants && !profile.filesystem.dev {
            throw DeviceError("\(profile.file): [devices] grants device nodes, which live in the jail's own /dev; remove [filesystem] dev = false")
        }
        if profile.devices.gpus != .none && !profile.filesystem.proc {
            throw DeviceError("\(profile.file): [devices] gpus needs the jail's /proc (the driver reads /proc/driver/nvidia); remove [filesystem] proc = false")
        }
        return try resolve(profile.devices, profileMounts: profile.mounts + extraMounts, environment: env)
    }

    /// Resolves the section on this host (or the fake tree `environment`).
    /// `profileMounts` are the profile's own mounts: driver libraries they
    /// already show in the jail are not bound again.
    public static func resolve(_ section: DevicesSection, profileMounts: [MountSpec] = [],
                               environment env: DeviceEnvironment = .host) throws(DeviceError) -> DevicePlan {
        var plan = DevicePlan(rules: section.standard.flatMap(\.rules))

        func grant(_ jailPath: String, host: String, why: String) throws(DeviceError) {
            switch env.node(at: host) {
            case .char(let n):
                plan.addNode(host: host, jail: jailPath, number: n)
            case .block:
                throw DeviceError("\(why): \(jailPath) is a block device; only character devices can be granted")
            case .missing:
                throw DeviceError("\(why): \(jailPath) does not exist on this host (\(host))")
            case .other:
                throw DeviceError("\(why): \(host) is not a device node")
            }
        }

        for selector in section.allow {
            let why = "[devices] allow \"\(selector)\""
            switch selector {
            case .path(let path):
                var host = env.hostDevPath(path)
                // The child binds from the host tree without following links.
                if env.deviceNumbers == nil, let real = env.realPath(host) { host = real }
                let first = path.dropFirst("/dev/".count).split(separator: "/").first.map(String.init) ?? ""
                if builtIn.contains(first) {
                    throw DeviceError("\(why): /dev/\(first) is part of the jail's own /dev; list it in [devices] standard instead")
                }
                try grant(path, host: host, why: why)
            case .number(let major, let minor):
                guard let host = findNode(DeviceNumber(major: major, minor: minor), in: env) else {
                    throw DeviceError("\(why): no character device \(major):\(minor) under \(env.devRoot)")
                }
                let jailPath = env.jailDevPath(host)
                let first = jailPath.dropFirst("/dev/".count).split(separator: "/").first.map(String.init) ?? ""
                if builtIn.contains(first) {
                    throw DeviceError("\(why): that is \(jailPath), part of the jail's own /dev; list it in [devices] standard instead")
                }
                try grant(jailPath, host: host, why: why)
            }
        }

        if section.gpus != .none {
            try plan.addNvidia(section, profileMounts: profileMounts, env: env)
        }
        return plan
    }

    /// Adds one device node and its rule (once).
    mutating func addNode(host: String, jail: String, number: DeviceNumber) {
        let rule = DeviceRule(major: number.major, minor: number.minor)
        if !rules.contains(where: { $0.permits(major: number.major, minor: number.minor) }) { rules.append(rule) }
        if !mounts.contains(where: { $0.target == jail }) {
            mounts.append(Mount(kind: .deviceNode, source: host, target: jail))
        }
    }

    private mutating func addNvidia(_ section: DevicesSection, profileMounts: [MountSpec], env: DeviceEnvironment) throws(DeviceError) {
        let driver = try NvidiaDriver.discover(env)
        let selected = try driver.select(section.gpus)
        gpus = selected
        func nodeNumber(_ host: String) throws(DeviceError) -> DeviceNumber {
            guard case .char(let n) = env.node(at: host) else {
                throw DeviceError("NVIDIA device \(host) is not a character device")
            }
            return n
        }

        // The control node, one node per granted GPU, unified memory.
        addNode(host: driver.control, jail: "/dev/nvidiactl", number: try nodeNumber(driver.control))
        for g in selected {
            addNode(host: g.node, jail: env.jailDevPath(g.node), number: try nodeNumber(g.node))
        }
        guard let uvm = driver.uvm else {
            throw DeviceError("NVIDIA unified memory is not available: \(env.devRoot)/nvidia-uvm missing; load it with nvidia-modprobe -u -c=0 (CUDA cannot start without it)")
        }
        addNode(host: uvm, jail: "/dev/nvidia-uvm", number: try nodeNumber(uvm))
        if section.nvidiaUVMTools {
            guard let tools = driver.uvmTools else {
                throw DeviceError("[devices] nvidia_uvm_tools: \(env.devRoot)/nvidia-uvm-tools missing; load it with nvidia-modprobe -u -c=0")
            }
            addNode(host: tools, jail: "/dev/nvidia-uvm-tools", number: try nodeNumber(tools))
        }

        // /proc/driver: only the NVIDIA tree, read-only, with the GPUs the
        // jail was not given hidden.
        if driver.procDirectory != nil {
            unmaskedProc.append("/proc/driver")
            for entry in env.list(env.procRoot + "/driver") where entry != "nvidia" {
                mounts.append(Mount(kind: .mask, source: nil, target: "/proc/driver/" + entry))
            }
            mounts.append(Mount(kind: .readOnly, source: nil, target: "/proc/driver/nvidia"))
            for g in driver.gpus where !g.busID.isEmpty && !selected.contains(g) {
                mounts.append(Mount(kind: .mask, source: nil, target: "/proc/driver/nvidia/gpus/" + g.busID))
            }
        }

        // The jail numbers its GPUs from 0; UUIDs say which ones without
        // depending on the order the driver enumerates them.
        let visible = selected.allSatisfy { $0.uuid != nil }
            ? selected.map { $0.uuid! }.joined(separator: ",")
            : selected.indices.map(String.init).joined(separator: ",")
        environment.append(Variable(name: "CUDA_VISIBLE_DEVICES", value: visible))
        environment.append(Variable(name: "CUDA_DEVICE_ORDER", value: "PCI_BUS_ID"))

        // The driver's user-space libraries, read-only, where the profile
        // does not already show them.
        let covered = Coverage(profileMounts)
        var bound = Set<String>()
        for (name, path) in try NvidiaDriver.libraries(section.driverLibraries, env: env) {
            guard let real = env.realPath(path) else {
                throw DeviceError("the NVIDIA driver library \(name) is listed at \(path), which does not exist; run ldconfig")
            }
            if !covered.contains(real) && bound.insert(real).inserted {
                mounts.append(Mount(kind: .readOnlyBind, source: real, target: real))
            }
            if path != real && !covered.contains(path) && bound.insert(path).inserted {
                let sameDir = Self.directory(of: path) == Self.directory(of: real)
                mounts.append(Mount(kind: .symlink, source: sameDir ? Self.base(of: real) : real, target: path))
            }
        }
    }

    /// The host char device with `number`, under the dev root or one level below.
    static func findNode(_ number: DeviceNumber, in env: DeviceEnvironment) -> String? {
        var dirs = [env.devRoot]
        var index = 0
        while index < dirs.count {
            let dir = dirs[index]
            index += 1
            for name in env.list(dir) {
                let path = dir + "/" + name
                if case .char(let n) = env.node(at: path), n == number { return path }
                if index == 1 && env.isDirectory(path) && !["pts", "shm", "fd", "mqueue", "hugepages"].contains(name) {
                    dirs.append(path)
                }
            }
        }
        return nil
    }

    static func directory(of path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return "." }
        return slash == path.startIndex ? "/" : String(path[..<slash])
    }

    static func base(of path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return path }
        return String(path[path.index(after: slash)...])
    }

    /// Which jail paths the profile's own mounts already show as the host's
    /// same files: binds whose target is their source, seen through the
    /// profile's relative symlinks (`/lib` -> `usr/lib`).
    struct Coverage {
        var binds: [String] = []
        var links: [(String, String)] = []

        init(_ mounts: [MountSpec]) {
            for m in mounts {
                switch m.kind {
                case .bind where (m.source ?? m.target) == m.target:
                    binds.append(m.target)
                case .symlink:
                    if let text = m.source {
                        let resolved = text.hasPrefix("/") ? text : DevicePlan.directory(of: m.target) + "/" + text
                        links.append((m.target, resolved.replacing("//", with: "/")))
                    }
                default:
                    break
                }
            }
        }

        func contains(_ path: String) -> Bool {
            var p = path
            for (link, to) in links where p.hasPrefix(link + "/") {
                p = to + p.dropFirst(link.count)
                break
            }
            return binds.contains { p.hasPrefix($0 + "/") || p == $0 }
        }
    }
}
