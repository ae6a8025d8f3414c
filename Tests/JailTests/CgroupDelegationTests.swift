import Foundation
import StockadeCgroups
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// A cgroup v2 tree delegated by root (`stockade cgroups --delegate`) to an
/// unprivileged user, who launches jails with budgets from inside it. Needs
/// a pure cgroup v2 host with the test as root in the root cgroup: the VM
/// suite (scripts/vm/run-vm-tests.sh), which sets STOCKADE_EXPECT_CGROUP=v2
/// so that a host that is not one fails instead of skipping.
enum DelegatedV2 {
    static let uid: UInt32 = 65534
    static let mount = "/sys/fs/cgroup"
    /// /sys/fs/cgroup/stockade/user-65534
    static let delegated = mount + CgroupDelegation.path(uid: uid)
    static let parent = mount + "/stockade"
    static let session = delegated + "/" + CgroupDelegation.sessionLeaf
    static let workload = ProcessInfo.processInfo.environment["STOCKADE_WORKLOAD"] ?? packageRoot + "/.build/stockade-workload"

    static var expected: Bool { ProcessInfo.processInfo.environment["STOCKADE_EXPECT_CGROUP"] == "v2" }

    /// Root, in the root cgroup of a cgroup2-only host that offers memory and pids.
    static var available: Bool {
        let host = CgroupHost.detect()
        guard getuid() == 0, host.layout == .unified, let u = host.unified, u.mountPoint == mount, u.ownPath == "/" else { return false }
        return u.rootControllers.isSuperset(of: ["memory", "pids"])
    }

    /// Runs `script` as the user, placed first (by root, as a login manager
    /// would) in `cgroup`: uid and gid 65534, no groups, no capabilities in
    /// any set.
    static func asUser(_ script: String, in cgroup: String? = session) throws -> Spawned {
        let place = cgroup.map { "echo $$ > '\($0)/cgroup.procs' || exit 90; " } ?? ""
        return try spawnCommand(["/bin/sh", "-c", place + "exec /usr/bin/setpriv --reuid=\(uid) --regid=\(uid) --clear-groups --inh-caps=-all --bounding-set=-all /bin/sh -c \"$0\"", script],
                                environment: ["PATH": "/usr/bin:/bin", "HOME": "/tmp", "NO_COLOR": "1"])
    }

    /// `stockade run` with `args`, as the user's shell command line.
    static func run(_ args: String) -> String { "exec \(stockadeCLI) run \(args)" }

    /// minimal.toml with these limits and no waiver, root's and world-readable.
    static func profile(memory: String, pids: Int, tag: String) throws -> String {
        let text = try String(contentsOfFile: packageRoot + "/profiles/minimal.toml", encoding: .utf8)
            .replacingOccurrences(of: "memory_max = \"256M\"", with: "memory_max = \"\(memory)\"")
            .replacingOccurrences(of: "pids_max = 128", with: "pids_max = \(pids)")
            .replacingOccurrences(of: "waive = [\"memory_max\"]", with: "")
        try #require(text.contains("memory_max = \"\(memory)\"") && text.contains("pids_max = \(pids)\n"))
        let path = "/tmp/stockade-delegated-\(tag)-\(getpid()).toml"
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        chmod(path, 0o644)
        return path
    }

    /// `stockade cgroups --delegate 65534`, checked.
    static func delegate() throws {
        let result = try runCommand([stockadeCLI, "cgroups", "--delegate", "\(uid)"])
        try #require(result.status == 0, "\(result.output)")
        #expect(result.output.contains("delegated to uid \(uid): \(delegated)\n"), "\(result.output)")
        #expect(result.output.contains("start uid \(uid)'s session or service in \(session)"), "\(result.output)")
    }

