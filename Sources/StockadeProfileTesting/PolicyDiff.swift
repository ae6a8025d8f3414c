public import StockadeSeccomp
public import StockadeJail

/// `stockade diff A B`: what B lets a jail do that A did not, and the
/// reverse. The system-call policies are compared on their compiled
/// filters, per architecture and system call, at the boundary values of
/// both filters' constants (``Boundaries``): every region where the two
/// could differ is tried. The rest of the profile is compared section by
/// section: namespaces, mounts, the Landlock rights they imply, devices,
/// limits.
public struct PolicyDiff: Sendable {
    public enum Direction: String, Sendable, Codable { case widened, narrowed, changed }

    public struct Change: Sendable, Codable, Equatable {
        public var direction: Direction
        public var area: String
        public var text: String
    }

    public var changes: [Change] = []
    /// How many calls were compared.
    public var pointsCompared = 0

    public var widens: Bool { changes.contains { $0.direction == .widened } }

    public init() {}

    /// A's and B's whole profiles.
    public init(_ a: Profile, _ b: Profile, programA: [BPFInstruction], programB: [BPFInstruction]) {
        compareSeccomp(programA, programB)
        compareProfiles(a, b)
    }

    // MARK: system calls

    public mutating func compareSeccomp(_ a: [BPFInstruction], _ b: [BPFInstruction]) {
        let cmp = [Boundaries.comparisons(a), Boundaries.comparisons(b)]
        let native = Syscalls.nativeArch
        var calls: [(UInt32, Int32)] = (0...Syscalls.highestKnown).map { (native, $0) }
        calls += (0...Syscalls.highestKnown).map { (native, $0 | Int32(bitPattern: SeccompArch.x32SyscallBit)) }
        calls += Boundaries.numbersPastTheTable.map { (native, $0) }
        calls += Boundaries.i386Numbers.map { (SeccompArch.i386, $0) }
        calls += [(0xc000_00b7, 0), (0x4000_0028, 0)]
        for (arch, nr) in calls {
            var groups: [String: (Direction, [SeccompData], SeccompAction, SeccompAction)] = [:]
            var order: [String] = []
            let points = Boundaries.points(arch: arch, nr: nr, programs: [a, b], comparisons: cmp)
            pointsCompared += points.count
            for p in points {
                let va = SeccompMachine.action((try? runBPF(a, on: p)) ?? 0)
                let vb = SeccompMachine.action((try? runBPF(b, on: p)) ?? 0)
                guard va != vb else { continue }
                let key = "\(va)>\(vb)"
                if groups[key] == nil {
                    groups[key] = (Self.direction(va, vb), [], va, vb)
                    order.append(key)
                }
                groups[key]!.1.append(p)
            }
            for key in order {
                let (dir, pts, va, vb) = groups[key]!
                let example = pts.min { Self.simplicity($0) < Self.simplicity($1) }!
                let what = ArgumentNames.call(example)
                let share = pts.count == points.count ? "every case" : "\(pts.count) of \(points.count) boundary cases"
                let text: String
                switch dir {
                case .widened: text = "B newly allows \(what) (A: \(va), B: \(vb); \(share))"
                case .narrowed: text = "B no longer allows \(what) (A: \(va), B: \(vb); \(share))"
                case .changed: text = "\(what): A \(va), B \(vb) (\(share))"
                }
                changes.append(Change(direction: dir, area: "seccomp", text: text))
            }
        }
    }

    static func direction(_ a: SeccompAction, _ b: SeccompAction) -> Direction {
        if b.permits && (!a.permits || SeccompMachine.rank(b.raw) > SeccompMachine.rank(a.raw)) { return .widened }
        if a.permits && (!b.permits || SeccompMachine.rank(b.raw) < SeccompMachine.rank(a.raw)) { return .narrowed }
        return .changed
    }

    /// Fewer and smaller arguments read better in an example.
    static func simplicity(_ d: SeccompData) -> (Int, Int) {
        (d.args.filter { $0 != 0 }.count, d.args.reduce(0) { $0 + $1.nonzeroBitCount })
    }

    // MARK: the rest of the profile

