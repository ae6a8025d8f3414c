#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import StockadeJail
import StockadeSystem
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// `stockade run` with a terminal on stdin, stdout or stderr: the jail gets
/// a pseudo-terminal of its own in those places and the launcher relays
/// between it and the caller's terminal (as `docker run -t` does). With
/// stdin a terminal, the caller's terminal is raw while the jail runs (keys
/// go to the jail's terminal, whose line discipline makes ^C the jail's
/// SIGINT) and is put back as it was when the jail ends. The caller's
/// terminal itself never enters the jail.
final class JailTerminal {
    let pty: PseudoTerminal
    let callerTerminals: [Int32]
    var modes: TerminalModes?
    var relay: TerminalRelay?
    private var peerOpen = true

    private init(pty: PseudoTerminal, callerTerminals: [Int32]) {
        self.pty = pty
        self.callerTerminals = callerTerminals
    }

    /// Sets the request up for a pty when any of stdin, stdout and stderr is
    /// a terminal; nil when none is.
    static func prepare(_ request: inout LaunchRequest) throws -> JailTerminal? {
        let terminals = (Int32(0)...2).filter { isatty($0) == 1 }
        guard let first = terminals.first else { return nil }
        let pty: PseudoTerminal
        do {
            pty = try PseudoTerminal.open()
        } catch {
            throw StockadeFailure(message: "stockade: a terminal for the jail: /dev/ptmx: \(error)", status: 125)
        }
        // The jail's terminal starts with the caller's modes and window size.
        var t = termios()
        if tcgetattr(first, &t) == 0 { _ = tcsetattr(pty.peer.rawValue, TCSANOW, &t) }
        PseudoTerminal.copyWindowSize(from: first, to: pty.peer.rawValue)
        for n in terminals { request.passedFDs.append((pty.peer.rawValue, n)) }
        request.terminal = pty.peer.rawValue
        return JailTerminal(pty: pty, callerTerminals: terminals)
    }

    /// After the launch: the jail holds its side; relay until it closes it.
    func startRelay() {
        closePeer()
        let input: Int32? = callerTerminals.contains(0) ? 0 : nil
        if input != nil {
            do {
                modes = try TerminalModes.makeRaw(0)
            } catch {
                printError("stockade: warning: the terminal stays in line mode (tcsetattr: \(error))")
            }
        }
        // Output to the caller's terminal: stdout, else stderr, else the
        // terminal on stdin (echo of what is typed).
        let output = callerTerminals.first { $0 != 0 } ?? 0
        let relay = TerminalRelay(master: pty.master, input: input, output: output, sizeSource: callerTerminals.first)
        do {
            try relay.start()
            self.relay = relay
        } catch {
            modes?.restore()
            modes = nil
            printError("stockade: warning: the jail's terminal output cannot be relayed (pthread_create: \(error))")
        }
    }

    /// Relays what is left, restores the caller's terminal, closes the pty.
    func finish() {
        relay?.finish()
        relay = nil
        modes?.restore()
        modes = nil
        close()
    }

    func close() {
        closePeer()
        try? pty.master.close()
    }

    private func closePeer() {
        if peerOpen { try? pty.peer.close(); peerOpen = false }
    }
}
