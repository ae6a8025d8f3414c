import Foundation
import Testing
import StockadeJail
import StockadeSystem
import SystemPackage
import CStockadeSpawn

/// `stockade run` under a real terminal: the test opens a pseudo-terminal
/// of its own (/dev/ptmx), runs the CLI with it as the caller's
/// terminal, and plays the person at the keyboard on the master side.
@Suite("The caller's terminal", .serialized)
struct TerminalTests {
    /// The caller's terminal: the test holds the master, the CLI gets the slave.
    final class CallerTerminal {
        let master: Int32
        let slave: Int32

        init() throws {
            // As openpty(3) does it: unlock, ask the number, open by name.
            let master = open("/dev/ptmx", O_RDWR | O_NOCTTY | O_CLOEXEC)
            var unlock: Int32 = 0, number: UInt32 = 0
            guard master >= 0, stk_ioctl_ptr(master, 0x4004_5431 /* TIOCSPTLCK */, &unlock) == 0,
                  stk_ioctl_ptr(master, 0x8004_5430 /* TIOCGPTN */, &number) == 0 else {
                throw Errno(rawValue: errno)
            }
            let slave = open("/dev/pts/\(number)", O_RDWR | O_NOCTTY | O_CLOEXEC)
            guard slave >= 0 else { throw Errno(rawValue: errno) }
            self.master = master
            self.slave = slave
        }

        deinit {
            close(master)
            close(slave)
        }

        var modes: termios {
            var t = termios()
            tcgetattr(slave, &t)
            return t
        }
    }

    static func same(_ a: termios, _ b: termios) -> Bool {
        a.c_iflag == b.c_iflag && a.c_oflag == b.c_oflag && a.c_cflag == b.c_cflag && a.c_lflag == b.c_lflag
    }

    /// Runs `stockade run -p minimal.toml -- argv` in a new session whose
    /// stdio are `stdin` and the caller's terminal (stdout, stderr), typing
    /// `keys` once `after` appears; returns everything shown on the terminal
    /// and the exit status.
    static func run(_ terminal: CallerTerminal, stdin: Int32, _ argv: [String],
                    keys: String? = nil, after: String = "") throws -> (shown: String, status: Int32) {
        let stockade = packageRoot + "/.build/debug/stockade"
        try #require(FileManager.default.isExecutableFile(atPath: stockade), "build the CLI first")
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, stdin, 0)
        posix_spawn_file_actions_adddup2(&actions, terminal.slave, 1)
        posix_spawn_file_actions_adddup2(&actions, terminal.slave, 2)
        var attr = posix_spawnattr_t()
        posix_spawnattr_init(&attr)
        defer { posix_spawnattr_destroy(&attr) }
        posix_spawnattr_setflags(&attr, 0x80 /* POSIX_SPAWN_SETSID */)
        let args = [stockade, "run", "-p", packageRoot + "/profiles/minimal.toml", "--time-limit", "30s", "--"] + argv
        var cArgs = args.map { strdup($0) } + [nil]
        defer { for p in cArgs { free(p) } }
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, stockade, &actions, &attr, &cArgs, environ)
        try #require(rc == 0, "posix_spawn: \(rc)")
        var shown: [UInt8] = []
        var typed = keys == nil
        var status: Int32 = 0
        let deadline = ContinuousClock.now + .seconds(40)
        var exited = false
        while ContinuousClock.now < deadline {
            var fd = pollfd(fd: terminal.master, events: Int16(POLLIN), revents: 0)
            if poll(&fd, 1, 50) > 0 {
                var buf = [UInt8](repeating: 0, count: 4096)
                let n = read(terminal.master, &buf, buf.count)
                if n > 0 { shown += buf[0..<n] }
            } else if exited {
                break  // exited and nothing more to read
            }
            if !typed, String(decoding: shown, as: UTF8.self).contains(after) {
                _ = keys!.withCString { write(terminal.master, $0, strlen($0)) }
                typed = true
            }
            if !exited, waitpid(pid, &status, WNOHANG) == pid { exited = true }
        }
        if !exited { kill(pid, SIGKILL); waitpid(pid, &status, 0) }
        let code = (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
        return (String(decoding: shown, as: UTF8.self), code)
    }

    @Test("stdin a terminal: the jail turns ECHO off on its own pty; the caller's modes are untouched and restored, output and keys relayed")
    func jailGetsItsOwnTerminal() throws {
        let terminal = try CallerTerminal()
        let before = terminal.modes
        #expect(before.c_lflag & tcflag_t(ECHO) != 0)
        // The attacker's moves: echo and line editing off on every stdio
        // fd, then a look at what its terminal is.
        let script = "for f in 0 1 2; do stty -echo -icanon <&$f; done; echo ready; read line; echo got:$line; " +
                     "stty -a | grep -o -- '-echo ' | head -1; test -t 0 && echo stdin-is-tty; exit 5"
        let r = try Self.run(terminal, stdin: terminal.slave, ["/bin/sh", "-c", script], keys: "secret\r", after: "ready")
        #expect(r.status == 5, "\(r)")
        #expect(r.shown.contains("ready"), "\(r.shown.debugDescription)")
        #expect(r.shown.contains("got:secret"), "\(r.shown.debugDescription)")
        #expect(r.shown.contains("-echo"), "\(r.shown.debugDescription)")
        #expect(r.shown.contains("stdin-is-tty"), "\(r.shown.debugDescription)")
        let after = terminal.modes
        #expect(Self.same(before, after), "the caller's terminal modes changed")
        #expect(after.c_lflag & tcflag_t(ECHO) != 0 && after.c_lflag & tcflag_t(ICANON) != 0)
    }

    @Test("stdin not a terminal, stdout and stderr the caller's: the jail still cannot change the caller's modes")
    func noTerminalFdWithoutStdinTerminal() throws {
        let terminal = try CallerTerminal()
        let null = open("/dev/null", O_RDONLY | O_CLOEXEC)
        defer { close(null) }
        let before = terminal.modes
        let r = try Self.run(terminal, stdin: null, ["/bin/sh", "-c",
            "stty -echo -icanon <&1; stty -echo <&2; test -t 0 || echo stdin-not-tty; echo out; echo err >&2"])
        #expect(r.status == 0, "\(r)")
        #expect(r.shown.contains("stdin-not-tty") && r.shown.contains("out") && r.shown.contains("err"), "\(r.shown.debugDescription)")
        #expect(Self.same(before, terminal.modes), "the caller's terminal modes changed")
    }

    @Test("the launcher refuses a caller's terminal passed as an fd")
    func terminalFdRefused() throws {
        let terminal = try CallerTerminal()
        let error = #expect(throws: JailError.self) {
            _ = try runJailed(try minimalProfile(), ["/bin/true"]) { $0.passedFDs.append((terminal.slave, 5)) }
        }
        #expect(error?.description.contains("is a terminal") == true, "\(String(describing: error))")
    }
}
