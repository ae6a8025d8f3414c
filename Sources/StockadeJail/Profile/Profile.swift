public import StockadeConfig
public import StockadeSeccomp
public import StockadeCgroups
#if canImport(Glibc)
import Glibc
#endif
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// A jail profile: what the worker sees and may do. Parsed from TOML and
/// validated in full before anything is created; a mistake names the file,
/// the line and the key.
public struct Profile: Sendable {
    /// The file it came from (for messages) and its `[jail] name`.
    public var file: String
    public var name: String

    public var namespaces: Set<Namespace>
    public var hostname: String?
    public var cwd: String
    /// Wall-clock limit; the jail is killed when it runs out.
    public var timeLimit: Duration?
    /// `setsid()` in the jail, so it cannot reach the caller's terminal.
    public var newSession: Bool

    public var user: UserSpec
    public var filesystem: FilesystemSpec
    public var mounts: [MountSpec]
    public var environment: EnvironmentSpec
    public var rlimits: [RlimitSpec]
    /// Host fds passed into the jail under the same numbers.
    public var passFDs: [Int32]
    /// Those of `passFDs` that may be directories (`[fds] directories`); any
    /// other directory fd is refused at launch.
    public var passDirectories: Set<Int32> = []

    public var seccomp: SeccompSection
    public var landlock: LandlockSection
    public var limits: LimitsSection
    public var devices: DevicesSection
    /// `[denials]`: what a daemon does when a worker calls something denied.
    public var denials = DenialPolicy()

    public enum Namespace: String, Sendable, CaseIterable, Comparable {
        case user, pid, mount, net, ipc, uts, cgroup, time
        public static func < (a: Self, b: Self) -> Bool { a.rawValue < b.rawValue }
    }

    /// Inside ids and, for root launchers, where they land on the host.
    public struct UserSpec: Sendable, Equatable {
        public var uid: UInt32 = 1000
        public var gid: UInt32 = 1000
        /// Root launchers map inside id N to host id `hostBase + N`. Unset
        /// (the default), each jail gets a range of its own from the host id
        /// pool; set, the range must be clear of every account and
        /// subordinate-id range and of every live jail (checked at launch).
        /// Unprivileged launchers map the one id to themselves.
        public var hostBase: UInt32?
        /// The line of `host_base`, for messages.
        public var hostBaseLine: Int?
    }

    public struct FilesystemSpec: Sendable, Equatable {
        /// Size of the tmpfs that becomes `/`.
        public var rootSize: UInt64 = 16 << 20
        public var readonlyRoot = true
        public var proc = true
        public var dev = true
        /// Paths hidden in addition to the built-in /proc masks.
        public var masked: [String] = []
    }

    public struct EnvironmentSpec: Sendable, Equatable {
        /// Variables set in the jail, in order (the environment starts empty).
        public var set: [Pair] = []
        /// Names copied from the launcher's environment when present.
        public var pass: [String] = []

        public struct Pair: Sendable, Equatable {
            public var name: String
            public var value: String
            public init(name: String, value: String) {
                self.name = name
                self.value = value
            }
        }
    }
}

/// One entry of `[[mount]]`.
public struct MountSpec: Sendable, Equatable {
    public enum Kind: String, Sendable {
        case bind, tmpfs, symlink, dir
    }
    public var kind: Kind
    /// Host path (bind) or link text (symlink).
    public var source: String?
    /// Path inside the jail.
    public var target: String
    public var writable = false
    public var optional = false
    public var noexec = false
    /// Bind only: follow every symlink in `source` (by default only links
    /// root owns in directories only root can write are followed).
    public var followSymlinks = false
    /// tmpfs size in bytes.
    public var size: UInt64?
    public var mode: UInt32?

    public init(kind: Kind, source: String?, target: String, writable: Bool = false, optional: Bool = false,
                noexec: Bool = false, size: UInt64? = nil, mode: UInt32? = nil) {
        self.kind = kind
        self.source = source
        self.target = target
        self.writable = writable
        self.optional = optional
        self.noexec = noexec
        self.size = size
        self.mode = mode
    }
}

/// One resource limit (`setrlimit`); nil means unlimited.
public struct RlimitSpec: Sendable, Equatable {
    public var name: String
    public var resource: Int32
    public var soft: UInt64?
    public var hard: UInt64?

