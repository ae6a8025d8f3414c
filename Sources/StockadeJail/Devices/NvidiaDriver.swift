import StockadeConfig
/// What the NVIDIA driver exposes on a host: its device nodes, its /proc
/// tree and its user-space libraries. Discovery reads the same places the
/// NVIDIA container tooling does, from a ``DeviceEnvironment`` root:
///
/// - `<dev>/nvidiactl` (the control node, 195:255), `<dev>/nvidia<N>` (one
///   per GPU, 195:N), `<dev>/nvidia-uvm` and `<dev>/nvidia-uvm-tools`
///   (unified memory and its profiling node, a dynamic major);
/// - `<proc>/driver/nvidia/gpus/<PCI bus id>/information`, whose
///   `Device Minor:` line ties a GPU (in PCI bus order) to its node and
///   whose `GPU UUID:` line names it;
/// - the loader cache's `libcuda.so*`, `libcudadebugger.so*` and
///   `libnvidia-*.so*` entries, or the same names in a given directory.
public struct NvidiaDriver: Sendable, Equatable {
    public struct GPU: Sendable, Equatable {
        /// Position in PCI bus order: what `gpus = ["0"]` means.
        public var index: Int
        /// `0000:01:00.0`; empty when the driver's /proc tree is missing.
        public var busID: String
        /// The minor number: the node is `/dev/nvidia<minor>`.
        public var minor: UInt32
        /// `GPU-...`, when the driver shows it.
        public var uuid: String?
        /// The host's node for this GPU.
        public var node: String
    }

    public var gpus: [GPU]
    /// Host paths of the shared nodes.
    public var control: String
    public var uvm: String?
    public var uvmTools: String?
    /// The host's `<proc>/driver/nvidia`, when present.
    public var procDirectory: String?

    /// Finds the driver, or says why there is none.
    public static func discover(_ env: DeviceEnvironment) throws(DeviceError) -> NvidiaDriver {
        let control = env.devRoot + "/nvidiactl"
        guard env.node(at: control) != .missing else {
            let loaded = env.exists(env.procRoot + "/driver/nvidia")
            let why = loaded
                ? "the driver is loaded (\(env.procRoot)/driver/nvidia exists) but its nodes were not created: run nvidia-modprobe, or nvidia-smi once as root"
                : "is the NVIDIA kernel driver installed and loaded? (lsmod | grep nvidia)"
            throw DeviceError("no NVIDIA GPU found: \(control) missing; \(why)")
        }
        guard case .char = env.node(at: control) else {
            throw DeviceError("no NVIDIA GPU found: \(control) is not a character device")
        }

        // Nodes /dev/nvidia<N>, by minor.
        var nodes: [UInt32: String] = [:]
        for name in env.list(env.devRoot) where name.hasPrefix("nvidia") {
            let digits = name.dropFirst("nvidia".count)
            guard !digits.isEmpty, digits.allSatisfy({ $0.isASCII && $0.isNumber }) else { continue }
            let path = env.devRoot + "/" + name
            if case .char(let number) = env.node(at: path) {
                nodes[number.minor] = path
            }
        }

        // The GPUs in PCI bus order, from the driver's /proc tree.
        var gpus: [GPU] = []
        let procDir = env.procRoot + "/driver/nvidia"
        let gpuDir = procDir + "/gpus"
        for busID in env.list(gpuDir) {
            let info = env.read(gpuDir + "/" + busID + "/information") ?? ""
            let fields = Self.fields(info)
            guard let minorText = fields["Device Minor"], let minor = UInt32(minorText) else { continue }
            guard let node = nodes[minor] else {
                throw DeviceError("NVIDIA GPU \(busID) has device minor \(minor), but \(env.devRoot)/nvidia\(minor) is missing; run nvidia-modprobe -c=\(minor)")
            }
            let uuid = fields["GPU UUID"].flatMap { Self.isUUID($0) ? $0 : nil }
            gpus.append(GPU(index: gpus.count, busID: busID, minor: minor, uuid: uuid, node: node))
        }
        if gpus.isEmpty {
            // No /proc tree (or an unreadable one): the nodes, by minor.
            for (i, minor) in nodes.keys.sorted().enumerated() {
                gpus.append(GPU(index: i, busID: "", minor: minor, uuid: nil, node: nodes[minor]!))
            }
        }
        guard !gpus.isEmpty else {
            throw DeviceError("no NVIDIA GPU found: \(control) exists but there is no \(env.devRoot)/nvidia<N> node and no GPU under \(gpuDir)")
        }

        func charNode(_ name: String) -> String? {
            let path = env.devRoot + "/" + name
            if case .char = env.node(at: path) { return path }
            return nil
        }
        return NvidiaDriver(gpus: gpus, control: control, uvm: charNode("nvidia-uvm"), uvmTools: charNode("nvidia-uvm-tools"),
                            procDirectory: env.isDirectory(procDir) ? procDir : nil)
    }

