// Model integrity: a tenant pins its model files by SHA-256. The daemon
// hashes each file (streaming, the channel's SHA-256) before it binds it read-only into
// a jail, and refuses to start the tenant's workers on a mismatch.
import StockadeChannel
import StockadeSystem
#if canImport(Glibc)
import Glibc
#endif

/// Why a pinned model file cannot be used.
public struct ModelIntegrityError: Error, CustomStringConvertible, Sendable, Equatable {
    public var path: String
    public var expected: String
    /// The digest found, when the file could be read.
    public var actual: String?
    public var reason: String

    public var description: String {
        if let actual {
            return "model file \(path): SHA-256 is \(actual), the configuration pins \(expected); refusing to start workers with it"
        }
        return "model file \(path): \(reason); refusing to start workers without it"
    }
}

public enum ModelDigest {
    /// The SHA-256 of the file at `path` as 64 lowercase hex digits, read in
    /// 1 MiB chunks.
    public static func sha256(path: String) throws(ModelIntegrityError) -> String {
        func fail(_ why: String) -> ModelIntegrityError {
            ModelIntegrityError(path: path, expected: "", actual: nil, reason: why)
        }
        let fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY)
        guard fd >= 0 else { throw fail("cannot open: \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG else { throw fail("not a regular file") }
        var hasher = SHA256Hasher()
        let chunk = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 16)
        defer { chunk.deallocate() }
        while true {
            let n: Int
            do {
                n = try retryingSyscall { read(fd, chunk.baseAddress, chunk.count) }
            } catch {
                throw fail("read failed: \(errnoName(error.rawValue))")
            }
            if n == 0 { break }
            hasher.update(UnsafeRawBufferPointer(rebasing: chunk[..<n]))
        }
        let out = hasher.finalize()
        let hex: [UInt8] = Array("0123456789abcdef".utf8)
        var text = [UInt8]()
        text.reserveCapacity(64)
        for b in out {
            text.append(hex[Int(b >> 4)])
            text.append(hex[Int(b & 15)])
        }
        return String(decoding: text, as: UTF8.self)
    }

    /// Checks `model` against its pinned digest.
    public static func verify(_ model: ModelFile) throws(ModelIntegrityError) {
        let actual: String
        do {
            actual = try sha256(path: model.path)
        } catch {
            var e = error
            e.expected = model.sha256
            throw e
        }
        guard actual == model.sha256 else {
            throw ModelIntegrityError(path: model.path, expected: model.sha256, actual: actual, reason: "digest mismatch")
        }
    }

    /// Identity of a file as last verified: a change of any of these means
    /// the file must be hashed again before the next launch.
    struct Stamp: Equatable {
        var device: UInt64
        var inode: UInt64
        var size: Int64
        var mtimeSeconds: Int
        var mtimeNanos: Int
        var ctimeSeconds: Int
        var ctimeNanos: Int

        init?(path: String) {
            var st = stat()
            guard stat(path, &st) == 0 else { return nil }
            device = UInt64(st.st_dev)
            inode = UInt64(st.st_ino)
            size = Int64(st.st_size)
            mtimeSeconds = st.st_mtim.tv_sec
            mtimeNanos = st.st_mtim.tv_nsec
            ctimeSeconds = st.st_ctim.tv_sec
            ctimeNanos = st.st_ctim.tv_nsec
        }
    }
}
