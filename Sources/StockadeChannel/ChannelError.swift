// What can go wrong on a channel. A violation is the peer's fault (or an
// attacker's): the channel is closed at once and the launcher kills the
// worker. The other errors are the local caller's or the system's.
public import SystemPackage

/// The peer broke the protocol. The channel that throws this is closed; the
/// launcher must kill the worker on the other end.
public struct ChannelViolation: Error, CustomStringConvertible, Sendable, Equatable {
    public enum Kind: String, Sendable {
        /// A record or handshake message failed authentication: tampering,
        /// replay, reordering or a wrong key.
        case badTag = "bad-tag"
        /// A length field over the negotiated limit.
        case oversized
        /// A field that cannot be parsed (bad type, nonzero reserved bits, short body).
        case malformed
        /// The stream ended in the middle of a record or the handshake.
        case truncated
        /// The peer closed the channel without a shutdown.
        case closed
        /// A message that is not allowed in this state (a response nobody asked for, a second hello).
        case unexpectedMessage = "unexpected-message"
        /// File descriptors arrived where none were announced.
        case unexpectedFileDescriptors = "unexpected-fds"
        /// A bulk memfd that is not sealed, or has the wrong size.
        case unsealedMemfd = "unsealed-memfd"
        /// The peer used more requests or bytes in flight than it was granted.
        case creditExceeded = "credit-exceeded"
        /// The 64-bit nonce counter ran out.
        case nonceExhausted = "nonce-exhausted"
        /// The bootstrap parameters are missing or malformed.
        case badParameters = "bad-parameters"
        /// The peer asked for a cipher suite that was not offered.
        case badSuite = "bad-suite"
        /// The peer did not answer within the deadline (the handshake and
        /// hellos, a ping, a shutdown) or stopped reading while one ran.
        case timedOut = "timed-out"
    }

    public let kind: Kind
    public let reason: String

    public init(_ kind: Kind, _ reason: String) {
        self.kind = kind
        self.reason = reason
    }

    public var description: String { "channel violation (\(kind.rawValue)): \(reason)" }
}

/// Errors a channel user gets that are not the peer's fault.
public enum ChannelError: Error, CustomStringConvertible, Sendable {
    /// The peer broke the protocol; see ``ChannelViolation``. The channel is closed.
    case violation(ChannelViolation)
    /// A system call on the channel's socket or a memfd failed.
    case system(String, Errno)
    /// OpenSSL failed.
    case crypto(CryptoError)
    /// The channel was already closed (by a violation, a shutdown or ``SecureChannel/close()``).
    case closed
    /// The caller tried to send more than the peer granted (requests or bytes in flight).
    case noCredit(String)
    /// The payload is larger than any message may be.
    case tooLarge(Int, limit: Int)
    /// The worker answered a request with an error message.
    case remote(String)
    /// The environment does not describe a channel (worker side).
    case bootstrap(String)

    public var description: String {
        switch self {
        case .violation(let v): v.description
        case .system(let call, let errno): "\(call): \(errno)"
        case .crypto(let e): e.description
        case .closed: "the channel is closed"
        case .noCredit(let what): "no credit to send: \(what)"
        case .tooLarge(let n, let limit): "payload of \(n) bytes exceeds the limit of \(limit)"
        case .remote(let message): "the worker reported an error: \(message)"
        case .bootstrap(let message): "channel bootstrap: \(message)"
        }
    }

    /// The violation, when this error is one (the launcher kills the worker).
    public var violation: ChannelViolation? {
        if case .violation(let v) = self { return v }
        return nil
    }
}