    public init(name: String, resource: Int32, soft: UInt64?, hard: UInt64?) {
        self.name = name
        self.resource = resource
        self.soft = soft
        self.hard = hard
    }

    /// The names a profile may use, and the resource each sets.
    public static let resources: [String: Int32] = [
        "as": 9, "core": 4, "cpu": 0, "data": 2, "fsize": 1, "locks": 10, "memlock": 8,
        "msgqueue": 12, "nice": 13, "nofile": 7, "nproc": 6, "rss": 5, "rtprio": 14,
        "rttime": 15, "sigpending": 11, "stack": 3,
    ]
}

extension Profile {
    /// Reads and validates a profile file.
    public static func load(path: String) throws(ProfileError) -> Profile {
        try checkOwnership(path: path)
        return try parse(text: TableReader.readText(path: path, what: "profile"), file: path)
    }

    /// A profile decides the jail's ids and binds, so only the caller and
    /// root may have written it: a profile writable by group or others, or
    /// in a directory others can write (without the sticky bit, so they
    /// could replace it), is refused; so is one owned by another user,
    /// unless the caller is root. Root-owned profiles are for everyone.
    static func checkOwnership(path: String, caller: uid_t = getuid()) throws(ProfileError) {
        func refuse(_ message: String) -> ProfileError {
            ProfileError(file: path, line: nil, key: "", message: message)
        }
        var st = stat()
        // A missing file is reported by the reader, with its own message.
        guard stat(path, &st) == 0 else { return }
        if st.st_mode & 0o022 != 0 {
            throw refuse("the profile is writable by \(st.st_mode & 0o002 != 0 ? "everyone" : "its group") "
                + "(mode \(String(st.st_mode & 0o7777, radix: 8))); whoever can write it decides what the jail may do. chmod go-w it")
        }
        if st.st_uid != caller && st.st_uid != 0 && caller != 0 {
            throw refuse("the profile is owned by uid \(st.st_uid), not by you (uid \(caller)) or root; "
                + "another user's profile decides what your jail may do. Copy it and use your copy")
        }
        // Every directory above it, on the path given and on the path to the
        // file itself: one others may write lets them swap the file.
        let given = path.hasPrefix("/") ? path : SpawnPlan.currentDirectory() + "/" + path
        var real: String?
        if let p = realpath(path, nil) {
            real = String(decoding: UnsafeRawBufferPointer(start: p, count: strlen(p)), as: UTF8.self)
            free(p)
        }
        for start in [given] + (real.map { [$0] } ?? []) {
            var dir = start
            while let slash = dir.lastIndex(of: "/") {
                dir = slash == dir.startIndex ? "/" : String(dir[..<slash])
                var d = stat()
                if stat(dir, &d) == 0, d.st_mode & 0o022 != 0, d.st_mode & UInt32(S_ISVTX) == 0 {
                    throw refuse("the profile lies in \(dir), which others may write (mode \(String(d.st_mode & 0o7777, radix: 8)), "
                        + "no sticky bit): they could replace it. Keep profiles in a directory only you or root can write")
                }
                if dir == "/" { break }
            }
        }
    }

