import StockadeSystem
import StockadeConfig
import CStockadeSpawn
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// One Landlock denial as the kernel's audit reported it
/// (`AUDIT_LANDLOCK_ACCESS`): what blocked it and the object.
public struct LandlockDenial: Sendable, Equatable {
    /// `fs.read_file`, `fs.write_file,fs.make_reg`, `net.connect_tcp`, `scope.signal`, ...
    public var blockers: String
    /// The rest of the record: `path="/etc/hostname" dev="vda" ino=611`, `opid=1 ocomm="init"`, ...
    public var object: String
}

/// What one jail's Landlock domain was denied.
public struct LandlockTally: Sendable, Codable, Equatable {
    public var total = 0
    /// By blocker (`fs.read_file`: 3).
    public var byBlocker: [String: Int] = [:]
    /// The first denial: `fs.read_file path="/etc/hostname" dev="vda" ino=611`.
    public var example: String?
    public init() {}
}

/// One jail's Landlock denials, counted from the audit records of the
/// domain its worker created (and every process it forked lives in).
public final class LandlockWatch: Sendable {
    public let workerPID: Int32
    let onDenial: (@Sendable (LandlockDenial) -> Void)?
    private let state = Mutex<(tally: LandlockTally, domains: Set<String>, freed: Set<String>)>((LandlockTally(), [], []))

    init(workerPID: Int32, onDenial: (@Sendable (LandlockDenial) -> Void)?) {
        self.workerPID = workerPID
        self.onDenial = onDenial
    }

    public func tally() -> LandlockTally { state.withLock { $0.tally } }

    func adopt(_ domain: String) { state.withLock { _ = $0.domains.insert(domain) } }

    func record(_ d: LandlockDenial) {
        state.withLock { s in
            s.tally.total += 1
            for b in d.blockers.split(separator: ",") { s.tally.byBlocker[String(b), default: 0] += 1 }
            if s.tally.example == nil { s.tally.example = d.blockers + " " + d.object }
        }
        onDenial?(d)
    }

    /// The kernel's own count when the domain is freed: records the audit
    /// backlog dropped are added (without a blocker: it does not say).
    func freed(_ domain: String, denials: Int) {
        let missing = state.withLock { s -> Int in
            s.freed.insert(domain)
            let gap = max(0, denials - s.tally.total)
            s.tally.total += gap
            return gap
        }
        for _ in 0..<missing { onDenial?(LandlockDenial(blockers: "unknown", object: "(the audit record was dropped)")) }
    }

    /// Waits up to `timeout` for the kernel to free the domains that had
    /// denials (its final count comes then); the records travel through
    /// the kernel's audit thread after the jail has ended.
    public func settle(timeout: Duration) {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if state.withLock({ $0.domains.isSubset(of: $0.freed) }) { return }
            usleep(5_000)
        }
    }

    public func stop() { LandlockAudit.shared.remove(self) }
}

/// Landlock denials, read from the kernel's audit records (Linux 6.15 and
/// later: `AUDIT_LANDLOCK_ACCESS` and `AUDIT_LANDLOCK_DOMAIN`) on the audit
/// netlink socket's read-only multicast group, by one thread per process.
/// A domain is matched to its jail by the pid that created it (the
/// worker). Possible only where the kernel's audit is enabled and the
/// process may read it (CAP_AUDIT_READ); ``unavailableReason`` says why not.
public final class LandlockAudit: @unchecked Sendable {
    public static let shared = LandlockAudit()

    static let accessRecord: UInt16 = 1423
    static let domainRecord: UInt16 = 1424
    static let netlinkAudit: Int32 = 9
    static let readLogGroup: UInt32 = 1

    private struct State {
        var watches: [Int32: LandlockWatch] = [:]
        var domains: [String: LandlockWatch] = [:]
        /// Recent domains not (yet) matched: creator pid, and their denials
        /// (records of one event come before the domain's own record).
        var unmatched: [String: (pid: Int32?, denials: [LandlockDenial])] = [:]
        var order: [String] = []
        var socket: Int32 = -1
    }
    private let state = Mutex<State>(State())

    /// Why Landlock denials cannot be counted here; nil when they can.
    public static var unavailableReason: String? {
        let abi = stk_landlock_abi()
        if abi < 7 {
            return abi < 1 ? "this kernel has no Landlock" : "this kernel's Landlock (ABI \(abi)) writes no audit records (Linux 6.15 and later do)"
        }
        let fd = socket(AF_NETLINK, Int32(SOCK_RAW.rawValue) | Int32(SOCK_CLOEXEC.rawValue), netlinkAudit)
        guard fd >= 0 else { return "the kernel has no audit (no NETLINK_AUDIT socket: \(errnoName(errno)))" }
        defer { close(fd) }
        guard bindNetlink(fd, groups: readLogGroup) == 0 else {
            return "reading the kernel's audit records needs CAP_AUDIT_READ (root): \(errnoName(errno))"
        }
        switch auditEnabled() {
        case .some(false): return "the kernel's audit is disabled (auditctl -e 1 enables it), and Landlock reports nothing while it is off"
        case nil: return "the kernel's audit status cannot be read (AUDIT_GET needs CAP_AUDIT_CONTROL)"
        case .some(true): return nil
        }
    }

