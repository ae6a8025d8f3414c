// How a process forked inside a jail ended: a template's worker is not a
// jail of its own, so its end is told from the wait status its parent (the
// template) reaped, not from the jail's accounting.
import StockadeSystem

extension JailExit {
    /// `waitStatus` as waitpid returns it (nil: nobody reported it);
    /// `killedFor` overrides the reason when the launcher killed it.
    public init(forkedWaitStatus waitStatus: Int32?, killedFor: Reason?, wallSeconds: Double, profile: String) {
        var exitCode: Int32?
        var signal: Int32?
        var reason = Reason.signaled
        if let s = waitStatus {
            if s & 0x7f == 0 {
                exitCode = (s >> 8) & 0xff
                reason = .exited
            } else {
                signal = s & 0x7f
            }
        }
        if let killedFor { reason = killedFor }
        self.init(reason: reason, exitCode: exitCode, signal: signal, signalName: signal.map { StockadeSystem.signalName($0) },
                  wallSeconds: wallSeconds, status: exitCode ?? (signal.map { 128 + $0 } ?? -1), profile: profile, usage: nil)
    }
}
