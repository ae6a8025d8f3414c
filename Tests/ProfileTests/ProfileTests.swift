import Foundation
import StockadeConfig
import StockadeJail
import Testing

private func parse(_ text: String) throws(ProfileError) -> Profile {
    try Profile.parse(text: text, file: "p.toml")
}

func expectError(_ text: String, line: Int?, key: String, contains message: String,
                         sourceLocation: SourceLocation = #_sourceLocation) {
    do {
        _ = try parse(text)
        Issue.record("profile was accepted", sourceLocation: sourceLocation)
    } catch {
        #expect(error.file == "p.toml", sourceLocation: sourceLocation)
        #expect(error.line == line, "\(error)", sourceLocation: sourceLocation)
        #expect(error.key == key, "\(error)", sourceLocation: sourceLocation)
        #expect(error.message.contains(message), "\(error)", sourceLocation: sourceLocation)
    }
}

@Suite("Profiles: parsing, validation, messages")
struct ProfileTests {
    @Test("names keep their rules when checked on bytes: the jail's takes any letters and digits, the hostname ASCII ones, environment names [A-Za-z_][A-Za-z0-9_]*")
    func nameCharacters() throws {
        for name in ["jail-1.x_y", "jäil", "٣x", "e\u{301}", "Ωmega"] {
            #expect(try parse("[jail]\nname = \"\(name)\"\n").name == name, "\(name)")
        }
        for name in ["a b", "a/b", "a:b"] {
            expectError("[jail]\nname = \"\(name)\"\n", line: 2, key: "jail.name", contains: "letters")
        }
        #expect(try parse("[jail]\nhostname = \"host-1.example\"\n").hostname == "host-1.example")
        for host in ["hôst", "h_st", "e\u{301}", "٣"] {
            expectError("[jail]\nhostname = \"\(host)\"\n", line: 2, key: "jail.hostname", contains: "ASCII")
        }
        let env = try parse("[env]\npass = [\"A_1\", \"_x\"]\n[env.set]\nabc = \"1\"\n_Z9 = \"2\"\n")
        #expect(Set(env.environment.set.map(\.name)) == ["abc", "_Z9"] && env.environment.pass == ["A_1", "_x"])
        for bad in ["1A", "é", "A-B", "e\u{301}", ""] {
            expectError("[env.set]\n\"\(bad)\" = \"v\"\n", line: 2, key: "env.set.\(bad)", contains: "not a valid variable name")
            expectError("[env]\npass = [\"\(bad)\"]\n", line: 2, key: "env.pass", contains: "not a valid variable name")
        }
    }

