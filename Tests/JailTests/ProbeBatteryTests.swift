import Foundation
import StockadeCgroups
import StockadeJail
import Testing

/// The escape-probe battery (probe/stockade-probe.c) in real jails built by
/// the real launcher: the shipped profiles must pass it, and a weakened
/// profile must be caught by the probes that look at what it gave up.
///
/// Nested in ``JailTests`` so that its `.serialized` trait covers these too:
/// the jail tests look at process-wide state (child processes, fds), and a
/// battery running beside them (4096 forks, a leaked fd on purpose) would
/// disturb what they measure.
extension JailTests {
    @Suite("The escape-probe battery", .serialized) struct ProbeBatteryTests {
        static let root = URL(fileURLWithPath: #filePath)
            .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

        /// The probe binary, built from source when missing or older than it
        /// (the same command as `make probe`), or the compiler's message.
        static let probe: Result<String, ProbeBatteryError> = {
            let source = root.appendingPathComponent("probe/stockade-probe.c").path
            let binary = root.appendingPathComponent(".build/stockade-probe").path
            let fm = FileManager.default
            func mtime(_ p: String) -> Date? { (try? fm.attributesOfItem(atPath: p))?[.modificationDate] as? Date }
            if let b = mtime(binary), let s = mtime(source), b >= s { return .success(binary) }
            try? fm.createDirectory(atPath: root.appendingPathComponent(".build").path, withIntermediateDirectories: true)
            let temp = binary + ".tmp-\(getpid())"
            let cc = Process()
            cc.executableURL = URL(fileURLWithPath: "/usr/bin/env")
            cc.arguments = ["cc", "-static", "-O2", "-Wall", "-Wextra", "-o", temp, source]
            let errors = Pipe()
            cc.standardError = errors
            do {
                try cc.run()
            } catch {
                return .failure(ProbeBatteryError(message: "cannot run cc: \(error)"))
            }
            let message = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            cc.waitUntilExit()
            guard cc.terminationStatus == 0, rename(temp, binary) == 0 else {
                return .failure(ProbeBatteryError(message: "cc -static failed: \(message)"))
            }
            return .success(binary)
        }()

        static func profile(_ relative: String) throws -> Profile {
            try Profile.load(path: root.appendingPathComponent(relative).path)
        }

        static func battery(_ profilePath: String, only: [Int] = []) throws -> ProbeReport {
            var options = ProbeBattery.Options(profile: try profile(profilePath), binary: try probe.get())
            options.only = only
            return try ProbeBattery.run(options).report
        }

        /// Every profile in profiles/, found by listing the directory: a new
        /// or renamed profile is tested without touching this file.
        static let shippedProfiles: [String] = {
            let names = (try? FileManager.default.contentsOfDirectory(atPath: root.appendingPathComponent("profiles").path)) ?? []
            return names.filter { $0.hasSuffix(".toml") }.sorted().map { "profiles/" + $0 }
        }()

        /// Shipped profiles that need hardware a host may lack, with the
        /// device node that tells; the battery runs on them where it exists.
        static let hardwareProfiles: [String: String] = ["profiles/inference-gpu.toml": "/dev/nvidiactl"]

        /// The shipped profiles the battery must pass on any host.
        static let batteryProfiles = shippedProfiles.filter { hardwareProfiles[$0] == nil }

        static var hardwarePresent: Bool {
            hardwareProfiles.values.allSatisfy { FileManager.default.fileExists(atPath: $0) }
        }

        @Test("profiles/ is listed, and every shipped profile loads")
        func everyShippedProfileLoads() throws {
            #expect(Self.shippedProfiles.contains("profiles/minimal.toml"), "profiles/ listed as \(Self.shippedProfiles)")
            for known in Self.hardwareProfiles.keys {
                #expect(Self.shippedProfiles.contains(known), "\(known) is named as a hardware profile but is not in profiles/")
            }
            for path in Self.shippedProfiles {
                _ = try Self.profile(path)
            }
        }

        @Test("the seccomp layer is installed for every shipped profile", arguments: batteryProfiles)
        func seccompLayerInstalled(profile: String) throws {
            var request = LaunchRequest(profile: try Self.profile(profile), command: ["/stockade-probe"])
            try JailSecurity.prepare(&request)
            #expect(!request.seccompFilter.isEmpty, "\(profile): JailSecurity.prepare produced no seccomp program")
        }

        /// The probes that the launcher's own steps answer (namespaces, root,
        /// capabilities, fds, /proc masks, /dev), as opposed to the seccomp filter
        /// and the cgroup budget; plus the "still works" checks.
        static let launcherProbes = ProbeBattery.launcherProbes

        static func failures(_ report: ProbeReport, among numbers: Set<Int>? = nil) -> String {
            report.failures.filter { numbers?.contains($0.number) ?? true }
                .map { "\($0.number) \($0.name): \($0.result)" }.joined(separator: "\n")
        }

        @Test("launcher-owned probes pass", arguments: batteryProfiles)
        func launcherProbesPass(profile: String) throws {
            let report = try Self.battery(profile)
            #expect(report.probes.count >= 41, "the battery ran \(report.probes.count) probes")
            let bad = report.failures.filter { Self.launcherProbes.contains($0.number) }
            #expect(bad.isEmpty, "\(profile):\n\(Self.failures(report, among: Self.launcherProbes))")
        }

        /// The budget probe (31: fork bomb, memory hog, leaving the cgroup)
        /// needs the jail to have a cgroup with pids and memory limits.
        static let budgetProbe = 31

        /// A cgroup manager of the test's own (root only); `close()` removes
        /// everything it made, and a later run sweeps what a killed run left.
        static func cgroupManager(_ tag: String) -> CgroupManager? {
            guard getuid() == 0 else { return nil }
            return try? CgroupManager(configuration: .init(base: .automatic(name: "stockade-probe-\(getpid())-\(tag)")))
        }

        /// The cgroup the budget probe runs under: the profile's [limits],
        /// with a pids and memory cap added where the profile sets none (the
        /// probe's own caps are 4096 processes and 1 GiB).
        static func jailCgroup(for profile: Profile, in manager: CgroupManager) throws -> any JailCgroup {
            var limits = profile.limits
            if limits.pidsMax == nil { limits.pidsMax = 256 }
            if limits.memoryMax == nil { limits.memoryMax = 256 << 20 }
            return try manager.jail(limits: limits)
        }

        /// Root, on a kernel with the memory and pids controllers enabled
        /// (read from /proc/cgroups, not from the code under test: if the
        /// cgroup manager broke, the budget test fails instead of skipping).
        static let cgroupAvailable: Bool = {
            guard getuid() == 0, let text = try? String(contentsOfFile: "/proc/cgroups", encoding: .utf8) else { return false }
            let enabled = Set(text.split(separator: "\n").compactMap { line -> String? in
                let f = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
                return f.count == 4 && f[3] == "1" ? String(f[0]) : nil
            })
            return enabled.isSuperset(of: ["memory", "pids"])
        }()

        /// What a shipped profile gives up on purpose, by probe, as
        /// docs/COMPARISON.md says. Each must still fail (a fix updates this
        /// table and the document); any other failure fails the test.
        static let documentedFindings: [String: [Int: String]] = [
            "profiles/docker-default.toml": [25: "Docker's profile, imported unchanged, allows netlink sockets"],
        ]

        @Test("every probe passes, but for documented findings (the budget probe has its own test)", arguments: batteryProfiles)
        func everyProbePasses(profile: String) throws {
            let report = try Self.battery(profile)
            let documented = Self.documentedFindings[profile] ?? [:]
            let bad = report.failures.filter {
                $0.number != Self.budgetProbe && documented[$0.number] == nil && Self.knownFailures[$0.number] == nil
            }
            #expect(bad.isEmpty, "\(profile):\n\(Self.failures(report, among: Set(bad.map(\.number))))")
            for (number, why) in documented {
                #expect(report.probe(number)?.pass == false,
                        "\(profile): probe \(number) passes now (\(why) no longer holds): update documentedFindings and docs/COMPARISON.md")
            }
            #expect(report.probes.count >= 48, "1-41 and 43-49 (42 needs --python)")
            Self.expectKnownFailures(report, profile: profile)
        }

