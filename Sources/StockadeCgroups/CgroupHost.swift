#if canImport(Glibc)
import Glibc
#endif

/// How this host mounts cgroups, and where the launcher itself sits.
///
/// Read from `/proc/self/mountinfo` (the mounts, with the subtree each one
/// shows), `/proc/self/cgroup` (our own cgroup in each hierarchy) and
/// `statfs` (the filesystem magic, so a tmpfs at `/sys/fs/cgroup` is never
/// taken for a cgroup).
public struct CgroupHost: Sendable, Equatable {
    /// The controllers Stockade uses.
    public static let wantedControllers: [String] = ["cpu", "cpuset", "io", "memory", "pids"]
    /// The v1 hierarchies Stockade uses (v1 splits `cpuacct` and `freezer` out).
    static let v1Controllers: Set<String> = ["memory", "cpu", "cpuacct", "pids", "freezer", "cpuset", "blkio"]

    public enum Layout: String, Sendable {
        /// Only cgroup2: every controller lives in one tree.
        case unified
        /// cgroup v1 hierarchies for the controllers, beside a (mostly empty) cgroup2 tree.
        case hybrid
        /// cgroup v1 only.
        case legacy
        /// No cgroup filesystem at all.
        case none
    }

    /// The cgroup2 mount.
    public struct Unified: Sendable, Equatable {
        public var mountPoint: String
        /// Our cgroup, relative to the mount (`/` at its root).
        public var ownPath: String
        /// Controllers the root of the mount offers (`cgroup.controllers`).
        public var rootControllers: Set<String>
        /// Controllers our own cgroup's parent lets us use.
        public var ownControllers: Set<String>
    }

    /// One cgroup v1 hierarchy (one mount, one or more controllers).
    public struct Hierarchy: Sendable, Equatable {
        public var mountPoint: String
        public var controllers: Set<String>
        /// Our cgroup in this hierarchy, relative to the mount.
        public var ownPath: String
    }

    public var unified: Unified?
    public var hierarchies: [Hierarchy]

    public init(unified: Unified?, hierarchies: [Hierarchy]) {
        self.unified = unified
        self.hierarchies = hierarchies
    }

    public var layout: Layout {
        if hierarchies.isEmpty { return unified == nil ? .none : .unified }
        return unified == nil ? .legacy : .hybrid
    }

    /// The v1 hierarchy that holds `controller`.
    public func hierarchy(for controller: String) -> Hierarchy? {
        hierarchies.first { $0.controllers.contains(controller) }
    }

    /// The cgroup v2 controllers usable here (the v2 tree's root offers them
    /// and no v1 hierarchy has taken them).
    public var v2Controllers: Set<String> {
        unified?.rootControllers ?? []
    }

    /// Reads the running system.
    public static func detect() -> CgroupHost {
        detect(mountinfo: CgroupFS.read("/proc/self/mountinfo") ?? "",
               selfCgroup: CgroupFS.read("/proc/self/cgroup") ?? "")
    }

    /// Detection from given text; `magic` and `read` stand in for `statfs`
    /// and file reads (tests describe other hosts with them).
    static func detect(mountinfo: String, selfCgroup: String,
                       magic: (String) -> Int? = CgroupFS.magic,
                       read: (String) -> String? = CgroupFS.read) -> CgroupHost {
        // Our own cgroup per hierarchy: "ID:CONTROLLERS:PATH" (v2 is "0::PATH").
        var ownV2: String?
        var ownV1: [Set<String>: String] = [:]
        for line in selfCgroup.split(separator: "\n") {
            let parts = line.split(separator: ":", maxSplits: 2, omittingEmptySubsequences: false)
            guard parts.count == 3 else { continue }
            if parts[0] == "0" && parts[1].isEmpty {
                ownV2 = String(parts[2])
            } else {
                ownV1[Set(parts[1].split(separator: ",").map(String.init))] = String(parts[2])
            }
        }

        var unified: Unified?
        var hierarchies: [Hierarchy] = []
        for line in mountinfo.split(separator: "\n") {
            let fields = line.split(separator: " ")
            guard let dash = fields.firstIndex(of: "-"), dash + 3 < fields.count, fields.count > 4 else { continue }
            let fstype = fields[dash + 1]
            let mountRoot = String(fields[3])
            let mountPoint = unescape(String(fields[4]))
            let superOptions = fields[dash + 3].split(separator: ",").map(String.init)
            if fstype == "cgroup2" {
                guard unified == nil, magic(mountPoint) == CgroupFS.cgroup2Magic else { continue }
                let own = relative(ownV2 ?? "/", toMountRoot: mountRoot)
                let root = Set(words(read(mountPoint + "/cgroup.controllers")))
                let ownDir = own == "/" ? mountPoint : mountPoint + own
                let ownControllers = Set(words(read(ownDir + "/cgroup.controllers")))
                unified = Unified(mountPoint: mountPoint, ownPath: own, rootControllers: root,
                                  ownControllers: ownControllers)
            } else if fstype == "cgroup" {
                let controllers = Set(superOptions).intersection(v1Controllers)
                guard !controllers.isEmpty, magic(mountPoint) == CgroupFS.cgroup1Magic,
                      !hierarchies.contains(where: { !$0.controllers.isDisjoint(with: controllers) }) else { continue }
                let ownRaw = ownV1.first(where: { !$0.key.isDisjoint(with: controllers) })?.value ?? "/"
                hierarchies.append(Hierarchy(mountPoint: mountPoint, controllers: controllers,
                                             ownPath: relative(ownRaw, toMountRoot: mountRoot)))
            }
        }
        return CgroupHost(unified: unified, hierarchies: hierarchies.sorted { $0.mountPoint < $1.mountPoint })
    }

