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
