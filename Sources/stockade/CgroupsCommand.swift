import ArgumentParser
import StockadeConfig
import StockadeCgroups

struct CgroupsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cgroups",
        abstract: "Show how this host's cgroups can hold jail budgets, and check a tenants file.",
        discussion: """
            Prints the cgroup layout (pure v2, hybrid or v1), where the launcher sits, \
            which backend Stockade uses and why, and where it creates tenants and jails. \
            With --tenants it also checks that every tenant's budget can be enforced \
            here. Creating cgroups needs root (or a delegated cgroup on v2).

            Example:
              stockade cgroups --tenants examples/tenants.toml
            """
    )

    @Option(name: .long, help: ArgumentHelp("A tenants file to check against this host.", valueName: "file"))
    var tenants: String?

    @Option(name: .customLong("cgroup-base"), help: ArgumentHelp("The base cgroup, relative to the hierarchy root (as for run).", valueName: "path"))
    var cgroupBase: String?

    func run() throws {
        let host = CgroupHost.detect()
        let budgets: [TenantBudget]
        do {
            budgets = try tenants.map { path throws(ProfileError) in try TenantsFile.load(path: path).tenants } ?? []
        } catch {
            throw StockadeFailure(message: error.description, status: 2)
        }
        let base: CgroupManager.Configuration.Base = cgroupBase.map { .path($0) } ?? .automatic(name: "stockade")
        let manager: CgroupManager
        do {
            manager = try CgroupManager(configuration: .init(base: base, tenants: budgets))
        } catch {
            print(host.diagnosis)
            throw StockadeFailure(message: "cgroup: \(error)", status: 1)
        }
        defer { try? manager.close() }
        print(manager.diagnosis)
        for path in manager.swept { print("removed a stale jail cgroup: \(path)") }
        var failed = false
        for budget in budgets {
            do {
                try manager.prepareTenant(budget.name)
                print("tenant \(budget.name): enforceable")
            } catch {
                print("tenant \(budget.name): \(error)")
                failed = true
            }
        }
        if failed { throw ExitCode(1) }
    }
}