    /// `--undelegate`, and nothing of the delegation left: no cgroup of
    /// the user anywhere in the tree, its parent gone unless root's own
    /// launchers (other suites) hold tenants in it.
    static func undelegateLeavesNothing(sourceLocation: SourceLocation = #_sourceLocation) throws {
        let result = try runCommand([stockadeCLI, "cgroups", "--undelegate", "\(uid)"])
        #expect(result.status == 0, "\(result.output)", sourceLocation: sourceLocation)
        #expect(result.output.contains("removed: \(delegated)\n"), "\(result.output)", sourceLocation: sourceLocation)
        #expect(!FileManager.default.fileExists(atPath: delegated), "\(delegated) is still there", sourceLocation: sourceLocation)
        if FileManager.default.fileExists(atPath: parent) {
            let children = CgroupFS.children(parent)
            #expect(!children.isEmpty && children.allSatisfy { $0.hasPrefix("tenant-") },
                    "\(parent) is left with \(children)", sourceLocation: sourceLocation)
        }
    }

    /// The jail cgroups in the user's default tenant.
    static var jails: [String] {
        CgroupFS.children(delegated + "/tenant-default").filter { $0.hasPrefix("jail-") }.map { delegated + "/tenant-default/" + $0 }
    }

    static func cgroup(of pid: Int32) -> String {
        (CgroupFS.read("/proc/\(pid)/cgroup") ?? "").trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// Writes a cgroup file as root.
    static func write(_ path: String, _ value: String) throws {
        do { try CgroupFS.write(path, value) } catch { Issue.record("\(error)"); throw error }
    }

    /// The values of `key N` lines.
    static func numbers(after key: String, in output: String) -> [Int] {
        output.split(separator: "\n").compactMap { line in
            let f = line.split(separator: " ")
            return f.count >= 2 && f[0] == key ? Int(f[1]) : nil
        }
    }
}

extension Spawned {
    /// Kills it if it still runs (and is still ours to reap).
    func stop() {
        var status: Int32 = 0
        if waitpid(pid, &status, WNOHANG) == 0 {
            kill(pid, SIGKILL)
            while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        }
        unlink(outputPath)
    }

    /// Waits at most `seconds` for it to end; killed (and nil) past that.
    func wait(seconds: Double) -> (output: String, status: Int32)? {
        var status: Int32 = 0
        let deadline = Date().addingTimeInterval(seconds)
        while true {
            let r = waitpid(pid, &status, WNOHANG)
            if r == pid { break }
            if r < 0 && errno != EINTR { return nil }
            if Date() > deadline {
                kill(pid, SIGKILL)
                while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
                unlink(outputPath)
                return nil
            }
            usleep(50_000)
        }
        defer { unlink(outputPath) }
        let code = status & 0x7f == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
        return (output, code)
    }
}

@Suite("A cgroup v2 tree delegated to an unprivileged user holds its rootless jails' budgets", .serialized,
       .enabled(if: getuid() == 0 && (DelegatedV2.available || DelegatedV2.expected),
                "needs root in the root cgroup of a pure cgroup v2 host (the VM suite: scripts/vm/run-vm-tests.sh)"))
struct CgroupDelegationV2Tests {
    init() throws {
        try #require(DelegatedV2.available, "not root in the root cgroup of a cgroup2-only host with memory and pids: \(CgroupHost.detect().diagnosis)")
        try #require(FileManager.default.isExecutableFile(atPath: stockadeCLI), "build the CLI first")
        try #require(FileManager.default.isExecutableFile(atPath: DelegatedV2.workload), "build the workload first (make workload)")
        try #require(!FileManager.default.fileExists(atPath: DelegatedV2.delegated), "\(DelegatedV2.delegated) exists before the test")
    }

