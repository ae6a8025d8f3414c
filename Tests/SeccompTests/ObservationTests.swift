import Foundation
import Testing
@testable import StockadeSeccomp
@testable import StockadeJail
import StockadeSystem
import StockadeConfig
import Synchronization

/// Denial monitoring through the seccomp user-notification supervisor, in
/// real jails: denied calls reach the supervisor and get exactly the
/// profile's errno, allowed calls never leave the kernel, the listener never
/// reaches the jail, and a jail flooding denials slows only itself.
extension SeccompTests {
@Suite struct ObservationTests {
    static let getppid: Int32 = 110
    static let ptrace: Int32 = 101

    /// minimal.toml with getppid denied as EACCES (the stock allowlist allows it).
    static let profile = JailEndToEndTests.minimal + """

    [seccomp]
    deny = ["getppid"]
    deny_action = "errno:EACCES"
    """

    /// Runs `command` in an observed jail; returns what it printed and its watch.
    static func observed(_ command: [String], profile text: String = profile, options: SeccompWatchOptions = SeccompWatchOptions(),
                         notify: SeccompNotifySet = .denials,
                         onLandlockDenial: (@Sendable (LandlockDenial) -> Void)? = nil) throws -> (exit: JailExit, output: String, jail: Jail) {
        let profile = try Profile.parse(text: text, file: "observe.toml")
        var request = LaunchRequest(profile: profile, command: command)
        request.extraMounts = [MountSpec(kind: .bind, source: URL(fileURLWithPath: try Helpers.path("denyloop")).deletingLastPathComponent().path,
                                         target: "/helpers")]
        request.seccompObservation = SeccompObservation(notify: notify, options: options, onLandlockDenial: onLandlockDenial)
        return try JailEndToEndTests.launchCapturingOutput(&request)
    }

    @Test("the observed filter notifies exactly the denied calls; allowed calls, kills and ENOSYS fallbacks are unchanged")
    func rewriting() throws {
        let section = try Profile.parse(text: Self.profile, file: "observe.toml").seccomp
        let program = try section.compile()
        let observed = try program.observing(.denials)
        #expect(observed.filter.count == program.instructions.count)
        #expect(observed.notifyingReturns > 0)
        func raw(_ p: [BPFInstruction], _ nr: Int32, _ args: [UInt64] = [], arch: UInt32 = SeccompArch.x86_64) throws -> UInt32 {
            try runBPF(p, on: SeccompData(nr: nr, arch: arch, args: args))
        }
        // Every number 0..<500 with a few argument patterns: a call the
        // unobserved filter allows, kills or answers ENOSYS gets the same
        // verdict; one it denies with another errno now notifies.
        for nr in Int32(0)..<500 {
            for args in [[], [UInt64(0xffff_ffff_ffff_ffff)], [16, 3, 0], [0x7e02_0080]] as [[UInt64]] {
                let before = try raw(program.instructions, nr, args)
                let after = try raw(observed.filter, nr, args)
                let action = SeccompAction(raw: before)
                switch action {
                case .errno(38): #expect(after == before, "nr \(nr): ENOSYS fallback must stay in the kernel")
                case .errno: #expect(after == SeccompAction.retUserNotif, "nr \(nr) \(args): denied, must notify")
                default: #expect(after == before, "nr \(nr) \(args): \(action) must stay as it is")
                }
                if after == SeccompAction.retUserNotif {
                    #expect(observed.verdict(for: SeccompData(nr: nr, args: args)).action == action)
                }
            }
        }
        // x32 and i386 still die in the kernel.
        #expect(try raw(observed.filter, Self.getppid | 0x4000_0000) == SeccompAction.retKillProcess)
        #expect(try raw(observed.filter, 20, arch: SeccompArch.i386) == SeccompAction.retKillProcess)
        #expect(observed.verdict(for: SeccompData(nr: Self.ptrace)).origin == .prelude)
        #expect(observed.verdict(for: SeccompData(nr: Self.getppid)).origin == .profile)
        #expect(observed.verdict(for: SeccompData(nr: Self.getppid)).action == .errno(13))
        // Monitoring without the prelude's denials leaves ptrace in the kernel.
        let policyOnly = try program.observing(.policyErrno)
        #expect(try raw(policyOnly.filter, Self.ptrace) == SeccompAction.errno(1).raw)
        #expect(SyscallDescription.describe(number: 41, args: [16, 3 | 0o2000000, 0]) == "socket(AF_NETLINK, SOCK_RAW|SOCK_CLOEXEC, 0)")
    }