    /// Parses and validates profile text; `file` names it in messages.
    public static func parse(text: String, file: String) throws(ProfileError) -> Profile {
        let root = try TableReader.parse(text: text, file: file)
        var profile = Profile(file: file)

        if let jail = try root.table("jail") {
            try profile.readJail(jail)
            try jail.finish()
        }
        if let user = try root.table("user") {
            profile.user.uid = UInt32(try user.int("uid", in: 0...65534) ?? 1000)
            profile.user.gid = UInt32(try user.int("gid", in: 0...65534) ?? 1000)
            if let base = try user.int("host_base", in: 1...(Int(UInt32.max) - 65536)) {
                profile.user.hostBase = UInt32(base)
                profile.user.hostBaseLine = user.error("host_base", "").line
            }
            try user.finish()
        }
        if let fs = try root.table("filesystem") {
            try profile.readFilesystem(fs)
            try fs.finish()
        }
        for entry in try root.tables("mount") {
            profile.mounts.append(try MountSpec.read(entry))
            try entry.finish()
        }
        if let env = try root.table("env") {
            try profile.readEnvironment(env)
            try env.finish()
        }
        if let rl = try root.table("rlimits") {
            profile.rlimits = try readRlimits(rl)
            try rl.finish()
        }
        if let fds = try root.table("fds") {
            for (i, fd) in (try fds.ints("pass") ?? []).enumerated() {
                guard (3...255).contains(fd) else {
                    throw fds.error("pass", "entry \(i): fd \(fd) cannot be passed (use 3...255; 0-2 are stdio)")
                }
                profile.passFDs.append(Int32(fd))
            }
            for (i, fd) in (try fds.ints("directories") ?? []).enumerated() {
                guard let n = Int32(exactly: fd), profile.passFDs.contains(n) else {
                    throw fds.error("directories", "entry \(i): fd \(fd) is not in [fds] pass")
                }
                profile.passDirectories.insert(n)
            }
            try fds.finish()
        }
        if let s = try root.table("seccomp") {
            profile.seccomp = try SeccompSection(reading: s)
            try s.finish()
        }
        if let l = try root.table("landlock") {
            profile.landlock = try LandlockSection(reading: l)
            try l.finish()
        }
        if let l = try root.table("limits") {
            profile.limits = try LimitsSection(reading: l)
            try l.finish()
        }
        if let d = try root.table("devices") {
            profile.devices = try DevicesSection(reading: d)
            try d.finish()
        }
        if let d = try root.table("denials") {
            profile.denials = try DenialPolicy(reading: d)
            try d.finish()
        }
        try root.finish()
        try profile.validate(root)
        return profile
    }

    /// The defaults every profile starts from: all namespaces but time, an
    /// empty environment, a read-only tmpfs root with /proc and /dev.
    init(file: String) {
        self.file = file
        self.name = Profile.defaultName(file: file)
        self.namespaces = [.user, .pid, .mount, .net, .ipc, .uts, .cgroup]
        self.hostname = "stockade"
        self.cwd = "/"
        self.timeLimit = nil
        self.newSession = true
        self.user = UserSpec()
        self.filesystem = FilesystemSpec()
        self.mounts = []
        self.environment = EnvironmentSpec()
        self.rlimits = [RlimitSpec(name: "core", resource: 4, soft: 0, hard: 0)]
        self.passFDs = []
        self.seccomp = SeccompSection()
        self.landlock = LandlockSection()
        self.limits = LimitsSection()
        self.devices = DevicesSection()
    }

    /// The file's base name without its extension ("profiles/minimal.toml":
    /// "minimal"; "a/b/" gives "b", ".hidden" stays whole). Read on bytes,
    /// as both delimiters are ASCII: Foundation's URL is slow to build, and
    /// the generic `split` cost every launch a first use of its own.
    static func defaultName(file: String) -> String {
        let slash = UInt8(ascii: "/"), dot = UInt8(ascii: ".")
        let bytes = Array(file.utf8)
        var end = bytes.count
        while end > 0 && bytes[end - 1] == slash { end -= 1 }
        guard end > 0 else { return file }
        var start = end
        while start > 0 && bytes[start - 1] != slash { start -= 1 }
        var stop = end
        while stop > start + 1 && bytes[stop - 1] != dot { stop -= 1 }
        if stop == start + 1 { stop = end }  // no dot past the first byte
        else { stop -= 1 }
        return String(decoding: bytes[start..<stop], as: UTF8.self)
    }

