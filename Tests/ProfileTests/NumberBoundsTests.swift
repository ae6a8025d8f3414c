import Foundation
import StockadeCgroups
import StockadeConfig
import StockadeJail
import StockadeSeccomp
import Testing

private func parse(_ text: String) throws(ProfileError) -> Profile {
    try Profile.parse(text: text, file: "p.toml")
}

@Suite("Profiles: every number bounded before it is used")
struct NumberBoundsTests {
    /// The readers as they were written over Strings and Foundation, kept
    /// here to hold the byte readers to them on every ASCII text.
    static func referenceSize(_ text: String) -> SizeValue? {
        let s = text.trimmingCharacters(in: " ").uppercased()
        if s == "MAX" || s == "UNLIMITED" { return .unlimited }
        var digits = Substring(s)
        var suffix = ""
        while let last = digits.last, !last.isNumber && last != "." { suffix = String(last) + suffix; digits = digits.dropLast() }
        guard let number = Double(digits), number >= 0, number.isFinite else { return nil }
        let shifts: [String: Int] = ["": 0, "B": 0, "K": 10, "KB": 10, "KIB": 10, "M": 20, "MB": 20, "MIB": 20,
                                     "G": 30, "GB": 30, "GIB": 30, "T": 40, "TB": 40, "TIB": 40]
        guard let shift = shifts[suffix] else { return nil }
        let value = number * Double(UInt64(1) << UInt64(shift))
        return .bytes(value < 1.8e19 ? UInt64(value) : UInt64.max)
    }

    static func referenceDuration(_ text: String) -> DurationValue {
        let s = text.trimmingCharacters(in: " ")
        var number = Substring(s)
        var scale = 1.0
        for (unit, unitScale) in [("ms", 0.001), ("us", 0.000001), ("s", 1), ("m", 60), ("h", 3600)] where s.hasSuffix(unit) {
            number = number.dropLast(unit.count)
            scale = unitScale
            break
        }
        guard !number.isEmpty, number.allSatisfy({ $0.isASCII && ($0.isNumber || ".eE+-".contains($0)) }),
              let n = Double(number), n.isFinite, n >= 0 else { return .unreadable }
        return DurationValue(seconds: n * scale)
    }

    @Test("sizes and durations read on bytes agree with the String readers on every ASCII text; other text is no size")
    func bytesReadersAgree() {
        var rng = SystemRandomNumberGenerator()
        let pieces = ["0", "1", "5", "9", "12", ".", "e", "E", "+", "-", " ", "k", "K", "m", "M", "g", "G", "t", "T", "b", "B",
                      "i", "I", "s", "h", "u", "ms", "us", "iB", "max", "MaX", "unlimited", "x", "0x", "inf", "nan", "1e3", "_"]
        var texts = ["", " ", "512M", "2GiB", "1.5K", "max", " max ", "-1", "M", "1e3M", "5.M", ".5G", "+5m", "1 M",
                     "30s", "500ms", "2m", "1h", "1.5s", "1e3ms", " 30 s", "30S", "1us", "0x10s", "nan", "1e", "s", "--1s"]
        for _ in 0..<4000 {
            texts.append((0..<Int.random(in: 1...5, using: &rng)).map { _ in pieces.randomElement(using: &rng)! }.joined())
        }
        for text in texts {
            #expect(SizeValue(parsing: text) == Self.referenceSize(text), "\(text.debugDescription)")
            #expect(DurationValue(parsing: text) == Self.referenceDuration(text), "\(text.debugDescription)")
        }
        // Text outside ASCII: no size (the String reader mapped "ı" onto "I"), no duration.
        for text in ["1kıb", "unlımıted", "5٣M", "1M\u{301}", "١٠s", "5s\u{301}"] {
            #expect(SizeValue(parsing: text) == nil, "\(text)")
            #expect(DurationValue(parsing: text) == .unreadable, "\(text)")
        }
    }

    @Test("time limits too long for the launcher's arithmetic are refused at their line, in every spelling")
    func longTimeLimits() throws {
        for value in ["1e300", "9223372036854775807", "\"1e300s\"", "\"9223372036854775807s\"", "31536001", "\"8761h\"",
                      "\"525601m\"", "1.7976931348623157e308", "\"99999999999999999999999ms\""] {
            expectError("[jail]\ntime_limit = \(value)\n", line: 2, key: "jail.time_limit", contains: "longer than the longest")
        }
        // The bound itself, in three spellings, is accepted and survives the launcher's arithmetic.
        for value in ["31536000", "\"8760h\"", "31536000.0"] {
            let limit = try #require(try parse("[jail]\ntime_limit = \(value)\n").timeLimit)
            #expect(limit == DurationValue.longest)
            #expect(Jail.pollTimeout(limit) == Int32.max)
        }
    }

    @Test("durations that are not numbers are refused, not read as zero or infinity")
    func unreadableDurations() {
        for value in ["\"nan\"", "\"inf\"", "\"-inf\"", "nan", "inf", "-1", "-0.5", "\"0x10s\"", "\"1e\"", "\"s\"", "\"\"",
                      "\"--1s\"", "true", "[1]"] {
            expectError("[jail]\ntime_limit = \(value)\n", line: 2, key: "jail.time_limit", contains: "expected a duration")
        }
        #expect(DurationValue(parsing: "1.5s") == .value(.milliseconds(1500)))
        #expect(DurationValue(parsing: "1e3ms") == .value(.seconds(1)))
        #expect(DurationValue(parsing: "1e300s") == .tooLong)
        #expect(DurationValue(parsing: "nan") == .unreadable)
        #expect(DurationValue(seconds: .infinity) == .unreadable)
        #expect(DurationValue(seconds: -0.0) == .value(.zero))
    }

