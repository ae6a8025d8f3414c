// `stockade run --via`: jails built ahead of their command. The daemon
// launches a jail with ``LaunchRequest/viaSocket`` set; its worker stops
// before Landlock, seccomp and execve and waits on that socket for the
// caller's stdio and command (spawn.c, via_receive). This file holds what
// the daemon, the client and the jail agree on: the messages, and the
// checks a caller's fds pass before they enter a jail.
public import SystemPackage
import StockadeSystem
import StockadeSeccomp
import CStockadeSpawn
#if canImport(Glibc)
import Glibc
#endif

/// The messages of `run --via`, each one SOCK_SEQPACKET packet: a magic
/// number, one count per list, then every list's strings NUL-terminated,
/// nothing after them. The jail reads the same layout (`stk_via_header`).
public enum ViaWire {
    /// The client's request: [pool], argv, the caller's environment, `--setenv` pairs.
    public static let requestMagic: UInt32 = 0x5152_4b53  // "SKRQ"
    /// The daemon's answer: ["exit", status, reason] or ["error", message, status].
    public static let answerMagic: UInt32 = 0x5341_4b53  // "SKAS"
    /// A signal the client forwards: [number].
    public static let signalMagic: UInt32 = 0x4753_4b53  // "SKSG"
    /// The command a waiting jail runs: execve candidates, argv, envp.
    public static let jailMagic: UInt32 = STK_VIA_MAGIC
    /// The largest message (the jail's receive buffer).
    public static let maxMessage = Int(STK_VIA_MAX_MESSAGE)
    public static let maxStrings = Int(STK_VIA_MAX_STRINGS)

    public static func encode(magic: UInt32, _ lists: [[String]]) -> [UInt8] {
        var out: [UInt8] = []
        func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { out.append(contentsOf: $0) } }
        u32(magic)
        for list in lists { u32(UInt32(list.count)) }
        for list in lists {
            for s in list {
                out.append(contentsOf: s.utf8)
                out.append(0)
            }
        }
        return out
    }

    /// The lists of a message with `magic` and `count` lists; nil when it is
    /// anything else (wrong magic, a count past the end, a string without
    /// its NUL, a NUL inside the header's strings, bytes left over).
    public static func decode(_ bytes: ArraySlice<UInt8>, magic: UInt32, lists count: Int) -> [[String]]? {
        let header = 4 * (count + 1)
        guard bytes.count >= header else { return nil }
        func u32(_ at: Int) -> UInt32 {
            let i = bytes.startIndex + at
            return UInt32(bytes[i]) | UInt32(bytes[i + 1]) << 8 | UInt32(bytes[i + 2]) << 16 | UInt32(bytes[i + 3]) << 24
        }
        guard u32(0) == magic else { return nil }
        let counts = (0..<count).map { Int(u32(4 * ($0 + 1))) }
        guard counts.reduce(0, +) <= maxStrings else { return nil }
        var at = bytes.startIndex + header
        var result: [[String]] = []
        for n in counts {
            var list: [String] = []
            list.reserveCapacity(n)
            for _ in 0..<n {
                guard let end = bytes[at...].firstIndex(of: 0) else { return nil }
                list.append(String(decoding: bytes[at..<end], as: UTF8.self))
                at = end + 1
            }
            result.append(list)
        }
        guard at == bytes.endIndex else { return nil }
        return result
    }
}

/// What a jail built ahead runs, and the checks on what enters it.
public enum ViaJail {
    /// The placeholder argv of a jail launched to wait (never exec'd).
    public static let placeholderCommand = ["stockade-via-waiting"]

    /// The message for a waiting jail of `profile`: the execve candidates
    /// of `argv[0]` in the jail's PATH, argv, and the jail's environment
    /// built as `stockade run` builds it (the profile's `[env]` set, its
    /// `pass` names from the caller's environment, then `setenv`).
    public static func jailMessage(profile: Profile, argv: [String], callerEnvironment: [String],
                                   setenv: [(String, String)]) throws -> [UInt8] {
        guard let program = argv.first, !program.isEmpty else { throw JailError.invalidRequest("no command given") }
        var caller: [String: String] = [:]
        for pair in callerEnvironment {
            guard let eq = pair.firstIndex(of: "=") else { continue }
            caller[String(pair[..<eq])] = String(pair[pair.index(after: eq)...])
        }
        var request = LaunchRequest(profile: profile, command: argv)
        request.extraEnvironment = setenv
        let environment = SpawnPlan.environment(request, passed: { caller[$0] })
        let paths = SpawnPlan.executableCandidates(program, environment: environment)
        let envp = environment.map { "\($0.0)=\($0.1)" }
        for s in argv + envp + paths where s.utf8.contains(0) {
            throw JailError.invalidRequest("an argument or variable contains a NUL byte")
        }
        let message = ViaWire.encode(magic: ViaWire.jailMagic, [paths, argv, envp])
        guard message.count <= ViaWire.maxMessage, paths.count + argv.count + envp.count <= ViaWire.maxStrings else {
            throw JailError.invalidRequest("the command and its environment are \(message.count) bytes; a jail built ahead takes at most \(ViaWire.maxMessage)")
        }
        return message
    }

