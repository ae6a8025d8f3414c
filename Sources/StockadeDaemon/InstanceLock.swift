// One daemon per configuration: an exclusive lock on a file beside the API
// socket (`<socket>.lock`), held for the daemon's life, with the holder's
// pid written in it. A second instance refuses to start and names that pid;
// a socket that still answers is never unlinked, whoever listens on it.
import StockadeSystem
#if canImport(Glibc)
import Glibc
#endif

final class InstanceLock: Sendable {
    let path: String
    private let fd: Int32

    /// Takes the lock beside `socket`, or throws naming the pid that holds it.
    init(socket: String) throws(DaemonError) {
        path = socket + ".lock"
        let dir = DaemonPath.directory(of: socket)
        if access(dir, F_OK) != 0 { mkdir(dir, 0o755) }
        // O_NOFOLLOW: a symlink planted at the lock's path is refused, not
        // followed to truncate some other file.
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY, 0o644)
        guard fd >= 0 else {
            throw DaemonError("cannot open the instance lock \(path): \(String(cString: strerror(errno)))")
        }
        var st = stat()
        guard fstat(fd, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG else {
            close(fd)
            throw DaemonError("the instance lock \(path) is not a regular file; remove it")
        }
        do {
            _ = try retryingSyscall { flock(fd, LOCK_EX | LOCK_NB) }
        } catch {
            let holder = Self.readPid(fd)
            close(fd)
            if error == .wouldBlock {
                throw DaemonError("another stockaded\(holder.map { " (pid \($0))" } ?? "") holds \(path) and serves \(socket); "
                    + "stop it first, or give this one another socket")
            }
            throw DaemonError("cannot lock \(path): \(error)")
        }
        let text = Array("\(getpid())\n".utf8)
        _ = ftruncate(fd, 0)
        _ = text.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, 0) }
        self.fd = fd
    }

    deinit { close(fd) }

    /// The pid written in the lock file by its holder.
    private static func readPid(_ fd: Int32) -> Int32? {
        var buf = [UInt8](repeating: 0, count: 32)
        let n = buf.withUnsafeMutableBytes { pread(fd, $0.baseAddress, $0.count, 0) }
        guard n > 0 else { return nil }
        return Int32(String(decoding: buf[0..<n], as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines))
    }

    /// Makes `socket` free to bind: nothing there, or a socket nobody
    /// answers on (left by a daemon that died), which is removed. A socket
    /// that accepts a connection, or anything that is not a socket, is left
    /// alone and refused.
    static func clearStaleSocket(_ socket: String) throws(DaemonError) {
        var st = stat()
        guard lstat(socket, &st) == 0 else { return }
        guard (st.st_mode & S_IFMT) == S_IFSOCK else {
            throw DaemonError("\(socket) exists and is not a socket; refusing to replace it")
        }
        if let probe = try? UnixSocket.connect(path: socket) {
            close(probe.rawValue)
            throw DaemonError("a process is listening on \(socket); refusing to unlink a socket that answers")
        }
        guard unlink(socket) == 0 || errno == ENOENT else {
            throw DaemonError("cannot remove the stale socket \(socket): \(String(cString: strerror(errno)))")
        }
    }
}
