import Foundation
import StockadeJail
import StockadeSystem
import Testing
import CStockadeSpawn

@Suite("The jail, against the real kernel", .serialized)
struct JailTests {
    @Test("every namespace the profile asks for is new")
    func namespacesAreNew() throws {
        let names = ["user", "pid", "mnt", "net", "ipc", "uts", "cgroup"]
        let run = try runJailed(try minimalProfile(), ["/bin/sh", "-c", names.map { "readlink /proc/self/ns/\($0)" }.joined(separator: "; ")])
        #expect(run.exit.status == 0, "\(run.stderr)")
        #expect(run.lines.count == names.count)
        for (name, inside) in zip(names, run.lines) {
            let outside = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/ns/\(name)")
            #expect(inside != outside, "\(name) namespace is shared with the launcher: \(inside)")
        }
    }

    @Test("the root is the jail's own tmpfs, with no way back to the host tree")
    func rootIsNew() throws {
        let run = try runJailed(try minimalProfile(), ["/bin/sh", "-c", "stat -c %i / /..; cat /proc/self/mountinfo"])
        #expect(run.exit.status == 0, "\(run.stderr)")
        let lines = run.lines
        #expect(lines.count > 2)
        #expect(lines[0] == lines[1], "/.. is not /")
        let mounts = lines.dropFirst(2)
        let rootLine = try #require(mounts.first { $0.split(separator: " ")[4] == "/" })
        #expect(rootLine.contains(" - tmpfs "), "root is not a tmpfs: \(rootLine)")
        #expect(rootLine.split(separator: " ")[5].hasPrefix("ro"), "root is writable: \(rootLine)")
        for line in mounts {
            let mountPoint = line.split(separator: " ")[4]
            #expect(!mountPoint.hasPrefix("/oldroot") && !mountPoint.hasPrefix("/newroot") && !mountPoint.hasPrefix("/work"),
                    "host mount visible in the jail: \(line)")
        }
        // Every bind is nosuid; only the device nodes may be dev.
        for line in mounts where !line.contains(" - proc ") {
            #expect(line.split(separator: " ")[5].contains("nosuid"), "mount without nosuid: \(line)")
        }
    }

    @Test("capabilities are all zero, NoNewPrivs is 1, the ids are the profile's")
    func credentials() throws {
        let run = try runJailed(try minimalProfile(), ["/bin/sh", "-c", "grep -E '^(Cap|NoNewPrivs)' /proc/self/status; id -u; id -g; id -G"])
        #expect(run.exit.status == 0, "\(run.stderr)")
        var fields: [String: String] = [:]
        for line in run.lines where line.contains(":") {
            let parts = line.split(separator: ":", maxSplits: 1)
            fields[String(parts[0])] = parts[1].trimmingCharacters(in: .whitespaces)
        }
        for cap in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
            #expect(fields[cap] == "0000000000000000", "\(cap) = \(fields[cap] ?? "missing")")
        }
        #expect(fields["NoNewPrivs"] == "1")
        #expect(run.lines.suffix(3) == ["1000", "1000", "1000"])
    }

    @Test("only stdio and the passed fds are open in the worker")
    func onlyExpectedFDs() throws {
        // An fd the launcher holds without close-on-exec must not leak in.
        let leaked = open("/proc/self/status", O_RDONLY)
        defer { close(leaked) }
        #expect(leaked >= 0)
        let passed = try PipeEnds.make()
        defer { try? passed.read.close(); try? passed.write.close() }
        let run = try runJailed(try minimalProfile(), ["/bin/sh", "-c", "ls /proc/$$/fd"]) { request in
            request.passedFDs.append((passed.write.rawValue, 7))
        }
        #expect(run.exit.status == 0, "\(run.stderr)")
        // ls itself holds one more fd (its directory); the shell's are 0, 1, 2 and 7.
        let fds = Set(run.lines.compactMap { Int32($0) })
        #expect(fds.isSuperset(of: [0, 1, 2, 7]))
        #expect(fds.subtracting([0, 1, 2, 7]).count <= 1, "unexpected fds: \(fds.sorted())")
        #expect(!fds.contains(leaked) || leaked == 7 || fds.subtracting([0, 1, 2, 7]).count == 1)
        let readlinks = try runJailed(try minimalProfile(), ["/bin/sh", "-c", "for f in /proc/$$/fd/*; do readlink $f; done"])
        for target in readlinks.lines {
            #expect(!target.hasPrefix("/proc/") || target.contains("/fd"), "host file open in the jail: \(target)")
        }
    }

    @Test("passed fds may take any number, including the launcher's own pipe numbers")
    func passedFDsCannotClobberLauncherPipes() throws {
        let extra = try PipeEnds.make()
        defer { try? extra.read.close(); try? extra.write.close() }
        // Targets 3...60 cover whatever numbers the launcher's pipes got.
        let run = try runJailed(try minimalProfile(), ["/bin/sh", "-c", "ls /proc/$$/fd; exit 5"]) { request in
            request.passedFDs += (3...60).map { (extra.write.rawValue, Int32($0)) }
        }
        #expect(run.exit.exitCode == 5, "\(run.exit) \(run.stderr)")
        #expect(Set(run.lines.compactMap { Int($0) }) == Set(0...60), "\(run.stdout)")
        #expect(throws: JailError.self) {
            _ = try runJailed(try minimalProfile(), ["/bin/true"]) { $0.passedFDs.append((extra.write.rawValue, 300)) }
        }
    }

    @Test("the wall-clock limit kills the jail and says so")
    func timeLimitKills() throws {
        let start = ContinuousClock.now
        let run = try runJailed(try minimalProfile(), ["/bin/sleep", "30"], timeLimit: .milliseconds(500))
        #expect(run.exit.reason == .timeLimit)
        #expect(run.exit.status == 128 + SIGKILL)
        #expect(ContinuousClock.now - start < .seconds(20))
    }

    @Test("PID 1 is the reaper: the worker is pid 2 and orphans are reaped")
    func reaperReapsOrphans() throws {
        let script = """
            echo $$
            ( sh -c 'exit 0' & )
            sleep 0.5
            grep -l '^State:.*Z' /proc/[0-9]*/status | wc -l
            """
        let run = try runJailed(try minimalProfile(), ["/bin/sh", "-c", script])
        #expect(run.exit.status == 0, "\(run.stderr)")
        #expect(run.lines.first == "2")
        #expect(run.lines.last == "0", "zombies left in the jail: \(run.stdout)")
    }

    @Test("the exit status is the worker's own, or 128 + signal")
    func exitStatus() throws {
        let exited = try runJailed(try minimalProfile(), ["/bin/sh", "-c", "exit 7"])
        #expect(exited.exit.status == 7)
        #expect(exited.exit.exitCode == 7)
        #expect(exited.exit.reason == .exited)
        let signaled = try runJailed(try minimalProfile(), ["/bin/sh", "-c", "kill -TERM $$"])
        #expect(signaled.exit.status == 128 + SIGTERM)
        #expect(signaled.exit.signal == SIGTERM)
        #expect(signaled.exit.reason == .signaled)
    }

    @Test("signals to the jail reach the worker through PID 1")
    func signalForwarding() throws {
        let out = try PipeEnds.make()
        var request = LaunchRequest(profile: try minimalProfile(), command: ["/bin/sh", "-c", "trap 'echo got-term; exit 3' TERM; echo ready; while :; do sleep 0.05; done"])
        request.passedFDs = [(out.write.rawValue, 1)]
        let jail = try Launcher.launch(request)
        try out.write.close()
        let ready = try out.read.readUpTo(6)
        #expect(String(decoding: ready, as: UTF8.self) == "ready\n")
        try jail.signal(SIGTERM)
        let exit = try jail.wait(timeLimit: .seconds(20))
        let rest = String(decoding: try out.read.readToEnd(), as: UTF8.self)
        try out.read.close()
        #expect(rest.contains("got-term"))
        #expect(exit.exitCode == 3)
    }

    @Test("hostname, environment, working directory and rlimits are the profile's")
    func processSettings() throws {
        let profile = try minimalProfile { $0.replacingOccurrences(of: "cwd = \"/\"", with: "cwd = \"/tmp\"") }
        let run = try runJailed(profile, ["/bin/sh", "-c", "hostname; pwd; ulimit -n; ulimit -c; env | sort"]) { request in
            request.extraEnvironment = [("EXTRA", "1")]
        }
        #expect(run.exit.status == 0, "\(run.stderr)")
        #expect(Array(run.lines.prefix(4)) == ["stockade", "/tmp", "1024", "0"])
        let env = run.lines.dropFirst(4).filter { !$0.hasPrefix("PWD=") && !$0.hasPrefix("SHLVL=") && !$0.hasPrefix("_=") && !$0.hasPrefix("TERM=") }
        #expect(env == ["EXTRA=1", "HOME=/tmp", "PATH=/usr/local/bin:/usr/bin:/bin"])
    }

    @Test("the jail cannot write its root, /usr or the proc control files; /tmp is its own")
    func filesystemIsReadOnly() throws {
        let script = """
            touch /x 2>/dev/null && echo root-writable
            touch /usr/x 2>/dev/null && echo usr-writable
            echo 1 > /proc/sys/kernel/hostname 2>/dev/null && echo procsys-writable
            cat /proc/kcore 2>/dev/null | head -c 1 | wc -c
            touch /tmp/ok && echo tmp-ok
            """
        let run = try runJailed(try minimalProfile(), ["/bin/sh", "-c", script])
        #expect(run.lines == ["0", "tmp-ok"], "\(run.stdout)")
    }

    @Test("masks: files of one directory, a directory and a file below it, missing paths, /proc's own; a mask under a file fails")
    func masks() throws {
        let masked = ["/usr/share/doc", "/usr/share/doc/bash/copyright", "/usr/bin/env", "/usr/bin/id", "/usr/no/such/x",
                      "/proc/cpuinfo", "/tmp/nothing-yet", "/proc/version"]
        let list = masked.map { "\"\($0)\"" }.joined(separator: ", ")
        let profile = try minimalProfile { $0.replacingOccurrences(of: "[filesystem]\n", with: "[filesystem]\nmasked = [\(list)]\n") }
        #expect(profile.filesystem.masked == masked)
        let script = """
            ls -A /usr/share/doc | wc -l
            cat /usr/share/doc/bash/copyright 2>/dev/null | wc -c
            for f in /usr/bin/env /usr/bin/id /proc/cpuinfo /proc/version /proc/kcore /proc/keys /usr/bin/ls; do
                cat $f >/dev/null 2>&1 && echo open || echo hidden
            done
            head -c 3 /usr/bin/ls | wc -c
            test -e /usr/no || echo no-usr-no
            grep -c . /proc/self/status
            """
        let run = try runJailed(profile, ["/bin/sh", "-c", script])
        #expect(run.exit.status == 0, "\(run.stderr)")
        // A masked file is /dev/null bound without dev: it cannot even be opened.
        #expect(run.lines.prefix(11) == ["0", "0", "hidden", "hidden", "hidden", "hidden", "hidden", "hidden", "open", "3", "no-usr-no"],
                "\(run.stdout)")
        #expect(run.lines.count == 12 && Int(run.lines[11]).map { $0 > 10 } == true, "\(run.stdout)")
        // After /proc's own read-only /proc/sys: a file below it, then /proc/sys itself.
        let sys = try minimalProfile { $0.replacingOccurrences(of: "[filesystem]\n", with: "[filesystem]\nmasked = [\"/proc/sys/kernel/hostname\", \"/proc/sys/kernel/ostype\"]\n") }
        let sysRun = try runJailed(sys, ["/bin/sh", "-c", "cat /proc/sys/kernel/hostname 2>/dev/null || echo hidden; cat /proc/sys/kernel/ostype 2>/dev/null || echo hidden; cat /proc/sys/kernel/osrelease | wc -l"])
        #expect(sysRun.lines == ["hidden", "hidden", "1"], "\(sysRun.stdout) \(sysRun.stderr)")
        let covered = try minimalProfile { $0.replacingOccurrences(of: "[filesystem]\n", with: "[filesystem]\nmasked = [\"/proc/sys\", \"/proc/sys/kernel/hostname\"]\n") }
        let coveredRun = try runJailed(covered, ["/bin/sh", "-c", "ls -A /proc/sys 2>/dev/null | wc -l; test -e /proc/sys/kernel || echo gone"])
        #expect(coveredRun.exit.status == 0 && coveredRun.lines == ["0", "gone"], "\(coveredRun.stdout) \(coveredRun.stderr)")
        // A mask below a file: the step and errno are named.
        let under = try minimalProfile { $0.replacingOccurrences(of: "[filesystem]\n", with: "[filesystem]\nmasked = [\"/usr/bin/env\", \"/usr/bin/env/x\"]\n") }
        #expect {
            _ = try runJailed(under, ["/bin/true"])
        } throws: { error in
            "\(error)".hasPrefix("jail setup failed at mask path: ENOTDIR (/usr/bin/env/x)")
        }
    }

    @Test("a NUL byte in an argument, a variable or the working directory refuses the launch, naming which")
    func nulBytesRefused() throws {
        let cases: [(String, (inout LaunchRequest) -> Void)] = [
            ("argument 1 contains a NUL byte", { $0.command = ["/bin/echo", "a\u{0}b"] }),
            ("argument 0 contains a NUL byte", { $0.command = ["/bin/true\u{0}x"] }),
            ("environment variable", { $0.extraEnvironment = [("SECRET", "v\u{0}w")] }),
            ("the working directory contains a NUL byte", { $0.profile.cwd = "/tmp\u{0}/x" }),
        ]
        for (message, edit) in cases {
            #expect {
                _ = try runJailed(try minimalProfile(), ["/bin/true"]) { edit(&$0) }
            } throws: { error in
                "\(error)".contains(message) && !"\(error)".contains("v\u{0}w")
            }
        }
        // The same launch without the NUL runs.
        #expect(try runJailed(try minimalProfile(), ["/bin/echo", "ab"]).lines == ["ab"])
    }

    @Test("a failing step is named with its errno")
    func failingStepIsNamed() throws {
        let profile = try minimalProfile { $0.replacingOccurrences(of: "cwd = \"/\"", with: "cwd = \"/does-not-exist\"") }
        #expect {
            _ = try runJailed(profile, ["/bin/true"])
        } throws: { error in
            "\(error)".hasPrefix("jail setup failed at chdir: ENOENT (/does-not-exist)")
        }
        #expect {
            _ = try runJailed(try minimalProfile(), ["no-such-program"])
        } throws: { error in
            "\(error)".hasPrefix("jail setup failed at execve: ENOENT (no-such-program)")
        }
        #expect {
            _ = try runJailed(try minimalProfile(), ["/bin/true"]) { request in
                request.extraMounts = [MountSpec(kind: .bind, source: "/no/such/source", target: "/x")]
            }
        } throws: { error in
            "\(error)".contains("bind source /no/such/source does not exist")
        }
    }

    @Test("a bind from the host is visible, read-only unless asked, and /tmp sources work")
    func binds() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("stockade-bind-\(getpid())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        try "hello\n".write(to: dir.appendingPathComponent("file"), atomically: true, encoding: .utf8)
        chmod(dir.path, 0o777)
        let run = try runJailed(try minimalProfile(), ["/bin/sh", "-c", "cat /ro/file; touch /ro/new 2>/dev/null || echo ro-denied; touch /rw/new && echo rw-ok"]) { request in
            request.extraMounts = [
                MountSpec(kind: .bind, source: dir.path, target: "/ro"),
                MountSpec(kind: .bind, source: dir.path, target: "/rw", writable: true),
            ]
        }
        #expect(run.lines == ["hello", "ro-denied", "rw-ok"], "\(run.stdout) \(run.stderr)")
        #expect(FileManager.default.fileExists(atPath: dir.appendingPathComponent("new").path))
    }

    @Test("a mount inside a read-only bind: over an existing node it works, a missing one is refused by name")
    func mountInsideReadOnlyBind() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("stockade-nested-\(getpid())")
        try FileManager.default.createDirectory(at: dir.appendingPathComponent("sub"), withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        try "outer\n".write(to: dir.appendingPathComponent("config"), atomically: true, encoding: .utf8)
        try "inner\n".write(to: dir.appendingPathComponent("replacement"), atomically: true, encoding: .utf8)
        chmod(dir.path, 0o755)
        let run = try runJailed(try minimalProfile(), ["/bin/sh", "-c", "cat /data/config; ls /data/sub"]) { request in
            request.extraMounts = [
                MountSpec(kind: .bind, source: dir.path, target: "/data"),
                MountSpec(kind: .bind, source: dir.appendingPathComponent("replacement").path, target: "/data/config"),
                MountSpec(kind: .tmpfs, source: nil, target: "/data/sub", writable: true),
            ]
        }
        #expect(run.exit.status == 0, "\(run.stderr)")
        #expect(run.lines == ["inner"], "\(run.stdout) \(run.stderr)")
        #expect {
            _ = try runJailed(try minimalProfile(), ["/bin/true"]) { request in
                request.extraMounts = [
                    MountSpec(kind: .bind, source: dir.path, target: "/data"),
                    MountSpec(kind: .bind, source: dir.appendingPathComponent("replacement").path, target: "/data/missing"),
                ]
            }
        } throws: { error in
            "\(error)".contains("the mount point /data/missing lies inside the read-only bind /data")
        }
    }

    @Test("the launcher leaves no process and no mount behind")
    func nothingLeftBehind() throws {
        let mountsBefore = try String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8)
        // A duration no other test uses, so that the host-wide search below
        // finds only what these two jails left, not another suite's sleepers.
        let first = try runJailed(try minimalProfile(), ["/bin/sh", "-c", "sleep 100.0173 & sleep 100.0173 & echo started"], timeLimit: .seconds(5))
        let second = try runJailed(try minimalProfile(), ["/bin/sh", "-c", "(sleep 100.0173 &); exit 0"])
        // Other suites launch jails at the same time: look only at these two.
        for pid in [first.pid, second.pid] {
            #expect(!childPids().contains(pid), "the jail's PID 1 (\(pid)) was not reaped")
            #expect(access("/proc/\(pid)", F_OK) != 0, "the jail's PID 1 (\(pid)) still exists")
        }
        let mountsAfter = try String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8)
        #expect(mountsBefore == mountsAfter)
        let strays = try host(["/bin/sh", "-c", "pgrep -f '^sleep 100[.]0173$' | wc -l"])
        #expect(strays.output.trimmingCharacters(in: .whitespacesAndNewlines) == "0")
    }

    @Test("the CLI: the worker's status, `stockade: ...` errors with 125, usage mistakes with 64")
    func commandLine() throws {
        let stockade = packageRoot + "/.build/debug/stockade"
        try #require(FileManager.default.isExecutableFile(atPath: stockade), "build the CLI first")
        let profile = packageRoot + "/profiles/minimal.toml"
        // Every spelling of the options the direct reader takes.
        for args in [["-p", profile, "--"], ["--profile", profile, "--"], ["--profile=" + profile, "--setenv", "X=1"], ["-p", profile],
                     ["-p", "/no/such/profile.toml", "--profile", profile]] {
            let run = try host([stockade, "run"] + args + ["/bin/sh", "-c", "echo ran; exit 3"])
            #expect(run.status == 3 && run.output == "ran\n", "\(args): \(run)")
        }
        let missing = try host([stockade, "run", "-p", profile, "--", "/no/such/program"])
        #expect(missing.status == 125)
        #expect(missing.output.hasPrefix("stockade: jail setup failed at execve: ENOENT (/no/such/program)"), "\(missing.output)")
        let noProfile = try host([stockade, "run", "-p", "/no/such/profile.toml", "--", "/bin/true"])
        #expect(noProfile.status == 125 && noProfile.output == "stockade: /no/such/profile.toml: profile does not exist\n", "\(noProfile)")
        let badEnv = try host([stockade, "run", "-p", profile, "--setenv", "novalue", "--", "/bin/true"])
        #expect(badEnv.status == 64 && badEnv.output.hasPrefix("stockade: --setenv takes name=value"), "\(badEnv)")
        // Mistakes in the line itself are ArgumentParser's to report.
        for args in [["--report", "xml", "-p", profile, "--", "/bin/true"], ["--no-such-option", "-p", profile, "--", "/bin/true"],
                     ["-p", profile, "--time-limit"]] {
            let run = try host([stockade, "run"] + args)
            #expect(run.status == 64 && run.output.contains("stockade run"), "\(args): \(run)")
        }
        let help = try host([stockade, "run", "--help"])
        #expect(help.status == 0 && help.output.contains("USAGE: stockade run"), "\(help)")
    }

    @Test("signals sent to stockade reach the worker, whose status comes back")
    func commandLineForwardsSignals() throws {
        let stockade = packageRoot + "/.build/debug/stockade"
        try #require(FileManager.default.isExecutableFile(atPath: stockade), "build the CLI first")
        for (sig, name) in [(SIGTERM, "TERM"), (SIGUSR1, "USR1")] {
            let process = Process()
            process.executableURL = URL(fileURLWithPath: stockade)
            process.arguments = ["run", "-p", packageRoot + "/profiles/minimal.toml", "--time-limit", "20s", "--", "/bin/sh", "-c",
                                 "trap 'echo got \(name); exit 7' \(name); echo ready; while :; do sleep 0.05; done"]
            let pipe = Pipe()
            process.standardOutput = pipe
            try process.run()
            let ready = pipe.fileHandleForReading.availableData
            #expect(String(decoding: ready, as: UTF8.self) == "ready\n")
            kill(process.processIdentifier, sig)
            process.waitUntilExit()
            let rest = pipe.fileHandleForReading.readDataToEndOfFile()
            #expect(String(decoding: rest, as: UTF8.self) == "got \(name)\n")
            #expect(process.terminationStatus == 7, "SIG\(name)")
        }
    }

    @Test("killing the launcher kills the jail (parent-death signal)")
    func dieWithLauncher() throws {
        let stockade = packageRoot + "/.build/debug/stockade"
        try #require(FileManager.default.isExecutableFile(atPath: stockade), "build the CLI first")
        let marker = "31\(getpid() % 1000)7"
        let process = Process()
        process.executableURL = URL(fileURLWithPath: stockade)
        process.arguments = ["run", "-p", packageRoot + "/profiles/minimal.toml", "--", "/bin/sleep", marker]
        try process.run()
        var seen = false
        for _ in 0..<100 where !seen {
            usleep(50_000)
            seen = try host(["/usr/bin/pgrep", "-f", "^/bin/sleep \(marker)$"]).status == 0
        }
        #expect(seen, "the jailed sleep never started")
        // `run` clones the jail on its main thread, which waits for it:
        // no spawner thread is started, and the signal follows that thread.
        let tasks = try FileManager.default.contentsOfDirectory(atPath: "/proc/\(process.processIdentifier)/task")
        #expect(tasks == ["\(process.processIdentifier)"], "the launcher's threads: \(tasks)")
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
        var gone = false
        for _ in 0..<100 where !gone {
            usleep(50_000)
            gone = try host(["/usr/bin/pgrep", "-f", "^/bin/sleep \(marker)$"]).status != 0
        }
        #expect(gone, "the jail outlived its launcher")
    }

    @Test("rootless without a cgroup: pids_max is held by RLIMIT_NPROC, a waived limit is named, one not waived refuses the launch by name",
          .enabled(if: getuid() == 0, "needs root to switch to an unprivileged user"))
    func rootlessBudget() throws {
        let stockade = packageRoot + "/.build/debug/stockade"
        try #require(FileManager.default.isExecutableFile(atPath: stockade), "build the CLI first")
        let nobody = ["/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", stockade, "run"]
        // minimal.toml: pids_max = 128, memory_max waived by name.
        let waived = try host(nobody + ["-p", packageRoot + "/profiles/minimal.toml", "--", "/bin/echo", "ran"])
        #expect(waived.status == 0, "\(waived.output)")
        #expect(waived.output.contains("stockade: note: no cgroup for this jail ("), "\(waived.output)")
        #expect(waived.output.contains("pids_max = 128 is held as RLIMIT_NPROC in the jail's user namespace"), "\(waived.output)")
        #expect(waived.output.contains("not enforced, waived by the profile (") && waived.output.contains("minimal.toml:"), "\(waived.output)")
        #expect(waived.output.hasSuffix("memory_max\nran\n"), "\(waived.output)")

        // The attacker's fork bomb stops at the budget: sleepers started in a
        // loop until fork fails (the shell and PID 1 count too).
        let bomb = try host(nobody + ["-p", packageRoot + "/profiles/minimal.toml", "--time-limit", "60s", "--", "/bin/sh", "-c",
                                      "i=0; while [ $i -lt 400 ]; do /bin/sleep 30 & echo started; i=$((i+1)); done"])
        let started = bomb.output.split(separator: "\n").filter { $0 == "started" }.count
        #expect(started > 64 && started < 128, "\(started) processes started under pids_max = 128: \(bomb.output.suffix(300))")

        // The same profile without the waiver: refused, naming file, line and key.
        let (copy, text) = try CgroupDirs.unwaivedMinimal("unwaived")
        defer { unlink(copy) }
        let line = text.split(separator: "\n", omittingEmptySubsequences: false).firstIndex { $0.hasPrefix("memory_max") }! + 1
        let refused = try host(nobody + ["-p", copy, "--", "/bin/echo", "ran"])
        #expect(refused.status == 125, "\(refused.output)")
        #expect(refused.output.hasPrefix("stockade: \(copy):\(line): limits.memory_max: memory_max cannot be enforced: no cgroup for this jail"),
                "\(refused.output)")
        #expect(!refused.output.contains("ran"))
    }

    @Test("rootless with a cgroup delegated by `stockade cgroups --delegate`: the fork bomb stops at pids.max, memory_max is the jail cgroup's memory limit, --undelegate removes it",
          .enabled(if: getuid() == 0, "needs root to delegate and to switch to an unprivileged user"),
          .enabled(if: FileManager.default.fileExists(atPath: "/sys/fs/cgroup/memory/memory.limit_in_bytes"),
                   "the v1 memory hierarchy at /sys/fs/cgroup/memory: on v2 a rootless launcher must already live in its delegated cgroup (the kernel's common-ancestor rule for moving processes)"))
    func rootlessDelegatedBudget() throws {
        let stockade = packageRoot + "/.build/debug/stockade"
        try #require(FileManager.default.isExecutableFile(atPath: stockade), "build the CLI first")
        // A uid of this test's own: the other rootless tests run as 65534 at
        // the same time, and a delegation to it would change what they see
        // (and their jails would land in this one's tenant).
        let uid: uid_t = 64_998
        let delegated = "/sys/fs/cgroup/memory/stockade/user-\(uid)"
        let delegate = try host([stockade, "cgroups", "--delegate", "\(uid)"])
        try #require(delegate.status == 0, "\(delegate.output)")
        #expect(delegate.output.contains("delegated to uid \(uid): \(delegated)\n"), "\(delegate.output)")
        var removed = false
        defer { if !removed { _ = try? host([stockade, "cgroups", "--undelegate", "\(uid)"]) } }
        var st = stat()
        #expect(stat(delegated, &st) == 0 && st.st_uid == uid, "the delegated directory is not the user's")
        #expect(stat(delegated + "/cgroup.procs", &st) == 0 && st.st_uid == uid)
        // The limit files of the delegated cgroup stay root's: the user cannot lift its own cap.
        #expect(stat(delegated + "/memory.limit_in_bytes", &st) == 0 && st.st_uid == 0)

        // minimal.toml without its waiver: held by the cgroup, nothing to waive.
        let (copy, _) = try CgroupDirs.unwaivedMinimal("delegated")
        defer { unlink(copy) }
        let nobody = ["/usr/bin/setpriv", "--reuid=\(uid)", "--regid=\(uid)", "--clear-groups", stockade, "run", "-p", copy]

        // The budget is in the jail's cgroup while it runs.
        let jails = "\(delegated)/tenant-default/jail-*"
        let seen = try host(["/bin/sh", "-c", "\"$@\" & sleep 2; cat \(jails)/memory.limit_in_bytes " +
                             jails.replacingOccurrences(of: "/memory/", with: "/pids/") + "/pids.max; wait",
                             "sh"] + nobody + ["--", "/bin/sleep", "4"])
        #expect(!seen.output.contains("no cgroup for this jail"), "\(seen.output)")
        #expect(seen.output.split(separator: "\n").filter { !$0.hasPrefix("stockade: note:") } == ["\(256 << 20)", "128"], "\(seen.output)")

        // The attacker's fork bomb stops at pids.max, with no rlimit in play.
        let bomb = try host(nobody + ["--time-limit", "60s", "--", "/bin/sh", "-c",
                                      "i=0; while [ $i -lt 400 ]; do /bin/sleep 3 & echo started; i=$((i+1)); done"])
        #expect(!bomb.output.contains("RLIMIT_NPROC"), "\(bomb.output.prefix(300))")
        let started = bomb.output.split(separator: "\n").filter { $0 == "started" }.count
        #expect(started > 64 && started < 128, "\(started) processes started under pids_max = 128: \(bomb.output.suffix(300))")
        #expect(CgroupDirs.jails(under: delegated + "/tenant-default").isEmpty, "the launcher left its jail cgroups behind")

        // The attacker's next try: lift the cap from inside the delegation.
        let lift = try host(["/usr/bin/setpriv", "--reuid=\(uid)", "--regid=\(uid)", "--clear-groups", "/bin/sh", "-c",
                             "echo -1 > \(delegated)/memory.limit_in_bytes"])
        #expect(lift.status != 0, "uid \(uid) could change its delegated cgroup's own limit")

        let undelegate = try host([stockade, "cgroups", "--undelegate", "\(uid)"])
        removed = true
        #expect(undelegate.status == 0, "\(undelegate.output)")
        #expect(!FileManager.default.fileExists(atPath: delegated), "the delegated cgroup is still there")
        let after = try host(nobody + ["--", "/bin/echo", "ran"])
        #expect(after.status == 125 && after.output.contains("memory_max cannot be enforced: no cgroup for this jail"), "\(after.output)")
    }

    @Test("an unprivileged user gets the same jail (rootless)", .enabled(if: getuid() == 0, "needs root to switch to an unprivileged user"))
    func rootless() throws {
        let stockade = packageRoot + "/.build/debug/stockade"
        try #require(FileManager.default.isExecutableFile(atPath: stockade), "build the CLI first")
        let result = try host(["/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", stockade, "run",
                               "-p", packageRoot + "/profiles/minimal.toml", "--", "/bin/sh", "-c",
                               "id -u; grep -E '^(CapEff|NoNewPrivs)' /proc/self/status; cat /proc/self/uid_map"])
        #expect(result.status == 0, "\(result.output)")
        // Rootless there is no cgroup for minimal.toml's optional budget: skip the note.
        let lines = result.output.split(separator: "\n").filter { !$0.hasPrefix("stockade: note:") }
            .map { $0.split(whereSeparator: { $0 == " " || $0 == "\t" }).joined(separator: " ") }
        #expect(lines.first == "1000")
        #expect(lines.contains("CapEff: 0000000000000000"))
        #expect(lines.contains("NoNewPrivs: 1"))
        #expect(lines.contains("1000 65534 1"), "\(lines)")
    }
}

