import ArgumentParser
import Foundation
import StockadeJail
import StockadeProfileTesting
#if canImport(Glibc)
import Glibc
#endif

/// `stockade minimize P -- TEST...`: the smallest profile under which a test still passes.
struct MinimizeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "minimize",
        abstract: "Shrink a profile's allowed system calls to the fewest under which a test passes.",
        discussion: """
        Delta debugging over the profile's allow entries and the system \
        calls of its permitting rules (rules with argument conditions are \
        units of their own, so the argument sets shrink too); with base = \
        "stock" the stock allowlist is written out entry by entry first. \
        What only denies is kept. TEST runs once per candidate with the \
        candidate profile's path in place of every {} in its arguments and \
        in $STOCKADE_PROFILE; exit status 0 means it passes, and a run longer \
        than --timeout fails. TEST must pass with the profile as given.

        Example:
          stockade minimize profiles/minimal.toml -o small.toml -- \\
            stockade run --profile {} -- /usr/bin/python3 -c 'print(1)'
        """
    )

    @Argument(help: "The profile to shrink.")
    var profile: String

    @Option(name: .shortAndLong, help: "Write the smallest profile here (default: standard output).")
    var output: String?

    @Option(help: "Seconds one test run may take; a run past it fails.")
    var timeout = 60

    @Argument(parsing: .postTerminator, help: "The test command.")
    var test: [String] = []

    func validate() throws {
        if test.isEmpty { throw ValidationError("give the test after --: stockade minimize P -- TEST...") }
    }

    func run() throws {
        _ = try ProfileTools.load(profile)  // a clear message for a broken profile
        let text = try ProfileTools.read(profile, what: "profile")
        let directory = URL(fileURLWithPath: profile).standardizedFileURL.deletingLastPathComponent().path
        let minimizer: SeccompMinimizer
        do { minimizer = try SeccompMinimizer(text: text, file: profile, directory: directory) } catch {
            throw PolicyCommandError(error.description)
        }
        var template = Array("/tmp/stockade-minimize-XXXXXX".utf8CString)
        guard let dir = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }).map({ String(cString: $0) }) else {
            throw PolicyCommandError("cannot make a temporary directory: \(String(cString: strerror(errno)))")
        }
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let candidate = dir + "/candidate.toml"
        var runs = 0
        func passes(_ text: String) throws -> Bool {
            runs += 1
            try? FileManager.default.removeItem(atPath: candidate)
            guard FileManager.default.createFile(atPath: candidate, contents: Data(text.utf8), attributes: [.posixPermissions: 0o600]) else {
                throw PolicyCommandError("cannot write \(candidate)")
            }
            let process = Process()
            process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
            process.arguments = test.map { $0.replacingOccurrences(of: "{}", with: candidate) }
            var env = ProcessInfo.processInfo.environment
            env["STOCKADE_PROFILE"] = candidate
            process.environment = env
            process.standardOutput = FileHandle.nullDevice
            process.standardError = FileHandle.nullDevice
            try process.run()
            // A candidate may make the test hang (a refused call retried
            // forever): past the timeout it fails.
            let deadline = ContinuousClock.now + .seconds(timeout)
            while process.isRunning && ContinuousClock.now < deadline { usleep(20_000) }
            if process.isRunning {
                process.terminate()
                let grace = ContinuousClock.now + .seconds(5)
                while process.isRunning && ContinuousClock.now < grace { usleep(20_000) }
                if process.isRunning { kill(process.processIdentifier, SIGKILL) }
                process.waitUntilExit()
                return false
            }
            return process.terminationReason == .exit && process.terminationStatus == 0
        }
        let all = Set(minimizer.units)
        guard try passes(minimizer.render(keeping: all)) else {
            throw PolicyCommandError("the test fails with the profile as given (\(minimizer.expandedStock ? "stock allowlist written out" : "as written")); nothing to shrink")
        }
        let result = try minimizer.minimize(passes)
        let small = minimizer.render(keeping: Set(result.kept))
        if let output {
            guard FileManager.default.createFile(atPath: output, contents: Data(small.utf8), attributes: [.posixPermissions: 0o644]) else {
                throw PolicyCommandError("cannot write \(output)")
            }
        } else {
            print(small, terminator: "")
        }
        printError("stockade: kept \(result.kept.count) of \(all.count) allowed entries after \(runs) test runs")
    }
}
