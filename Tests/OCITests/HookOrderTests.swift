import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// runtime-spec's hooks in order, each in the namespaces the spec names,
/// checked with real hooks that record /proc/self/ns/*, their working
/// directory and their ids: prestart and createRuntime on the host once
/// the namespaces and mounts exist, createContainer in the container's
/// namespaces before its root switch, startContainer inside the container
/// just before its program. The NVIDIA container hook depends on this order:
/// a createRuntime hook enters the mount namespace by pid and mounts into
/// the rootfs at its host path, as it does under runc.
@Suite("OCIHookOrder", .serialized)
struct HookOrderTests {
    init() throws {
        try #require(getuid() == 0, "stockade-runtime runs as root, as containerd runs runc")
        try #require(FileManager.default.isExecutableFile(atPath: runtimeBinary), "build stockade-runtime first (swift build --build-tests)")
        try #require(FileManager.default.isExecutableFile(atPath: "/usr/bin/nsenter"), "the createRuntime hook uses util-linux nsenter")
    }

    static let namespaces = ["mnt", "net", "uts", "ipc", "pid", "user", "cgroup"]

    /// A host hook script: records its name, namespaces, cwd, uid and the
    /// state's status into `log`, then does what its name asks.
    static func hostHook(log: String, rootfs: String, injected: String) -> String {
        """
        #!/bin/sh
        name=$1
        state=$(cat)
        {
          echo "hook $name"
          for ns in \(namespaces.joined(separator: " ")); do echo "ns $name $ns $(readlink /proc/self/ns/$ns)"; done
          echo "cwd $name $(pwd)"
          echo "uid $name $(id -u)"
          echo "status $name $(echo "$state" | sed -n 's/.*"status":"\\([a-z]*\\)".*/\\1/p')"
          echo "sees $name $(cat mnt/hostdata 2>/dev/null)"
          echo "cgroup $name $(sed 's/^[^:]*:[^:]*://' /proc/self/cgroup | sort -u | tr '\\n' ' ')"
        } >> \(log)
        case $name in
        createRuntime)
          pid=$(echo "$state" | sed -n 's/.*"pid":\\([0-9]*\\).*/\\1/p')
          exec /usr/bin/nsenter -t "$pid" -m /bin/busybox mount --bind \(injected) \(rootfs)/injected ;;
        createContainer)
          /bin/busybox mount -t tmpfs hookmnt hookmnt && echo made-by-createContainer > hookmnt/marker ;;
        fail) exit 3 ;;
        esac
        """
    }

    /// The startContainer hook, inside the rootfs (busybox sh): it writes
    /// into the container's /tmp, which its program prints.
    static let startHook = """
        #!/bin/sh
        {
          echo "hook startContainer"
          for ns in \(namespaces.joined(separator: " ")); do echo "ns startContainer $ns $(readlink /proc/self/ns/$ns)"; done
          echo "cwd startContainer $(pwd)"
          echo "status startContainer $(cat | grep -o '"status":"[a-z]*"')"
        } > /tmp/start.log
        [ "$1" = fail ] && exit 5
        exit 0
        """

    struct Fixture {
        let f: RuntimeFixture
        let log: String
        let rootfs: String
        let hook: String
    }

    func fixture(_ name: String) throws -> Fixture {
        let f = try RuntimeFixture(name)
        let rootfs = f.bundle + "/rootfs"
        // createContainer runs as the container's root: the log must be writable by all.
        let out = f.dir + "/hooks"
        mkdir(out, 0o777)
        chmod(out, 0o777)
        let log = out + "/log"
        _ = FileManager.default.createFile(atPath: log, contents: nil, attributes: [.posixPermissions: 0o666])
        chmod(log, 0o666)
        let injected = f.dir + "/injected-src"
        try "injected-by-createRuntime\n".write(toFile: injected, atomically: true, encoding: .utf8)
        // Mount points: the rootfs is root-owned, the container's root cannot make them.
        _ = FileManager.default.createFile(atPath: rootfs + "/injected", contents: nil)
        mkdir(rootfs + "/hookmnt", 0o755)
        // Writable by all: only a read-only root keeps the container from writing here.
        mkdir(rootfs + "/open", 0o777)
        chmod(rootfs + "/open", 0o777)
        let hook = f.dir + "/hook.sh"
        try ExecutableFiles.write(Self.hostHook(log: log, rootfs: rootfs, injected: injected), to: hook)
        try ExecutableFiles.write(Self.startHook, to: rootfs + "/bin/start-hook.sh")
        return Fixture(f: f, log: log, rootfs: rootfs, hook: hook)
    }

