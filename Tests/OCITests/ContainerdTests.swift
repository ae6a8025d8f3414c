import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// Debian's containerd, started by the test with a config, state, root and
/// socket of its own (no systemd, no CRI plugin), runs an OCI image made
/// offline with umoci from busybox-static through its runc shim
/// (io.containerd.runc.v2) with stockade-runtime as the runc binary.
@Suite("OCIContainerd", .serialized)
struct ContainerdTests {
    static let tools = ["/usr/bin/containerd", "/usr/bin/ctr", "/usr/bin/umoci", "/bin/busybox"]

    init() throws {
        try #require(getuid() == 0, "containerd runs as root")
        for tool in Self.tools {
            try #require(FileManager.default.isExecutableFile(atPath: tool), "\(tool) is missing: make deps installs containerd, umoci and busybox-static")
        }
        try #require(FileManager.default.isExecutableFile(atPath: runtimeBinary), "build stockade-runtime first")
    }

    /// Runs a command to its end; output through a file (a shim started by
    /// ctr must not hold a pipe of ours open).
    @discardableResult
    static func sh(_ args: [String], in dir: String) throws -> RuntimeRun {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: args[0])
        process.arguments = Array(args.dropFirst())
        let out = dir + "/cmd-\(UUID().uuidString)"
        _ = FileManager.default.createFile(atPath: out, contents: nil)
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: out))
        process.standardOutput = handle
        process.standardError = handle
        process.standardInput = FileHandle.nullDevice
        try process.run()
        process.waitUntilExit()
        try handle.close()
        let text = try String(contentsOfFile: out, encoding: .utf8)
        unlink(out)
        return RuntimeRun(status: process.terminationStatus, stdout: text, stderr: "")
    }

    @Test("ctr run --runc-binary stockade-runtime: the container runs as a Stockade jail and its exit status comes back")
    func ctrRun() throws {
        let dir = "/tmp/stockade-ctd-\(getpid())"
        try? FileManager.default.removeItem(atPath: dir)
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let socket = dir + "/containerd.sock"
        try """
            version = 2
            root = "\(dir)/root"
            state = "\(dir)/state"
            disabled_plugins = ["io.containerd.grpc.v1.cri"]
            [grpc]
              address = "\(socket)"
            """.write(toFile: dir + "/config.toml", atomically: true, encoding: .utf8)
        let daemon = Process()
        daemon.executableURL = URL(fileURLWithPath: "/usr/bin/containerd")
        daemon.arguments = ["--config", dir + "/config.toml"]
        let log = try FileHandle(forWritingTo: URL(fileURLWithPath: { _ = FileManager.default.createFile(atPath: dir + "/containerd.log", contents: nil); return dir + "/containerd.log" }()))
        daemon.standardOutput = log
        daemon.standardError = log
        try daemon.run()
        defer {
            daemon.terminate()
            daemon.waitUntilExit()
            // The shims containerd started end with their tasks; unmount what it left.
            _ = try? Self.sh(["/bin/sh", "-c", "grep ' \(dir)/' /proc/mounts | cut -d' ' -f2 | sort -r | xargs -r -n1 umount -l"], in: "/tmp")
        }
        for _ in 0..<100 where access(socket, F_OK) != 0 { usleep(50_000) }
        try #require(access(socket, F_OK) == 0, "containerd did not start: \((try? String(contentsOfFile: dir + "/containerd.log", encoding: .utf8)) ?? "")")

        // The image: an empty OCI layout from umoci, a layer with busybox-static.
        let img = dir + "/img"
        #expect(try Self.sh(["/usr/bin/umoci", "init", "--layout", img], in: dir).status == 0)
        #expect(try Self.sh(["/usr/bin/umoci", "new", "--image", img + ":bb"], in: dir).status == 0)
        let unpacked = try Self.sh(["/usr/bin/umoci", "unpack", "--image", img + ":bb", dir + "/unpacked"], in: dir)
        #expect(unpacked.status == 0, "\(unpacked)")
        let rootfs = dir + "/unpacked/rootfs"
        for d in ["bin", "proc", "sys", "dev", "tmp", "etc"] {
            try FileManager.default.createDirectory(atPath: rootfs + "/" + d, withIntermediateDirectories: true)
        }
        try FileManager.default.copyItem(atPath: "/bin/busybox", toPath: rootfs + "/bin/busybox")
        for applet in ["sh", "echo", "cat", "id"] {
            try FileManager.default.createSymbolicLink(atPath: rootfs + "/bin/" + applet, withDestinationPath: "busybox")
        }
        #expect(try Self.sh(["/usr/bin/umoci", "repack", "--image", img + ":bb", dir + "/unpacked"], in: dir).status == 0)
        #expect(try Self.sh(["/bin/tar", "-C", img, "-cf", dir + "/img.tar", "."], in: dir).status == 0)
        let ctr = ["/usr/bin/ctr", "--address", socket, "--namespace", "stockade-test"]
        let imported = try Self.sh(ctr + ["image", "import", "--index-name", "docker.io/library/stockade-bb:test", dir + "/img.tar"], in: dir)
        #expect(imported.status == 0, "\(imported)")

        let ran = try Self.sh(ctr + ["run", "--rm", "--runc-binary", runtimeBinary, "docker.io/library/stockade-bb:test", "bb1",
                                     "/bin/sh", "-c", "echo hello-from-containerd; cat /proc/self/uid_map; exit 7"], in: dir)
        #expect(ran.stdout.contains("hello-from-containerd"), "\(ran)")
        // Stockade's guarantee: the container's root is not host root.
        let map = ran.stdout.split(separator: "\n").first { $0.contains("65536") }?.split(separator: " ") ?? []
        #expect(map.count == 3 && map[0] == "0" && map[1] != "0", "\(ran)")
        #expect(ran.status == 7, "the container's exit status through the shim: \(ran)")

        // A program the image lacks: the shim reports the runtime's own error.
        let missing = try Self.sh(ctr + ["run", "--rm", "--runc-binary", runtimeBinary, "docker.io/library/stockade-bb:test", "bb2", "/bin/nope"], in: dir)
        #expect(missing.status != 0 && missing.stdout.contains("execve") && missing.stdout.contains("/bin/nope"), "\(missing)")
    }
}