    public mutating func compareProfiles(_ a: Profile, _ b: Profile) {
        func add(_ d: Direction, _ area: String, _ text: String) { changes.append(Change(direction: d, area: area, text: text)) }

        for ns in a.namespaces.subtracting(b.namespaces).sorted() { add(.widened, "namespaces", "B shares the host's \(ns.rawValue) namespace") }
        for ns in b.namespaces.subtracting(a.namespaces).sorted() { add(.narrowed, "namespaces", "B has its own \(ns.rawValue) namespace") }

        if a.user.uid != b.user.uid || a.user.gid != b.user.gid {
            add(b.user.uid == 0 && a.user.uid != 0 ? .widened : .changed, "user", "ids \(a.user.uid):\(a.user.gid) became \(b.user.uid):\(b.user.gid)")
        }
        let fa = a.filesystem, fb = b.filesystem
        if fa.readonlyRoot != fb.readonlyRoot { add(fb.readonlyRoot ? .narrowed : .widened, "filesystem", "the root is \(fb.readonlyRoot ? "read-only" : "writable") in B") }
        if fa.proc != fb.proc { add(.changed, "filesystem", "B \(fb.proc ? "mounts" : "does not mount") a fresh /proc") }
        for m in Set(fa.masked).subtracting(fb.masked).sorted() { add(.widened, "filesystem", "B no longer masks \(m)") }
        for m in Set(fb.masked).subtracting(fa.masked).sorted() { add(.narrowed, "filesystem", "B masks \(m)") }

        let ma = Dictionary(a.mounts.map { ($0.target, $0) }, uniquingKeysWith: { x, _ in x })
        let mb = Dictionary(b.mounts.map { ($0.target, $0) }, uniquingKeysWith: { x, _ in x })
        for (t, m) in mb.sorted(by: { $0.key < $1.key }) {
            guard let old = ma[t] else {
                add(.widened, "mounts", "B adds \(Self.mount(m))")
                continue
            }
            if old.source != m.source { add(.changed, "mounts", "\(t): source \(old.source ?? "-") became \(m.source ?? "-")") }
            if old.kind != m.kind { add(.changed, "mounts", "\(t): \(old.kind.rawValue) became \(m.kind.rawValue)") }
            if !old.writable && m.writable { add(.widened, "mounts", "\(t) is writable in B") }
            if old.writable && !m.writable { add(.narrowed, "mounts", "\(t) is read-only in B") }
            if old.noexec && !m.noexec { add(.widened, "mounts", "\(t) allows exec in B") }
            if !old.noexec && m.noexec { add(.narrowed, "mounts", "\(t) is noexec in B") }
            if !old.followSymlinks && m.followSymlinks { add(.widened, "mounts", "\(t) follows every symlink of its source in B") }
            if (old.size ?? .max) < (m.size ?? .max) { add(.widened, "mounts", "\(t) is larger in B") }
        }
        for (t, m) in ma.sorted(by: { $0.key < $1.key }) where mb[t] == nil { add(.narrowed, "mounts", "B drops \(Self.mount(m))") }

        // Landlock: the rights each path gets (from the mounts), on the newest ABI.
        if let la = try? LandlockPlan(profile: a, abi: 6), let lb = try? LandlockPlan(profile: b, abi: 6) {
            if a.landlock.enabled && !b.landlock.enabled { add(.widened, "landlock", "B runs without Landlock") }
            if !a.landlock.enabled && b.landlock.enabled { add(.narrowed, "landlock", "B enables Landlock") }
            let ra = Dictionary(la.rules.map { ($0.path, $0.access) }, uniquingKeysWith: |)
            let rb = Dictionary(lb.rules.map { ($0.path, $0.access) }, uniquingKeysWith: |)
            for path in Set(ra.keys).union(rb.keys).sorted() {
                let x = ra[path] ?? 0, y = rb[path] ?? 0
                if y & ~x != 0 { add(.widened, "landlock", "\(path): B grants \(Self.rights(y & ~x))") }
                if x & ~y != 0 { add(.narrowed, "landlock", "\(path): B no longer grants \(Self.rights(x & ~y))") }
            }
        }
        for p in Set(b.landlock.tcpBind).subtracting(a.landlock.tcpBind).sorted() { add(.widened, "landlock", "B may bind TCP port \(p)") }
        for p in Set(a.landlock.tcpBind).subtracting(b.landlock.tcpBind).sorted() { add(.narrowed, "landlock", "B may no longer bind TCP port \(p)") }
        for p in Set(b.landlock.tcpConnect).subtracting(a.landlock.tcpConnect).sorted() { add(.widened, "landlock", "B may connect to TCP port \(p)") }
        for p in Set(a.landlock.tcpConnect).subtracting(b.landlock.tcpConnect).sorted() { add(.narrowed, "landlock", "B may no longer connect to TCP port \(p)") }

        let da = a.devices, db = b.devices
        for n in db.standard.filter({ !da.standard.contains($0) }) { add(.widened, "devices", "B opens /dev/\(n.rawValue)") }
        for n in da.standard.filter({ !db.standard.contains($0) }) { add(.narrowed, "devices", "B no longer opens /dev/\(n.rawValue)") }
        let aa = Set(da.allow.map(\.description)), ab = Set(db.allow.map(\.description))
        for d in ab.subtracting(aa).sorted() { add(.widened, "devices", "B allows the device \(d)") }
        for d in aa.subtracting(ab).sorted() { add(.narrowed, "devices", "B no longer allows the device \(d)") }
        if da.gpus != db.gpus { add(Self.gpuCount(db.gpus) > Self.gpuCount(da.gpus) ? .widened : .narrowed, "devices", "GPUs: \(da.gpus) became \(db.gpus)") }
        if !da.nvidiaUVMTools && db.nvidiaUVMTools { add(.widened, "devices", "B grants /dev/nvidia-uvm-tools") }

        func limit(_ key: String, _ x: UInt64?, _ y: UInt64?) {
            guard x != y else { return }
            let wider = (y ?? .max) > (x ?? .max)
            add(wider ? .widened : .narrowed, "limits", "\(key): \(x.map(String.init) ?? "unlimited") became \(y.map(String.init) ?? "unlimited")")
        }
        let la = a.limits, lb = b.limits
        limit("memory_max", la.memoryMax, lb.memoryMax)
        limit("memory_high", la.memoryHigh, lb.memoryHigh)
        limit("swap_max", la.swapMax, lb.swapMax)
        limit("pids_max", la.pidsMax, lb.pidsMax)
        limit("cpu (millionths of a CPU)", la.cpu?.microCPUs, lb.cpu?.microCPUs)
        for w in lb.waived.subtracting(la.waived).sorted() { add(.widened, "limits", "B waives \(w)") }
        for w in la.waived.subtracting(lb.waived).sorted() { add(.narrowed, "limits", "B no longer waives \(w)") }
        let rla = Dictionary(a.rlimits.map { ($0.name, $0.hard) }, uniquingKeysWith: { x, _ in x })
        let rlb = Dictionary(b.rlimits.map { ($0.name, $0.hard) }, uniquingKeysWith: { x, _ in x })
        for name in Set(rla.keys).union(rlb.keys).sorted() {
            limit("rlimit \(name)", rla[name] ?? nil, rlb[name] ?? nil)
        }
        if a.timeLimit != b.timeLimit {
            let wider = (b.timeLimit ?? .seconds(Int64.max)) > (a.timeLimit ?? .seconds(Int64.max))
            add(wider ? .widened : .narrowed, "limits", "time_limit: \(a.timeLimit.map { "\($0)" } ?? "none") became \(b.timeLimit.map { "\($0)" } ?? "none")")
        }
        for fd in Set(b.passFDs).subtracting(a.passFDs).sorted() { add(.widened, "fds", "B receives fd \(fd)") }
        for v in Set(b.environment.pass).subtracting(a.environment.pass).sorted() { add(.widened, "env", "B passes \(v) from the launcher") }
        if a.newSession && !b.newSession { add(.widened, "jail", "B keeps the caller's session (and terminal)") }
    }

