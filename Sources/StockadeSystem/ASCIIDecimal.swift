/// Decimal numbers read from and written into bytes: the kernel's and the
/// host's files (`/etc/subuid`, `/proc/sys/...`) and Stockade's own keys and
/// log lines. Bytes in, bytes out, without a String or the standard
/// library's generic integer parsing, whose first use is paid at every
/// launch.
public enum ASCIIDecimal {
    /// The unsigned decimal in `bytes[range]`: digits only, after one
    /// leading `+` where `plus` allows it. Nil for an empty number, any
    /// other byte, or a value above `UInt64.max`.
    public static func parse(_ bytes: UnsafeBufferPointer<UInt8>, _ range: Range<Int>, plus: Bool = false) -> UInt64? {
        var digits = range
        if plus, let first = digits.first, bytes[first] == UInt8(ascii: "+") { digits = digits.dropFirst() }
        guard !digits.isEmpty else { return nil }
        var value: UInt64 = 0
        for i in digits {
            let d = bytes[i] &- UInt8(ascii: "0")
            guard d < 10 else { return nil }
            let (times10, o1) = value.multipliedReportingOverflow(by: 10)
            let (sum, o2) = times10.addingReportingOverflow(UInt64(d))
            guard !o1, !o2 else { return nil }
            value = sum
        }
        return value
    }

    /// Appends `n` in decimal, as `"\(n)"` writes it. The digits are
    /// counted first and written in place from the last: reversing them
    /// through a slice of `out` copied the slice at every number (a seccomp
    /// cache key writes hundreds).
    public static func append(_ n: UInt64, to out: inout [UInt8]) {
        var count = 1
        var rest = n / 10
        while rest > 0 {
            count += 1
            rest /= 10
        }
        for _ in 0..<count { out.append(UInt8(ascii: "0")) }
        var v = n
        var i = out.count - 1
        repeat {
            out[i] = UInt8(ascii: "0") + UInt8(v % 10)
            v /= 10
            i -= 1
        } while v > 0
    }

    /// Appends `n` in decimal, with a `-` when it is negative.
    public static func append(_ n: Int64, to out: inout [UInt8]) {
        if n < 0 { out.append(UInt8(ascii: "-")) }
        append(n.magnitude, to: &out)
    }
}
