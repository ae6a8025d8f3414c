import StockadeSystem

/// Signal names and numbers as `kill` takes them ("9", "KILL", "SIGKILL").
public enum Signals {
    static let names: [String: Int32] = [
        "HUP": 1, "INT": 2, "QUIT": 3, "ILL": 4, "TRAP": 5, "ABRT": 6, "IOT": 6, "BUS": 7, "FPE": 8, "KILL": 9,
        "USR1": 10, "SEGV": 11, "USR2": 12, "PIPE": 13, "ALRM": 14, "TERM": 15, "STKFLT": 16, "CHLD": 17, "CONT": 18,
        "STOP": 19, "TSTP": 20, "TTIN": 21, "TTOU": 22, "URG": 23, "XCPU": 24, "XFSZ": 25, "VTALRM": 26, "PROF": 27,
        "WINCH": 28, "IO": 29, "POLL": 29, "PWR": 30, "SYS": 31,
    ]

    public static func number(_ text: String) -> Int32? {
        if let n = Int32(text) { return (1...64).contains(n) ? n : nil }
        var name = text.uppercased()
        if name.hasPrefix("SIG") { name = String(name.dropFirst(3)) }
        if let n = names[name] { return n }
        if name.hasPrefix("RTMIN+"), let k = Int32(name.dropFirst(6)), (0...30).contains(k) { return 34 + k }
        return nil
    }
}

/// runtime-spec's features document: what `stockade-runtime features` prints.
public enum RuntimeFeatures {
    public struct Document: Codable, Sendable {
        public var ociVersionMin: String
        public var ociVersionMax: String
        public var hooks: [String]
        public var mountOptions: [String]
        public var linux: Linux
        public var annotations: [String: String]

        public struct Linux: Codable, Sendable {
            public var namespaces: [String]
            public var capabilities: [String]
            public var cgroup: Cgroup
            public var seccomp: Seccomp
            public var apparmor: Enabled
            public var selinux: Enabled
            public var intelRdt: Enabled
            public var mountExtensions: MountExtensions
        }
        public struct Cgroup: Codable, Sendable {
            public var v1: Bool
            public var v2: Bool
            public var systemd: Bool
            public var systemdUser: Bool
            public var rdma: Bool
        }
        public struct Seccomp: Codable, Sendable {
            public var enabled: Bool
            public var actions: [String]
            public var operators: [String]
            public var archs: [String]
        }
        public struct Enabled: Codable, Sendable {
            public var enabled: Bool
        }
        public struct MountExtensions: Codable, Sendable {
            public var idmap: Enabled
        }
    }

    public static func document() -> Document {
        Document(
            ociVersionMin: "1.0.0", ociVersionMax: Runtime.specVersion,
            hooks: ["prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"],
            mountOptions: ["bind", "rbind", "ro", "rw", "nosuid", "nodev", "noexec", "rprivate", "private"],
            linux: .init(
                namespaces: ["cgroup", "ipc", "mount", "network", "pid", "user", "uts"],
                capabilities: SpecJail.capabilityNames,
                cgroup: .init(v1: true, v2: true, systemd: false, systemdUser: false, rdma: false),
                seccomp: .init(enabled: true,
                               actions: ["SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS",
                                         "SCMP_ACT_KILL_THREAD", "SCMP_ACT_LOG", "SCMP_ACT_TRAP"],
                               operators: ["SCMP_CMP_EQ", "SCMP_CMP_GE", "SCMP_CMP_GT", "SCMP_CMP_LE", "SCMP_CMP_LT",
                                           "SCMP_CMP_MASKED_EQ", "SCMP_CMP_NE"],
                               archs: ["SCMP_ARCH_X86_64", "SCMP_ARCH_AARCH64"]),
                apparmor: .init(enabled: false), selinux: .init(enabled: false), intelRdt: .init(enabled: false),
                mountExtensions: .init(idmap: .init(enabled: false))),
            annotations: [
                "io.github.stockade.runtime.userns": "every container gets a user namespace with host ids of its own",
                "io.github.stockade.runtime.seccomp.prelude": "always on, in front of the spec's filter",
            ])
    }
}
