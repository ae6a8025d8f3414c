import Foundation
import Testing
@testable import StockadeJail

/// Seccomp and Landlock in real jails started by the Launcher, the way
/// `stockade run` starts them: the filter and the ruleset come from
/// `JailSecurity.prepare`, the C trampoline applies them last.
extension SeccompTests {
@Suite struct JailEndToEndTests {
    static let minimal: String = (try? String(contentsOfFile: Helpers.repository.appendingPathComponent("profiles/minimal.toml").path, encoding: .utf8)) ?? ""

    /// Runs `command` in a jail from `text` with the helpers bound at
    /// /helpers; stdout and stderr go to one host file.
    static func jailed(_ text: String, _ command: [String], extraMounts: [MountSpec] = []) throws -> (exit: JailExit, output: String) {
        let profile = try Profile.parse(text: text, file: "e2e.toml")
        var request = LaunchRequest(profile: profile, command: command)
        request.extraMounts = [MountSpec(kind: .bind, source: try Helpers.path("sysc").replacingOccurrences(of: "/sysc", with: ""),
                                         target: "/helpers")] + extraMounts
        let (exit, output, _) = try launchCapturingOutput(&request)
        return (exit, output)
    }

    /// Prepares and launches `request` with its stdout and stderr on one
    /// host file, waits for the jail, and returns what it printed.
    static func launchCapturingOutput(_ request: inout LaunchRequest) throws -> (exit: JailExit, output: String, jail: Jail) {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("stockade-e2e-\(UUID().uuidString).out").path
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw Helpers.BuildError(description: "open \(path): \(errno)") }
        defer { unlink(path) }
        request.passedFDs = [(fd, 1), (fd, 2)]
        try JailSecurity.prepare(&request)
        let jail: Jail
        do {
            jail = try Launcher.launch(request)
        } catch {
            close(fd)
            throw error
        }
        close(fd)
        let exit = try jail.wait(timeLimit: .seconds(120))
        return (exit, (try? String(contentsOfFile: path, encoding: .utf8)) ?? "", jail)
    }

    /// One shell in one jail runs every case; each prints sysc's line (if
    /// it lived) and `= STATUS`.
    static func sysc(_ text: String, _ cases: [[String]]) throws -> [SyscallOutcome] {
        let script = cases.map { "/helpers/sysc \($0.joined(separator: " ")); echo \"= $?\"" }.joined(separator: "\n")
        let (exit, output) = try jailed(text, ["/bin/sh", "-c", script])
        guard exit.status == 0 else { throw Helpers.BuildError(description: "jail: \(exit) \(output)") }
        var results: [SyscallOutcome] = []
        var last: String?
        for line in output.split(separator: "\n").map(String.init) {
            if line.hasPrefix("= ") {
                let status = Int32(line.dropFirst(2)) ?? -1
                if status >= 128 { results.append(.killed(status - 128)) }
                else if let l = last { results.append(SyscallOutcome(.exited(0, stdout: l, stderr: ""))) }
                else { results.append(.broken("status \(status)")) }
                last = nil
            } else {
                last = line
            }
        }
        return results
    }

    @Test("every hardened call is denied inside a jail, x32 and int 0x80 kill")
    func hardeningInJail() throws {
        let denied = HardeningTests.denied
        var cases = denied.map { [String(nr($0.name))] + $0.args.map { String($0) } }
        cases += [["--x32", "39"], ["--int80", "20"], ["--int80", "310", "0"], ["1000"]]
        let got = try Self.sysc(Self.minimal, cases)
        try #require(got.count == cases.count, "\(got)")
        for (c, g) in zip(denied, got) {
            if case .errno(let e) = c.expect { #expect(g == .errno(e), "\(c): \(g)") }
        }
        #expect(got[denied.count] == .killed(SIGSYS))
        #expect(got[denied.count + 1] == .killed(SIGSYS))
        #expect(got[denied.count + 2] == .killed(SIGSYS))
        #expect(got[denied.count + 3] == .errno(38))
    }

    @Test("the same profile runs ordinary work in the jail")
    func worksInJail() throws {
        let (exit, output) = try Self.jailed(Self.minimal, ["/helpers/works"])
        #expect(exit.status == 0, "\(output)")
        #expect(output.split(separator: "\n").filter { $0.hasPrefix("ok ") }.count == 9, "\(output)")
    }

    static let python = Helpers.repository.appendingPathComponent(".venv").path
    static var venvIsBuilt: Bool { FileManager.default.isExecutableFile(atPath: python + "/bin/python3") }

    @Test("the venv's Python imports numpy in a jail with seccomp and Landlock",
          .enabled(if: venvIsBuilt, "needs the repository venv (make venv)"))
    func numpyInJail() throws {
        let text = Self.minimal
        let script = "import numpy, threading; a = numpy.ones((300, 300)); t = threading.Thread(target=lambda: None); t.start(); t.join(); print('sum', int((a @ a).sum()))"
        let (exit, output) = try Self.jailed(text, [Self.python + "/bin/python3", "-c", script],
                                             extraMounts: [MountSpec(kind: .bind, source: Self.python, target: Self.python)])
        #expect(exit.status == 0, "\(output)")
        #expect(output.contains("sum 27000000"), "\(output)")
    }

    /// uid 0 inside, a writable root: only Landlock stands between the
    /// worker and a new directory in `/`, or a TCP bind.
    static let rootInside = minimal
        .replacingOccurrences(of: "uid = 1000", with: "uid = 0")
        .replacingOccurrences(of: "gid = 1000", with: "gid = 0")
        .replacingOccurrences(of: "root_size = \"1M\"", with: "root_size = \"1M\"\nreadonly_root = false")

    static let probe = """
    mkdir /made-here 2>/dev/null && echo mkdir-ok || echo mkdir-denied
    python3 -c '
    import socket
    for port in (8080, 8081):
        s = socket.socket()
        try:
            s.bind(("0.0.0.0", port)); print("bind", port, "ok")
        except OSError as e:
            print("bind", port, e.errno)
    '
    """

    @Test("Landlock refuses what mounts and DAC would allow, and grants tcp_bind ports",
          .enabled(if: LandlockPlan.kernelABI() >= 4, "needs Landlock ABI 4 for TCP rules"))
    func landlockInJail() throws {
        let enforced = try Self.jailed(Self.rootInside + "\n[landlock]\ntcp_bind = [8080]\n", ["/bin/sh", "-c", Self.probe])
        #expect(enforced.output == "mkdir-denied\nbind 8080 ok\nbind 8081 13\n", "\(enforced.output)")
        let off = try Self.jailed(Self.rootInside + "\n[landlock]\nenabled = false\n", ["/bin/sh", "-c", Self.probe])
        #expect(off.output == "mkdir-ok\nbind 8080 ok\nbind 8081 ok\n", "\(off.output)")
    }
}
}
