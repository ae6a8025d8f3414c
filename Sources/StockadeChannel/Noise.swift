// The Noise Protocol Framework objects (revision 34) for the one pattern the
// channel uses, NNpsk0:
//
//     NNpsk0:
//       -> psk, e
//       <- e, ee
//
// with X25519, SHA-256 and either AES-256-GCM or ChaCha20-Poly1305.

/// A Noise CipherState: a key (or none yet) and the 64-bit nonce counter.
final class NoiseCipherState {
    /// The key lives only inside OpenSSL's contexts, which clear it when
    /// they are freed (on rekey and when the channel goes).
    private(set) var key: AEADKey?
    let suite: CipherSuite
    /// The next nonce. 2^64-1 is reserved (Rekey uses it).
    private(set) var nonce: UInt64 = 0

    init(suite: CipherSuite) { self.suite = suite }

    var hasKey: Bool { key != nil }

    /// Forgets the key (its OpenSSL contexts clear it when freed).
    func dropKey() { key = nil }

    /// Sets the key from `k` and wipes `k`.
    func initializeKey(_ k: inout [UInt8]) throws(CryptoError) {
        defer { k.wipe() }
        key = try AEADKey(suite: suite, key: k)
        nonce = 0
    }

    /// Takes the next nonce; fails when the counter is exhausted (never in
    /// practice: the channel rekeys long before, and 2^64-1 messages is
    /// beyond any worker's lifetime).
    func nextNonce() throws(ChannelViolation) -> UInt64 {
        guard nonce < UInt64.max else { throw ChannelViolation(.nonceExhausted, "nonce counter exhausted") }
        defer { nonce += 1 }
        return nonce
    }

    func encryptWithAd(_ ad: [UInt8], _ plaintext: [UInt8]) throws -> [UInt8] {
        guard let key else { return plaintext }
        return try key.seal(nonce: nextNonce(), ad: ad, plaintext: plaintext)
    }

    func decryptWithAd(_ ad: [UInt8], _ ciphertext: [UInt8]) throws -> [UInt8] {
        guard let key else { return ciphertext }
        let n = try nextNonce()
        guard let plaintext = key.open(nonce: n, ad: ad, ciphertext: ciphertext) else {
            throw ChannelViolation(.badTag, "handshake message failed authentication")
        }
        return plaintext
    }

    /// Noise `Rekey()`: k = the first 32 bytes of ENCRYPT(k, 2^64-1, "", 32 zero bytes).
    /// The nonce counter carries on.
    func rekey() throws(CryptoError) {
        guard let key else { return }
        var sealed = try key.seal(nonce: UInt64.max, ad: [], plaintext: [UInt8](repeating: 0, count: 32))
        defer { sealed.wipe() }
        var next = Array(sealed.prefix(32))
        let keepNonce = nonce
        try initializeKey(&next)
        nonce = keepNonce
    }
}

/// A Noise SymmetricState: the chaining key, the handshake hash and the
/// handshake cipher.
final class NoiseSymmetricState {
    private(set) var chainingKey: [UInt8]
    private(set) var handshakeHash: [UInt8]
    let cipher: NoiseCipherState
    let suite: CipherSuite

    init(protocolName: String, suite: CipherSuite) {
        let name = Array(protocolName.utf8)
        if name.count <= 32 {
            handshakeHash = name + [UInt8](repeating: 0, count: 32 - name.count)
        } else {
            handshakeHash = Crypto.sha256(name)
        }
        chainingKey = handshakeHash
        cipher = NoiseCipherState(suite: suite)
        self.suite = suite
    }

    func mixKey(_ input: [UInt8]) throws(CryptoError) {
        var out = Crypto.hkdf(chainingKey: chainingKey, input: input, outputs: 2)
        chainingKey.wipe()
        chainingKey = out[0]
        try cipher.initializeKey(&out[1])
    }

    func mixHash(_ data: [UInt8]) {
        handshakeHash = Crypto.sha256(handshakeHash, data)
    }

    func mixKeyAndHash(_ input: [UInt8]) throws(CryptoError) {
        var out = Crypto.hkdf(chainingKey: chainingKey, input: input, outputs: 3)
        chainingKey.wipe()
        chainingKey = out[0]
        mixHash(out[1])
        out[1].wipe()
        try cipher.initializeKey(&out[2])
    }

    func encryptAndHash(_ plaintext: [UInt8]) throws -> [UInt8] {
        let ciphertext = try cipher.encryptWithAd(handshakeHash, plaintext)
        mixHash(ciphertext)
        return ciphertext
    }

    func decryptAndHash(_ ciphertext: [UInt8]) throws -> [UInt8] {
        let plaintext = try cipher.decryptWithAd(handshakeHash, ciphertext)
        mixHash(ciphertext)
        return plaintext
    }

    func split() throws(CryptoError) -> (NoiseCipherState, NoiseCipherState) {
        var out = Crypto.hkdf(chainingKey: chainingKey, input: [], outputs: 2)
        let c1 = NoiseCipherState(suite: suite)
        let c2 = NoiseCipherState(suite: suite)
        try c1.initializeKey(&out[0])
        try c2.initializeKey(&out[1])
        return (c1, c2)
    }

