/// Things a valid profile allows that a reviewer should look at twice.
public enum ProfileLint {
    public static func warnings(_ profile: Profile) -> [String] {
        var result: [String] = []
        if !profile.namespaces.contains(.net) {
            result.append("the jail shares the host's network (no \"net\" namespace)")
        }
        if !profile.namespaces.contains(.pid) {
            result.append("the jail shares the host's pid namespace: it can see host processes in /proc")
        }
        if profile.user.uid == 0 {
            result.append("the worker runs as uid 0 inside the jail (no capabilities, but files it creates are root's inside)")
        }
        for m in profile.mounts where m.kind == .bind && m.writable {
            result.append("\(m.target) is a writable bind of the host's \(m.source ?? m.target)")
        }
        if profile.timeLimit == nil {
            result.append("no [jail] time_limit: a stuck worker runs until killed")
        }
        return result
    }
}
