import Foundation
import Testing
@testable import StockadeConfig
@testable import StockadeJail

/// The Landlock plan derived from a profile's mounts, for each ABI.
extension SeccompTests {
@Suite struct LandlockPlanTests {
    typealias FS = LandlockPlan.FS
    static let text = """
    [[mount]]
    source = "/usr"
    [[mount]]
    source = "/etc/hostname"
    target = "/etc/hostname"
    [[mount]]
    type = "tmpfs"
    target = "/tmp"
    noexec = true
    [[mount]]
    source = "/var/tmp"
    target = "/work"
    writable = true
    [[mount]]
    source = "/no/such/dir"
    target = "/opt/x"
    optional = true
    [[mount]]
    type = "symlink"
    source = "usr/bin"
    target = "/bin"

    [landlock]
    tcp_connect = [443]
    tcp_bind = [8080, 443]
    """

    func rule(_ plan: LandlockPlan, _ path: String) -> LandlockPlan.Rule? { plan.rules.first { $0.path == path } }

    @Test("rules follow the mounts (ABI 5)")
    func rulesFromMounts() throws {
        let plan = try LandlockPlan(profile: try profile(Self.text), abi: 5)
        #expect(plan.abi == 5)
        #expect(plan.fsHandled == (1 << 16) - 1)
        #expect(plan.netHandled == 3)
        #expect(rule(plan, "/")?.access == FS.readDir)
        #expect(rule(plan, "/usr")?.access == FS.readFile | FS.readDir | FS.execute)
        // A file bind carries only rights a file can have.
        #expect(rule(plan, "/etc/hostname")?.access == FS.readFile | FS.execute)
        let tmp = try #require(rule(plan, "/tmp"))
        #expect(tmp.access & FS.execute == 0)
        #expect(tmp.access & FS.makeReg != 0 && tmp.access & FS.writeFile != 0)
        let work = try #require(rule(plan, "/work"))
        #expect(work.access & FS.execute != 0 && work.access & FS.removeFile != 0 && work.access & FS.refer != 0)
        #expect(work.access & (FS.makeChar | FS.makeBlock) == 0)
        #expect(rule(plan, "/opt/x") == nil)   // optional and missing on the host
        #expect(rule(plan, "/bin") == nil)     // symlinks resolve to what they name
        #expect(rule(plan, "/proc")?.access == FS.readFile | FS.readDir)
        #expect(rule(plan, "/dev")!.access & FS.ioctlDev != 0)
        #expect(plan.ports == [.init(port: 443, access: 3), .init(port: 8080, access: 1)])
        #expect(plan.required == false)
    }

    @Test("older ABIs get fewer rights handled and say what is not enforced")
    func olderABIs() throws {
        let p = try profile(Self.text)
        let one = try LandlockPlan(profile: p, abi: 1)
        #expect(one.fsHandled == (1 << 13) - 1)
        #expect(one.netHandled == 0 && one.ports.isEmpty)
        #expect(one.rules.allSatisfy { $0.access & ~one.fsHandled == 0 })
        #expect(one.report.contains { $0.contains("TCP is not restricted") && $0.contains("not enforced") })
        #expect(one.report.contains { $0.contains("needs ABI 2") })
        let three = try LandlockPlan(profile: p, abi: 3)
        #expect(three.fsHandled & FS.truncate != 0 && three.fsHandled & FS.ioctlDev == 0)
    }

    @Test("no Landlock: reported, or an error when required")
    func unavailable() throws {
        let plan = try LandlockPlan(profile: try profile(""), abi: -95)
        #expect(plan.abi == 0)
        #expect(plan.report.first?.contains("not enabled at boot") == true)
        #expect(throws: ProfileError.self) { try LandlockPlan(profile: try profile("[landlock]\nrequired = true"), abi: -38) }
        #expect(throws: ProfileError.self) { try LandlockPlan(profile: try profile("[landlock]\nrequired = true\ntcp_bind = [1]"), abi: 3) }
        let off = try LandlockPlan(profile: try profile("[landlock]\nenabled = false"), abi: 7)
        #expect(off.abi == 0 && off.rules.isEmpty)
    }

    @Test("the profile's [landlock] keys are checked")
    func sectionErrors() {
        #expect(throws: ProfileError.self) { try profile("[landlock]\ntcp_bind = [70000]") }
        #expect(throws: ProfileError.self) { try profile("[landlock]\nrequired = true\nenabled = false") }
        #expect(throws: ProfileError.self) { try profile("[landlock]\nudp = [53]") }
    }

    @Test("this kernel's Landlock ABI is detected")
    func kernelABI() {
        let abi = LandlockPlan.kernelABI()
        // Either a version or a clean -errno; never 0.
        #expect(abi != 0)
    }
}
}
