import Foundation
import StockadeSeccomp

/// Any bytes as a Docker seccomp JSON profile: the import ends in rules or
/// an ImportError, never a crash; and whatever the JSON says, the compiled
/// program keeps the hardening (x32 and i386 die, clone3 is ENOSYS, mount
/// is refused, TIOCSTI is refused in any high bits).
func fuzzDockerSeccomp(_ bytes: [UInt8]) {
    let imported: DockerSeccompProfile.Imported
    do {
        imported = try DockerSeccompProfile.parse(data: Data(bytes), name: "fuzz.json", kernel: (6, 1))
    } catch {
        precondition(error.description.contains("fuzz.json"))
        return
    }
    var section = SeccompSection()
    section.base = .docker("fuzz.json")
    section.defaultAction = imported.defaultAction
    section.rules = imported.rules
    guard let program = try? section.compile() else { return }
    func verdict(_ data: SeccompData) -> SeccompAction {
        guard let v = try? program.verdict(data) else { preconditionFailure("the program does not run") }
        return v
    }
    let x32 = Int32(bitPattern: SeccompArch.x32SyscallBit) | 39
    precondition(verdict(SeccompData(nr: x32)) == .killProcess)
    precondition(verdict(SeccompData(nr: 20, arch: SeccompArch.i386)) == .killProcess)
    if let n = Syscalls.number(of: "clone3") { precondition(verdict(SeccompData(nr: n)) == .errno(38)) }
    if let n = Syscalls.number(of: "mount") { precondition(verdict(SeccompData(nr: n)) == .errno(1)) }
    if let n = Syscalls.number(of: "ioctl") {
        precondition(verdict(SeccompData(nr: n, args: [0, 0xdead_0000_5412])) == .errno(1))
    }
}