    @Test("the user, placed in the session leaf by root, gets its jail a cgroup beneath the delegated one with the profile's memory.max and pids.max; the jail sees / as its cgroup")
    func jailBeneathDelegated() throws {
        try DelegatedV2.delegate()
        var st = stat()
        for file in ["", "/cgroup.procs", "/cgroup.subtree_control", "/cgroup.threads"] {
            #expect(stat(DelegatedV2.delegated + file, &st) == 0 && st.st_uid == DelegatedV2.uid, "\(file) of the delegated cgroup is not the user's")
        }
        // The delegated cgroup's own limits stay root's.
        for file in ["/memory.max", "/pids.max", "/cgroup.max.descendants", "/cgroup.type"] {
            #expect(stat(DelegatedV2.delegated + file, &st) == 0 && st.st_uid == 0, "\(file) of the delegated cgroup is not root's")
        }
        #expect(stat(DelegatedV2.session + "/cgroup.procs", &st) == 0 && st.st_uid == DelegatedV2.uid)
        #expect(stat(DelegatedV2.session + "/cgroup.subtree_control", &st) == 0 && st.st_uid == 0)
        let handed = (CgroupFS.readTrimmed(DelegatedV2.delegated + "/cgroup.subtree_control") ?? "").split(separator: " ")
        #expect(handed.contains("memory") && handed.contains("pids"), "\(handed)")

        // It hands its controllers down, so (v2) it holds no process
        // itself: root cannot start the user there, only in the session leaf.
        let stray = try spawnCommand(["/bin/sleep", "60"])
        defer { stray.stop() }
        do {
            try CgroupFS.write(DelegatedV2.delegated + "/cgroup.procs", "\(stray.pid)")
            Issue.record("a process was placed in the delegated cgroup itself, beside the controllers it hands down")
        } catch {
            #expect(error.cause == .resourceBusy, "\(error)")
        }
        stray.stop()

        let profile = try DelegatedV2.profile(memory: "40M", pids: 24, tag: "placed")
        defer { unlink(profile) }
        let user = try DelegatedV2.asUser("grep -E '^Cap(Prm|Eff|Bnd|Amb)' /proc/self/status; id -u; " +
                                          DelegatedV2.run("-p \(profile) --time-limit 300s -- /bin/sh -c 'echo in-jail; cat /proc/self/cgroup; exec sleep 600'"))
        var finished = false
        defer {
            if !finished { user.stop() }
            _ = try? DelegatedV2.undelegateLeavesNothing()
        }
        try #require(user.waitForOutput("in-jail", seconds: 180), "\(user.output)")
        for cap in ["CapPrm", "CapEff", "CapBnd", "CapAmb"] {
            #expect(user.output.contains("\(cap):\t0000000000000000"), "\(user.output)")
        }
        #expect(user.output.contains("\n\(DelegatedV2.uid)\n"), "\(user.output)")
        #expect(!user.output.contains("no cgroup for this jail"), "\(user.output)")

        // The launcher stays where root put it; the jail is beneath the delegated cgroup.
        #expect(DelegatedV2.cgroup(of: user.pid) == "0::/stockade/user-\(DelegatedV2.uid)/session")
        let jails = DelegatedV2.jails
        try #require(jails.count == 1, "jail cgroups: \(jails)")
        let jail = jails[0]
        #expect(CgroupFS.readTrimmed(jail + "/memory.max") == "\(40 << 20)")
        #expect(CgroupFS.readTrimmed(jail + "/pids.max") == "24")
        let procs = CgroupFS.procs(jail)
        #expect(!procs.isEmpty)
        var checked = 0
        for pid in procs {
            let place = DelegatedV2.cgroup(of: pid)
            // A short-lived process of the jail (a child of its shell) may end
            // between the listing and the read: its file reads empty and it is
            // no longer listed. Every process still there must be in the jail.
            if place.isEmpty && !CgroupFS.procs(jail).contains(pid) { continue }
            checked += 1
            #expect(place == "0::" + jail.dropFirst(DelegatedV2.mount.count), "pid \(pid)")
        }
        #expect(checked > 0, "no process of the jail was left to check: \(procs)")
        #expect(user.waitForOutput("in-jail\n0::/\n", seconds: 30), "the jail sees a host cgroup path: \(user.output)")

        // Root ends the jail through its cgroup; the launcher removes it.
        try DelegatedV2.write(jail + "/cgroup.kill", "1")
        let end = try #require(user.wait(seconds: 120), "the launcher did not end after its jail was killed")
        finished = true
        #expect(end.status == 137, "\(end.output)")
        #expect(!FileManager.default.fileExists(atPath: jail), "the launcher left \(jail)")
        #expect(!FileManager.default.fileExists(atPath: DelegatedV2.delegated + "/tenant-default"), "the launcher left its tenant")
    }

