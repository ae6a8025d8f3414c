import StockadeConfig
import StockadeCgroups
import StockadeJail

/// The cgroup a jail started from the command line runs in: made when the
/// profile has [limits] or a tenant is named, for `stockade run` and
/// `stockade probe` alike.
enum JailBudget {
    /// Where no cgroup can be made and no tenant was asked for, the profile's
    /// budget is held by rlimits as far as they can hold it (added to
    /// `profile`'s rlimits), and what they cannot hold must be waived by the
    /// profile (`Profile.holdLimitsWithoutCgroup`); else the launch is
    /// refused, naming the limit.
    static func make(profile: inout Profile, tenants: String? = nil, tenant: String? = nil,
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
            // A tenant's budget is always held by its cgroup.
            guard tenant == nil && tenants == nil else {
                throw StockadeFailure(message: "cgroup: \(error)", status: 125)
            }
            let notes: [String]
            do {
                notes = try profile.holdLimitsWithoutCgroup(reason: "\(error)")
            } catch {
                throw StockadeFailure(message: error.description, status: 125)
            }
            for note in notes { printError("stockade: note: \(note)") }
            return nil
        }
    }
}

extension JailBudget {
    /// Prepares `request`'s security and launches it, as `run` and `learn`
    /// do; on failure the terminal is closed and the budget's cgroup removed
    /// before the step's error is thrown (status 125).
    static func launch(_ request: inout LaunchRequest, terminal: JailTerminal?,
                       budget: (manager: CgroupManager, jail: JailGroup)?) throws -> Jail {
        do {
            // After the cgroup: a [devices] allowlist is attached to it.
            try JailSecurity.prepare(&request)
            // `run` and `learn` wait for the jail on this thread.
            request.cloneOnMainThread = true
            return try Launcher.launch(request)
        } catch {
            terminal?.close()
            try? request.cgroup?.remove()
            try? budget?.manager.close()
            if let error = error as? JailError { throw StockadeFailure(message: error.description, status: 125) }
            throw StockadeFailure(message: "\(error)", status: 125)
        }
    }

    /// Waits for `jail` as `run` and `learn` do: the caller's signals are
    /// forwarded and the terminal relayed meanwhile; then the jail's last
    /// output, the caller's terminal as it was, and the budget's manager
    /// closed.
    static func wait(for jail: Jail, terminal: JailTerminal?, budget: (manager: CgroupManager, jail: JailGroup)?,
                     timeLimit: Duration?) throws -> JailExit {
        let forwarding = SignalForwarder(jail: jail)
        terminal?.startRelay()
        let exit = try jail.wait(timeLimit: timeLimit)
        terminal?.finish()
        forwarding.stop()
        try? budget?.manager.close()
        return exit
    }
}
