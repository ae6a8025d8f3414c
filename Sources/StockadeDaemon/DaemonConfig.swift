// The daemon's configuration file: where it listens, where it writes its
// audit log, its clients (token and uid) and its tenants (budget, profile,
// worker command, pool size, pinned model files, who may call them).
//
// Relative paths are relative to the directory of the configuration file,
// and `${CONFIG_DIR}` in a command or a bind stands for that directory, so a
// configuration kept beside a checkout works wherever the checkout lives.
package import StockadeConfig
package import StockadeCgroups
package import StockadeJail
import StockadeChannel
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// What a client may do with a tenant. Each role includes the ones below it.
package enum Role: String, Sendable, Comparable, CaseIterable, Codable {
    /// List the tenant, its workers and their stats.
    case viewer
    /// Everything a viewer may, and submit inference requests.
    case invoker
    /// Everything an invoker may, and drain or resume the tenant.
    case admin

    private var rank: Int {
        switch self {
        case .viewer: 0
        case .invoker: 1
        case .admin: 2
        }
    }

    package static func < (a: Role, b: Role) -> Bool { a.rank < b.rank }
}

/// One API client: a bearer token that only the given unix uid may present.
package struct ClientConfig: Sendable, Equatable {
    package var name: String
    package var token: String
    /// The uid the connecting process must have (SO_PEERCRED).
    package var uid: UInt32

    package init(name: String, token: String, uid: UInt32) {
        self.name = name
        self.token = token
        self.uid = uid
    }
}

/// A model file pinned by its SHA-256 digest. The daemon copies it once
/// into a sealed memfd, checks the copy's digest, and hands that memfd to
/// every worker of the tenants that name the model.
package struct ModelFile: Sendable, Equatable {
    /// The host path.
    package var path: String
    /// The file's name within the model (`tokenizer.json`,
    /// `1_Pooling/config.json`), as the worker sees it in STOCKADE_MODEL_FDS.
    package var name: String
    /// 64 lowercase hex digits.
    package var sha256: String

    package init(path: String, name: String, sha256: String) {
        self.path = path
        self.name = name
        self.sha256 = sha256
    }
}

/// A model declared once (`[model.NAME]`) and named by tenants.
package struct ModelConfig: Sendable, Equatable {
    package var name: String
    package var files: [ModelFile]
}

/// One tenant: its budget, the jail its workers run in, and its pool.
package struct TenantConfig: Sendable {
    package var name: String
    package var budget: TenantBudget
    package var profilePath: String
    package var profile: Profile
    /// Files the daemon read to configure this tenant (its configuration
    /// file): no writable bind of a worker may hold them.
    package var launcherFiles: [String] = []
    /// argv inside the jail.
    package var command: [String]
    /// Host paths bound read-only at the same path in the jail.
    package var binds: [String]
    package var environment: [(String, String)]
    package var minWorkers: Int
    package var maxWorkers: Int
    /// Requests that may wait for a worker; more are refused with 429.
    package var queueLimit: Int
    /// A request whose worker has not answered after this long kills the worker.
    package var requestTimeout: Duration
    /// The declared models this tenant's workers get.
    package var models: [ModelConfig]
    /// The largest answer a worker may send; a larger one is refused by the
    /// channel before the daemon maps or copies it (the worker is killed).
    package var maxResponseBytes: Int
    /// Client name -> role.
    package var access: [String: Role]
    /// on_denial and denials_per_minute: the tenant's own, over the profile's `[denials]`.
    package var denials: DenialPolicy
    /// `template = true`: one jailed template loads the model and the
    /// workers are forked from it (the SDK's serve_template; WorkerTemplate).
    package var template = false
    /// A template tenant's budget for each forked worker, in a cgroup of
    /// its own below the template's jail (`[tenant.NAME.fork_limits]`;
    /// without it, the memory_max, pids_max and cpu of the profile's
    /// `[limits]`, what one worker has in a jail of its own). The profile's
    /// `[limits]` stay the budget of the template and its forks together.
    package var forkLimits = LimitsSection()

    package init(name: String, profilePath: String, profile: Profile, command: [String]) {
        self.name = name
        self.budget = TenantBudget(name: name)
        self.profilePath = profilePath
        self.profile = profile
        self.command = command
        self.binds = []
        self.environment = []
        self.minWorkers = 1
        self.maxWorkers = 1
        self.queueLimit = 64
        self.requestTimeout = .seconds(60)
        self.models = []
        self.maxResponseBytes = 64 << 20
        self.denials = profile.denials
        self.access = [:]
    }
}

