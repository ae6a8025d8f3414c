#if canImport(Glibc)
import Glibc
#endif

/// Where device discovery looks: the host's /dev, /proc and loader cache,
/// or a fake driver tree in a directory (tests).
///
/// Paths that discovery reports are the host's real paths (what the jail
/// binds from); jail-side paths are always `/dev/...` and `/proc/...`.
public struct DeviceEnvironment: Sendable {
    /// The directory that stands for `/dev`.
    public var devRoot: String
    /// The directory that stands for `/proc`.
    public var procRoot: String
    /// The loader cache (`/etc/ld.so.cache` format).
    public var ldCache: String
    /// Device numbers by host path, for fake trees whose "nodes" are plain
    /// files; nil means `stat` the real node.
    public var deviceNumbers: [String: DeviceNumber]?

    public init(devRoot: String = "/dev", procRoot: String = "/proc", ldCache: String = "/etc/ld.so.cache",
                deviceNumbers: [String: DeviceNumber]? = nil) {
        self.devRoot = devRoot
        self.procRoot = procRoot
        self.ldCache = ldCache
        self.deviceNumbers = deviceNumbers
    }

    /// The running host.
    public static let host = DeviceEnvironment()

    /// What is at a path, for discovery.
    enum Node: Equatable {
        case missing
        case char(DeviceNumber)
        case block(DeviceNumber)
        /// Anything else (a file, a directory, a socket).
        case other
    }

    /// The node at host path `path` (symlinks followed, as open() would).
    func node(at path: String) -> Node {
        if let table = deviceNumbers {
            if let n = table[path] { return .char(n) }
            return access(path, F_OK) == 0 ? .other : .missing
        }
        var st = stat()
        guard stat(path, &st) == 0 else { return .missing }
        switch st.st_mode & S_IFMT {
        case S_IFCHR: return .char(DeviceNumber(rdev: UInt64(st.st_rdev)))
        case S_IFBLK: return .block(DeviceNumber(rdev: UInt64(st.st_rdev)))
        default: return .other
        }
    }

    /// `/dev/nvidia0` -> `<devRoot>/nvidia0`.
    func hostDevPath(_ jailPath: String) -> String {
        devRoot + jailPath.dropFirst("/dev".count)
    }

    /// `<devRoot>/nvidia0` -> `/dev/nvidia0`.
    func jailDevPath(_ hostPath: String) -> String {
        "/dev" + hostPath.dropFirst(devRoot.count)
    }

    func hostProcPath(_ jailPath: String) -> String {
        procRoot + jailPath.dropFirst("/proc".count)
    }

    /// Names in a directory (no `.`/`..`), sorted; empty when it is missing.
    func list(_ dir: String) -> [String] {
        guard let d = opendir(dir) else { return [] }
        defer { closedir(d) }
        var names: [String] = []
        while let entry = readdir(d) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names.sorted()
    }

    func isDirectory(_ path: String) -> Bool {
        var st = stat()
        return stat(path, &st) == 0 && st.st_mode & S_IFMT == S_IFDIR
    }

    func exists(_ path: String) -> Bool { access(path, F_OK) == 0 }

    func read(_ path: String) -> String? {
        guard let f = fopen(path, "re") else { return nil }
        defer { fclose(f) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = fread(&chunk, 1, chunk.count, f)
            if n <= 0 { break }
            bytes += chunk[0..<n]
            if bytes.count > 1 << 20 { break }
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    func readBytes(_ path: String, limit: Int = 64 << 20) -> [UInt8]? {
        guard let f = fopen(path, "re") else { return nil }
        defer { fclose(f) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while bytes.count < limit {
            let n = fread(&chunk, 1, chunk.count, f)
            if n <= 0 { break }
            bytes += chunk[0..<n]
        }
        return bytes
    }

    /// The path with every symlink resolved, or nil when it does not exist.
    func realPath(_ path: String) -> String? {
        guard let p = realpath(path, nil) else { return nil }
        defer { free(p) }
        return String(cString: p)
    }
}
