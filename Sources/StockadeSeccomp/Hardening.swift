/// The hardening every jail gets, whatever its profile says.
///
/// It runs as a hand-written BPF prelude in front of the profile's filter:
/// the prelude kills other architectures and x32, answers ENOSYS for
/// `clone3` and for numbers beyond the known table, and denies the calls
/// below (or their dangerous arguments) before the profile's own rules are
/// consulted. A profile lifts one entry only with a reason:
/// `allow_dangerous = { ptrace = "the debugger worker" }`.
///
/// Why a prelude and not libseccomp rules: libseccomp cannot express "deny
/// these argument values, allow the rest" beside an unconditional allow of
/// the same call (the unconditional rule silently wins), and profiles that
/// allow `ioctl` or `clone` are the common case. The prelude only reads the
/// syscall number and architecture on the path of every call it does not
/// deny, so the kernel's constant-action cache still applies.
public struct HardenedCall: Sendable, Hashable {
    public enum Check: Sendable, Hashable {
        /// Always denied with this errno.
        case deny(Int32)
        /// Denied when the low 32 bits of the argument have any of `mask`'s bits.
        case denyFlags(arg: Int, mask: UInt32)
        /// Denied when the low 32 bits of the argument equal one of the values
        /// (the kernel reads this argument as a 32-bit `unsigned int`).
        case denyValues(arg: Int, values: [UInt32])
        /// Denied unless the low 32 bits of the argument equal one of the values.
        case allowOnlyValues(arg: Int, values: [UInt32])
    }

    public var name: String
    public var check: Check
    public var why: String

    /// Whether the call is refused outright (so a profile that allows it is a mistake).
    public var isTotal: Bool { if case .deny = check { return true } else { return false } }

    static let EPERM: Int32 = 1
    static let ENOSYS: Int32 = 38

    public static let all: [HardenedCall] = {
        var list: [HardenedCall] = [
            HardenedCall(name: "clone3", check: .deny(ENOSYS),
                         why: "its flags live in memory where seccomp cannot read them; libc falls back to clone"),
            HardenedCall(name: "clone", check: .denyFlags(arg: 0, mask: UInt32(SeccompConstants.cloneNamespaceFlags)),
                         why: "namespace flags would let the worker build namespaces of its own"),
            HardenedCall(name: "unshare", check: .denyFlags(arg: 0, mask: UInt32(SeccompConstants.cloneNamespaceFlags)),
                         why: "namespace flags would let the worker build namespaces of its own"),
            HardenedCall(name: "ioctl", check: .denyValues(arg: 1, values: [UInt32(SeccompConstants.TIOCSTI), UInt32(SeccompConstants.TIOCLINUX)]),
                         why: "TIOCSTI and TIOCLINUX push input into a terminal outside the jail"),
            HardenedCall(name: "personality", check: .allowOnlyValues(arg: 0, values: [0, 8, 0x20000, 0x20008, 0xffff_ffff]),
                         why: "only PER_LINUX, PER_LINUX32, UNAME26 and the query; other personas weaken ASLR and W^X"),
        ]
        func deny(_ names: [String], _ why: String) {
            for n in names { list.append(HardenedCall(name: n, check: .deny(EPERM), why: why)) }
        }
        deny(["setns"], "joining another namespace")
        deny(["io_uring_setup", "io_uring_enter", "io_uring_register"], "io_uring bypasses seccomp and is a large attack surface")
        deny(["bpf"], "loading BPF programs into the kernel")
        deny(["perf_event_open"], "performance counters leak kernel and co-tenant information")
        deny(["userfaultfd"], "a tool for stretching kernel race windows")
        deny(["keyctl", "add_key", "request_key"], "the kernel keyring is not namespaced")
        deny(["ptrace", "process_vm_readv", "process_vm_writev"], "inspecting or changing other processes")
        deny(["mount", "umount2", "pivot_root", "chroot", "fsopen", "fsconfig", "fsmount", "fspick",
              "open_tree", "move_mount", "mount_setattr"], "changing the jail's filesystem layout")
        deny(["kexec_load", "kexec_file_load", "reboot"], "replacing or stopping the kernel")
        deny(["init_module", "finit_module", "delete_module", "create_module"], "loading kernel modules")
        deny(["open_by_handle_at"], "opening files by handle escapes the mount tree (\"shocker\")")
        deny(["swapon", "swapoff", "acct", "quotactl", "quotactl_fd", "lookup_dcookie", "syslog",
              "vhangup", "nfsservctl", "iopl", "ioperm"], "host administration")
        deny(["settimeofday", "clock_settime", "clock_adjtime"], "setting the host's clock")
        return list
    }()

    public static func named(_ name: String) -> HardenedCall? { all.first { $0.name == name } }
}