    @Test("the budget holds: a fork bomb stops at the jail's pids.max, a hog is OOM-killed at its memory.max, and a jail that asks for more than root's cap on the delegated cgroup stops at root's cap")
    func budgetEnforced() throws {
        try DelegatedV2.delegate()
        defer { _ = try? DelegatedV2.undelegateLeavesNothing() }
        let profile = try DelegatedV2.profile(memory: "40M", pids: 24, tag: "budget")
        defer { unlink(profile) }
        let bind = "--ro-bind \(DelegatedV2.workload):/workload"

        // The fork bomb: fork fails with EAGAIN at pids.max (PID 1 and the
        // workload itself count), and pids.current stays there.
        let bomb = try DelegatedV2.asUser(DelegatedV2.run("-p \(profile) \(bind) --time-limit 300s -- /workload forkbomb"))
        defer { bomb.stop() }
        try #require(bomb.waitForOutput("forked ", seconds: 180), "\(bomb.output)")
        let line = bomb.output.split(separator: "\n").first { $0.hasPrefix("forked ") }.map(String.init) ?? ""
        let fields = line.split(separator: " ")
        let forked = fields.count == 4 ? Int(fields[1]) ?? -1 : -1
        #expect(fields.count == 4 && fields[3] == "\(EAGAIN)", "\(line)")
        #expect(forked >= 18 && forked <= 22, "\(forked) forks under pids_max = 24: \(bomb.output)")
        print("measure[delegated v2]: fork bomb in a rootless jail, pids_max = 24: \(line)")
        let jail = try #require(DelegatedV2.jails.first)
        #expect(CgroupFS.readTrimmed(jail + "/pids.current") == "24")
        #expect((CgroupFS.readKeyed(jail + "/pids.events")?["max"] ?? 0) >= 1)
        try DelegatedV2.write(jail + "/cgroup.kill", "1")
        let bombEnd = try #require(bomb.wait(seconds: 120), "the launcher did not end after its jail was killed")
        #expect(bombEnd.status == 137, "\(bombEnd.output)")

        // The hog: OOM-killed past 40M, within the time limit.
        let hog = try DelegatedV2.asUser(DelegatedV2.run("-p \(profile) \(bind) --report json --time-limit 200s -- /workload hog 200"))
        let hogEnd = try #require(hog.wait(seconds: 300), "the hog ran past its time")
        #expect(hogEnd.output.contains("\"reason\":\"oom\""), "\(hogEnd.output)")
        #expect(!hogEnd.output.contains("hog done"), "\(hogEnd.output)")
        let reached = DelegatedV2.numbers(after: "hog", in: hogEnd.output).max() ?? 0
        #expect(reached >= 8 && reached <= 40, "the hog reached \(reached) MiB under memory_max = 40M: \(hogEnd.output)")
        print("measure[delegated v2]: hog in a rootless jail, memory_max = 40M: OOM-killed after \(reached) MiB reported")

        // Root caps the whole delegation at 64M; a profile that asks for
        // 1G gets its 1G in its own cgroup, and the kernel still stops it
        // at root's cap (the launcher, in the session leaf, counts too).
        try DelegatedV2.write(DelegatedV2.delegated + "/memory.max", "\(64 << 20)")
        let greedy = try DelegatedV2.profile(memory: "1G", pids: 64, tag: "greedy")
        defer { unlink(greedy) }
        let big = try DelegatedV2.asUser(DelegatedV2.run("-p \(greedy) \(bind) --report json --time-limit 200s -- /workload hog 400"))
        let bigEnd = try #require(big.wait(seconds: 300), "the hog ran past its time")
        #expect(bigEnd.output.contains("\"reason\":\"oom\""), "\(bigEnd.output)")
        let bigReached = DelegatedV2.numbers(after: "hog", in: bigEnd.output).max() ?? 0
        #expect(bigReached >= 8 && bigReached <= 64, "the hog reached \(bigReached) MiB under root's 64M cap: \(bigEnd.output)")
        print("measure[delegated v2]: hog in a jail asking memory_max = 1G under root's 64M cap: OOM-killed after \(bigReached) MiB reported")
        #expect((CgroupFS.readKeyed(DelegatedV2.delegated + "/memory.events")?["oom_kill"] ?? 0) >= 1)
        #expect(CgroupFS.readTrimmed(DelegatedV2.delegated + "/memory.max") == "\(64 << 20)")
    }

