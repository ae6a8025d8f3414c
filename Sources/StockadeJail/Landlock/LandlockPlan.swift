public import StockadeConfig
internal import CStockadeSpawn
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
#if canImport(Glibc)
import Glibc
#endif

/// The Landlock ruleset a jail's child applies before it loads seccomp:
/// computed in the parent from the profile's mounts and `[landlock]`, for
/// the ABI the running kernel offers (best effort down to ABI 1), with a
/// plain report of what is and is not enforced.
///
/// Derivation: `/` may be listed (it holds only mount points); read-only
/// binds may be read and executed; writable binds and tmpfs may also be
/// written, created in and renamed within; `noexec` mounts lose execute;
/// `/proc` is read-only; `/dev` may be read and written (null, tty, pts)
/// and ioctl'd, `/dev/shm` is writable. TCP bind and connect are denied
/// except for the profile's `tcp_bind`/`tcp_connect` ports (ABI 4+).
public struct LandlockPlan: Sendable, Equatable {
    public struct Rule: Sendable, Equatable {
        /// Path inside the jail's final root.
        public var path: String
        public var access: UInt64
        /// A missing path is skipped rather than fatal.
        public var optional: Bool
    }

    public struct Port: Sendable, Equatable {
        public var port: UInt64
        public var access: UInt64
    }

    /// 0: not applied.
    public var abi: Int32
    public var fsHandled: UInt64
    public var netHandled: UInt64
    public var rules: [Rule]
    public var ports: [Port]
    /// `LANDLOCK_SCOPE_*` (ABI 6+): abstract unix sockets and signals stay
    /// inside the jail's Landlock domain. Computed; the C plan has no field
    /// for it yet, so it is not applied.
    public var scoped: UInt64 = 0
    /// A failure to enforce in the child is fatal.
    public var required: Bool
    /// Why nothing is enforced (disabled by the profile, or no Landlock
    /// here); nil when `abi` is applied.
    var notEnforced: String?
    /// The TCP ports the profile names, for the report.
    var tcpBind: [UInt16] = [], tcpConnect: [UInt16] = []

    // LANDLOCK_ACCESS_FS_* (linux/landlock.h).
    public enum FS {
        public static let execute: UInt64 = 1 << 0
        public static let writeFile: UInt64 = 1 << 1
        public static let readFile: UInt64 = 1 << 2
        public static let readDir: UInt64 = 1 << 3
        public static let removeDir: UInt64 = 1 << 4
        public static let removeFile: UInt64 = 1 << 5
        public static let makeChar: UInt64 = 1 << 6
        public static let makeDir: UInt64 = 1 << 7
        public static let makeReg: UInt64 = 1 << 8
        public static let makeSock: UInt64 = 1 << 9
        public static let makeFifo: UInt64 = 1 << 10
        public static let makeBlock: UInt64 = 1 << 11
        public static let makeSym: UInt64 = 1 << 12
        public static let refer: UInt64 = 1 << 13      // ABI 2
        public static let truncate: UInt64 = 1 << 14   // ABI 3
        public static let ioctlDev: UInt64 = 1 << 15   // ABI 5

        /// The rights a rule on a non-directory may carry.
        public static let fileRights: UInt64 = execute | writeFile | readFile | truncate | ioctlDev
        static let read: UInt64 = readFile | readDir
        static let write: UInt64 = writeFile | removeDir | removeFile | makeDir | makeReg | makeSock | makeFifo
            | makeSym | refer | truncate

        /// Every filesystem right the given ABI knows.
        public static func handled(abi: Int32) -> UInt64 {
            guard abi >= 1 else { return 0 }
            var mask: UInt64 = (1 << 13) - 1
            if abi >= 2 { mask |= refer }
            if abi >= 3 { mask |= truncate }
            if abi >= 5 { mask |= ioctlDev }
            return mask
        }
    }

    public static let scopeAbstractUnixSocket: UInt64 = 1 << 0
    public static let scopeSignal: UInt64 = 1 << 1

    // LANDLOCK_ACCESS_NET_* (ABI 4).
    public enum Net {
        public static let bindTCP: UInt64 = 1 << 0
        public static let connectTCP: UInt64 = 1 << 1
    }

    /// The running kernel's Landlock ABI: a version, or -errno when Landlock
    /// is absent (ENOSYS) or disabled at boot (EOPNOTSUPP).
    public static func kernelABI() -> Int32 { stk_landlock_abi() }

