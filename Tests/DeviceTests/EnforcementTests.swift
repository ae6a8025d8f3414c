import Foundation
import StockadeCgroups
import StockadeJail
import StockadeSystem
import SystemPackage
import Testing

@Suite("The device program, assembled")
struct DeviceProgramTests {
    let rules = [DeviceRule(major: 1, minor: 3), DeviceRule(major: 136, minor: nil)]

    @Test("it allows read and write of listed char devices, and nothing else")
    func decisions() {
        let program = DeviceProgram(rules: rules)
        let read: UInt32 = 2, write: UInt32 = 4, mknod: UInt32 = 1
        #expect(program.allows(access: read, major: 1, minor: 3))
        #expect(program.allows(access: read | write, major: 1, minor: 3))
        #expect(program.allows(access: write, major: 136, minor: 7))
        #expect(!program.allows(access: mknod, major: 1, minor: 3), "mknod is never granted")
        #expect(!program.allows(access: read | mknod, major: 1, minor: 3))
        #expect(!program.allows(access: read, major: 1, minor: 5))
        #expect(!program.allows(access: read, major: 1, minor: 1), "/dev/mem")
        #expect(!program.allows(block: true, access: read, major: 1, minor: 3), "a block device with a listed number")
        #expect(!program.allows(access: read, major: 137, minor: 7))
        #expect(!DeviceProgram(rules: []).allows(access: read, major: 1, minor: 3))
    }

    @Test("the instructions are the documented shape, jumps land on the next rule")
    func shape() {
        let program = DeviceProgram(rules: rules)
        // 9 for the type and access checks and the loads, 4 + 3 for the two rules, 2 for the deny.
        #expect(program.instructions.count == 9 + 4 + 3 + 2)
        #expect(program.bytes.count == program.instructions.count * 8)
        #expect(program.instructions[0].description == "r2 = *(u32 *)(r1 + 0)")
        #expect(program.instructions[2].description == "if r2 != 2 goto +13")
        #expect(program.instructions[6].description == "if r3 != 0 goto +9")
        #expect(program.instructions[9].description == "if r4 != 1 goto +3")
        #expect(program.instructions[10].description == "if r5 != 3 goto +2")
        #expect(program.instructions[13].description == "if r4 != 136 goto +2")
        #expect(program.instructions.last?.description == "exit")
        // bpf_insn: code, dst | src << 4, off (LE), imm (LE).
        #expect(Array(program.bytes[0..<8]) == [0x61, 0x12, 0, 0, 0, 0, 0, 0])
    }

    @Test("the kernel's verifier accepts it", .enabled(if: isRoot, "loading BPF needs root"))
    func verifierAccepts() throws {
        var many: [DeviceRule] = []
        for major in UInt32(1)...UInt32(300) { many.append(DeviceRule(major: major, minor: major % 3 == 0 ? nil : major)) }
        for rules in [[], rules, many] {
            _ = try DeviceProgram(rules: rules).load()
        }
    }
}

/// The allowlist the tests enforce: /dev/null and /dev/urandom; /dev/zero,
/// /dev/full and /dev/tty stay in the jail's /dev but are not allowed.
private let narrowDevices = "standard = [\"null\", \"urandom\", \"pts\"]"
private let probePaths = ["/dev/null", "/dev/urandom", "/dev/zero", "/dev/full", "/dev/mem", "/dev/sda", "/dev/nvidia0"]
private let expectedVerdicts = [
    "/dev/null: open", "/dev/urandom: open", "/dev/zero: EPERM", "/dev/full: EPERM",
    "/dev/mem: absent", "/dev/sda: absent", "/dev/nvidia0: absent",
]

@Suite("The device allowlist, enforced by cgroup v1 devices.* in real jails", .serialized,
       .enabled(if: isRoot && devicesV1Mount != nil, "needs root and the cgroup v1 devices controller (mounted at /sys/fs/cgroup/devices on our build hosts)"))
struct DeviceV1EnforcementTests {
    @Test("null opens, zero is in /dev but EPERM, mem is absent; the devices cgroup is gone afterwards")
    func enforced() throws {
        let profile = try minimalWithDevices(narrowDevices)
        let plan = try DevicePlan.resolve(profile.devices)
        let guarded = try plan.enforce(on: nil)
        #expect(guarded.directory == nil, "v1 needs attach(pid:)")
        let run = try runJailed(profile, ["/bin/sh", "-c", openScript(probePaths)], cgroup: guarded)
        #expect(run.exit.status == 0, "\(run.stdout)")
        #expect(run.lines == expectedVerdicts)
        // The devices cgroup was removed with the jail.
        let base = devicesV1Mount! + "/stockade"
        let left = ((try? FileManager.default.contentsOfDirectory(atPath: base)) ?? []).filter { $0.contains("-\(getpid())-") }
        #expect(left.isEmpty, "left behind: \(left)")
    }

