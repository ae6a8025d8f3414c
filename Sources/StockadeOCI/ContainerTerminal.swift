import StockadeSystem
import SystemPackage
import CStockadeSpawn
import StockadeJail
#if canImport(Glibc)
import Glibc
#endif

/// A container's terminal in the container's own devpts, as runc makes it,
/// so that the pty's follower is `/dev/pts/N` inside and `ttyname` names it.
enum ContainerTerminal {
    static let TIOCGPTN: UInt = 0x8004_5430
    static let TIOCSPTLCK: UInt = 0x4004_5431
    static let TIOCGPTPEER: UInt = 0x5441

    /// For `create`: a new devpts instance (attached later by the container
    /// at its /dev/pts) and a pty opened in it; returns the pty, the
    /// instance's mount fd and the pty's name below /dev ("pts/0").
    static func newInstance() throws -> (PseudoTerminal, Int32, String) {
        let mount = stk_devpts_instance()
        guard mount >= 0 else { throw RuntimeError("process.terminal: make a devpts instance for the container: \(errnoName(-mount))") }
        do {
            let (pty, n) = try open(ptmx: mount, "ptmx", what: "the container's devpts")
            return (pty, mount, "pts/\(n)")
        } catch {
            close(mount)
            throw error
        }
    }

    /// For `exec`: a pty in the running container's /dev/pts, reached
    /// through its PID 1's root without following any link, and checked to
    /// be a devpts ptmx (the container may have mounted over /dev/pts).
    static func inContainer(initPID: Int32) throws -> PseudoTerminal {
        let root = Glibc.open("/proc/\(initPID)/root", OpenFlags.path | O_DIRECTORY | O_CLOEXEC)
        guard root >= 0 else { throw RuntimeError("container not running (open /proc/\(initPID)/root: \(errnoName(errno)))") }
        defer { close(root) }
        return try open(ptmx: root, "dev/pts/ptmx", what: "the container's /dev/pts").0
    }

    /// Opens the ptmx at `path` beneath `dir` (no link followed), checks it,
    /// unlocks the pty and opens its follower.
    static func open(ptmx dir: Int32, _ path: String, what: String) throws -> (PseudoTerminal, UInt32) {
        let m = stk_openat2(dir, path, O_RDWR | O_NOCTTY | O_CLOEXEC, Resolve.beneath | Resolve.noSymlinks | Resolve.noMagicLinks)
        guard m >= 0 else { throw RuntimeError("process.terminal: open \(path) in \(what): \(errnoName(errno))") }
        var st = stat()
        guard fstat(m, &st) == 0, (st.st_mode & S_IFMT) == S_IFCHR, DeviceNumber(rdev: UInt64(st.st_rdev)) == DeviceNumber(major: 5, minor: 2) else {
            close(m)
            throw RuntimeError("process.terminal: \(path) in \(what) is not a ptmx (c 5:2)")
        }
        var unlock: Int32 = 0
        var number: UInt32 = 0
        guard stk_ioctl_ptr(m, TIOCSPTLCK, &unlock) == 0, stk_ioctl_ptr(m, TIOCGPTN, &number) == 0 else {
            let e = errno
            close(m)
            throw RuntimeError("process.terminal: unlock the pty: \(errnoName(e))")
        }
        // TIOCGPTPEER takes the open flags as its argument, not a pointer.
        let p = stk_ioctl_ptr(m, TIOCGPTPEER, UnsafeMutableRawPointer(bitPattern: UInt(O_RDWR | O_NOCTTY | O_CLOEXEC)))
        guard p >= 0 else {
            let e = errno
            close(m)
            throw RuntimeError("process.terminal: open the pty's follower: \(errnoName(e))")
        }
        return (PseudoTerminal(master: FileDescriptor(rawValue: m), peer: FileDescriptor(rawValue: p)), number)
    }
}