    static func bindNetlink(_ fd: Int32, groups: UInt32) -> Int32 {
        // struct sockaddr_nl: family, pad, pid, groups.
        var addr: (UInt16, UInt16, UInt32, UInt32) = (UInt16(AF_NETLINK), 0, 0, groups)
        return withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, 12) } }
    }

    /// AUDIT_GET's `enabled`; nil when it cannot be asked.
    package static func auditEnabled() -> Bool? {
        let fd = socket(AF_NETLINK, Int32(SOCK_RAW.rawValue) | Int32(SOCK_CLOEXEC.rawValue), netlinkAudit)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        guard bindNetlink(fd, groups: 0) == 0 else { return nil }
        // struct nlmsghdr: len, type AUDIT_GET (1000), flags NLM_F_REQUEST, seq, pid.
        var request: (UInt32, UInt16, UInt16, UInt32, UInt32) = (16, 1000, 1, 1, 0)
        guard withUnsafeBytes(of: &request, { send(fd, $0.baseAddress, 16, 0) }) == 16 else { return nil }
        var timeout = timeval(tv_sec: 1, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var buffer = [UInt8](repeating: 0, count: 8192)
        for _ in 0..<4 {
            let n = recv(fd, &buffer, buffer.count, 0)
            guard n >= 16 else { return nil }
            let type = UInt16(buffer[4]) | UInt16(buffer[5]) << 8
            if type == 2 { // NLMSG_ERROR: an error, or an acknowledgement
                let err = buffer[16..<20].withUnsafeBytes { $0.loadUnaligned(as: Int32.self) }
                if err != 0 { return nil }
                continue
            }
            guard type == 1000, n >= 24 else { continue }
            // struct audit_status: mask, enabled, ...
            return buffer[20..<24].withUnsafeBytes { $0.loadUnaligned(as: UInt32.self) } != 0
        }
        return nil
    }

    /// Turns the kernel's audit on or off (AUDIT_SET; needs
    /// CAP_AUDIT_CONTROL). For tests that need Landlock's records on a host
    /// where audit is off: Stockade itself never changes the host's setting.
    package static func setAuditEnabled(_ on: Bool) -> Bool {
        let fd = socket(AF_NETLINK, Int32(SOCK_RAW.rawValue) | Int32(SOCK_CLOEXEC.rawValue), netlinkAudit)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        guard bindNetlink(fd, groups: 0) == 0 else { return false }
        // nlmsghdr (AUDIT_SET 1001, NLM_F_REQUEST|NLM_F_ACK) + struct audit_status
        // (11 words: mask AUDIT_STATUS_ENABLED, enabled, the rest unused).
        var message = [UInt8](repeating: 0, count: 16 + 44)
        func put(_ v: UInt32, at i: Int) { for k in 0..<4 { message[i + k] = UInt8((v >> (8 * UInt32(k))) & 0xff) } }
        put(UInt32(message.count), at: 0)
        put(1001 | (5 << 16), at: 4)
        put(1, at: 16)
        put(on ? 1 : 0, at: 20)
        guard send(fd, message, message.count, 0) == message.count else { return false }
        var timeout = timeval(tv_sec: 1, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var reply = [UInt8](repeating: 0, count: 256)
        guard recv(fd, &reply, reply.count, 0) >= 20 else { return false }
        return reply[16..<20].withUnsafeBytes { $0.loadUnaligned(as: Int32.self) } == 0
    }

    private static let auditHolds = Mutex<(count: Int, restore: Bool)>((0, false))

    /// Runs `body` with the kernel's audit on, turning it on first where it
    /// is off and back off after the last concurrent holder (tests only).
    package static func withAuditEnabled<T>(_ body: () throws -> T) rethrows -> T {
        auditHolds.withLock { h in
            if h.count == 0, auditEnabled() == false { h.restore = setAuditEnabled(true) }
            h.count += 1
        }
        defer {
            auditHolds.withLock { h in
                h.count -= 1
                if h.count == 0, h.restore {
                    _ = setAuditEnabled(false)
                    h.restore = false
                }
            }
        }
        return try body()
    }

    /// Counts the denials of the Landlock domain `workerPID` creates (or created).
    public func watch(workerPID: Int32, onDenial: (@Sendable (LandlockDenial) -> Void)? = nil) -> LandlockWatch {
        let w = LandlockWatch(workerPID: workerPID, onDenial: onDenial)
        let adopted: [LandlockDenial] = state.withLock { s in
            s.watches[workerPID] = w
            var early: [LandlockDenial] = []
            for (domain, u) in s.unmatched where u.pid == workerPID {
                s.domains[domain] = w
                w.adopt(domain)
                early += u.denials
                s.unmatched[domain] = nil
            }
            return early
        }
        for d in adopted { w.record(d) }
        startIfNeeded()
        return w
    }

    func remove(_ w: LandlockWatch) {
        state.withLock { s in
            if s.watches[w.workerPID] === w { s.watches[w.workerPID] = nil }
            s.domains = s.domains.filter { $0.value !== w }
        }
    }

    private func startIfNeeded() {
        let fd: Int32? = state.withLock { s in
            guard s.socket < 0 else { return nil }
            let fd = socket(AF_NETLINK, Int32(SOCK_RAW.rawValue) | Int32(SOCK_CLOEXEC.rawValue), Self.netlinkAudit)
            guard fd >= 0, Self.bindNetlink(fd, groups: Self.readLogGroup) == 0 else {
                if fd >= 0 { close(fd) }
                return nil
            }
            // Room for bursts: the kernel drops what does not fit (the
            // domain's final count still comes).
            var size: Int32 = 4 << 20
            setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size))
            s.socket = fd
            return fd
        }
        guard let fd else { return }
        var thread = pthread_t()
        let box = Unmanaged.passRetained(ReaderBox(audit: self, fd: fd)).toOpaque()
        let rc = pthread_create(&thread, nil, { arg in
            let box = Unmanaged<ReaderBox>.fromOpaque(arg!).takeRetainedValue()
            box.audit.read(box.fd)
        }, box)
        if rc == 0 { pthread_detach(thread) }
    }

    private final class ReaderBox {
        let audit: LandlockAudit
        let fd: Int32
        init(audit: LandlockAudit, fd: Int32) {
            self.audit = audit
            self.fd = fd
        }
    }

    private func read(_ fd: Int32) -> Never {
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = recv(fd, &buffer, buffer.count, 0)
            guard n >= 16 else { continue }
            let length = min(n, Int(buffer[0..<4].withUnsafeBytes { $0.loadUnaligned(as: UInt32.self) }))
            let type = UInt16(buffer[4]) | UInt16(buffer[5]) << 8
            guard type == Self.accessRecord || type == Self.domainRecord, length > 16 else { continue }
            let text = String(decoding: buffer[16..<length].prefix { $0 != 0 }, as: UTF8.self)
            handle(type: type, text: text)
        }
    }

    /// `audit(1796148428.126:3049): domain=1247c64b2 blockers=fs.read_file path="/etc/hostname" ...`
    static func fields(_ text: String) -> (fields: [String: String], rest: Substring) {
        // The text after the "audit(TIME:SERIAL): " prefix.
        var body = Substring(text)
        if let close = text.firstIndex(of: ")"), text[close...].hasPrefix("): ") {
            body = text[text.index(close, offsetBy: 3)...]
        }
        var result: [String: String] = [:]
        for part in body.split(separator: " ") {
            guard let eq = part.firstIndex(of: "=") else { continue }
            result[String(part[..<eq])] = String(part[part.index(after: eq)...]).trimmingCharacters(in: "\"")
        }
        return (result, body)
    }

    func handle(type: UInt16, text: String) {
        let (f, body) = Self.fields(text)
        guard let domain = f["domain"] else { return }
        if type == Self.accessRecord {
            let blockers = f["blockers"] ?? "?"
            let object = body.split(separator: " ").filter { !$0.hasPrefix("domain=") && !$0.hasPrefix("blockers=") }.joined(separator: " ")
            let denial = LandlockDenial(blockers: blockers, object: object)
            let watch: LandlockWatch? = state.withLock { s in
                if let w = s.domains[domain] { return w }
                note(domain, pid: nil, denial: denial, &s)
                return nil
            }
            watch?.record(denial)
            return
        }
        switch f["status"] {
        case "allocated":
            guard let pid = f["pid"].flatMap({ Int32($0) }) else { return }
            let (watch, early): (LandlockWatch?, [LandlockDenial]) = state.withLock { s in
                guard let w = s.watches[pid] else {
                    note(domain, pid: pid, denial: nil, &s)
                    return (nil, [])
                }
                s.domains[domain] = w
                w.adopt(domain)
                let early = s.unmatched.removeValue(forKey: domain)?.denials ?? []
                return (w, early)
            }
            for d in early { watch?.record(d) }
        case "deallocated":
            let watch = state.withLock { s in
                s.unmatched[domain] = nil
                return s.domains.removeValue(forKey: domain)
            }
            watch?.freed(domain, denials: Int(f["denials"] ?? "") ?? 0)
        default:
            break
        }
    }

    /// Remembers a record of a domain not matched yet (at most 256 domains,
    /// 64 denials each: an unwatched domain cannot grow this).
    private func note(_ domain: String, pid: Int32?, denial: LandlockDenial?, _ s: inout State) {
        if s.unmatched[domain] == nil {
            s.unmatched[domain] = (nil, [])
            s.order.append(domain)
            if s.order.count > 256 { s.unmatched[s.order.removeFirst()] = nil }
        }
        if let pid { s.unmatched[domain]!.pid = pid }
        if let denial, s.unmatched[domain]!.denials.count < 64 { s.unmatched[domain]!.denials.append(denial) }
    }
}
