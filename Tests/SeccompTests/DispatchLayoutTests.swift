import Foundation
import Testing
@testable import StockadeSeccomp
import StockadeJail

/// The filter jails load (``SeccompLayout/dispatch``: the prelude's common
/// case first, a search by number, libseccomp's filter only for calls
/// decided by their arguments) must give every call the verdict the
/// earlier layout gives (``SeccompLayout/reference``: the straight-line
/// prelude, then libseccomp's filter as exported). A wrong split in the
/// search, a run of numbers merged across a verdict change, a constant
/// verdict read off the wrong path or a hot call sent to the wrong leaf
/// each shows up as a call whose verdict changed. Compared for every
/// shipped profile and for profiles made to stress the dispatch, over
/// every number, the argument values each rule and the hardening name and
/// their neighbours, other architectures and x32; in the BPF machine and,
/// for the shipped profiles, in the kernel.
extension SeccompTests {
@Suite struct DispatchLayoutTests {
    static let profileDir = Helpers.repository.appendingPathComponent("profiles")

    static let shipped: [String] = {
        ((try? FileManager.default.contentsOfDirectory(atPath: profileDir.path)) ?? [])
            .filter { $0.hasSuffix(".toml") }.sorted()
    }()

    static func shippedSection(_ name: String) throws -> SeccompSection {
        try Profile.load(path: profileDir.appendingPathComponent(name).path).seccomp
    }

    /// Profiles that put argument rules, lifted hardening, kills and
    /// unusual defaults where the dispatch has to get them right.
    static let made: [String: String] = [
        "ioctl request list": """
            [seccomp]
            default = "errno:4000"
            [[seccomp.rule]]
            syscall = "ioctl"
            action = "allow"
            args = ["arg1 == TCGETS"]
            [[seccomp.rule]]
            syscall = "ioctl"
            action = "allow"
            args = ["arg1 == FIONREAD"]
            [[seccomp.rule]]
            syscall = "ioctl"
            action = "errno:EACCES"
            args = ["arg1 == TIOCGWINSZ"]
            """,
        "lifted, kill default, argument rules on hot calls": """
            [seccomp]
            default = "kill-process"
            allow = ["getpid", "exit_group", "mmap"]
            allow_dangerous = { ioctl = "test", personality = "test", ptrace = "test" }
            [[seccomp.rule]]
            syscall = "futex"
            action = "allow"
            args = ["arg1 & 0x7f == 1"]
            [[seccomp.rule]]
            syscall = "write"
            action = "errno:EBADF"
            args = ["arg0 > 2"]
            [[seccomp.rule]]
            syscall = "write"
            action = "allow"
            args = ["arg0 <= 2"]
            [[seccomp.rule]]
            syscall = "mprotect"
            action = "trap"
            args = ["arg2 & PROT_EXEC == PROT_EXEC"]
            [[seccomp.rule]]
            syscall = "ioctl"
            action = "log"
            args = ["arg1 == TIOCSTI"]
            """,
        "allow by default, a few denials": """
            [seccomp]
            base = "none"
            default = "allow"
            deny = ["read", "uname", "sysinfo"]
            deny_action = "errno:EACCES"
            [[seccomp.rule]]
            syscall = "socket"
            action = "errno:EAFNOSUPPORT"
            args = ["arg0 == AF_NETLINK"]
            """,
    ]

    static func section(_ key: String) throws -> SeccompSection {
        if let text = made[key] { return try profile(text).seccomp }
        return try shippedSection(key)
    }

    static let all: [String] = shipped + made.keys.sorted()

    // MARK: the calls compared

    static let highest = UInt32(Syscalls.highestKnown)

    /// Values around `v` in the argument's 64 bits: itself, its neighbours,
    /// and with the upper word set (a 32-bit argument compares the low
    /// word only; a 64-bit one all of it).
    static func around(_ v: UInt64) -> [UInt64] {
        [v, v &- 1, v &+ 1, v | 0xffff_ffff_0000_0000, v ^ 0x1_0000_0000]
    }

