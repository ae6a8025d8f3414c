public import SystemPackage
import CStockadeSpawn
import StockadeSystem
#if canImport(Glibc)
import Glibc
#endif

/// The cgroup v2 device allowlist: an eBPF program of type
/// `BPF_PROG_TYPE_CGROUP_DEVICE`, assembled here, loaded with `bpf(2)` and
/// attached to the jail's cgroup. The kernel runs it on every open and
/// mknod of a device node by a process in the cgroup; it returns 1 to
/// allow, 0 to refuse (EPERM).
///
/// The program's input is `struct bpf_cgroup_dev_ctx`: `access_type` (u32 at
/// offset 0: the device type in the low 16 bits, `BPF_DEVCG_DEV_CHAR` = 2,
/// and the access in the high 16, `BPF_DEVCG_ACC_MKNOD` = 1, `READ` = 2,
/// `WRITE` = 4), `major` (u32 at 4) and `minor` (u32 at 8). The program:
///
///     r2 = ctx.access_type & 0xffff           ; device type
///     if r2 != CHAR goto deny                 ; never a block device
///     r3 = (ctx.access_type >> 16) & ~(READ|WRITE)
///     if r3 != 0 goto deny                    ; never mknod
///     r4 = ctx.major; r5 = ctx.minor
///     r6 = ctx.access_type >> 16              ; only with a rule short of read-write
///     for each rule:
///         if r4 != major goto next
///         if r5 != minor goto next            ; left out for "any minor"
///         r7 = r6 & ~access; if r7 != 0 goto next  ; left out for read-write rules
///         r0 = 1; exit
///     next: ...
///     deny: r0 = 0; exit
public struct DeviceProgram: Sendable, Equatable {
    /// One eBPF instruction (`struct bpf_insn`, 8 bytes).
    public struct Instruction: Sendable, Equatable, CustomStringConvertible {
        public var code: UInt8
        public var dst: UInt8
        public var src: UInt8
        public var offset: Int16
        public var imm: Int32

        var bytes: [UInt8] {
            var b: [UInt8] = [code, (src << 4) | (dst & 0x0f)]
            withUnsafeBytes(of: offset.littleEndian) { b += $0 }
            withUnsafeBytes(of: imm.littleEndian) { b += $0 }
            return b
        }

        public var description: String {
            switch code {
            case Op.loadWord: return "r\(dst) = *(u32 *)(r\(src) + \(offset))"
            case Op.and32Imm: return "w\(dst) &= \(hex(imm))"
            case Op.rsh32Imm: return "w\(dst) >>= \(imm)"
            case Op.mov32Reg: return "w\(dst) = w\(src)"
            case Op.mov64Imm: return "r\(dst) = \(imm)"
            case Op.jneImm: return "if r\(dst) != \(imm) goto +\(offset)"
            case Op.exit: return "exit"
            default: return "code \(hex(Int32(code)))"
            }
        }

        private func hex(_ v: Int32) -> String { "0x" + String(UInt32(bitPattern: v), radix: 16) }
    }

    /// The opcodes the device program uses (class | operation | source).
    enum Op {
        static let loadWord: UInt8 = 0x61   // BPF_LDX | BPF_MEM | BPF_W
        static let and32Imm: UInt8 = 0x54   // BPF_ALU | BPF_AND | BPF_K
        static let rsh32Imm: UInt8 = 0x74   // BPF_ALU | BPF_RSH | BPF_K
        static let mov32Reg: UInt8 = 0xbc   // BPF_ALU | BPF_MOV | BPF_X
        static let mov64Imm: UInt8 = 0xb7   // BPF_ALU64 | BPF_MOV | BPF_K
        static let jneImm: UInt8 = 0x55     // BPF_JMP | BPF_JNE | BPF_K
        static let exit: UInt8 = 0x95       // BPF_JMP | BPF_EXIT
    }

    static let devChar: Int32 = 2
    static let accessReadWrite: Int32 = 2 | 4

    public var instructions: [Instruction]

