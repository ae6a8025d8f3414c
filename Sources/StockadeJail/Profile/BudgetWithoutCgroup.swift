public import StockadeConfig
public import StockadeCgroups

extension Profile {
    /// Holds this profile's `[limits]` where no cgroup can be made for the
    /// jail (`reason` says why): pids_max becomes RLIMIT_NPROC in the jail's
    /// user namespace (unless the profile's own nproc rlimit is lower), and
    /// every other limit must be waived by name or the launch is refused
    /// (``LimitsSection/withoutCgroup(reason:)``). Returns the notes to show.
    public mutating func holdLimitsWithoutCgroup(reason: String) throws(ProfileError) -> [String] {
        let fallback = try limits.withoutCgroup(reason: reason)
        if let nproc = fallback.nproc {
            rlimits.removeAll { $0.name == "nproc" && ($0.hard ?? .max) >= nproc && ($0.soft ?? .max) >= nproc }
            if !rlimits.contains(where: { $0.name == "nproc" }) {
                rlimits.append(RlimitSpec(name: "nproc", resource: RlimitSpec.resources["nproc"]!, soft: nproc, hard: nproc))
            }
        }
        return fallback.notes
    }
}
