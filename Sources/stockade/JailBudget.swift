import StockadeConfig
import StockadeCgroups
import StockadeJail

/// The cgroup a jail started from the command line runs in: made when the
/// profile has [limits] or a tenant is named, for `stockade run` and
/// `stockade probe` alike.
enum JailBudget {
    static func make(profile: Profile, tenants: String? = nil, tenant: String? = nil,
                     cgroupBase: String? = nil) throws -> (manager: CgroupManager, jail: JailGroup)? {
        guard !profile.limits.isEmpty || tenant != nil || tenants != nil else { return nil }
        do {
            let budgets = try tenants.map { path throws(ProfileError) in try TenantsFile.load(path: path).tenants } ?? []
            let base: CgroupManager.Configuration.Base = cgroupBase.map { .path($0) } ?? .automatic(name: "stockade")
            let manager = try CgroupManager(configuration: .init(base: base, tenants: budgets))
            do {
                let jail = try manager.jail(tenant: tenant ?? CgroupManager.defaultTenant, limits: profile.limits)
                for note in jail.notes { printError("stockade: note: \(note)") }
                return (manager, jail)
            } catch {
                try? manager.close()
                throw error
            }
        } catch let error as ProfileError {
            throw StockadeFailure(message: error.description, status: 125)
        } catch let error as CgroupError {
            // A budget the profile marks optional, with no tenant asked for:
            // run without it, and say so.
            if !profile.limits.required && tenant == nil && tenants == nil {
                printError("stockade: note: running without the profile's [limits] (it says required = false): cgroup: \(error)")
                return nil
            }
            throw StockadeFailure(message: "cgroup: \(error)", status: 125)
        }
    }
}