    static func gpuCount(_ g: DevicesSection.GPUSelection) -> Int {
        switch g { case .none: return 0; case .some(let l): return l.count; case .all: return Int.max }
    }

    static func mount(_ m: MountSpec) -> String {
        switch m.kind {
        case .bind: return "a \(m.writable ? "writable" : "read-only") bind of \(m.source ?? "?") at \(m.target)"
        case .tmpfs: return "a tmpfs at \(m.target)"
        case .symlink: return "a symlink \(m.target) -> \(m.source ?? "?")"
        case .dir: return "a directory \(m.target)"
        }
    }

    static let rightNames: [(UInt64, String)] = [
        (LandlockPlan.FS.execute, "execute"), (LandlockPlan.FS.writeFile, "write_file"), (LandlockPlan.FS.readFile, "read_file"),
        (LandlockPlan.FS.readDir, "read_dir"), (LandlockPlan.FS.removeDir, "remove_dir"), (LandlockPlan.FS.removeFile, "remove_file"),
        (LandlockPlan.FS.makeChar, "make_char"), (LandlockPlan.FS.makeDir, "make_dir"), (LandlockPlan.FS.makeReg, "make_reg"),
        (LandlockPlan.FS.makeSock, "make_sock"), (LandlockPlan.FS.makeFifo, "make_fifo"), (LandlockPlan.FS.makeBlock, "make_block"),
        (LandlockPlan.FS.refer, "refer"), (LandlockPlan.FS.truncate, "truncate"), (LandlockPlan.FS.ioctlDev, "ioctl_dev"),
    ]