    /// Why the caller's fd `fd` (its stdin, stdout or stderr: `number`)
    /// may not enter a jail; nil when it may. The rules of a jail's passed
    /// fds (``JailFDs``), stricter: regular files, pipes, sockets and
    /// /dev/null and its kin only; never a terminal (the client relays
    /// one), a directory (it reaches paths outside the jail's root), or an
    /// O_PATH fd (the jail could reopen it through /proc with its own,
    /// other rights).
    public static func refusal(callerFD fd: Int32, number: Int) -> String? {
        let name = ["stdin", "stdout", "stderr"][min(max(number, 0), 2)]
        var st = stat()
        guard fstat(fd, &st) == 0 else { return "the caller's \(name): fstat: \(errnoName(errno))" }
        let flags = stk_fcntl_int(fd, F_GETFL, 0)
        guard flags >= 0 else { return "the caller's \(name): fcntl: \(errnoName(errno))" }
        if flags & OpenFlags.path != 0 {
            return "the caller's \(name) is an O_PATH descriptor; only open files, pipes and sockets enter a jail"
        }
        switch st.st_mode & S_IFMT {
        case S_IFREG, S_IFIFO, S_IFSOCK:
            return nil
        case S_IFCHR where isatty(fd) == 0 && JailFDs.isHarmlessDevice(st.st_rdev):
            return nil
        case S_IFCHR where isatty(fd) == 1:
            return "the caller's \(name) is a terminal; a jail never gets the caller's terminal"
        case S_IFDIR:
            return "the caller's \(name) is a directory, which reaches paths outside the jail's root"
        default:
            return "the caller's \(name) is a \(JailFDs.kind(st.st_mode)); only regular files, pipes, sockets and /dev/null and its kin enter a jail"
        }
    }

    /// What a failure record the jail sent on its socket says (a step after
    /// the command arrived: execve, Landlock, seccomp), as `stockade run`
    /// words the same failure; nil when `bytes` is not one.
    public static func failure(_ bytes: [UInt8]) -> JailError? {
        guard bytes.count == MemoryLayout<stk_error>.size else { return nil }
        var e = stk_error()
        withUnsafeMutableBytes(of: &e) { raw in bytes.withUnsafeBytes { raw.copyMemory(from: $0) } }
        let detail = withUnsafeBytes(of: e.detail) { raw in
            String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
        }
        return JailError.setupFailed(step: String(cString: stk_step_name(e.step)), number: Int(e.step),
                                     of: Int(STK_STEP_COUNT.rawValue) - 1, errno: e.err, detail: detail)
    }

    /// The system calls a waiting jail makes after a filter loaded before
    /// the wait and up to the command's execve: the worker's exec of
    /// stockade-init's waiting program (spawn.c: via_exec_waiter), the
    /// command received, the caller's fds moved onto 0, 1 and 2, a failure
    /// sent, the exit (stockade-init/via.c; spawn.c's via_receive makes a
    /// subset). stockade-init has no C library, so no start-up of one
    /// makes calls of its own (stockade-init/nolibc.c).
    public static let callsUnderAnEarlyFilter = [
        "fcntl", "execveat",
        "recvmsg", "close", "dup3", "sendto", "execve", "exit_group",
    ]

    /// Whether `filter` (a compiled seccomp program) allows each of
    /// ``callsUnderAnEarlyFilter`` whatever its arguments: a verdict that
    /// reads an argument, or any other than allow, keeps the load after
    /// the command arrived (a filter with a listener always stays there).
    public static func filterAllowsTheWait(_ filter: [UInt8]) -> Bool {
        guard !filter.isEmpty, let program = BPFInstruction.decode(filter) else { return false }
        for name in callsUnderAnEarlyFilter {
            guard let nr = Syscalls.number(of: name), nr >= 0,
                  SeccompMachine.constantVerdict(program, nr: UInt32(nr), arch: Syscalls.nativeArch) == SeccompAction.retAllow
            else { return false }
        }
        return true
    }

    /// A connected SOCK_SEQPACKET pair, both ends close-on-exec.
    public static func socketPair() throws(Errno) -> (FileDescriptor, FileDescriptor) {
        try UnixSocketPair.make(.seqPacket)
    }

    /// Connects a close-on-exec SOCK_SEQPACKET socket to `path`.
    public static func connect(path: String) throws(Errno) -> FileDescriptor {
        try UnixSocket.connect(path: path, .seqPacket)
    }
}
