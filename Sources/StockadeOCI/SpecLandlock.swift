public import StockadeJail

/// The Landlock domain of a container whose pod names a Stockade profile
/// (`stockade.io/profile`). Under `stockade run` a profile's `[[mount]]`
/// entries are both what the jail sees and what Landlock lets it reach. A
/// container's files come from its image and its spec instead, so the
/// profile's entries are not mounted: each names a path of the container
/// that Landlock grants with the rights the mount would have had (a
/// read-only bind: read and execute; writable: also write; `noexec`:
/// without execute; a `dir`: read; a symlink: nothing, the link's target is
/// what is checked). The container also keeps what its spec mounts (its
/// volumes, /etc/hosts, /sys...) with the spec's own read-only or
/// read-write, and /dev and /proc as for every jail. Everything else of its
/// root is listed at `/` only: read, written or run nowhere.
///
/// The rules are paths inside the container's root, opened there by the
/// container's first process at `create` without following any symbolic
/// link (a link the image holds at a granted path fails create, naming the
/// path), so the domain holds the inodes the root had then.
public enum SpecLandlock {
    /// Why a container may run without Landlock's signal and abstract
    /// socket scoping (its pod shares pid or net namespaces on purpose).
    static let podUnscoped = "an OCI container shares the pid or net namespace its spec names"

    /// The domain for a container: `profile` is the container's profile
    /// (the spec's namespaces and /dev, /proc already set), `grants` the
    /// annotated profile's own mounts, `specMounts` the spec's mounts as
    /// the launch makes them. nil: the kernel has no Landlock and the
    /// profile does not require it.
    public static func plan(profile: Profile, grants: [MountSpec], specMounts: [OCILaunch.Mount],
                            abi: Int32 = LandlockPlan.kernelABI()) throws -> LaunchLandlock? {
        var p = profile
        // The profile's entries, as paths of the container; every one may
        // be missing from an image (then nothing is granted there).
        p.mounts = grants.compactMap { m in
            switch m.kind {
            case .symlink: return nil
            case .dir: return MountSpec(kind: .dir, source: nil, target: m.target)
            case .bind, .tmpfs:
                // tmpfs: a grant on the container's path, not on a host source.
                return MountSpec(kind: .tmpfs, source: nil, target: m.target, writable: m.writable, noexec: m.noexec)
            }
        }
        if p.landlock.unscoped == nil { p.landlock.unscoped = podUnscoped }
        let spec: [MountSpec] = specMounts.map { mount in
            switch mount {
            case .spec(let m): return m
            case let .kernel(_, target, _, writable, noexec, _):
                return MountSpec(kind: .tmpfs, source: nil, target: target, writable: writable, noexec: noexec)
            }
        }
        let plan: LandlockPlan
        do {
            plan = try LandlockPlan(profile: p, extraMounts: spec, abi: abi)
        } catch {
            throw SpecError("annotations[\"\(SpecJail.profileAnnotation)\"]: \(error)")
        }
        guard plan.abi > 0 else { return nil }
        var launch = plan.launchLandlock
        let fromSpec = Set(spec.map(\.target))
        let fixed: Set<String> = ["/", "/proc", "/dev"]
        for i in launch.rules.indices where !fromSpec.contains(launch.rules[i].path) && !fixed.contains(launch.rules[i].path) {
            launch.rules[i].optional = true
        }
        return launch
    }
}
