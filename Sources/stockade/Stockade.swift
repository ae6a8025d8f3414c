import ArgumentParser
import StockadeCore

@main
struct StockadeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "stockade",
        abstract: "Run untrusted programs in a Linux jail.",
        version: Stockade.version,
        subcommands: [RunCommand.self, LintCommand.self, ProbeCommand.self, CompileCommand.self, ExplainCommand.self,
                      CgroupsCommand.self]
    )
}
