internal import CStockadeSpawn
import StockadeConfig
import StockadeSystem
#if canImport(Glibc)
import Glibc
#endif

/// Compiled seccomp programs kept between launches, so that a jail of an
/// unchanged profile skips libseccomp (about a tenth of a launch's CPU).
///
/// An entry is keyed by everything the program depends on: the policy as
/// parsed (default, rules with their conditions, lifted hardening, notes),
/// the kernel (release and build), libseccomp's version, the architecture
/// and the launcher's own executable (device, inode, size, mtime: a rebuilt
/// or upgraded stockade never reads an older build's programs). The file
/// holds the whole key, compared byte for byte, so the file name (a 64-bit
/// FNV-1a of the key) may collide without harm.
///
/// A filter read from disk is only as trustworthy as the directory it sits
/// in: an allow-everything program written there would be an escape. So
/// the cache is used only by root, in a directory that only root can enter:
/// - every component of its path is opened with `O_NOFOLLOW` from `/`
///   (no link a jail could have made is followed), each owned by root and
///   writable by nobody else (or sticky, like `/tmp`); the directory itself
///   is root's with mode 0700, or it is not used;
/// - an entry is opened `O_NOFOLLOW` relative to that directory's fd and
///   used only if it is a regular file of root's, mode 0600, one link, of
///   a sane size, with the exact key, a well-formed program and a hardening
///   prelude identical to the one this build assembles;
/// - entries are written to a fresh `O_EXCL` file and renamed into place,
///   so a reader never sees half a program.
/// Jails never run as root (as root, every jail has host ids of its own),
/// so no jail can write there even where a profile binds the directory.
/// Anything wrong is a miss: the program is compiled as without a cache.
public final class SeccompProgramCache: Sendable {
    /// Where `stockade run` and `stockaded` keep programs when run as root.
    public static let defaultDirectory = "/run/stockade/plans"
    static let magic = Array("STKSECC1".utf8)
    static let maxEntryBytes = 64 * 1024

    public enum Outcome: Equatable, Sendable {
        /// Read from the cache.
        case hit
        /// Compiled and written to the cache.
        case stored
        /// Compiled; the entry found (if any) was refused, or the write failed.
        case compiled(String)
    }

    public struct Unusable: Error, CustomStringConvertible, Sendable {
        public var description: String
    }

    private let directory: Int32
    public let path: String

