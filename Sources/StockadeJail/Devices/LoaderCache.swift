/// The dynamic loader's cache (`/etc/ld.so.cache`), read the way glibc's
/// loader reads it: which file the loader opens for each library name.
///
/// The file is glibc's "new" format (`glibc-ld.so.cache1.1`), alone or
/// after an old-format (`ld.so-1.7.0`) block that older ldconfig versions
/// still write first. Header: magic and version (20 bytes), the entry
/// count, the size of the string table, flags, padding and an extension
/// offset (48 bytes in all); then 24-byte entries of `flags`, `key` and
/// `value` (offsets of the library name and path, counted from the start
/// of the new-format header), an OS version and a hwcap mask.
public struct LoaderCache: Sendable, Equatable {
    public struct Entry: Sendable, Equatable {
        /// The name the loader is asked for (`libcuda.so.1`).
        public var name: String
        /// The file it opens.
        public var path: String
        /// glibc's flags: the low byte is the library type, the next the ABI.
        public var flags: Int32

        public init(name: String, path: String, flags: Int32) {
            self.name = name
            self.path = path
            self.flags = flags
        }
    }

    public var entries: [Entry]

    /// Entries for the running architecture (x86-64 or AArch64, libc6).
    public var native: [Entry] {
        entries.filter { $0.flags & 0xff00 == Self.nativeABI && $0.flags & 0x00ff == 0x0003 }
    }

    #if arch(x86_64)
    static let nativeABI: Int32 = 0x0300 // FLAG_X8664_LIB64
    #elseif arch(arm64)
    static let nativeABI: Int32 = 0x0a00 // FLAG_AARCH64_LIB64
    #else
    static let nativeABI: Int32 = -1
    #endif

    static let newMagic = Array("glibc-ld.so.cache1.1".utf8)
    static let oldMagic = Array("ld.so-1.7.0".utf8)

    public init(entries: [Entry]) {
        self.entries = entries
    }

    /// Parses the bytes of a cache file; a message says what is wrong with it.
    public init(bytes: [UInt8]) throws(DeviceError) {
        var start = 0
        if bytes.starts(with: Self.oldMagic) {
            // Old format: 11-byte magic padded to 12, a u32 count, 12-byte
            // entries; the new format follows, aligned to 8 bytes.
            guard bytes.count >= 16 else { throw DeviceError("loader cache is truncated (old-format header)") }
            let oldCount = Int(Self.u32(bytes, 12))
            guard oldCount < 1 << 20 else { throw DeviceError("loader cache is corrupt (old-format count \(oldCount))") }
            start = (16 + oldCount * 12 + 7) & ~7
        }
        guard bytes.count >= start + 48, Array(bytes[start..<(start + 20)]) == Self.newMagic else {
            throw DeviceError("not a glibc loader cache (no \"glibc-ld.so.cache1.1\" header); give the driver library directory in [devices] driver_libraries instead")
        }
        let count = Int(Self.u32(bytes, start + 20))
        let tableEnd = start + 48 + count * 24
        guard count < 1 << 20, tableEnd <= bytes.count else {
            throw DeviceError("loader cache is truncated: \(count) entries do not fit in \(bytes.count) bytes")
        }
        func string(at offset: UInt32) throws(DeviceError) -> String {
            let from = start + Int(offset)
            guard from >= tableEnd, from < bytes.count else {
                throw DeviceError("loader cache is corrupt: a string offset (\(offset)) points outside the string table")
            }
            guard let end = bytes[from...].firstIndex(of: 0) else {
                throw DeviceError("loader cache is corrupt: an unterminated string at offset \(offset)")
            }
            return String(decoding: bytes[from..<end], as: UTF8.self)
        }
        var result: [Entry] = []
        result.reserveCapacity(count)
        for i in 0..<count {
            let at = start + 48 + i * 24
            let flags = Int32(bitPattern: Self.u32(bytes, at))
            let name = try string(at: Self.u32(bytes, at + 4))
            let path = try string(at: Self.u32(bytes, at + 8))
            result.append(Entry(name: name, path: path, flags: flags))
        }
        entries = result
    }

    /// Reads the cache at `path`.
    public static func load(path: String) throws(DeviceError) -> LoaderCache {
        guard let bytes = DeviceEnvironment.host.readBytes(path) else {
            throw DeviceError("cannot read the loader cache \(path); run ldconfig, or give the driver library directory in [devices] driver_libraries")
        }
        do {
            return try LoaderCache(bytes: bytes)
        } catch {
            throw DeviceError("\(path): \(error.message)")
        }
    }

    /// Builds a cache file in the new format (tests use it for fake trees).
    public static func encode(_ entries: [Entry]) -> [UInt8] {
        var header = newMagic
        var strings: [UInt8] = []
        let stringsStart = 48 + entries.count * 24
        var table: [UInt8] = []
        func put(_ v: UInt32, _ into: inout [UInt8]) {
            withUnsafeBytes(of: v.littleEndian) { into += $0 }
        }
        for e in entries {
            let key = UInt32(stringsStart + strings.count)
            strings += Array(e.name.utf8) + [0]
            let value = UInt32(stringsStart + strings.count)
            strings += Array(e.path.utf8) + [0]
            put(UInt32(bitPattern: e.flags), &table)
            put(key, &table)
            put(value, &table)
            put(0, &table)
            table += [UInt8](repeating: 0, count: 8)
        }
        put(UInt32(entries.count), &header)
        put(UInt32(strings.count), &header)
        header += [UInt8](repeating: 0, count: 48 - header.count)
        return header + table + strings
    }

    static func u32(_ b: [UInt8], _ at: Int) -> UInt32 {
        UInt32(b[at]) | UInt32(b[at + 1]) << 8 | UInt32(b[at + 2]) << 16 | UInt32(b[at + 3]) << 24
    }
}