    @Test("a worker calling a denied syscall in a loop: every call counted, each answered with the profile's errno",
          .enabled(if: SeccompSupervisor.unavailableReason == nil, "this kernel has no seccomp user notification"))
    func deniedLoop() throws {
        let (exit, output, jail) = try Self.observed(["/helpers/denyloop", "110", "1000"])
        #expect(exit.status == 0, "\(exit) \(output)")
        #expect(output.hasPrefix("errno 13 count 1000 other 0\n"), "\(output)")
        let watch = try #require(jail.seccompWatch, "\(jail.seccompUnobserved ?? "no watch")")
        let tally = watch.tally()
        let getppid = try #require(tally.calls["getppid"], "\(tally)")
        #expect(getppid.count == 1000)
        #expect(getppid.answer == "errno:EACCES")
        #expect(getppid.origin == "profile")
        #expect(getppid.executable.map { $0.hasSuffix("/denyloop") } == true, "\(getppid)")
        // The worker's allowed calls never reached the supervisor, and
        // nothing else was denied.
        #expect(tally.total == 1000)
        #expect(Set(tally.calls.keys) == ["getppid"], "\(tally.calls.keys)")
        // The supervisor lets go of the listener once the jail has ended.
        var waited = 0
        while !watch.isClosed && waited < 200 { usleep(10_000); waited += 1 }
        #expect(watch.isClosed)

        // The always-on prelude's denials are counted too, as its own.
        let (exit2, output2, jail2) = try Self.observed(["/helpers/denyloop", "101", "7", "16", "1"])
        #expect(exit2.status == 0)
        #expect(output2.hasPrefix("errno 1 count 7 other 0\n"), "\(output2)")
        let ptrace = try #require(jail2.seccompWatch?.tally().calls["ptrace"])
        #expect(ptrace.count == 7)
        #expect(ptrace.origin == "prelude")
        #expect(ptrace.example == "ptrace(PTRACE_ATTACH, 1)")
        #expect(ptrace.answer == "errno:EPERM")
    }

    @Test("learn-style watching: policy denials continue and are recorded with their executable, the prelude still refuses",
          .enabled(if: SeccompSupervisor.unavailableReason == nil, "this kernel has no seccomp user notification"))
    func continueMode() throws {
        let seen = Mutex<[String]>([])
        let options = SeccompWatchOptions(answer: .continueCall, ratePerSecond: nil, executableForEvery: true) { event, _ in
            seen.withLock { $0.append("\(event.description) \(event.executable ?? "?")") }
            return .continueCall
        }
        let (exit, output, jail) = try Self.observed(["/helpers/denyloop", "110", "5"], options: options,
                                                     notify: [.policyErrno, .policyKill, .preludeDenials])
        #expect(exit.status == 0, "\(output)")
        // getppid ran: it returned the parent's pid, not an error.
        #expect(output.contains("errno 0 count 0 other 5"), "\(output)")
        #expect(jail.seccompWatch?.tally().calls["getppid"]?.count == 5)
        #expect(seen.withLock { $0.filter { $0.hasPrefix("getppid(") && $0.hasSuffix("denyloop") }.count } == 5, "\(seen.withLock { $0 })")

        let (exit2, output2, _) = try Self.observed(["/helpers/denyloop", "101", "3", "16", "1"], options: options,
                                                    notify: [.policyErrno, .preludeDenials])
        #expect(exit2.status == 0)
        #expect(output2.contains("errno 1 count 3 other 0"), "a prelude denial must never be continued: \(output2)")
    }

