package import StockadeConfig
/// The profile's `[landlock]`: filesystem and network access rules.
///
/// ```toml
/// [landlock]
/// enabled = true          # default true: rules derived from the mounts
/// required = false        # true: refuse to start when the kernel cannot enforce them
/// tcp_bind = [8080]       # TCP ports the worker may bind (Landlock ABI 4+); default none
/// tcp_connect = [443]     # TCP ports it may connect to; default none
/// unscoped = "why"        # only for a jail without a pid or net namespace that
///                         # is to run without signal and abstract-socket scoping
/// ```
///
/// A jail that shares the host's pid or network namespace is kept from
/// signalling processes outside it and from the host's abstract unix
/// sockets by Landlock's scoping (ABI 6) alone: such a profile is refused
/// with Landlock disabled or on an older kernel, unless `unscoped` gives
/// the reason it may run without.
///
/// The filesystem rules are not written here: they follow the mounts (see
/// ``LandlockPlan``), so that the two cannot disagree.
///
/// Keys are read in `init(reading:)`; any key it does not read is rejected
/// by the profile parser as unknown.
public struct LandlockSection: Sendable, Equatable {
    public var enabled = true
    public var required = false
    public var tcpBind: [UInt16] = []
    public var tcpConnect: [UInt16] = []
    /// Why a jail without a pid or net namespace may run unscoped (nil: it may not).
    public var unscoped: String?

    public init() {}

    package init(reading table: TableReader) throws(ProfileError) {
        enabled = try table.bool("enabled") ?? true
        required = try table.bool("required") ?? false
        tcpBind = try Self.ports(table, "tcp_bind")
        tcpConnect = try Self.ports(table, "tcp_connect")
        if let why = try table.string("unscoped") {
            guard !why.trimmingCharacters(in: " ").isEmpty else {
                throw table.error("unscoped", "give the reason as a string: unscoped = \"why this jail may signal and reach sockets outside it\"")
            }
            unscoped = why
        }
        if required && !enabled {
            throw table.error("required", "Landlock cannot be both required and disabled")
        }
    }

    private static func ports(_ table: TableReader, _ key: String) throws(ProfileError) -> [UInt16] {
        var result: [UInt16] = []
        for (i, p) in (try table.ints(key) ?? []).enumerated() {
            guard (0...65535).contains(p) else { throw table.error(key, "entry \(i): \(p) is not a TCP port (0...65535)") }
            result.append(UInt16(p))
        }
        return result
    }
}
