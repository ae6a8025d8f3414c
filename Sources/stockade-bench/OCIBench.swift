// Part "oci": container start to exit through containerd (`ctr run --rm` of
// busybox `true`), stockade-runtime beside runc, interleaved in one run.
// containerd is started here with a config, state and socket of its own;
// the image is made offline with umoci from busybox-static.
import Foundation
#if canImport(Glibc)
import Glibc
#endif

func ociBench() throws {
    let env = ProcessInfo.processInfo.environment
    let runtime = env["STOCKADE_RUNTIME_BIN"] ?? ".build/release/stockade-runtime"
    let runs = Int(env["BENCH_OCI_RUNS"] ?? "") ?? 30
    let tools = ["/usr/bin/containerd", "/usr/bin/ctr", "/usr/bin/umoci", "/usr/sbin/runc", "/bin/busybox", runtime]
    for tool in tools where access(tool, X_OK) != 0 {
        print("oci: skipped, \(tool) is missing (make deps installs containerd, umoci, busybox-static)")
        return
    }
    let runtimePath = runtime.hasPrefix("/") ? runtime : FileManager.default.currentDirectoryPath + "/" + runtime
    let dir = "/tmp/stockade-bench-oci-\(getpid())"
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
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
    daemon.standardOutput = FileHandle.nullDevice
    daemon.standardError = FileHandle.nullDevice
    try daemon.run()
    defer {
        daemon.terminate()
        daemon.waitUntilExit()
        _ = timeCommand(["/bin/sh", "-c", "grep ' \(dir)/' /proc/mounts | cut -d' ' -f2 | sort -r | xargs -r -n1 umount -l; rm -rf \(dir)"])
    }
    for _ in 0..<100 where access(socket, F_OK) != 0 { usleep(50_000) }
    let img = dir + "/img"
    let rootfs = dir + "/unpacked/rootfs"
    let setup = [
        ["/usr/bin/umoci", "init", "--layout", img], ["/usr/bin/umoci", "new", "--image", img + ":bb"],
        ["/usr/bin/umoci", "unpack", "--image", img + ":bb", dir + "/unpacked"],
        ["/bin/sh", "-c", "mkdir -p \(rootfs)/bin \(rootfs)/proc \(rootfs)/sys \(rootfs)/dev \(rootfs)/tmp && cp /bin/busybox \(rootfs)/bin/ && ln -s busybox \(rootfs)/bin/true"],
        ["/usr/bin/umoci", "repack", "--image", img + ":bb", dir + "/unpacked"],
        ["/bin/tar", "-C", img, "-cf", dir + "/img.tar", "."],
        ["/usr/bin/ctr", "--address", socket, "--namespace", "bench", "image", "import", "--index-name", "docker.io/library/stockade-bb:bench", dir + "/img.tar"],
    ]
    for step in setup where timeCommand(step) == nil {
        print("oci: skipped, setup failed: \(step.joined(separator: " "))")
        return
    }
    let contenders = [("stockade-runtime", runtimePath), ("runc", "/usr/sbin/runc")]
    var samples: [String: [Double]] = [:]
    for i in 0..<runs {
        for (name, binary) in contenders {
            let argv = ["/usr/bin/ctr", "--address", socket, "--namespace", "bench", "run", "--rm", "--runc-binary", binary,
                        "docker.io/library/stockade-bb:bench", "bench-\(name)-\(i)", "/bin/true"]
            if let ms = timeCommand(argv) { samples[name, default: []].append(ms) }
        }
    }
    print("oci: ctr run --rm busybox true through containerd's runc shim, \(runs) runs each, interleaved")
    for (name, _) in contenders {
        guard let s = samples[name], !s.isEmpty else {
            print("  \(pad(name, 18)) failed every run")
            continue
        }
        let stats = Stats(samples: s)
        print("  \(pad(name, 18)) median \(fmt(stats.median)) ms  p90 \(fmt(stats.percentile(0.9))) ms  (\(s.count) ok)")
    }
}