    static func rights(_ mask: UInt64) -> String {
        var names = rightNames.filter { mask & $0.0 != 0 }.map(\.1)
        let known = rightNames.reduce(UInt64(0)) { $0 | $1.0 }
        if mask & ~known != 0 { names.append("0x" + String(mask & ~known, radix: 16)) }
        return names.joined(separator: ", ")
    }

    /// The report as text, widenings first.
    public var text: String {
        var lines: [String] = []
        for dir in [Direction.widened, .narrowed, .changed] {
            for c in changes where c.direction == dir { lines.append("\(dir.rawValue) [\(c.area)] \(c.text)") }
        }
        return lines.joined(separator: "\n")
    }
}

/// Argument values named the way a reader knows them: `socket(AF_NETLINK,
/// SOCK_RAW, 0)`, `clone(CLONE_NEWUSER|...)`, `ioctl(3, TIOCSTI)`.
public enum ArgumentNames {
    /// Which constants name which argument.
    static let families: [String: [Int: String]] = [
        "socket": [0: "AF_", 1: "SOCK_", 2: "IPPROTO_"], "socketpair": [0: "AF_", 1: "SOCK_", 2: "IPPROTO_"],
        "ioctl": [1: "T|FIO"], "clone": [0: "CLONE_"], "unshare": [0: "CLONE_"],
        "personality": [0: "PER_|UNAME26|ADDR_NO_RANDOMIZE|READ_IMPLIES_EXEC"],
        "mmap": [2: "PROT_"], "mprotect": [2: "PROT_"], "open": [1: "O_"], "openat": [2: "O_"],
    ]

    public static func value(_ syscall: String, _ arg: Int, _ v: UInt64) -> String {
        let plain = v < 10 ? String(v) : "0x" + String(v, radix: 16)
        guard let prefixes = families[syscall]?[arg] else { return plain }
        let options = prefixes.split(separator: "|").map(String.init)
        // AF_LOCAL is AF_UNIX's other name.
        let table = SeccompConstants.table.filter { k, _ in options.contains { k.hasPrefix($0) } && k != "AF_LOCAL" }
        let low = v & 0xffff_ffff
        if let exact = table.filter({ $0.value == low }).map(\.key).sorted().first, v >> 32 == 0 { return exact }
        // Flags: name each bit that has a name, the rest as a number.
        if ["CLONE_", "PROT_", "O_"].contains(where: options.contains) && v >> 32 == 0 {
            var rest = low
            var names: [String] = []
            for (k, bit) in table.sorted(by: { $0.key < $1.key }) where bit != 0 && bit.nonzeroBitCount == 1 && rest & bit != 0 {
                names.append(k)
                rest &= ~bit
            }
            if !names.isEmpty { return (names + (rest != 0 ? ["0x" + String(rest, radix: 16)] : [])).joined(separator: "|") }
        }
        return plain
    }

    public static func call(_ d: SeccompData) -> String {
        guard d.arch == SeccompArch.x86_64, UInt32(bitPattern: d.nr) & SeccompArch.x32SyscallBit == 0 || d.nr == -1,
              let name = Syscalls.name(of: d.nr) else {
            return CallCorpus.describe(d)
        }
        var args = d.args
        while let last = args.last, last == 0 { args.removeLast() }
        return "\(name)(\(args.enumerated().map { value(name, $0.offset, $0.element) }.joined(separator: ", ")))"
    }
}
