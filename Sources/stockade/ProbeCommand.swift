import ArgumentParser
import StockadeConfig
import StockadeCgroups
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import StockadeJail

struct ProbeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "probe",
        abstract: "Run the escape-probe battery inside a jail built from a profile.",
        discussion: """
            The battery (probe/stockade-probe.c, built by `make probe`) tries every \
            known way out of a jail: namespaces, capabilities, mount, ptrace, \
            io_uring, bpf, x32 and int 0x80 system calls, leaked fds, host sockets, \
            device nodes, budgets and more, then checks that ordinary things (fork, \
            threads, pipes, epoll, mmap, signals) still work. It prints one line \
            per probe and exits non-zero when any probe fails.

            The caller is made hostile on purpose: a directory fd is left open and \
            an abstract unix socket is bound on the host; the jail must see neither.

            Example:
              stockade probe --profile profiles/minimal.toml
            """
    )

    @Option(name: .shortAndLong, help: "The jail profile (TOML).")
    var profile: String

    @Option(name: .customLong("probe-binary"),
            help: "The static probe binary (default: $STOCKADE_PROBE, beside stockade, or .build/stockade-probe).")
    var probeBinary: String?

    @Flag(help: "Print the battery's JSON report instead of the table.")
    var json = false

    @Option(help: ArgumentHelp("Run only these probe numbers.", valueName: "n,m,..."))
    var only: String?

    @Option(help: ArgumentHelp("A Python inside the jail that must import numpy (adds probe 42).", valueName: "path"))
    var python: String?

    @Option(name: .customLong("ro-bind"), help: ArgumentHelp("Bind a host path read-only: SRC or SRC:DEST.", valueName: "src[:dest]"))
    var readOnlyBinds: [String] = []

    @Option(name: .customLong("expect-devices"), help: ArgumentHelp("Extra /dev names the profile grants.", valueName: "a,b"))
    var expectDevices: String?

    func run() throws {
        let loaded: Profile
        do {
            loaded = try Profile.load(path: profile)
        } catch {
            throw StockadeFailure(message: error.description, status: 125)
        }
        guard let binary = ProbeBattery.locateBinary(explicit: probeBinary) else {
            throw StockadeFailure(
                message: "no probe binary found: build it with `make probe`, or pass --probe-binary PATH", status: 125)
        }
        var options = ProbeBattery.Options(profile: loaded, binary: binary)
        if let only {
            var numbers: [Int] = []
            for part in only.split(separator: ",") {
                guard let n = Int(part.trimmingCharacters(in: " \t")), n > 0 else {
                    throw ValidationError("--only takes probe numbers separated by commas, e.g. 3,7,28; got \"\(only)\"")
                }
                numbers.append(n)
            }
            options.only = numbers
        }
        options.python = python
        options.expectDevices = expectDevices.map { $0.split(separator: ",").map(String.init) } ?? []
        for spec in readOnlyBinds {
            let parts = spec.split(separator: ":", maxSplits: 1).map(String.init)
            let target = parts.count > 1 ? parts[1] : parts[0]
            guard parts[0].hasPrefix("/"), target.hasPrefix("/") else {
                throw ValidationError("bind paths must be absolute: \(spec)")
            }
            options.extraMounts.append(MountSpec(kind: .bind, source: parts[0], target: target))
        }

        // The profile's budget, as `stockade run` would give it (probe 31).
        let cgroups = try JailBudget.make(profile: &options.profile)
        defer { try? cgroups?.manager.close() }
        options.cgroup = cgroups?.jail
        let result: (report: ProbeReport, exit: JailExit)
        do {
            result = try ProbeBattery.run(options)
        } catch let error as JailError {
            throw StockadeFailure(message: error.description, status: 125)
        } catch let error as ProbeBatteryError {
            throw StockadeFailure(message: "probe: \(error.description)", status: 125)
        }
        if json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys]
            if let data = try? encoder.encode(result.report) {
                print(String(decoding: data, as: UTF8.self))
            }
        } else {
            print(result.report.text)
        }
        throw ExitCode(result.report.failed == 0 ? 0 : 1)
    }
}