    /// Opens (and, with `create`, makes) the cache directory. Throws when
    /// any component of the path is a link, is not root's, or is writable
    /// by others, or when the directory itself is not root's with mode 0700.
    public init(directory path: String, create: Bool = true) throws(Unusable) {
        guard geteuid() == 0 else { throw Unusable(description: "only root keeps compiled programs") }
        guard path.hasPrefix("/") else { throw Unusable(description: "\(path) is not an absolute path") }
        var fd = open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { throw Unusable(description: "cannot open /") }
        let parts = path.split(separator: "/").map(String.init)
        for (i, part) in parts.enumerated() {
            let last = i == parts.count - 1
            guard part != "." && part != ".." else {
                close(fd)
                throw Unusable(description: "\(path) has a . or .. component")
            }
            if last && create && mkdirat(fd, part, 0o700) != 0 && errno != EEXIST {
                let e = errno
                close(fd)
                throw Unusable(description: "cannot make \(path): \(Self.errnoText(e))")
            }
            let next = openat(fd, part, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
            let e = errno
            close(fd)
            guard next >= 0 else {
                throw Unusable(description: "cannot open \(part) of \(path) without following links: \(Self.errnoText(e))")
            }
            fd = next
            var st = stat()
            guard fstat(fd, &st) == 0 else {
                close(fd)
                throw Unusable(description: "cannot stat \(part) of \(path)")
            }
            let sticky = st.st_mode & S_ISVTX != 0
            if st.st_uid != 0 || (!last && st.st_mode & 0o022 != 0 && !sticky) || (last && st.st_mode & 0o7777 != 0o700) {
                close(fd)
                let mode = String(st.st_mode & 0o7777, radix: 8)
                throw Unusable(description: "\(last ? path : part + " of " + path) is owned by uid \(st.st_uid) with mode \(mode); "
                               + (last ? "the cache must be root's, mode 0700" : "every parent must be root's and writable only by root"))
            }
        }
        directory = fd
        self.path = path
    }

    deinit { close(directory) }

    /// The cache in ``defaultDirectory``, or nil when not root or when the
    /// directory is not safe to use (then every launch compiles).
    public static let shared: SeccompProgramCache? = try? SeccompProgramCache(directory: defaultDirectory)

    /// The program for `section`: from the cache when a valid entry exists,
    /// otherwise compiled and stored.
    public func program(for section: SeccompSection) throws(SeccompCompileError) -> (SeccompProgram, Outcome) {
        let key = Self.key(for: section)
        let name = Self.entryName(key)
        let refusal: String
        switch read(name, key: key, section: section) {
        case .success(let program): return (program, .hit)
        case .failure(let why): refusal = why.description
        }
        let program = try section.compile()
        if let why = write(name, key: key, program: program) {
            return (program, .compiled(why))
        }
        return (program, refusal == "absent" ? .stored : .compiled("refused the entry (\(refusal)); wrote a fresh one"))
    }

    /// The entry's file name in the cache directory.
    public static func entryName(_ key: [UInt8]) -> String {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for b in key { h = (h ^ UInt64(b)) &* 0x0000_0100_0000_01b3 }
        // Sixteen hex digits, written out: `String(_:radix:)` is the
        // standard library's generic integer formatting, whose first use
        // costs a launch more than the rest of the name.
        let digits = Array("0123456789abcdef".utf8)
        var name = Array("seccomp-".utf8)
        for shift in stride(from: 60, through: 0, by: -4) { name.append(digits[Int((h >> UInt64(shift)) & 0xf)]) }
        return String(decoding: name, as: UTF8.self)
    }

    /// Everything a compiled program depends on, as text.
    public static func key(for section: SeccompSection) -> [UInt8] {
        var u = utsname()
        uname(&u)
        func field<T>(_ value: T) -> String {
            withUnsafeBytes(of: value) { raw in
                String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
            }
        }
        var exe = stat()
        _ = stat("/proc/self/exe", &exe)
        let lines = [
            "stockade \(Stockade.version) exe \(exe.st_dev):\(exe.st_ino):\(exe.st_size):\(exe.st_mtim.tv_sec).\(exe.st_mtim.tv_nsec)",
            "kernel \(field(u.release)) \(field(u.version)) \(field(u.machine))",
            "libseccomp \(SeccompProgram.libseccompVersion) arch \(Syscalls.nativeArch)",
            "default \(section.defaultAction.raw)",
        ]
        var key: [UInt8] = []
        key.reserveCapacity(4096 + 24 * section.rules.count)
        for line in lines {
            if !key.isEmpty { key.append(UInt8(ascii: "\n")) }
            key += line.utf8
        }
        // The lifted names and the notes are appended as bytes too: the
        // standard library's generic `joined` looked up its associated
        // types by name (the runtime's demangler) on every launch.
        key += "\nlift ".utf8
        for (i, name) in section.allowDangerous.keys.sorted().enumerated() {
            if i > 0 { key.append(UInt8(ascii: ",")) }
            key += name.utf8
        }
        for note in section.notes {
            key += "\nnote ".utf8
            for byte in note.utf8 { key.append(byte == UInt8(ascii: "\n") ? UInt8(ascii: " ") : byte) }
        }
        // One line a rule, written as bytes: a profile has hundreds, and
        // string interpolation for each was a good part of every launch.
        for r in section.rules {
            key += "\nrule ".utf8
            ASCIIDecimal.append(Int64(r.number), to: &key)
            key.append(UInt8(ascii: " "))
            ASCIIDecimal.append(Int64(r.action.raw), to: &key)
            key.append(UInt8(ascii: " "))
            for (i, c) in r.conditions.enumerated() {
                if i > 0 { key += "; ".utf8 }
                ASCIIDecimal.append(Int64(c.arg), to: &key)
                key.append(UInt8(ascii: " "))
                key += c.op.rawValue.utf8
                key.append(UInt8(ascii: " "))
                ASCIIDecimal.append(c.mask, to: &key)
                key.append(UInt8(ascii: " "))
                ASCIIDecimal.append(c.value, to: &key)
            }
        }
        return key
    }


    private func read(_ name: String, key: [UInt8], section: SeccompSection) -> Result<SeccompProgram, Unusable> {
        let fd = openat(directory, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC)
        guard fd >= 0 else {
            return .failure(Unusable(description: errno == ENOENT ? "absent" : "cannot open: \(Self.errnoText(errno))"))
        }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { return .failure(Unusable(description: "cannot stat")) }
        guard st.st_mode & S_IFMT == S_IFREG, st.st_uid == 0, st.st_mode & 0o7777 == 0o600, st.st_nlink == 1,
              st.st_size > 0, st.st_size <= Self.maxEntryBytes else {
            return .failure(Unusable(description: "not a regular file of root's, mode 0600, one link, at most 64 KiB"))
        }
        var bytes = [UInt8](repeating: 0, count: Int(st.st_size))
        var done = 0
        while done < bytes.count {
            let n = bytes.withUnsafeMutableBytes { pread(fd, $0.baseAddress! + done, $0.count - done, off_t(done)) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { return .failure(Unusable(description: "short read")) }
            done += n
        }
        guard let entry = Entry(decoding: bytes), entry.key == key else {
            return .failure(Unusable(description: "malformed, or made for another policy"))
        }
        guard let instructions = BPFInstruction.decode(entry.program), !instructions.isEmpty,
              instructions.count <= SeccompProgram.maxInstructions, entry.preludeCount < instructions.count else {
            return .failure(Unusable(description: "not a whole program"))
        }
        // The hardening is this build's, whatever the file says.
        let prelude = Prelude.assemble(lifting: Set(section.allowDangerous.keys))
        guard Array(instructions.prefix(entry.preludeCount)) == prelude else {
            return .failure(Unusable(description: "its hardening prelude is not this build's"))
        }
        return .success(SeccompProgram(bytes: entry.program, instructions: instructions, preludeCount: entry.preludeCount,
                                       flags: entry.flags, defaultAction: section.defaultAction, notes: entry.notes,
                                       lifted: section.allowDangerous))
    }

    /// Nil when written; otherwise why not.
    private func write(_ name: String, key: [UInt8], program: SeccompProgram) -> String? {
        let bytes = Entry(key: key, preludeCount: program.preludeCount, flags: program.flags, notes: program.notes,
                          program: program.bytes).encoded
        guard bytes.count <= Self.maxEntryBytes else { return "the program is too large to keep" }
        let temporary = ".new-\(UInt64.random(in: 0...UInt64.max))-" + name
        let fd = openat(directory, temporary, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
        guard fd >= 0 else { return "cannot create an entry: \(Self.errnoText(errno))" }
        var done = 0
        var failed = fchmod(fd, 0o600) != 0
        while !failed && done < bytes.count {
            let n = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress! + done, $0.count - done) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { failed = true } else { done += n }
        }
        close(fd)
        if failed || renameat(directory, temporary, directory, name) != 0 {
            let e = errno
            unlinkat(directory, temporary, 0)
            return "cannot write an entry: \(Self.errnoText(e))"
        }
        return nil
    }

    static func errnoText(_ e: Int32) -> String { ErrnoNames.name(of: e) ?? "errno \(e)" }

    /// The file: magic, then length-prefixed (u32, little-endian) key, notes
    /// and program, with the prelude's length and the load flags.
    struct Entry {
        var key: [UInt8]
        var preludeCount: Int
        var flags: UInt32
        var notes: [String]
        var program: [UInt8]

        init(key: [UInt8], preludeCount: Int, flags: UInt32, notes: [String], program: [UInt8]) {
            self.key = key
            self.preludeCount = preludeCount
            self.flags = flags
            self.notes = notes
            self.program = program
        }

        var encoded: [UInt8] {
            func u32(_ v: Int) -> [UInt8] { (0..<4).map { UInt8(truncatingIfNeeded: UInt32(v) >> ($0 * 8)) } }
            let noteBytes = Array(notes.joined(separator: "\n").utf8)
            return SeccompProgramCache.magic + u32(key.count) + key + u32(preludeCount) + u32(Int(flags))
                + u32(noteBytes.count) + noteBytes + u32(program.count) + program
        }

        init?(decoding bytes: [UInt8]) {
            var at = 0
            func take(_ n: Int) -> ArraySlice<UInt8>? {
                guard n >= 0, bytes.count - at >= n else { return nil }
                defer { at += n }
                return bytes[at..<(at + n)]
            }
            func u32() -> Int? {
                guard let b = take(4) else { return nil }
                return b.enumerated().reduce(0) { $0 | Int($1.element) << ($1.offset * 8) }
            }
            guard let m = take(8), Array(m) == SeccompProgramCache.magic,
                  let keyCount = u32(), let key = take(keyCount),
                  let prelude = u32(), let flags = u32(),
                  let notesCount = u32(), let notes = take(notesCount),
                  let programCount = u32(), let program = take(programCount), at == bytes.count else { return nil }
            self.key = Array(key)
            self.preludeCount = prelude
            self.flags = UInt32(flags)
            self.notes = notesCount == 0 ? [] : String(decoding: notes, as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
            self.program = Array(program)
        }
    }
}
