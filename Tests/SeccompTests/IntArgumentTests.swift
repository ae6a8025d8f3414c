import Foundation
import Testing
@testable import StockadeSeccomp

/// 32-bit arguments compared the way the kernel reads them: a high bit set
/// in a register must not walk a value around a rule. Tried as an attacker
/// would, in real jails, against the stock allowlist and Docker's profile.
extension SeccompTests {
@Suite struct IntArgumentTests {
    static let AF_UNIX: UInt64 = 1, AF_INET: UInt64 = 2, AF_INET6: UInt64 = 10, AF_ALG: UInt64 = 38
    static let AF_VSOCK: UInt64 = 40, AF_KCM: UInt64 = 41
    static let high: UInt64 = 1 << 32

    /// Rules on 32-bit arguments, one comparison kind per call, plus two
    /// range tests in one rule (the largest expansion a rule gets).
    static let policyText = """
    [seccomp]
    base = "none"
    default = "errno:4000"
    [[seccomp.rule]]
    syscall = "kill"
    action = "errno:4001"
    args = ["arg1 == 5"]
    [[seccomp.rule]]
    syscall = "tkill"
    action = "errno:4002"
    args = ["arg1 != 5"]
    [[seccomp.rule]]
    syscall = "setpgid"
    action = "errno:4003"
    args = ["arg1 < 100"]
    [[seccomp.rule]]
    syscall = "getpgid"
    action = "errno:4004"
    args = ["arg0 <= 100"]
    [[seccomp.rule]]
    syscall = "getsid"
    action = "errno:4005"
    args = ["arg0 > 0x80000005"]
    [[seccomp.rule]]
    syscall = "setuid"
    action = "errno:4006"
    args = ["arg0 >= 100"]
    [[seccomp.rule]]
    syscall = "setgid"
    action = "errno:4007"
    args = ["arg0 & 0x10000ff00 == 0x1200"]
    [[seccomp.rule]]
    syscall = "setreuid"
    action = "allow"
    args = ["arg0 < 0x12345678", "arg1 != 7"]
    [[seccomp.rule]]
    syscall = "socket"
    action = "allow"
    args = ["arg0 == -1"]
    """

    @Test("every comparison on a 32-bit argument means the low 32 bits, for any high bits")
    func lowWordMeaning() throws {
        let section = try profile(Self.policyText).seccomp
        let program = try section.compile()
        var rng = SystemRandomNumberGenerator()
        let interesting: [UInt64] = [0, 4, 5, 6, 7, 99, 100, 101, 0x1200, 0x12ff, 0x1_0000_1200, 0x8000_0005, 0x8000_0006,
                                     0x1234_5677, 0x1234_5678, 0xffff_ffff, 0x1_0000_0005, 0xffff_ffff_0000_0005,
                                     0x8000_0000_0000_0064, .max]
        for _ in 0..<3000 {
            let pick: () -> UInt64 = {
                let v = Bool.random(using: &rng) ? interesting.randomElement(using: &rng)! : UInt64.random(in: 0...UInt64.max, using: &rng)
                // Often a small value with junk above it: the attacker's variant.
                return Bool.random(using: &rng) ? v : (v & 0xffff_ffff) | (UInt64.random(in: 1...0xffff_ffff, using: &rng) << 32)
            }
            let args = (0..<6).map { _ in pick() }
            for rule in section.rules {
                let expected: SeccompAction = rule.matches(args) ? rule.action : .errno(4000)
                let got = try program.verdict(SeccompData(nr: rule.number, args: args))
                #expect(got == expected, "\(rule) \(args.map { String($0, radix: 16) }): \(got) vs \(expected)")
            }
        }
        // The plain meaning: only the low half counts.
        let kill = section.rules.first { $0.syscall == "kill" }!
        #expect(kill.matches([0, 5 | Self.high]))
        #expect(!kill.matches([0, 6 | Self.high]))
        let socket = section.rules.first { $0.syscall == "socket" }!
        #expect(socket.matches([0xffff_ffff]) && socket.matches([.max]))
    }

    @Test("the one table covers every argument the hardening reads")
    func hardeningReadsOnlyIntArguments() {
        for call in HardenedCall.all {
            switch call.check {
            case .deny: break
            case .denyFlags(let arg, _), .denyValues(let arg, _), .allowOnlyValues(let arg, _):
                #expect(IntArguments.isInt(call.name, arg), "\(call.name) arg\(arg)")
            }
        }
        #expect(IntArguments.isInt("socket", 0) && IntArguments.isInt("socket", 2))
        #expect(!IntArguments.isInt("mmap", 3))  // unsigned long: all 64 bits
    }

    /// Sockets tried in one jail: `family type protocol`, each as sysc's
    /// outcome. A socket that is made shows as `ret N`.
    static func sockets(_ profileText: String, _ cases: [(UInt64, UInt64, UInt64)]) throws -> [SyscallOutcome] {
        try JailEndToEndTests.sysc(profileText, cases.map { [String(nr("socket")), String($0.0), String($0.1), String($0.2)] })
    }