    @Test("without the allowlist the same /dev/zero opens: the EPERM above is the cgroup's")
    func control() throws {
        let profile = try minimalWithDevices(narrowDevices)
        let run = try runJailed(profile, ["/bin/sh", "-c", openScript(["/dev/zero", "/dev/full"])], cgroup: nil)
        #expect(run.lines == ["/dev/zero: open", "/dev/full: open"])
    }

    @Test("the kernel's list is exactly the plan's")
    func kernelList() throws {
        let profile = try minimalWithDevices(narrowDevices)
        let plan = try DevicePlan.resolve(profile.devices)
        let guarded = try plan.enforce(on: nil)
        defer { try? guarded.remove() }
        let base = devicesV1Mount! + "/stockade"
        let mine = try #require(((try? FileManager.default.contentsOfDirectory(atPath: base)) ?? []).first { $0.contains("-\(getpid())-") })
        let list = try String(contentsOfFile: base + "/" + mine + "/devices.list", encoding: .utf8)
        #expect(Set(list.split(separator: "\n").map(String.init)) == Set(plan.rules.map(\.v1Line)))
        try guarded.remove()
        #expect(!FileManager.default.fileExists(atPath: base + "/" + mine))
    }

    @Test("a jail's devices cgroup left by a dead launcher is swept")
    func sweep() throws {
        let base = devicesV1Mount! + "/stockade"
        try FileManager.default.createDirectory(atPath: base, withIntermediateDirectories: true)
        // pid 1's start time is never 1: this owner is gone.
        let stale = base + "/jail-1-1-7"
        try FileManager.default.createDirectory(atPath: stale, withIntermediateDirectories: true)
        let guarded = try DevicePlan(rules: []).enforce(on: nil)
        try guarded.remove()
        #expect(!FileManager.default.fileExists(atPath: stale))
    }
}

@Suite("The device allowlist, enforced by the cgroup v2 device program in real jails", .serialized,
       .enabled(if: isRoot && cgroup2Mount != nil, "needs root and a cgroup2 mount (any controllers: the device program is not a controller)"))
struct DeviceV2EnforcementTests {
    @Test("null opens, zero is in /dev but EPERM, mem is absent")
    func enforced() throws {
        let profile = try minimalWithDevices(narrowDevices)
        let plan = try DevicePlan.resolve(profile.devices)
        let cgroup = try TestV2Cgroup(mount: cgroup2Mount!)
        let guarded = try plan.enforce(on: cgroup)
        #expect(guarded === cgroup, "v2 attaches to the jail's own cgroup")
        #expect(try DeviceProgram.attachedCount(to: cgroup.fd) == 1)
        let run = try runJailed(profile, ["/bin/sh", "-c", openScript(probePaths)], cgroup: guarded)
        #expect(run.exit.status == 0, "\(run.stdout)")
        #expect(run.lines == expectedVerdicts)
        #expect(!FileManager.default.fileExists(atPath: cgroup.path), "the jail's cgroup was not removed")
    }

    @Test("without the program the same /dev/zero opens in the same kind of cgroup")
    func control() throws {
        let profile = try minimalWithDevices(narrowDevices)
        let cgroup = try TestV2Cgroup(mount: cgroup2Mount!)
        let run = try runJailed(profile, ["/bin/sh", "-c", openScript(["/dev/zero"])], cgroup: cgroup)
        #expect(run.lines == ["/dev/zero: open"])
    }

    @Test("a jail launched without a cgroup gets one to hold the program (pure cgroup v2 hosts)",
          .enabled(if: devicesV1Mount == nil, "on hosts with the v1 devices controller a jail without a cgroup is guarded by devices.*"))
    func ownCgroup() throws {
        let profile = try minimalWithDevices(narrowDevices)
        let guarded = try DevicePlan.resolve(for: profile).enforce(on: nil)
        let group = try #require(guarded as? JailGroup)
        #expect(group.version == 2)
        let run = try runJailed(profile, ["/bin/sh", "-c", openScript(probePaths)], cgroup: guarded)
        #expect(run.lines == expectedVerdicts)
        #expect(!FileManager.default.fileExists(atPath: group.path))
    }

    @Test("a program on the parent cgroup still applies to a child with its own (ALLOW_MULTI)")
    func nested() throws {
        let parent = try TestV2Cgroup(mount: cgroup2Mount!)
        defer { try? parent.remove() }
        _ = try DevicePlan(rules: [DeviceRule(major: 1, minor: 3), DeviceRule(major: 1, minor: 5)]).enforce(on: parent)
        let child = try TestV2Cgroup(mount: parent.path)
        // The child allows zero and null; the parent allows zero and null; full is refused by both.
        _ = try DevicePlan(rules: [DeviceRule(major: 1, minor: 3), DeviceRule(major: 1, minor: 7)]).enforce(on: child)
        let profile = try minimalWithDevices(narrowDevices)
        let run = try runJailed(profile, ["/bin/sh", "-c", openScript(["/dev/null", "/dev/zero", "/dev/full"])], cgroup: child)
        // zero: the child's own program refuses it; full: the parent's does.
        #expect(run.lines == ["/dev/null: open", "/dev/zero: EPERM", "/dev/full: EPERM"])
    }
}
