import StockadeCgroups
import StockadeConfig
import StockadeJail

/// Any bytes as a profile: parsing must end in a profile or a ProfileError
/// whose message names the file, never in a crash or a hang. A profile that
/// parses is driven on into what a launch derives from it, without
/// spawning: lint, the seccomp program and the Landlock rules of the launch
/// request, the time limit's deadline and poll timeouts, the budget
/// arithmetic of a tenant holding many such jails, and the id map. Every
/// number there is checked against the bounds the parser promises.
func fuzzProfile(_ bytes: [UInt8]) {
    let text = String(decoding: bytes, as: UTF8.self)
    let profile: Profile
    do {
        profile = try Profile.parse(text: text, file: "fuzz.toml")
    } catch {
        precondition(error.file == "fuzz.toml")
        precondition(!error.description.isEmpty)
        return
    }
    for finding in ProfileLint.findings(profile, index: TOMLLineIndex(text: text)) {
        precondition(finding.file == "fuzz.toml" && !finding.key.isEmpty)
    }

    // The values every launch uses, as the launcher and `stockade run` use them.
    if let limit = profile.timeLimit {
        precondition(limit > .zero && limit <= DurationValue.longest)
        _ = ContinuousClock.now + limit
        let timeout = Jail.pollTimeout(limit)
        precondition(timeout >= 1)
    }
    if let base = profile.user.hostBase { precondition(UInt64(base) + 65536 <= UInt64(UInt32.max) + 1) }
    precondition(profile.filesystem.rootSize <= SizeValue.largest)
    for m in profile.mounts { precondition((m.size ?? 0) <= SizeValue.largest) }
    for r in profile.rlimits {
        precondition((r.soft ?? 0) <= SizeValue.largest && (r.hard ?? 0) <= SizeValue.largest)
    }
    for fd in profile.passFDs { precondition((3...255).contains(fd)) }
    let limits = profile.limits
    for b in [limits.memoryMax, limits.memoryHigh, limits.swapMax] { precondition((b ?? 0) <= SizeValue.largest) }
    if let cpu = limits.cpu { precondition(cpu.microCPUs > 0) }
    // A tenant admitting the most workers a tenant may have (1024) of this jail.
    _ = limits.shortfall(asking: limits, held: Array(repeating: limits, count: 1023))

    // The security half of the launch request. Device plans touch the host's
    // cgroups and /dev, so a profile with [devices] stops before them.
    guard !profile.devices.declared else { return }
    var request = LaunchRequest(profile: profile, command: ["/bin/true"])
    do {
        try JailSecurity.prepare(&request)
    } catch let error as ProfileError {
        precondition(error.file == "fuzz.toml")
        return
    } catch {
        // A policy libseccomp refuses to build ends in an error with a message.
        precondition(!"\(error)".isEmpty)
        return
    }
    precondition(request.seccompFilter.count % 8 == 0)
}
