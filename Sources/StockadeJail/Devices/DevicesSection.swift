import CStockadeSpawn
package import StockadeConfig
/// The profile's `[devices]`: which device nodes a jail sees and may open.
///
/// ```toml
/// [devices]
/// # The nodes of the jail's own minimal /dev that the kernel lets it open
/// # (all of them by default; a node left out stays in /dev but open()
/// # fails with EPERM).
/// standard = ["null", "zero", "full", "random", "urandom", "tty", "pts"]
/// # More character devices, bound from the host into the jail's /dev: by
/// # path, or by number ("c 10:229" or "10:229": the host node with that number).
/// allow = ["/dev/fuse"]
/// # NVIDIA GPUs: "all", or indexes in PCI bus order / UUIDs.
/// gpus = ["0"]
/// nvidia_uvm_tools = false              # the profiling node; off unless asked
/// driver_libraries = "ldcache"          # or "none", or a directory
/// ```
///
/// Every other device is absent from the jail, and the kernel refuses to
/// open any device outside this list even where a node for it exists: a
/// cgroup v2 device program, or `devices.deny`/`devices.allow` on cgroup v1
/// (see ``DevicePlan``).
///
/// Keys are read in `init(reading:)`; any key it does not read is rejected
/// by the profile parser as unknown.
public struct DevicesSection: Sendable, Equatable {
    /// The nodes of the jail's own /dev that may be opened.
    public var standard: [StandardNode] = StandardNode.allCases
    /// Extra host character devices.
    public var allow: [DeviceSelector] = []
    /// NVIDIA GPUs the jail gets.
    public var gpus: GPUSelection = .none
    /// Grant `/dev/nvidia-uvm-tools` (CUDA profiling) as well.
    public var nvidiaUVMTools = false
    /// Where the NVIDIA user-space driver libraries come from.
    public var driverLibraries: DriverLibraries = .loaderCache
    /// True when the profile has a `[devices]` section at all.
    public var declared = false

    /// The host nodes the trampoline binds into every jail's /dev, as it
    /// lists them (`stk_dev_node`).
    public static let jailDevNodes: [String] = {
        var nodes: [String] = []
        while let name = stk_dev_node(Int32(nodes.count)) { nodes.append(String(cString: name)) }
        return nodes
    }()

    /// The nodes every jail's /dev has (the C trampoline builds them; a test
    /// holds this list to ``jailDevNodes``), with their device numbers.
    public enum StandardNode: String, Sendable, CaseIterable, Equatable {
        case null, zero, full, random, urandom, tty
        /// `/dev/ptmx` and the jail's own `/dev/pts/*`.
        case pts

        /// The kernel's numbers for the node (pts: ptmx and the Unix98 slaves).
        var rules: [DeviceRule] {
            switch self {
            case .null: return [.char(1, 3)]
            case .zero: return [.char(1, 5)]
            case .full: return [.char(1, 7)]
            case .random: return [.char(1, 8)]
            case .urandom: return [.char(1, 9)]
            case .tty: return [.char(5, 0)]
            // ptmx is 5:2; pty slaves use majors 136-143 (UNIX98_PTY_MAJOR_COUNT).
            case .pts: return [.char(5, 2)] + (136...143).map { DeviceRule(major: UInt32($0), minor: nil) }
            }
        }
    }

    /// How a profile names an extra device.
    public enum DeviceSelector: Sendable, Equatable, CustomStringConvertible {
        /// A node under /dev, by its path.
        case path(String)
        /// The host node with this number (found by scanning /dev).
        case number(major: UInt32, minor: UInt32)

        public var description: String {
            switch self {
            case .path(let p): return p
            case .number(let major, let minor): return "c \(major):\(minor)"
            }
        }
    }

    public enum GPUSelection: Sendable, Equatable {
        case none
        case all
        /// Indexes in PCI bus order ("0") or UUIDs ("GPU-8f2a...").
        case some([String])
    }

    public enum DriverLibraries: Sendable, Equatable {
        /// The libraries the loader cache (`/etc/ld.so.cache`) lists.
        case loaderCache
        /// The libraries in this directory.
        case directory(String)
        /// None: the profile binds them itself.
        case none
    }