    /// Assembles the allowlist for `rules`.
    public init(rules: [DeviceRule]) {
        func ins(_ code: UInt8, dst: UInt8 = 0, src: UInt8 = 0, off: Int16 = 0, imm: Int32 = 0) -> Instruction {
            Instruction(code: code, dst: dst, src: src, offset: off, imm: imm)
        }
        // Only char devices, only read and write: anything else is refused
        // before the rules are looked at.
        var program: [Instruction] = [
            ins(Op.loadWord, dst: 2, src: 1, off: 0),
            ins(Op.and32Imm, dst: 2, imm: 0xffff),
            ins(Op.jneImm, dst: 2, imm: Self.devChar),
            ins(Op.loadWord, dst: 3, src: 1, off: 0),
            ins(Op.rsh32Imm, dst: 3, imm: 16),
            ins(Op.and32Imm, dst: 3, imm: ~Self.accessReadWrite),
            ins(Op.jneImm, dst: 3, imm: 0),
            ins(Op.loadWord, dst: 4, src: 1, off: 4),
            ins(Op.loadWord, dst: 5, src: 1, off: 8),
        ]
        // The access asked for, kept only where some rule is short of read-write.
        if rules.contains(where: { $0.access != .readWrite }) {
            program += [ins(Op.loadWord, dst: 6, src: 1, off: 0), ins(Op.rsh32Imm, dst: 6, imm: 16)]
        }
        let toDeny = [2, 6]
        for rule in rules {
            // Each test jumps past the rest of this rule's block on a mismatch.
            var block: [Instruction] = [ins(Op.jneImm, dst: 4, imm: Int32(bitPattern: rule.major))]
            if let minor = rule.minor {
                block.append(ins(Op.jneImm, dst: 5, imm: Int32(bitPattern: minor)))
            }
            // A rule short of read-write: any access it lacks goes on to the next rule.
            if rule.access != .readWrite {
                block.append(ins(Op.mov32Reg, dst: 7, src: 6))
                block.append(ins(Op.and32Imm, dst: 7, imm: Self.accessReadWrite & ~Int32(rule.access.rawValue)))
                block.append(ins(Op.jneImm, dst: 7, imm: 0))
            }
            block.append(ins(Op.mov64Imm, dst: 0, imm: 1))
            block.append(ins(Op.exit))
            for i in block.indices where block[i].code == Op.jneImm {
                block[i].offset = Int16(block.count - i - 1)
            }
            program += block
        }
        for i in toDeny { program[i].offset = Int16(program.count - i - 1) }
        program.append(ins(Op.mov64Imm, dst: 0, imm: 0))
        program.append(ins(Op.exit))
        instructions = program
    }

    /// The program as the kernel takes it.
    public var bytes: [UInt8] { instructions.flatMap(\.bytes) }

    /// What the program decides for a char (`block == false`) or block
    /// device, `access` in `BPF_DEVCG_ACC_*` bits: the same walk the kernel
    /// makes, for tests and `explain`.
    public func allows(block: Bool = false, access: UInt32, major: UInt32, minor: UInt32) -> Bool {
        var r = [UInt64](repeating: 0, count: 11)
        let accessType = (access << 16) | (block ? 1 : 2)
        let ctx: [UInt32] = [accessType, major, minor]
        var pc = 0
        while pc < instructions.count {
            let i = instructions[pc]
            pc += 1
            switch i.code {
            case Op.loadWord: r[Int(i.dst)] = UInt64(ctx[Int(i.offset) / 4])
            case Op.and32Imm: r[Int(i.dst)] = UInt64(UInt32(truncatingIfNeeded: r[Int(i.dst)]) & UInt32(bitPattern: i.imm))
            case Op.rsh32Imm: r[Int(i.dst)] = UInt64(UInt32(truncatingIfNeeded: r[Int(i.dst)]) >> UInt32(i.imm))
            case Op.mov32Reg: r[Int(i.dst)] = UInt64(UInt32(truncatingIfNeeded: r[Int(i.src)]))
            case Op.mov64Imm: r[Int(i.dst)] = UInt64(bitPattern: Int64(i.imm))
            case Op.jneImm: if r[Int(i.dst)] != UInt64(bitPattern: Int64(i.imm)) { pc += Int(i.offset) }
            case Op.exit: return r[0] == 1
            default: return false
            }
        }
        return false
    }

    /// A loaded program: its fd, closed when no longer needed (an attached
    /// program stays attached to its cgroup).
    public struct Loaded: ~Copyable {
        public let fd: FileDescriptor
        deinit { try? fd.close() }
    }

