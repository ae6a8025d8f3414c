import ArgumentParser
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import StockadeJail
import StockadeSeccomp
import StockadeProfileTesting

/// `stockade fuzz`: mutant profiles against the compiler, the reference
/// evaluation and, with --live, the kernel.
struct FuzzCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fuzz",
        abstract: "Fuzz the seccomp compiler with mutant profiles; exit 1 on any failure.",
        discussion: """
        First the regression corpus: profiles and calls that broke other \
        seccomp compilers (kafel's x32 hole, libseccomp's 64-bit comparisons, \
        i386 setuid32, socketcall around socket rules, high-word garbage on \
        int arguments), with the answers written out by hand.

        Then RUNS mutants of a [seccomp] section, built along the profile \
        grammar from SEED. Each is compiled; its filter is checked as the \
        kernel checks it at load; its verdicts on a generated corpus (every \
        system call with boundary arguments, garbage in the high words, the \
        x32 bit, i386 numbers, numbers past the table) must match the \
        reference evaluation of the profile; and the metamorphic rules must \
        hold: reversing the rules changes no verdict, adding an allow denies \
        nothing more, and what the hardening refuses it refuses under every \
        profile. A failure is shrunk to the fewest profile elements that \
        still fail, and printed with the call.

        --live also launches jails from the mutants (root or user namespaces \
        needed): each makes raw system calls (probe/stockade-rawcall, built \
        by `make probe`), and what the kernel did must be what the \
        simulation predicted; the escape-probe battery's probes of the \
        hardening must all pass in a jail of each mutant that lifts nothing.
        """
    )

    @Option(help: "How many mutants.")
    var runs = 200

    @Option(help: "The seed (the same seed, the same mutants).")
    var seed: UInt64 = 1

    @Flag(help: "Also run each mutant's raw-call corpus in real jails.")
    var live = false

    @Option(help: "With --live: the static raw-call helper (default: beside stockade, or .build/stockade-rawcall).")
    var rawcall: String?

    @Option(name: .customLong("probe-binary"), help: "With --live: the escape-probe battery (default: as `stockade probe` finds it).")
    var probeBinary: String?

    @Option(help: "With --live: how many of the mutants to launch (default: all).")
    var liveRuns: Int?

    func run() throws {
        var failed = false
        for c in RegressionCase.all {
            let problems = c.check()
            if problems.isEmpty { print("regression: \(c.name): ok (\(c.calls.count) calls)") }
            for p in problems { failed = true; printError("regression: \(p)") }
        }
        let started = ContinuousClock.now
        var passed: [SeccompSketch] = []
        let summary = ProfileFuzzer.run(runs: runs, seed: seed) { sketch, outcome in
            if case .passed = outcome { passed.append(sketch) }
        }
        let took = ContinuousClock.now - started
        print("offline: \(summary.mutants) mutants (\(summary.rejected) refused by the profile parser or compiler), \(summary.calls) calls checked, \(summary.failures.count) failures, \(took)")
        for f in summary.failures {
            failed = true
            printError("stockade: fuzz failure (seed \(seed)): \(f)")
        }
        if live {
            guard let helper = Self.locateHelper(rawcall) else {
                throw StockadeFailure(message: "no raw-call helper: build it with `make probe`, or pass --rawcall PATH", status: 125)
            }
            var harness: LiveFuzz
            do {
                harness = try LiveFuzz(helper: helper)
                harness.probeBinary = ProbeBattery.locateBinary(explicit: probeBinary)
            } catch {
                throw StockadeFailure(message: "fuzz --live: the baseline jail failed: \(error)", status: 125)
            }
            let liveStart = ContinuousClock.now
            var mutants = 0
            for sketch in passed.prefix(liveRuns ?? runs) {
                mutants += 1
                do {
                    if let m = try harness.check(sketch) {
                        failed = true
                        printError("stockade: fuzz --live mismatch (seed \(seed)): \(m)")
                        break
                    }
                    if let escape = try harness.battery(sketch) {
                        failed = true
                        printError("stockade: fuzz --live (seed \(seed)): \(escape)")
                        break
                    }
                } catch {
                    failed = true
                    printError("stockade: fuzz --live: a jail failed: \(error)")
                    break
                }
            }
            let elapsed = (ContinuousClock.now - liveStart).components
            let seconds = Double(elapsed.seconds) + Double(elapsed.attoseconds) / 1e18
            let rate = (Double(harness.jailsLaunched) / max(seconds, 0.001) * 10).rounded() / 10
            print("live: \(mutants) mutants, \(harness.jailsLaunched) jails, \(rate) jails/s; probe battery under \(harness.batteries) mutants (\(harness.batteriesSkipped) could not run it)"
                  + (harness.probeBinary == nil ? "; no probe binary (make probe): battery skipped" : ""))
        }
        if failed { throw ExitCode(1) }
    }

    static func locateHelper(_ explicit: String?) -> String? {
        if let explicit { return explicit }
        let exe = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().deletingLastPathComponent()
        for candidate in [exe.appendingPathComponent("stockade-rawcall").path, ".build/stockade-rawcall"]
            where FileManager.default.isExecutableFile(atPath: candidate) {
            return URL(fileURLWithPath: candidate).standardizedFileURL.path
        }
        return nil
    }
}
