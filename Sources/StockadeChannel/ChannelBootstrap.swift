// How a channel starts: the launcher makes a socket pair and a sealed
// memfd holding the PSK and the parameters, passes the worker's socket end
// and the memfd into the jail at fixed descriptor numbers, and names those
// numbers in one environment variable. No secret is ever in argv or the
// environment.
public import SystemPackage
public import Logging
import StockadeSystem

/// The launcher's half of setting up one worker's channel.
///
///     let bootstrap = try ChannelBootstrap(tenant: "acme", worker: "w-17")
///     // map bootstrap.workerSocket -> 3 and bootstrap.paramsMemfd -> 4 in the jail,
///     // add bootstrap.environmentEntry() to its environment, spawn, then:
///     bootstrap.closeWorkerEnds()
///     let channel = try bootstrap.connect()
public final class ChannelBootstrap {
    /// The environment variable a worker reads: `sock=<fd>,params=<fd>`.
    public static let environmentVariable = "STOCKADE_CHANNEL"
    /// The descriptor numbers the launcher uses inside the jail.
    public static let workerSocketFD: CInt = 3
    public static let workerParamsFD: CInt = 4

    /// The channel's parameters; the PSK in them is wiped once
    /// ``connect(logger:handshakeTimeoutMilliseconds:)`` has run.
    public private(set) var parameters: ChannelParameters
    /// The launcher's end of the socket pair (close-on-exec).
    public let launcherSocket: FileDescriptor
    /// The worker's end: map it into the jail, then ``closeWorkerEnds()``.
    public let workerSocket: FileDescriptor
    /// The sealed, read-only params memfd: map it into the jail too.
    public let paramsMemfd: FileDescriptor
    private var workerEndsClosed = false
    private var connected = false
    /// The handshake whose first message ``sendFirstMessage()`` wrote.
    private var started: NoiseHandshake?

    /// The suites offered by default: AES-GCM first where the CPU has
    /// AES instructions, else ChaCha20-Poly1305 first.
    public static var defaultSuites: [CipherSuite] {
        CipherSuite.hardwareHasAES ? [.aesGCM, .chaChaPoly] : [.chaChaPoly, .aesGCM]
    }

    /// Creates the socket pair and the sealed params memfd with a fresh
    /// PSK and spawn nonce.
    public init(tenant: String, worker: String, suites: [CipherSuite] = ChannelBootstrap.defaultSuites,
                limits: ChannelLimits = ChannelLimits()) throws(ChannelError) {
        for (what, name) in [("tenant", tenant), ("worker", worker)] where name.utf8.count > ChannelParameters.maxNameLength {
            throw .bootstrap("\(what) name is \(name.utf8.count) bytes; the limit is \(ChannelParameters.maxNameLength)")
        }
        if let problem = limits.problem { throw .bootstrap(problem) }
        guard !suites.isEmpty, Set(suites).count == suites.count else { throw .bootstrap("offer each cipher suite at most once") }
        do {
            parameters = ChannelParameters(psk: try Crypto.randomBytes(32), tenant: tenant, worker: worker,
                                           spawnNonce: try Crypto.randomBytes(16), suites: suites, limits: limits)
        } catch { throw .crypto(error) }
        let pair: (FileDescriptor, FileDescriptor)
        do { pair = try UnixSocketPair.make() } catch { throw .system("socketpair", error) }
        launcherSocket = pair.0
        workerSocket = pair.1
        do {
            paramsMemfd = try Self.sealedMemfd(parameters.encoded())
        } catch {
            try? pair.0.close()
            try? pair.1.close()
            throw .system("params memfd", error)
        }
    }

    private static func sealedMemfd(_ bytes: [UInt8]) throws(Errno) -> FileDescriptor {
        let fd = try FileDescriptor.memfd(name: "stockade-channel")
        do {
            var written = 0
            while written < bytes.count {
                written += try bytes.withUnsafeBytes { try fd.write(toAbsoluteOffset: Int64(written), UnsafeRawBufferPointer(rebasing: $0[written...])) }
            }
            try fd.addSeals(.immutable)
        } catch {
            try? fd.close()
            throw error as! Errno
        }
        return fd
    }

    /// The value of `STOCKADE_CHANNEL` for a worker that sees the socket at
    /// `socketFD` and the params memfd at `paramsFD`.
    public static func environmentValue(socketFD: CInt = workerSocketFD, paramsFD: CInt = workerParamsFD) -> String {
        "sock=\(socketFD),params=\(paramsFD)"
    }

    /// `STOCKADE_CHANNEL=sock=3,params=4` (or the given numbers), for envp.
    public static func environmentEntry(socketFD: CInt = workerSocketFD, paramsFD: CInt = workerParamsFD) -> String {
        "\(environmentVariable)=\(environmentValue(socketFD: socketFD, paramsFD: paramsFD))"
    }

    /// The descriptor mapping for `LaunchRequest.passedFDs`: the worker's
    /// socket end at 3 and the params memfd at 4.
    public var passedFDs: [(from: Int32, to: Int32)] {
        [(workerSocket.rawValue, Self.workerSocketFD), (paramsMemfd.rawValue, Self.workerParamsFD)]
    }

    /// The variable for `LaunchRequest.extraEnvironment`.
    public var environment: (String, String) { (Self.environmentVariable, Self.environmentValue()) }

    /// Closes the launcher's copies of the worker's socket end and the
    /// params memfd. Call it once the worker has been spawned (or failed to):
    /// until then a dead worker does not show as end of stream.
    public func closeWorkerEnds() {
        guard !workerEndsClosed else { return }
        workerEndsClosed = true
        try? workerSocket.close()
        try? paramsMemfd.close()
    }

    /// Writes the first handshake message now, before the worker runs,
    /// where exactly one suite is offered (elsewhere it does nothing): the
    /// worker finds it waiting and answers at once. A forked worker, whose
    /// template's SDK takes either suite, is started this way. Call it at
    /// most once, before ``connect(logger:handshakeTimeoutMilliseconds:)``.
    public func sendFirstMessage() throws(ChannelError) {
        precondition(!connected && started == nil, "sendFirstMessage() once, before connect()")
        guard parameters.suites.count == 1 else { return }
        started = try SecureChannel.startInitiation(socket: launcherSocket, parameters: parameters)
    }

    /// Runs the initiator handshake on the launcher's socket. The returned
    /// channel owns that socket.
    public func connect(logger: Logger? = nil, handshakeTimeoutMilliseconds: Int? = 30_000) throws(ChannelError) -> SecureChannel {
        precondition(!connected, "connect() once per bootstrap")
        connected = true
        // Not needed again, whatever the handshake's outcome (the channel
        // keeps no copy, and this buffer is the only one left by then).
        defer { parameters.psk.wipe() }
        defer { started = nil }
        return try SecureChannel.initiate(socket: launcherSocket, parameters: parameters, logger: logger,
                                          handshakeTimeoutMilliseconds: handshakeTimeoutMilliseconds, fixedEphemeralKey: nil,
                                          started: started)
    }

    deinit {
        started?.wipe()
        closeWorkerEnds()
        if !connected { try? launcherSocket.close() }
    }
}
