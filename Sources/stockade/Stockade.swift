import ArgumentParser
import StockadeConfig
#if canImport(Glibc)
import Glibc
#endif

@main
struct StockadeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "stockade",
        abstract: "Run untrusted programs in a Linux jail.",
        version: Stockade.version,
        subcommands: [RunCommand.self, LintCommand.self, ProbeCommand.self, CompileCommand.self, ExplainCommand.self,
                      CgroupsCommand.self, SimulateCommand.self, DiffCommand.self, FuzzCommand.self, MinimizeCommand.self, LearnCommand.self,
                      TopCommand.self]
    )

    /// `stockade run` is on every jail's start-up path: its usual command
    /// lines are read directly (RunInvocation.parse); every other line,
    /// and any mistake, goes through ArgumentParser from the root.
    static func main() {
        // argv read directly: the standard library's CommandLine.arguments
        // builds its array through an unspecialized generic map on first use.
        var args: [String] = []
        args.reserveCapacity(Int(CommandLine.argc))
        for i in 1..<Int(max(CommandLine.argc, 1)) {
            if let p = CommandLine.unsafeArgv[i] { args.append(String(cString: p)) }
        }
        // What ArgumentParser would print, without building its command tree.
        if args == ["--version"] {
            print(Stockade.version)
            Glibc.exit(0)
        }
        if args.first == "run", ViaClient.wanted(Array(args.dropFirst())) {
            do {
                Glibc.exit(try ViaClient.run(ViaClient.parse(Array(args.dropFirst()))))
            } catch {
                exit(with: error)
            }
        }
        if args.first == "run", let command = RunInvocation.parse(Array(args.dropFirst())) {
            do {
                try command.run()
            } catch {
                exit(with: error)
            }
            Glibc.exit(0)
        }
        do {
            var command = try parseAsRoot(args)
            try command.run()
        } catch {
            exit(with: error)
        }
    }

    /// A failure Stockade itself reports is one line, `stockade: ...`, and its
    /// own status (125 for a jail that could not be built, 64 for a command
    /// line a subcommand rejects); the worker's exit status passes straight
    /// through; the rest is ArgumentParser's (parse errors, help).
    static func exit(with error: any Error) -> Never {
        if let failure = error as? StockadeFailure {
            printError("stockade: \(failure.message)")
            Glibc.exit(failure.status)
        }
        if let code = error as? ExitCode {
            Glibc.exit(code.rawValue)
        }
        // A command line a subcommand rejects after parsing (64, EX_USAGE).
        if let invalid = error as? ValidationError {
            printError("stockade: \(invalid.message)")
            Glibc.exit(64)
        }
        exit(withError: error)
    }
}