    public init() {}

    package init(reading table: TableReader) throws(ProfileError) {
        declared = true
        if let list = try table.strings("standard") {
            var seen: [StandardNode] = []
            for (i, name) in list.enumerated() {
                guard let node = StandardNode(rawValue: name) else {
                    let known = StandardNode.allCases.map(\.rawValue).joined(separator: ", ")
                    throw table.error("standard", "entry \(i): \"\(name)\" is not one of the jail's standard nodes (\(known)); other devices go in allow")
                }
                if !seen.contains(node) { seen.append(node) }
            }
            standard = seen
        }
        for (i, text) in (try table.strings("allow") ?? []).enumerated() {
            do {
                let selector = try Self.selector(parsing: text)
                if !allow.contains(selector) { allow.append(selector) }
            } catch {
                throw table.error("allow", "entry \(i): \(error.message)")
            }
        }
        if table.has("gpus") {
            gpus = try Self.readGPUs(table)
        }
        if let tools = try table.bool("nvidia_uvm_tools") {
            guard !tools || gpus != .none else {
                throw table.error("nvidia_uvm_tools", "needs gpus: the profiling node is useless without a GPU")
            }
            nvidiaUVMTools = tools
        }
        if let libs = try table.string("driver_libraries") {
            switch libs {
            case "ldcache": driverLibraries = .loaderCache
            case "none": driverLibraries = .none
            default:
                guard Profile.isCleanAbsolute(libs) else {
                    throw table.error("driver_libraries", "use \"ldcache\", \"none\", or an absolute directory without '..'")
                }
                driverLibraries = .directory(libs)
            }
        }
    }

    private static func readGPUs(_ table: TableReader) throws(ProfileError) -> GPUSelection {
        let hint = "use \"all\" or a list of GPU indexes (PCI bus order) or UUIDs, such as [\"0\"] or [\"GPU-8f2a...\"]"
        if let one = try? table.string("gpus") {
            guard one == "all" else { throw table.error("gpus", "\"\(one)\" is not a GPU list; \(hint)") }
            return .all
        }
        let list: [String]
        do {
            list = try table.strings("gpus") ?? []
        } catch {
            throw table.error("gpus", hint)
        }
        var result: [String] = []
        for (i, g) in list.enumerated() {
            if g == "all" { return .all }
            let isIndex = !g.isEmpty && g.allSatisfy { $0.isASCII && $0.isNumber } && g.count <= 4
            let isUUID = g.hasPrefix("GPU-") && g.count > 4 && g.dropFirst(4).allSatisfy { $0.isHexDigit || $0 == "-" }
            guard isIndex || isUUID else {
                throw table.error("gpus", "entry \(i): \"\(g)\" is neither a GPU index nor a GPU-UUID; \(hint)")
            }
            if !result.contains(g) { result.append(g) }
        }
        return result.isEmpty ? .none : .some(result)
    }

    struct SelectorError: Error {
        var message: String
    }

    /// `/dev/fuse`, `c 10:229` or `10:229`.
    static func selector(parsing text: String) throws(SelectorError) -> DeviceSelector {
        if text.hasPrefix("/") {
            guard Profile.isCleanAbsolute(text), text.hasPrefix("/dev/"), text.count > 5 else {
                throw SelectorError(message: "\"\(text)\" must be a path under /dev without '..'")
            }
            return .path(text)
        }
        var rest = Substring(text)
        if rest.hasPrefix("b ") {
            throw SelectorError(message: "\"\(text)\" is a block device; only character devices can be granted")
        }
        if rest.hasPrefix("c ") { rest = rest.dropFirst(2) }
        let parts = rest.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 2, let major = UInt32(parts[0]), let minor = UInt32(parts[1]),
              major < 4096, minor < 1 << 20 else {
            throw SelectorError(message: "cannot read \"\(text)\" as a device: use a path under /dev, or \"c MAJOR:MINOR\" (such as \"c 10:229\")")
        }
        return .number(major: major, minor: minor)
    }
}