    @Test("stockade run --report lists the denied calls by name with a decoded example, on stderr after the jail ends",
          .enabled(if: SeccompSupervisor.unavailableReason == nil, "this kernel has no seccomp user notification"))
    func runReport() throws {
        let stockade = Helpers.repository.appendingPathComponent(".build/debug/stockade").path
        try #require(FileManager.default.isExecutableFile(atPath: stockade), "build the CLI first")
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("stockade-report-\(UUID().uuidString).toml")
        try Self.profile.write(to: file, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(at: file) }
        let helpers = URL(fileURLWithPath: try Helpers.path("denyloop")).deletingLastPathComponent().path
        let base = [stockade, "run", "-p", file.path, "--ro-bind", helpers + ":/helpers"]
        let text = runProcess(base[0], Array(base.dropFirst()) + ["--report", "text", "--", "/helpers/denyloop", "41", "25", "16", "3", "0"])
        // runProcess gives stdout and stderr as one stream.
        guard case .exited(0, let out, _) = text else { Issue.record("\(text)"); return }
        #expect(out.hasPrefix("errno 1 count 25 other 0"), "\(out)")
        let lines = out.split(separator: "\n")
        #expect(lines.firstIndex { $0.hasPrefix("stockade: minimal: exited") }! > lines.firstIndex { $0.hasPrefix("errno") }!)
        #expect(lines.contains("stockade: denied calls: 25 (1 kinds)"), "\(out)")
        #expect(lines.contains { $0.hasPrefix("  socket") && $0.contains(" 25  errno:EPERM  socket(AF_NETLINK, SOCK_RAW, 0)") }, "\(out)")

        let json = runProcess(base[0], Array(base.dropFirst()) + ["--report", "json", "--", "/helpers/denyloop", "110", "4"])
        guard case .exited(0, let all, _) = json, let report = all.split(separator: "\n").last.map(String.init) else { Issue.record("\(json)"); return }
        struct Report: Decodable {
            struct Denials: Decodable { var observed: Bool; var total: Int; var seccomp: [SeccompTally.Call] }
            var status: Int32
            var denials: Denials
        }
        let decoded = try JSONDecoder().decode(Report.self, from: Data(report.utf8))
        #expect(decoded.status == 0 && decoded.denials.observed && decoded.denials.total == 4)
        #expect(decoded.denials.seccomp.map(\.name) == ["getppid"])
        #expect(decoded.denials.seccomp.first?.example == "getppid()")
        #expect(decoded.denials.seccomp.first?.answer == "errno:EACCES")
    }

    @Test("a profile's [denials] is read with errors that name the file, line and key")
    func denialsSection() throws {
        let good = try Profile.parse(text: Self.profile + "\n[denials]\non_denial = \"quarantine\"\ndenials_per_minute = 30\n", file: "p.toml")
        #expect(good.denials == DenialPolicy(onDenial: .quarantine, perMinute: 30))
        #expect(try Profile.parse(text: Self.profile, file: "p.toml").denials == DenialPolicy())
        let text = Self.profile + "\n[denials]\non_denial = \"explode\"\n"
        let line = text.split(separator: "\n", omittingEmptySubsequences: false).firstIndex { $0.hasPrefix("on_denial") }! + 1
        #expect(throws: ProfileError.self) { try Profile.parse(text: text, file: "p.toml") }
        do {
            _ = try Profile.parse(text: text, file: "p.toml")
        } catch {
            #expect("\(error)".contains("p.toml:\(line)") && "\(error)".contains("denials.on_denial") && "\(error)".contains("log, kill or quarantine"), "\(error)")
        }
        do {
            _ = try Profile.parse(text: Self.profile + "\n[denials]\ndenials_per_minute = -1\n", file: "p.toml")
            Issue.record("a negative threshold was accepted")
        } catch {
            #expect("\(error)".contains("denials.denials_per_minute"), "\(error)")
        }
        do {
            _ = try Profile.parse(text: Self.profile + "\n[denials]\non_deny = \"kill\"\n", file: "p.toml")
            Issue.record("an unknown key was accepted")
        } catch {
            #expect("\(error)".contains("on_deny"), "\(error)")
        }
    }

    @Test("Landlock denials are counted from the kernel's audit records, and where they cannot be, the reason is plain",
          .enabled(if: getuid() == 0, "reading audit records needs CAP_AUDIT_READ (root)"),
          .enabled(if: LandlockPlan.kernelABI() >= 7, "Landlock writes audit records from ABI 7 (Linux 6.15)"),
          .enabled(if: SeccompSupervisor.unavailableReason == nil, "this kernel has no seccomp user notification"))
    func landlockDenials() throws {
        if LandlockAudit.auditEnabled() == false {
            #expect(LandlockAudit.unavailableReason?.contains("audit is disabled") == true, "\(LandlockAudit.unavailableReason ?? "nil")")
        }
        // Audit on for this test only where it is off (the host's setting comes back after it).
        try LandlockAudit.withAuditEnabled { try landlockDenialsCounted() }
    }

