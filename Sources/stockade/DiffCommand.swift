import ArgumentParser
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import StockadeSeccomp
import StockadeProfileTesting

/// `stockade diff A B`: what changed between two profiles, and whether B
/// widens A.
struct DiffCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "diff",
        abstract: "Compare two profiles' effective policies; exit 1 when B widens A.",
        discussion: """
        The system-call policies are compared on their compiled filters, per \
        architecture and system call, at the boundary values of the \
        constants both filters compare with: each region where their \
        verdicts part is reported once, with an example call \
        ("B newly allows socket(AF_NETLINK, SOCK_RAW)"). Namespaces, mounts, \
        the Landlock rights the mounts imply, devices, limits and passed \
        descriptors are compared too. Exit status 1 when anything is \
        widened, so a CI can gate profile changes; 0 otherwise.
        """
    )

    @Argument(help: "The old profile.")
    var a: String

    @Argument(help: "The new profile.")
    var b: String

    @Flag(help: "Print the changes as JSON.")
    var json = false

    struct Report: Encodable {
        var a: String
        var b: String
        var widens: Bool
        var pointsCompared: Int
        var changes: [PolicyDiff.Change]
    }

    func run() throws {
        let pa = try ProfileTools.load(a), pb = try ProfileTools.load(b)
        let ca = try ProfileTools.compile(a), cb = try ProfileTools.compile(b)
        let diff = PolicyDiff(pa, pb, programA: ca.instructions, programB: cb.instructions)
        if json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            let data = try encoder.encode(Report(a: a, b: b, widens: diff.widens, pointsCompared: diff.pointsCompared, changes: diff.changes))
            print(String(decoding: data, as: UTF8.self))
        } else if diff.changes.isEmpty {
            print("no difference (\(diff.pointsCompared) calls compared)")
        } else {
            print(diff.text)
            print("\(diff.changes.count) changes, \(diff.widens ? "B widens A" : "B does not widen A") (\(diff.pointsCompared) calls compared)")
        }
        if diff.widens { throw ExitCode(1) }
    }
}