    @Test("the user cannot lift root's cap: the delegated cgroup's limit files, its parent's and the root's cgroup.procs and subtree_control, a sibling or a rename are refused; switching controllers off below the delegated cgroup leaves root's cap in force")
    func userCannotLiftCap() throws {
        try DelegatedV2.delegate()
        defer { _ = try? DelegatedV2.undelegateLeavesNothing() }
        try DelegatedV2.write(DelegatedV2.delegated + "/memory.max", "\(48 << 20)")
        try DelegatedV2.write(DelegatedV2.delegated + "/pids.max", "40")
        let d = DelegatedV2.delegated, p = DelegatedV2.parent, r = DelegatedV2.mount
        let attempts: [(String, String)] = [
            ("lift-memory", "echo max > \(d)/memory.max"),
            ("lift-pids", "echo max > \(d)/pids.max"),
            ("lift-memory-high", "echo max > \(d)/memory.high"),
            ("chmod-limit", "chmod 666 \(d)/memory.max"),
            ("move-to-parent", "echo $$ > \(p)/cgroup.procs"),
            ("move-to-root", "echo $$ > \(r)/cgroup.procs"),
            ("threads-to-parent", "echo $$ > \(p)/cgroup.threads"),
            ("parent-controllers-off", "echo -memory > \(p)/cgroup.subtree_control"),
            ("root-controllers-off", "echo -pids > \(r)/cgroup.subtree_control"),
            ("sibling", "mkdir \(p)/user-\(DelegatedV2.uid)-more"),
            ("rename", "mv \(d) \(p)/user-0"),
            ("session-controllers", "echo +memory > \(DelegatedV2.session)/cgroup.subtree_control"),
        ]
        let script = "try() { if (eval \"$2\") 2>/tmp/err.$$; then echo \"WROTE $1\"; else echo \"refused $1: $(cat /tmp/err.$$)\"; fi; }; " +
            attempts.map { "try \($0.0) '\($0.1)'; " }.joined() +
            // The user's own: controllers off below the delegated cgroup.
            "echo '-memory -pids' > \(d)/cgroup.subtree_control && echo 'controllers off below'; cat /proc/self/cgroup"
        let user = try DelegatedV2.asUser(script)
        let out = try #require(user.wait(seconds: 120), "the attacker's script did not end")
        for (name, _) in attempts {
            let line = out.output.split(separator: "\n").first { $0.hasPrefix("refused \(name):") || $0 == "WROTE \(name)" }
                .map(String.init) ?? "no line for \(name)"
            #expect(line.hasPrefix("refused \(name):") && (line.contains("Permission denied") || line.contains("Operation not permitted")),
                    "\(line)")
        }
        #expect(out.output.contains("controllers off below"), "\(out.output)")
        print("measure[delegated v2]: the user's attempts:\n" + out.output)
        #expect(out.output.hasSuffix("0::/stockade/user-\(DelegatedV2.uid)/session\n"), "the attacker left the session: \(out.output)")
        #expect(CgroupFS.readTrimmed(d + "/memory.max") == "\(48 << 20)")
        #expect(CgroupFS.readTrimmed(d + "/pids.max") == "40")
        #expect(!FileManager.default.fileExists(atPath: p + "/user-0") && !FileManager.default.fileExists(atPath: p + "/user-\(DelegatedV2.uid)-more"))

