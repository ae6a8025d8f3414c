import Foundation
import StockadeJail
#if canImport(Glibc)
import Glibc
#endif

/// The parts of config.json that set kernel state of the container's own:
/// `process.umask`, `linux.rootfsPropagation` and `linux.sysctl`.
enum SpecKernel {
    static func umask(_ value: UInt32?, field: String) throws -> UInt32? {
        guard let value else { return nil }
        guard value <= 0o777 else {
            throw SpecError("config.json \(field): \(value) is not a file mode mask (0 to 0777)")
        }
        return value
    }

    // MS_* propagation flags (sys/mount.h).
    static let msPrivate: UInt64 = 1 << 18
    static let msSlave: UInt64 = 1 << 19
    static let msUnbindable: UInt64 = 1 << 17

    /// The root tree's propagation: private unless the spec asks for slave
    /// (mounts the host makes below the rootfs appear inside) or
    /// unbindable. Shared is refused: a container's mounts never reach the host.
    static func rootPropagation(_ value: String?) throws -> UInt64 {
        switch value ?? "" {
        case "", "private", "rprivate": return msPrivate
        case "slave", "rslave": return msSlave
        case "unbindable", "runbindable": return msUnbindable
        case "shared", "rshared":
            throw SpecError("config.json linux.rootfsPropagation: \"\(value!)\": a Stockade container's mounts never propagate to the host (private, slave and unbindable are supported)")
        default:
            throw SpecError("config.json linux.rootfsPropagation: unknown propagation \"\(value!)\" (private, slave, unbindable, and their r- forms)")
        }
    }

    /// The sysctls of the IPC namespace (runc's list), besides fs.mqueue.*.
    static let ipcSysctls: Set<String> = ["kernel.msgmax", "kernel.msgmnb", "kernel.msgmni", "kernel.sem", "kernel.shmall",
                                          "kernel.shmmax", "kernel.shmmni", "kernel.shm_rmid_forced"]

    /// `linux.sysctl`, checked as runc checks it: only sysctls a kernel
    /// namespace holds (net.*, the IPC ones, kernel.hostname and
    /// kernel.domainname), each only when that namespace is not the
    /// runtime's own. Returned as paths below /proc/sys, sorted by key.
    static func sysctls(_ map: [String: String]?, ownNamespace: (Profile.Namespace) -> Bool, hostname: String?) throws -> [(key: String, value: String, namespace: Profile.Namespace)] {
        var result: [(key: String, value: String, namespace: Profile.Namespace)] = []
        for (key, value) in (map ?? [:]).sorted(by: { $0.key < $1.key }) {
            let field = "config.json linux.sysctl"
            // "net.ipv4.ip_forward", or a path ("net/ipv4/conf/eth0.100/forwarding").
            let path = key.contains("/") ? key : key.replacingOccurrences(of: ".", with: "/")
            let parts = path.split(separator: "/", omittingEmptySubsequences: false)
            // A NUL byte would end the name where the kernel reads it: a
            // pod's sysctls are opened by the launcher from this string.
            guard !key.isEmpty, !key.utf8.contains(0), !path.hasPrefix("/"),
                  parts.allSatisfy({ !$0.isEmpty && $0 != "." && $0 != ".." }) else {
                throw SpecError("\(field): \(key.debugDescription) is not a sysctl name")
            }
            guard !value.contains("\n") else { throw SpecError("\(field)[\"\(key)\"]: the value has a newline") }
            guard !value.utf8.contains(0) else { throw SpecError("\(field)[\"\(key)\"]: the value holds a NUL byte") }
            let name = parts.joined(separator: ".")
            let namespace: (Profile.Namespace, String)
            if ipcSysctls.contains(name) || name.hasPrefix("fs.mqueue.") {
                namespace = (.ipc, "ipc")
            } else if name.hasPrefix("net.") {
                namespace = (.net, "network")
            } else if name == "kernel.hostname" || name == "kernel.domainname" {
                namespace = (.uts, "uts")
                if name == "kernel.hostname", let hostname, !hostname.isEmpty {
                    throw SpecError("\(field): sysctl \"\(key)\" conflicts with the hostname field")
                }
            } else {
                throw SpecError("\(field): sysctl \"\(key)\" is not in a separate kernel namespace")
            }
            guard ownNamespace(namespace.0) else {
                throw SpecError("\(field): sysctl \"\(key)\" is not allowed in the hosts \(namespace.1) namespace")
            }
            result.append((path, value, namespace.0))
        }
        return result
    }

    /// Whether the namespace behind `fd` (one joined) is another than the
    /// runtime's own: checked on the fd that is joined, not on its path again.
    static func isOtherThanOwn(_ fd: Int32, kind: Profile.Namespace) -> Bool {
        var theirs = stat(), mine = stat()
        guard fstat(fd, &theirs) == 0, stat("/proc/self/ns/\(kind.procName)", &mine) == 0 else { return false }
        return theirs.st_ino != mine.st_ino || theirs.st_dev != mine.st_dev
    }
}