    /// Overwrites the chaining key and drops the handshake cipher's key.
    func wipe() {
        chainingKey.wipe()
        cipher.dropKey()
    }
}

/// The NNpsk0 handshake, for either role. Two messages: the initiator
/// writes the first, the responder the second; then both call ``split()``.
public final class NoiseHandshake {
    public enum Role: Sendable { case initiator, responder }

    /// The size of each handshake message without payload: an ephemeral
    /// public key and an AEAD tag.
    public static let overhead = 32 + 16
    /// Noise's limit on any message.
    public static let maxMessageLength = 65535

    let role: Role
    let symmetric: NoiseSymmetricState
    private var psk: [UInt8]
    private var ephemeral: X25519KeyPair
    private var remoteEphemeral: [UInt8]?
    private var step = 0

    /// - Parameters:
    ///   - fixedEphemeralKey: only for test vectors; production handshakes
    ///     leave it nil and get a fresh key from OpenSSL's CSPRNG.
    init(role: Role, suite: CipherSuite, prologue: [UInt8], psk: [UInt8],
         fixedEphemeralKey: [UInt8]? = nil) throws(CryptoError) {
        precondition(psk.count == 32, "a Noise PSK is 32 bytes")
        self.role = role
        // A buffer of its own, so that wipe() clears this copy in place.
        self.psk = [UInt8](unsafeUninitializedCapacity: psk.count) { buffer, count in
            _ = buffer.initialize(from: psk)
            count = psk.count
        }
        symmetric = NoiseSymmetricState(protocolName: suite.protocolName, suite: suite)
        symmetric.mixHash(prologue)
        if let fixedEphemeralKey {
            ephemeral = try X25519KeyPair(privateKey: fixedEphemeralKey)
        } else {
            ephemeral = try X25519KeyPair.generate()
        }
    }

    public var handshakeHash: [UInt8] { symmetric.handshakeHash }
    public var isComplete: Bool { step == 2 }

    /// Writes the next message (the initiator's first, or the responder's
    /// second) carrying `payload`.
    func writeMessage(payload: [UInt8]) throws -> [UInt8] {
        precondition(payload.count <= Self.maxMessageLength - Self.overhead)
        switch (role, step) {
        case (.initiator, 0):
            // psk, e
            try symmetric.mixKeyAndHash(psk)
            symmetric.mixHash(ephemeral.publicKey)
            try symmetric.mixKey(ephemeral.publicKey)
        case (.responder, 1):
            // e, ee
            guard let re = remoteEphemeral else { preconditionFailure("responder writes after reading") }
            symmetric.mixHash(ephemeral.publicKey)
            try symmetric.mixKey(ephemeral.publicKey)
            try symmetric.mixKey(ephemeral.sharedSecret(with: re))
        default:
            preconditionFailure("NNpsk0: \(role) cannot write message \(step + 1)")
        }
        let body = try symmetric.encryptAndHash(payload)
        step += 1
        return ephemeral.publicKey + body
    }

    /// Reads the peer's message and returns its payload. Every length is
    /// checked before use; a message that does not authenticate throws a
    /// ``ChannelViolation``.
    func readMessage(_ message: [UInt8]) throws -> [UInt8] {
        guard message.count >= Self.overhead else {
            throw ChannelViolation(.malformed, "handshake message of \(message.count) bytes is shorter than \(Self.overhead)")
        }
        guard message.count <= Self.maxMessageLength else {
            throw ChannelViolation(.oversized, "handshake message of \(message.count) bytes exceeds \(Self.maxMessageLength)")
        }
        let re = Array(message[0..<32])
        let rest = Array(message[32...])
        switch (role, step) {
        case (.responder, 0):
            try symmetric.mixKeyAndHash(psk)
            remoteEphemeral = re
            symmetric.mixHash(re)
            try symmetric.mixKey(re)
        case (.initiator, 1):
            remoteEphemeral = re
            symmetric.mixHash(re)
            try symmetric.mixKey(re)
            do {
                try symmetric.mixKey(ephemeral.sharedSecret(with: re))
            } catch {
                throw ChannelViolation(.malformed, "responder's ephemeral key is a low-order point")
            }
        default:
            throw ChannelViolation(.unexpectedMessage, "NNpsk0: \(role) does not expect handshake message \(step + 1)")
        }
        let payload = try symmetric.decryptAndHash(rest)
        step += 1
        return payload
    }

    /// Overwrites every secret the handshake holds (its PSK copy, the
    /// ephemeral private key, the chaining key): call it once the
    /// handshake is split or has failed.
    func wipe() {
        psk.wipe()
        ephemeral.wipe()
        symmetric.wipe()
    }

    /// The two transport cipher states: (initiator to responder, responder
    /// to initiator).
    func split() throws(CryptoError) -> (NoiseCipherState, NoiseCipherState) {
        precondition(isComplete)
        return try symmetric.split()
    }
}
