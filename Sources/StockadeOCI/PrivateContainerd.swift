import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A containerd of its own, for the OCI tests and `stockade-bench oci`: its
/// config, root, state and socket under one directory, the snapshotters the
/// tests do not use off (aufs runs modprobe on start), no systemd. The CRI
/// plugin is off unless `cri` is given. `importBusybox` makes an OCI image
/// offline with umoci from busybox-static and imports it.
package final class PrivateContainerd {
    /// The CRI plugin's settings: its sandbox image, and a runtime handler
    /// per entry of `handlers` (the runc shim with that runc binary) beside
    /// the default handler `runc` (Debian's runc). Pods get their network
    /// from the CNI plugin `cniNetwork` in `cniBinDir` (which must also hold
    /// `loopback`), through a configuration under the containerd's own
    /// directory; without one, only pods in the node's network namespace run.
    package struct CRI {
        package var sandboxImage: String
        package var handlers: [String: String]
        package var cniBinDir: String?
        package var cniNetwork: String?
        package init(sandboxImage: String, handlers: [String: String], cniBinDir: String? = nil, cniNetwork: String? = nil) {
            self.sandboxImage = sandboxImage
            self.handlers = handlers
            self.cniBinDir = cniBinDir
            self.cniNetwork = cniNetwork
        }
    }

    package static let tools = ["/usr/bin/containerd", "/usr/bin/ctr", "/usr/bin/umoci", "/bin/busybox"]
    package let dir: String
    package let socket: String
    let daemon = Process()

    /// Starts containerd and waits (60 s at most: a loaded machine can be
    /// slow to run its plugin set-up) for its socket. If it does not come,
    /// the error says whether containerd exited (and how) or is still
    /// running (and in what kernel state), with its log.
    package init(dir: String, cri: CRI? = nil) throws {
        self.dir = dir
        socket = dir + "/containerd.sock"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        if let cri {
            for sub in ["/cni/bin", "/cni/conf"] {
                try FileManager.default.createDirectory(atPath: dir + sub, withIntermediateDirectories: true)
            }
            if let network = cri.cniNetwork {
                try """
                    {"cniVersion": "0.4.0", "name": "\(network)", "plugins": [{"type": "\(network)"}]}
                    """.write(toFile: dir + "/cni/conf/10-\(network).conflist", atomically: true, encoding: .utf8)
            }
        }
        let snapshotters = ["aufs", "btrfs", "zfs", "devmapper"].map { "\"io.containerd.snapshotter.v1.\($0)\"" }
        try """
            version = 2
            root = "\(dir)/root"
            state = "\(dir)/state"
            disabled_plugins = [\(((cri == nil ? ["\"io.containerd.grpc.v1.cri\""] : []) + snapshotters).joined(separator: ", "))]
            [grpc]
              address = "\(socket)"
            \(cri.map { Self.criSection($0, dir: dir) } ?? "")
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

    /// The CRI plugin's table: no AppArmor (the host has none), the streaming
    /// server on loopback at a port the kernel picks, the default `runc`
    /// handler and one per `cri.handlers`, each with a runtime state root
    /// under `dir` (not the host's /run/containerd/runc), the pods' network
    /// namespaces under its state directory. `restrict_oom_score_adj`: the pause container asks
    /// for -998, which a host without CAP_SYS_RESOURCE in its bounding set
    /// refuses; restricted, no container goes below containerd's own score.
    static func criSection(_ cri: CRI, dir: String) -> String {
        let plugin = "plugins.\"io.containerd.grpc.v1.cri\""
        var text = """
            [\(plugin)]
              sandbox_image = "\(cri.sandboxImage)"
              disable_apparmor = true
              restrict_oom_score_adj = true
              netns_mounts_under_state_dir = true
              stream_server_address = "127.0.0.1"
              stream_server_port = "0"
            [\(plugin).cni]
              bin_dir = "\(cri.cniBinDir ?? dir + "/cni/bin")"
              conf_dir = "\(dir)/cni/conf"
            [\(plugin).containerd]
              snapshotter = "overlayfs"
              default_runtime_name = "runc"
            [\(plugin).containerd.runtimes.runc]
              runtime_type = "io.containerd.runc.v2"
            [\(plugin).containerd.runtimes.runc.options]
              Root = "\(dir)/runtime-root/runc"

            """
        for (name, binary) in cri.handlers.sorted(by: { $0.key < $1.key }) {
            text += """
                [\(plugin).containerd.runtimes.\(name)]
                  runtime_type = "io.containerd.runc.v2"
                [\(plugin).containerd.runtimes.\(name).options]
                  BinaryName = "\(binary)"
                  Root = "\(dir)/runtime-root/\(name)"

                """
        }
        return text
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

    /// An image `name` in `namespace`: busybox-static and `applets` linked
    /// to it, `entrypoint` (if any) as its config's entrypoint. Each image is
    /// made in a directory of its own, so several can be imported.
    package func importBusybox(name: String, namespace: String, applets: [String], entrypoint: [String] = []) throws {
        // The layout's one tag is the name's; `--base-name` names it with the
        // repository, so the import adds no second name (such as
        // import-DATE:TAG) that the CRI plugin would resolve instead.
        guard let colon = name.lastIndex(of: ":"), !name[colon...].contains("/") else {
            throw RuntimeError("image name \(name) has no tag")
        }
        let repository = String(name[..<colon])
        let tag = String(name[name.index(after: colon)...])
        let work = dir + "/image-\(UUID().uuidString)"
        let img = work + "/img"
        let rootfs = work + "/unpacked/rootfs"
        let links = applets.map { "ln -s busybox \(rootfs)/bin/\($0)" }.joined(separator: " && ")
        var steps = [
            ["/bin/mkdir", "-p", work],
            ["/usr/bin/umoci", "init", "--layout", img], ["/usr/bin/umoci", "new", "--image", img + ":" + tag],
            ["/usr/bin/umoci", "unpack", "--image", img + ":" + tag, work + "/unpacked"],
            ["/bin/sh", "-c", "mkdir -p \(rootfs)/bin \(rootfs)/proc \(rootfs)/sys \(rootfs)/dev \(rootfs)/tmp \(rootfs)/etc && cp /bin/busybox \(rootfs)/bin/ && \(links)"],
            ["/usr/bin/umoci", "repack", "--image", img + ":" + tag, work + "/unpacked"],
        ]
        if !entrypoint.isEmpty {
            steps.append(["/usr/bin/umoci", "config", "--image", img + ":" + tag] + entrypoint.flatMap { ["--config.entrypoint", $0] })
        }
        steps += [
            ["/bin/tar", "-C", img, "-cf", work + "/img.tar", "."],
            ctr(namespace, ["image", "import", "--base-name", repository, work + "/img.tar"]),
            ["/bin/rm", "-rf", work],
        ]
        for step in steps {
            let (status, output) = try Self.run(step, in: dir)
            guard status == 0 else { throw RuntimeError("\(step.joined(separator: " ")): status \(status): \(output)") }
        }
    }

    /// Runs argv to its end; stdout and stderr together, through a file (a
    /// shim that ctr starts must not hold a pipe of the caller open).
    /// `environment`: the child's whole environment (nil: the caller's).
    package static func run(_ argv: [String], in dir: String, environment: [String: String]? = nil) throws -> (status: Int32, output: String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: argv[0])
        process.arguments = Array(argv.dropFirst())
        if let environment { process.environment = environment }
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
