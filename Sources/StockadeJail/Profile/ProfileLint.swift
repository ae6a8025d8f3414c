package import StockadeConfig
import StockadeSeccomp

/// One thing a valid profile allows that a reviewer should look at twice:
/// where it is (file, line, key) and why it weakens the jail.
///
/// Printed as `profiles/x.toml:12: warning: seccomp.default: ...`.
public struct LintFinding: Sendable, Equatable, CustomStringConvertible {
    public var file: String
    public var line: Int?
    /// The key as errors name it (`seccomp.default`, `mount[2].source`).
    public var key: String
    public var message: String

    public var description: String {
        let place = line.map { "\(file):\($0)" } ?? file
        return "\(place): warning: \(key): \(message)"
    }
}

/// The warnings of `stockade lint`. A warning is never an error of the
/// profile (it loads and runs as written); `stockade lint --strict` treats
/// every warning as one.
public enum ProfileLint {
    /// The findings for `profile`, each placed by `index` (the line index
    /// of the profile's text) when one is given.
    package static func findings(_ profile: Profile, index: TOMLLineIndex? = nil) -> [LintFinding] {
        var result: [LintFinding] = []
        func warn(_ key: String, _ message: String) {
            result.append(LintFinding(file: profile.file, line: index?.line(of: key), key: key, message: message))
        }

        // [jail]
        if !profile.namespaces.contains(.net) {
            warn("jail.namespaces", "the jail shares the host's network (no \"net\" namespace)")
        }
        if !profile.namespaces.contains(.pid) {
            warn("jail.namespaces", "the jail shares the host's pid namespace: it can see host processes in /proc")
        }
        if profile.timeLimit == nil {
            warn("jail.time_limit", "not set: a stuck worker runs until killed")
        }
        if !profile.newSession {
            warn("jail.new_session", "false: the worker stays in the caller's session and can reach its controlling terminal")
        }

        // [user]
        if profile.user.uid == 0 {
            warn("user.uid", "the worker runs as uid 0 inside the jail (no capabilities, but files it creates are root's inside)")
        }
        if let base = profile.user.hostBase {
            warn("user.host_base", "a fixed host id base (\(base)) instead of a range from the pool: every jail with this profile shares those host ids")
        }

        // [filesystem] and [[mount]]
        if !profile.filesystem.readonlyRoot {
            warn("filesystem.readonly_root", "false: the worker can create files anywhere in its root, beside the mount points")
        }
        for (i, m) in profile.mounts.enumerated() {
            switch m.kind {
            case .bind:
                let source = m.source ?? m.target
                if let exposed = exposesKernelTree(source) {
                    warn("mount[\(i)].source", "binds the host's \(exposed) (\(source)): the jail sees host processes and kernel state past its own /proc and masks")
                } else if m.writable && (source == "/sys" || source.hasPrefix("/sys/")) {
                    warn("mount[\(i)].source", "a writable bind of \(source): writes reach the host's kernel settings")
                }
                if m.writable {
                    warn("mount[\(i)].writable", "\(m.target) is a writable bind of the host's \(source)")
                }
            case .tmpfs where m.size == nil:
                warn("mount[\(i)].type", "the tmpfs at \(m.target) has no size: the kernel's default is half the host's memory")
            default:
                break
            }
        }

        // [fds]
        if !profile.passFDs.isEmpty {
            let list = profile.passFDs.map(String.init).joined(separator: ", ")
            warn("fds.pass", "host fds \(list) enter the jail as they are: whatever they open (a directory, a socket, a terminal) is reachable from inside")
        }

        // [seccomp]
        if profile.seccomp.defaultAction.permits {
            var key = "seccomp.default"
            if case .docker = profile.seccomp.base, index?.exactLine(of: key) == nil { key = "seccomp.import" }
            warn(key, "the default action permits (\(profile.seccomp.defaultAction)): every system call not denied by name is allowed, and the base allowlist has no effect")
        }
        for (name, reason) in profile.seccomp.allowDangerous.sorted(by: { $0.key < $1.key }) {
            warn("seccomp.allow_dangerous.\(name)", "lifts the hardening every jail gets for \(name) (given reason: \"\(reason)\")")
        }

        // [landlock]
        if !profile.landlock.enabled {
            warn("landlock.enabled", "false: the jail has no Landlock rules, so an fd or path that reaches past its mounts is not stopped")
        }
        return result
    }

    /// Messages only (without places), for callers that print their own.
    public static func warnings(_ profile: Profile) -> [String] {
        findings(profile).map(\.message)
    }

    /// "/proc" or "/sys" when a bind of `source` shows that host tree (the
    /// tree itself, something inside /proc, or a directory above either,
    /// such as "/").
    static func exposesKernelTree(_ source: String) -> String? {
        let parts = source.split(separator: "/")
        if parts.isEmpty { return "/proc and /sys" }
        if parts.first == "proc" { return "/proc" }
        if parts == ["sys"] { return "/sys" }
        return nil
    }
}