        // With the controllers off below it, the user's own cgroup has no
        // limit files; root's cap on the delegated cgroup still holds the
        // hog and the fork bomb the user runs there, outside any jail.
        let hog = try DelegatedV2.asUser("mkdir \(d)/mine && echo $$ > \(d)/mine/cgroup.procs && ls \(d)/mine | grep -c '^memory.max$'; " +
                                         "\(DelegatedV2.workload) hog 200 </dev/null; echo \"hog status $?\"")
        let hogEnd = try #require(hog.wait(seconds: 300), "the hog ran past its time")
        #expect(hogEnd.output.hasPrefix("0\n"), "memory.max in the user's cgroup: \(hogEnd.output)")
        let reached = DelegatedV2.numbers(after: "hog", in: hogEnd.output).max() ?? 0
        #expect(reached >= 8 && reached <= 48, "the hog reached \(reached) MiB under root's 48M cap: \(hogEnd.output)")
        #expect(hogEnd.output.contains("hog status 137"), "\(hogEnd.output)")

        let bomb = try DelegatedV2.asUser("echo $$ > \(d)/mine/cgroup.procs && exec \(DelegatedV2.workload) forkbomb </dev/null")
        defer { bomb.stop() }
        try #require(bomb.waitForOutput("forked ", seconds: 120), "\(bomb.output)")
        let forked = DelegatedV2.numbers(after: "forked", in: bomb.output).first ?? -1
        #expect(forked > 0 && forked < 40, "\(forked) forks under root's pids.max = 40")
        print("measure[delegated v2]: outside any jail, controllers off: hog OOM-killed after \(reached) MiB under root's 48M, fork bomb \(forked) forks under root's pids.max = 40")
        #expect(Int(CgroupFS.readTrimmed(d + "/pids.current") ?? "") == 40)
        try DelegatedV2.write(d + "/mine/cgroup.kill", "1")
        #expect(bomb.wait(seconds: 60) != nil)
    }

    @Test("a jail's process cannot move itself out of its cgroup: a writable bind of the cgroup tree, of a tree that holds it or of the delegated cgroup is refused, and through a read-only one every move fails (to the session, the delegated cgroup, its tenant, the parent, the root), as do a cgroup it makes and a cgroup2 mount of its own")
    func jailCannotEscape() throws {
        try DelegatedV2.delegate()
        defer { _ = try? DelegatedV2.undelegateLeavesNothing() }
        let profile = try DelegatedV2.profile(memory: "40M", pids: 24, tag: "escape")
        defer { unlink(profile) }
        // The jail runs as the user, who owns the delegated cgroup: with
        // the tree writable it could move itself there.
        for bind in ["--bind /sys/fs/cgroup:/cg", "--bind /sys:/s", "--bind \(DelegatedV2.delegated):/mine", "--bind /sys/fs:/fs"] {
            let user = try DelegatedV2.asUser(DelegatedV2.run("-p \(profile) \(bind) -- /bin/echo ran"))
            let end = try #require(user.wait(seconds: 120), "\(bind)")
            #expect(end.status == 125 && end.output.contains("the writable bind of ") && end.output.contains(" holds the cgroup filesystem at /sys/fs/cgroup"),
                    "\(bind): \(end.output)")
            #expect(!end.output.contains("ran\n"), "\(bind): \(end.output)")
        }
        #expect(DelegatedV2.jails.isEmpty, "a refused launch left \(DelegatedV2.jails)")

        let d = "/cg/stockade/user-\(DelegatedV2.uid)"
        let targets = ["\(d)/session", d, "\(d)/tenant-default", "/cg/stockade", "/cg"]
        let script = """
            cat /proc/self/cgroup
            move() { if (echo $$ > "$1/cgroup.procs") 2>/tmp/err; then echo "MOVED $1"; else echo "stayed $1: $(cat /tmp/err)"; fi; }
            \(targets.map { "move \($0)" }.joined(separator: "\n"))
            if mkdir \(d)/escape 2>/tmp/err; then echo MADE; move \(d)/escape; else echo "no cgroup made: $(cat /tmp/err)"; fi
            mkdir -p /tmp/cg
            if mount -t cgroup2 none /tmp/cg 2>/dev/null; then echo MOUNTED; fi
            unshare -UrmC sh -c 'mount -t cgroup2 none /tmp/cg && ls /tmp/cg' 2>/dev/null | grep -E '^(session|tenant-default|escape|stockade)$'
            cat /proc/self/cgroup
            echo escape-done
            """
        let file = "/tmp/stockade-delegated-escape-\(getpid()).sh"
        try script.write(toFile: file, atomically: true, encoding: .utf8)
        chmod(file, 0o644)
        defer { unlink(file) }
        let user = try DelegatedV2.asUser(DelegatedV2.run("-p \(profile) --ro-bind /sys/fs/cgroup:/cg --ro-bind \(file):/escape.sh --time-limit 200s -- /bin/sh /escape.sh"))
        let end = try #require(user.wait(seconds: 300), "the jail ran past its time")
        #expect(end.status == 0 && end.output.contains("escape-done"), "\(end.output)")
        print("measure[delegated v2]: the jail's attempts:\n" + end.output)
        let lines = end.output.split(separator: "\n").map(String.init)
        for target in targets {
            let line = lines.first { $0.hasPrefix("stayed \(target): ") } ?? "no line for \(target)"
            #expect(line.hasSuffix("Read-only file system") || line.hasSuffix("Permission denied"), "\(line)")
        }
        #expect(!end.output.contains("MOVED") && !end.output.contains("MADE") && !end.output.contains("MOUNTED"), "\(end.output)")
        #expect(lines.contains { $0.hasPrefix("no cgroup made: ") && $0.hasSuffix("Read-only file system") }, "\(end.output)")
        // A nested user and cgroup namespace may mount cgroup2, but it
        // shows only the jail's own subtree.
        #expect(!lines.contains { ["session", "tenant-default", "escape", "stockade"].contains($0) }, "\(end.output)")
        #expect(lines.filter { $0.hasPrefix("0::") } == ["0::/", "0::/"], "\(end.output)")
        #expect(!FileManager.default.fileExists(atPath: DelegatedV2.delegated + "/escape"))
    }

    @Test("--undelegate refuses while the user's session still runs in the delegated cgroup and names it; a launcher outside it is told where to start; once the session ends it removes everything")
    func undelegateRemovesAll() throws {
        try DelegatedV2.delegate()
        var removed = false
        defer { if !removed { _ = try? runCommand([stockadeCLI, "cgroups", "--undelegate", "\(DelegatedV2.uid)"]) } }
        let sleeper = try DelegatedV2.asUser("echo ready; exec sleep 600")
        defer { sleeper.stop() }
        try #require(sleeper.waitForOutput("ready", seconds: 60))
        let busy = try runCommand([stockadeCLI, "cgroups", "--undelegate", "\(DelegatedV2.uid)"])
        #expect(busy.status == 1, "\(busy.output)")
        #expect(busy.output.contains("still holds running processes: \(DelegatedV2.session) (\(sleeper.pid))"), "\(busy.output)")
        #expect(FileManager.default.fileExists(atPath: DelegatedV2.session) && kill(sleeper.pid, 0) == 0)

        // A launcher the user starts outside the delegated cgroup cannot
        // use it: refused with where to start instead (memory_max is not waived).
        let profile = try DelegatedV2.profile(memory: "40M", pids: 24, tag: "outside")
        defer { unlink(profile) }
        let outside = try DelegatedV2.asUser(DelegatedV2.run("-p \(profile) -- /bin/echo ran"), in: nil)
        let outsideEnd = try #require(outside.wait(seconds: 120))
        #expect(outsideEnd.status == 125, "\(outsideEnd.output)")
        #expect(outsideEnd.output.contains("takes jails only from a launcher that runs inside it") &&
                outsideEnd.output.contains("start the session in \(DelegatedV2.session)"), "\(outsideEnd.output)")
        #expect(!outsideEnd.output.contains("ran\n"))

        sleeper.stop()
        try DelegatedV2.undelegateLeavesNothing()
        removed = true
        var stack = [DelegatedV2.mount]
        while let dir = stack.popLast() {
            for child in CgroupFS.children(dir) {
                #expect(!child.contains("user-\(DelegatedV2.uid)"), "\(dir)/\(child) is left")
                stack.append(dir + "/" + child)
            }
        }
        let again = try runCommand([stockadeCLI, "cgroups", "--undelegate", "\(DelegatedV2.uid)"])
        #expect(again.status == 1 && again.output.contains("has no delegated cgroup"), "\(again.output)")
    }
}