    /// The plan for `profile` on a kernel offering `abi` (as `kernelABI()`
    /// returns it). Throws only when the profile requires Landlock and the
    /// kernel cannot enforce what it asks.
    public init(profile: Profile, extraMounts: [MountSpec] = [], abi kernel: Int32 = LandlockPlan.kernelABI()) throws(ProfileError) {
        let section = profile.landlock
        required = section.required
        rules = []
        ports = []
        tcpBind = section.tcpBind
        tcpConnect = section.tcpConnect
        // Without a pid or net namespace, only Landlock's scoping keeps the
        // jail from signalling host processes (other jails' workers among
        // them) and from the host's abstract unix sockets.
        let shared = [Profile.Namespace.pid, .net].filter { !profile.namespaces.contains($0) }.map(\.rawValue)
        let needsScoping = !shared.isEmpty && section.unscoped == nil
        if needsScoping {
            let what = "without a \(shared.joined(separator: " or ")) namespace the jail needs Landlock's scoping of signals and abstract unix sockets"
            let waive = "(or waive it: [landlock] unscoped = \"why\")"
            guard section.enabled else {
                throw ProfileError(file: profile.file, line: nil, key: "landlock.enabled", message: "\(what); enable Landlock \(waive)")
            }
            guard kernel >= 6 else {
                throw ProfileError(file: profile.file, line: nil, key: "jail.namespaces",
                                   message: "\(what), which needs Landlock ABI 6; this kernel offers \(kernel > 0 ? "ABI \(kernel)" : "none") \(waive)")
            }
            required = true  // the trampoline refuses to start the jail unscoped
        }
        guard section.enabled else {
            (abi, fsHandled, netHandled) = (0, 0, 0)
            notEnforced = "Landlock: disabled by the profile ([landlock] enabled = false)"
            return
        }
        guard kernel >= 1 else {
            let why = kernel == -38 ? "the kernel has no Landlock (ENOSYS)"
                : kernel == -95 ? "Landlock is built in but not enabled at boot (EOPNOTSUPP; add landlock to lsm=)"
                : "landlock_create_ruleset failed (errno \(-kernel))"
            if required { throw ProfileError(file: profile.file, line: nil, key: "landlock.required", message: "Landlock is required but \(why)") }
            (abi, fsHandled, netHandled) = (0, 0, 0)
            notEnforced = "Landlock: not enforced: \(why)"
            return
        }
        abi = kernel
        fsHandled = FS.handled(abi: kernel)
        let wantsTCP = !section.tcpBind.isEmpty || !section.tcpConnect.isEmpty
        if kernel >= 4 {
            netHandled = Net.bindTCP | Net.connectTCP
        } else {
            netHandled = 0
            if wantsTCP && required {
                throw ProfileError(file: profile.file, line: nil, key: "landlock.tcp_bind",
                                   message: "TCP port rules need Landlock ABI 4; this kernel offers ABI \(kernel)")
            }
        }

        func add(_ path: String, _ access: UInt64, optional: Bool = false, isDirectory: Bool = true) {
            var mask = access & fsHandled
            if !isDirectory { mask &= FS.fileRights }
            guard mask != 0 else { return }
            if let i = rules.firstIndex(where: { $0.path == path }) {
                rules[i].access |= mask
            } else {
                rules.append(Rule(path: path, access: mask, optional: optional))
            }
        }

        add("/", FS.readDir)
        if profile.filesystem.proc { add("/proc", FS.read) }
        if profile.filesystem.dev {
            add("/dev", FS.read | FS.writeFile | FS.truncate | FS.ioctlDev)
            add("/dev/shm", FS.read | FS.write, optional: true)
        }
        for m in profile.mounts + extraMounts {
            let exec = m.noexec ? 0 : FS.execute
            switch m.kind {
            case .bind:
                var st = stat()
                let exists = m.source.map { stat($0, &st) == 0 } ?? false
                if !exists && m.optional { continue }
                let isDirectory = (st.st_mode & S_IFMT) == S_IFDIR
                add(m.target, FS.read | exec | (m.writable ? FS.write : 0), optional: m.optional, isDirectory: !exists || isDirectory)
            case .tmpfs:
                add(m.target, FS.read | exec | (m.writable ? FS.write : 0))
            case .dir:
                add(m.target, FS.read)
            case .symlink:
                break  // access is checked on what the link resolves to
            }
        }
        for p in section.tcpBind where netHandled != 0 { addPort(UInt64(p), Net.bindTCP) }
        for p in section.tcpConnect where netHandled != 0 { addPort(UInt64(p), Net.connectTCP) }
        ports.sort { $0.port < $1.port }
        if kernel >= 6 { scoped = Self.scopeAbstractUnixSocket | Self.scopeSignal }

        func addPort(_ port: UInt64, _ access: UInt64) {
            if let i = ports.firstIndex(where: { $0.port == port }) { ports[i].access |= access } else { ports.append(Port(port: port, access: access)) }
        }
    }

    /// What is enforced and what is not, one line each, for `explain` and
    /// logs. Written when asked for, not at every launch.
    public var report: [String] {
        if let notEnforced { return [notEnforced] }
        let kernel = abi
        var report: [String] = []
        report.append("Landlock: ABI \(kernel)\(required ? ", required" : ", best effort")")
        report.append("  filesystem: \(rules.count) rules, handling \(Self.rightNames(fsHandled).joined(separator: " "))")
        for r in rules {
            report.append("    \(r.path): \(Self.rightNames(r.access).joined(separator: " "))\(r.optional ? " (if present)" : "")")
        }
        if kernel < 2 { report.append("  renames and links across directories are not restricted (needs ABI 2)") }
        if kernel < 3 { report.append("  truncate is not restricted (needs ABI 3)") }
        if kernel < 5 { report.append("  device ioctls are not restricted (needs ABI 5)") }
        if netHandled != 0 {
            let bind = tcpBind.map(String.init).joined(separator: ", ")
            let conn = tcpConnect.map(String.init).joined(separator: ", ")
            report.append("  TCP bind: \(bind.isEmpty ? "denied" : "ports \(bind) only"); TCP connect: \(conn.isEmpty ? "denied" : "ports \(conn) only")")
        } else {
            let wantsTCP = !tcpBind.isEmpty || !tcpConnect.isEmpty
            report.append("  TCP is not restricted by Landlock (needs ABI 4; this kernel offers \(kernel))" + (wantsTCP ? "; tcp_bind/tcp_connect are not enforced" : ""))
        }
        if kernel >= 6 { report.append("  abstract unix sockets and signals are scoped to the jail (ABI 6)") }
        return report
    }

    static func rightNames(_ mask: UInt64) -> [String] {
        let names = ["execute", "write_file", "read_file", "read_dir", "remove_dir", "remove_file", "make_char",
                     "make_dir", "make_reg", "make_sock", "make_fifo", "make_block", "make_sym", "refer", "truncate", "ioctl_dev"]
        return names.enumerated().filter { mask & (1 << UInt64($0.offset)) != 0 }.map(\.element)
    }
}
