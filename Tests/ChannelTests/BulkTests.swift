import Foundation
import Testing
import SystemPackage
import StockadeSystem
import Synchronization
@testable import StockadeChannel

/// Bulk transfers whose chunks are split across threads: every chunk
/// sealed and opened exactly once, whatever the split, and a bad chunk
/// anywhere fails the whole transfer.
@Suite struct BulkChunkTests {
    private func bytes(_ n: Int) -> [UInt8] { (0..<n).map { UInt8(truncatingIfNeeded: $0 &* 131 &+ $0 >> 8) } }

    @Test(arguments: [1, 2, 3, 7])
    func runsCoverEveryChunkOnce(threads: Int) throws {
        for count in [1, 2, 5, 64, 101] {
            let seen = Mutex([Int](repeating: 0, count: count))
            try BulkThreads.forEachRun(of: count, threads: threads) { run in
                seen.withLock { for i in run { $0[i] += 1 } }
            }
            #expect(seen.withLock { $0 } == [Int](repeating: 1, count: count), "\(count) chunks on \(threads) threads")
        }
    }

    @Test(arguments: CipherSuite.allCases)
    func manyChunksRoundTrip(suite: CipherSuite) throws {
        // 37 whole chunks and a short last one.
        let payload = bytes(37 * 4096 + 123)
        let descriptor = BulkDescriptor(innerType: .request, chunkSize: 4096, totalLength: payload.count,
                                        key: [UInt8](repeating: 7, count: 32))
        let memfd = try FileDescriptor.memfd(name: "bulk-test")
        defer { try? memfd.close() }
        _ = try memfd.resize(to: Int64(descriptor.sealedLength))
        try payload.withUnsafeBytes { try descriptor.seal($0, requestID: 9, suite: suite, into: memfd) }
        #expect(try memfd.fileSize() == descriptor.sealedLength)
        let mapping = try FileMapping(memfd, count: descriptor.sealedLength, writable: false)
        let opened = try withExtendedLifetime(mapping) { try descriptor.open(mapping.bytes, requestID: 9, suite: suite) }
        #expect(opened == payload)
        // Bound to the request id.
        #expect(throws: ChannelViolation.self) {
            try withExtendedLifetime(mapping) { _ = try descriptor.open(mapping.bytes, requestID: 10, suite: suite) }
        }
    }

    @Test func aTamperedLateChunkFailsTheTransfer() throws {
        let payload = bytes(64 * 4096)
        let descriptor = BulkDescriptor(innerType: .response, chunkSize: 4096, totalLength: payload.count,
                                        key: [UInt8](repeating: 3, count: 32))
        let memfd = try FileDescriptor.memfd(name: "bulk-test")
        defer { try? memfd.close() }
        _ = try memfd.resize(to: Int64(descriptor.sealedLength))
        try payload.withUnsafeBytes { try descriptor.seal($0, requestID: 1, suite: .aesGCM, into: memfd) }
        _ = try [0xff].withUnsafeBytes { try memfd.write(toAbsoluteOffset: Int64(descriptor.sealedOffset(ofChunk: 50) + 17), $0) }
        let mapping = try FileMapping(memfd, count: descriptor.sealedLength, writable: false)
        do {
            _ = try withExtendedLifetime(mapping) { try descriptor.open(mapping.bytes, requestID: 1, suite: .aesGCM) }
            Issue.record("a tampered chunk must fail")
        } catch let violation as ChannelViolation {
            #expect(violation.kind == .badTag)
            #expect(violation.reason.contains("chunk 50"), "\(violation.reason)")
        }
    }
}
