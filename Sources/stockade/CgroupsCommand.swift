import ArgumentParser
import StockadeConfig
import StockadeCgroups
#if canImport(Glibc)
import Glibc
#endif

struct CgroupsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cgroups",
        abstract: "Show how this host's cgroups can hold jail budgets, and check a tenants file.",
        discussion: """
            Prints the cgroup layout (pure v2, hybrid or v1), where the launcher sits, \
            which backend Stockade uses and why, and where it creates tenants and jails. \
            With --tenants it also checks that every tenant's budget can be enforced \
            here. Creating cgroups needs root (or a delegated cgroup).

            --delegate USER, run once as root, prepares a cgroup for USER where \
            no service manager delegates one (/stockade/user-UID in each hierarchy), \
            so that USER's rootless launches get their [limits] as cgroup limits. \
            On cgroup v2 the launcher must run inside it: root starts USER's \
            session in its leaf /stockade/user-UID/session. --undelegate USER \
            removes it again once nothing runs there.

            Examples:
              stockade cgroups --tenants examples/tenants.toml
              sudo stockade cgroups --delegate alice
            """
    )

    @Option(name: .long, help: ArgumentHelp("A tenants file to check against this host.", valueName: "file"))
    var tenants: String?

    @Option(name: .customLong("cgroup-base"), help: ArgumentHelp("The base cgroup, relative to the hierarchy root (as for run).", valueName: "path"))
    var cgroupBase: String?

    @Option(name: .long, help: ArgumentHelp("As root: prepare a delegated cgroup for this user (name or uid).", valueName: "user"))
    var delegate: String?

    @Option(name: .long, help: ArgumentHelp("As root: remove the delegated cgroup of this user (name or uid).", valueName: "user"))
    var undelegate: String?

    func validate() throws {
        if delegate != nil && undelegate != nil {
            throw ValidationError("give --delegate or --undelegate, not both")
        }
        if (delegate != nil || undelegate != nil) && (tenants != nil || cgroupBase != nil) {
            throw ValidationError("--delegate and --undelegate take no --tenants or --cgroup-base")
        }
    }

    /// A user name or a numeric uid, with its primary group.
    private static func user(_ spec: String) throws -> (uid: UInt32, gid: UInt32) {
        if let pw = getpwnam(spec) { return (pw.pointee.pw_uid, pw.pointee.pw_gid) }
        if let uid = UInt32(spec) {
            if let pw = getpwuid(uid) { return (uid, pw.pointee.pw_gid) }
            return (uid, uid)
        }
        throw StockadeFailure(message: "no such user: \(spec)", status: 2)
    }

    func run() throws {
        if let spec = delegate {
            let (uid, gid) = try Self.user(spec)
            do {
                let delegated = try CgroupDelegation.delegate(uid: uid, gid: gid)
                for dir in delegated.directories { print("delegated to uid \(uid): \(dir)") }
                if let session = delegated.session {
                    print("cgroup v2: start uid \(uid)'s session or service in \(session) (as root, write its pid to \(session)/cgroup.procs); a launcher outside the delegated cgroup cannot move jails into it")
                }
            } catch {
                throw StockadeFailure(message: "cgroup: \(error)", status: 1)
            }
            return
        }
        if let spec = undelegate {
            let (uid, _) = try Self.user(spec)
            do {
                for dir in try CgroupDelegation.undelegate(uid: uid) { print("removed: \(dir)") }
            } catch {
                throw StockadeFailure(message: "cgroup: \(error)", status: 1)
            }
            return
        }
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
