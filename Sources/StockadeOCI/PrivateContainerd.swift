import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A containerd of its own, for the OCI tests and `stockade-bench oci`: its
/// config, root, state and socket under one directory, the CRI plugin and
/// the snapshotters the tests do not use off (aufs runs modprobe on start),
/// no systemd. `importBusybox` makes an OCI image offline with umoci from
/// busybox-static and imports it.
package final class PrivateContainerd {
    package static let tools = ["/usr/bin/containerd", "/usr/bin/ctr", "/usr/bin/umoci", "/bin/busybox"]
    package let dir: String
    package let socket: String
    let daemon = Process()

    /// Starts containerd and waits (60 s at most: a loaded machine can be
    /// slow to run its plugin set-up) for its socket. If it does not come,
    /// the error says whether containerd exited (and how) or is still
    /// running (and in what kernel state), with its log.
    package init(dir: String) throws {
        self.dir = dir
        socket = dir + "/containerd.sock"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        try """
            version = 2
            root = "\(dir)/root"
            state = "\(dir)/state"
            disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]
            [grpc]
              address = "\(socket)"
            """.write(toFile: dir + "/config.toml", atomically: true, encoding: .utf8)
        _ = FileManager.default.createFile(atPath: dir + "/containerd.log", contents: nil)
        let log = try FileHandle(forWritingTo: URL(fileURLWithPath: dir + "/containerd.log"))
        daemon.executableURL = URL(fileURLWithPath: "/usr/bin/containerd")
        daemon.arguments = ["--config", dir + "/config.toml"]
        daemon.standardOutput = log
        daemon.standardError = log
        daemon.standardInput = FileHandle.nullDevice
        try daemon.run()
        let deadline = Date().addingTimeInterval(60)
        while access(socket, F_OK) != 0 && daemon.isRunning && Date() < deadline { usleep(50_000) }
        guard access(socket, F_OK) == 0 else {
            let how: String
            if daemon.isRunning {
                let status = (try? String(contentsOfFile: "/proc/\(daemon.processIdentifier)/status", encoding: .utf8)) ?? ""
                let state = status.split(separator: "\n").first { $0.hasPrefix("State:") } ?? "State: unknown"
                let wchan = (try? String(contentsOfFile: "/proc/\(daemon.processIdentifier)/wchan", encoding: .utf8)) ?? "?"
                how = "still running after 60 s without its socket (\(state), waiting in \(wchan))"
            } else {
                how = "exited with status \(daemon.terminationStatus) (\(daemon.terminationReason == .uncaughtSignal ? "signal" : "exit"))"
            }
            let log = (try? String(contentsOfFile: dir + "/containerd.log", encoding: .utf8)) ?? ""
            stop()
            throw RuntimeError("containerd did not start: \(how); its log: \(log.isEmpty ? "(empty)" : log)")
        }
    }

    /// `ctr` against this containerd, in `namespace`.
    package func ctr(_ namespace: String, _ args: [String]) -> [String] {
        ["/usr/bin/ctr", "--address", socket, "--namespace", namespace] + args
    }

    /// Stops containerd, unmounts what it left under `dir` and removes `dir`.
    package func stop() {
        if daemon.isRunning {
            daemon.terminate()
            daemon.waitUntilExit()
        }
        _ = try? Self.run(["/bin/sh", "-c", "grep ' \(dir)/' /proc/mounts | cut -d' ' -f2 | sort -r | xargs -r -n1 umount -l"], in: "/tmp")
        try? FileManager.default.removeItem(atPath: dir)
    }

    /// An image `name` in `namespace`: busybox-static and `applets` linked to it.
    package func importBusybox(name: String, namespace: String, applets: [String]) throws {
        let img = dir + "/img"
        let rootfs = dir + "/unpacked/rootfs"
        let links = applets.map { "ln -s busybox \(rootfs)/bin/\($0)" }.joined(separator: " && ")
        let steps = [
            ["/usr/bin/umoci", "init", "--layout", img], ["/usr/bin/umoci", "new", "--image", img + ":bb"],
            ["/usr/bin/umoci", "unpack", "--image", img + ":bb", dir + "/unpacked"],
            ["/bin/sh", "-c", "mkdir -p \(rootfs)/bin \(rootfs)/proc \(rootfs)/sys \(rootfs)/dev \(rootfs)/tmp \(rootfs)/etc && cp /bin/busybox \(rootfs)/bin/ && \(links)"],
            ["/usr/bin/umoci", "repack", "--image", img + ":bb", dir + "/unpacked"],
            ["/bin/tar", "-C", img, "-cf", dir + "/img.tar", "."],
            ctr(namespace, ["image", "import", "--index-name", name, dir + "/img.tar"]),
        ]
        for step in steps {
            let (status, output) = try Self.run(step, in: dir)
            guard status == 0 else { throw RuntimeError("\(step.joined(separator: " ")): status \(status): \(output)") }
        }
    }

    /// Runs argv to its end; stdout and stderr together, through a file (a
    /// shim that ctr starts must not hold a pipe of the caller open).
    package static func run(_ argv: [String], in dir: String) throws -> (status: Int32, output: String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: argv[0])
        process.arguments = Array(argv.dropFirst())
        let out = dir + "/cmd-\(UUID().uuidString)"
        _ = FileManager.default.createFile(atPath: out, contents: nil)
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: out))
        process.standardOutput = handle
        process.standardError = handle
        process.standardInput = FileHandle.nullDevice
        try process.run()
        process.waitUntilExit()
        try handle.close()
        let text = (try? String(contentsOfFile: out, encoding: .utf8)) ?? ""
        unlink(out)
        return (process.terminationStatus, text)
    }
}
