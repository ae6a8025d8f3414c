public import Foundation
import StockadeSystem
public import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// What `stockade-runtime` keeps of one container under `--root`: written
/// by root, read back by the next command. Everything here is the runtime's
/// own record; nothing in it comes from the container.
public struct ContainerRecord: Codable, Sendable {
    public var id: String
    public var bundle: String
    public var rootfs: String
    /// PID 1 of the container (stockade-init) as the host sees it.
    public var pid: Int32
    /// Its start time (field 22 of /proc/PID/stat), so that a reused pid
    /// is never taken for the container.
    public var pidStartTime: UInt64
    public var created: String
    public var annotations: [String: String]
    public var owner: String
    /// "cgroupfs" or "systemd": how cgroupsPath was read at create, so that
    /// later commands find the cgroup whatever flags they are given.
    public var cgroupDriver: String
    /// The container's cgroup, relative to the hierarchy's root ("/a/b").
    public var cgroupPath: String
    /// The host id range of the container's own user namespace, if any.
    public var hostIDs: String?
    public var ociVersion: String
    /// The kinds of hooks config.json had at create ("poststart",
    /// "poststop"), so that start and delete read it again only for them;
    /// nil (a record written before this field): read it.
    public var hooks: [String]? = nil
    /// The poststart and poststop hooks CDI devices added at create (not
    /// in config.json, which start and delete read).
    public var cdiHooks: Spec.Hooks? = nil

    /// Whether config.json must be read again for `kind` hooks.
    func mayHave(hooks kind: String) -> Bool { hooks?.contains(kind) ?? true }
}

/// The state directory (`--root`): one directory per container, each
/// opened by fd beneath the root's fd with no symlink followed. The root
/// must belong to the caller and be writable by nobody else; a container
/// never sees it (it is no mount of any container).
public final class StateStore: Sendable {
    public let path: String
    let fd: FileDescriptor

