import ArgumentParser
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
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

    /// Runs the test (PATH searched) with stdout and stderr on /dev/null and
    /// the candidate in $STOCKADE_PROFILE; true when it exits 0 in time.
    /// Past the timeout it gets SIGTERM, then SIGKILL, and fails.
    static func runTest(_ argv: [String], profile: String, timeout: Int) throws -> Bool {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0)
        var env = ProcessInfo.processInfo.environment
        env["STOCKADE_PROFILE"] = profile
        let cArgs = argv.map { strdup($0) } + [nil]
        let cEnv = env.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer { for p in cArgs + cEnv { free(p) } }
        var pid: pid_t = 0
        let rc = posix_spawnp(&pid, argv[0], &actions, nil, cArgs, cEnv)
        guard rc == 0 else { throw PolicyCommandError("cannot run \(argv[0]): \(String(cString: strerror(rc)))") }
        var status: Int32 = 0
        func reaped() -> Bool {
            while true {
                let r = waitpid(pid, &status, WNOHANG)
                if r == pid { return true }
                if r < 0 && errno == EINTR { continue }
                return false
            }
        }
        let deadline = ContinuousClock.now + .seconds(timeout)
        while !reaped() {
            guard ContinuousClock.now < deadline else {
                kill(pid, SIGTERM)
                let grace = ContinuousClock.now + .seconds(5)
                while !reaped() {
                    if ContinuousClock.now >= grace { kill(pid, SIGKILL); while waitpid(pid, &status, 0) < 0 && errno == EINTR {}; break }
                    usleep(20_000)
                }
                return false
            }
            usleep(20_000)
        }
        // Exited (not signalled) with status 0.
        return status & 0x7f == 0 && (status >> 8) & 0xff == 0
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
            return try Self.runTest(test.map { $0.split(separator: "{}", omittingEmptySubsequences: false).joined(separator: candidate) }, profile: candidate, timeout: timeout)
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