    static func nsLink(_ path: String) -> String {
        (try? FileManager.default.destinationOfSymbolicLink(atPath: path)) ?? "?"
    }

    /// "ns NAME KIND LINK" lines of `text` as [KIND: LINK] for one hook.
    static func recorded(_ text: String, hook: String, _ key: String) -> [String] {
        text.split(separator: "\n").compactMap { line -> String? in
            let parts = line.split(separator: " ", maxSplits: 2).map(String.init)
            return parts.count >= 2 && parts[0] == key && parts[1] == hook ? (parts.count > 2 ? parts[2] : "") : nil
        }
    }

    static func namespaces(_ text: String, hook: String) -> [String: String] {
        var result: [String: String] = [:]
        for entry in recorded(text, hook: hook, "ns") {
            let parts = entry.split(separator: " ", maxSplits: 1).map(String.init)
            if parts.count == 2 { result[parts[0]] = parts[1] }
        }
        return result
    }

    @Test("prestart, createRuntime, createContainer, startContainer, poststart: in order, each in its namespaces")
    func orderAndNamespaces() throws {
        let fx = try fixture("hookorder")
        let f = fx.f
        let id = "order1"
        let output = f.dir + "/stdout"
        try RuntimeFixture.writeConfig(f.bundle, args: ["sh", "-c", "cat /tmp/start.log; cat /injected /hookmnt/marker; touch /open/written-after-hooks 2>/dev/null || echo root-is-read-only; echo program-ran; sleep 60"],
                                       cgroupsPath: f.cgroupsPath(id)) { config in
            func host(_ name: String) -> [String: Any] { ["path": fx.hook, "args": ["hook.sh", name]] }
            config["hooks"] = [
                "prestart": [host("prestart")],
                "createRuntime": [host("createRuntime")],
                "createContainer": [host("createContainer")],
                "startContainer": [["path": "/bin/start-hook.sh", "args": ["start-hook.sh"]]],
                "poststart": [host("poststart")],
            ]
        }
        let created = try f.run(["create", "--bundle", f.bundle, id], stdout: output)
        try #require(created.status == 0, "\(created)")
        let pid = try #require(try f.state(id)["pid"] as? Int)
        var log = (try? String(contentsOfFile: fx.log, encoding: .utf8)) ?? ""
        let order = log.split(separator: "\n").filter { $0.hasPrefix("hook ") }.map { String($0.dropFirst(5)) }
        #expect(order == ["prestart", "createRuntime", "createContainer"], "\(log)")

        // prestart and createRuntime: the runtime's namespaces, as host root.
        let host = Dictionary(uniqueKeysWithValues: Self.namespaces.map { ($0, Self.nsLink("/proc/self/ns/\($0)")) })
        for hook in ["prestart", "createRuntime"] {
            #expect(Self.namespaces(log, hook: hook) == host, "\(hook): \(log)")
            #expect(Self.recorded(log, hook: hook, "uid") == ["0"])
            #expect(Self.recorded(log, hook: hook, "status") == ["creating"])
        }
        // createContainer: every namespace of the container's, as its root,
        // in its root at the host path, the spec's mounts already there.
        var container = Dictionary(uniqueKeysWithValues: Self.namespaces.map { ($0, Self.nsLink("/proc/\(pid)/ns/\($0)")) })
        container["pid"] = Self.nsLink("/proc/\(pid)/ns/pid_for_children")
        let inContainer = Self.namespaces(log, hook: "createContainer")
        #expect(inContainer == container, "createContainer: \(log)")
        for kind in Self.namespaces { #expect(inContainer[kind] != host[kind], "createContainer shares the host's \(kind) namespace") }
        #expect(Self.recorded(log, hook: "createContainer", "cwd") == [fx.rootfs])
        #expect(Self.recorded(log, hook: "createContainer", "uid") == ["0"])
        #expect(Self.recorded(log, hook: "createContainer", "status") == ["creating"])
        #expect(Self.recorded(log, hook: "createContainer", "sees") == ["stockade-oci-test"], "the spec's bind is in the root the hook sees")
        // In the container's cgroup: its cgroup namespace shows it as the root in every hierarchy.
        #expect(Self.recorded(log, hook: "createContainer", "cgroup") == ["/ "], "\(log)")
        // Nothing the hooks mounted reached the host's mount table.
        let mountinfo = try String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8)
        #expect(!mountinfo.contains(fx.rootfs), "a hook's mount leaked to the host")

        // startContainer runs at start, inside, before the program.
        #expect(try f.run(["start", id]).status == 0)
        let printed = f.waitForOutput(output, containing: "program-ran")
        #expect(Self.recorded(printed, hook: "startContainer", "cwd") == ["/"], "\(printed)")
        #expect(Self.recorded(printed, hook: "startContainer", "status") == ["\"status\":\"created\""], "\(printed)")
        let inside = Self.namespaces(printed, hook: "startContainer")
        #expect(inside == container, "startContainer: \(printed)")
        // What createRuntime (through nsenter) and createContainer mounted is the container's.
        #expect(printed.contains("injected-by-createRuntime") && printed.contains("made-by-createContainer"), "\(printed)")
        // root.readonly still holds: the root is made read-only after the hooks, not skipped.
        #expect(printed.contains("root-is-read-only"), "\(printed)")
        #expect(!FileManager.default.fileExists(atPath: fx.rootfs + "/open/written-after-hooks"))
        log = f.waitForOutput(fx.log, containing: "hook poststart")
        #expect(log.contains("hook poststart"))
        #expect(Self.recorded(log, hook: "poststart", "status") == ["running"])
        _ = try f.run(["delete", "--force", id])
    }

