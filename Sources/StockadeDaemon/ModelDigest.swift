// Model integrity: a model's files are pinned by SHA-256. The daemon hashes
// the sealed copy it hands to workers (ModelStore) and refuses to start the
// tenant's workers on a mismatch; `stockaded --check` hashes the files.
import StockadeChannel
import StockadeSystem
#if canImport(Glibc)
import Glibc
#endif

/// Why a pinned model file cannot be used.
package struct ModelIntegrityError: Error, CustomStringConvertible, Sendable, Equatable {
    package var path: String
    package var expected: String
    /// The digest found, when the file could be read.
    package var actual: String?
    package var reason: String

    package var description: String {
        if let actual {
            return "model file \(path): SHA-256 is \(actual), the configuration pins \(expected); refusing to start workers with it"
        }
        return "model file \(path): \(reason); refusing to start workers without it"
    }
}

package enum ModelDigest {
    /// The SHA-256 of the file at `path` as 64 lowercase hex digits, read in
    /// 1 MiB chunks.
    package static func sha256(path: String) throws(ModelIntegrityError) -> String {
        func fail(_ why: String) -> ModelIntegrityError {
            ModelIntegrityError(path: path, expected: "", actual: nil, reason: why)
        }
        let fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NOFOLLOW | O_NONBLOCK)
        guard fd >= 0 else { throw fail("cannot open: \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG else { throw fail("not a regular file") }
        return try sha256(of: fd, path: path)
    }

    /// The SHA-256 of everything in `fd` from offset 0, read with pread in
    /// 1 MiB chunks (the descriptor's own offset is left alone), as 64
    /// lowercase hex digits. `path` names the file in errors.
    package static func sha256(of fd: Int32, path: String) throws(ModelIntegrityError) -> String {
        var hasher = SHA256Hasher()
        let chunk = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 16)
        defer { chunk.deallocate() }
        var offset: off_t = 0
        while true {
            let n: Int
            do {
                n = try retryingSyscall { pread(fd, chunk.baseAddress, chunk.count, offset) }
            } catch {
                throw ModelIntegrityError(path: path, expected: "", actual: nil, reason: "read failed: \(errnoName(error.rawValue))")
            }
            if n == 0 { break }
            hasher.update(UnsafeRawBufferPointer(rebasing: chunk[..<n]))
            offset += off_t(n)
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
    package static func verify(_ model: ModelFile) throws(ModelIntegrityError) {
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
}

/// The SHA-256 of a bearer token. Clients' tokens are kept and compared
/// only as digests: 32 bytes whatever the token's length, compared in full.
struct TokenDigest: Sendable, Equatable {
    let bytes: [UInt8]

    init(_ token: String) {
        self.init(bytes: Array(token.utf8))
    }

    init(bytes token: [UInt8]) {
        bytes = SHA256.hash(token)
    }

    /// Constant time: every byte is compared, whatever differs first.
    func matches(_ other: TokenDigest) -> Bool {
        guard bytes.count == 32, other.bytes.count == 32 else { return false }
        var diff: UInt8 = 0
        for i in 0..<32 { diff |= bytes[i] ^ other.bytes[i] }
        return diff == 0
    }
}
