import CStockadeSpawn
import StockadeSystem
#if canImport(Glibc)
import Glibc
#endif

/// The fds that enter a jail, checked by what they are.
///
/// - A terminal enters only when it is the jail's own pseudo-terminal
///   (``LaunchRequest/terminal``): a caller's terminal would let the jail
///   change its modes, flush its input or read its keys. An inherited
///   stdin, stdout or stderr that is a terminal, and not replaced by a
///   passed fd, becomes `/dev/null` in the jail; `stockade run` gives the
///   jail a pty of its own instead.
/// - A directory fd reaches paths outside the jail's root (`openat(fd,
///   "../..")`): it enters only where the profile names it as one
///   (`[fds] directories`).
/// - Device nodes never enter but the ones every jail's `/dev` has (null,
///   zero, full, random, urandom); regular files (memfds too), pipes and
///   sockets do.
enum JailFDs {
    struct Plan {
        var map: [stk_fd_map]
        /// fds the launcher opened for the plan (`/dev/null`), closed after the launch.
        var opened: [Int32]
        /// The jail's number of its own terminal, made its controlling terminal.
        var controllingTerminal: Int32?
    }

    static func plan(_ request: LaunchRequest) throws -> Plan {
        let profile = request.profile
        var map = profile.passFDs.map { stk_fd_map(from: $0, to: $0) }
        map += request.passedFDs.map { stk_fd_map(from: $0.from, to: $0.to) }
        for m in map {
            guard (0...255).contains(m.to) else {
                throw JailError.invalidRequest("fd \(m.from) cannot land on \(m.to) in the jail (0...255)")
            }
            guard fcntl(m.from, F_GETFD) >= 0 else {
                throw JailError.invalidRequest("fd \(m.from) is to be passed into the jail but is not open")
            }
        }
        guard Set(map.map(\.to)).count == map.count else {
            throw JailError.invalidRequest("two fds are passed to the same number in the jail")
        }
        let own = request.terminal.map { identity($0) } ?? nil
        var controlling: Int32?
        for m in map {
            let fromProfile = profile.passFDs.contains(m.from) && m.from == m.to
            let what = fromProfile ? "[fds] pass: fd \(m.from)" : "fd \(m.from) (jail fd \(m.to))"
            var st = stat()
            guard fstat(m.from, &st) == 0 else {
                throw JailError.invalidRequest("\(what): fstat: \(errnoName(errno))")
            }
            switch st.st_mode & S_IFMT {
            case S_IFREG, S_IFIFO, S_IFSOCK:
                break
            case S_IFDIR:
                guard fromProfile, profile.passDirectories.contains(m.from) else {
                    throw JailError.invalidRequest("\(what) is a directory, which reaches paths outside the jail's root; name it in [fds] directories if the jail is to have it")
                }
            case S_IFCHR where isatty(m.from) == 1:
                guard let own, identity(m.from) == own else {
                    throw JailError.invalidRequest("\(what) is a terminal; a jail gets a terminal of its own (LaunchRequest.terminal, as stockade run gives one), never the caller's")
                }
                if controlling == nil || m.to < controlling! { controlling = m.to }
            case S_IFCHR where isHarmlessDevice(st.st_rdev):
                break
            default:
                throw JailError.invalidRequest("\(what) is a \(kind(st.st_mode)); only regular files, pipes, sockets, /dev/null and its kin, and named directories enter a jail")
            }
        }
        // Inherited stdio: never the caller's terminal.
        var opened: [Int32] = []
        let passedNumbers = Set(map.map(\.to))
        for n: Int32 in 0...2 where !passedNumbers.contains(n) && isatty(n) == 1 {
            if opened.isEmpty {
                let null = open("/dev/null", O_RDWR | O_CLOEXEC)
                guard null >= 0 else { throw JailError.launcherStep("open /dev/null for the jail's stdio", errno: errno) }
                opened.append(null)
            }
            map.append(stk_fd_map(from: opened[0], to: n))
        }
        return Plan(map: map, opened: opened, controllingTerminal: controlling)
    }

    /// /dev/null, zero, full, random, urandom: major 1, minors 3, 5, 7, 8, 9.
    static func isHarmlessDevice(_ rdev: dev_t) -> Bool {
        let major = (rdev >> 8) & 0xfff | (rdev >> 32) & 0xffff_f000
        let minor = rdev & 0xff | (rdev >> 12) & 0xffff_ff00
        return major == 1 && [3, 5, 7, 8, 9].contains(minor)
    }

    /// Device and inode: the same open terminal, whatever fd number.
    static func identity(_ fd: Int32) -> [UInt64]? {
        var st = stat()
        guard fstat(fd, &st) == 0 else { return nil }
        return [UInt64(st.st_dev), UInt64(st.st_ino), UInt64(st.st_rdev)]
    }

    static func kind(_ mode: mode_t) -> String {
        switch mode & S_IFMT {
        case S_IFCHR: return "character device"
        case S_IFBLK: return "block device"
        case S_IFLNK: return "symbolic link (an O_PATH fd)"
        case 0: return "kernel object without a file type (anonymous inode)"
        default: return "file of type \(String(mode & S_IFMT, radix: 8))"
        }
    }
}