    private mutating func readJail(_ t: TableReader) throws(ProfileError) {
        if let name = try t.string("name") {
            // ASCII names are checked on bytes first: Character's properties
            // walk grapheme breaks and Unicode tables (page faults at every
            // launch); other letters and digits are still allowed.
            let plain = name.utf8.allSatisfy { Self.isASCIIAlphanumeric($0) || $0 == UInt8(ascii: "-") || $0 == UInt8(ascii: "_") || $0 == UInt8(ascii: ".") }
            guard !name.isEmpty, name.count <= 64, plain || name.allSatisfy({ $0.isLetter || $0.isNumber || "-_.".contains($0) }) else {
                throw t.error("name", "must be 1-64 letters, digits, '-', '_' or '.'")
            }
            self.name = name
        }
        if let list = try t.strings("namespaces") {
            var set = Set<Namespace>()
            for (i, n) in list.enumerated() {
                guard let ns = Namespace(rawValue: n) else {
                    let known = Namespace.allCases.map(\.rawValue).joined(separator: ", ")
                    throw t.error("namespaces", "entry \(i): unknown namespace \"\(n)\" (known: \(known))")
                }
                set.insert(ns)
            }
            guard set.contains(.user) else {
                throw t.error("namespaces", "the user namespace is required: it is what makes every other step unprivileged")
            }
            guard set.contains(.mount) else {
                throw t.error("namespaces", "the mount namespace is required: the jail gets its own root")
            }
            namespaces = set
        }
        if t.has("hostname") {
            let h = try t.string("hostname") ?? ""
            guard !h.isEmpty, h.utf8.count <= 64,
                  h.utf8.allSatisfy({ Self.isASCIIAlphanumeric($0) || $0 == UInt8(ascii: "-") || $0 == UInt8(ascii: ".") }) else {
                throw t.error("hostname", "must be 1-64 ASCII letters, digits, '-' or '.'")
            }
            hostname = h
        }
        if let cwd = try t.string("cwd") {
            guard cwd.hasPrefix("/"), !cwd.split(separator: "/").contains("..") else {
                throw t.error("cwd", "must be an absolute path without '..'")
            }
            self.cwd = cwd
        }
        if let limit = try t.duration("time_limit") {
            guard limit > .zero else { throw t.error("time_limit", "must be positive") }
            timeLimit = limit
        }
        if let s = try t.bool("new_session") { newSession = s }
    }

    private mutating func readFilesystem(_ t: TableReader) throws(ProfileError) {
        if let size = try t.size("root_size") {
            guard let b = size.bytes, b >= 1 << 20 else {
                throw t.error("root_size", "must be at least 1M (it holds only mount points)")
            }
            filesystem.rootSize = b
        }
        if let ro = try t.bool("readonly_root") { filesystem.readonlyRoot = ro }
        if let p = try t.bool("proc") { filesystem.proc = p }
        if let d = try t.bool("dev") { filesystem.dev = d }
        if let masked = try t.strings("masked") {
            for (i, m) in masked.enumerated() where !Self.isCleanAbsolute(m) {
                throw t.error("masked", "entry \(i): \"\(m)\" must be an absolute path without '..'")
            }
            filesystem.masked = masked
        }
    }

    private mutating func readEnvironment(_ t: TableReader) throws(ProfileError) {
        if let set = try t.stringTable("set") {
            for (name, value) in set {
                guard Self.isEnvName(name) else { throw t.error("set.\(name)", "is not a valid variable name") }
                environment.set.append(.init(name: name, value: value))
            }
        }
        if let pass = try t.strings("pass") {
            for (i, name) in pass.enumerated() where !Self.isEnvName(name) {
                throw t.error("pass", "entry \(i): \"\(name)\" is not a valid variable name")
            }
            environment.pass = pass
        }
    }

    private static func readRlimits(_ t: TableReader) throws(ProfileError) -> [RlimitSpec] {
        var result: [RlimitSpec] = []
        for key in t.keys.sorted() {
            guard let resource = RlimitSpec.resources[key] else {
                throw t.error(key, "unknown resource limit (known: \(RlimitSpec.resources.keys.sorted().joined(separator: ", ")))")
            }
            let value = try t.size(key)
            let limit: UInt64? = value?.bytes
            result.append(RlimitSpec(name: key, resource: resource, soft: limit, hard: limit))
        }
        if !result.contains(where: { $0.name == "core" }) {
            result.append(RlimitSpec(name: "core", resource: 4, soft: 0, hard: 0))
        }
        return result
    }

    private func validate(_ root: TableReader) throws(ProfileError) {
        var targets = Set<String>()
        for (i, m) in mounts.enumerated() {
            let key = "mount[\(i)].target"
            if !targets.insert(m.target).inserted {
                throw root.source.error(key, "\"\(m.target)\" is mounted twice")
            }
            if filesystem.proc && (m.target == "/proc" || m.target.hasPrefix("/proc/")) {
                throw root.source.error(key, "/proc is built by the jail; set [filesystem] proc = false to supply your own")
            }
        }
        if filesystem.proc && !namespaces.contains(.pid) {
            throw root.source.error("jail.namespaces", "a fresh /proc needs the pid namespace (add \"pid\" or set [filesystem] proc = false)")
        }
    }

