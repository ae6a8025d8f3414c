import Foundation
import Testing
@testable import StockadeJail

extension SeccompTests {
/// What a launch reads from the kernel with plain reads, checked against
/// the same files read by Foundation.
@Suite struct KernelFactsTests {
    @Test("the highest capability number is the kernel's cap_last_cap")
    func capLastCap() throws {
        let text = try String(contentsOfFile: "/proc/sys/kernel/cap_last_cap", encoding: .utf8)
        let expected = try #require(Int32(text.trimmingCharacters(in: .whitespacesAndNewlines)))
        #expect(SpawnPlan.capLastCap() == expected)
    }

    @Test("a host path holding a NUL byte is refused before any name of it is opened")
    func hostPathWithNUL() throws {
        // Each name reaches openat as a C string: "usr\0x" would open /usr.
        #expect(throws: HostPath.Failure.nulByte) { try HostPath.resolve("/usr\u{0}x/bin") }
        #expect(throws: HostPath.Failure.nulByte) { try HostPath.resolve("/usr/bin\u{0}") }
        #expect(try HostPath.resolve("/usr/bin").isDirectory)
        #expect(HostPath.Failure.nulByte.describe("bind source").contains("NUL byte"))
    }
}
}
