// The daemon's memory per answer: a worker's 100 MiB bulk answer passes
// through stockaded with one copy of it in the daemon, not two or three
// (the mapped memfd, the decrypted payload and an HTTP buffer of it).
// Measured as the peak RSS of this process (the daemon) while one such
// answer is served to a client that reads and drops it as it comes.
import Foundation
import StockadeSystem
import SystemPackage
import Testing
@testable import StockadeDaemon
#if canImport(Glibc)
import Glibc
#endif

/// `VmRSS` and `VmHWM` of this process, in KiB.
private func rssAndPeakKiB() -> (rss: Int, peak: Int) {
    let status = procStatus(["VmRSS", "VmHWM"])
    return (status["VmRSS"]!, status["VmHWM"]!)
}

/// Sends one infer request and reads the answer in 64 KiB pieces, keeping
/// none of it: returns the status line and the number of bytes read.
private func inferAndDrop(socket path: String, token: String, tenant: String, _ text: String) throws -> (status: String, bytes: Int) {
    let fd = try UnixSocket.connect(path: path).rawValue
    defer { Glibc.close(fd) }
    let body = Array(text.utf8)
    let head = "POST /v1/tenants/\(tenant)/infer HTTP/1.1\r\nHost: stockaded\r\nConnection: close\r\n"
        + "Content-Length: \(body.count)\r\nAuthorization: Bearer \(token)\r\n\r\n"
    try (Array(head.utf8) + body).withUnsafeBytes { try FileDescriptor(rawValue: fd).sendAll($0) }
    var chunk = [UInt8](repeating: 0, count: 65536)
    var first: [UInt8] = []
    var total = 0
    while true {
        let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        if n < 0, errno == EINTR { continue }
        guard n >= 0 else { throw DaemonError("recv: errno \(errno)") }
        if n == 0 { break }
        if first.count < 64 { first += chunk[0..<min(n, 64 - first.count)] }
        total += n
    }
    let status = String(decoding: first, as: UTF8.self).split(separator: "\r\n").first.map(String.init) ?? ""
    return (status, total)
}

/// It measures the peak RSS of the whole test process: `make test-swift`
/// runs it in an invocation of its own, with no other suite beside it.
@Suite(.serialized, .enabled(if: Fixture.hasVenv, "needs the venv (make venv) for the jailed Python worker"))
struct AnswerMemoryDaemonTests {
    @Test func aHundredMebibyteAnswerIsHeldOnceInTheDaemon() throws {
        let size = 100 << 20
        let d = try RunningDaemon(tenants: [.init(name: "alpha", min: 1, max: 1, extra: "max_response_bytes = \"128M\"",
                                                  access: ["alice": "invoker"], memoryMax: "1G")])
        defer { d.close() }
        #expect(try d.client("alice").infer("alpha", "big:100").status == 200)
        // Writing 5 to clear_refs resets VmHWM to the current RSS.
        let clear = Glibc.open("/proc/self/clear_refs", O_WRONLY | O_CLOEXEC)
        let reset = clear >= 0 && Glibc.write(clear, "5", 1) == 1
        if clear >= 0 { Glibc.close(clear) }
        try #require(reset, "/proc/self/clear_refs cannot be written: the peak cannot be measured")
        let before = rssAndPeakKiB()
        let answer = try inferAndDrop(socket: d.socket, token: Fixture.tokens["alice"]!, tenant: "alpha", "big:\(size)")
        let after = rssAndPeakKiB()
        #expect(answer.status.contains(" 200 "), "\(answer.status)")
        #expect(answer.bytes > size, "\(answer.bytes) bytes read")
        let growthMiB = Double(after.peak - before.rss) / 1024
        print("a \(size >> 20) MiB answer: daemon RSS \(before.rss / 1024) MiB, peak \(after.peak / 1024) MiB "
              + "(+\(String(format: "%.0f", growthMiB)) MiB), after \(after.rss / 1024) MiB")
        // One copy (100 MiB) and working room; a second copy would be 200.
        #expect(growthMiB < 150, "peak RSS grew by \(growthMiB) MiB for a 100 MiB answer")
    }
}
