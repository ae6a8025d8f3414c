// stockaded: the multi-tenant inference broker. See docs/openapi.yaml for
// the API and examples/stockaded.toml for the configuration.
import ArgumentParser
import Logging
import ServiceLifecycle
import StockadeDaemon
#if canImport(Glibc)
import Glibc
#endif

@main
struct Stockaded: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "stockaded",
        abstract: "Serve jailed inference workers to local clients over an HTTP API on a unix socket.",
        discussion: """
            stockaded reads its tenants and clients from a TOML file, keeps each tenant's \
            minimum of jailed workers warm, and answers on the socket the file names. \
            SIGTERM or SIGINT stops it: requests in flight finish (up to drain_timeout), \
            then every jail is killed and its cgroup removed.

            Example:
              stockaded --config examples/stockaded.toml
            """
    )

    @Option(name: .shortAndLong, help: "The configuration file (TOML).")
    var config: String

    @Flag(name: .long, help: "Check the configuration and the pinned model digests, then exit.")
    var check = false

    @Option(name: .long, help: "Log level: trace, debug, info, notice, warning, error.")
    var logLevel: String = "info"

    func run() async throws {
        let level = Logger.Level(rawValue: logLevel) ?? .info
        LoggingSystem.bootstrap { label in JournalLogHandler.daemonHandler(label: label, level: level) }
        let logger = Logger(label: "stockaded")
        let parsed: DaemonConfig
        do {
            parsed = try DaemonConfig.load(path: config)
        } catch {
            throw ValidationError("\(error)")
        }
        if check {
            var bad = false
            for model in parsed.models {
                for m in model.files {
                    do { try ModelDigest.verify(m); print("\(model.name): \(m.name): \(m.path): ok") } catch {
                        print("\(model.name): \(error)")
                        bad = true
                    }
                }
            }
            print("\(parsed.file): \(parsed.tenants.count) tenants, \(parsed.clients.count) clients")
            if bad { throw ExitCode(1) }
            return
        }
        // Jails die with the daemon (PDEATHSIG); a broken client connection
        // must not kill the daemon.
        signal(SIGPIPE, SIG_IGN)
        let daemon: Daemon
        do {
            daemon = try Daemon(config: parsed, logger: logger)
        } catch {
            throw ValidationError("\(error)")
        }
        // The systemd notifier runs after the daemon, so a graceful
        // shutdown reaches it first (STOPPING=1 before the drain).
        let systemd = SystemdService(daemon: daemon, logger: logger)
        let services: [ServiceGroupConfiguration.ServiceConfiguration] = [
            .init(service: daemon),
            .init(service: systemd, successTerminationBehavior: .ignore),
        ]
        let group = ServiceGroup(configuration: .init(services: services, gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        try await group.run()
    }
}
