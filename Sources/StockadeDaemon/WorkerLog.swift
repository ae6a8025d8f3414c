// A worker's stdout and stderr: pipes the daemon reads, never the daemon's
// own fds. Each line is logged tagged with its tenant, worker and stream,
// with control characters escaped, cut at `maxLine` bytes, and read at no
// more than `bytesPerSecond`: past that the daemon stops reading and the
// worker blocks on its own full pipe, so a chatty or hostile worker costs
// the daemon neither memory nor more than a bounded amount of work.
import Logging
import StockadeSystem
import SystemPackage
import Foundation
#if canImport(Glibc)
import Glibc
#endif

final class WorkerLog: Sendable {
    static let maxLine = 4096
    static let bytesPerSecond = 64 << 10

    /// The ends the jail gets, at 1 and 2; the daemon closes its copies
    /// after the launch.
    let stdoutWrite: FileDescriptor
    let stderrWrite: FileDescriptor
    private let stdoutRead: FileDescriptor
    private let stderrRead: FileDescriptor

    init() throws(Errno) {
        let out = try PipeEnds.make()
        let err: PipeEnds
        do { err = try PipeEnds.make() } catch {
            try? out.read.close()
            try? out.write.close()
            throw error
        }
        stdoutRead = out.read
        stdoutWrite = out.write
        stderrRead = err.read
        stderrWrite = err.write
    }

    /// Closes the write ends (after the launch, or when it failed).
    func closeWriteEnds() {
        try? stdoutWrite.close()
        try? stderrWrite.close()
    }

    /// Closes everything (the launch failed before a reader started).
    func abandon() {
        closeWriteEnds()
        try? stdoutRead.close()
        try? stderrRead.close()
    }

    /// Reads both pipes on the daemon's log loop (``ReadinessLoop/logs``)
    /// until the worker (and anything it left holding the pipes) is gone,
    /// then closes them.
    func start(logger: Logger, tenant: String, worker: String) {
        var log = logger
        log[metadataKey: "tenant"] = "\(tenant)"
        log[metadataKey: "worker"] = "\(worker)"
        let reader = Reader(logger: log)
        for (i, (fd, stream)) in [(stdoutRead, "stdout"), (stderrRead, "stderr")].enumerated() {
            ReadinessLoop.logs.add(fd: fd.rawValue) { _ in reader.readable(i, fd: fd, stream: stream) }
        }
    }

    /// One worker's two streams. Used only on the log loop's thread.
    private final class Reader: @unchecked Sendable {
        let logger: Logger
        var partial: [[UInt8]] = [[], []]
        var dropped = [0, 0]
        /// Bytes both streams together may still read in this second.
        var budget = WorkerLog.bytesPerSecond
        var windowStart = ContinuousClock.now
        /// One buffer for every worker's reads: the loop reads one at a time.
        nonisolated(unsafe) static var buffer = [UInt8](repeating: 0, count: 16384)

        init(logger: Logger) { self.logger = logger }

        func readable(_ i: Int, fd: FileDescriptor, stream: String) -> ReadinessLoop.Next {
            let now = ContinuousClock.now
            if now - windowStart >= .seconds(1) {
                budget = WorkerLog.bytesPerSecond
                windowStart = now
            }
            // Over the rate: this stream waits until the second is up, and
            // the worker blocks on its own full pipe meanwhile.
            if budget <= 0 { return .pause(until: windowStart + .seconds(1)) }
            let want = min(Self.buffer.count, budget)
            let n = (try? Self.buffer.withUnsafeMutableBytes { b throws(Errno) in
                try retryingSyscall { read(fd.rawValue, b.baseAddress, want) }
            }) ?? -1
            if n <= 0 {
                if !partial[i].isEmpty { WorkerLog.emit(partial[i], stream: stream, logger: logger) }
                partial[i] = []
                try? fd.close()
                return .remove
            }
            budget -= n
            for b in Self.buffer[0..<n] {
                if b == 0x0A {
                    WorkerLog.emit(partial[i], stream: stream, logger: logger)
                    partial[i] = []
                } else if partial[i].count < WorkerLog.maxLine {
                    partial[i].append(b)
                } else {
                    dropped[i] += 1
                    if dropped[i] == 1 { partial[i] += Array(" [line cut at \(WorkerLog.maxLine) bytes]".utf8) }
                }
                if b == 0x0A { dropped[i] = 0 }
            }
            return .keep
        }
    }

    /// One line, control characters escaped (a worker cannot forge a line
    /// break, a terminal escape or a NUL into the daemon's log).
    fileprivate static func emit(_ line: [UInt8], stream: String, logger: Logger) {
        var text = ""
        text.reserveCapacity(line.count)
        for scalar in String(decoding: line, as: UTF8.self).unicodeScalars {
            if scalar.value < 0x20 || scalar.value == 0x7F || (0x80...0x9F).contains(scalar.value) {
                text += "\\x" + (scalar.value < 16 ? "0" : "") + String(scalar.value, radix: 16)
            } else {
                text.unicodeScalars.append(scalar)
            }
        }
        logger.notice("worker output: \(text)", metadata: ["stream": "\(stream)"])
    }
}
