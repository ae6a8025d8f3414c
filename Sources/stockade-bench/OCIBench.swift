// Part "oci": container start to exit through containerd (`ctr run --rm` of
// busybox `true`), stockade-runtime beside runc, interleaved in one run.
// containerd is started here with a config, state and socket of its own;
// the image is made offline with umoci from busybox-static.
import Foundation
import StockadeOCI
#if canImport(Glibc)
import Glibc
#endif

func ociBench() throws {
    let env = ProcessInfo.processInfo.environment
    let runtime = env["STOCKADE_RUNTIME_BIN"] ?? ".build/release/stockade-runtime"
    let runs = Int(env["BENCH_OCI_RUNS"] ?? "") ?? 30
    let tools = PrivateContainerd.tools + ["/usr/sbin/runc", runtime]
    for tool in tools where access(tool, X_OK) != 0 {
        print("oci: skipped, \(tool) is missing (make deps installs containerd, umoci, busybox-static)")
        return
    }
    let runtimePath = runtime.hasPrefix("/") ? runtime : FileManager.default.currentDirectoryPath + "/" + runtime
    let containerd: PrivateContainerd
    do {
        containerd = try PrivateContainerd(dir: "/tmp/stockade-bench-oci-\(getpid())")
    } catch {
        print("oci: skipped, \(error)")
        return
    }
    defer { containerd.stop() }
    do {
        try containerd.importBusybox(name: "docker.io/library/stockade-bb:bench", namespace: "bench", applets: ["true"])
    } catch {
        print("oci: skipped, \(error)")
        return
    }
    let contenders = [("stockade-runtime", runtimePath), ("runc", "/usr/sbin/runc")]
    var samples: [String: [Double]] = [:]
    for i in 0..<runs {
        for (name, binary) in contenders {
            let argv = containerd.ctr("bench", ["run", "--rm", "--runc-binary", binary,
                                                "docker.io/library/stockade-bb:bench", "bench-\(name)-\(i)", "/bin/true"])
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