    /// For each argument of `number` that a rule or the hardening tests,
    /// the values the test names and their neighbours.
    static func namedValues(_ section: SeccompSection, _ number: Int32) -> [Int: Set<UInt64>] {
        var values: [Int: Set<UInt64>] = [:]
        func add(_ arg: Int, _ list: [UInt64]) { values[arg, default: [0, 0xffff_ffff, .max]].formUnion(list) }
        for rule in section.rules where rule.number == number {
            for c in rule.conditions {
                add(c.arg, around(c.value))
                if c.op == .maskedEq {
                    // Each bit of the mask flipped, and bits outside it set.
                    var bits: [UInt64] = [c.mask, c.value | ~c.mask]
                    for i in 0..<64 where c.mask & (1 << UInt64(i)) != 0 { bits.append(c.value ^ (1 << UInt64(i))) }
                    add(c.arg, bits)
                }
            }
        }
        if let name = Syscalls.name(of: number), let call = HardenedCall.named(name) {
            switch call.check {
            case .deny: break
            case .denyFlags(let arg, let mask):
                var bits: [UInt64] = [UInt64(mask)]
                for i in 0..<32 where mask & (1 << UInt32(i)) != 0 { bits.append(1 << UInt64(i)) }
                add(arg, bits.flatMap(around))
            case .denyValues(let arg, let list), .allowOnlyValues(let arg, let list):
                add(arg, list.map(UInt64.init).flatMap(around))
            }
        }
        return values
    }

    /// The calls to compare for one profile: every number up to past the
    /// table with all arguments 0 and with all set, each named argument
    /// value on its own, and every pair of named values on two arguments.
    static func calls(_ section: SeccompSection) -> [SeccompData] {
        var result: [SeccompData] = []
        for n in 0...(highest + 64) {
            let number = Int32(bitPattern: n)
            result.append(SeccompData(nr: number))
            result.append(SeccompData(nr: number, args: Array(repeating: .max, count: 6)))
            let named = namedValues(section, number)
            let args = named.keys.sorted()
            for a in args {
                for v in named[a]! {
                    var vector = [UInt64](repeating: 0, count: 6)
                    vector[a] = v
                    result.append(SeccompData(nr: number, args: vector))
                }
            }
            for (i, a) in args.enumerated() {
                for b in args[(i + 1)...] {
                    for va in named[a]! {
                        for vb in named[b]! {
                            var vector = [UInt64](repeating: 0, count: 6)
                            vector[a] = va
                            vector[b] = vb
                            result.append(SeccompData(nr: number, args: vector))
                        }
                    }
                }
            }
        }
        for n: UInt32 in [0xffff_ffff, 0xffff_fffe, 0x8000_0000, 0x7fff_ffff, 0x4000_0000, 0x3fff_ffff, highest + 1,
                          SeccompArch.x32SyscallBit | 0, SeccompArch.x32SyscallBit | 16, SeccompArch.x32SyscallBit | highest] {
            result.append(SeccompData(nr: Int32(bitPattern: n)))
        }
        return result
    }

    // MARK: the BPF machine

    @Test("every call gets the same verdict from both layouts (BPF machine)", arguments: all)
    func sameVerdicts(_ key: String) throws {
        let section = try Self.section(key)
        let dispatch = try section.compile(layout: .dispatch).instructions
        let reference = try section.compile(layout: .reference).instructions
        try SeccompMachine.check(dispatch)
        var differences: [String] = []
        var compared = 0
        for call in Self.calls(section) {
            for arch in [SeccompArch.x86_64, SeccompArch.i386] {
                var data = call
                data.arch = arch
                let a = try runBPF(dispatch, on: data), b = try runBPF(reference, on: data)
                compared += 1
                if a != b && differences.count < 10 {
                    differences.append("\(SyscallDescription.describe(number: data.nr, args: data.args)) arch \(String(arch, radix: 16)): dispatch \(SeccompAction(raw: a)), reference \(SeccompAction(raw: b))")
                }
            }
        }
        #expect(differences.isEmpty, "\(key): \(differences.joined(separator: "; "))")
        #expect(compared > 2 * Int(Self.highest), "\(key): only \(compared) calls compared")
    }