    /// Every cgroup and cgroup2 mount point in `mountinfo`, whatever it shows.
    package static func mountPoints(mountinfo: String) -> [String] {
        mountinfo.split(separator: "\n").compactMap { line in
            let fields = line.split(separator: " ")
            guard let dash = fields.firstIndex(of: "-"), dash + 1 < fields.count, fields.count > 4,
                  fields[dash + 1] == "cgroup" || fields[dash + 1] == "cgroup2" else { return nil }
            return unescape(String(fields[4]))
        }
    }

    /// One paragraph a person can act on: the layout, and which backend serves which limit.
    public var diagnosis: String {
        var lines: [String] = []
        switch layout {
        case .unified:
            let u = unified!
            lines.append("cgroup v2 only, at \(u.mountPoint) (controllers: \(u.rootControllers.sorted().joined(separator: " "))); the launcher is in \(u.ownPath)")
        case .hybrid, .legacy:
            if let u = unified {
                let offered = u.rootControllers.isEmpty ? "no controllers" : "only " + u.rootControllers.sorted().joined(separator: " ")
                lines.append("hybrid layout: cgroup v2 at \(u.mountPoint) has \(offered); the controllers are bound to cgroup v1:")
            } else {
                lines.append("cgroup v1 only:")
            }
            for h in hierarchies {
                lines.append("  \(h.controllers.sorted().joined(separator: ",")) at \(h.mountPoint) (launcher in \(h.ownPath))")
            }
        case .none:
            lines.append("no cgroup filesystem is mounted: no limit can be enforced (mount cgroup2 at /sys/fs/cgroup)")
        }
        return lines.joined(separator: "\n")
    }

    /// Why `controller` cannot be used through cgroup v2, for messages.
    func v2Absence(_ controller: String) -> String {
        if let h = hierarchy(for: controller) {
            return "this host mounts it as cgroup v1 at \(h.mountPoint)"
        }
        if let u = unified {
            if !u.rootControllers.contains(controller) {
                return "the kernel does not offer it in \(u.mountPoint)/cgroup.controllers"
            }
            return "it is not delegated to the launcher's cgroup \(u.ownPath)"
        }
        return "no cgroup filesystem offers it"
    }

    /// Our path as seen inside a mount that shows the subtree `mountRoot`.
    package static func relative(_ path: String, toMountRoot mountRoot: String) -> String {
        if mountRoot == "/" { return path }
        if path == mountRoot { return "/" }
        if path.hasPrefix(mountRoot + "/") { return String(path.dropFirst(mountRoot.count)) }
        return path
    }

    /// mountinfo escapes space, tab, newline and backslash as octal.
    package static func unescape(_ s: String) -> String {
        guard s.contains("\\") else { return s }
        var out: [UInt8] = []
        let bytes = Array(s.utf8)
        var i = 0
        while i < bytes.count {
            if bytes[i] == UInt8(ascii: "\\"), i + 3 < bytes.count,
               let v = UInt8(String(decoding: bytes[(i + 1)...(i + 3)], as: UTF8.self), radix: 8) {
                out.append(v)
                i += 4
            } else {
                out.append(bytes[i])
                i += 1
            }
        }
        return String(decoding: out, as: UTF8.self)
    }
}
