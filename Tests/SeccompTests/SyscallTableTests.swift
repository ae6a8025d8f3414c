import Testing
@testable import StockadeSeccomp
internal import CSeccomp

/// The highest call number the prelude knows comes from a table of
/// libseccomp releases instead of a thousand lookups at every launch: each
/// entry for the installed release must be what libseccomp itself says, or
/// the prelude would answer ENOSYS for a call a profile allows (too low) or
/// pass unnamed numbers to the profile's filter (too high).
extension SeccompTests {
@Suite struct SyscallTableTests {
    @Test("highestKnown is libseccomp's own answer on this architecture")
    func nativeMatchesLibseccomp() {
        #expect(Syscalls.highestKnown == Syscalls.highestKnownByLibseccomp())
        #expect(Syscalls.name(of: Syscalls.highestKnown) != nil)
    }

    @Test("the table's entry for the installed libseccomp matches it, on each architecture the table names")
    func tableEntriesMatchLibseccomp() throws {
        let v = try #require(seccomp_version())
        let (major, minor, micro) = (v.pointee.major, v.pointee.minor, v.pointee.micro)
        // A release without an entry still works (highestKnown asks
        // libseccomp), but every launch pays for the lookups again.
        #expect(Syscalls.knownHighest(arch: Syscalls.nativeArch, major: major, minor: minor, micro: micro) != nil,
                "no entry in Syscalls.knownHighest for libseccomp \(major).\(minor).\(micro): add one")
        #expect(Syscalls.tableArchitectures.contains(Syscalls.nativeArch))
        for arch in Syscalls.tableArchitectures {
            let entry = Syscalls.knownHighest(arch: arch, major: major, minor: minor, micro: micro)
            #expect(entry == nil || entry == Syscalls.highestKnownByLibseccomp(arch: arch),
                    "arch 0x\(String(arch, radix: 16)), libseccomp \(major).\(minor).\(micro)")
        }
        // Another release is never answered from this one's entry.
        #expect(Syscalls.knownHighest(arch: Syscalls.nativeArch, major: major, minor: minor, micro: micro + 1) == nil)
    }
}
}
