// The cryptographic primitives the channel needs, over OpenSSL 3's EVP
// interface: SHA-256, HMAC-SHA256 and the Noise HKDF, X25519, and the two
// AEADs (AES-256-GCM, ChaCha20-Poly1305) with in-place operation.
import COpenSSL
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
#if canImport(Glibc)
import Glibc
#endif

/// A failure inside OpenSSL. These are not expected at run time (the inputs
/// are checked before they reach OpenSSL); one means the library is broken
/// or out of memory.
public struct CryptoError: Error, CustomStringConvertible, Sendable {
    public let operation: String
    public let detail: String

    init(_ operation: String) {
        self.operation = operation
        let code = ERR_get_error()
        if code == 0 {
            detail = "no OpenSSL error queued"
        } else {
            var buffer = [CChar](repeating: 0, count: 256)
            ERR_error_string_n(code, &buffer, buffer.count)
            detail = String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        }
        ERR_clear_error()
    }

    public var description: String { "OpenSSL \(operation) failed: \(detail)" }
}

/// SHA-256 over data that arrives in pieces (the channel's transcript hash,
/// and the daemon's digest of a model file read in chunks).
package struct SHA256Hasher: ~Copyable {
    private let ctx: OpaquePointer

    package init() {
        guard let ctx = EVP_MD_CTX_new() else { fatalError("EVP_MD_CTX_new: out of memory") }
        guard EVP_DigestInit_ex(ctx, EVP_sha256(), nil) == 1 else {
            fatalError(String(describing: CryptoError("EVP_DigestInit_ex")))
        }
        self.ctx = ctx
    }

    deinit { EVP_MD_CTX_free(ctx) }

    package mutating func update(_ bytes: UnsafeRawBufferPointer) {
        guard bytes.count > 0 else { return }
        guard EVP_DigestUpdate(ctx, bytes.baseAddress, bytes.count) == 1 else {
            fatalError(String(describing: CryptoError("EVP_DigestUpdate")))
        }
    }

    /// The 32-byte digest; the hasher is used up.
    package consuming func finalize() -> [UInt8] {
        var out = [UInt8](repeating: 0, count: 32)
        var length: UInt32 = 0
        guard EVP_DigestFinal_ex(ctx, &out, &length) == 1, length == 32 else {
            fatalError(String(describing: CryptoError("EVP_DigestFinal_ex")))
        }
        return out
    }
}

enum Crypto {
    static let hashLength = 32
    static let keyLength = 32
    static let tagLength = 16

    /// SHA-256 of the concatenation of `parts`.
    static func sha256(_ parts: [UInt8]...) -> [UInt8] {
        sha256(parts: parts)
    }

    static func sha256(parts: [[UInt8]]) -> [UInt8] {
        var hasher = SHA256Hasher()
        for part in parts {
            part.withUnsafeBytes { hasher.update($0) }
        }
        return hasher.finalize()
    }

    /// HMAC-SHA256(key, data).
    static func hmacSHA256(key: [UInt8], data: [UInt8]) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: hashLength)
        var length: UInt32 = 0
        let ok = key.withUnsafeBytes { k in
            data.withUnsafeBytes { d in
                HMAC(EVP_sha256(), k.baseAddress, Int32(k.count), d.baseAddress?.assumingMemoryBound(to: UInt8.self),
                     d.count, &out, &length) != nil
            }
        }
        guard ok, length == 32 else { fatalError(String(describing: CryptoError("HMAC"))) }
        return out
    }

    /// Noise's HKDF(chaining key, input key material, n) with n = 2 or 3.
    static func hkdf(chainingKey: [UInt8], input: [UInt8], outputs: Int) -> [[UInt8]] {
        var tempKey = hmacSHA256(key: chainingKey, data: input)
        defer { tempKey.wipe() }
        let output1 = hmacSHA256(key: tempKey, data: [0x01])
        var input2 = output1 + [0x02]
        defer { input2.wipe() }
        let output2 = hmacSHA256(key: tempKey, data: input2)
        if outputs == 2 { return [output1, output2] }
        var input3 = output2 + [0x03]
        defer { input3.wipe() }
        let output3 = hmacSHA256(key: tempKey, data: input3)
        return [output1, output2, output3]
    }

    static func randomBytes(_ count: Int) throws(CryptoError) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count)
        guard RAND_bytes(&out, Int32(count)) == 1 else { throw CryptoError("RAND_bytes") }
        return out
    }
}

