/// The profile's [landlock]: filesystem and network access rules.
///
/// Keys are read in `init(reading:)`; any key it does not read is rejected
/// by the profile parser as unknown.
public struct LandlockSection: Sendable, Equatable {
    public init() {}

    public init(reading table: TableReader) throws(ProfileError) {}
}