/// The cgroup mount points of this host.
private let cgroupMounts = CgroupHost.mountPoints(mountinfo: (try? String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8)) ?? "")

@Suite("A writable bind that holds a cgroup filesystem is refused; through a read-only one a jail moves nothing",
       .enabled(if: cgroupMounts.contains { $0.hasPrefix("/sys/fs/cgroup") }, "no cgroup filesystem is mounted at /sys/fs/cgroup"))
struct CgroupBindTests {
    @Test("a writable bind of the cgroup tree, of a tree that holds it, or of one cgroup, from the command line or the profile, is refused naming the bind and the cgroup mount")
    func writableRefused() throws {
        try #require(FileManager.default.isExecutableFile(atPath: stockadeCLI), "build the CLI first")
        let minimal = packageRoot + "/profiles/minimal.toml"
        let one = try #require(cgroupMounts.first { $0.hasPrefix("/sys/fs/cgroup") })
        for bind in ["/sys/fs/cgroup:/cg", "/sys:/s", "/sys/fs:/fs", "\(one):/one"] {
            let result = try runCommand([stockadeCLI, "run", "-p", minimal, "--bind", bind, "--", "/bin/echo", "ran"])
            #expect(result.status == 125, "\(bind): \(result.output)")
            #expect(result.output.contains("--bind \(bind): the writable bind of ") && result.output.contains(" holds the cgroup filesystem at /sys/fs/cgroup"),
                    "\(bind): \(result.output)")
            #expect(!result.output.contains("ran\n"))
        }
        let text = try String(contentsOfFile: minimal, encoding: .utf8) + "\n[[mount]]\nsource = \"/sys/fs/cgroup\"\ntarget = \"/cg\"\nwritable = true\n"
        let file = "/tmp/stockade-cgroup-bind-\(getpid()).toml"
        try text.write(toFile: file, atomically: true, encoding: .utf8)
        defer { unlink(file) }
        let mounts = text.components(separatedBy: "[[mount]]").count - 2
        let result = try runCommand([stockadeCLI, "run", "-p", file, "--", "/bin/echo", "ran"])
        #expect(result.status == 125 && result.output.contains("\(file): mount[\(mounts)]: the writable bind of /sys/fs/cgroup holds the cgroup filesystem"),
                "\(result.output)")
    }

    @Test("through a read-only bind of the cgroup tree every write to a cgroup.procs fails")
    func readOnlyMovesNothing() throws {
        try #require(FileManager.default.isExecutableFile(atPath: stockadeCLI), "build the CLI first")
        let script = """
            for f in /cg/cgroup.procs /cg/*/cgroup.procs /cg/*/*/cgroup.procs; do
              [ -e "$f" ] || continue
              if (echo $$ > "$f") 2>/tmp/err; then echo "MOVED $f"; else echo "stayed: $(cat /tmp/err)"; fi
            done
            """
        let result = try runCommand([stockadeCLI, "run", "-p", packageRoot + "/profiles/minimal.toml", "--ro-bind", "/sys/fs/cgroup:/cg",
                                     "--", "/bin/sh", "-c", script])
        #expect(result.status == 0, "\(result.output)")
        let stayed = result.output.split(separator: "\n").filter { $0.hasPrefix("stayed: ") }
        #expect(!stayed.isEmpty && !result.output.contains("MOVED"), "\(result.output)")
        for line in stayed {
            #expect(line.hasSuffix("Read-only file system") || line.hasSuffix("Permission denied"), "\(line)")
        }
    }
}
