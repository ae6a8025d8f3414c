import Foundation
import Testing
@testable import StockadeChannel

private struct Vector: Decodable {
    struct Message: Decodable { let payload: String; let ciphertext: String }
    let protocol_name: String
    let init_prologue: String
    let init_psks: [String]?
    let init_ephemeral: String
    let resp_prologue: String
    let resp_psks: [String]?
    let resp_ephemeral: String
    let handshake_hash: String
    let messages: [Message]
}

func hex(_ s: String) -> [UInt8] {
    var out: [UInt8] = []
    var it = s.makeIterator()
    while let a = it.next(), let b = it.next() { out.append(UInt8(String([a, b]), radix: 16)!) }
    return out
}

func hex(_ b: [UInt8]) -> String { b.map { String(format: "%02x", $0) }.joined() }

@Suite struct NoiseVectorTests {
    /// Both suites' NNpsk0 vectors from cacophony: every handshake message,
    /// the handshake hash, and every transport message after the split.
    @Test(arguments: CipherSuite.allCases)
    func cacophonyVectors(suite: CipherSuite) throws {
        let data = try Data(contentsOf: URL(fileURLWithPath: Paths.vectors))
        // The file holds every cacophony pattern; decode only ours.
        let all = try #require(try JSONSerialization.jsonObject(with: data) as? [[String: Any]])
        let ours = all.filter { $0["protocol_name"] as? String == suite.protocolName }
        let vectors = try JSONDecoder().decode([Vector].self, from: JSONSerialization.data(withJSONObject: ours))
        #expect(vectors.count == 1, "expected one \(suite.protocolName) vector in \(Paths.vectors)")
        for v in vectors {
            let initiator = try NoiseHandshake(role: .initiator, suite: suite, prologue: hex(v.init_prologue),
                                               psk: hex(try #require(v.init_psks?.first)), fixedEphemeralKey: hex(v.init_ephemeral))
            let responder = try NoiseHandshake(role: .responder, suite: suite, prologue: hex(v.resp_prologue),
                                               psk: hex(try #require(v.resp_psks?.first)), fixedEphemeralKey: hex(v.resp_ephemeral))
            let m = v.messages
            let c0 = try initiator.writeMessage(payload: hex(m[0].payload))
            #expect(hex(c0) == m[0].ciphertext)
            #expect(try responder.readMessage(c0) == hex(m[0].payload))
            let c1 = try responder.writeMessage(payload: hex(m[1].payload))
            #expect(hex(c1) == m[1].ciphertext)
            #expect(try initiator.readMessage(c1) == hex(m[1].payload))
            #expect(hex(initiator.handshakeHash) == v.handshake_hash)
            #expect(hex(responder.handshakeHash) == v.handshake_hash)
            let (iSend, iReceive) = try initiator.split()
            let (rReceive, rSend) = try responder.split()
            for (i, message) in m.dropFirst(2).enumerated() {
                let (tx, rx) = i % 2 == 0 ? (iSend, rReceive) : (rSend, iReceive)
                let c = try tx.encryptWithAd([], hex(message.payload))
                #expect(hex(c) == message.ciphertext, "transport message \(i + 2)")
                #expect(try rx.decryptWithAd([], c) == hex(message.payload))
            }
        }
    }

    /// The record layer's segmented in-place path gives the same bytes as
    /// Noise's ENCRYPT over the concatenated body, and Rekey() matches the
    /// definition.
    @Test(arguments: CipherSuite.allCases)
    func recordSealMatchesNoiseEncrypt(suite: CipherSuite) throws {
        let key = [UInt8](repeating: 7, count: 32)
        let a = NoiseCipherState(suite: suite)
        let b = NoiseCipherState(suite: suite)
        var keyA = key, keyB = key
        try a.initializeKey(&keyA)
        try b.initializeKey(&keyB)
        let sealer = RecordSealer(cipher: a, rekeyInterval: 2)
        let payload = (0..<300).map { UInt8($0 & 0xff) }
        var buffer = [UInt8](repeating: 0, count: RecordFormat.overhead + payload.count)
        for round in 0..<5 {
            let n = try payload.withUnsafeBytes { p in
                try buffer.withUnsafeMutableBytes { try sealer.seal(type: .request, flags: [], requestID: 9, payload: p, into: $0) }
            }
            let header = Array(buffer[0..<5])
            var body: [UInt8] = [MessageType.request.rawValue, 0, 0, 0]
            body.appendBigEndian(UInt64(9))
            let expected = try b.encryptWithAd(header, body + payload)
            #expect(Array(buffer[5..<n]) == expected, "record \(round)")
            if (round + 1) % 2 == 0 { try b.rekey() }
        }
    }
}
