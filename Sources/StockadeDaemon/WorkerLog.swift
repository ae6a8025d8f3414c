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

    /// Reads both pipes on a thread of its own until the worker (and
    /// anything it left holding the pipes) is gone, then closes them.
    func start(logger: Logger, tenant: String, worker: String) {
        let ends = [(stdoutRead, "stdout"), (stderrRead, "stderr")]
        Thread.detachNewThread {
            var log = logger
            log[metadataKey: "tenant"] = "\(tenant)"
            log[metadataKey: "worker"] = "\(worker)"
            WorkerLog.pump(ends, logger: log)
            for (fd, _) in ends { try? fd.close() }
        }
    }

    private static func pump(_ ends: [(FileDescriptor, String)], logger: Logger) {
        var partial: [[UInt8]] = [[], []]
        var open = [true, true]
        var budget = bytesPerSecond
        var windowStart = ContinuousClock.now
        var buffer = [UInt8](repeating: 0, count: 16384)
        var dropped = [0, 0]
        while open.contains(true) {
            var fds = ends.enumerated().map { i, e in pollfd(fd: open[i] ? e.0.rawValue : -1, events: Int16(POLLIN), revents: 0) }
            guard (try? retryingSyscall { poll(&fds, nfds_t(fds.count), -1) }) != nil else { return }
            for i in 0..<2 where open[i] && fds[i].revents != 0 {
                let want = min(buffer.count, max(1, budget))
                let n = (try? buffer.withUnsafeMutableBytes { b throws(Errno) in
                    try retryingSyscall { read(ends[i].0.rawValue, b.baseAddress, want) }
                }) ?? -1
                if n <= 0 {
                    open[i] = false
                    if !partial[i].isEmpty { emit(partial[i], stream: ends[i].1, logger: logger) }
                    continue
                }
                budget -= n
                for b in buffer[0..<n] {
                    if b == 0x0A {
                        emit(partial[i], stream: ends[i].1, logger: logger)
                        partial[i].removeAll(keepingCapacity: true)
                    } else if partial[i].count < maxLine {
                        partial[i].append(b)
                    } else {
                        dropped[i] += 1
                        if dropped[i] == 1 { partial[i] += Array(" [line cut at \(maxLine) bytes]".utf8) }
                    }
                    if b == 0x0A { dropped[i] = 0 }
                }
            }
            if budget <= 0 {
                // Over the rate: stop reading until the second is up.
                let elapsed = ContinuousClock.now - windowStart
                if elapsed < .seconds(1) {
                    let left = Duration.seconds(1) - elapsed
                    usleep(UInt32(left.components.seconds * 1_000_000 + left.components.attoseconds / 1_000_000_000_000))
                }
                budget = bytesPerSecond
                windowStart = ContinuousClock.now
            } else if ContinuousClock.now - windowStart >= .seconds(1) {
                budget = bytesPerSecond
                windowStart = ContinuousClock.now
            }
        }
    }

    /// One line, control characters escaped (a worker cannot forge a line
    /// break, a terminal escape or a NUL into the daemon's log).
    private static func emit(_ line: [UInt8], stream: String, logger: Logger) {
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
