import Testing
@testable import StockadeSeccomp

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

    @Test("every table entry for the installed libseccomp matches it, on each architecture it names")
    func tableEntriesMatchLibseccomp() {
        let installed = SeccompProgram.libseccompVersion
        let entries = Syscalls.knownHighest.filter { "\($0.key.major).\($0.key.minor).\($0.key.micro)" == installed }
        // A release without an entry still works (highestKnown asks
        // libseccomp), but every launch pays for the lookups again.
        #expect(!entries.isEmpty, "no entry in Syscalls.knownHighest for libseccomp \(installed): add one")
        for (table, highest) in entries {
            #expect(Syscalls.highestKnownByLibseccomp(arch: table.arch) == highest,
                    "arch 0x\(String(table.arch, radix: 16)), libseccomp \(installed)")
        }
    }
}
}