    @Test("the shipped profiles lint clean")
    func shippedProfiles() throws {
        var root = URL(fileURLWithPath: #filePath)
        for _ in 0..<3 { root.deleteLastPathComponent() }
        let dir = root.appendingPathComponent("profiles")
        let files = try FileManager.default.contentsOfDirectory(atPath: dir.path).filter { $0.hasSuffix(".toml") }
        #expect(files.contains("minimal.toml"))
        for file in files {
            _ = try Profile.load(path: dir.appendingPathComponent(file).path)
        }
    }

    @Test("a profile without [jail] name is named after its file")
    func nameFromFile() throws {
        let cases = ["profiles/minimal.toml": "minimal", "/etc/stockade/gpu.v2.toml": "gpu.v2", "plain": "plain",
                     "dir/.hidden": ".hidden", "/srv/jails/": "jails", "a.": "a", "x/a.b.": "a.b", "x/.a.b": ".a",
                     "x": "x", "/": "/", "": "", "//": "//", "d.x/y": "y", "jäil.toml": "jäil", "a//b.toml//": "b"]
        for (file, name) in cases {
            #expect(try Profile.parse(text: "", file: file).name == name, "\(file)")
        }
    }

    @Test("a masked path is absolute, without a .. component or a NUL byte anywhere")
    func cleanAbsolutePaths() throws {
        for good in ["/a", "/..a", "/a..", "/a/./b", "//x", "/a/...", "/é/..\u{301}"] {
            #expect(try parse("[filesystem]\nmasked = [\"\(good)\"]\n").filesystem.masked == [good], "\(good)")
            #expect(Profile.isCleanAbsolute(good), "\(good)")
        }
        for bad in ["a/b", "", "/..", "/a/..", "/a/../b", "/a/..//b"] {
            expectError("[filesystem]\nmasked = [\"\(bad)\"]\n", line: 2, key: "filesystem.masked", contains: "absolute path without")
            #expect(!Profile.isCleanAbsolute(bad), "\(bad)")
        }
        // A NUL byte (which TOML text cannot carry through to here), also
        // one that a combining mark joins into another Character.
        for bad in ["/a\u{0}b", "/a/\u{0}\u{301}", "/\u{0}"] {
            #expect(!Profile.isCleanAbsolute(bad), "\(bad.debugDescription)")
        }
    }

    @Test("an empty profile gets the safe defaults")
    func defaults() throws {
        let p = try parse("")
        #expect(p.namespaces == [.user, .pid, .mount, .net, .ipc, .uts, .cgroup])
        #expect(p.user.uid == 1000 && p.user.gid == 1000)
        #expect(p.environment.set.isEmpty && p.environment.pass.isEmpty)
        #expect(p.filesystem.readonlyRoot && p.filesystem.proc && p.filesystem.dev)
        #expect(p.rlimits.contains { $0.name == "core" && $0.soft == 0 })
        #expect(p.newSession)
    }

    @Test("unknown keys are errors that name the line and key")
    func unknownKey() {
        expectError("[jail]\nname = \"x\"\nhostnme = \"y\"\n", line: 3, key: "jail.hostnme", contains: "unknown key")
        expectError("\n\n[bogus]\nx = 1\n", line: 3, key: "bogus", contains: "unknown key")
        expectError("[[mount]]\nsource = \"/usr\"\n\n[[mount]]\ntype = \"tmpfs\"\ntarget = \"/tmp\"\nsize = \"1M\"\nwritabel = true\n",
                    line: 8, key: "mount[1].writabel", contains: "unknown key")
    }

    @Test("wrong types and bad values name the line and key")
    func badValues() {
        expectError("[jail]\nnamespaces = \"user\"\n", line: 2, key: "jail.namespaces", contains: "expected an array")
        expectError("[jail]\nnamespaces = [\"user\", \"mount\", \"bogus\"]\n", line: 2, key: "jail.namespaces", contains: "unknown namespace \"bogus\"")
        expectError("[jail]\nnamespaces = [\"pid\", \"mount\"]\n", line: 2, key: "jail.namespaces", contains: "user namespace is required")
        expectError("[user]\nuid = 70000\n", line: 2, key: "user.uid", contains: "out of range")
        expectError("[[mount]]\ntype = \"bind\"\nsource = \"usr\"\n", line: 3, key: "mount[0].source", contains: "absolute")
        expectError("[[mount]]\ntype = \"tmpfs\"\ntarget = \"/a/../b\"\n", line: 3, key: "mount[0].target", contains: "without '..'")
        expectError("[[mount]]\ntype = \"tmpfs\"\ntarget = \"/t\"\nsize = \"12Q\"\n", line: 4, key: "mount[0].size", contains: "cannot read \"12Q\"")
        expectError("[jail]\ntime_limit = \"soon\"\n", line: 2, key: "jail.time_limit", contains: "duration")
        expectError("[rlimits]\nnofiles = 10\n", line: 2, key: "rlimits.nofiles", contains: "unknown resource limit")
        expectError("[fds]\npass = [1]\n", line: 2, key: "fds.pass", contains: "cannot be passed")
        expectError("[env]\npass = [\"1BAD\"]\n", line: 2, key: "env.pass", contains: "not a valid variable name")
        expectError("[jail]\nhostname = \"bad host\"\n", line: 2, key: "jail.hostname", contains: "ASCII")
    }

    @Test("TOML syntax errors name the line")
    func syntaxError() throws {
        expectError("[jail]\nname = \"x\"\nhostname = \n", line: 3, key: "", contains: "TOML syntax")
        // Found by the fuzzer: the TOML library aborted on this header.
        expectError("[jail]\nname = \"x\"\n[[\u{FFFD}mount]]\n", line: 3, key: "", contains: "expected a key")
        expectError("[jail]\nname = \"x\"\n[\ntarget = \"/t\"\n", line: 3, key: "", contains: "expected a key")
        expectError("[a..b]\n", line: 1, key: "", contains: "expected a key")
        expectError("# x = [\n[\n[mount]]\n", line: 2, key: "", contains: "expected a key")
        expectError("[jail]\nnamespaces = [\"user\", }\n", line: 2, key: "", contains: "expected a value")
        expectError("a = [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]\n", line: 1, key: "", contains: "nested deeper")
        #expect(throws: Never.self) { try parse("# x = [\n[\"filesystem\"] # quoted\nmasked = [\n  \"/[not-a-header\",\n]\n") }
        // A NUL escape would reach the reader cut short ("h\\u0000x" read as "h"):
        // refused in basic, multi-line and key strings; other escapes stay.
        for (text, line) in [("[jail]\nhostname = \"h\\u0000x\"\n", 2), ("[filesystem]\nmasked = [\"/a\\U00000000b\"]\n", 2),
                             ("[env.set]\nX = \"\"\"\nab\\u0000\"\"\"\n", 3), ("[env.set]\n\"K\\u0000\" = \"v\"\n", 2)] {
            expectError(text, line: line, key: "", contains: "NUL")
        }
        #expect(try parse("[env.set]\nX = \"a\\u0001\\u00e9\\U0001F600\"\nY = 'lit\\u0000eral'\n").environment.set.map(\.value)
                == ["a\u{1}é😀", "lit\\u0000eral"])
        // Non-ASCII text in strings and comments is fine.
        #expect(throws: Never.self) { try parse("# résumé\n[env.set]\nGREETING = \"grüß dich\" # ok\nX = '''\nñ\n'''\n") }
    }

