// Entry points for the libFuzzer targets in Fuzz/stockade-fuzz: they drive
// the record decoder and the handshake parser with arbitrary bytes. Every
// input must end in a value or a ChannelViolation, never a crash.

/// Fuzzing entry points (used by `stockade-fuzz`; not for applications).
package enum ChannelFuzzing {
    private static let key = [UInt8](repeating: 0x42, count: 32)

    /// The record decoder. Byte 0 picks what the rest is:
    /// - 0: a raw record stream, decoded as the receiver would;
    /// - 1: a record *body* (type, flags, reserved, request id, payload),
    ///   sealed with the receiver's key so that the checks after
    ///   decryption (body header, bulk descriptor) see arbitrary values;
    /// - 2: the params memfd's contents;
    /// - 3: a `STOCKADE_CHANNEL` value.
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
        default:
            return
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
        try state.initializeKey(key)
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
