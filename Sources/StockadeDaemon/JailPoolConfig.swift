// The daemon configuration's `[via]` section: jails built ahead of their
// command for `stockade run --via SOCKET`.
//
//   [via]
//   socket = "/run/stockade/via.sock"   # its own SOCK_SEQPACKET socket
//   socket_mode = "0666"                # callers are still checked by uid
//
//   [via.pool.minimal]
//   profile = "/etc/stockade/minimal.toml"
//   ready = 4                           # jails kept built and waiting
//   uids = [1000, 1001]                 # who may run commands in them
//   max_running = 64                    # commands at once; more are refused
import StockadeConfig
import StockadeCgroups
package import StockadeJail
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// One pool of jails built ahead from one profile.
package struct JailPoolConfig: Sendable {
    package var name: String
    package var profilePath: String
    package var profile: Profile
    /// Jails kept built and waiting for a command.
    package var ready: Int
    /// The callers' uids (SO_PEERCRED) allowed to run commands in them.
    package var uids: [UInt32]
    /// Jails of this pool running callers' commands at once; a caller
    /// beyond them is refused.
    package var maxRunning: Int

    package init(name: String, profilePath: String, profile: Profile, ready: Int, uids: [UInt32], maxRunning: Int = 64) {
        self.name = name
        self.profilePath = profilePath
        self.profile = profile
        self.ready = ready
        self.uids = uids
        self.maxRunning = maxRunning
    }
}

/// The `[via]` section.
package struct ViaConfig: Sendable {
    package var socketPath: String
    package var socketMode: UInt32
    package var pools: [JailPoolConfig]

    package init(socketPath: String, socketMode: UInt32 = 0o666, pools: [JailPoolConfig]) {
        self.socketPath = socketPath
        self.socketMode = socketMode
        self.pools = pools
    }

    /// Reads `[via]` from the configuration's root table; nil when there is
    /// none. Relative paths are taken from `dir`.
    static func read(_ root: TableReader, dir: String, apiSocket: String) throws(ProfileError) -> ViaConfig? {
        guard let via = try root.table("via") else { return nil }
        func path(_ t: TableReader, _ key: String) throws(ProfileError) -> String? {
            guard let raw = try t.string(key) else { return nil }
            guard !raw.isEmpty else { throw t.error(key, "a path cannot be empty") }
            return DaemonPath.absolute(DaemonPath.expand(raw, configDir: dir), base: dir)
        }
        guard let socket = try path(via, "socket") else {
            throw via.error("socket", "missing: the socket `stockade run --via` connects to")
        }
        guard socket.utf8.count < 108 else {
            throw via.error("socket", "\(socket) is \(socket.utf8.count) bytes; a unix socket path must be under 108")
        }
        guard socket != apiSocket else {
            throw via.error("socket", "\(socket) is the API socket ([daemon] socket); give [via] a socket of its own")
        }
        var mode: UInt32 = 0o666
        if let m = try via.string("socket_mode") {
            guard let v = UInt32(m, radix: 8), v <= 0o777 else {
                throw via.error("socket_mode", "expected an octal mode such as \"0660\", got \"\(m)\"")
            }
            mode = v
        }
        var pools: [JailPoolConfig] = []
        if let all = try via.table("pool") {
            for name in all.keys {
                guard TenantBudget.isValidName(name) else {
                    throw all.error(name, "a pool name must be 1-64 ASCII letters, digits, '-' or '_'")
                }
                guard let t = try all.table(name) else { throw all.error(name, "must be a table: [via.pool.\(name)]") }
                guard let profilePath = try path(t, "profile") else {
                    throw t.error("profile", "missing: the jail profile of this pool's jails")
                }
                let profile = try Profile.load(path: profilePath)
                try DaemonConfig.refusePassedFDs(profile, t)
                let ready = try t.int("ready", in: 1...1024) ?? 2
                guard let uids = try t.ints("uids"), !uids.isEmpty else {
                    throw t.error("uids", "missing: the uids that may run commands in this pool's jails, e.g. [1000]")
                }
                for uid in uids where !(0...Int(UInt32.max - 1)).contains(uid) {
                    throw t.error("uids", "\(uid) is not a uid")
                }
                let maxRunning = try t.int("max_running", in: 1...100_000) ?? 64
                try t.finish()
                pools.append(JailPoolConfig(name: name, profilePath: profilePath, profile: profile, ready: ready,
                                            uids: uids.map { UInt32($0) }, maxRunning: maxRunning))
            }
            try all.finish()
        }
        guard !pools.isEmpty else { throw via.error("pool", "no pools: add a [via.pool.NAME] table (profile, ready, uids)") }
        try via.finish()
        return ViaConfig(socketPath: socket, socketMode: mode, pools: pools)
    }
}
