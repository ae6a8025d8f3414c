import StockadeSeccomp
/// The security layers that come from the profile and not from the caller:
/// the seccomp program and the Landlock rules. Called by every launcher
/// front end (the CLI, the daemon) before `Launcher.launch`.
public enum JailSecurity {
    /// Compiles the profile's seccomp policy into `request.seccompFilter`
    /// (as root through ``SeccompProgramCache``)
    /// and derives the Landlock rules from its mounts (and the request's
    /// extra mounts) for the running kernel's ABI. A filter or ruleset the
    /// caller already put in the request is kept. Throws a
    /// ``SeccompCompileError`` or, when `[landlock] required = true` cannot
    /// be met, a ``ProfileError``.
    ///
    /// A profile with a `[devices]` section also gets its device plan here:
    /// the nodes and driver files it grants, the matching environment, and
    /// the kernel-side allowlist on the jail's cgroup (an eBPF device
    /// program on v2, `devices.*` on v1; a cgroup is made for it when the
    /// request has none). Call this after the jail's cgroup exists.
    /// As root, an unchanged policy's program comes from the root-only
    /// cache (``SeccompProgramCache``) instead of libseccomp.
    static func compiledProgram(_ section: SeccompSection) throws -> SeccompProgram {
        try SeccompProgramCache.shared?.program(for: section).0 ?? section.compile()
    }

    public static func prepare(_ request: inout LaunchRequest) throws {
        if request.devices == nil && request.profile.devices.declared {
            let plan = try DevicePlan.resolve(for: request.profile, extraMounts: request.extraMounts)
            request.extraEnvironment += plan.environment.map { ($0.name, $0.value) }
            request.cgroup = try plan.enforce(on: request.cgroup)
            request.devices = plan
        }
        if var observation = request.seccompObservation, observation.observed == nil, observation.unavailable == nil {
            if let why = SeccompSupervisor.unavailableReason {
                observation.unavailable = why
            } else {
                let program = try compiledProgram(request.profile.seccomp)
                let observed = try program.observing(observation.notify)
                if let why = SeccompObservation.handoverProblem(observed) {
                    observation.unavailable = why
                } else {
                    observation.observed = observed
                    request.seccompFilter = observed.bytes
                    request.seccompFlags = program.flags
                }
            }
            request.seccompObservation = observation
        }
        if request.seccompFilter.isEmpty {
            let program = try compiledProgram(request.profile.seccomp)
            request.seccompFilter = program.bytes
            request.seccompFlags = program.flags
        }
        if request.landlock == nil {
            let plan = try LandlockPlan(profile: request.profile,
                                        extraMounts: request.extraMounts + (request.devices?.landlockMounts ?? []))
            request.landlock = plan.abi > 0 ? plan.launchLandlock : nil
        }
    }
}

extension LandlockPlan {
    /// The launcher's form of this plan.
    public var launchLandlock: LaunchLandlock {
        LaunchLandlock(abi: abi, fsHandled: fsHandled, netHandled: netHandled,
                       rules: rules.map { .init(path: $0.path, access: $0.access, optional: $0.optional) },
                       tcpPorts: ports.map { .init(port: UInt16($0.port), access: $0.access) },
                       required: required, scoped: scoped)
    }
}
