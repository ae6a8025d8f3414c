public import Foundation

/// The part of an OCI runtime-spec `config.json` (and of the process JSON
/// `exec --process` reads, and the resources `update` reads) that
/// Stockade maps onto a jail. Fields it does not know are ignored, as the
/// spec asks; fields it knows but cannot honour are refused by
/// ``SpecJail`` with the field's name.
public struct Spec: Codable, Sendable {
    public var ociVersion: String
    public var process: Process?
    public var root: Root?
    public var hostname: String?
    public var mounts: [Mount]?
    public var hooks: Hooks?
    public var annotations: [String: String]?
    public var linux: Linux?

    public struct Process: Codable, Sendable {
        public var terminal: Bool?
        public var user: User
        public var args: [String]?
        public var env: [String]?
        public var cwd: String
        public var capabilities: Capabilities?
        public var rlimits: [Rlimit]?
        public var noNewPrivileges: Bool?
        public var oomScoreAdj: Int?
    }

    public struct User: Codable, Sendable {
        public var uid: UInt32
        public var gid: UInt32
        public var umask: UInt32?
        public var additionalGids: [UInt32]?
    }

    public struct Capabilities: Codable, Sendable {
        public var bounding: [String]?
        public var effective: [String]?
        public var inheritable: [String]?
        public var permitted: [String]?
        public var ambient: [String]?
    }

    public struct Rlimit: Codable, Sendable {
        public var type: String
        public var hard: UInt64
        public var soft: UInt64
    }

    public struct Root: Codable, Sendable {
        public var path: String
        public var readonly: Bool?
    }

    public struct Mount: Codable, Sendable {
        public var destination: String
        public var type: String?
        public var source: String?
        public var options: [String]?
    }

    public struct Hook: Codable, Sendable {
        public var path: String
        public var args: [String]?
        public var env: [String]?
        public var timeout: Int?
    }

    public struct Hooks: Codable, Sendable {
        public var prestart: [Hook]?
        public var createRuntime: [Hook]?
        public var createContainer: [Hook]?
        public var startContainer: [Hook]?
        public var poststart: [Hook]?
        public var poststop: [Hook]?
    }

    public struct Linux: Codable, Sendable {
        public var namespaces: [Namespace]?
        public var uidMappings: [IDMapping]?
        public var gidMappings: [IDMapping]?
        public var devices: [Device]?
        public var cgroupsPath: String?
        public var resources: Resources?
        public var rootfsPropagation: String?
        public var seccomp: Seccomp?
        public var sysctl: [String: String]?
        public var maskedPaths: [String]?
        public var readonlyPaths: [String]?
    }

    public struct Namespace: Codable, Sendable {
        public var type: String
        public var path: String?
    }

    public struct IDMapping: Codable, Sendable {
        public var containerID: UInt32
        public var hostID: UInt32
        public var size: UInt32
    }

    public struct Device: Codable, Sendable {
        public var path: String
        public var type: String
        public var major: Int64?
        public var minor: Int64?
        public var fileMode: UInt32?
        public var uid: UInt32?
        public var gid: UInt32?
        /// The host's node, where it is not at `path` (a CDI device's
        /// `hostPath`); never read from config.json.
        public var hostPath: String? = nil
        /// Where the device came from, for messages (`CDI device ...`);
        /// nil: `config.json linux.devices[N]`.
        public var origin: String? = nil

        enum CodingKeys: String, CodingKey {
            case path, type, major, minor, fileMode, uid, gid
        }

        public init(path: String, type: String, major: Int64?, minor: Int64?, hostPath: String? = nil, origin: String? = nil) {
            self.path = path
            self.type = type
            self.major = major
            self.minor = minor
            self.hostPath = hostPath
            self.origin = origin
        }
    }

    public struct Resources: Codable, Sendable {
        public var memory: Memory?
        public var cpu: CPU?
        public var pids: Pids?
        public var devices: [DeviceRule]?

        public struct Memory: Codable, Sendable {
            public var limit: Int64?
            public var reservation: Int64?
            public var swap: Int64?
        }

        public struct CPU: Codable, Sendable {
            public var shares: UInt64?
            public var quota: Int64?
            public var period: UInt64?
            public var cpus: String?
        }

        public struct Pids: Codable, Sendable {
            public var limit: Int64
        }

        public struct DeviceRule: Codable, Sendable {
            public var allow: Bool
            public var type: String?
            public var major: Int64?
            public var minor: Int64?
            public var access: String?
        }

        public init() {}
    }

    /// `linux.seccomp`: the same shape as a Docker/Moby profile, which
    /// Stockade's importer reads.
    public struct Seccomp: Codable, Sendable {
        public var defaultAction: String
        public var defaultErrnoRet: Int?
        public var architectures: [String]?
        public var flags: [String]?
        public var syscalls: [Syscall]?

        public struct Syscall: Codable, Sendable {
            public var names: [String]
            public var action: String
            public var errnoRet: Int?
            public var args: [Arg]?
        }

        public struct Arg: Codable, Sendable {
            public var index: Int
            public var value: UInt64
            public var valueTwo: UInt64?
            public var op: String
        }
    }
}

/// Why config.json (or a process or resources document) cannot be used:
/// which field, and what is wrong with it.
public struct SpecError: Error, CustomStringConvertible, Sendable {
    public var description: String
    public init(_ description: String) { self.description = description }

    /// A decoding error, named by the JSON path of the field.
    static func decoding(_ error: any Error, file: String, format: String = "JSON") -> SpecError {
        func path(_ keys: [any CodingKey]) -> String {
            keys.map { $0.intValue.map { "[\($0)]" } ?? ".\($0.stringValue)" }.joined().trimmingPrefix(".").description
        }
        switch error {
        case DecodingError.keyNotFound(let key, let ctx):
            return SpecError("\(file): \(path(ctx.codingPath + [key])) is missing")
        case DecodingError.typeMismatch(_, let ctx), DecodingError.valueNotFound(_, let ctx):
            return SpecError("\(file): \(path(ctx.codingPath)): \(ctx.debugDescription)")
        case DecodingError.dataCorrupted(let ctx):
            return SpecError("\(file): \(ctx.codingPath.isEmpty ? "" : path(ctx.codingPath) + ": ")not valid \(format) (\(ctx.underlyingError.map { "\($0)" } ?? ctx.debugDescription))")
        default:
            return SpecError("\(file): \(error)")
        }
    }
}

extension Spec {
    public static func decode<T: Decodable>(_ type: T.Type, from data: Data, file: String) throws(SpecError) -> T {
        do {
            return try JSONDecoder().decode(type, from: data)
        } catch {
            throw SpecError.decoding(error, file: file)
        }
    }
}