    @Test("the kernel's action cache lets exactly the same numbers through without running the filter", arguments: all)
    func sameCachedNumbers(_ key: String) throws {
        let section = try Self.section(key)
        let dispatch = try section.compile(layout: .dispatch).instructions
        let reference = try section.compile(layout: .reference).instructions
        var cached = 0
        for n in 0...(Self.highest + 8) {
            let a = SeccompMachine.constantVerdict(dispatch, nr: n), b = SeccompMachine.constantVerdict(reference, nr: n)
            #expect(a == b, "\(key): nr \(n): constant verdict \(a.map { String($0, radix: 16) } ?? "none") in the dispatch, \(b.map { String($0, radix: 16) } ?? "none") before")
            if a == SeccompAction.retAllow { cached += 1 }
        }
        // Every profile here lets some calls through unconditionally.
        #expect(cached > 0, "\(key): no number is cached")
    }

    @Test("shipped profiles: ioctl runs at most 12 instructions; calls with a constant verdict no more than before on average, none more than 2 longer")
    func shorterPaths() throws {
        let hot: [SeccompData] = [
            SeccompData(nr: nr("ioctl"), args: [5, 0x541B, 0x7ffd_0000]), SeccompData(nr: nr("getpid")),
            SeccompData(nr: nr("read"), args: [3, 0x7ffd_0000, 1]), SeccompData(nr: nr("write"), args: [4, 0x7ffd_0000, 1]),
            SeccompData(nr: nr("futex"), args: [0x7ffd_0000, 129, 1]),
        ]
        for name in Self.shipped {
            let section = try Self.shippedSection(name)
            let dispatch = try section.compile(layout: .dispatch).instructions
            let reference = try section.compile(layout: .reference).instructions
            let ioctl = try SeccompMachine.steps(dispatch, on: hot[0])
            #expect(ioctl <= 12, "\(name): ioctl(FIONREAD) runs \(ioctl) instructions")
            for call in hot {
                let a = try SeccompMachine.steps(dispatch, on: call), b = try SeccompMachine.steps(reference, on: call)
                #expect(a < b, "\(name): \(SyscallDescription.name(of: call.nr)) runs \(a) instructions, \(b) before")
            }
            var total = (dispatch: 0, reference: 0)
            var longer: [String] = []
            for n in 0...Self.highest {
                let call = SeccompData(nr: Int32(n))
                let a = try SeccompMachine.steps(dispatch, on: call), b = try SeccompMachine.steps(reference, on: call)
                if SeccompMachine.constantVerdict(reference, nr: n) != nil {
                    total.dispatch += a
                    total.reference += b
                    if a > b + 2 && longer.count < 5 { longer.append("\(SyscallDescription.name(of: Int32(n))): \(a) > \(b)") }
                } else if a > b + 16 && longer.count < 5 {
                    // Decided by libseccomp's filter: the dispatch's tests go in front of it.
                    longer.append("\(SyscallDescription.name(of: Int32(n))) (arguments): \(a) > \(b) + 16")
                }
            }
            #expect(longer.isEmpty, "\(name): \(longer)")
            #expect(total.dispatch <= total.reference, "\(name): \(total.dispatch) instructions over every number, \(total.reference) before")
        }
    }

    @Test("a search tree longer than a conditional jump reaches assembles through ja")
    func longJumps() throws {
        // Every other number allowed: one run per number, a tree of ~900
        // instructions whose first split jumps over ~450.
        let names = (0...Self.highest).compactMap { Syscalls.name(of: Int32($0)) }.enumerated()
            .filter { $0.offset % 2 == 0 && HardenedCall.named($0.element) == nil }.map { "\"\($0.element)\"" }
        let section = try profile("[seccomp]\nbase = \"none\"\ndefault = \"errno:4000\"\nallow = [\(names.joined(separator: ", "))]").seccomp
        let dispatch = try section.compile(layout: .dispatch)
        try SeccompMachine.check(dispatch.instructions)
        #expect(dispatch.instructions.contains { $0.code == BPFInstruction.JMP | BPFInstruction.JA && $0.k > 255 })
        let reference = try section.compile(layout: .reference).instructions
        for n in 0...(Self.highest + 2) {
            let data = SeccompData(nr: Int32(n))
            #expect(try runBPF(dispatch.instructions, on: data) == runBPF(reference, on: data), "nr \(n)")
        }
    }