    public init(root: String) throws(RuntimeError) {
        path = root
        guard root.hasPrefix("/") else { throw RuntimeError("--root \(root): must be an absolute path") }
        // Create the missing components (as runc does), each 0700.
        var built = ""
        for part in root.split(separator: "/") {
            built += "/" + part
            if mkdir(built, 0o700) != 0 && errno != EEXIST {
                throw RuntimeError("--root \(root): mkdir \(built): \(errnoName(errno))")
            }
        }
        let raw = Glibc.open(root, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        guard raw >= 0 else { throw RuntimeError("--root \(root): open: \(errnoName(errno))") }
        var st = stat()
        fstat(raw, &st)
        guard st.st_uid == geteuid(), st.st_mode & 0o022 == 0 else {
            close(raw)
            throw RuntimeError("--root \(root): must belong to uid \(geteuid()) and be writable by no one else (owner \(st.st_uid), mode \(String(st.st_mode & 0o7777, radix: 8)))")
        }
        fd = FileDescriptor(rawValue: raw)
    }

    deinit { try? fd.close() }

    /// runc's rule for container ids: letters, digits, `_ + - .`, not `.` or `..`.
    public static func checkID(_ id: String) throws(RuntimeError) {
        let allowed = id.utf8.allSatisfy { c in
            (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5A) || (c >= 0x61 && c <= 0x7A) || c == 0x5F || c == 0x2B || c == 0x2D || c == 0x2E
        }
        guard !id.isEmpty, allowed, id != ".", id != "..", id.utf8.count <= 1024 else {
            throw RuntimeError("invalid id format: \(id)")
        }
    }

    /// A new container's directory; fails when the id is taken.
    public func create(_ id: String) throws(RuntimeError) -> FileDescriptor {
        try Self.checkID(id)
        if mkdirat(fd.rawValue, id, 0o700) != 0 {
            if errno == EEXIST { throw RuntimeError("container with id exists: \(id)") }
            throw RuntimeError("mkdir \(path)/\(id): \(errnoName(errno))")
        }
        return try open(id)!
    }

    /// The container's directory, or nil when there is none.
    public func open(_ id: String) throws(RuntimeError) -> FileDescriptor? {
        try Self.checkID(id)
        let raw = openat(fd.rawValue, id, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        if raw < 0 {
            if errno == ENOENT { return nil }
            throw RuntimeError("open \(path)/\(id): \(errnoName(errno))")
        }
        return FileDescriptor(rawValue: raw)
    }

    /// Ids of every container in the store.
    public func ids() -> [String] {
        guard let dir = fdopendir(dup(fd.rawValue)) else { return [] }
        defer { closedir(dir) }
        rewinddir(dir)
        var result: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if name != "." && name != ".." && (try? Self.checkID(name)) != nil { result.append(name) }
        }
        return result.sorted()
    }

    /// Removes a container's directory and what is in it.
    public func remove(_ id: String) {
        if let dir = try? open(id) {
            for name in ["state.json", "exec.fifo", "state.json.tmp"] { unlinkat(dir.rawValue, name, 0) }
            // Device nodes made for a container without a user namespace of its own.
            for name in (try? FileManager.default.contentsOfDirectory(atPath: path + "/" + id)) ?? [] where name.hasPrefix("dev-") {
                unlinkat(dir.rawValue, name, 0)
            }
            try? dir.close()
        }
        unlinkat(fd.rawValue, id, AT_REMOVEDIR)
    }

    // MARK: files inside a container's directory

    /// Writes `name` by rename from a temporary file: a reader sees the old
    /// document or the new one, never half of one.
    public static func write(_ data: Data, _ name: String, in dir: FileDescriptor) throws(RuntimeError) {
        let tmp = name + ".tmp"
        unlinkat(dir.rawValue, tmp, 0)
        let raw = openat(dir.rawValue, tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
        guard raw >= 0 else { throw RuntimeError("write \(name): \(errnoName(errno))") }
        let file = FileDescriptor(rawValue: raw)
        defer { try? file.close() }
        do {
            _ = try file.writeAll(data)
        } catch {
            throw RuntimeError("write \(name): \(error)")
        }
        guard renameat(dir.rawValue, tmp, dir.rawValue, name) == 0 else {
            throw RuntimeError("rename \(name): \(errnoName(errno))")
        }
    }

    public static func read(_ name: String, in dir: FileDescriptor) throws(RuntimeError) -> Data {
        let raw = openat(dir.rawValue, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC)
        guard raw >= 0 else { throw RuntimeError("read \(name): \(errnoName(errno))") }
        let file = FileDescriptor(rawValue: raw)
        defer { try? file.close() }
        var data = Data()
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = (try? buffer.withUnsafeMutableBytes { try file.read(into: $0) }) ?? 0
            if n <= 0 { break }
            data.append(contentsOf: buffer[..<n])
        }
        return data
    }

    public func record(_ id: String) throws(RuntimeError) -> (ContainerRecord, FileDescriptor)? {
        guard let dir = try open(id) else { return nil }
        let data: Data
        do {
            data = try Self.read("state.json", in: dir)
        } catch {
            // A directory without a record: a create that did not finish.
            try? dir.close()
            return nil
        }
        do {
            return (try JSONDecoder().decode(ContainerRecord.self, from: data), dir)
        } catch {
            try? dir.close()
            throw RuntimeError("\(path)/\(id)/state.json is damaged: \(error)")
        }
    }

    /// Holds an exclusive lock on the container's directory while `body` runs.
    public static func locked<T>(_ dir: FileDescriptor, _ body: () throws -> T) rethrows -> T {
        while flock(dir.rawValue, LOCK_EX) != 0 && errno == EINTR {}
        defer { flock(dir.rawValue, LOCK_UN) }
        return try body()
    }
}

/// An error of the runtime, worded as runc words it where containerd's shim
/// matches the text.
public struct RuntimeError: Error, CustomStringConvertible, Sendable {
    public var description: String
    public init(_ description: String) { self.description = description }
}