extension Array where Element == UInt8 {
    /// Overwrites the bytes with zeros (`explicit_bzero`, which the
    /// compiler may not drop) and empties the array: for keys once they are
    /// used. Only this buffer is wiped; make copies of secrets rarely.
    mutating func wipe() {
        withUnsafeMutableBytes { if let base = $0.baseAddress { explicit_bzero(base, $0.count) } }
        removeAll()
    }
}

/// SHA-256, for workers and tools that need a digest without their own
/// crypto library.
public enum SHA256 {
    public static func hash(_ data: [UInt8]) -> [UInt8] { Crypto.sha256(data) }
}

/// An X25519 key pair.
struct X25519KeyPair {
    private(set) var privateKey: [UInt8]
    let publicKey: [UInt8]

    /// A fresh key pair from OpenSSL's CSPRNG.
    static func generate() throws(CryptoError) -> X25519KeyPair {
        try X25519KeyPair(privateKey: Crypto.randomBytes(32))
    }

    /// The key pair for a given private key (test vectors fix the ephemerals).
    init(privateKey: [UInt8]) throws(CryptoError) {
        precondition(privateKey.count == 32)
        guard let key = privateKey.withUnsafeBufferPointer({
            EVP_PKEY_new_raw_private_key(EVP_PKEY_X25519, nil, $0.baseAddress, 32)
        }) else { throw CryptoError("EVP_PKEY_new_raw_private_key") }
        defer { EVP_PKEY_free(key) }
        var pub = [UInt8](repeating: 0, count: 32)
        var length = 32
        guard EVP_PKEY_get_raw_public_key(key, &pub, &length) == 1, length == 32 else {
            throw CryptoError("EVP_PKEY_get_raw_public_key")
        }
        self.privateKey = privateKey
        self.publicKey = pub
    }

    /// DH(self, peer). Fails on a low-order peer key (an all-zero shared
    /// secret), which OpenSSL refuses.
    func sharedSecret(with peerPublicKey: [UInt8]) throws(CryptoError) -> [UInt8] {
        precondition(peerPublicKey.count == 32)
        guard let mine = privateKey.withUnsafeBufferPointer({
            EVP_PKEY_new_raw_private_key(EVP_PKEY_X25519, nil, $0.baseAddress, 32)
        }) else { throw CryptoError("EVP_PKEY_new_raw_private_key") }
        defer { EVP_PKEY_free(mine) }
        guard let peer = peerPublicKey.withUnsafeBufferPointer({
            EVP_PKEY_new_raw_public_key(EVP_PKEY_X25519, nil, $0.baseAddress, 32)
        }) else { throw CryptoError("EVP_PKEY_new_raw_public_key") }
        defer { EVP_PKEY_free(peer) }
        guard let ctx = EVP_PKEY_CTX_new(mine, nil) else { throw CryptoError("EVP_PKEY_CTX_new") }
        defer { EVP_PKEY_CTX_free(ctx) }
        guard EVP_PKEY_derive_init(ctx) == 1, EVP_PKEY_derive_set_peer(ctx, peer) == 1 else {
            throw CryptoError("EVP_PKEY_derive_set_peer")
        }
        var out = [UInt8](repeating: 0, count: 32)
        var length = 32
        guard EVP_PKEY_derive(ctx, &out, &length) == 1, length == 32 else { throw CryptoError("EVP_PKEY_derive") }
        return out
    }

    /// Overwrites the private key.
    mutating func wipe() { privateKey.wipe() }
}

/// The AEAD a Noise cipher suite names.
public enum CipherSuite: UInt8, Sendable, CaseIterable, CustomStringConvertible {
    case aesGCM = 1
    case chaChaPoly = 2

    /// The Noise protocol name for the NNpsk0 pattern with this cipher.
    public var protocolName: String { "Noise_NNpsk0_25519_\(noiseName)_SHA256" }

    public var noiseName: String {
        switch self {
        case .aesGCM: "AESGCM"
        case .chaChaPoly: "ChaChaPoly"
        }
    }

    public var description: String { noiseName }

    /// Whether this CPU runs AES-GCM in hardware (the `aes` and
    /// `pclmulqdq` flags in /proc/cpuinfo on x86-64). Without it
    /// ChaCha20-Poly1305 is faster and constant-time.
    public static let hardwareHasAES: Bool = {
        #if arch(x86_64)
        guard let info = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8),
              let flags = info.split(separator: "\n").first(where: { $0.hasPrefix("flags") })
        else { return false }
        let set = Set(flags.split(separator: " ").map(String.init))
        return set.contains("aes") && set.contains("pclmulqdq")
        #else
        return true
        #endif
    }()

    fileprivate var evpCipher: OpaquePointer? {
        switch self {
        case .aesGCM: EVP_aes_256_gcm()
        case .chaChaPoly: EVP_chacha20_poly1305()
        }
    }
}

