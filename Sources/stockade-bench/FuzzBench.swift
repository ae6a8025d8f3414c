// Part `fuzz`: `stockade fuzz --live` throughput. Mutant profiles from a
// fixed seed (the offline checks first, as the command does), then each
// passing mutant's raw-call corpus in jails, one call per jail: jails per
// second, and the offline checks' mutants per second for comparison.
import Foundation
import StockadeProfileTesting
#if canImport(Glibc)
import Glibc
#endif

func fuzzBench() throws {
    let env = ProcessInfo.processInfo.environment
    let root = FileManager.default.currentDirectoryPath
    let mutants = Int(env["BENCH_FUZZ_MUTANTS"] ?? "") ?? 6
    let helper = root + "/.build/stockade-rawcall"
    guard FileManager.default.isExecutableFile(atPath: helper) else {
        print("fuzz: \(helper) is missing (make probe); skipped")
        return
    }
    let clock = ContinuousClock()
    var passed: [SeccompSketch] = []
    let offline = clock.measure {
        _ = ProfileFuzzer.run(runs: mutants * 2, seed: 1) { s, outcome in if case .passed = outcome { passed.append(s) } }
    }
    var live = try LiveFuzz(helper: helper)
    let baselineJails = live.jailsLaunched
    var mismatches = 0
    let took = try clock.measure {
        for s in passed.prefix(mutants) where try live.check(s) != nil { mismatches += 1 }
    }
    let jails = live.jailsLaunched - baselineJails
    func seconds(_ d: Duration) -> Double { Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18 }
    print(String(format: "fuzz offline      %6.2f mutants/s (%d mutants, generated corpus each)", Double(mutants * 2) / seconds(offline), mutants * 2))
    print(String(format: "fuzz --live       %6.1f jails/s (%d jails, %d mutants, %d mismatches)", Double(jails) / seconds(took), jails, min(mutants, passed.count), mismatches))
}