/// What the daemon does with requests it cannot audit.
package enum AuditFailurePolicy: String, Sendable {
    /// Answer 503 instead of serving (the default): nothing is served
    /// without its audit record.
    case refuse
    /// Go on serving; the loss is still counted, logged and shown as a
    /// degraded health.
    case `continue`
}

/// Bounds on the API's client connections.
package struct ConnectionLimits: Sendable, Equatable {
    /// Open connections in all.
    package var total = 1024
    /// Open connections of one peer uid.
    package var perUid = 256
    /// From the first byte of a request (or the connection's start) to
    /// the end of its head.
    package var headerTimeout: Duration = .seconds(10)
    /// From the end of a request's head to the end of its body.
    package var bodyTimeout: Duration = .seconds(30)
    /// A keep-alive connection with no request is closed after this long.
    package var idleTimeout: Duration = .seconds(60)
    /// File descriptors kept free of connections for worker launches,
    /// the audit log and cgroups.
    package var fdReserve = 256

    package init() {}
}

/// The whole configuration file.
package struct DaemonConfig: Sendable {
    package var file: String
    package var socketPath: String
    package var auditLogPath: String
    /// Mode of the API socket (clients are still checked by uid and token).
    package var socketMode: UInt32
    /// The largest request body accepted (413 above it).
    package var maxRequestBytes: Int
    /// Tenant budgets and jails as cgroups; off for hosts without cgroup access.
    package var cgroups: Bool
    /// The cgroup below which tenants live (`stockaded` by default).
    package var cgroupBase: String
    /// How long a stop waits for requests in flight before killing jails.
    package var drainTimeout: Duration
    package var clients: [ClientConfig]
    package var tenants: [TenantConfig]
    /// The declared models (`[model.NAME]`).
    package var models: [ModelConfig] = []
    package var connections = ConnectionLimits()
    /// What happens to requests when the audit log cannot be written.
    package var auditFailure: AuditFailurePolicy = .refuse
    /// Jails built ahead for `stockade run --via` (`[via]`).
    package var via: ViaConfig?

    package static func load(path: String) throws(ProfileError) -> DaemonConfig {
        try parse(text: TableReader.readText(path: path, what: "configuration file"), file: path)
    }

    /// The first budget key that `workers` jails, each reserving the
    /// profile's `jail` limits, would exceed (the daemon admits a jail only
    /// while its limits fit what the tenant has left).
    /// The keys a forked worker's cgroup may limit.
    static let forkLimitKeys: Set<String> = ["memory_max", "memory_high", "swap_max", "pids_max", "cpu", "cpu_max", "cpu_weight"]

    /// A profile the daemon launches may not pass fds (`[fds] pass`): a
    /// launcher passes its own fds by number, and the daemon's fds are its
    /// listening sockets, its audit log and other jails' channels, which no
    /// worker may hold. Names the key of the configuration that loads it.
    static func refusePassedFDs(_ profile: Profile, _ table: TableReader) throws(ProfileError) {
        guard profile.passFDs.isEmpty else {
            throw table.error("profile", "\(profile.file) passes fds \(profile.passFDs.map(String.init).joined(separator: ", ")) "
                + "([fds] pass); the daemon's fds would enter the jail. A profile for stockaded passes none")
        }
    }

    /// `[tenant.NAME.fork_limits]`, checked against the jail's limits (a
    /// fork cannot have more than the template's jail holds for all), or the
    /// default: the profile's memory_max, pids_max and cpu.
    static func forkLimits(_ t: TableReader, template: Bool, jail: LimitsSection) throws(ProfileError) -> LimitsSection {
        guard let f = try t.table("fork_limits") else {
            var limits = LimitsSection()
            limits.memoryMax = jail.memoryMax
            limits.pidsMax = jail.pidsMax
            limits.cpu = jail.cpu
            return limits
        }
        guard template else {
            throw t.error("fork_limits", "applies to forked workers, and this tenant forks none: set template = true, or put the limits in the profile's [limits]")
        }
        for key in f.keys where !forkLimitKeys.contains(key) {
            throw f.error(key, "a forked worker's cgroup takes \(forkLimitKeys.sorted().joined(separator: ", ")); \(key) is set for the whole jail, in the profile's [limits]")
        }
        var limits = LimitsSection()
        try limits.read(f)
        let above: [(String, Bool)] = [
            ("memory_max", limits.memoryMax.map { m in jail.memoryMax.map { m > $0 } ?? false } ?? false),
            ("pids_max", limits.pidsMax.map { p in jail.pidsMax.map { p > $0 } ?? false } ?? false),
            (f.has("cpu_max") ? "cpu_max" : "cpu", limits.cpu.map { c in jail.cpu.map { c.microCPUs > $0.microCPUs } ?? false } ?? false),
        ]
        for (key, over) in above where over {
            throw f.error(key, "is above the profile's [limits] \(key), which the template and all its forks share: a fork could never use it")
        }
        try f.finish()
        return limits
    }

    static func overdrawn(_ budget: LimitsSection, jail: LimitsSection, workers: Int)
        -> (key: String, reserved: String, total: String)? {
        guard let short = budget.shortfall(asking: jail, held: Array(repeating: jail, count: workers - 1)) else { return nil }
        return (short.key, "\(short.key) \(workers) x \(short.asked)", short.total)
    }

    /// Parses `text`; relative paths are taken from the directory of `file`.
    package static func parse(text: String, file: String) throws(ProfileError) -> DaemonConfig {
        let root = try TableReader.parse(text: text, file: file)
        let dir = DaemonPath.directory(of: DaemonPath.absolute(file, base: FileManager.default.currentDirectoryPath))
        func path(_ t: TableReader, _ key: String) throws(ProfileError) -> String? {
            guard let raw = try t.string(key) else { return nil }
            guard !raw.isEmpty else { throw t.error(key, "a path cannot be empty") }
            return DaemonPath.absolute(DaemonPath.expand(raw, configDir: dir), base: dir)
        }

        guard let daemon = try root.table("daemon") else {
            throw root.error("daemon", "missing [daemon] table (socket, audit_log)")
        }
        guard let socket = try path(daemon, "socket") else { throw daemon.error("socket", "missing: the API socket path") }
        guard socket.utf8.count < 108 else {
            throw daemon.error("socket", "\(socket) is \(socket.utf8.count) bytes; a unix socket path must be under 108")
        }
        guard let audit = try path(daemon, "audit_log") else {
            throw daemon.error("audit_log", "missing: the audit log path (JSON lines)")
        }
        var modeValue: UInt32 = 0o666
        if let m = try daemon.string("socket_mode") {
            guard let v = UInt32(m, radix: 8), v <= 0o777 else {
                throw daemon.error("socket_mode", "expected an octal mode such as \"0660\", got \"\(m)\"")
            }
            modeValue = v
        }
        let maxBody = try daemon.size("max_request_bytes")
        var maxRequestBytes = 16 << 20
        if let maxBody {
            guard case .bytes(let n) = maxBody, n > 0, n <= 1 << 30 else {
                throw daemon.error("max_request_bytes", "must be between 1 byte and 1G")
            }
            maxRequestBytes = Int(n)
        }
        let cgroups = try daemon.bool("cgroups") ?? true
        let cgroupBase = try daemon.string("cgroup_base") ?? "stockaded"
        guard TenantBudget.isValidName(cgroupBase) else {
            throw daemon.error("cgroup_base", "a cgroup name must be 1-64 ASCII letters, digits, '-' or '_'")
        }
        let drain = try daemon.duration("drain_timeout") ?? .seconds(10)
        var limits = ConnectionLimits()
        limits.total = try daemon.int("max_connections", in: 1...1_000_000) ?? limits.total
        limits.perUid = try daemon.int("max_connections_per_uid", in: 1...1_000_000) ?? min(limits.perUid, limits.total)
        guard limits.perUid <= limits.total else {
            throw daemon.error("max_connections_per_uid", "\(limits.perUid) is above max_connections \(limits.total)")
        }
        for (key, keyPath) in [("header_timeout", \ConnectionLimits.headerTimeout), ("body_timeout", \.bodyTimeout), ("idle_timeout", \.idleTimeout)] {
            if let d = try daemon.duration(key) {
                guard d > .zero else { throw daemon.error(key, "must be above zero") }
                limits[keyPath: keyPath] = d
            }
        }
        limits.fdReserve = try daemon.int("fd_reserve", in: 16...1_000_000) ?? limits.fdReserve
        var auditFailure = AuditFailurePolicy.refuse
        if let word = try daemon.string("audit_failure") {
            guard let p = AuditFailurePolicy(rawValue: word) else {
                throw daemon.error("audit_failure", "expected \"refuse\" or \"continue\", got \"\(word)\"")
            }
            auditFailure = p
        }
        try daemon.finish()

        var clients: [ClientConfig] = []
        if let all = try root.table("client") {
            for name in all.keys {
                guard TenantBudget.isValidName(name) else {
                    throw all.error(name, "a client name must be 1-64 ASCII letters, digits, '-' or '_'")
                }
                guard let c = try all.table(name) else { throw all.error(name, "must be a table: [client.\(name)]") }
                var token = try c.string("token")
                if let file = try path(c, "token_file") {
                    guard token == nil else { throw c.error("token_file", "give token or token_file, not both") }
                    guard let data = FileManager.default.contents(atPath: file) else {
                        throw c.error("token_file", "\(file) cannot be read")
                    }
                    token = String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
                }
                guard let token else { throw c.error("token", "missing: the client's bearer token (or token_file)") }
                guard token.utf8.count >= 16 else {
                    throw c.error("token", "a token must be at least 16 characters (it is \(token.utf8.count))")
                }
                guard token.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7f }) else {
                    throw c.error("token", "a token must be printable ASCII without spaces")
                }
                guard let uid = try c.int("uid", in: 0...Int(UInt32.max - 1)) else {
                    throw c.error("uid", "missing: the unix uid allowed to present this token")
                }
                try c.finish()
                if let other = clients.first(where: { $0.token == token }) {
                    throw c.error("token", "the same token as client \(other.name); every client needs its own")
                }
                clients.append(ClientConfig(name: name, token: token, uid: UInt32(uid)))
            }
            try all.finish()
        }

        var models: [ModelConfig] = []
        if let all = try root.table("model") {
            for name in all.keys {
                guard TenantBudget.isValidName(name) else {
                    throw all.error(name, "a model name must be 1-64 ASCII letters, digits, '-' or '_'")
                }
                guard let m = try all.table(name) else { throw all.error(name, "must be a table: [model.\(name)]") }
                var files: [ModelFile] = []
                for f in try m.tables("file") {
                    guard let p = try path(f, "path") else { throw f.error("path", "missing: the model file on the host") }
                    guard let digest = try f.string("sha256") else { throw f.error("sha256", "missing: the file's SHA-256 digest (64 hex digits)") }
                    let lower = digest.lowercased()
                    guard lower.utf8.count == 64, lower.utf8.allSatisfy({ ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x61 && $0 <= 0x66) }) else {
                        throw f.error("sha256", "expected 64 hex digits, got \"\(digest)\"")
                    }
                    let fileName = try f.string("name") ?? String(p.split(separator: "/").last ?? "")
                    let parts = fileName.split(separator: "/", omittingEmptySubsequences: false)
                    guard !fileName.isEmpty, !fileName.hasPrefix("/"), !parts.contains(".."), !parts.contains(""),
                          !fileName.utf8.contains(where: { $0 == UInt8(ascii: ",") || $0 == UInt8(ascii: "=") || $0 < 0x20 }) else {
                        throw f.error("name", "\"\(fileName)\" must be a relative path without '..', empty parts, ',' or '='")
                    }
                    guard !files.contains(where: { $0.name == fileName }) else {
                        throw f.error("name", "two files of model \(name) are named \(fileName)")
                    }
                    try f.finish()
                    files.append(ModelFile(path: p, name: fileName, sha256: lower))
                }
                guard !files.isEmpty else { throw m.error("file", "model \(name) has no files: add [[model.\(name).file]] tables (path, sha256, name)") }
                try m.finish()
                models.append(ModelConfig(name: name, files: files))
            }
            try all.finish()
        }

        var tenants: [TenantConfig] = []
        // A daemon may hold only jails built ahead ([via]) and no tenants.
        let tenantTable = try root.table("tenant")
        guard tenantTable != nil || root.has("via") else {
            throw root.error("tenant", "no tenants: add a [tenant.NAME] table (or a [via] section)")
        }
        for name in tenantTable?.keys ?? [] {
            let all = tenantTable!
            guard TenantBudget.isValidName(name) else {
                throw all.error(name, "a tenant name must be 1-64 ASCII letters, digits, '-' or '_'")
            }
            guard let t = try all.table(name) else { throw all.error(name, "must be a table: [tenant.\(name)]") }
            guard let profilePath = try path(t, "profile") else { throw t.error("profile", "missing: the jail profile for this tenant's workers") }
            let profile = try Profile.load(path: profilePath)
            try Self.refusePassedFDs(profile, t)
            guard let rawCommand = try t.strings("command"), !rawCommand.isEmpty else {
                throw t.error("command", "missing: the worker's argv inside the jail, e.g. [\"/usr/bin/python3\", \"worker.py\"]")
            }
            var tenant = TenantConfig(name: name, profilePath: profilePath, profile: profile,
                                      command: rawCommand.map { DaemonPath.expand($0, configDir: dir) })
            if let binds = try t.strings("binds") {
                tenant.binds = binds.map { DaemonPath.absolute(DaemonPath.expand($0, configDir: dir), base: dir) }
            }
            if let env = try t.stringTable("env") {
                tenant.environment = env.map { ($0.0, DaemonPath.expand($0.1, configDir: dir)) }
            }
            tenant.template = try t.bool("template") ?? false
            tenant.forkLimits = try Self.forkLimits(t, template: tenant.template, jail: profile.limits)
            tenant.minWorkers = try t.int("workers_min", in: 0...1024) ?? 1
            tenant.maxWorkers = try t.int("workers_max", in: 1...1024) ?? max(1, tenant.minWorkers)
            guard tenant.maxWorkers >= tenant.minWorkers else {
                throw t.error("workers_max", "\(tenant.maxWorkers) is below workers_min \(tenant.minWorkers)")
            }
            tenant.queueLimit = try t.int("queue", in: 0...1_000_000) ?? 64
            if let size = try t.size("max_response_bytes") {
                guard case .bytes(let n) = size, n >= 64, n <= UInt64(ChannelLimits.bulkCeiling) else {
                    throw t.error("max_response_bytes", "must be between 64 bytes and 4G")
                }
                tenant.maxResponseBytes = Int(n)
            }
            tenant.denials = try DenialPolicy(reading: t, over: profile.denials)
            if let d = try t.duration("request_timeout") {
                guard d > .zero else { throw t.error("request_timeout", "must be above zero") }
                tenant.requestTimeout = d
            }
            if let b = try t.table("budget") {
                var budget = TenantBudget(name: name)
                try budget.limits.read(b)
                budget.maxJails = try b.int("max_jails", in: 1...100_000)
                if budget.limits.memoryHigh != nil {
                    throw b.error("memory_high", "a tenant budget has no memory_high; set it per jail in the profile")
                }
                try b.finish()
                // A template tenant's workers live in one jail, its template's.
                let jails = tenant.template ? 1 : tenant.maxWorkers
                if let most = budget.maxJails, most < jails {
                    throw b.error("max_jails", "\(most) is below workers_max \(tenant.maxWorkers): the pool could never grow that far")
                }
                if let overdrawn = Self.overdrawn(budget.limits, jail: tenant.profile.limits, workers: jails) {
                    throw b.error(overdrawn.key, "\(tenant.maxWorkers) workers (workers_max) of \(tenant.profilePath) reserve \(overdrawn.reserved), "
                        + "more than the tenant's \(overdrawn.total): the pool could never grow that far; raise the budget, "
                        + "lower workers_max or the profile's [limits]")
                }
                tenant.budget = budget
            }
            if t.has("model") {
                throw t.error("model", "models are declared once, as [model.NAME] with their files and digests; name them here: models = [\"NAME\"]")
            }
            for (i, modelName) in (try t.strings("models") ?? []).enumerated() {
                guard let model = models.first(where: { $0.name == modelName }) else {
                    let known = models.map(\.name).joined(separator: ", ")
                    throw t.error("models", "models[\(i)]: no [model.\(modelName)] is declared (declared: \(known.isEmpty ? "none" : known))")
                }
                guard !tenant.models.contains(model) else { throw t.error("models", "\(modelName) is named twice") }
                tenant.models.append(model)
            }
            if let access = try t.table("access") {
                for client in access.keys {
                    guard let roleName = try access.string(client) else { continue }
                    guard let role = Role(rawValue: roleName) else {
                        throw access.error(client, "unknown role \"\(roleName)\"; use admin, invoker or viewer")
                    }
                    guard clients.contains(where: { $0.name == client }) else {
                        let known = clients.map(\.name).joined(separator: ", ")
                        throw access.error(client, "no client named \"\(client)\" (known: \(known.isEmpty ? "none" : known))")
                    }
                    tenant.access[client] = role
                }
                try access.finish()
            }
            try t.finish()
            tenants.append(tenant)
        }
        try tenantTable?.finish()
        let via = try ViaConfig.read(root, dir: dir, apiSocket: socket)
        try root.finish()
        var config = DaemonConfig(file: file, socketPath: socket, auditLogPath: audit, socketMode: modeValue,
                                  maxRequestBytes: maxRequestBytes, cgroups: cgroups, cgroupBase: cgroupBase,
                                  drainTimeout: drain, clients: clients, tenants: tenants)
        config.connections = limits
        config.models = models
        config.auditFailure = auditFailure
        config.via = via
        return config
    }
}

/// Lexical path helpers (no symlinks are followed here; the launcher
/// resolves bind sources itself).
enum DaemonPath {
    /// Replaces `${CONFIG_DIR}`; a value that starts with it is a path and
    /// is normalized (`/etc/stockade/../x` -> `/etc/x`).
    static func expand(_ text: String, configDir: String) -> String {
        let expanded = text.replacingOccurrences(of: "${CONFIG_DIR}", with: configDir)
        return text.hasPrefix("${CONFIG_DIR}") ? normalize(expanded) : expanded
    }

    static func absolute(_ path: String, base: String) -> String {
        normalize(path.hasPrefix("/") ? path : base + "/" + path)
    }

    static func normalize(_ path: String) -> String {
        var parts: [Substring] = []
        for part in path.split(separator: "/", omittingEmptySubsequences: true) {
            if part == "." { continue }
            if part == ".." { if !parts.isEmpty { parts.removeLast() }; continue }
            parts.append(part)
        }
        return "/" + parts.joined(separator: "/")
    }

    static func directory(of path: String) -> String {
        guard let slash = path.lastIndex(of: "/"), slash != path.startIndex else { return "/" }
        return String(path[..<slash])
    }
}
