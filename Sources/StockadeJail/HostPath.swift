import StockadeSystem
#if canImport(Glibc)
import Glibc
#endif

/// A host file a bind mounts, as the launcher found it: the canonical path
/// (no symlink left in it) and the identity of the file there. The child
/// reopens the canonical path without following any symlink and mounts it
/// only if it is still this file (`open_source` in spawn.c).
///
/// Why this shape: a jail with a writable bind can plant a symlink anywhere
/// below it, and swap a directory and a symlink back and forth (renameat2
/// RENAME_EXCHANGE) while another launch reads the path. Checking a path
/// and mounting it again by name loses that race; so the path is walked
/// here component by component on O_PATH|O_NOFOLLOW fds, and the child
/// repeats the walk with openat2(RESOLVE_NO_SYMLINKS) and compares
/// (st_dev, st_ino, type). The child cannot use the launcher's fd itself:
/// after CLONE_NEWNS it belongs to another mount namespace, which mount and
/// open_tree refuse. A root launcher could instead clone the tree itself
/// (open_tree in the host's namespace) and hand the detached mount over,
/// but a rootless one cannot, and two code paths for one check is one too
/// many: reopening and comparing works the same as root and rootless.
struct HostPath: Sendable, Equatable {
    /// Absolute, with every symlink resolved: "/usr/lib", never "/lib".
    var path: String
    var device: UInt64
    var inode: UInt64
    /// The S_IFMT bits of `st_mode`.
    var type: UInt32
    /// (st_dev, st_ino) of "/" and of every directory down to the file,
    /// the file included.
    var chain: [FileID]

    var isDirectory: Bool { type == UInt32(S_IFDIR) }
    var id: FileID { FileID(device: device, inode: inode) }

    struct FileID: Hashable, Sendable {
        var device: UInt64
        var inode: UInt64
    }

    /// Why a host path was not resolved.
    enum Failure: Error, Equatable {
        /// A symlink the rule does not allow following; `why` says which part of the rule it broke.
        case untrustedLink(link: String, why: String)
        /// A component is missing, not a directory, or could not be opened.
        case system(path: String, errno: Int32)
        /// The path holds a NUL byte: each name reaches `openat` as a C
        /// string, which would end there and name another file.
        case nulByte
    }

