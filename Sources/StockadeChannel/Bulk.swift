// Sealing and opening the chunks of a bulk transfer (docs/PROTOCOL.md,
// "Bulk transfers"). Every chunk is its own AEAD message, with its own
// nonce, additional data and tag, so the chunks of a large transfer are
// split across threads: each thread takes a contiguous run of chunks with
// its own cipher context (an OpenSSL context is not shared between threads)
// and its own staging buffer. The memfd cannot be handed over before it is
// complete and sealed, so the two ends of a transfer never overlap; without
// this a 64 MiB transfer runs on one core end to end.
import SystemPackage
import StockadeSystem
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import Dispatch
import Synchronization

extension BulkDescriptor {
    /// Below this many chunks per thread, splitting costs more than it saves.
    static let minChunksPerThread = 4

    /// Threads for this transfer: one per `minChunksPerThread` chunks, at
    /// most one per available processor.
    var threadCount: Int {
        max(1, min(BulkThreads.available, chunkCount / Self.minChunksPerThread))
    }

    /// The byte offset of chunk `index` in the memfd (every earlier chunk
    /// is followed by its tag).
    func sealedOffset(ofChunk index: Int) -> Int { index * (chunkSize + RecordFormat.tagLength) }

    /// The plaintext length of chunk `index`.
    func chunkLength(_ index: Int) -> Int { min(chunkSize, totalLength - index * chunkSize) }

    /// Encrypts `payload` (exactly `totalLength` bytes) chunk by chunk and
    /// writes the sealed chunks to `memfd` at their offsets.
    ///
    /// Each chunk goes through a staging buffer and `pwrite`, not through a
    /// mapping of the memfd: a populated writable mapping makes the kernel
    /// zero every page before it is overwritten, whereas writing whole pages
    /// allocates them without zeroing (and leaves no writable mapping to
    /// undo before `F_SEAL_WRITE`).
    func seal(_ payload: UnsafeRawBufferPointer, requestID: UInt64, suite: CipherSuite, into memfd: FileDescriptor) throws {
        precondition(payload.count == totalLength)
        let source = UncheckedSendable(payload)
        try BulkThreads.forEachRun(of: chunkCount, threads: threadCount) { chunks in
            let key = try AEADKey(suite: suite, key: self.key)
            let staging = UnsafeMutableRawBufferPointer.allocate(byteCount: chunkSize + RecordFormat.tagLength, alignment: 64)
            defer { staging.deallocate() }
            for index in chunks {
                let count = chunkLength(index)
                let ad = Self.chunkAD(requestID: requestID, totalLength: totalLength, index: index)
                try ad.withUnsafeBytes { adBytes in
                    try key.seal(nonce: UInt64(index), ad: adBytes, source: source.value.baseAddress! + index * chunkSize,
                                 destination: staging.baseAddress!, count: count, tag: staging.baseAddress! + count)
                }
                try memfd.writeAll(toAbsoluteOffset: Int64(sealedOffset(ofChunk: index)),
                                   UnsafeRawBufferPointer(rebasing: staging[0..<count + RecordFormat.tagLength]))
            }
        }
    }

    /// Decrypts the sealed memfd contents (`sealedLength` bytes, mapped
    /// shared and not populated) into a new payload, faulting each chunk's
    /// pages in before it is opened and dropping them after. Throws
    /// `bad-tag` naming the first chunk that fails; nothing is returned
    /// unless every chunk verifies.
    func open(_ sealed: UnsafeRawBufferPointer, requestID: UInt64, suite: CipherSuite) throws -> [UInt8] {
        precondition(sealed.count == sealedLength)
        let source = UncheckedSendable(sealed)
        let failed = Mutex(Int.max)
        let payload = try [UInt8](unsafeUninitializedCapacity: totalLength) { out, count in
            // Before the first write: 2 MiB pages fault in 512 times fewer.
            HugePages.advise(out.baseAddress!, count: out.count)
            let destination = UncheckedSendable(UnsafeMutableRawPointer(out.baseAddress!))
            try BulkThreads.forEachRun(of: chunkCount, threads: threadCount) { chunks in
                let key = try AEADKey(suite: suite, key: self.key)
                for index in chunks {
                    let n = chunkLength(index)
                    let chunk = source.value.baseAddress! + sealedOffset(ofChunk: index)
                    let ad = Self.chunkAD(requestID: requestID, totalLength: totalLength, index: index)
                    // Only the chunks being opened are resident: the mapped
                    // memfd is not held in memory next to its plaintext.
                    MappedPages.prefault(chunk, count: n + RecordFormat.tagLength)
                    let ok = ad.withUnsafeBytes { adBytes in
                        key.open(nonce: UInt64(index), ad: adBytes, source: chunk,
                                 destination: destination.value + index * chunkSize, count: n, tag: chunk + n)
                    }
                    MappedPages.drop(chunk, count: n + RecordFormat.tagLength)
                    if !ok {
                        failed.withLock { $0 = min($0, index) }
                        return
                    }
                }
            }
            count = failed.withLock { $0 } == Int.max ? totalLength : 0
        }
        let failedChunk = failed.withLock { $0 }
        if failedChunk != Int.max {
            throw ChannelViolation(.badTag, "bulk chunk \(failedChunk) failed authentication")
        }
        return payload
    }
}

/// Splits bulk chunks across threads.
enum BulkThreads {
    /// Processors this process may run on.
    static let available = max(1, ProcessInfo.processInfo.activeProcessorCount)

    /// Calls `body` with `threads` contiguous runs of `0..<count`, each on
    /// its own thread (the caller's included), and waits for all of them.
    /// Rethrows the first error any run threw, after every run has ended.
    static func forEachRun(of count: Int, threads: Int, _ body: @Sendable (Range<Int>) throws -> Void) throws {
        let threads = max(1, min(threads, count))
        if threads == 1 {
            try body(0..<count)
            return
        }
        let firstError = Mutex<(any Error)?>(nil)
        DispatchQueue.concurrentPerform(iterations: threads) { part in
            do { try body((count * part / threads)..<(count * (part + 1) / threads)) } catch {
                firstError.withLock { if $0 == nil { $0 = error } }
            }
        }
        if let error = firstError.withLock({ $0 }) { throw error }
    }
}

/// Pointers into buffers that outlive a ``BulkThreads/forEachRun`` call and
/// that its runs touch at disjoint offsets only.
struct UncheckedSendable<Value>: @unchecked Sendable {
    let value: Value
    init(_ value: Value) { self.value = value }
}
