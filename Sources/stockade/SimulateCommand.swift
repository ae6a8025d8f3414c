import ArgumentParser
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import StockadeConfig
import StockadeSeccomp
import StockadeJail
import StockadeProfileTesting

/// `stockade simulate`: the verdicts of a filter for a corpus of calls.
struct SimulateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "simulate",
        abstract: "Give a seccomp filter's verdict for each call of a corpus, checked against the profile.",
        discussion: """
        The filter is the profile's, compiled as `stockade run` compiles it, \
        or raw BPF files (--bpf, as `stockade compile --raw` writes them; \
        several are stacked in the order given, the least permissive \
        verdict winning, as the kernel does). The BPF is checked as the \
        kernel checks it at load and run by a complete interpreter of \
        seccomp's classic BPF.

        The corpus has one JSON object a line: {"arch": "x86_64", "nr": \
        "socket", "args": [16, 3, 0]} (arch x86_64, i386, x32 or a number; \
        nr a number or name; args numbers or "0x..." strings). Without \
        --corpus, a generated corpus is used: every system call with the \
        boundary values of the filter's comparisons, garbage in the high \
        words, x32 and i386 numbers, numbers past the table.

        Each verdict is checked against a second, independent evaluation \
        of the profile's [seccomp] (PROFILE itself, or --expect). Exit \
        status 1 on any difference, naming the first few.
        """
    )

    @Argument(help: "The profile (a TOML file); leave out with --bpf.")
    var profile: String?

    @Option(name: .customLong("bpf"), help: "A raw BPF filter file instead of a profile (repeat to stack filters, first loaded first).")
    var bpf: [String] = []

    @Option(help: "The corpus (JSON lines). Default: a generated corpus.")
    var corpus: String?

    @Option(help: "The profile whose meaning the verdicts must match (default: PROFILE).")
    var expect: String?

    @Flag(help: "Print every verdict, not only the differences.")
    var all = false

    @Option(help: "How many differences to name (default 5).")
    var show = 5

    func validate() throws {
        if profile == nil && bpf.isEmpty { throw ValidationError("give a profile or --bpf FILE") }
        if profile != nil && !bpf.isEmpty { throw ValidationError("give a profile or --bpf, not both") }
    }

    func run() throws {
        var filters: [[BPFInstruction]] = []
        if let profile {
            filters = [try ProfileTools.compile(profile).instructions]
        } else {
            for path in bpf {
                do { filters.append(try Simulation.readBPF(path: path)) } catch { throw PolicyCommandError("\(path): \(error)") }
            }
        }
        let reference = try (expect ?? profile).map(ProfileTools.reference)
        let simulation: Simulation
        do { simulation = try Simulation(filters: filters, reference: reference) } catch { throw PolicyCommandError("\(error)") }
        let calls: [SeccompData]
        if let corpus {
            let text = try ProfileTools.read(corpus, what: "corpus")
            do { calls = try CallCorpus.parse(text, file: corpus) } catch { throw PolicyCommandError(error.description) }
        } else {
            calls = Boundaries.corpus(programs: filters, reference: reference)
        }
        let rows: [Simulation.Row]
        do { rows = try simulation.run(calls) } catch { throw PolicyCommandError("\(error)") }
        var out = ""
        if all { for r in rows { out += r.text + "\n" } }
        let differences = rows.filter(\.differs)
        print(out, terminator: "")
        if reference == nil {
            print("\(rows.count) calls simulated (no profile to check them against)")
            return
        }
        guard differences.isEmpty else {
            printError("stockade: \(differences.count) of \(rows.count) verdicts differ from the profile's meaning:")
            for r in differences.prefix(show) { printError("  " + r.text) }
            throw ExitCode(1)
        }
        print("\(rows.count) calls: every verdict matches the profile's meaning")
    }
}

/// What the tester commands share: reading and compiling profiles with
/// messages that name the file.
enum ProfileTools {
    static func load(_ path: String) throws -> Profile {
        do { return try Profile.load(path: path) } catch { throw PolicyCommandError(error.description) }
    }

    static func compile(_ path: String) throws -> SeccompProgram {
        do { return try load(path).seccomp.compile() } catch let e as PolicyCommandError { throw e } catch { throw PolicyCommandError("\(path): \(error)") }
    }

    static func read(_ path: String, what: String) throws -> String {
        guard let data = FileManager.default.contents(atPath: path), let text = String(data: data, encoding: .utf8) else {
            throw PolicyCommandError("cannot read the \(what) \(path)")
        }
        return text
    }

    static func reference(_ path: String) throws -> ReferencePolicy {
        do { return try ReferencePolicy(text: try read(path, what: "profile"), file: path) } catch let e as ReferencePolicy.ReadError {
            throw PolicyCommandError(e.description)
        }
    }
}
