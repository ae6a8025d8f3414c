import Foundation
import Testing
import StockadeJail
import SystemPackage

/// A launcher that holds many fds (stockaded with a thousand workers holds
/// thousands) launches jails whose RLIMIT_NOFILE is far below its own fd
/// count: the jail's set-up needs free fd numbers under that limit after
/// setting it (the init's go pipe, Landlock's ruleset and rule paths).
@Suite("A launcher's large fd table")
struct LauncherFDTableTests {
    /// The test process's soft RLIMIT_NOFILE, raised towards its hard limit
    /// (as stockaded raises its own) so that 1,100 held fds leave room for
    /// the tests running beside this one.
    static func raisedNoFile() -> rlim_t {
        var limit = rlimit()
        getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
        if limit.rlim_cur < 8192 && limit.rlim_max > limit.rlim_cur {
            var raised = limit
            raised.rlim_cur = min(limit.rlim_max, 65536)
            if setrlimit(Int32(RLIMIT_NOFILE.rawValue), &raised) == 0 { limit = raised }
        }
        return limit.rlim_cur
    }

    @Test("1,100 launcher fds below a jail's nofile = 1024 neither stop the launch nor reach the worker",
          .enabled(if: raisedNoFile() >= 4096, "needs a hard RLIMIT_NOFILE of at least 4096 to hold 1,100 fds beside the other tests"))
    func manyLauncherFDs() throws {
        // Every number from the lowest free one up to past 1024 is taken,
        // as in a daemon holding a thousand workers: the jail's copy of the
        // table has no free number below its limit unless the set-up frees
        // some.
        var held: [Int32] = []
        defer { for fd in held { close(fd) } }
        while held.count < 1100 {
            let fd = open("/dev/null", O_RDONLY | O_CLOEXEC)
            try #require(fd >= 0, "open /dev/null: errno \(errno)")
            held.append(fd)
        }
        try #require((held.max() ?? 0) > 1024)
        let profile = try minimalProfile()
        try #require(profile.rlimits.contains { $0.name == "nofile" && ($0.soft ?? .max) <= 1024 }, "minimal.toml sets nofile = 1024")
        // The worker sees its stdio and nothing of the launcher's.
        let run = try runJailed(profile, ["/bin/sh", "-c", "ls /proc/self/fd | wc -l; echo ok"])
        #expect(run.exit.status == 0, "\(run.exit) \(run.stderr)")
        #expect(run.lines.last == "ok", "\(run)")
        // ls's own: 0, 1, 2 and the directory it reads.
        #expect((run.lines.first.flatMap { Int($0.trimmingCharacters(in: .whitespaces)) } ?? 99) <= 4, "\(run)")
    }
}