    static func made(_ o: SyscallOutcome) -> Bool {
        if case .returned = o { return true } else { return false }
    }

    @Test("docker-default: socket(AF_VSOCK | 1<<32) and its neighbours are refused in a jail, ordinary sockets made")
    func dockerHighBitFamily() throws {
        let text = try String(contentsOfFile: Helpers.repository.appendingPathComponent("profiles/docker-default.toml").path, encoding: .utf8)
            .replacingOccurrences(of: #"import = "docker:"#, with: #"import = "docker:"# + Helpers.repository.path + "/profiles/")
        let refused: [(UInt64, UInt64, UInt64)] = [
            (Self.AF_VSOCK, 1, 0), (Self.AF_VSOCK | Self.high, 1, 0), (Self.AF_VSOCK | 0xffff_ffff_0000_0000, 1, 0),
            (Self.AF_VSOCK | 1 << 63, 1, 0), (Self.AF_VSOCK | Self.high, 2, 0),
            (Self.AF_ALG | Self.high, 5, 0), (39 | 1 << 33, 1, 0) as (UInt64, UInt64, UInt64),
        ]
        let made: [(UInt64, UInt64, UInt64)] = [(Self.AF_UNIX | Self.high, 1, 0), (Self.AF_INET | Self.high, 2, 0), (Self.AF_UNIX, 1, 0)]
        let got = try Self.sockets(text, refused + made)
        try #require(got.count == refused.count + made.count, "\(got)")
        for (c, g) in zip(refused.dropLast(), got) {
            #expect(g == .errno(1), "socket(\(String(c.0, radix: 16)), \(c.1), \(c.2)): \(g)")
        }
        // 39 is allowed by Docker's own rule (== 39); with a high bit it is
        // still 39 to the kernel, which has no such family here: not EPERM.
        #expect(got[refused.count - 1] != .errno(1), "\(got[refused.count - 1])")
        for (c, g) in zip(made, got.dropFirst(refused.count)) {
            #expect(Self.made(g), "socket(\(String(c.0, radix: 16)), \(c.1), \(c.2)): \(g)")
        }
        // Past AF_VSOCK Docker allows (> 40): AF_KCM with a high bit reaches the kernel.
        let kcm = try Self.sockets(text, [(Self.AF_KCM | Self.high, 5, 0)])
        #expect(kcm.first != .errno(1), "\(kcm)")
    }

    @Test("the stock allowlist: local and IP sockets with TCP, UDP or the default protocol; no vsock, MPTCP, UDP-Lite, SCTP")
    func stockSocketProtocols() throws {
        let refused: [(UInt64, UInt64, UInt64)] = [
            (Self.AF_VSOCK, 1, 0), (Self.AF_VSOCK | Self.high, 1, 0), (Self.AF_INET, 1, 262), (Self.AF_INET6, 1, 262),
            (Self.AF_INET, 2, 136), (Self.AF_INET6, 2, 136), (Self.AF_INET, 1, 132), (Self.AF_INET, 1, 262 | Self.high),
            (Self.AF_INET | Self.high, 1, 262), (Self.AF_UNIX, 1, 6), (Self.AF_INET, 3, 1), (16, 3, 0), (17 | Self.high, 3, 0),
        ]
        let made: [(UInt64, UInt64, UInt64)] = [
            (Self.AF_UNIX, 1, 0), (Self.AF_UNIX | Self.high, 2, 0), (Self.AF_INET, 1, 0), (Self.AF_INET, 1, 6),
            (Self.AF_INET, 2, 17), (Self.AF_INET6, 1, 6 | Self.high), (Self.AF_INET6 | Self.high, 2, 0),
        ]
        let got = try Self.sockets(JailEndToEndTests.minimal, refused + made)
        try #require(got.count == refused.count + made.count, "\(got)")
        for (c, g) in zip(refused, got) {
            #expect(g == .errno(1), "socket(\(String(c.0, radix: 16)), \(c.1), \(String(c.2, radix: 16))): \(g)")
        }
        for (c, g) in zip(made, got.dropFirst(refused.count)) {
            #expect(Self.made(g), "socket(\(String(c.0, radix: 16)), \(c.1), \(String(c.2, radix: 16))): \(g)")
        }
        // socketpair is held to AF_UNIX and protocol 0 the same way.
        let pairs = try JailEndToEndTests.sysc(JailEndToEndTests.minimal, [
            [String(nr("socketpair")), String(Self.AF_UNIX | Self.high), "1", "0", "0x7fff0000"],
            [String(nr("socketpair")), String(Self.AF_VSOCK | Self.high), "1", "0", "0"],
            [String(nr("socketpair")), String(Self.AF_UNIX), "1", "1"],
        ])
        #expect(pairs.count == 3 && pairs[1] == .errno(1) && pairs[2] == .errno(1), "\(pairs)")
        #expect(pairs.first != .errno(1), "\(pairs)")
    }
}
}
