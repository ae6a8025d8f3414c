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
}
}