    @Test("poll timeouts saturate for any duration a caller passes")
    func pollTimeouts() {
        #expect(Jail.pollTimeout(.milliseconds(5)) == 6)
        #expect(Jail.pollTimeout(.zero) == 1)
        #expect(Jail.pollTimeout(.seconds(-3)) == 0)
        #expect(Jail.pollTimeout(.seconds(Int64.max)) == Int32.max)
        #expect(Jail.pollTimeout(.seconds(Int64(Int32.max / 1000) - 1)) < Int32.max)
    }

    @Test("sizes above 1024T are refused wherever a size is read, naming the key")
    func hugeSizes() throws {
        let cases: [(String, Int, String)] = [
            ("[filesystem]\nroot_size = \"17179869184G\"\n", 2, "filesystem.root_size"),
            ("[limits]\nmemory_max = \"15000000T\"\nswap_max = \"15000000T\"\n", 2, "limits.memory_max"),
            ("[limits]\nswap_max = 9223372036854775807\n", 2, "limits.swap_max"),
            ("[rlimits]\nnofile = \"2000T\"\n", 2, "rlimits.nofile"),
            ("[[mount]]\ntype = \"tmpfs\"\ntarget = \"/t\"\nsize = \"1025T\"\n", 4, "mount[0].size"),
        ]
        for (text, line, key) in cases {
            expectError(text, line: line, key: key, contains: "above the largest size")
        }
        let p = try parse("[limits]\nmemory_max = \"1024T\"\nswap_max = \"1024T\"\n[rlimits]\nas = \"max\"\n")
        #expect(p.limits.memoryMax == SizeValue.largest)
        #expect(p.rlimits.first { $0.name == "as" }?.soft == nil)
        // A tenant holding the most jails of this size still adds up without overflow.
        #expect(p.limits.shortfall(asking: p.limits, held: Array(repeating: p.limits, count: 1023)) != nil)
    }

    @Test("ids, fds, ports, modes and counts are checked against their ranges")
    func otherNumbers() {
        expectError("[user]\nuid = 4294967296\n", line: 2, key: "user.uid", contains: "out of range")
        expectError("[user]\nhost_base = -1\n", line: 2, key: "user.host_base", contains: "out of range")
        expectError("[user]\nhost_base = 4294967295\n", line: 2, key: "user.host_base", contains: "out of range")
        expectError("[fds]\npass = [3, 9223372036854775807]\n", line: 2, key: "fds.pass", contains: "cannot be passed")
        expectError("[landlock]\ntcp_bind = [65536]\n", line: 2, key: "landlock.tcp_bind", contains: "not a TCP port")
        expectError("[[mount]]\ntype = \"dir\"\ntarget = \"/d\"\nmode = \"77777777777\"\n", line: 4, key: "mount[0].mode",
                    contains: "octal")
        expectError("[limits]\npids_max = 9223372036854775807\n", line: 2, key: "limits.pids_max", contains: "out of range")
        expectError("[limits]\ncpu = 1e300\n", line: 2, key: "limits.cpu", contains: "cannot be enforced")
        expectError("[limits]\ncpu = \"nan\"\n", line: 2, key: "limits.cpu", contains: "cannot be enforced")
        expectError("[limits]\ncpu_max = \"99999999999999999999 100000\"\n", line: 2, key: "limits.cpu_max", contains: "QUOTA PERIOD")
        expectError("[limits]\ncpu_weight = 9223372036854775807\n", line: 2, key: "limits.cpu_weight", contains: "out of range")
    }

    @Test("a Docker profile's errnoRet outside 16 bits is refused, not truncated or trapped")
    func dockerErrno() throws {
        for json in [#"{"defaultAction":"SCMP_ACT_ERRNO","defaultErrnoRet":9999999999}"#,
                     #"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[{"names":["read"],"action":"SCMP_ACT_ERRNO","errnoRet":-1}]}"#] {
            #expect(throws: DockerSeccompProfile.ImportError.self) {
                _ = try DockerSeccompProfile.parse(data: Data(json.utf8), name: "d.json", kernel: (6, 1))
            }
        }
        let ok = try DockerSeccompProfile.parse(data: Data(#"{"defaultAction":"SCMP_ACT_ERRNO","defaultErrnoRet":38}"#.utf8),
                                                name: "d.json", kernel: (6, 1))
        #expect(ok.defaultAction == .errno(38))
    }

    @Test("the tenants file's numbers are bounded too")
    func tenantsNumbers() {
        for (text, key) in [("[tenant.a]\nmemory_max = \"1e300\"\n", "tenant.a.memory_max"),
                            ("[tenant.a]\nmemory_max = \"2000T\"\n", "tenant.a.memory_max"),
                            ("[tenant.a]\nmax_jails = 9223372036854775807\n", "tenant.a.max_jails")] {
            do {
                _ = try TenantsFile.parse(text: text, file: "t.toml")
                Issue.record("accepted: \(text)")
            } catch {
                #expect(error.file == "t.toml" && error.line == 2 && error.key == key, "\(error)")
            }
        }
    }
}