    /// Loads the program into the kernel; the verifier's log comes with
    /// any refusal.
    ///
    /// The corresponding C function is `bpf(BPF_PROG_LOAD)`.
    public func load() throws(DeviceError) -> Loaded {
        // Without a log first (a full trace of a long program overflows
        // any buffer); a refusal is loaded again with the log to explain it.
        do {
            return try load(logLevel: 0)
        } catch {
            return try load(logLevel: 1)
        }
    }

    private func load(logLevel: UInt32) throws(DeviceError) -> Loaded {
        let code = bytes
        let license = Array("GPL".utf8) + [0]
        let name = Array("stockade_devs".utf8)
        var log = [UInt8](repeating: 0, count: 65536)
        let fd: Int = code.withUnsafeBytes { insns in
            license.withUnsafeBytes { lic in
                log.withUnsafeMutableBytes { logBuf in
                    var attr = [UInt8](repeating: 0, count: Self.attrSize)
                    Self.put32(&attr, 0, 15)                                   // prog_type: CGROUP_DEVICE
                    Self.put32(&attr, 4, UInt32(instructions.count))           // insn_cnt
                    Self.put64(&attr, 8, UInt64(UInt(bitPattern: insns.baseAddress)))
                    Self.put64(&attr, 16, UInt64(UInt(bitPattern: lic.baseAddress)))
                    if logLevel > 0 {
                        Self.put32(&attr, 24, logLevel)                        // log_level
                        Self.put32(&attr, 28, UInt32(logBuf.count))            // log_size
                        Self.put64(&attr, 32, UInt64(UInt(bitPattern: logBuf.baseAddress)))
                    }
                    for (i, c) in name.enumerated() { attr[48 + i] = c }       // prog_name[16]
                    Self.put32(&attr, 68, 6)                                   // expected_attach_type: BPF_CGROUP_DEVICE
                    return Self.bpf(5, &attr)                                  // BPF_PROG_LOAD
                }
            }
        }
        guard fd >= 0 else {
            let e = Int32(-fd)
            let text = String(decoding: log.prefix(while: { $0 != 0 }), as: UTF8.self)
            let hint: String
            switch e {
            case EPERM:
                hint = "loading a cgroup device program needs CAP_BPF and CAP_SYS_ADMIN (run the launcher as root)"
            case ENOSYS:
                hint = "this kernel has no bpf() system call (CONFIG_BPF_SYSCALL)"
            case EINVAL:
                hint = "this kernel lacks cgroup device programs (CONFIG_CGROUP_BPF) or refused the program"
            default:
                hint = ""
            }
            var message = "cannot load the device allowlist program: \(errnoName(e))"
            if !hint.isEmpty { message += " (\(hint))" }
            if !text.isEmpty { message += "\nverifier log:\n" + text }
            throw DeviceError(message)
        }
        return Loaded(fd: FileDescriptor(rawValue: Int32(fd)))
    }

    /// Loads the program and attaches it to the cgroup whose directory is
    /// open as `cgroup`, beside any program the cgroup's ancestors hold
    /// (`BPF_F_ALLOW_MULTI`: every program on the path must allow).
    ///
    /// The corresponding C function is `bpf(BPF_PROG_ATTACH)`.
    public func attach(to cgroup: FileDescriptor, describing path: String) throws(DeviceError) {
        let program = try load()
        var attr = [UInt8](repeating: 0, count: Self.attrSize)
        Self.put32(&attr, 0, UInt32(bitPattern: cgroup.rawValue))  // target_fd
        Self.put32(&attr, 4, UInt32(bitPattern: program.fd.rawValue)) // attach_bpf_fd
        Self.put32(&attr, 8, 6)                                     // attach_type: BPF_CGROUP_DEVICE
        Self.put32(&attr, 12, 2)                                    // attach_flags: BPF_F_ALLOW_MULTI
        let r = Self.bpf(8, &attr)                                  // BPF_PROG_ATTACH
        guard r >= 0 else {
            let e = Int32(-r)
            let hint = e == EPERM
                ? " (an ancestor cgroup holds a device program attached without BPF_F_ALLOW_MULTI, or the launcher lacks CAP_SYS_ADMIN)"
                : e == EBADF ? " (\(path) is not a cgroup v2 directory)" : ""
            throw DeviceError("cannot attach the device allowlist to \(path): \(errnoName(e))\(hint)")
        }
    }

