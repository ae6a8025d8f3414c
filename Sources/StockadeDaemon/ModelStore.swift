// Pinned model files as sealed memfds the daemon owns.
//
// Each file is opened once (O_NOFOLLOW, a regular file), copied into a
// memfd which is then sealed against writes, growth, shrinking and further
// seals, and the memfd's bytes are hashed and compared with the pinned
// digest. Workers get that memfd (the same open file, at a number named in
// STOCKADE_MODEL_FDS); nothing is bound or read by path afterwards, so
// renaming, swapping or rewriting the file on disk changes nothing a
// worker sees. The seals and size are checked again before every launch.
import StockadeChannel
import StockadeSystem
import SystemPackage
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// One pinned file, verified, in a sealed memfd.
final class SealedModelFile: Sendable {
    let file: ModelFile
    let fd: FileDescriptor
    let size: Int

    init(file: ModelFile, fd: FileDescriptor, size: Int) {
        self.file = file
        self.fd = fd
        self.size = size
    }

    deinit { try? fd.close() }

    /// The memfd is still sealed and still the size that was hashed.
    func recheck() throws(ModelIntegrityError) {
        func fail(_ why: String) -> ModelIntegrityError {
            ModelIntegrityError(path: file.path, expected: file.sha256, actual: nil, reason: why)
        }
        let seals: FileSeals
        do { seals = try fd.seals() } catch { throw fail("the sealed copy cannot be checked (\(error))") }
        guard seals.isSuperset(of: .immutable) else { throw fail("the sealed copy lost its seals (\(seals))") }
        let now: Int
        do { now = try fd.fileSize() } catch { throw fail("the sealed copy cannot be checked (\(error))") }
        guard now == size else { throw fail("the sealed copy changed size (\(size) -> \(now))") }
    }
}

/// The sealed copies of every declared model, made on first use and
/// shared by the tenants that name the model.
final class ModelStore: Sendable {
    private let sealed = Mutex<[String: [SealedModelFile]]>([:])
    /// One model is copied at a time (tenants that share a model do not
    /// copy it twice).
    private let loading = Mutex<Void>(())

    /// The sealed files of `model`, copied and verified on first use and
    /// re-checked (seals, size) on every call.
    func files(of model: ModelConfig) throws(ModelIntegrityError) -> [SealedModelFile] {
        if let known = sealed.withLock({ $0[model.name] }) {
            for f in known { try f.recheck() }
            return known
        }
        return try loading.withLock { _ throws(ModelIntegrityError) -> [SealedModelFile] in
            if let known = sealed.withLock({ $0[model.name] }) { return known }
            var files: [SealedModelFile] = []
            for f in model.files { files.append(try Self.seal(f)) }
            sealed.withLock { $0[model.name] = files }
            return files
        }
    }

    /// Copies `file` into a sealed memfd and checks the copy's digest.
    static func seal(_ file: ModelFile) throws(ModelIntegrityError) -> SealedModelFile {
        func fail(_ why: String) -> ModelIntegrityError {
            ModelIntegrityError(path: file.path, expected: file.sha256, actual: nil, reason: why)
        }
        let source = open(file.path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NOFOLLOW | O_NONBLOCK)
        guard source >= 0 else {
            let e = errno
            throw fail(e == ELOOP ? "is a symbolic link (pinned files are opened without following links)" : "cannot open: \(String(cString: strerror(e)))")
        }
        defer { close(source) }
        var st = stat()
        guard fstat(source, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG else { throw fail("not a regular file") }
        let memfd: FileDescriptor
        do { memfd = try FileDescriptor.memfd(name: "stockade-model") } catch { throw fail("memfd_create: \(error)") }
        var keep = false
        defer { if !keep { try? memfd.close() } }
        // Copy: one read of the source, written whole into the memfd.
        let chunk = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 16)
        defer { chunk.deallocate() }
        var total = 0
        while true {
            let n: Int
            do { n = try retryingSyscall { read(source, chunk.baseAddress, chunk.count) } } catch { throw fail("read failed: \(error)") }
            if n == 0 { break }
            do { try memfd.writeAll(UnsafeRawBufferPointer(rebasing: chunk[0..<n])) } catch { throw fail("copy into memfd: \(error)") }
            total += n
        }
        do { try memfd.addSeals(.immutable) } catch { throw fail("sealing the copy: \(error)") }
        // Hash the sealed copy: these are the bytes every worker reads.
        let actual = try ModelDigest.sha256(of: memfd.rawValue, path: file.path)
        guard actual == file.sha256 else {
            throw ModelIntegrityError(path: file.path, expected: file.sha256, actual: actual, reason: "digest mismatch")
        }
        keep = true
        return SealedModelFile(file: file, fd: memfd, size: total)
    }
}