        /// Each probe of ``knownFailures`` passing, as a known issue.
        static func expectKnownFailures(_ report: ProbeReport, profile: String) {
            for (number, why) in knownFailures.sorted(by: { $0.key < $1.key }) {
                let probe = report.probe(number)
                withKnownIssue(Comment(rawValue: why)) {
                    #expect(probe?.pass == true, "\(profile): \(number): \(probe?.result ?? "did not run")")
                } when: {
                    number != 46 || isatty(0) == 1
                }
            }
        }

        /// Probes that fail under every profile until Stockade holds there,
        /// and why. Each expectation is a known issue: once a probe passes,
        /// the test fails until its entry is removed.
        static let knownFailures: [Int: String] = [:]

        @Test("every probe passes on the profiles that need hardware",
              .enabled(if: hardwarePresent, "needs the hardware of \(hardwareProfiles.keys.sorted()): \(hardwareProfiles.values.sorted()) missing"),
              arguments: hardwareProfiles.keys.sorted())
        func hardwareProfilesPass(profile: String) throws {
            let report = try Self.battery(profile)
            let bad = report.failures.filter { $0.number != Self.budgetProbe && Self.knownFailures[$0.number] == nil }
            #expect(bad.isEmpty, "\(profile):\n\(Self.failures(report, among: Set(bad.map(\.number))))")
            Self.expectKnownFailures(report, profile: profile)
        }