    func landlockDenialsCounted() throws {
        #expect(LandlockAudit.unavailableReason == nil, "\(LandlockAudit.unavailableReason ?? "")")
        let seen = Mutex<[String]>([])
        // minimal.toml as root inside, with a writable root tmpfs: mkdir
        // passes DAC and the mount, and only Landlock refuses it.
        let text = JailEndToEndTests.rootInside + Self.profile.dropFirst(JailEndToEndTests.minimal.count)
        let (exit, output, jail) = try Self.observed(["/bin/sh", "-c", "for i in 1 2 3; do mkdir /made-$i 2>/dev/null || echo denied; done"],
                                                     profile: text, onLandlockDenial: { d in seen.withLock { $0.append(d.blockers) } })
        #expect(exit.status == 0 && output == "denied\ndenied\ndenied\n", "\(output)")
        let watch = try #require(jail.landlockWatch, "\(jail.landlockUnobserved ?? "")")
        // The records come through the kernel's audit thread and may still
        // be on their way when the jail has ended (a loaded host): wait for
        // them, then check what they say.
        let deadline = ContinuousClock.now + .seconds(10)
        while watch.tally().total < 3 || seen.withLock({ $0.count }) < 3, ContinuousClock.now < deadline { usleep(20_000) }
        let tally = watch.tally()
        #expect(tally.total == 3, "\(tally)")
        #expect(tally.byBlocker["fs.make_dir"] == 3, "\(tally)")
        #expect(tally.example?.hasPrefix("fs.make_dir path=") == true, "\(tally)")
        #expect(seen.withLock { $0 } == ["fs.make_dir", "fs.make_dir", "fs.make_dir"])
    }

    @Test("a profile that denies sendmsg cannot hand the listener over: the jail runs unobserved with the profile's errno, and says why",
          .enabled(if: SeccompSupervisor.unavailableReason == nil, "this kernel has no seccomp user notification"))
    func handoverDenied() throws {
        let text = Self.profile.replacingOccurrences(of: "deny = [\"getppid\"]", with: "deny = [\"getppid\", \"sendmsg\"]")
        let (exit, output, jail) = try Self.observed(["/helpers/denyloop", "110", "3"], profile: text)
        #expect(exit.status == 0 && output.hasPrefix("errno 13 count 3 other 0\n"), "\(output)")
        #expect(jail.seccompWatch == nil)
        #expect(jail.seccompUnobserved?.contains("does not allow sendmsg") == true, "\(jail.seccompUnobserved ?? "nil")")
    }

    @Test("the listener never reaches the jail: the worker's fd table holds its stdio only",
          .enabled(if: SeccompSupervisor.unavailableReason == nil, "this kernel has no seccomp user notification"))
    func noListenerInJail() throws {
        let (exit, output, jail) = try Self.observed(["/helpers/denyloop", "--fds"])
        #expect(exit.status == 0, "\(output)")
        #expect(jail.seccompWatch != nil)
        let fds = output.split(separator: "\n").filter { $0.hasPrefix("fd ") }
        #expect(fds.map { $0.split(separator: " ")[1] }.sorted() == ["0", "1", "2"], "\(output)")
        #expect(!output.contains("seccomp"), "\(output)")
        #expect(!output.contains("socket:"), "\(output)")
    }