    /// The number of device programs attached directly to a cgroup.
    ///
    /// The corresponding C function is `bpf(BPF_PROG_QUERY)`.
    public static func attachedCount(to cgroup: FileDescriptor) throws(DeviceError) -> Int {
        try attachedIDs(to: cgroup).count
    }

    /// Replaces the device programs attached directly to a cgroup with this
    /// one: the new program is attached first, then the old ones detached,
    /// so while both hold a device is allowed only where both allow it
    /// (never more than either list).
    ///
    /// The corresponding C functions are `bpf(BPF_PROG_GET_FD_BY_ID)` and `bpf(BPF_PROG_DETACH)`.
    public func replace(on cgroup: FileDescriptor, describing path: String) throws(DeviceError) {
        let old = try Self.attachedIDs(to: cgroup)
        try attach(to: cgroup, describing: path)
        for id in old {
            var attr = [UInt8](repeating: 0, count: Self.attrSize)
            Self.put32(&attr, 0, id)                                    // prog_id
            let fd = Self.bpf(13, &attr)                                // BPF_PROG_GET_FD_BY_ID
            guard fd >= 0 else { throw DeviceError("cannot open device program \(id) of \(path): \(errnoName(Int32(-fd)))") }
            defer { close(Int32(fd)) }
            attr = [UInt8](repeating: 0, count: Self.attrSize)
            Self.put32(&attr, 0, UInt32(bitPattern: cgroup.rawValue))  // target_fd
            Self.put32(&attr, 4, UInt32(fd))                            // attach_bpf_fd
            Self.put32(&attr, 8, 6)                                     // attach_type: BPF_CGROUP_DEVICE
            let r = Self.bpf(9, &attr)                                  // BPF_PROG_DETACH
            guard r >= 0 else { throw DeviceError("cannot detach the old device allowlist from \(path): \(errnoName(Int32(-r)))") }
        }
    }

    /// The ids of the device programs attached directly to a cgroup.
    static func attachedIDs(to cgroup: FileDescriptor) throws(DeviceError) -> [UInt32] {
        var ids = [UInt32](repeating: 0, count: 64)
        let r: Int = ids.withUnsafeMutableBytes { buf in
            var attr = [UInt8](repeating: 0, count: attrSize)
            put32(&attr, 0, UInt32(bitPattern: cgroup.rawValue))    // target_fd
            put32(&attr, 4, 6)                                       // attach_type
            put32(&attr, 8, 0)                                       // query_flags
            put64(&attr, 16, UInt64(UInt(bitPattern: buf.baseAddress))) // prog_ids
            put32(&attr, 24, 64)                                     // prog_cnt
            let rc = bpf(16, &attr)                                  // BPF_PROG_QUERY
            return rc < 0 ? rc : Int(get32(attr, 24))
        }
        guard r >= 0 else { throw DeviceError("cannot query the cgroup's device programs: \(errnoName(Int32(-r)))") }
        return Array(ids.prefix(r))
    }

    // `union bpf_attr` is larger than any field used here; the kernel
    // accepts a shorter one (the rest reads as zero).
    static let attrSize = 120


    /// `bpf(cmd, attr, size)`; returns the result or -errno.
    static func bpf(_ cmd: Int, _ attr: inout [UInt8]) -> Int {
        attr.withUnsafeMutableBytes { raw in
            do throws(Errno) {
                return try retryingSyscall { stk_bpf(Int32(cmd), raw.baseAddress, UInt32(raw.count)) }
            } catch {
                return -Int(error.rawValue)
            }
        }
    }

    static func put32(_ b: inout [UInt8], _ at: Int, _ v: UInt32) {
        for i in 0..<4 { b[at + i] = UInt8(truncatingIfNeeded: v >> (8 * UInt32(i))) }
    }

    static func put64(_ b: inout [UInt8], _ at: Int, _ v: UInt64) {
        for i in 0..<8 { b[at + i] = UInt8(truncatingIfNeeded: v >> (8 * UInt64(i))) }
    }

    static func get32(_ b: [UInt8], _ at: Int) -> UInt32 {
        (0..<4).reduce(UInt32(0)) { $0 | UInt32(b[at + $1]) << (8 * UInt32($1)) }
    }
}
