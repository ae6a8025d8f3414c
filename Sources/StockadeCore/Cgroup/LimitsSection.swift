/// The profile's [limits]: the jail's cgroup budget.
///
/// Keys are read in `init(reading:)`; any key it does not read is rejected
/// by the profile parser as unknown.
public struct LimitsSection: Sendable, Equatable {
    public init() {}

    public init(reading table: TableReader) throws(ProfileError) {}
}