    /// Read on bytes, as the kernel reads the path: a `/` or NUL byte is
    /// one wherever it stands (as Characters, one followed by a combining
    /// mark was another grapheme, and the generic `split` and `contains`
    /// cost every launch a first use of their own).
    package static func isCleanAbsolute(_ path: String) -> Bool {
        let slash = UInt8(ascii: "/"), dot = UInt8(ascii: ".")
        let bytes = Array(path.utf8)
        guard bytes.first == slash else { return false }
        var start = 0
        for i in 0...bytes.count {
            if i == bytes.count || bytes[i] == slash {
                if i - start == 2 && bytes[start] == dot && bytes[start + 1] == dot { return false }
                start = i + 1
            } else if bytes[i] == 0 {
                return false
            }
        }
        return true
    }

    /// `[A-Za-z_][A-Za-z0-9_]*`, on bytes.
    static func isEnvName(_ name: String) -> Bool {
        guard let first = name.utf8.first, first == UInt8(ascii: "_") || (isASCIIAlphanumeric(first) && first > UInt8(ascii: "9")) else { return false }
        return name.utf8.allSatisfy { $0 == UInt8(ascii: "_") || isASCIIAlphanumeric($0) }
    }

    /// An ASCII letter or digit.
    static func isASCIIAlphanumeric(_ b: UInt8) -> Bool {
        (b >= UInt8(ascii: "0") && b <= UInt8(ascii: "9")) || (b >= UInt8(ascii: "a") && b <= UInt8(ascii: "z"))
            || (b >= UInt8(ascii: "A") && b <= UInt8(ascii: "Z"))
    }
}

extension MountSpec {
    static func read(_ t: TableReader) throws(ProfileError) -> MountSpec {
        let typeName = try t.string("type") ?? "bind"
        guard let kind = Kind(rawValue: typeName) else {
            throw t.error("type", "unknown mount type \"\(typeName)\" (bind, tmpfs, symlink, dir)")
        }
        let source = try t.string("source")
        if kind == .bind, let source, !Profile.isCleanAbsolute(source) {
            throw t.error("source", "a bind needs an absolute host path without '..'")
        }
        guard let target = try t.string("target") ?? (kind == .bind ? source : nil) else {
            throw t.error("target is required")
        }
        guard Profile.isCleanAbsolute(target) else {
            throw t.error("target", "\"\(target)\" must be an absolute path without '..'")
        }
        guard target.split(separator: "/").count > 0 else {
            throw t.error("target", "cannot mount over the jail's root itself")
        }
        var spec = MountSpec(kind: kind, source: source, target: target)
        switch kind {
        case .bind:
            guard let source, Profile.isCleanAbsolute(source) else {
                throw t.error("source", "a bind needs an absolute host path without '..'")
            }
        case .symlink:
            guard let source, !source.isEmpty, !source.contains("\0") else {
                throw t.error("source", "a symlink needs the link text in source")
            }
        case .tmpfs, .dir:
            if source != nil { throw t.error("source", "a \(kind.rawValue) mount takes no source") }
        }
        spec.writable = try t.bool("writable") ?? (kind == .tmpfs)
        spec.optional = try t.bool("optional") ?? false
        spec.noexec = try t.bool("noexec") ?? false
        spec.followSymlinks = try t.bool("follow_symlinks") ?? false
        if spec.followSymlinks && kind != .bind {
            throw t.error("follow_symlinks", "only a bind has a host source to follow")
        }
        if let size = try t.size("size") {
            guard kind == .tmpfs else { throw t.error("size", "only a tmpfs has a size") }
            spec.size = size.bytes
        }
        if t.has("mode") {
            guard kind == .tmpfs || kind == .dir else { throw t.error("mode", "only tmpfs and dir take a mode") }
            let text = try t.string("mode")
            guard let text, let mode = UInt32(text, radix: 8), mode <= 0o7777 else {
                throw t.error("mode", "write the mode as an octal string, e.g. \"0755\" or \"1777\"")
            }
            spec.mode = mode
        }
        if kind == .symlink && (spec.writable || spec.noexec) {
            throw t.error("a symlink takes no writable/noexec")
        }
        return spec
    }
}
