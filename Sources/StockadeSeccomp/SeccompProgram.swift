internal import CSeccomp
internal import CStockadeSpawn
import StockadeSystem
import SystemPackage
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
#if canImport(Glibc)
import Glibc
#endif

/// A finished seccomp filter: the `sock_filter` array the jail's child
/// loads with `seccomp(SECCOMP_SET_MODE_FILTER, flags, ...)` as its last
/// step before `execve`. Built in the parent; the child only copies bytes.
///
/// The program is the hardening prelude (``HardenedCall``) followed by the
/// profile's policy: a dispatch by number that answers every call whose
/// verdict does not depend on its arguments (``SeccompLayout/dispatch``),
/// then the policy as libseccomp compiled it, for the calls whose verdict
/// does. Every path through the prelude either returns or falls through to
/// the policy's first instruction.
public struct SeccompProgram: Sendable {
    /// The `struct sock_filter` array, 8 bytes per instruction, host order.
    public var bytes: [UInt8]
    public var instructions: [BPFInstruction]
    /// How many of the instructions are the hardening prelude.
    public var preludeCount: Int
    /// `SECCOMP_FILTER_FLAG_*` for the load (0 today).
    public var flags: UInt32
    public var defaultAction: SeccompAction
    /// What the compiler skipped or adjusted (from the section, plus its own).
    public var notes: [String]
    /// Hardening entries lifted by the profile, with their reasons.
    public var lifted: [String: String]

    /// The most rules one rule may become once its 32-bit comparisons are
    /// written for libseccomp (two range tests on two arguments: 32 x 32).
    static let maxRulesPerRule = 1024

    /// The kernel accepts at most this many instructions per filter.
    public static let maxInstructions = 4096

    /// The verdict of this program for one call, by interpreting the BPF.
    public func verdict(_ data: SeccompData) throws(BPFError) -> SeccompAction {
        SeccompAction(raw: try runBPF(instructions, on: data))
    }

    /// Compiles a policy: the prelude by hand, the rules with libseccomp
    /// (native architecture only, bad architecture kills the process,
    /// binary-tree optimisation where the library supports it).
    public static func compile(_ section: SeccompSection, layout: SeccompLayout = .dispatch) throws(SeccompCompileError) -> SeccompProgram {
        var notes = section.notes
        let prelude = Prelude.assemble(lifting: Set(section.allowDangerous.keys), layout: layout)
        var policy = try compilePolicy(section, notes: &notes)
        if layout == .dispatch {
            policy = PolicyDispatch.assemble(policy: policy, highest: UInt32(Syscalls.highestKnown))
        }
        let all = prelude + policy
        guard all.count <= maxInstructions else {
            throw SeccompCompileError("the filter has \(all.count) instructions; the kernel takes at most \(maxInstructions)")
        }
        return SeccompProgram(bytes: BPFInstruction.encode(all), instructions: all, preludeCount: prelude.count,
                              flags: 0, defaultAction: section.defaultAction, notes: notes,
                              lifted: section.allowDangerous)
    }

    static func compilePolicy(_ section: SeccompSection, notes: inout [String]) throws(SeccompCompileError) -> [BPFInstruction] {
        guard let ctx = seccomp_init(section.defaultAction.raw) else {
            throw SeccompCompileError("libseccomp refused the default action \(section.defaultAction) (is it supported by this kernel?)")
        }
        defer { seccomp_release(ctx) }
        var rc = seccomp_attr_set(ctx, SCMP_FLTATR_ACT_BADARCH, SeccompAction.retKillProcess)
        guard rc == 0 else { throw SeccompCompileError("libseccomp: cannot make a bad architecture kill the process: \(libseccompErrno(-rc))") }
        rc = seccomp_attr_set(ctx, SCMP_FLTATR_CTL_OPTIMIZE, 2)
        if rc != 0 { notes.append("libseccomp \(libseccompVersion) has no binary-tree optimisation; the filter is a linear list") }

        // Conditions on 32-bit arguments compare the low half only, as the
        // kernel reads it; that can split a rule into several.
        var expanded: [SeccompRule] = []
        for rule in section.rules where rule.action != section.defaultAction {
            let low = rule.lowWordRules()
            guard low.count <= maxRulesPerRule else {
                throw SeccompCompileError("\(rule) from \(rule.origin) needs \(low.count) comparisons on the low 32 bits of its arguments; split it into rules with fewer ranges or != tests (at most \(maxRulesPerRule))")
            }
            expanded += low
        }
        for rule in expanded {
            var cmps = rule.conditions.map { c in
                c.op == .maskedEq
                    ? scmp_arg_cmp(arg: UInt32(c.arg), op: c.op.scmp, datum_a: c.mask, datum_b: c.value)
                    : scmp_arg_cmp(arg: UInt32(c.arg), op: c.op.scmp, datum_a: c.value, datum_b: 0)
            }
            let rc = cmps.withUnsafeMutableBufferPointer { buf in
                seccomp_rule_add_array(ctx, rule.action.raw, rule.number, UInt32(buf.count), buf.baseAddress)
            }
            guard rc == 0 else {
                throw SeccompCompileError("libseccomp rejected \(rule) from \(rule.origin): \(libseccompErrno(-rc))")
            }
        }

        let fd = stk_memfd_create("stockade-seccomp", 1 /* MFD_CLOEXEC */)
        guard fd >= 0 else { throw SeccompCompileError("memfd_create: \(libseccompErrno(errno))") }
        defer { close(fd) }
        rc = seccomp_export_bpf(ctx, fd)
        guard rc == 0 else { throw SeccompCompileError("libseccomp could not export the filter: \(libseccompErrno(-rc))") }
        let size = lseek(fd, 0, SEEK_END)
        guard size > 0, size % 8 == 0, lseek(fd, 0, SEEK_SET) == 0 else {
            throw SeccompCompileError("libseccomp exported \(size) bytes, not a whole BPF program")
        }
        var bytes = [UInt8](repeating: 0, count: Int(size))
        var done = 0
        while done < bytes.count {
            let n: Int
            do {
                n = try retryingSyscall { bytes.withUnsafeMutableBytes { read(fd, $0.baseAddress! + done, $0.count - done) } }
            } catch {
                throw SeccompCompileError("reading the exported filter back: \(libseccompErrno(error.rawValue))")
            }
            guard n > 0 else { throw SeccompCompileError("the exported filter ended after \(done) of \(bytes.count) bytes") }
            done += n
        }
        guard let program = BPFInstruction.decode(bytes) else {
            throw SeccompCompileError("the exported filter is not a whole number of instructions")
        }
        return program
    }

    public static var libseccompVersion: String {
        guard let v = seccomp_version() else { return "?" }
        return "\(v.pointee.major).\(v.pointee.minor).\(v.pointee.micro)"
    }
}

extension SeccompSection {
    /// Compiles this policy to the program the jail loads.
    public func compile(layout: SeccompLayout = .dispatch) throws(SeccompCompileError) -> SeccompProgram {
        try SeccompProgram.compile(self, layout: layout)
    }
}

public struct SeccompCompileError: Error, CustomStringConvertible, Sendable {
    public var description: String
    init(_ message: String) { self.description = "seccomp: " + message }
}

func libseccompErrno(_ e: Int32) -> String {
    let name = ErrnoNames.name(of: e) ?? "errno \(e)"
    return "\(name) (\(String(cString: strerror(e))))"
}