    /// Resolves `path` on the host. A symlink is followed only when it is
    /// root's and every directory on the way to it (from "/") is owned by
    /// root and writable by nobody else (Debian's `/lib -> usr/lib`), or
    /// when `followAnyLink` is set (a mount's `follow_symlinks = true`).
    /// Links a jail could have written never qualify: a jail's files are
    /// never root's on the host, and a directory a jail can write is not
    /// root's alone.
    static func resolve(_ path: String, followAnyLink: Bool = false) throws(Failure) -> HostPath {
        struct Step {
            var name: String
            var fd: Int32
            /// This directory and every one above it are root's and not group/other-writable.
            var trusted: Bool
        }
        guard !path.utf8.contains(0) else { throw .nulByte }
        func trustedDirectory(_ st: stat) -> Bool { st.st_uid == 0 && st.st_mode & 0o022 == 0 }
        // Written with a loop: a launch that finds an optional path missing
        // (an init candidate, an optional bind) names it, and the generic
        // `joined` cost the runtime's demangler on its first use.
        func shown(_ stack: [Step], _ last: String? = nil) -> String {
            var path = ""
            for step in stack.dropFirst() { path += "/" + step.name }
            if let last { path += "/" + last }
            return path.isEmpty ? "/" : path
        }

        let rootFD = open("/", OpenFlags.path | O_DIRECTORY | O_CLOEXEC)
        guard rootFD >= 0 else { throw .system(path: "/", errno: errno) }
        var st = stat()
        guard fstat(rootFD, &st) == 0 else {
            let e = errno
            close(rootFD)
            throw .system(path: "/", errno: e)
        }
        var stack = [Step(name: "", fd: rootFD, trusted: trustedDirectory(st))]
        var chain = [FileID(device: UInt64(st.st_dev), inode: UInt64(st.st_ino))]
        defer { for step in stack { close(step.fd) } }
        var pending = Array(path.split(separator: "/", omittingEmptySubsequences: true).map(String.init).reversed())
        var links = 0
        var last: (st: stat, isLeaf: Bool)?

        while let name = pending.popLast() {
            if name == "." { continue }
            if name == ".." {
                if stack.count > 1 {
                    close(stack.removeLast().fd)
                    chain.removeLast()
                }
                last = nil
                continue
            }
            let dir = stack[stack.count - 1]
            let fd = openat(dir.fd, name, OpenFlags.path | O_NOFOLLOW | O_CLOEXEC)
            guard fd >= 0 else { throw .system(path: shown(stack, name), errno: errno) }
            var st = stat()
            guard fstat(fd, &st) == 0 else {
                let e = errno
                close(fd)
                throw .system(path: shown(stack, name), errno: e)
            }
            if st.st_mode & S_IFMT == S_IFLNK {
                defer { close(fd) }
                if !followAnyLink && !(dir.trusted && st.st_uid == 0) {
                    let why = st.st_uid != 0
                        ? "it is owned by uid \(st.st_uid), not root"
                        : "\(shown(stack)) or a directory above it is not root's alone (owned by another user, or writable by group or others)"
                    throw .untrustedLink(link: shown(stack, name), why: why)
                }
                links += 1
                guard links <= 40 else { throw .system(path: shown(stack, name), errno: ELOOP) }
                var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
                let n = readlinkat(dir.fd, name, &buffer, buffer.count - 1)
                guard n >= 0 else { throw .system(path: shown(stack, name), errno: errno) }
                let text = String(decoding: buffer[..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
                if text.hasPrefix("/") {
                    while stack.count > 1 {
                        close(stack.removeLast().fd)
                        chain.removeLast()
                    }
                }
                pending += text.split(separator: "/", omittingEmptySubsequences: true).map(String.init).reversed()
                last = nil
                continue
            }
            chain.append(FileID(device: UInt64(st.st_dev), inode: UInt64(st.st_ino)))
            stack.append(Step(name: name, fd: fd, trusted: dir.trusted && trustedDirectory(st)))
            let more = pending.contains { $0 != "." }
            if more && st.st_mode & S_IFMT != S_IFDIR {
                throw .system(path: shown(stack), errno: ENOTDIR)
            }
            last = (st, !more)
        }
        let final: stat
        if let last {
            final = last.st
        } else {
            // "/" itself, or a path that ended in ".." or a link to a directory above.
            var st = stat()
            guard fstat(stack[stack.count - 1].fd, &st) == 0 else { throw .system(path: shown(stack), errno: errno) }
            final = st
        }
        return HostPath(path: shown(stack), device: UInt64(final.st_dev), inode: UInt64(final.st_ino),
                        type: UInt32(final.st_mode & S_IFMT), chain: chain)
    }
}

extension HostPath.Failure {
    /// The failure as the end of a sentence about `what` ("bind source /x").
    func describe(_ what: String) -> String {
        switch self {
        case let .untrustedLink(link, why):
            return "\(what): \(link) is a symlink the launcher will not follow: \(why). A jail with a writable bind "
                + "could have planted it; give the path it points to, or set follow_symlinks = true on the mount "
                + "if nobody but you can write there"
        case let .system(path, errno) where errno == ENOENT:
            return "\(what) does not exist (no \(path))"
        case let .system(path, errno):
            return "\(what): \(path): \(errnoName(errno))"
        case .nulByte:
            return "\(what): the path holds a NUL byte, where the kernel would read its end"
        }
    }
}

/// Open flags Glibc hides behind _GNU_SOURCE.
public enum OpenFlags {
    /// O_PATH: the same on every Linux architecture Swift runs on.
    public static let path: Int32 = 0o10000000
}

/// openat2's RESOLVE_* flags (linux/openat2.h), which Glibc does not export.
public enum Resolve {
    /// No /proc magic link (`/proc/PID/root`, `/proc/PID/fd/N`) is followed.
    public static let noMagicLinks: UInt64 = 0x02
    /// No symbolic link is followed, the magic ones included.
    public static let noSymlinks: UInt64 = 0x04
    /// The path stays below the directory it is opened from.
    public static let beneath: UInt64 = 0x08
}
