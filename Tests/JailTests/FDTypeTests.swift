import Foundation
import Testing
import StockadeJail
import StockadeConfig
import StockadeSystem
import SystemPackage

/// Fds handed to a jail are checked by what they are: an inherited
/// directory fd reaches the host's files through `openat(fd, "../..")`.
@Suite("Fds entering a jail")
struct FDTypeTests {
    static let O_PATH: Int32 = 0o10000000
    /// `fd` copied to a free number at or above 200 (the profile passes fds
    /// under their own numbers).
    static func high(_ fd: Int32) -> Int32 {
        let n = fcntl(fd, F_DUPFD_CLOEXEC, 200)
        close(fd)
        return n
    }

    static func profile(passing fd: Int32, directories: [Int32] = []) throws -> Profile {
        try minimalProfile { $0 + "\n[fds]\npass = [\(fd)]\ndirectories = [\(directories.map(String.init).joined(separator: ", "))]\n" }
    }

    /// The attacker's script: read /etc/passwd through the inherited fd.
    static func readThrough(_ fd: Int32) -> [String] {
        ["/bin/sh", "-c", "cat /proc/self/fd/\(fd)/passwd /proc/self/fd/\(fd)/../etc/passwd 2>&1; ls -l /proc/self/fd/\(fd) 2>&1; exit 0"]
    }

    @Test("a directory fd in [fds] pass is refused by name; O_PATH and O_DIRECTORY variants too")
    func directoryRefused() throws {
        for flags in [O_RDONLY | O_DIRECTORY, Self.O_PATH | O_DIRECTORY, Self.O_PATH] {
            let fd = Self.high(open("/etc", flags | O_CLOEXEC))
            defer { close(fd) }
            try #require(fd >= 200)
            let error = #expect(throws: JailError.self) {
                _ = try runJailed(try Self.profile(passing: fd), Self.readThrough(fd))
            }
            #expect(error?.description.contains("[fds] pass: fd \(fd) is a directory") == true, "\(String(describing: error))")
        }
    }

    @Test("a directory fd among the request's fds is refused; a device other than /dev/null's kin too")
    func requestFdsChecked() throws {
        let dir = open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        defer { close(dir) }
        let e1 = #expect(throws: JailError.self) {
            _ = try runJailed(try minimalProfile(), ["/bin/true"]) { $0.passedFDs.append((dir, 9)) }
        }
        #expect(e1?.description.contains("is a directory") == true, "\(String(describing: e1))")
        let link = open("/proc/self/exe", Self.O_PATH | O_NOFOLLOW | O_CLOEXEC)
        defer { close(link) }
        let e2 = #expect(throws: JailError.self) {
            _ = try runJailed(try minimalProfile(), ["/bin/true"]) { $0.passedFDs.append((link, 9)) }
        }
        #expect(e2?.description.contains("symbolic link") == true, "\(String(describing: e2))")
        let mem = open("/dev/kmsg", O_RDONLY | O_CLOEXEC)
        if mem >= 0 {
            defer { close(mem) }
            let e3 = #expect(throws: JailError.self) {
                _ = try runJailed(try minimalProfile(), ["/bin/true"]) { $0.passedFDs.append((mem, 9)) }
            }
            #expect(e3?.description.contains("character device") == true, "\(String(describing: e3))")
        }
        // /dev/null as stdin, a pipe, a regular file: fine.
        let null = open("/dev/null", O_RDONLY | O_CLOEXEC)
        defer { close(null) }
        let run = try runJailed(try minimalProfile(), ["/bin/sh", "-c", "cat; echo ok"]) { $0.passedFDs.append((null, 0)) }
        #expect(run.exit.status == 0 && run.stdout == "ok\n", "\(run)")
    }

    @Test("a directory the profile names as one enters; the name must be one of pass")
    func namedDirectory() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("stockade-fd-\(getpid())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        try "shared\n".write(to: dir.appendingPathComponent("f"), atomically: true, encoding: .utf8)
        let fd = Self.high(open(dir.path, O_RDONLY | O_DIRECTORY | O_CLOEXEC))
        defer { close(fd) }
        // Landlock would refuse reading beneath a directory outside its
        // rules: off here, to see that the named directory itself entered.
        let profile = try minimalProfile {
            $0 + "\n[fds]\npass = [\(fd)]\ndirectories = [\(fd)]\n[landlock]\nenabled = false\n"
        }
        let run = try runJailed(profile, ["/bin/cat", "/proc/self/fd/\(fd)/f"])
        #expect(run.stdout == "shared\n", "\(run)")
        let bad = #expect(throws: ProfileError.self) {
            _ = try minimalProfile { $0 + "\n[fds]\npass = [\(fd)]\ndirectories = [\(fd + 1)]\n" }
        }
        #expect(bad?.description.contains("directories") == true && bad?.description.contains("not in [fds] pass") == true,
                "\(String(describing: bad))")
    }
}
