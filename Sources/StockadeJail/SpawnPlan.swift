import CStockadeSpawn
#if canImport(Glibc)
import Glibc
#endif

/// C memory for one `stk_plan`: every string and array the child reads.
///
/// Everything is allocated here, in the parent, before clone3; the child
/// only reads it. The arena frees it all when the spawn is over.
final class PlanArena {
    private var allocations: [UnsafeMutableRawPointer] = []

    deinit {
        for p in allocations { free(p) }
    }

    func string(_ s: String) -> UnsafePointer<CChar> {
        let p = strdup(s)!
        allocations.append(UnsafeMutableRawPointer(p))
        return UnsafePointer(p)
    }

    func optionalString(_ s: String?) -> UnsafePointer<CChar>? {
        s.map { string($0) }
    }

    func array<T>(_ elements: [T]) -> UnsafePointer<T>? {
        guard !elements.isEmpty else { return nil }
        let p = UnsafeMutablePointer<T>.allocate(capacity: elements.count)
        p.initialize(from: elements, count: elements.count)
        allocations.append(UnsafeMutableRawPointer(p))
        return UnsafePointer(p)
    }

    /// A NULL-terminated `char *const[]`.
    func stringVector(_ strings: [String]) -> UnsafePointer<UnsafeMutablePointer<CChar>?> {
        let p = UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>.allocate(capacity: strings.count + 1)
        for (i, s) in strings.enumerated() { p[i] = UnsafeMutablePointer(mutating: string(s)) }
        p[strings.count] = nil
        allocations.append(UnsafeMutableRawPointer(p))
        return UnsafePointer(p)
    }

    func bytes(_ b: [UInt8]) -> UnsafeRawPointer? {
        guard !b.isEmpty else { return nil }
        let p = UnsafeMutableRawPointer.allocate(byteCount: b.count, alignment: 8)
        b.withUnsafeBytes { p.copyMemory(from: $0.baseAddress!, byteCount: b.count) }
        allocations.append(p)
        return UnsafeRawPointer(p)
    }
}

/// The clone3 flag of each namespace.
extension Profile.Namespace {
    var cloneFlag: UInt64 {
        switch self {
        case .user: return 0x1000_0000
        case .pid: return 0x2000_0000
        case .mount: return 0x0002_0000
        case .net: return 0x4000_0000
        case .ipc: return 0x0800_0000
        case .uts: return 0x0400_0000
        case .cgroup: return 0x0200_0000
        case .time: return 0x0000_0080
        }
    }

    /// The file under /proc/self/ns that shows whether the kernel has it.
    var procName: String {
        switch self {
        case .mount: return "mnt"
        default: return rawValue
        }
    }
}

/// The masks every jail's /proc gets: files that leak host state or let a
/// process poke the kernel are covered, control trees are read-only.
enum ProcMasks {
    static let hidden = [
        "/proc/kcore", "/proc/keys", "/proc/key-users", "/proc/timer_list", "/proc/timer_stats",
        "/proc/sched_debug", "/proc/latency_stats", "/proc/sysrq-trigger", "/proc/kallsyms", "/proc/kpagecount",
        "/proc/kpageflags", "/proc/kpagecgroup", "/proc/acpi", "/proc/asound", "/proc/scsi", "/proc/config.gz",
        "/proc/driver",
    ]
    static let readOnly = ["/proc/sys", "/proc/bus", "/proc/fs", "/proc/irq"]
}