        @Test("the budget probe passes in the profile's cgroup",
              .enabled(if: cgroupAvailable, "needs root and the memory and pids controllers (/proc/cgroups)"),
              arguments: batteryProfiles)
        func budgetProbePasses(profile: String) throws {
            let loaded = try Self.profile(profile)
            var options = ProbeBattery.Options(profile: loaded, binary: try Self.probe.get())
            options.only = [Self.budgetProbe]
            let manager = try #require(Self.cgroupManager(loaded.name))
            defer { #expect(throws: Never.self) { try manager.close() } }
            options.cgroup = try Self.jailCgroup(for: loaded, in: manager)
            let report = try ProbeBattery.run(options).report
            #expect(report.probe(Self.budgetProbe)?.pass == true, "\(report.probe(Self.budgetProbe)?.result ?? "did not run")")
        }

        /// The repository's venv (`make venv`), or `$STOCKADE_TEST_VENV`.
        static let venv: String = ProcessInfo.processInfo.environment["STOCKADE_TEST_VENV"]
            ?? root.appendingPathComponent(".venv").path

        /// True when the venv's Python imports numpy on the host.
        static let venvHasNumpy: Bool = {
            let python = Process()
            python.executableURL = URL(fileURLWithPath: venv + "/bin/python3")
            python.arguments = ["-c", "import numpy"]
            python.standardError = FileHandle.nullDevice
            guard (try? python.run()) != nil else { return false }
            python.waitUntilExit()
            return python.terminationStatus == 0
        }()

        @Test("Python imports numpy inside the inference profile (probe 42)",
              .enabled(if: venvHasNumpy, "no venv with numpy (make venv, or set STOCKADE_TEST_VENV)"))
        func pythonWorks() throws {
            var options = ProbeBattery.Options(profile: try Self.profile("profiles/inference-cpu.toml"), binary: try Self.probe.get())
            options.only = [42]
            options.python = Self.venv + "/bin/python3"
            options.extraMounts = [MountSpec(kind: .bind, source: Self.venv, target: Self.venv)]
            let report = try ProbeBattery.run(options).report
            #expect(report.probe(42)?.pass == true, "\(report.probe(42)?.result ?? "probe 42 did not run")")
        }

        @Test("a weakened profile is caught by the probes that look at what it gave up")
        func weakenedProfileIsCaught() throws {
            let report = try Self.battery("Tests/JailTests/Fixtures/weakened.toml")
            let namespaces = try #require(report.probe(3))
            #expect(!namespaces.pass)
            for ns in ["net", "ipc", "uts", "cgroup"] {
                #expect(namespaces.result.contains("\(ns)=initial"), "probe 3 says: \(namespaces.result)")
            }
            #expect(!namespaces.result.contains("user=initial"), "the user namespace was kept: \(namespaces.result)")
            let abstract = try #require(report.probe(26))
            #expect(!abstract.pass)
            #expect(abstract.result.contains("stockade-probe-canary") && abstract.result.contains(")=ok"),
                    "the host's canary socket must be reachable from a jail in the host's network: \(abstract.result)")
            // What the weakening did not touch is still caught as before.
            for n in [9, 28, 30] {
                #expect(report.probe(n)?.pass == true, "probe \(n): \(report.probe(n)?.result ?? "missing")")
            }
        }

        @Test("a seccomp policy that lets dangerous calls through is caught")
        func weakenedSeccompIsCaught() throws {
            let report = try Self.battery("Tests/JailTests/Fixtures/weakened-seccomp.toml", only: [1, 11, 14, 18, 24])
            #expect(report.probe(1)?.pass == true, "the filter is still loaded: \(report.probe(1)?.result ?? "")")
            for (n, call) in [(11, "READ_IMPLIES_EXEC=ok"), (14, "io_uring_setup=ok"), (18, "keyctl(GET_KEYRING_ID)=ok")] {
                let probe = try #require(report.probe(n))
                #expect(!probe.pass && probe.result.contains(call), "probe \(n): \(probe.result)")
            }
            #expect(report.probe(24)?.pass == true, "the hardening the profile did not lift stays: \(report.probe(24)?.result ?? "")")
        }

        @Test("the probe binary runs in an empty root (static, no libc files)")
        func runsInEmptyRoot() throws {
            let report = try Self.battery("Tests/JailTests/Fixtures/empty-root.toml", only: [28, 36, 37, 38, 39, 40, 41])
            #expect(report.probes.map(\.number) == [28, 36, 37, 38, 39, 40, 41])
            #expect(report.failed == 0, "\(Self.failures(report))")
        }

        @Test("the report decodes the binary's JSON and prints its table")
        func reportFormat() throws {
            let json = #"{"probes":[{"number":6,"name":"clone3","result":"clone3=ENOSYS","pass":true},"#
                + #"{"number":24,"name":"bad-syscall-nr","result":"syscall(1000)=EPERM","pass":false}],"passed":1,"failed":1}"#
            let report = try JSONDecoder().decode(ProbeReport.self, from: Data(json.utf8))
            #expect(report.failures.map(\.number) == [24])
            let lines = report.text.split(separator: "\n")
            #expect(lines.first == " 6 clone3             clone3=ENOSYS  PASS")
            #expect(lines.last == "1 passed, 1 failed")
        }
    }
}
