import StockadeSystem
import CStockadeSpawn
public import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

extension Jail {
    /// Installs handlers that pass each of `signals`, when this process gets
    /// it, to the jail's PID 1 through its pidfd (which passes it on to the
    /// worker). One jail at a time per process: `stockade run`.
    public func forwardSignals(_ signals: [Int32]) throws(Errno) {
        let rc = signals.withUnsafeBufferPointer {
            stk_forward_signals(process.fd.rawValue, $0.baseAddress, Int32($0.count))
        }
        if rc != 0 { throw Errno(rawValue: errno) }
    }

    /// Stops forwarding before the jail's pidfd is closed; the signals are
    /// then dropped.
    public static func stopForwardingSignals() {
        stk_stop_forwarding()
    }
}
