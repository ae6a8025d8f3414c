import Foundation
import StockadeConfig
import StockadeJail
import Testing

@Suite("stockade lint: warnings for settings that weaken the jail")
struct LintWarningTests {
    /// The findings for `text`, placed by its own line index.
    static func findings(_ text: String) throws -> [LintFinding] {
        let profile = try Profile.parse(text: text, file: "p.toml")
        return ProfileLint.findings(profile, index: TOMLLineIndex(text: text))
    }

    /// A profile that draws no warning: the base every case below adds one setting to.
    static let quiet = """
        [jail]
        time_limit = "1m"

        """

    @Test("the quiet base draws no warning")
    func quietBase() throws {
        #expect(try Self.findings(Self.quiet).isEmpty)
    }

    @Test("each dangerous setting draws its own warning at its own line", arguments: [
        ("[seccomp]\ndefault = \"allow\"\n", "seccomp.default", 5, "every system call not denied"),
        ("[seccomp]\nbase = \"none\"\ndefault = \"log\"\n", "seccomp.default", 6, "the default action permits"),
        ("[seccomp]\nallow = [\"keyctl\"]\nallow_dangerous = { keyctl = \"a reason\" }\n", "seccomp.allow_dangerous.keyctl", 6,
         "lifts the hardening"),
        ("[[mount]]\nsource = \"/proc\"\ntarget = \"/hostproc\"\n", "mount[0].source", 5, "host's /proc"),
        ("[[mount]]\nsource = \"/proc/1\"\ntarget = \"/p1\"\n", "mount[0].source", 5, "host's /proc"),
        ("[[mount]]\nsource = \"/sys\"\ntarget = \"/hostsys\"\n", "mount[0].source", 5, "host's /sys"),
        ("[[mount]]\nsource = \"/\"\ntarget = \"/host\"\n", "mount[0].source", 5, "/proc and /sys"),
        ("[[mount]]\nsource = \"/sys/fs/cgroup\"\ntarget = \"/cg\"\nwritable = true\n", "mount[0].source", 5, "writable bind of /sys"),
        ("[[mount]]\ntype = \"tmpfs\"\ntarget = \"/scratch\"\n", "mount[0].type", 5, "has no size"),
        ("[filesystem]\nreadonly_root = false\n", "filesystem.readonly_root", 5, "create files anywhere"),
        ("[jail]\nnew_session = false\n", "jail.new_session", 5, "controlling terminal"),
        ("[landlock]\nenabled = false\n", "landlock.enabled", 5, "no Landlock rules"),
        ("[fds]\npass = [5, 6]\n", "fds.pass", 5, "host fds 5, 6"),
        ("[user]\nhost_base = 200000\n", "user.host_base", 5, "fixed host id base"),
        ("[user]\nhost_base = 100000\n", "user.host_base", 5, "fixed host id base"),
    ])
    func eachWarning(setting: String, key: String, line: Int, message: String) throws {
        // [jail] twice is not TOML: new_session goes into the base's table.
        let text = setting.hasPrefix("[jail]") ? Self.quiet + setting.dropFirst("[jail]\n".count)
            : Self.quiet + "\n" + setting
        let all = try Self.findings(text)
        let finding = try #require(all.first { $0.key == key }, "no \(key) warning in \(all)")
        #expect(finding.file == "p.toml")
        #expect(finding.line == (setting.hasPrefix("[jail]") ? 3 : line), "\(finding)")
        #expect(finding.message.contains(message), "\(finding)")
        #expect(finding.description.hasPrefix("p.toml:\(finding.line!): warning: \(key): "), "\(finding)")
    }

    @Test("narrow read-only binds below /sys and sized tmpfs mounts stay quiet")
    func quietMounts() throws {
        let text = Self.quiet + """
            [[mount]]
            source = "/sys/devices/system/cpu"

            [[mount]]
            type = "tmpfs"
            target = "/tmp"
            size = "64M"
            """
        #expect(try Self.findings(text).isEmpty)
    }

    @Test("a permissive default from an imported Docker profile is placed at the import")
    func importedDefault() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("stockade-lint-\(getpid())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        try #"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[]}"#.write(to: dir.appendingPathComponent("allow.json"),
                                                                          atomically: true, encoding: .utf8)
        let text = Self.quiet + "[seccomp]\nimport = \"docker:allow.json\"\n"
        let profile = try Profile.parse(text: text, file: dir.appendingPathComponent("p.toml").path)
        let findings = ProfileLint.findings(profile, index: TOMLLineIndex(text: text))
        let finding = try #require(findings.first { $0.key == "seccomp.import" }, "\(findings)")
        #expect(finding.line == 4)
    }
}