    @Test("a failing createContainer hook fails create, names the hook and leaves no container and no mount")
    func failingCreateContainer() throws {
        let fx = try fixture("hookfail")
        let f = fx.f
        try RuntimeFixture.writeConfig(f.bundle, args: ["sleep", "60"], cgroupsPath: f.cgroupsPath("fail1")) { config in
            config["hooks"] = ["createContainer": [["path": fx.hook, "args": ["hook.sh", "fail"]]]]
        }
        let r = try f.run(["create", "--bundle", f.bundle, "fail1"])
        #expect(r.status != 0 && r.stderr.contains("hooks.createContainer[0]") && r.stderr.contains("status 3"), "\(r)")
        #expect(f.logLines().contains { $0["level"] == "error" && ($0["msg"] ?? "").contains("hooks.createContainer[0]") })
        #expect(try f.run(["state", "fail1"]).stderr.contains("does not exist"))
        let mountinfo = try String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8)
        #expect(!mountinfo.contains(fx.rootfs))

        // A hook that does not exist fails the same way.
        try RuntimeFixture.writeConfig(f.bundle, args: ["sleep", "60"], cgroupsPath: f.cgroupsPath("fail2")) { config in
            config["hooks"] = ["createContainer": [["path": f.dir + "/no-such-hook"]]]
        }
        let missing = try f.run(["create", "--bundle", f.bundle, "fail2"])
        #expect(missing.status != 0 && missing.stderr.contains("hooks.createContainer[0]"), "\(missing)")
    }

    @Test("a hook that outlives its timeout is killed and fails create")
    func hookTimeout() throws {
        let fx = try fixture("hooktimeout")
        let f = fx.f
        let slow = f.dir + "/slow.sh"
        try ExecutableFiles.write("#!/bin/sh\nsleep 30\n", to: slow)
        try RuntimeFixture.writeConfig(f.bundle, args: ["sleep", "60"], cgroupsPath: f.cgroupsPath("slow1")) { config in
            config["hooks"] = ["createContainer": [["path": slow, "timeout": 1]]]
        }
        let started = ContinuousClock.now
        let r = try f.run(["create", "--bundle", f.bundle, "slow1"])
        #expect(r.status != 0 && r.stderr.contains("timed out"), "\(r)")
        #expect(ContinuousClock.now - started < .seconds(20))
    }

    @Test("a failing startContainer hook stops the container before its program runs, and says so on its stderr")
    func failingStartContainer() throws {
        let fx = try fixture("hookstartfail")
        let f = fx.f
        let id = "startfail1"
        let output = f.dir + "/stdout"
        let errors = f.dir + "/stderr"
        try RuntimeFixture.writeConfig(f.bundle, args: ["sh", "-c", "echo program-ran; sleep 60"], cgroupsPath: f.cgroupsPath(id)) { config in
            config["hooks"] = ["startContainer": [["path": "/bin/start-hook.sh", "args": ["start-hook.sh", "fail"]]]]
        }
        #expect(try f.run(["create", "--bundle", f.bundle, id], stdout: output, stderr: errors).status == 0)
        #expect(try f.run(["start", id]).status == 0)
        #expect(try f.waitFor(id, "stopped") == "stopped")
        let stderr = f.waitForOutput(errors, containing: "startContainer")
        #expect(stderr.contains("run a startContainer hook") && stderr.contains("exited with status 5"), "\(stderr)")
        #expect(!((try? String(contentsOfFile: output, encoding: .utf8)) ?? "").contains("program-ran"))
    }
}
