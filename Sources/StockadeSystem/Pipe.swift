public import SystemPackage
import CStockadeSpawn
#if canImport(Glibc)
import Glibc
#endif

/// A pipe's two ends.
public struct PipeEnds: Sendable {
    public var read: FileDescriptor
    public var write: FileDescriptor

    /// Creates a close-on-exec pipe.
    ///
    /// The corresponding C function is `pipe2`.
    public static func make() throws(Errno) -> PipeEnds {
        var fds: [Int32] = [-1, -1]
        _ = try retryingSyscall { stk_pipe2_cloexec(&fds) }
        return PipeEnds(read: FileDescriptor(rawValue: fds[0]), write: FileDescriptor(rawValue: fds[1]))
    }
}

extension FileDescriptor {
    /// Reads until `count` bytes arrived or end of file; returns what came.
    ///
    /// The corresponding C function is `read`.
    public func readUpTo(_ count: Int) throws(Errno) -> [UInt8] {
        var buffer = [UInt8](repeating: 0, count: count)
        var got = 0
        while got < count {
            let n = try retryingSyscall {
                buffer.withUnsafeMutableBytes { Glibc.read(self.rawValue, $0.baseAddress! + got, count - got) }
            }
            if n == 0 { break }
            got += n
        }
        buffer.removeSubrange(got...)
        return buffer
    }

    /// Reads everything up to end of file.
    ///
    /// The corresponding C function is `read`.
    public func readToEnd(limit: Int = 1 << 24) throws(Errno) -> [UInt8] {
        var result: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while result.count < limit {
            let n = try retryingSyscall {
                chunk.withUnsafeMutableBytes { Glibc.read(self.rawValue, $0.baseAddress!, $0.count) }
            }
            if n == 0 { break }
            result.append(contentsOf: chunk[0..<n])
        }
        return result
    }

    /// Waits until the fd is readable (or hung up); false on timeout.
    ///
    /// The corresponding C function is `poll`.
    public func waitReadable(timeoutMilliseconds: Int32) throws(Errno) -> Bool {
        var pfd = pollfd(fd: rawValue, events: Int16(POLLIN), revents: 0)
        let n = try retryingSyscall { poll(&pfd, 1, timeoutMilliseconds) }
        return n > 0
    }
}
