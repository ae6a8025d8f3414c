import CStockadeSpawn
import Foundation
import StockadeJail
import StockadeConfig
import StockadeSystem
import Synchronization
import Testing

/// Attacks on the launcher through what an earlier jail left behind in a
/// writable bind: symlinks planted as bind sources and as mount targets,
/// a link swapped against a directory while launches run, `..` in a
/// destination, a read-only mount covered by a later one, a jail that
/// rewrites its own profile, and profiles others could have written. Each
/// runs against the real kernel as root (in-process) and rootless (the CLI
/// as uid 65534, like the other rootless tests).
@Suite("Paths an earlier jail wrote", .serialized)
struct PathAttackTests {
    static let nobody: UInt32 = 65534
    static let stockade = stockadeCLI

    /// A fresh directory under /tmp, mode `mode`, owned by `owner`.
    static func scratch(_ name: String, mode: mode_t = 0o777, owner: UInt32 = 0) throws -> String {
        let dir = "/tmp/stockade-paths-\(getpid())-\(name)"
        try? FileManager.default.removeItem(atPath: dir)
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: false)
        chmod(dir, mode)
        chown(dir, owner, owner)
        return dir
    }

    static func remove(_ path: String) { try? FileManager.default.removeItem(atPath: path) }

    /// `stockade run` as uid 65534 with `args` before `--` and `command` after.
    static func rootless(_ args: [String], _ command: [String]) throws -> (output: String, status: Int32) {
        try host(["/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", stockade, "run",
                  "-p", packageRoot + "/profiles/minimal.toml"] + args + ["--"] + command)
    }

    static func launchError(_ profile: Profile, _ mounts: [MountSpec], _ command: [String] = ["/bin/true"]) -> String? {
        do {
            let run = try runJailed(profile, command) { $0.extraMounts = mounts }
            return run.exit.status == 0 ? nil : "exit \(run.exit.status): \(run.stderr)"
        } catch {
            return "\(error)"
        }
    }

    // MARK: - item: bind sources

    @Test("a symlink one jail planted in its writable bind is not followed as the next run's bind source")
    func plantedSourceLink() throws {
        let shared = try Self.scratch("planted")
        defer { Self.remove(shared) }
        let profile = try minimalProfile()
        // Jail 1 plants links: absolute, relative climbing out, and one in the middle of a path.
        let plant = try runJailed(profile, ["/bin/sh", "-c",
            "ln -s /etc /out/model && ln -s ../../../../../../../../etc /out/rel && ln -s / /out/mid && mkdir /out/real"]) {
            $0.extraMounts = [MountSpec(kind: .bind, source: shared, target: "/out", writable: true)]
        }
        #expect(plant.exit.status == 0, "\(plant.stderr)")
        for source in [shared + "/model", shared + "/rel", shared + "/mid/etc"] {
            let error = Self.launchError(profile, [MountSpec(kind: .bind, source: source, target: "/model")],
                                         ["/bin/cat", "/model/hostname"])
            #expect(error?.contains("is a symlink the launcher will not follow") == true, "\(source): \(error ?? "mounted")")
        }
        // Nothing changes with the link swapped for a writable bind of it.
        let writable = Self.launchError(profile, [MountSpec(kind: .bind, source: shared + "/model", target: "/model", writable: true)])
        #expect(writable?.contains("\(shared)/model is a symlink") == true, "\(writable ?? "mounted")")
        // A real directory beside the links still binds.
        #expect(Self.launchError(profile, [MountSpec(kind: .bind, source: shared + "/real", target: "/model")]) == nil)
    }

    @Test("rootless: a planted source symlink is refused, the caller's files stay out of the jail",
          .enabled(if: getuid() == 0, "needs root to switch to an unprivileged user"))
    func plantedSourceLinkRootless() throws {
        let shared = try Self.scratch("planted-rl", mode: 0o755, owner: Self.nobody)
        defer { Self.remove(shared) }
        let plant = try Self.rootless(["--bind", "\(shared):/out"], ["/bin/sh", "-c", "ln -s /etc /out/model; ln -s / /out/mid"])
        #expect(plant.status == 0, "\(plant.output)")
        for source in ["\(shared)/model", "\(shared)/mid/etc"] {
            let run = try Self.rootless(["--ro-bind", "\(source):/model"], ["/bin/cat", "/model/hostname"])
            #expect(run.status == 125, "\(source): \(run.output)")
            #expect(run.output.contains("is a symlink the launcher will not follow"), "\(run.output)")
        }
    }

    /// Swaps two names in `dir` with renameat2(RENAME_EXCHANGE) until stopped.
    final class Swapper: @unchecked Sendable {
        let stop = Atomic<Bool>(false)
        let swaps = Atomic<Int>(0)
        var thread: Thread?

        init(_ a: String, _ b: String) {
            let t = Thread { [self] in
                while !stop.load(ordering: .relaxed) {
                    if stk_rename_exchange(a, b) == 0 { swaps.add(1, ordering: .relaxed) }
                }
            }
            thread = t
            t.start()
        }

        func finish() {
            stop.store(true, ordering: .relaxed)
            while thread?.isFinished == false { usleep(1000) }
        }
    }

    /// Sets up a directory `model` (holding `etc/marker`) and a link `swap`
    /// to the host's root beside it; the racer exchanges them. Bound as `model`, the jail must
    /// see the marker or be refused, never the host's /etc.
    static func raceLayout(_ dir: String, owner: UInt32) throws {
        try FileManager.default.createDirectory(atPath: dir + "/model/etc", withIntermediateDirectories: true)
        try "safe\n".write(toFile: dir + "/model/etc/marker", atomically: false, encoding: .utf8)
        // Relative, as a jail would write it: "../.." is the host's root from
        // /tmp/NAME, in the launcher's view and in the child's (/oldroot/tmp/NAME).
        try FileManager.default.createSymbolicLink(atPath: dir + "/swap", withDestinationPath: "../..")
        for path in [dir + "/model", dir + "/model/etc", dir + "/model/etc/marker"] { chown(path, owner, owner) }
        lchown(dir + "/swap", owner, owner)
    }

    static let raceCommand = ["/bin/sh", "-c", "if [ -e /m/passwd ] || [ -e /m/etc/passwd ]; then echo HOST; "
        + "elif [ -e /m/marker ] || [ -e /m/etc/marker ]; then echo safe; else echo other; fi"]

    @Test("a link swapped against a directory in a loop: not one of 150 launches mounts the host's tree")
    func swapRace() throws {
        let dir = try Self.scratch("race")
        defer { Self.remove(dir) }
        try Self.raceLayout(dir, owner: 0)
        let profile = try minimalProfile()
        let racer = Swapper(dir + "/model", dir + "/swap")
        var mounted = 0, refused = 0, host = 0, inChild = 0
        var unexpected: [String] = []
        for i in 0..<150 {
            // Half the launches bind the swapped name itself, half a path through it.
            let source = i % 2 == 0 ? dir + "/model" : dir + "/model/etc"
            do {
                let run = try runJailed(profile, Self.raceCommand) {
                    $0.extraMounts = [MountSpec(kind: .bind, source: source, target: "/m")]
                }
                switch run.lines.last {
                case "safe": mounted += 1
                case "HOST": host += 1
                default: unexpected.append("\(run.stdout) \(run.stderr)")
                }
            } catch {
                let text = "\(error)"
                // Refused in the launcher (a link on the way) or in the child (swapped after the check).
                if text.contains("will not follow") || text.contains("ESTALE") || text.contains("ELOOP")
                    || text.contains("ENOENT") {
                    refused += 1
                    if text.hasPrefix("jail setup failed at mount") { inChild += 1 }
                } else {
                    unexpected.append(text)
                }
            }
        }
        racer.finish()
        #expect(host == 0, "\(host) of 150 launches mounted the host's tree")
        #expect(unexpected.isEmpty, "\(unexpected.prefix(3))")
        #expect(racer.swaps.load(ordering: .relaxed) > 150, "the racer barely ran")
        #expect(mounted > 0, "no launch got through at all (\(refused) refused)")
        print("swap race as root: \(mounted) mounted the directory, \(refused) refused (\(inChild) by the child: swapped after the check), "
            + "\(host) host, \(racer.swaps.load(ordering: .relaxed)) swaps")
    }

    @Test("rootless: the same swap race over 60 launches of the CLI never mounts the host's tree",
          .enabled(if: getuid() == 0, "needs root to switch to an unprivileged user"))
    func swapRaceRootless() throws {
        let dir = try Self.scratch("race-rl", mode: 0o755, owner: Self.nobody)
        defer { Self.remove(dir) }
        try Self.raceLayout(dir, owner: Self.nobody)
        let racer = Swapper(dir + "/model", dir + "/swap")
        var mounted = 0, refused = 0, host = 0
        var unexpected: [String] = []
        for i in 0..<60 {
            let source = i % 2 == 0 ? dir + "/model" : dir + "/model/etc"
            let run = try Self.rootless(["--ro-bind", "\(source):/m"], Self.raceCommand)
            let last = run.output.split(separator: "\n").last.map(String.init)
            if run.status == 0 && last == "safe" {
                mounted += 1
            } else if last == "HOST" {
                host += 1
            } else if run.status == 125 && ["will not follow", "ESTALE", "ELOOP", "ENOENT"].contains(where: run.output.contains) {
                refused += 1
            } else {
                unexpected.append(run.output)
            }
        }
        racer.finish()
        #expect(host == 0, "\(host) of 60 rootless launches mounted the host's tree")
        #expect(unexpected.isEmpty, "\(unexpected.prefix(3))")
        #expect(mounted > 0, "no launch got through at all (\(refused) refused)")
        print("swap race rootless: \(mounted) mounted, \(refused) refused, \(host) host")
    }

    @Test("a trusted link (root's, in root-only directories) is followed; follow_symlinks = true follows any")
    func trustedLinks() throws {
        let profile = try minimalProfile()
        var st = stat()
        if lstat("/lib", &st) == 0, st.st_mode & S_IFMT == S_IFLNK {
            let run = try runJailed(profile, ["/bin/sh", "-c", "ls /l | head -1"]) {
                $0.extraMounts = [MountSpec(kind: .bind, source: "/lib", target: "/l")]
            }
            #expect(run.exit.status == 0 && !run.stdout.isEmpty, "\(run.stderr)")
        }
        let dir = try Self.scratch("follow")
        defer { Self.remove(dir) }
        try FileManager.default.createSymbolicLink(atPath: dir + "/share", withDestinationPath: "/usr/share")
        let refused = Self.launchError(profile, [MountSpec(kind: .bind, source: dir + "/share", target: "/s")])
        #expect(refused?.contains("set follow_symlinks = true") == true, "\(refused ?? "mounted")")
        let followed = try minimalProfile {
            $0 + "\n[[mount]]\ntype = \"bind\"\nsource = \"\(dir)/share\"\ntarget = \"/s\"\nfollow_symlinks = true\n"
        }
        let run = try runJailed(followed, ["/bin/sh", "-c", "test -d /s/doc && echo ok"])
        #expect(run.lines == ["ok"], "\(run.stderr)")
    }

    /// True when "/" and every directory down to `path` are root's and not
    /// group- or world-writable (checked here with stat, not by the launcher).
    static func rootOnly(_ path: String) -> Bool {
        var dir = ""
        for part in [""] + path.split(separator: "/").map(String.init) {
            dir = part.isEmpty ? "/" : (dir == "/" ? "" : dir) + "/" + part
            var st = stat()
            guard stat(dir, &st) == 0, st.st_uid == 0, st.st_mode & 0o022 == 0 else { return false }
        }
        return true
    }

    @Test("the trusted-link rule: root's link in root-only directories is followed; another owner or a writable directory is not",
          .enabled(if: getuid() == 0 && rootOnly(packageRoot + "/.build"), "needs root and a checkout in root-only directories"))
    func trustedLinkRule() throws {
        let dir = packageRoot + "/.build/stockade-trust-\(getpid())"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: false)
        defer { Self.remove(dir) }
        chmod(dir, 0o755)
        try FileManager.default.createSymbolicLink(atPath: dir + "/share", withDestinationPath: "/usr/share")
        let profile = try minimalProfile()
        let mounts = [MountSpec(kind: .bind, source: dir + "/share", target: "/s")]
        #expect(Self.launchError(profile, mounts, ["/bin/sh", "-c", "test -d /s/doc"]) == nil)
        // The same link in a directory its group may write.
        chmod(dir, 0o775)
        let writable = Self.launchError(profile, mounts)
        #expect(writable?.contains("\(dir) or a directory above it is not root's alone") == true, "\(writable ?? "mounted")")
        chmod(dir, 0o755)
        // The same link owned by another user.
        lchown(dir + "/share", 1234, 1234)
        let owned = Self.launchError(profile, mounts)
        #expect(owned?.contains("\(dir)/share is a symlink the launcher will not follow: it is owned by uid 1234") == true,
                "\(owned ?? "mounted")")
    }

    // MARK: - item: targets

    @Test("a target through a symlink planted in a writable bind is refused; nothing is made on the host")
    func plantedTargetLink() throws {
        let shared = try Self.scratch("target")
        let victim = try Self.scratch("victim", mode: 0o755)
        defer { Self.remove(shared); Self.remove(victim) }
        let profile = try minimalProfile()
        let plant = try runJailed(profile, ["/bin/sh", "-c",
            "ln -s /oldroot\(victim) /out/abs && ln -s ../../../../../../oldroot\(victim) /out/rel && ln -s /etc /out/etc"]) {
            $0.extraMounts = [MountSpec(kind: .bind, source: shared, target: "/out", writable: true)]
        }
        #expect(plant.exit.status == 0, "\(plant.stderr)")
        let out = MountSpec(kind: .bind, source: shared, target: "/out", writable: true)
        let attempts: [[MountSpec]] = [
            [out, MountSpec(kind: .dir, source: nil, target: "/out/abs/made")],
            [out, MountSpec(kind: .dir, source: nil, target: "/out/rel/made")],
            [out, MountSpec(kind: .tmpfs, source: nil, target: "/out/abs/tmp", writable: true)],
            [out, MountSpec(kind: .bind, source: "/usr/share", target: "/out/abs/share")],
            [out, MountSpec(kind: .bind, source: "/usr/bin/env", target: "/out/etc/passwd")],
            [out, MountSpec(kind: .symlink, source: "x", target: "/out/rel/link")],
        ]
        for mounts in attempts {
            do {
                _ = try runJailed(profile, ["/bin/true"]) { $0.extraMounts = mounts }
                Issue.record("\(mounts.last!.target): mounted through a planted link")
            } catch let error as JailError {
                guard case let .setupFailed(step, _, _, errno, detail) = error else {
                    Issue.record("\(mounts.last!.target): \(error)")
                    continue
                }
                #expect(step == "mount" && errno == ELOOP, "\(error)")
                #expect(detail.hasPrefix(mounts.last!.target), "\(error)")
                #expect("\(error)".contains("jail setup failed at mount: ELOOP"), "\(error)")
            }
        }
        let made = try FileManager.default.contentsOfDirectory(atPath: victim)
        #expect(made.isEmpty, "the child made \(made) in a host directory")
    }

    @Test("rootless: a planted target symlink is refused",
          .enabled(if: getuid() == 0, "needs root to switch to an unprivileged user"))
    func plantedTargetLinkRootless() throws {
        let shared = try Self.scratch("target-rl", mode: 0o755, owner: Self.nobody)
        let victim = try Self.scratch("victim-rl", mode: 0o755, owner: Self.nobody)
        defer { Self.remove(shared); Self.remove(victim) }
        let plant = try Self.rootless(["--bind", "\(shared):/out"], ["/bin/ln", "-s", "/oldroot\(victim)", "/out/abs"])
        #expect(plant.status == 0, "\(plant.output)")
        let run = try Self.rootless(["--bind", "\(shared):/out", "--ro-bind", "/usr/share:/out/abs/share"], ["/bin/true"])
        #expect(run.status == 125, "\(run.output)")
        #expect(run.output.contains("jail setup failed at mount: ELOOP (/out/abs/share)"), "\(run.output)")
        #expect(try FileManager.default.contentsOfDirectory(atPath: victim).isEmpty)
    }

    @Test("'..' in a destination is refused, on the command line and in a launch request")
    func dotDotDestination() throws {
        let error = Self.launchError(try minimalProfile(), [MountSpec(kind: .bind, source: "/usr", target: "/x/../etc")])
        #expect(error?.contains("--ro-bind /usr:/x/../etc: the target /x/../etc must be an absolute path inside the jail, without '..'") == true,
                "\(error ?? "mounted")")
        let source = Self.launchError(try minimalProfile(), [MountSpec(kind: .bind, source: "/usr/../etc", target: "/x")])
        #expect(source?.contains("without '..'") == true, "\(source ?? "mounted")")
        for flag in ["--ro-bind", "--bind"] {
            let cli = try host([Self.stockade, "run", "-p", packageRoot + "/profiles/minimal.toml", flag, "/tmp:/out/../etc",
                                "--", "/bin/true"])
            #expect(cli.status == 64, "\(cli.output)")
            #expect(cli.output.contains("\(flag) /tmp:/out/../etc: a bind path may not contain '..'"), "\(cli.output)")
        }
    }

    // MARK: - item: order

    @Test("mounts are made in command-line order, and a read-only mount shadowed by a later parent is refused")
    func mountOrder() throws {
        let dir = try Self.scratch("order")
        defer { Self.remove(dir) }
        try FileManager.default.createDirectory(atPath: dir + "/d", withIntermediateDirectories: false)
        chmod(dir + "/d", 0o777)
        let cli = [Self.stockade, "run", "-p", packageRoot + "/profiles/minimal.toml"]
        // Writable parent first, read-only child after: the child stays read-only.
        let ordered = try host(cli + ["--bind", "\(dir):/out", "--ro-bind", "\(dir)/d:/out/d", "--", "/bin/sh", "-c",
                                      "touch /out/d/x 2>/dev/null && echo d-writable; touch /out/y && echo out-writable"])
        #expect(ordered.status == 0, "\(ordered.output)")
        #expect(ordered.output == "out-writable\n", "\(ordered.output)")
        #expect(!FileManager.default.fileExists(atPath: dir + "/d/x"))
        // The other order would let the writable parent shadow the read-only child: refused, both named.
        let shadowed = try host(cli + ["--ro-bind", "\(dir)/d:/out/d", "--bind", "\(dir):/out", "--", "/bin/true"])
        #expect(shadowed.status == 125, "\(shadowed.output)")
        #expect(shadowed.output.contains("--bind \(dir):/out (/out) would shadow the read-only --ro-bind \(dir)/d:/out/d (/out/d)"),
                "\(shadowed.output)")
        // The same through a launch request, and a tmpfs over the same path.
        let error = Self.launchError(try minimalProfile(), [
            MountSpec(kind: .bind, source: dir + "/d", target: "/out"),
            MountSpec(kind: .tmpfs, source: nil, target: "/out", writable: true),
        ])
        #expect(error?.contains("mount tmpfs /out (/out) would shadow the read-only --ro-bind \(dir)/d:/out (/out)") == true,
                "\(error ?? "mounted")")
        // A profile's read-only /usr covered by a command-line bind of /.
        let root = Self.launchError(try minimalProfile(), [MountSpec(kind: .bind, source: dir, target: "/usr", writable: true)])
        #expect(root?.contains("would shadow the read-only minimal.toml: mount[0] (/usr)") == true, "\(root ?? "mounted")")
    }

    // MARK: - item: launcher inputs

    @Test("a writable bind covering the profile, its directory or the launcher's binary is refused")
    func selfRewritingProfile() throws {
        let dir = try Self.scratch("profile", mode: 0o755)
        defer { Self.remove(dir) }
        let path = dir + "/p.toml"
        let text = try String(contentsOfFile: packageRoot + "/profiles/minimal.toml", encoding: .utf8)
        try text.write(toFile: path, atomically: false, encoding: .utf8)
        let profile = try Profile.load(path: path)
        for (source, target) in [(dir, "/cfg"), (path, "/p.toml"), ("/tmp", "/t")] {
            let error = Self.launchError(profile, [MountSpec(kind: .bind, source: source, target: target, writable: true)])
            #expect(error?.contains("holds \(path), which the launcher reads to build jails") == true, "\(source): \(error ?? "mounted")")
        }
        // The profile's own [[mount]] binding its directory writable: the next run would read what the jail wrote.
        try (text + "\n[[mount]]\ntype = \"bind\"\nsource = \"\(dir)\"\ntarget = \"/cfg\"\nwritable = true\n")
            .write(toFile: path, atomically: false, encoding: .utf8)
        let selfBinding = Self.launchError(try Profile.load(path: path), [],
                                           ["/bin/sh", "-c", "echo 'host_base = 1' >> /cfg/p.toml"])
        #expect(selfBinding?.contains("\(path): mount[") == true && selfBinding?.contains("holds \(path)") == true,
                "\(selfBinding ?? "ran")")
        #expect(!(try String(contentsOfFile: path, encoding: .utf8)).contains("host_base"))
        // Read-only, the same bind is fine.
        try text.write(toFile: path, atomically: false, encoding: .utf8)
        #expect(Self.launchError(try Profile.load(path: path), [MountSpec(kind: .bind, source: dir, target: "/cfg")]) == nil)
        // The launcher's own binary (here the test runner).
        let exe = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")
        let binary = Self.launchError(try minimalProfile(), [MountSpec(kind: .bind, source: (exe as NSString).deletingLastPathComponent,
                                                                        target: "/bin2", writable: true)])
        #expect(binary?.contains("holds \(exe)") == true, "\(binary ?? "mounted")")
        // A seccomp JSON the profile imports, in a directory of its own.
        let json = try Self.scratch("seccomp", mode: 0o755)
        defer { Self.remove(json) }
        try #"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": []}"#.write(toFile: json + "/s.json", atomically: false, encoding: .utf8)
        try (text + "\n[seccomp]\nimport = \"docker:\(json)/s.json\"\n").write(toFile: path, atomically: false, encoding: .utf8)
        let imported = Self.launchError(try Profile.load(path: path), [MountSpec(kind: .bind, source: json, target: "/j", writable: true)])
        #expect(imported?.contains("holds \(json)/s.json") == true, "\(imported ?? "mounted")")
        // The tenants file named on the command line.
        let tenants = dir + "/tenants.toml"
        try "[tenant.t]\nmemory_max = \"1G\"\npids_max = 512\n".write(toFile: tenants, atomically: false, encoding: .utf8)
        let cli = try host([Self.stockade, "run", "-p", packageRoot + "/profiles/minimal.toml", "--tenants", tenants,
                            "--tenant", "t", "--bind", "\(dir):/cfg", "--", "/bin/true"])
        #expect(cli.status == 125 && cli.output.contains("holds \(tenants)"), "\(cli.output)")
    }

    @Test("rootless: a jail cannot bind its own profile writable",
          .enabled(if: getuid() == 0, "needs root to switch to an unprivileged user"))
    func selfRewritingProfileRootless() throws {
        let dir = try Self.scratch("profile-rl", mode: 0o755, owner: Self.nobody)
        defer { Self.remove(dir) }
        let path = dir + "/p.toml"
        try String(contentsOfFile: packageRoot + "/profiles/minimal.toml", encoding: .utf8).write(toFile: path, atomically: false, encoding: .utf8)
        chown(path, Self.nobody, Self.nobody)
        let run = try host(["/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", Self.stockade, "run",
                            "-p", path, "--bind", "\(dir):/cfg", "--", "/bin/sh", "-c", "echo 'host_base = 1' >> /cfg/p.toml"])
        #expect(run.status == 125, "\(run.output)")
        #expect(run.output.contains("holds \(path), which the launcher reads"), "\(run.output)")
        #expect(!(try String(contentsOfFile: path, encoding: .utf8)).contains("host_base"))
    }

    @Test("a profile others can write, or another user's, is refused")
    func profileOwnership() throws {
        let dir = try Self.scratch("owner", mode: 0o755)
        defer { Self.remove(dir) }
        let path = dir + "/p.toml"
        try String(contentsOfFile: packageRoot + "/profiles/minimal.toml", encoding: .utf8).write(toFile: path, atomically: false, encoding: .utf8)
        for mode: mode_t in [0o666, 0o664, 0o646] {
            chmod(path, mode)
            #expect(throws: ProfileError.self, "mode \(String(mode, radix: 8))") { try Profile.load(path: path) }
        }
        chmod(path, 0o644)
        _ = try Profile.load(path: path)
        // In a directory others can write (no sticky bit): they could swap the file.
        chmod(dir, 0o777)
        do {
            _ = try Profile.load(path: path)
            Issue.record("a profile in a directory anyone can write was loaded")
        } catch {
            #expect(error.description.contains("which others may write"), "\(error)")
        }
        chmod(dir, 0o755)
        // The same through a link from a safe place: the file's own directory counts.
        let unsafe = try Self.scratch("owner-unsafe", mode: 0o777)
        defer { Self.remove(unsafe) }
        try FileManager.default.moveItem(atPath: path, toPath: unsafe + "/p.toml")
        try FileManager.default.createSymbolicLink(atPath: path, withDestinationPath: unsafe + "/p.toml")
        do {
            _ = try Profile.load(path: path)
            Issue.record("a profile reached through a link into a directory anyone can write was loaded")
        } catch {
            #expect(error.description.contains("the profile lies in \(unsafe), which others may write"), "\(error)")
        }
        try FileManager.default.removeItem(atPath: path)
        try FileManager.default.moveItem(atPath: unsafe + "/p.toml", toPath: path)
        // Another user's profile: refused for a third user, fine for root and for its owner.
        chown(path, 1234, 1234)
        _ = try Profile.load(path: path)
        guard getuid() == 0 else { return }
        let other = try host(["/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", Self.stockade, "run",
                              "-p", path, "--", "/bin/true"])
        #expect(other.status == 125, "\(other.output)")
        #expect(other.output.contains("the profile is owned by uid 1234, not by you (uid 65534) or root"), "\(other.output)")
        chown(path, Self.nobody, Self.nobody)
        let own = try host(["/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", Self.stockade, "run",
                            "-p", path, "--", "/bin/true"])
        #expect(own.status == 0, "\(own.output)")
    }
}
