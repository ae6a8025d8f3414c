public import StockadeConfig
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// One tenant's total budget: what all of its jails together may use, and
/// how many jails it may hold at once.
///
/// The limits are written on the tenant's own cgroup, so the kernel holds
/// the total whatever the jails ask; admission (``CgroupManager``) also
/// refuses a jail whose own limits do not fit in what the tenant has left.
public struct TenantBudget: Sendable, Equatable {
    public var name: String
    public var limits: LimitsSection
    /// nil: no limit on the number of jails.
    public var maxJails: Int?

    public init(name: String, limits: LimitsSection = LimitsSection(), maxJails: Int? = nil) {
        self.name = name
        self.limits = limits
        self.maxJails = maxJails
    }

    /// A tenant name doubles as a cgroup directory name.
    public static func isValidName(_ name: String) -> Bool {
        !name.isEmpty && name.utf8.count <= 64
            && name.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-" || $0 == "_") }
    }
}

/// The tenants file: one `[tenant.NAME]` table per tenant, with the same
/// keys as a profile's `[limits]` plus `max_jails`.
///
/// ```toml
/// [tenant.alpha]
/// memory_max = "2G"
/// pids_max = 512
/// cpu = 1.5
/// max_jails = 8
/// ```
public struct TenantsFile: Sendable, Equatable {
    public var tenants: [TenantBudget]

    public init(tenants: [TenantBudget]) { self.tenants = tenants }

    public subscript(name: String) -> TenantBudget? { tenants.first { $0.name == name } }

    public static func load(path: String) throws(ProfileError) -> TenantsFile {
        try parse(text: TableReader.readText(path: path, what: "tenants file"), file: path)
    }

    public static func parse(text: String, file: String) throws(ProfileError) -> TenantsFile {
        let root = try TableReader.parse(text: text, file: file)
        var result: [TenantBudget] = []
        if let all = try root.table("tenant") {
            for name in all.keys.sorted() {
                guard TenantBudget.isValidName(name) else {
                    throw all.error(name, "a tenant name must be 1-64 ASCII letters, digits, '-' or '_'")
                }
                guard let t = try all.table(name) else {
                    throw all.error(name, "must be a table: [tenant.\(name)]")
                }
                var budget = TenantBudget(name: name)
                try budget.limits.read(t)
                if let n = try t.int("max_jails", in: 1...100_000) { budget.maxJails = n }
                if budget.limits.memoryHigh != nil {
                    throw t.error("memory_high", "a tenant budget has no memory_high; set it per jail in the profile")
                }
                try t.finish()
                result.append(budget)
            }
            try all.finish()
        }
        try root.finish()
        guard !result.isEmpty else {
            throw ProfileError(file: file, line: nil, key: "tenant", message: "no tenants: add a [tenant.NAME] table")
        }
        return TenantsFile(tenants: result)
    }
}
