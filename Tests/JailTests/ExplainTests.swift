import Foundation
import StockadeJail
import Testing

/// `stockade explain` says what a jail can do, budget and devices included,
/// from the same lists the launcher uses.
@Suite struct ExplainTests {
    static let stockade = packageRoot + "/.build/debug/stockade"

    @Test("explain prints the profile's budget and its devices")
    func budgetAndDevices() throws {
        try #require(FileManager.default.isExecutableFile(atPath: Self.stockade), "build the CLI first")
        let cpu = try host([Self.stockade, "explain", packageRoot + "/profiles/inference-cpu.toml"])
        #expect(cpu.status == 0, "\(cpu.output)")
        #expect(cpu.output.contains("cgroup budget: memory at most 384M"), "\(cpu.output)")
        #expect(cpu.output.contains("at most 32 processes and threads"), "\(cpu.output)")
        #expect(!cpu.output.contains("see [limits]"))
        let gpu = try host([Self.stockade, "explain", packageRoot + "/profiles/inference-gpu.toml"])
        #expect(gpu.status == 0, "\(gpu.output)")
        #expect(gpu.output.contains("NVIDIA GPUs: 0"), "\(gpu.output)")
        #expect(gpu.output.contains("the kernel refuses every other device"), "\(gpu.output)")
        let devLine = "/dev: " + (DevicesSection.jailDevNodes + ["pts", "shm"]).joined(separator: ", ")
        #expect(cpu.output.contains(devLine), "\(cpu.output)")
    }

    @Test("the trampoline's /dev nodes and the device allowlist's standard nodes are the same list")
    func devNodeListIsOne() {
        #expect(DevicesSection.jailDevNodes == ["null", "zero", "full", "random", "urandom", "tty"])
        #expect(DevicesSection.jailDevNodes + ["pts"] == DevicesSection.StandardNode.allCases.map(\.rawValue))
    }
}