    @Test("mounts, environment and limits are read in order")
    func fullProfile() throws {
        let p = try parse("""
            [jail]
            name = "full"
            namespaces = ["user", "mount", "pid", "time"]
            time_limit = "1.5s"
            cwd = "/work"

            [[mount]]
            source = "/usr"

            [[mount]]
            type = "tmpfs"
            target = "/tmp"
            size = "64M"
            mode = "1777"

            [[mount]]
            type = "symlink"
            source = "usr/bin"
            target = "/bin"

            [env]
            pass = ["TERM"]
            [env.set]
            PATH = "/usr/bin"
            LANG = "C.UTF-8"

            [rlimits]
            nofile = 256
            as = "4G"
            """)
        #expect(p.name == "full")
        #expect(p.namespaces == [.user, .mount, .pid, .time])
        #expect(p.timeLimit == .milliseconds(1500))
        #expect(p.mounts.map(\.target) == ["/usr", "/tmp", "/bin"])
        #expect(p.mounts[0].kind == .bind && !p.mounts[0].writable)
        #expect(p.mounts[1].size == 64 << 20 && p.mounts[1].mode == 0o1777 && p.mounts[1].writable)
        #expect(p.environment.set.map(\.name) == ["PATH", "LANG"])
        #expect(p.rlimits.first { $0.name == "as" }?.soft == 4 << 30)
        #expect(p.rlimits.first { $0.name == "nofile" }?.hard == 256)
    }

    @Test("sizes and durations")
    func units() {
        #expect(SizeValue(parsing: "512M") == .bytes(512 << 20))
        #expect(SizeValue(parsing: "2GiB") == .bytes(2 << 30))
        #expect(SizeValue(parsing: "1.5K") == .bytes(1536))
        #expect(SizeValue(parsing: "max") == .unlimited)
        #expect(SizeValue(parsing: "-1") == nil)
        #expect(SizeValue(parsing: "M") == nil)
        #expect(parseDuration("500ms") == .milliseconds(500))
        #expect(parseDuration("2m") == .seconds(120))
        #expect(parseDuration("x") == nil)
    }

    @Test("the line index follows tables, arrays of tables and multi-line values")
    func lineIndex() {
        let index = TOMLLineIndex(text: """
            a = 1
            s = \"\"\"
            b = 2
            \"\"\"
            arr = [
              "x",
            ]
            [t]
            c = 3
            [[m]]
            d = 4
            [[m]]
            d = 5
            [m.sub]
            e = 6
            """)
        #expect(index.line(of: "a") == 1)
        #expect(index.line(of: "b") == nil)
        #expect(index.line(of: "arr") == 5)
        #expect(index.line(of: "t.c") == 9)
        #expect(index.line(of: "m[0].d") == 11)
        #expect(index.line(of: "m[1].d") == 13)
        #expect(index.line(of: "m[1].sub.e") == 15)
        #expect(index.line(of: "t.missing") == 8)
    }

    @Test("the line index reads quoted and dotted keys, comments, non-ASCII text and CR LF line ends")
    func lineIndexBytes() throws {
        let index = TOMLLineIndex(text: "# é\r\n[env.set]\r\n \"A.B\" = \"x = [\"\r\n\t'c' . d = 'ü' # [\r\n[[mount]]\r\nsource = \"/usr\"\r\n")
        #expect(index.line(of: "env.set") == 2)
        #expect(index.line(of: "env.set.A.B") == 3)
        #expect(index.line(of: "env.set.c.d") == 4)
        #expect(index.line(of: "mount[0].source") == 6)
        // Empty parts between dots are skipped; blanks around a part trimmed.
        let dotted = TOMLLineIndex(text: "[a..b]\nx = 1\n[ c . d ]\ny = 2\n[.e.]\nz = 3\n")
        #expect(dotted.line(of: "a.b.x") == 2)
        #expect(dotted.line(of: "c.d.y") == 4)
        #expect(dotted.line(of: "e.z") == 6)
        #expect(dotted.line(of: "e") == 5)
        // A profile with CR LF line ends: the message names the key's own line.
        let text = "[jail]\r\nname = \"x\"\r\nhostname = 7\r\n"
        expectError(text, line: 3, key: "jail.hostname", contains: "expected a string")
    }
}