    /// The GPUs a profile's selection names, or why it cannot have them.
    public func select(_ selection: DevicesSection.GPUSelection) throws(DeviceError) -> [GPU] {
        switch selection {
        case .none: return []
        case .all: return gpus
        case .some(let wanted):
            var result: [GPU] = []
            for w in wanted {
                let match: GPU?
                if let i = Int(w) {
                    match = gpus.first { $0.index == i }
                } else {
                    match = gpus.first { $0.uuid?.lowercased() == w.lowercased() }
                }
                guard let gpu = match else {
                    throw DeviceError("GPU \(w) was asked for, but this host has \(gpus.count) NVIDIA GPU\(gpus.count == 1 ? "" : "s"): \(inventory)")
                }
                if !result.contains(gpu) { result.append(gpu) }
            }
            return result
        }
    }

    /// `0 (0000:01:00.0, GPU-...), 1 (...)`, for messages.
    public var inventory: String {
        gpus.map { g in
            let details = [g.busID, g.uuid ?? ""].filter { !$0.isEmpty }
            return details.isEmpty ? "\(g.index)" : "\(g.index) (\(details.joined(separator: ", ")))"
        }.joined(separator: ", ")
    }

    /// `Key: value` lines of a /proc information file.
    static func fields(_ text: String) -> [String: String] {
        var result: [String: String] = [:]
        for line in text.split(separator: "\n") {
            guard let colon = line.firstIndex(of: ":") else { continue }
            let key = line[..<colon].trimmingCharacters(in: " \t")
            let value = line[line.index(after: colon)...].trimmingCharacters(in: " \t")
            if result[key] == nil { result[key] = value }
        }
        return result
    }

    /// `GPU-` and hex digits with dashes (the driver shows `GPU-????...`
    /// to readers it does not trust; those are no use).
    static func isUUID(_ s: String) -> Bool {
        s.hasPrefix("GPU-") && s.count > 8 && s.dropFirst(4).allSatisfy { $0.isHexDigit || $0 == "-" }
    }

    /// Names of the driver's user-space libraries that a CUDA program loads.
    static func isDriverLibrary(_ name: String) -> Bool {
        for prefix in ["libcuda.so", "libcudadebugger.so", "libnvidia-"] where name.hasPrefix(prefix) {
            return prefix != "libnvidia-" || name.contains(".so")
        }
        return false
    }

    /// The driver's libraries: (the name the loader looks for, the host file).
    static func libraries(_ source: DevicesSection.DriverLibraries, env: DeviceEnvironment) throws(DeviceError) -> [(name: String, path: String)] {
        switch source {
        case .none:
            return []
        case .loaderCache:
            let cache = try LoaderCache.load(path: env.ldCache)
            var seen = Set<String>()
            var result: [(String, String)] = []
            for e in cache.native where isDriverLibrary(e.name) && seen.insert(e.path).inserted {
                result.append((e.name, e.path))
            }
            guard result.contains(where: { $0.0.hasPrefix("libcuda.so") }) else {
                throw DeviceError("the NVIDIA driver's libcuda.so is not in the loader cache \(env.ldCache); run ldconfig, or give its directory in [devices] driver_libraries")
            }
            return result
        case .directory(let dir):
            let names = env.list(dir).filter(isDriverLibrary)
            guard names.contains(where: { $0.hasPrefix("libcuda.so") }) else {
                throw DeviceError("no libcuda.so* in \(dir) ([devices] driver_libraries); point it at the NVIDIA driver's library directory")
            }
            return names.map { ($0, dir + "/" + $0) }
        }
    }
}