/// One AEAD key with its OpenSSL context, set up once and reused for every
/// message. Encrypts and decrypts in place (or from one buffer into another)
/// without intermediate copies.
final class AEADKey {
    let suite: CipherSuite
    private let encryptContext: OpaquePointer
    private let decryptContext: OpaquePointer

    init(suite: CipherSuite, key: [UInt8]) throws(CryptoError) {
        precondition(key.count == 32)
        self.suite = suite
        guard let enc = EVP_CIPHER_CTX_new() else { throw CryptoError("EVP_CIPHER_CTX_new") }
        guard let dec = EVP_CIPHER_CTX_new() else {
            EVP_CIPHER_CTX_free(enc)
            throw CryptoError("EVP_CIPHER_CTX_new")
        }
        encryptContext = enc
        decryptContext = dec
        let ok = key.withUnsafeBufferPointer { k in
            EVP_EncryptInit_ex(enc, suite.evpCipher, nil, k.baseAddress, nil) == 1
                && EVP_DecryptInit_ex(dec, suite.evpCipher, nil, k.baseAddress, nil) == 1
        }
        guard ok else { throw CryptoError("EVP_CipherInit_ex") }
    }

    deinit {
        EVP_CIPHER_CTX_free(encryptContext)
        EVP_CIPHER_CTX_free(decryptContext)
    }