    @Test("a jail whose exec fails exits even when its exit_group waits for a supervisor that is busy with another jail",
          .enabled(if: SeccompSupervisor.unavailableReason == nil, "this kernel has no seccomp user notification"))
    func failedExecWithWaitingExit() throws {
        // The failing child keeps its copy of the listener (close-on-exec,
        // and no exec happened) and calls exit_group, which this profile
        // sends to the supervisor. Jail A holds the one supervisor thread in
        // its handler until B's launch has returned (at most 5 s), so B's
        // exit_group is still unread when the launcher has B's error record:
        // a launcher that let go of the listener before the child was gone
        // left the call with nobody to answer it, and waited for ever.
        let bDone = Mutex<Bool>(false)
        let aBusy = Mutex<Bool>(false)
        let holding = SeccompWatchOptions(ratePerSecond: nil) { event, _ in
            if event.name == "getppid" {
                aBusy.withLock { $0 = true }
                let until = ContinuousClock.now + .seconds(5)
                while !bDone.withLock({ $0 }), ContinuousClock.now < until { usleep(5_000) }
            }
            return .verdict
        }
        let aResult = Mutex<String?>(nil)
        let a = Thread {
            let output = (try? Self.observed(["/helpers/denyloop", "110", "1"], options: holding))?.output ?? "launch failed"
            aResult.withLock { $0 = output }
        }
        a.start()
        let start = ContinuousClock.now
        while !aBusy.withLock({ $0 }), ContinuousClock.now - start < .seconds(60) { usleep(1_000) }
        #expect(aBusy.withLock { $0 }, "jail A never reached its handler")

        let exitDenied = JailEndToEndTests.minimal + """

        [seccomp]
        deny = ["exit_group", "exit"]
        """
        let bResult = Mutex<String?>(nil)
        let b = Thread {
            var text: String
            do {
                _ = try Self.observed(["/no/such/program"], profile: exitDenied)
                text = "launched"
            } catch {
                text = "\(error)"
            }
            bDone.withLock { $0 = true }
            bResult.withLock { $0 = text }
        }
        b.start()
        let bStart = ContinuousClock.now
        while bResult.withLock({ $0 == nil }), ContinuousClock.now - bStart < .seconds(60) { usleep(10_000) }
        let outcome = bResult.withLock { $0 }
        #expect(outcome != nil, "the launch of a jail whose exec failed did not return within 60 s")
        #expect(outcome?.contains("execve") == true && outcome?.contains("ENOENT") == true, "\(outcome ?? "hung")")
        while aResult.withLock({ $0 == nil }), ContinuousClock.now - bStart < .seconds(90) { usleep(10_000) }
        #expect(aResult.withLock { $0 }?.contains("errno 13 count 1") == true, "\(aResult.withLock { $0 } ?? "hung")")
    }

    @Test("a jail flooding denials slows only itself: another jail's denied calls stay fast (latency measured)",
          .enabled(if: SeccompSupervisor.unavailableReason == nil, "this kernel has no seccomp user notification"))
    func floodIsolation() throws {
        struct Latency { var p50: Int; var p99: Int }
        func latency(_ output: String) -> Latency? {
            guard let line = output.split(separator: "\n").first(where: { $0.hasPrefix("ns p50") }) else { return nil }
            let f = line.split(separator: " ")
            return Latency(p50: Int(f[2]) ?? 0, p99: Int(f[4]) ?? 0)
        }
        let quiet = ["/helpers/denyloop", "110", "300"]
        let (_, alone, _) = try Self.observed(quiet)
        let baseline = try #require(latency(alone), "\(alone)")

        // Jail A: four threads hammering a denied call, bounded at 2000 a second.
        let rate = 2000
        let flooding = SeccompWatchOptions(ratePerSecond: rate)
        let started = Mutex<Bool>(false)
        let floodResult = Mutex<(output: String, tally: SeccompTally?)>(("", nil))
        let flood = Thread {
            started.withLock { $0 = true }
            if let r = try? Self.observed(["/helpers/denyloop", "--threads", "4", "110", "1500"], options: flooding) {
                floodResult.withLock { $0 = (r.output, r.jail.seccompWatch?.tally()) }
            }
        }
        flood.start()
        while !started.withLock({ $0 }) { usleep(1000) }
        usleep(500_000)
        let (_, during, jailB) = try Self.observed(quiet)
        let loaded = try #require(latency(during), "\(during)")
        while floodResult.withLock({ $0.tally == nil && $0.output.isEmpty }) { usleep(10_000) }
        let (floodOutput, floodTally) = floodResult.withLock { $0 }
        print("observation flood: quiet jail denied-call latency alone p50 \(baseline.p50) ns p99 \(baseline.p99) ns; during a 4-thread flood p50 \(loaded.p50) ns p99 \(loaded.p99) ns; flood tally \(floodTally?.total ?? -1) throttled \(floodTally?.throttled ?? -1)")
        #expect(floodOutput.contains("errno 13 count 6000 other 0"), "\(floodOutput)")
        #expect(floodTally?.total == 6000)
        #expect((floodTally?.throttled ?? 0) > 0, "the flood should have hit its rate bound")
        #expect(jailB.seccompWatch?.tally().total == 300)
        // The quiet jail's median denied call stays within a few
        // milliseconds (the flooding jail alone would need 3 s at its bound).
        let bound = max(baseline.p50 * 20, 2_000_000)
        #expect(loaded.p50 < bound, "median \(loaded.p50) ns vs \(baseline.p50) ns alone")
    }
}
}
