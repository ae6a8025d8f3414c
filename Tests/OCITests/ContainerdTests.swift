import Foundation
import Testing
import StockadeOCI
#if canImport(Glibc)
import Glibc
#endif

/// Debian's containerd, started by the test with a config, state, root and
/// socket of its own (no systemd, no CRI plugin), runs an OCI image made
/// offline with umoci from busybox-static through its runc shim
/// (io.containerd.runc.v2) with stockade-runtime as the runc binary.
@Suite("OCIContainerd", .serialized)
struct ContainerdTests {
    init() throws {
        try #require(getuid() == 0, "containerd runs as root")
        for tool in PrivateContainerd.tools {
            try #require(FileManager.default.isExecutableFile(atPath: tool), "\(tool) is missing: make deps installs containerd, umoci and busybox-static")
        }
        try #require(FileManager.default.isExecutableFile(atPath: runtimeBinary), "build stockade-runtime first")
    }

    @Test("ctr run --runc-binary stockade-runtime: the container runs as a Stockade jail and its exit status comes back")
    func ctrRun() throws {
        let containerd = try PrivateContainerd(dir: "/tmp/stockade-ctd-\(getpid())")
        defer { containerd.stop() }
        let image = "docker.io/library/stockade-bb:test"
        try containerd.importBusybox(name: image, namespace: "stockade-test", applets: ["sh", "echo", "cat", "id"])

        let ran = try PrivateContainerd.run(containerd.ctr("stockade-test", ["run", "--rm", "--runc-binary", runtimeBinary, image, "bb1",
                                                                          "/bin/sh", "-c", "echo hello-from-containerd; cat /proc/self/uid_map; exit 7"]),
                                            in: containerd.dir)
        #expect(ran.output.contains("hello-from-containerd"), "\(ran)")
        // Stockade's guarantee: the container's root is not host root.
        let map = ran.output.split(separator: "\n").first { $0.contains("65536") }?.split(separator: " ") ?? []
        #expect(map.count == 3 && map[0] == "0" && map[1] != "0", "\(ran)")
        #expect(ran.status == 7, "the container's exit status through the shim: \(ran)")

        // A program the image lacks: the shim reports the runtime's own error.
        let missing = try PrivateContainerd.run(containerd.ctr("stockade-test", ["run", "--rm", "--runc-binary", runtimeBinary, image, "bb2", "/bin/nope"]),
                                                in: containerd.dir)
        #expect(missing.status != 0 && missing.output.contains("execve") && missing.output.contains("/bin/nope"), "\(missing)")
    }
}
