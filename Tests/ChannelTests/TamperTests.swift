import Foundation
import Testing
import SystemPackage
import Logging
import StockadeSystem
@testable import StockadeChannel
#if canImport(Glibc)
import Glibc
#endif

/// Copies `from` to `to` until end of stream, then half-closes `to`;
/// returns every byte that passed.
private func relay(from: FileDescriptor, to: FileDescriptor) -> [UInt8] {
    var seen: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = (try? buffer.withUnsafeMutableBytes { try from.read(into: $0) }) ?? 0
        if n <= 0 { break }
        seen += buffer[0..<n]
        _ = try? buffer.withUnsafeBytes { try to.sendAll(UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
    }
    Glibc.shutdown(to.rawValue, Int32(SHUT_WR))
    return seen
}

private final class Box<T>: @unchecked Sendable { var value: T; init(_ v: T) { value = v } }

/// Thousands of replays each end in a logged violation; keep them quiet.
private let quiet: Logger = {
    var logger = Logger(label: "stockade.channel.tamper-test")
    logger.logLevel = .critical
    return logger
}()

/// What the launcher does in the recorded session; `extra` bytes make the
/// request large enough for the streaming record path.
private func launcherScript(_ channel: SecureChannel, extra: Int = 40) throws {
    #expect(try channel.request(Array("tamper me".utf8) + [UInt8](repeating: 0x41, count: extra)).count == 9 + extra)
    try channel.ping([7, 7, 7])
    try channel.shutdown()
}

private func workerScript(_ channel: SecureChannel) throws {
    try WorkerChannel.serve(channel) { $0.reversed() }
}

/// A recorded session (both directions) with fixed ephemerals, so that a
/// replay of one side's bytes is valid input for a fresh other side.
private struct Recording {
    let parameters: ChannelParameters
    let launcherKey = [UInt8](repeating: 0x11, count: 32)
    let workerKey = [UInt8](repeating: 0x22, count: 32)
    var toWorker: [UInt8] = []
    var toLauncher: [UInt8] = []
    let extra: Int

    init(suite: CipherSuite, extra: Int = 40) throws {
        self.extra = extra
        parameters = ChannelParameters(psk: [UInt8](repeating: 0x33, count: 32), tenant: "acme", worker: "w-t",
                                       spawnNonce: [UInt8](repeating: 0x44, count: 16), suites: [suite],
                                       limits: ChannelLimits(rekeyInterval: 2))
        let (launcherEnd, relayL) = try UnixSocketPair.make()
        let (relayW, workerEnd) = try UnixSocketPair.make()
        let down = Box<[UInt8]>([]), up = Box<[UInt8]>([])
        let group = DispatchGroup()
        DispatchQueue.global().async(group: group) { down.value = relay(from: relayL, to: relayW) }
        DispatchQueue.global().async(group: group) { up.value = relay(from: relayW, to: relayL) }
        let params = parameters, wKey = workerKey
        DispatchQueue.global().async(group: group) {
            let channel = try? SecureChannel.respond(socket: workerEnd, parameters: params, supportedSuites: [suite],
                                                     logger: nil, fixedEphemeralKey: wKey)
            if let channel { try? workerScript(channel) }
        }
        let channel = try SecureChannel.initiate(socket: launcherEnd, parameters: parameters, logger: nil,
                                                 handshakeTimeoutMilliseconds: nil, fixedEphemeralKey: launcherKey)
        try launcherScript(channel, extra: extra)
        group.wait()
        try relayL.close()
        try relayW.close()
        toWorker = down.value
        toLauncher = up.value
    }

    /// Feeds `stream` to a fresh worker and returns how it ended.
    func replayToWorker(_ stream: [UInt8]) throws -> ChannelError? {
        try replay(stream) { workerEnd in
            let channel = try SecureChannel.respond(socket: workerEnd, parameters: parameters, supportedSuites: parameters.suites,
                                                    logger: quiet, fixedEphemeralKey: workerKey)
            try workerScript(channel)
        }
    }

    /// Feeds `stream` to a fresh launcher running the same script.
    func replayToLauncher(_ stream: [UInt8]) throws -> ChannelError? {
        try replay(stream) { launcherEnd in
            let channel = try SecureChannel.initiate(socket: launcherEnd, parameters: parameters, logger: quiet,
                                                     handshakeTimeoutMilliseconds: nil, fixedEphemeralKey: launcherKey)
            try launcherScript(channel, extra: extra)
        }
    }

    /// Runs `peer` on one end of a fresh socket pair while another thread
    /// writes `stream` into the other (a large stream exceeds the socket
    /// buffer); nil when `peer` finished, else the channel error it ended with.
    private func replay(_ stream: [UInt8], into peer: (FileDescriptor) throws -> Void) throws -> ChannelError? {
        let (feeder, end) = try UnixSocketPair.make()
        defer { try? feeder.close() }
        let writer = DispatchGroup()
        DispatchQueue.global().async(group: writer) {
            _ = try? stream.withUnsafeBytes { try feeder.sendAll($0) }
            Glibc.shutdown(feeder.rawValue, Int32(SHUT_WR))
        }
        defer { writer.wait() }
        do {
            try peer(end)
            return nil
        } catch let error as ChannelError {
            return error
        }
    }
}

@Suite struct TamperTests {
    /// Every byte the launcher sent, flipped (two bit patterns) one
    /// position at a time: the worker must end with a violation each time,
    /// and the untouched replay must complete.
    @Test(arguments: CipherSuite.allCases)
    func everyFlippedByteToWorkerIsDetected(suite: CipherSuite) throws {
        let recording = try Recording(suite: suite)
        #expect(recording.toWorker.count > 200)
        #expect(try recording.replayToWorker(recording.toWorker) == nil, "the untouched session must replay cleanly")
        let undetected = try Self.undetectedFlips(recording.toWorker, masks: [0x01, 0x80], replay: recording.replayToWorker)
        #expect(undetected.isEmpty, "flips not detected at \(undetected)")
    }

    @Test(arguments: CipherSuite.allCases)
    func everyFlippedByteToLauncherIsDetected(suite: CipherSuite) throws {
        let recording = try Recording(suite: suite)
        #expect(try recording.replayToLauncher(recording.toLauncher) == nil, "the untouched session must replay cleanly")
        let undetected = try Self.undetectedFlips(recording.toLauncher, masks: [0x01, 0x80], replay: recording.replayToLauncher)
        #expect(undetected.isEmpty, "flips not detected at \(undetected)")
    }

    /// The positions of `stream` where flipping the bits of a mask went
    /// unnoticed: the replay ended without a channel violation.
    static func undetectedFlips(_ stream: [UInt8], at positions: [Int]? = nil, masks: [UInt8],
                                replay: ([UInt8]) throws -> ChannelError?) throws -> [Int] {
        var undetected: [Int] = []
        for position in positions ?? Array(stream.indices) {
            for mask in masks {
                var flipped = stream
                flipped[position] ^= mask
                if try replay(flipped)?.violation == nil { undetected.append(position) }
            }
        }
        return undetected
    }

    /// Large records are decrypted while they arrive (the streaming path):
    /// flips anywhere in them, in either direction, are still detected
    /// before any of the payload is used.
    @Test(arguments: CipherSuite.allCases)
    func flipsInLargeRecordsAreDetected(suite: CipherSuite) throws {
        let recording = try Recording(suite: suite, extra: 200_000)
        #expect(recording.toWorker.count > 200_000 && recording.toLauncher.count > 200_000)
        #expect(try recording.replayToWorker(recording.toWorker) == nil)
        #expect(try recording.replayToLauncher(recording.toLauncher) == nil)
        func positions(_ count: Int) -> [Int] {
            Array(0..<min(count, 200)) + Array(stride(from: 200, to: count, by: 997)) + Array(max(0, count - 200)..<count)
        }
        let toWorker = try Self.undetectedFlips(recording.toWorker, at: positions(recording.toWorker.count), masks: [0x04],
                                                replay: recording.replayToWorker)
        let toLauncher = try Self.undetectedFlips(recording.toLauncher, at: positions(recording.toLauncher.count), masks: [0x04],
                                                  replay: recording.replayToLauncher)
        #expect(toWorker.isEmpty && toLauncher.isEmpty, "flips not detected: to worker at \(toWorker), to launcher at \(toLauncher)")
    }

    /// Replaying a record (sending it twice) or swapping two records fails
    /// authentication: the counter nonce binds the order.
    @Test func replayAndReorderAreDetected() throws {
        let recording = try Recording(suite: .aesGCM)
        let stream = recording.toWorker
        // Split the stream into the handshake frame and the records.
        let frameEnd = 2 + Int(stream[0]) << 8 + Int(stream[1])
        var records: [[UInt8]] = []
        var offset = frameEnd
        while offset < stream.count {
            let length = Int(stream[offset]) << 24 | Int(stream[offset + 1]) << 16 | Int(stream[offset + 2]) << 8 | Int(stream[offset + 3])
            records.append(Array(stream[offset..<offset + 5 + length]))
            offset += 5 + length
        }
        #expect(records.count >= 4)
        let head = Array(stream[0..<frameEnd])
        let replayed = head + records[0] + records[1] + records[1] + records[2...].joined()
        #expect(try recording.replayToWorker(replayed)?.violation?.kind == .badTag)
        var swapped = records
        swapped.swapAt(1, 2)
        #expect(try recording.replayToWorker(head + swapped.joined())?.violation?.kind == .badTag)
        // A record dropped from the middle.
        var dropped = records
        dropped.remove(at: 1)
        #expect(try recording.replayToWorker(head + dropped.joined())?.violation?.kind == .badTag)
        // Truncated in the middle of the last record.
        #expect(try recording.replayToWorker(Array(stream.dropLast(3)))?.violation?.kind == .truncated)
        // Cut at a record boundary before the shutdown: the launcher vanished.
        #expect(try recording.replayToWorker(head + records.dropLast().joined())?.violation?.kind == .closed)
    }
}
