import ArgumentParser
import StockadeCgroups
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import StockadeConfig
import StockadeJail
import StockadeSeccomp
import StockadeSystem
#if canImport(Glibc)
import Glibc
#endif

/// What `stockade run` was asked to do, as plain values, and the doing of
/// it. ``RunCommand`` (ArgumentParser) and ``parse(_:)`` (the direct
/// reader of the usual lines) both end here; the direct reader never
/// builds a `RunCommand`, whose property wrappers alone cost the runtime
/// more generic metadata than the rest of a launch's command line.
struct RunInvocation {
    var profile: String
    var report: RunCommand.ReportFormat?
    var readOnlyBinds: [String] = []
    var writableBinds: [String] = []
    var environment: [String] = []
    var timeLimit: String?
    var tenants: String?
    var tenant: String?
    var cgroupBase: String?
    /// The command, possibly still led by `--`.
    var command: [String]

    /// The common `run` command lines, read without ArgumentParser's
    /// reflection (which costs more than building the jail): `--name value`,
    /// `--name=value` and `-p value` for `run`'s options, then the command
    /// after `--` or at the first word that is not an option. Anything else
    /// (help, an unknown option, a missing or bad value) gives nil, and
    /// ArgumentParser reads the line and reports the mistake.
    static func parse(_ args: [String]) -> RunInvocation? {
        var invocation = RunInvocation(profile: "", command: [])
        var profile: String?
        var i = 0
        while i < args.count, args[i] != "--", args[i].hasPrefix("-") {
            var name: Substring
            var value: String?
            if args[i] == "-p" {
                name = "profile"
            } else if args[i].hasPrefix("--") {
                name = args[i].dropFirst(2)
                if let eq = name.firstIndex(of: "=") {
                    value = String(name[name.index(after: eq)...])
                    name = name[..<eq]
                }
            } else {
                return nil
            }
            if value == nil {
                guard i + 1 < args.count, !args[i + 1].hasPrefix("-") else { return nil }
                value = args[i + 1]
                i += 1
            }
            guard let value else { return nil }
            // A single-valued option given twice: the last one counts, as in ArgumentParser.
            switch name {
            case "profile": profile = value
            case "report":
                guard let format = RunCommand.ReportFormat(rawValue: value) else { return nil }
                invocation.report = format
            case "time-limit": invocation.timeLimit = value
            case "tenants": invocation.tenants = value
            case "tenant": invocation.tenant = value
            case "cgroup-base": invocation.cgroupBase = value
            case "ro-bind": invocation.readOnlyBinds.append(value)
            case "bind": invocation.writableBinds.append(value)
            case "setenv": invocation.environment.append(value)
            default: return nil
            }
            i += 1
        }
        guard let profile else { return nil }
        invocation.profile = profile
        invocation.command = Array(args[i...])
        return invocation
    }

    func run() throws {
        let argv = command.first == "--" ? Array(command.dropFirst()) : command
        guard !argv.isEmpty else {
            throw ValidationError("give the command to run after --, e.g. stockade run -p profiles/minimal.toml -- /bin/true")
        }
        let profile: Profile
        do {
            profile = try Profile.load(path: self.profile)
        } catch {
            throw StockadeFailure(message: error.description, status: 125)
        }
        var request = LaunchRequest(profile: profile, command: argv)
        try JailInputOptions.apply(readOnlyBinds: readOnlyBinds, writableBinds: writableBinds,
                                   environment: environment, to: &request)
        if let tenants { request.launcherFiles.append(tenants) }
        var limit = profile.timeLimit
        if let timeLimit {
            switch DurationValue(parsing: timeLimit) {
            case .value(let d) where d > .zero:
                limit = d
            case .tooLong:
                throw ValidationError("--time-limit: \"\(timeLimit)\" is longer than the longest limit, \(DurationValue.longestText)")
            default:
                throw ValidationError("--time-limit: cannot read \"\(timeLimit)\" as a positive duration (e.g. 30s, 500ms, 2m)")
            }
        }
        let cgroups = try JailBudget.make(profile: &request.profile, tenants: tenants, tenant: tenant, cgroupBase: cgroupBase)
        request.cgroup = cgroups?.jail

        let terminal = try JailTerminal.prepare(&request)
        // A report lists the denied calls: they go through the supervisor.
        if report != nil { request.seccompObservation = SeccompObservation() }

        let jail = try JailBudget.launch(&request, terminal: terminal, budget: cgroups)
        let exit = try JailBudget.wait(for: jail, terminal: terminal, budget: cgroups, timeLimit: limit)
        if let report { printReport(RunReport(exit: exit, jail: jail), format: report) }
        if exit.reason == .timeLimit {
            printError("stockade: time limit reached; the jail was killed")
        }
        throw ExitCode(exit.status)
    }

    private func printReport(_ report: RunReport, format: RunCommand.ReportFormat) {
        switch format {
        case .json:
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys]
            if let data = try? encoder.encode(report) {
                printError(String(decoding: data, as: UTF8.self))
            }
        case .text:
            for line in report.textLines { printError(line) }
        }
    }
}
