import Foundation
import StockadeJail
import Testing

/// `stockade run` and `stockade lint` on numbers no launcher can hold, and
/// lint's warnings and --strict, through the built CLI.
extension JailTests {
    static var cli: String { stockadeCLI }

    @Test("bad numbers on the command line and in profiles end in a message, never a crash")
    func badNumbersThroughTheCLI() throws {
        try #require(FileManager.default.isExecutableFile(atPath: Self.cli), "build the CLI first")
        let profile = packageRoot + "/profiles/minimal.toml"
        for (value, message) in [("1e300s", "longer than the longest limit"), ("9223372036854775807", "longer than the longest limit"),
                                 ("nan", "cannot read"), ("-1s", "cannot read"), ("0s", "cannot read")] {
            let run = try host([Self.cli, "run", "-p", profile, "--time-limit=" + value, "--", "/bin/true"])
            #expect(run.status == 64 && run.output.contains("--time-limit") && run.output.contains(message), "\(value): \(run)")
        }
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("stockade-cli-numbers-\(getpid())").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        for (name, text) in [("float", "[jail]\ntime_limit = 1e300\n"), ("int", "[jail]\ntime_limit = 9223372036854775807\n"),
                             ("string", "[jail]\ntime_limit = \"1e300s\"\n")] {
            let path = "\(dir)/\(name).toml"
            try text.write(toFile: path, atomically: true, encoding: .utf8)
            let lint = try host([Self.cli, "lint", path])
            #expect(lint.status == 1 && lint.output.hasPrefix("\(path):2: jail.time_limit: is longer than"), "\(lint)")
            let run = try host([Self.cli, "run", "-p", path, "--", "/bin/true"])
            #expect(run.status == 125 && run.output.contains("\(path):2: jail.time_limit"), "\(run)")
        }
    }

    @Test("stockade lint warns with file:line, and --strict turns warnings into exit status 1")
    func lintStrict() throws {
        try #require(FileManager.default.isExecutableFile(atPath: Self.cli), "build the CLI first")
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("stockade-lint-cli-\(getpid())").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let risky = "\(dir)/risky.toml", quiet = "\(dir)/quiet.toml"
        try "[jail]\ntime_limit = \"1m\"\nnew_session = false\n\n[landlock]\nenabled = false\n"
            .write(toFile: risky, atomically: true, encoding: .utf8)
        try "[jail]\ntime_limit = \"1m\"\n".write(toFile: quiet, atomically: true, encoding: .utf8)

        let plain = try host([Self.cli, "lint", risky])
        #expect(plain.status == 0, "\(plain)")
        #expect(plain.output.contains("\(risky):3: warning: jail.new_session: "), "\(plain)")
        #expect(plain.output.contains("\(risky):6: warning: landlock.enabled: "), "\(plain)")
        #expect(plain.output.hasSuffix("\(risky): ok\n"), "\(plain)")

        let strict = try host([Self.cli, "lint", "--strict", risky, quiet])
        #expect(strict.status == 1, "\(strict)")
        #expect(strict.output.contains("\(risky):3: error: jail.new_session: "), "\(strict)")
        #expect(strict.output.contains("\(risky): 2 warnings (--strict: errors)"), "\(strict)")
        #expect(strict.output.contains("\(quiet): ok"), "\(strict)")

        let clean = try host([Self.cli, "lint", "--strict", quiet])
        #expect(clean.status == 0 && clean.output == "\(quiet): ok\n", "\(clean)")
    }
}
