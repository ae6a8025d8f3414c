/// The profile's [seccomp]: the system-call policy.
///
/// Keys are read in `init(reading:)`; any key it does not read is rejected
/// by the profile parser as unknown.
public struct SeccompSection: Sendable, Equatable {
    public init() {}

    public init(reading table: TableReader) throws(ProfileError) {}
}