@Suite("Landlock in the trampoline", .enabled(if: stk_landlock_abi_available(), "needs a kernel with Landlock enabled"))
struct LandlockTrampolineTests {
    @Test("a writable bind stays read-only when Landlock grants only reading")
    func landlockOverridesMount() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("stockade-ll-\(getpid())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        chmod(dir.path, 0o777)
        try "data\n".write(to: dir.appendingPathComponent("f"), atomically: true, encoding: .utf8)
        let read: UInt64 = 4 | 8 // READ_FILE | READ_DIR
        let exec: UInt64 = 1
        let write: UInt64 = 2 | 16 | 32 | 128 | 256 // WRITE_FILE | REMOVE_* | MAKE_DIR | MAKE_REG
        let handled: UInt64 = (1 << 13) - 1
        let run = try runJailed(try minimalProfile(), ["/bin/sh", "-c", "cat /data/f; echo x > /data/new 2>/dev/null || echo denied; echo y > /tmp/ok && echo tmp-ok"]) { request in
            request.extraMounts = [MountSpec(kind: .bind, source: dir.path, target: "/data", writable: true)]
            request.landlock = LaunchLandlock(abi: 1, fsHandled: handled, netHandled: 0, rules: [
                .init(path: "/usr", access: read | exec, optional: false),
                .init(path: "/data", access: read, optional: false),
                .init(path: "/tmp", access: read | write, optional: false),
                .init(path: "/dev", access: read | 2, optional: false),
                .init(path: "/proc", access: read, optional: false),
            ], tcpPorts: [], required: true)
        }
        #expect(run.lines == ["data", "denied", "tmp-ok"], "\(run.stdout) \(run.stderr)")
        #expect(!FileManager.default.fileExists(atPath: dir.appendingPathComponent("new").path))
    }
}

func stk_landlock_abi_available() -> Bool {
    stk_landlock_abi() > 0
}

/// Helpers of the rootless budget tests.
enum CgroupDirs {
    /// profiles/minimal.toml without its memory_max waiver, written to a
    /// world-readable file in /tmp (the caller unlinks it); and its text.
    static func unwaivedMinimal(_ tag: String) throws -> (path: String, text: String) {
        let text = try String(contentsOfFile: packageRoot + "/profiles/minimal.toml", encoding: .utf8)
            .replacingOccurrences(of: "waive = [\"memory_max\"]", with: "")
        let copy = "/tmp/stockade-\(tag)-\(getpid()).toml"
        try text.write(toFile: copy, atomically: true, encoding: .utf8)
        chmod(copy, 0o644)
        return (copy, text)
    }

    /// The jail cgroups (`jail-*`) in a tenant's directory.
    static func jails(under tenant: String) -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: tenant)) ?? []).filter { $0.hasPrefix("jail-") }
    }
}
