import Foundation
import Testing
import StockadeOCI
#if canImport(Glibc)
import Glibc
#endif

/// The CRI pod lifecycle and the probe battery in a pod, driven from
/// Python (Tests/CRI/test_cri.py, over gRPC with the PyPI packages
/// container-runtime-interface-api and grpcio) through Debian's containerd
/// with its CRI plugin: a containerd of the test's own (config, root, state,
/// socket; no systemd), the runtime handler `stockade` (the runc shim with
/// stockade-runtime as its runc binary) beside `runc`, and a pause image
/// made offline with umoci from busybox-static. Pods get a network
/// namespace of their own through the test's CNI plugin
/// (Tests/CRI/cni/stockade-pod-netns), which keeps every packet inside it.
@Suite("OCICRI", .serialized)
struct OCICRITests {
    static let venvPython = packageRoot + "/.venv/bin/python3"
    static let probeBinary = packageRoot + "/.build/stockade-probe"
    static let stockade = packageRoot + "/.build/debug/stockade"

    init() throws {
        try #require(getuid() == 0, "containerd runs as root")
        for tool in PrivateContainerd.tools + ["/usr/sbin/runc", "/usr/bin/nsenter", "/usr/sbin/ip"] {
            try #require(FileManager.default.isExecutableFile(atPath: tool), "\(tool) is missing: make deps installs containerd, runc, umoci, busybox-static, iproute2")
        }
        for built in [runtimeBinary, Self.stockade, Self.probeBinary] {
            try #require(FileManager.default.isExecutableFile(atPath: built), "\(built) is missing: swift build and make probe")
        }
        try #require(FileManager.default.isExecutableFile(atPath: Self.venvPython), "the venv is missing: make venv")
    }

    @Test("RunPodSandbox to RemovePodSandbox through containerd's CRI plugin, handler stockade and runc; the probe battery in a pod")
    func criSuite() throws {
        let dir = "/tmp/stockade-cri-\(getpid())"
        let sandboxImage = "docker.io/library/stockade-pause:test"
        let image = "docker.io/library/stockade-bb:test"
        let containerd = try PrivateContainerd(dir: dir, cri: .init(
            sandboxImage: sandboxImage, handlers: ["stockade": runtimeBinary],
            cniBinDir: packageRoot + "/Tests/CRI/cni", cniNetwork: "stockade-pod-netns"))
        let cgroupParent = "/stockade-cri-\(getpid())"
        defer {
            containerd.stop()
            // The pods' parent in every hierarchy, with the pod cgroups the
            // runtimes made below it (all empty once the pods are removed).
            let hierarchies = ((try? FileManager.default.contentsOfDirectory(atPath: "/sys/fs/cgroup")) ?? []).map { "/sys/fs/cgroup/" + $0 }
            func remove(_ dir: String) {
                for child in (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? [] {
                    var st = stat()
                    if lstat(dir + "/" + child, &st) == 0 && (st.st_mode & S_IFMT) == S_IFDIR { remove(dir + "/" + child) }
                }
                rmdir(dir)
            }
            for h in hierarchies + ["/sys/fs/cgroup"] { remove(h + cgroupParent) }
        }
        // The pause: PID 1 of the pod's sandbox, alive until SIGTERM.
        try containerd.importBusybox(name: sandboxImage, namespace: "k8s.io", applets: ["sh", "sleep"],
                                     entrypoint: ["/bin/sh", "-c", "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait; done"])
        try containerd.importBusybox(name: image, namespace: "k8s.io", applets: ["sh", "echo", "cat", "sleep", "id", "ls"])

        var environment = ProcessInfo.processInfo.environment
        environment["STOCKADE_CRI_ENDPOINT"] = "unix://" + containerd.socket
        environment["STOCKADE_CRI_IMAGE"] = image
        environment["STOCKADE_CRI_HANDLERS"] = "stockade,runc"
        environment["STOCKADE_CRI_WORKDIR"] = dir
        environment["STOCKADE_CRI_CGROUP_PARENT"] = cgroupParent
        environment["STOCKADE_RUNTIME"] = runtimeBinary
        environment["STOCKADE_BIN"] = Self.stockade
        environment["STOCKADE_PROBE"] = Self.probeBinary
        // The profile closest to a CRI container with the RuntimeDefault seccomp profile.
        environment["STOCKADE_CRI_PROBE_PROFILE"] = packageRoot + "/profiles/docker-default.toml"
        let (status, output) = try PrivateContainerd.run(
            [Self.venvPython, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", packageRoot + "/Tests/CRI"],
            in: dir, environment: environment)
        print(output)
        let containerdLog = (try? String(contentsOfFile: dir + "/containerd.log", encoding: .utf8)) ?? ""
        #expect(status == 0,
                "the CRI suite failed: \(output)\ncontainerd's errors: \(containerdLog.split(separator: "\n").filter { $0.contains("level=error") }.suffix(20).joined(separator: "\n"))")
        #expect(!output.contains("skipped"), "a CRI test was skipped: \(output)")
    }
}