    /// The 12-byte nonce for counter `n`: 32 zero bits then the counter,
    /// big-endian for AES-GCM, little-endian for ChaCha20-Poly1305.
    private func withNonce<R>(_ n: UInt64, _ body: (UnsafePointer<UInt8>) -> R) -> R {
        withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 12) { iv in
            let counter = suite == .aesGCM ? n.bigEndian : n.littleEndian
            for i in 0..<4 { iv[i] = 0 }
            withUnsafeBytes(of: counter) { for i in 0..<8 { iv[4 + i] = $0[i] } }
            return body(UnsafePointer(iv.baseAddress!))
        }
    }

    /// Encrypts `count` bytes from `source` to `destination` (which may be
    /// the same memory) under nonce `n` and additional data `ad`, then
    /// writes the 16-byte tag to `tag`.
    func seal(nonce n: UInt64, ad: UnsafeRawBufferPointer, source: UnsafeRawPointer,
              destination: UnsafeMutableRawPointer, count: Int, tag: UnsafeMutableRawPointer) throws(CryptoError) {
        try beginSeal(nonce: n, ad: ad)
        try sealUpdate(source, destination, count)
        try finishSeal(tag: tag)
    }

    /// Decrypts like ``seal(nonce:ad:source:destination:count:tag:)`` in
    /// reverse; returns false when the tag does not verify (the output then
    /// holds unauthenticated bytes and must not be used).
    func open(nonce n: UInt64, ad: UnsafeRawBufferPointer, source: UnsafeRawPointer,
              destination: UnsafeMutableRawPointer, count: Int, tag: UnsafeRawPointer) -> Bool {
        do { try beginOpen(nonce: n, ad: ad) } catch { return false }
        return openUpdate(source, destination, count) && finishOpen(tag: tag)
    }

    // Streaming: begin, any number of updates (any sizes, in place or
    // not), finish. Lets a record's parts be encrypted without gathering
    // them first, and a large record be encrypted while it is sent and
    // decrypted while it arrives; nothing is released before the tag checks.
    // The context is set up once per key; each message only sets its nonce.

    func beginSeal(nonce n: UInt64, ad: UnsafeRawBufferPointer) throws(CryptoError) {
        try begin(encryptContext, encrypt: true, nonce: n, ad: ad)
    }

    func beginOpen(nonce n: UInt64, ad: UnsafeRawBufferPointer) throws(CryptoError) {
        try begin(decryptContext, encrypt: false, nonce: n, ad: ad)
    }

    private func begin(_ ctx: OpaquePointer, encrypt: Bool, nonce n: UInt64, ad: UnsafeRawBufferPointer) throws(CryptoError) {
        let ok = withNonce(n) { iv -> Bool in
            var outLength: Int32 = 0
            if encrypt {
                guard EVP_EncryptInit_ex(ctx, nil, nil, nil, iv) == 1 else { return false }
                if ad.count > 0 {
                    return EVP_EncryptUpdate(ctx, nil, &outLength, ad.baseAddress!.assumingMemoryBound(to: UInt8.self), Int32(ad.count)) == 1
                }
            } else {
                guard EVP_DecryptInit_ex(ctx, nil, nil, nil, iv) == 1 else { return false }
                if ad.count > 0 {
                    return EVP_DecryptUpdate(ctx, nil, &outLength, ad.baseAddress!.assumingMemoryBound(to: UInt8.self), Int32(ad.count)) == 1
                }
            }
            return true
        }
        guard ok else { throw CryptoError("AEAD init") }
    }

    func sealUpdate(_ source: UnsafeRawPointer, _ destination: UnsafeMutableRawPointer, _ count: Int) throws(CryptoError) {
        guard update(encryptContext, encrypt: true, source, destination, count) else { throw CryptoError("AEAD encrypt") }
    }

    func openUpdate(_ source: UnsafeRawPointer, _ destination: UnsafeMutableRawPointer, _ count: Int) -> Bool {
        update(decryptContext, encrypt: false, source, destination, count)
    }

    private func update(_ ctx: OpaquePointer, encrypt: Bool, _ source: UnsafeRawPointer, _ destination: UnsafeMutableRawPointer, _ count: Int) -> Bool {
        var offset = 0
        while offset < count {
            let chunk = min(count - offset, 1 << 30)
            var outLength: Int32 = 0
            let src = (source + offset).assumingMemoryBound(to: UInt8.self)
            let dst = (destination + offset).assumingMemoryBound(to: UInt8.self)
            let ok = encrypt
                ? EVP_EncryptUpdate(ctx, dst, &outLength, src, Int32(chunk)) == 1
                : EVP_DecryptUpdate(ctx, dst, &outLength, src, Int32(chunk)) == 1
            guard ok, Int(outLength) == chunk else { return false }
            offset += chunk
        }
        return true
    }

    func finishSeal(tag: UnsafeMutableRawPointer) throws(CryptoError) {
        var finalLength: Int32 = 0
        var scratch: UInt8 = 0
        guard EVP_EncryptFinal_ex(encryptContext, &scratch, &finalLength) == 1, finalLength == 0,
              EVP_CIPHER_CTX_ctrl(encryptContext, EVP_CTRL_AEAD_GET_TAG, 16, tag) == 1
        else { throw CryptoError("AEAD final") }
    }

    /// False when the tag does not verify.
    func finishOpen(tag: UnsafeRawPointer) -> Bool {
        guard EVP_CIPHER_CTX_ctrl(decryptContext, EVP_CTRL_AEAD_SET_TAG, 16, UnsafeMutableRawPointer(mutating: tag)) == 1 else {
            return false
        }
        var finalLength: Int32 = 0
        var scratch: UInt8 = 0
        return EVP_DecryptFinal_ex(decryptContext, &scratch, &finalLength) == 1
    }

    /// Convenience for small messages: ENCRYPT(k, n, ad, plaintext) =
    /// ciphertext ‖ tag.
    func seal(nonce n: UInt64, ad: [UInt8], plaintext: [UInt8]) throws(CryptoError) -> [UInt8] {
        var out = plaintext + [UInt8](repeating: 0, count: 16)
        let count = plaintext.count
        var failure: CryptoError?
        ad.withUnsafeBytes { adBytes in
            out.withUnsafeMutableBytes { buf in
                do throws(CryptoError) {
                    try seal(nonce: n, ad: adBytes, source: buf.baseAddress!, destination: buf.baseAddress!,
                             count: count, tag: buf.baseAddress! + count)
                } catch { failure = error }
            }
        }
        if let failure { throw failure }
        return out
    }

    /// DECRYPT(k, n, ad, ciphertext ‖ tag), or nil when it does not verify.
    func open(nonce n: UInt64, ad: [UInt8], ciphertext: [UInt8]) -> [UInt8]? {
        guard ciphertext.count >= 16 else { return nil }
        let count = ciphertext.count - 16
        var out = [UInt8](repeating: 0, count: max(count, 1))
        let ok = ad.withUnsafeBytes { adBytes in
            ciphertext.withUnsafeBytes { src in
                out.withUnsafeMutableBytes { dst in
                    open(nonce: n, ad: adBytes, source: src.baseAddress!, destination: dst.baseAddress!,
                         count: count, tag: src.baseAddress! + count)
                }
            }
        }
        guard ok else { return nil }
        return Array(out.prefix(count))
    }
}