enum Prelude {
    /// The hardening prelude for the native architecture (x86_64). Every
    /// path through it ends in a return or falls off its end into the
    /// profile's filter.
    ///
    /// `.dispatch` (what jails load) tests the common case first: one
    /// `jge` sends every number past the table aside, where the `-1` and
    /// x32 tests happen, and `ioctl`, the hot call whose verdict reads an
    /// argument, goes to its handler before the search. `.reference` is
    /// the earlier straight-line order (-1, x32, past the table, search),
    /// kept to prove the two give every call the same verdict.
    static func assemble(lifting lifted: Set<String>, layout: SeccompLayout = .dispatch) -> [BPFInstruction] {
        var asm = BPFAssembler()
        typealias I = BPFInstruction
        let offsetNr: UInt32 = 0, offsetArch: UInt32 = 4
        // The prelude compares one 32-bit word of an argument: only arguments
        // the kernel reads as 32 bits (``IntArguments``) can be checked here.
        // A fact of this build's tables, held by a test
        // (`hardeningReadsOnlyIntArguments`): a check at run time would
        // build the whole table at every launch, where the cached program's
        // prelude is assembled to be compared.
        func argLow(_ call: HardenedCall, _ n: Int) -> UInt32 {
            assert(IntArguments.isInt(call.name, n), "\(call.name) arg\(n) is not a 32-bit argument")
            return 16 + UInt32(n) * 8
        }

        // Another architecture (i386 through int 0x80 shares the process): kill.
        asm.load(offsetArch)
        asm.jump(I.JEQ, Syscalls.nativeArch, ifTrue: .next, ifFalse: .label("kill"))
        asm.load(offsetNr)
        let pastTable = UInt32(Syscalls.highestKnown) + 1
        if layout == .reference {
            // syscall(-1) is how tracers skip a call; answer ENOSYS like the kernel.
            asm.jump(I.JEQ, 0xffff_ffff, ifTrue: .label("enosys"))
            // x32 shares AUDIT_ARCH_X86_64 and marks its calls with bit 30: kill.
            asm.jump(I.JSET, SeccompArch.x32SyscallBit, ifTrue: .label("kill"))
            // Numbers past the known table: ENOSYS, so libc falls back cleanly.
            asm.jump(I.JGE, pastTable, ifTrue: .label("enosys"))
        } else {
            // -1 and every x32 number lie past the table (bit 30 is far
            // above it): one test keeps them off the common path.
            asm.jump(I.JGE, pastTable, ifTrue: .label("past"))
        }

        // Where each hardened number goes: straight to a verdict, or to a
        // handler that looks at one argument.
        var handlers: [(String, HardenedCall)] = []
        var entries: [(nr: UInt32, target: String)] = []
        for call in HardenedCall.all where !lifted.contains(call.name) {
            guard let nr = Syscalls.number(of: call.name) else { continue }
            switch call.check {
            case .deny(let e):
                entries.append((UInt32(nr), e == HardenedCall.ENOSYS ? "enosys" : "eperm"))
            default:
                entries.append((UInt32(nr), "h_" + call.name))
                handlers.append(("h_" + call.name, call))
            }
        }
        var sorted = entries.sorted { $0.nr < $1.nr }
        if layout == .dispatch, let ioctl = Syscalls.number(of: "ioctl").map(UInt32.init),
           let hot = sorted.firstIndex(where: { $0.nr == ioctl }) {
            asm.jump(I.JEQ, ioctl, ifTrue: .label(sorted[hot].target))
            sorted.remove(at: hot)
        }
        emitSearch(sorted[...], into: &asm)
        // Every path of the search ends in a jump: the numbers past the
        // table are handled here, where A still holds the number.
        if layout == .dispatch {
            asm.label("past")
            // syscall(-1) is how tracers skip a call; answer ENOSYS like the kernel.
            asm.jump(I.JEQ, 0xffff_ffff, ifTrue: .label("enosys"))
            // x32 shares AUDIT_ARCH_X86_64 and marks its calls with bit 30: kill.
            // Other numbers past the table: ENOSYS, so libc falls back cleanly.
            asm.jump(I.JSET, SeccompArch.x32SyscallBit, ifTrue: .label("kill"), ifFalse: .label("enosys"))
        }
        for (label, call) in handlers {
            asm.label(label)
            switch call.check {
            case .deny: break
            case .denyFlags(let arg, let mask):
                asm.load(argLow(call, arg))
                asm.jump(I.JSET, mask, ifTrue: .label("eperm"), ifFalse: .label("pass"))
            case .denyValues(let arg, let values):
                asm.load(argLow(call, arg))
                for v in values { asm.jump(I.JEQ, v, ifTrue: .label("eperm")) }
                asm.goto("pass")
            case .allowOnlyValues(let arg, let values):
                asm.load(argLow(call, arg))
                for v in values { asm.jump(I.JEQ, v, ifTrue: .label("pass")) }
                asm.goto("eperm")
            }
        }
        asm.label("kill")
        asm.ret(SeccompAction.retKillProcess)
        asm.label("enosys")
        asm.ret(SeccompAction.errno(HardenedCall.ENOSYS).raw)
        asm.label("eperm")
        asm.ret(SeccompAction.errno(HardenedCall.EPERM).raw)
        asm.label("pass")
        return asm.assemble()
    }

    /// At most this many numbers are tested one by one at a leaf of the search.
    static let leafSize = 3

    /// A binary search over the sorted hardened numbers: `jge` on the middle
    /// number splits the range until a leaf of at most ``leafSize`` numbers
    /// remains, tested with `jeq`; a number that matches none passes to the
    /// policy. A call the prelude lets through costs about log2(n/3) + 3
    /// comparisons instead of one per hardened call, and, as before, only
    /// the number is read on that path (the kernel's constant-action cache
    /// still applies).
    static func emitSearch(_ entries: ArraySlice<(nr: UInt32, target: String)>, into asm: inout BPFAssembler) {
        asm.binarySearch(entries, prefix: "ge_", key: \.nr, isLeaf: { $0.count <= leafSize }) { leaf, asm in
            for (i, e) in leaf.enumerated() {
                let last = i == leaf.count - 1
                asm.jump(BPFInstruction.JEQ, e.nr, ifTrue: .label(e.target), ifFalse: last ? .label("pass") : .next)
            }
            if leaf.isEmpty { asm.goto("pass") }
        }
    }
}
