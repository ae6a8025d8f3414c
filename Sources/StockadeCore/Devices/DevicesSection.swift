/// The profile's [devices]: device nodes allowed in the jail.
///
/// Keys are read in `init(reading:)`; any key it does not read is rejected
/// by the profile parser as unknown.
public struct DevicesSection: Sendable, Equatable {
    public init() {}

    public init(reading table: TableReader) throws(ProfileError) {}
}
