// Entry points for the libFuzzer targets in Fuzz/stockade-fuzz: they drive
// the record decoder and the handshake parser with arbitrary bytes. Every
// input must end in a value or a ChannelViolation, never a crash.
import Foundation
import Logging
import SystemPackage
import StockadeSystem

/// Fuzzing entry points (used by `stockade-fuzz`; not for applications).
package enum ChannelFuzzing {
    private static let key = [UInt8](repeating: 0x42, count: 32)

    /// The record decoder. Byte 0 picks what the rest is:
    /// - 0: a raw record stream, decoded as the receiver would;
    /// - 1: a record *body* (type, flags, reserved, request id, payload),
    ///   sealed with the receiver's key so that the checks after
    ///   decryption (body header, bulk descriptor) see arbitrary values;
    /// - 2: the params memfd's contents;
    /// - 3: a `STOCKADE_CHANNEL` value;
    /// - 4: a script for a worker that writes into a live launcher channel,
    ///   with descriptors and pauses (``liveStream(_:suite:deadlineMilliseconds:)``);
    ///   bit 6 sets a read deadline of `(byte 0 & 15) + 1` ms.
    package static func records(_ input: [UInt8]) {
        guard let mode = input.first else { return }
        let rest = Array(input.dropFirst())
        let suite: CipherSuite = mode & 0x80 == 0 ? .aesGCM : .chaChaPoly
        let limits = ChannelLimits(maxRecordPayload: 4096, maxBytesInFlight: 4096, maxBulkLength: 1 << 20, rekeyInterval: 3)
        switch mode & 0x7f {
        case 0:
            guard let opener = try? makeOpener(suite: suite, limits: limits) else { return }
            var offset = 0
            while rest.count - offset >= RecordFormat.headerLength {
                let ok: Bool = rest.withUnsafeBytes { all in
                    let header = UnsafeRawBufferPointer(rebasing: all[offset..<offset + RecordFormat.headerLength])
                    guard let (length, _) = try? opener.parseHeader(header),
                          rest.count - offset - RecordFormat.headerLength >= length else { return false }
                    let body = UnsafeRawBufferPointer(rebasing: all[offset + RecordFormat.headerLength..<offset + RecordFormat.headerLength + length])
                    guard (try? opener.open(header: header, ciphertext: body)) != nil else { return false }
                    offset += RecordFormat.headerLength + length
                    return true
                }
                if !ok { break }
            }
        case 1:
            guard rest.count >= RecordFormat.bodyHeaderLength + 1, rest.count - 1 <= 4096 + RecordFormat.bodyHeaderLength,
                  let clearType = MessageType(rawValue: rest[0] % 8 + 1),
                  let sendCipher = try? cipher(suite), let opener = try? makeOpener(suite: suite, limits: limits)
            else { return }
            let body = Array(rest.dropFirst())
            // Seal `body` verbatim: header, then AEAD over the given bytes.
            var record: [UInt8] = []
            record.appendBigEndian(UInt32(body.count + RecordFormat.tagLength))
            record.append(clearType.rawValue)
            guard let sealed = try? sendCipher.encryptWithAd(record, body) else { return }
            record += sealed
            let message: ChannelMessage? = record.withUnsafeBytes { all in
                try? opener.open(header: UnsafeRawBufferPointer(rebasing: all[0..<5]),
                                 ciphertext: UnsafeRawBufferPointer(rebasing: all[5...]))
            }
            if let message, message.type == .bulk {
                _ = try? BulkDescriptor(decoding: message.payload, maxBulkLength: limits.maxBulkLength)
            }
        case 2:
            _ = try? ChannelParameters(decoding: rest)
        case 3:
            _ = try? WorkerChannel.parseEnvironmentValue(String(decoding: rest, as: UTF8.self))
        case 4:
            liveStream(rest, suite: suite, deadlineMilliseconds: mode & 0x40 != 0 ? Int(mode & 0x0f) + 1 : nil)
        default:
            return
        }
    }

    /// Mode 4: a hostile worker's stream, with descriptors and timing,
    /// written by a thread over a real socket pair into an established
    /// launcher-side channel that has three requests in flight and reads
    /// until it ends. Each step is one byte `s` and its operands:
    /// - `s & 3` = 0: a sealed record (type, flags, request id, payload
    ///   length / 16); 1: raw bytes (count, bytes); 2: a bulk record with a
    ///   memfd (request id, total KiB) whose kind is `s >> 2 & 3`: right,
    ///   unsealed, all holes, wrong size; 3: a pause of `s >> 2 & 7` ms;
    /// - `s >> 5 & 3`: what else rides on the send: nothing, /dev/null, the
    ///   worker's own socket end, two sealed memfds;
    /// - `s >> 7`: send the bytes one at a time.
    /// With a deadline (mode bit 6) the reads end at it. Whatever happens,
    /// every descriptor the launcher received must be closed once the
    /// channel is: no descriptor is open that was not open before (those of
    /// libdispatch's event loop aside, ``isDispatchEventLoop(_:)``).
    static func liveStream(_ script: [UInt8], suite: CipherSuite, deadlineMilliseconds: Int?) {
        let limits = ChannelLimits(maxRecordPayload: 4096, maxBytesInFlight: 1 << 20, maxBulkLength: 1 << 20, rekeyInterval: 3)
        let before = openDescriptors()
        guard let (launcherEnd, workerEnd) = try? UnixSocketPair.make(),
              let send = try? cipher(suite), let receive = try? cipher(suite), let workerSend = try? cipher(suite) else { return }
        var parameters = ChannelParameters(psk: key, tenant: "fuzz", worker: "w", spawnNonce: [UInt8](repeating: 0, count: 16),
                                           suites: [suite], limits: limits)
        parameters.psk = []
        var quiet = Logger(label: "stockade.channel.fuzz")
        quiet.logLevel = .critical
        var inbox = Inbox(capacity: 64 << 10)
        inbox.acceptsDescriptors = true
        let channel = SecureChannel(role: .initiator, suite: suite, parameters: parameters, socket: launcherEnd, inbox: inbox,
                                    send: send, receive: receive, handshakeHash: [], logger: quiet)
        for id in 1...3 { try? channel.send(type: .request, requestID: UInt64(id), payload: [UInt8(id)]) }
        let sealer = UncheckedSendable(RecordSealer(cipher: workerSend, rekeyInterval: limits.rekeyInterval))
        let writer = Thread {
            playWorker(script, socket: workerEnd, sealer: sealer.value, suite: suite)
            try? workerEnd.close()
        }
        writer.start()
        if let ms = deadlineMilliseconds { channel.setReceiveDeadlineForFuzzing(.now + .milliseconds(ms)) }
        while true {
            do {
                guard try channel.receive() != nil else { break }
            } catch {
                break
            }
        }
        channel.close()
        while !writer.isFinished { usleep(100) }
        withExtendedLifetime(channel) {}
        let added = openDescriptors().subtracting(before).filter { !isDispatchEventLoop($0) && !isDispatchPoolMonitor($0) }.sorted()
        precondition(added.isEmpty, "the channel leaked descriptors: \(added)")
    }

    /// Every open descriptor, as "number -> what it refers to". The
    /// listing's own directory descriptor is in the listing but closed by
    /// the time its link is read; its number depends on which are free, so
    /// it is left out (an open descriptor's link can always be read).
    private static func openDescriptors() -> Set<String> {
        Set(((try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? []).compactMap { fd in
            (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/fd/\(fd)")).map { "\(fd) -> \($0)" }
        })
    }

    /// libdispatch opens its event loop's descriptors (an epoll, an eventfd,
    /// timerfds) lazily and keeps them for the life of the process: the
    /// first when its first worker thread starts, a timerfd later from its
    /// manager thread. Bulk transfers of several chunks are sealed and
    /// opened on that pool (``BulkThreads``), so they appear during some
    /// input and are not the channel's. Nothing the script sends is one of
    /// these kinds (it sends /dev/null, memfds and its socket), so leaving
    /// them out hides no descriptor the launcher received.
    private static func isDispatchEventLoop(_ entry: String) -> Bool {
        entry.hasSuffix("anon_inode:[eventpoll]") || entry.hasSuffix("anon_inode:[eventfd]") || entry.hasSuffix("anon_inode:[timerfd]")
    }

    /// libdispatch's worker-pool monitor counts its runnable workers by
    /// reading each one's `/proc/<tid>/stat`, a descriptor open for one
    /// read on its own thread: one caught open in the listing is not the
    /// channel's (the script sends /dev/null, memfds and its socket, never
    /// a /proc file).
    private static func isDispatchPoolMonitor(_ entry: String) -> Bool {
        guard let arrow = entry.range(of: " -> /proc/"), entry.hasSuffix("/stat") else { return false }
        let tid = entry[arrow.upperBound...].dropLast("/stat".count)
        return !tid.isEmpty && tid.allSatisfy { $0 >= "0" && $0 <= "9" }
    }

    private static func playWorker(_ script: [UInt8], socket: FileDescriptor, sealer: RecordSealer, suite: CipherSuite) {
        var rest = script[...]
        func next() -> Int { Int(rest.popFirst() ?? 0) }
        let scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: 4096 + RecordFormat.overhead, alignment: 16)
        defer { scratch.deallocate() }
        while let step = rest.popFirst() {
            var bytes: [UInt8] = []
            var owned: [FileDescriptor] = []
            defer { for fd in owned { try? fd.close() } }
            switch step & 3 {
            case 0:
                let type = MessageType(rawValue: UInt8(next() % 8 + 1)) ?? .response
                let flags = MessageFlags(rawValue: UInt8(next() & 1))
                let id = UInt64(next())
                let payload = [UInt8](repeating: 0x5a, count: next() * 16)
                guard let n = try? payload.withUnsafeBytes({ try sealer.seal(type: type, flags: flags, requestID: id, payload: $0, into: scratch) })
                else { return }
                bytes = Array(scratch[0..<n])
            case 1:
                let count = next()
                bytes = Array(rest.prefix(count))
                rest = rest.dropFirst(count)
            case 2:
                let id = UInt64(next())
                let total = (next() + 1) * 1024
                let kind = Int(step >> 2 & 3)
                var descriptor = BulkDescriptor(innerType: .response, chunkSize: 4096, totalLength: total,
                                                key: [UInt8](repeating: 7, count: 32))
                guard let memfd = try? FileDescriptor.memfd(name: "fuzz-bulk") else { return }
                owned.append(memfd)
                let size = descriptor.sealedLength + (kind == 3 ? 16 : 0)
                _ = try? memfd.resize(to: Int64(size))
                if kind != 2 {
                    let payload = [UInt8](repeating: 1, count: total)
                    try? payload.withUnsafeBytes { try descriptor.seal($0, requestID: id, suite: suite, into: memfd) }
                }
                if kind != 1 { try? memfd.addSeals(.immutable) }
                let encoded = descriptor.encoded()
                descriptor.key.wipe()
                guard let n = try? encoded.withUnsafeBytes({ try sealer.seal(type: .bulk, flags: [], requestID: id, payload: $0, into: scratch) })
                else { return }
                bytes = Array(scratch[0..<n])
            default:
                usleep(UInt32(step >> 2 & 7) * 1000)
                continue
            }
            var passing = owned
            switch step >> 5 & 3 {
            case 1:
                if let null = try? FileDescriptor.open("/dev/null", .readOnly, options: .closeOnExec) {
                    owned.append(null)
                    passing = [null]
                }
            case 2:
                passing = [socket]
            case 3:
                for _ in 0..<2 {
                    if let fd = try? FileDescriptor.memfd(name: "fuzz-extra") {
                        try? fd.addSeals(.immutable)
                        owned.append(fd)
                    }
                }
                passing = owned
            default:
                break
            }
            guard !bytes.isEmpty else { continue }
            do {
                if step & 0x80 != 0 {
                    for (i, byte) in bytes.enumerated() {
                        try [byte].withUnsafeBytes { try socket.sendAll($0, passing: i == 0 ? passing : []) }
                    }
                } else {
                    try bytes.withUnsafeBytes { try socket.sendAll($0, passing: passing) }
                }
            } catch {
                return
            }
        }
    }

    /// The handshake parser. Byte 0: 0 reads the rest as the launcher's
    /// first message (worker side); 1 sends a first message and reads the
    /// rest as the worker's reply (launcher side). Bit 7 picks ChaChaPoly.
    package static func handshake(_ input: [UInt8]) {
        guard let mode = input.first else { return }
        let rest = Array(input.dropFirst())
        let suite: CipherSuite = mode & 0x80 == 0 ? .aesGCM : .chaChaPoly
        let prologue = Array("stockade/1 fuzz".utf8)
        switch mode & 0x7f {
        case 0:
            guard let responder = try? NoiseHandshake(role: .responder, suite: suite, prologue: prologue, psk: key,
                                                      fixedEphemeralKey: [UInt8](repeating: 2, count: 32)) else { return }
            if (try? responder.readMessage(rest)) != nil {
                _ = try? responder.writeMessage(payload: [])
            }
        case 1:
            guard let initiator = try? NoiseHandshake(role: .initiator, suite: suite, prologue: prologue, psk: key,
                                                      fixedEphemeralKey: [UInt8](repeating: 1, count: 32)),
                  (try? initiator.writeMessage(payload: [])) != nil else { return }
            if (try? initiator.readMessage(rest)) != nil {
                _ = try? initiator.split()
            }
        default:
            return
        }
    }

    private static func cipher(_ suite: CipherSuite) throws -> NoiseCipherState {
        let state = NoiseCipherState(suite: suite)
        var copy = key
        try state.initializeKey(&copy)
        return state
    }

    private static func makeOpener(suite: CipherSuite, limits: ChannelLimits) throws -> RecordOpener {
        RecordOpener(cipher: try cipher(suite), limits: limits)
    }
}

/// Measurement hooks for `stockade-bench channel` (not for applications).
package enum ChannelBenchmarking {
    /// Seals and opens `size` bytes `iterations` times in place through the
    /// record layer's AEAD path; returns the seconds taken.
    package static func aeadRoundTrips(suite: CipherSuite, size: Int, iterations: Int) throws -> Double {
        let key = try AEADKey(suite: suite, key: [UInt8](repeating: 9, count: 32))
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: size + 16, alignment: 16)
        defer { buffer.deallocate() }
        buffer.initializeMemory(as: UInt8.self, repeating: 0x5a)
        let ad = UnsafeRawBufferPointer(start: buffer.baseAddress, count: 0)
        let start = ContinuousClock.now
        for i in 0..<iterations {
            let data = buffer.baseAddress!
            try key.seal(nonce: UInt64(i), ad: ad, source: data, destination: data, count: size, tag: data + size)
            guard key.open(nonce: UInt64(i), ad: ad, source: data, destination: data, count: size, tag: data + size) else {
                throw CryptoError("AEAD open in benchmark")
            }
        }
        let elapsed = ContinuousClock.now - start
        return elapsed.inSeconds
    }
}
