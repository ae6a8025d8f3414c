import Foundation
import StockadeJail
import StockadeSystem
import Testing

/// The probes for what a worker can learn or reach of its launcher from
/// inside (43-49): each is run where the weakness is, as an attacker would
/// set it up (a terminal stdin, a profile lifting keyctl, a second live
/// jail, a profile whose directory the jail can write, a caller holding
/// inotify instances). Where Stockade does not hold yet (the terminal), the
/// expectation is a known issue with its reason, so that it fails once the
/// fix lands and the marker is due to be removed.
extension JailTests.ProbeBatteryTests {
    static func options(_ profile: Profile, only: [Int]) throws -> ProbeBattery.Options {
        var options = ProbeBattery.Options(profile: profile, binary: try probe.get())
        options.only = only
        return options
    }

    /// Runs the probe binary unconfined on the host with `arguments`: the
    /// negative control that each probe can fail (the battery is harmless
    /// unconfined: it changes nothing on the host).
    static func unconfined(_ arguments: [String]) throws -> ProbeReport {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: try probe.get())
        process.arguments = ["--json"] + arguments
        let out = Pipe()
        process.standardOutput = out
        try process.run()
        let data = out.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return try JSONDecoder().decode(ProbeReport.self, from: data)
    }

    @Test("unconfined on the host, the inside-view probes see the host: id 0, a writable profile directory, the host's inotify count")
    func insideViewProbesCanFail() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("stockade-probe-\(getpid())").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        // (Probe 46 cannot fail here: on the host, the host's terminals are its own.)
        let report = try Self.unconfined(["--only", "47,48,49", "--profile-paths", dir, "--reserved-ids", "0"])
        let ids = try #require(report.probe(47))
        #expect(!ids.pass && ids.result.contains("host id 0"), "\(ids.result)")
        let profile = try #require(report.probe(48))
        #expect(!profile.pass && profile.result.contains("\(dir)/: write=ok"), "\(profile.result)")
        let inotify = try #require(report.probe(49))
        #expect(!inotify.pass && inotify.result.contains("initial user namespace"), "\(inotify.result)")
    }

    @Test("PID 1 shows no argv of the launcher (probe 43)")
    func pid1Cmdline() throws {
        let report = try ProbeBattery.run(Self.options(try Self.profile("profiles/minimal.toml"), only: [43])).report
        let probe = try #require(report.probe(43))
        #expect(probe.pass, "\(probe.result)")
    }

    @Test("a jail in a cgroup of its own sees \"/\" in /proc/self/cgroup, not the host path (probe 44)",
          .enabled(if: cgroupAvailable, "no jail cgroup here (root and a cgroup hierarchy needed)"))
    func cgroupPath() throws {
        let loaded = try Self.profile("profiles/minimal.toml")
        var options = try Self.options(loaded, only: [44])
        let manager = try #require(Self.cgroupManager("cgpath"))
        defer { #expect(throws: Never.self) { try manager.close() } }
        options.cgroup = try Self.jailCgroup(for: loaded, in: manager)
        let probe = try #require(try ProbeBattery.run(options).report.probe(44))
        #expect(probe.pass, "\(probe.result)")
    }

    @Test("with keyctl lifted, the jail's session keyring is a fresh one, not the caller's (probe 45)")
    func sessionKeyring() throws {
        let report = try ProbeBattery.run(Self.options(try Self.profile("Tests/JailTests/Fixtures/weakened-seccomp.toml"),
                                                       only: [18, 45])).report
        // The control: keyctl really is reachable in this jail.
        #expect(report.probe(18)?.result.contains("keyctl(GET_KEYRING_ID)=ok") == true, "\(report.probe(18)?.result ?? "")")
        let probe = try #require(report.probe(45))
        #expect(probe.pass, "\(probe.result)")
    }

    @Test("a caller's terminal on stdin does not reach the jail (probe 46)")
    func callerTerminal() throws {
        var options = try Self.options(try Self.profile("profiles/minimal.toml"), only: [46])
        options.terminalStdin = true
        do {
            let probe = try #require(try ProbeBattery.run(options).report.probe(46))
            #expect(probe.pass, "\(probe.result)")
        } catch {
            // Refusing a passed terminal is an answer too, if it says so.
            #expect("\(error)".contains("terminal"), "\(error)")
        }
    }

    @Test("a root-launched jail's host ids are clear of another live jail's (probe 47)",
          .enabled(if: getuid() == 0, "rootless jails are the caller's own uid by design; the id pool is the root launcher's"))
    func hostIDsOfTwoJails() throws {
        let profile = try Self.profile("profiles/minimal.toml")
        let first = try Launcher.launch({
            var request = LaunchRequest(profile: profile, command: ["/bin/sleep", "30"])
            try JailSecurity.prepare(&request)
            return request
        }())
        defer {
            first.kill()
            _ = try? first.wait()
        }
        // The first jail's host range, as the host sees it.
        let map = try String(contentsOfFile: "/proc/\(first.pid)/uid_map", encoding: .utf8)
        let fields = try #require(map.split(separator: "\n").first).split(separator: " ")
        let start = try #require(UInt32(fields[1])), count = try #require(UInt32(fields[2]))
        var options = try Self.options(profile, only: [47])
        options.reservedIDs = [start...(start + count - 1)]
        let probe = try #require(try ProbeBattery.run(options).report.probe(47))
        #expect(!probe.result.contains("host id 0"), "\(probe.result)")
        #expect(probe.pass, "\(probe.result)")
    }

    @Test("a jail cannot write the profile it was built from (probe 48)")
    func profileDirectory() throws {
        // A profile in a directory of its own, which it binds writable into
        // the jail: the jail could rewrite the next run's profile.
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("stockade-selfbind-\(getpid())").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        // Writable by the jail's user too, as a shared configuration directory would be.
        chmod(dir, 0o777)
        let text = try String(contentsOfFile: Self.root.appendingPathComponent("profiles/minimal.toml").path, encoding: .utf8)
            + "\n[[mount]]\ntype = \"bind\"\nsource = \"\(dir)\"\ntarget = \"/cfg\"\nwritable = true\n"
        let path = dir + "/self.toml"
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        var outcome: String
        var writable = false
        do {
            let probe = try #require(try ProbeBattery.run(Self.options(try Profile.load(path: path), only: [48])).report.probe(48))
            #expect(probe.result.contains("/cfg/"), "the probe looked at the bind: \(probe.result)")
            writable = !probe.pass
            outcome = probe.result
        } catch {
            outcome = "refused: \(error)"  // refusing the launch is an answer too
        }
        #expect(!writable, "\(outcome)")
        if outcome.hasPrefix("refused") {
            #expect(outcome.contains(path) || outcome.contains(dir), "the refusal names what it protects: \(outcome)")
        }
    }

    @Test("a jail's inotify instances are not charged to the caller's host user (probe 49)")
    func inotifyCharge() throws {
        let probe = try #require(try ProbeBattery.run(Self.options(try Self.profile("profiles/minimal.toml"), only: [49]))
            .report.probe(49))
        #expect(!probe.result.contains("initial user namespace"), "\(probe.result)")
        #expect(probe.pass, "\(probe.result)")
    }
}
