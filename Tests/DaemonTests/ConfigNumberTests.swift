import Foundation
import StockadeConfig
import StockadeDaemon
import Testing

@Suite("The daemon configuration: numbers bounded, errors at their line")
struct ConfigNumberTests {
    @Test("durations and sizes beyond what the daemon's arithmetic holds are refused, naming the key")
    func bounded() {
        let base = "[daemon]\nsocket = \"/run/s.sock\"\naudit_log = \"/var/log/a.jsonl\"\n"
        for (line, key, message) in [("drain_timeout = 1e300", "daemon.drain_timeout", "longer than the longest"),
                                     ("drain_timeout = 9223372036854775807", "daemon.drain_timeout", "longer than the longest"),
                                     ("drain_timeout = \"nan\"", "daemon.drain_timeout", "expected a duration"),
                                     ("max_request_bytes = \"2000T\"", "daemon.max_request_bytes", "above the largest size"),
                                     ("socket_mode = \"77777777777\"", "daemon.socket_mode", "octal")] {
            do {
                _ = try DaemonConfig.parse(text: base + line + "\n", file: "/etc/x.toml")
                Issue.record("accepted: \(line)")
            } catch {
                #expect(error.line == 4 && error.key == key && error.message.contains(message), "\(error)")
            }
        }
    }
}

@Suite("The daemon refuses a profile that passes fds: its own would enter the jail")
struct DaemonPassedFDsTests {
    @Test("a tenant's or a via pool's profile with [fds] pass is an error at the profile key, naming the profile and the fds",
          arguments: ["tenant", "pool"])
    func refused(_ place: String) throws {
        let dir = try Fixture.makeDirectory()
        defer { Fixture.removeDirectory(dir) }
        let minimal = try String(contentsOfFile: Fixture.repo + "/profiles/minimal.toml", encoding: .utf8)
        try (minimal + "\n[fds]\npass = [3, 7]\n").write(toFile: dir + "/passing.toml", atomically: true, encoding: .utf8)
        let section = place == "tenant"
            ? "[tenant.a]\nprofile = \"\(dir)/passing.toml\"\ncommand = [\"/bin/true\"]\n"
            : "[via]\nsocket = \"\(dir)/via.sock\"\n[via.pool.p]\nprofile = \"\(dir)/passing.toml\"\nuids = [0]\n"
        let text = "[daemon]\nsocket = \"\(dir)/api.sock\"\naudit_log = \"\(dir)/a.jsonl\"\n" + section
        do {
            _ = try DaemonConfig.parse(text: text, file: dir + "/stockaded.toml")
            Issue.record("a profile passing fds 3 and 7 was accepted for a \(place)")
        } catch {
            #expect(error.file == dir + "/stockaded.toml" && error.line == (place == "tenant" ? 5 : 7), "\(error)")
            #expect(error.key == (place == "tenant" ? "tenant.a.profile" : "via.pool.p.profile"), "\(error)")
            #expect(error.message.contains("passing.toml passes fds 3, 7") && error.message.contains("daemon's fds"), "\(error)")
        }
        // The same profile without [fds] loads.
        try minimal.write(toFile: dir + "/passing.toml", atomically: true, encoding: .utf8)
        _ = try DaemonConfig.parse(text: text, file: dir + "/stockaded.toml")
    }
}
