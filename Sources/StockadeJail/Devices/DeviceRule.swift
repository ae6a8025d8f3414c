/// One entry of a jail's device allowlist: a character device (or every
/// minor of a major) that may be read and written, or only read (or only
/// written). Creating nodes (mknod) is never granted, and block devices
/// never are.
public struct DeviceRule: Sendable, Hashable, CustomStringConvertible {
    public var major: UInt32
    /// nil: every minor of `major`.
    public var minor: UInt32?
    public var access: Access

    /// Which opens the rule allows (`BPF_DEVCG_ACC_READ` = 2, `WRITE` = 4).
    public struct Access: OptionSet, Sendable, Hashable {
        public let rawValue: UInt32
        public init(rawValue: UInt32) { self.rawValue = rawValue }
        public static let read = Access(rawValue: 2)
        public static let write = Access(rawValue: 4)
        public static let readWrite: Access = [.read, .write]

        /// `r`, `w` or `rw`, as cgroup v1 and runtime-spec spell it.
        public var letters: String { (contains(.read) ? "r" : "") + (contains(.write) ? "w" : "") }
    }

    public init(major: UInt32, minor: UInt32?, access: Access = .readWrite) {
        self.major = major
        self.minor = minor
        self.access = access
    }

    static func char(_ major: UInt32, _ minor: UInt32) -> DeviceRule {
        DeviceRule(major: major, minor: minor)
    }

    /// The cgroup v1 `devices.allow` line: `c 1:3 rw`, `c 136:* rw`, `c 10:200 r`.
    public var v1Line: String {
        "c \(major):\(minor.map(String.init) ?? "*") \(access.letters)"
    }

    public var description: String { v1Line }

    /// True when the rule names char device `major:minor` (whatever access it allows).
    public func permits(major: UInt32, minor: UInt32) -> Bool {
        self.major == major && (self.minor == nil || self.minor == minor)
    }
}

/// A device's number, as `stat` reports it in `st_rdev`.
public struct DeviceNumber: Sendable, Hashable, CustomStringConvertible {
    public var major: UInt32
    public var minor: UInt32

    public init(major: UInt32, minor: UInt32) {
        self.major = major
        self.minor = minor
    }

    /// Splits a Linux `dev_t` (glibc's encoding: 12-bit major, 20-bit minor,
    /// spread over 64 bits).
    public init(rdev: UInt64) {
        major = UInt32(((rdev >> 8) & 0xfff) | ((rdev >> 32) & ~UInt64(0xfff)) & 0xffff_ffff)
        minor = UInt32((rdev & 0xff) | ((rdev >> 12) & ~UInt64(0xff)) & 0xffff_ffff)
    }

    public var description: String { "\(major):\(minor)" }
}

/// Why a jail's devices could not be prepared. Each message says what is
/// missing and what to do about it.
public struct DeviceError: Error, Sendable, Equatable, CustomStringConvertible {
    public var message: String

    public init(_ message: String) {
        self.message = message
    }

    public var description: String { message }
}