    // MARK: the kernel

    /// The program with every return turned into a distinct errno, so the
    /// kernel answers each call without running it or killing the caller.
    static func marked(_ program: [BPFInstruction]) -> [BPFInstruction] {
        program.map { ins in
            guard ins.code == BPFInstruction.RET | BPFInstruction.K else { return ins }
            var out = ins
            let marker: UInt32
            switch SeccompAction(raw: ins.k) {
            case .errno(let e): marker = UInt32(e & 0xffff)
            case .allow: marker = 4081
            case .log: marker = 4082
            case .killProcess: marker = 4083
            case .killThread: marker = 4084
            case .trap: marker = 4085
            case .trace: marker = 4086
            case .notify: marker = 4087
            }
            out.k = SeccompAction.errno(Int32(marker)).raw
            return out
        }
    }

    /// Runs the calls under the marked program in the kernel (sysbatch).
    static func kernelAnswers(_ program: [BPFInstruction], _ calls: [SeccompData]) throws -> [String] {
        let tmp = FileManager.default.temporaryDirectory
        let filter = tmp.appendingPathComponent("stockade-batch-\(UUID().uuidString).bpf")
        let list = tmp.appendingPathComponent("stockade-batch-\(UUID().uuidString).txt")
        defer { try? FileManager.default.removeItem(at: filter); try? FileManager.default.removeItem(at: list) }
        try Data(BPFInstruction.encode(program)).write(to: filter)
        let text = calls.map { c in ([Int64(c.nr)] + c.args.map { Int64(bitPattern: $0) }).map(String.init).joined(separator: " ") }
        try (text.joined(separator: "\n") + "\n").write(to: list, atomically: true, encoding: .utf8)
        let outcome = runProcess(try Helpers.path("sysbatch"), [filter.path, list.path])
        guard case .exited(0, let out, _) = outcome else { throw Helpers.BuildError(description: "sysbatch: \(outcome)") }
        return out.split(separator: "\n").map(String.init)
    }

    /// The kernel runs uretprobe (335) and uprobe (336) without consulting
    /// seccomp (Linux 6.11 and 6.17 and later): the call would run (uprobe
    /// outside its trampoline answers ENXIO), so both are left to the machine.
    static let notInKernel: Set<Int32> = [335, 336]

    @Test("shipped profiles in the kernel: both layouts answer every call alike, as the BPF machine predicts", arguments: shipped)
    func kernelVerdicts(_ name: String) throws {
        let section = try Self.shippedSection(name)
        let dispatch = Self.marked(try section.compile(layout: .dispatch).instructions)
        let reference = Self.marked(try section.compile(layout: .reference).instructions)
        let calls = Self.calls(section).filter { !Self.notInKernel.contains($0.nr) }
        let a = try Self.kernelAnswers(dispatch, calls)
        let b = try Self.kernelAnswers(reference, calls)
        try #require(a.count == calls.count && b.count == calls.count, "\(name): \(a.count) and \(b.count) answers for \(calls.count) calls")
        var differences: [String] = []
        for (i, call) in calls.enumerated() {
            let predicted = SeccompMachine.action(try runBPF(dispatch, on: call))
            guard case .errno(let e) = predicted else { Issue.record("\(name): the marked program does not answer with an errno"); return }
            let want = "e \(e)"
            if (a[i] != want || b[i] != want) && differences.count < 10 {
                differences.append("\(SyscallDescription.describe(number: call.nr, args: call.args)): dispatch \(a[i]), reference \(b[i]), machine \(want)")
            }
        }
        #expect(differences.isEmpty, "\(name): \(differences.joined(separator: "; "))")
    }
}
}
