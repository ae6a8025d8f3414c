// The worker's side of the bootstrap, for workers written in Swift: read
// STOCKADE_CHANNEL, check and read the sealed params memfd, close it, answer
// the handshake, serve requests.
public import Logging
public import SystemPackage
import StockadeSystem
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

public enum WorkerChannel {
    /// The descriptors named by a `STOCKADE_CHANNEL` value such as
    /// `sock=3,params=4`.
    public static func parseEnvironmentValue(_ value: String) throws(ChannelError) -> (socket: CInt, params: CInt) {
        var socket: CInt?
        var params: CInt?
        for field in value.split(separator: ",", omittingEmptySubsequences: false) {
            let parts = field.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            guard parts.count == 2, let fd = CInt(parts[1]), fd >= 0 else {
                throw .bootstrap("malformed \(ChannelBootstrap.environmentVariable) field '\(field)'")
            }
            switch parts[0] {
            case "sock" where socket == nil: socket = fd
            case "params" where params == nil: params = fd
            default: throw .bootstrap("unknown or repeated \(ChannelBootstrap.environmentVariable) field '\(parts[0])'")
            }
        }
        guard let socket, let params, socket != params else {
            throw .bootstrap("\(ChannelBootstrap.environmentVariable) must name two different fds: sock=N,params=M")
        }
        return (socket, params)
    }

    /// Checks that `fd` is a memfd sealed against every change, reads it
    /// from offset 0, and closes it (whatever happens): the PSK must not
    /// stay reachable in the worker after the handshake.
    public static func readParameters(from fd: FileDescriptor) throws(ChannelError) -> ChannelParameters {
        defer { try? fd.close() }
        let seals: FileSeals
        do { seals = try fd.seals() } catch {
            throw .violation(ChannelViolation(.unsealedMemfd, "params fd \(fd.rawValue) is not a memfd (\(error))"))
        }
        guard seals.isSuperset(of: .immutable) else {
            throw .violation(ChannelViolation(.unsealedMemfd, "params memfd seals are \(seals); need seal,shrink,grow,write"))
        }
        let size: Int
        do { size = try fd.fileSize() } catch { throw .system("fstat params memfd", error) }
        guard size <= ChannelParameters.maxEncodedLength else {
            throw .violation(ChannelViolation(.badParameters, "params memfd holds \(size) bytes; the limit is \(ChannelParameters.maxEncodedLength)"))
        }
        var bytes = [UInt8](repeating: 0, count: size)
        defer { bytes.wipe() }
        var done = 0
        while done < size {
            let n: Int
            do {
                n = try bytes.withUnsafeMutableBytes {
                    try fd.read(fromAbsoluteOffset: Int64(done), into: UnsafeMutableRawBufferPointer(rebasing: $0[done...]))
                }
            } catch { throw .system("read params memfd", (error as? Errno) ?? .ioError) }
            guard n > 0 else { break }
            done += n
        }
        guard done == size else { throw .violation(ChannelViolation(.badParameters, "params memfd shrank while read")) }
        do { return try ChannelParameters(decoding: bytes) } catch { throw .violation(error) }
    }

    /// Sets up the worker's channel from `STOCKADE_CHANNEL`: reads and
    /// closes the params memfd, then answers the handshake.
    public static func accept(environment: [String: String]? = nil,
                              supportedSuites: [CipherSuite] = CipherSuite.allCases,
                              logger: Logger? = nil) throws(ChannelError) -> SecureChannel {
        guard let value = (environment ?? ProcessInfo.processInfo.environment)[ChannelBootstrap.environmentVariable] else {
            throw .bootstrap("\(ChannelBootstrap.environmentVariable) is not set; this program must be started by stockade")
        }
        let (socketFD, paramsFD) = try parseEnvironmentValue(value)
        var parameters = try readParameters(from: FileDescriptor(rawValue: paramsFD))
        defer { parameters.psk.wipe() }
        let socket = FileDescriptor(rawValue: socketFD)
        // Nothing this worker executes inherits the channel: a child holding
        // it could keep the launcher waiting for an end of stream.
        do { try socket.setCloseOnExec(true) } catch { throw .system("close-on-exec on the channel socket", error) }
        return try SecureChannel.respond(socket: socket, parameters: parameters,
                                         supportedSuites: supportedSuites, logger: logger)
    }

    /// Serves requests on `channel` until the launcher shuts it down. The
    /// handler's result is the response; a thrown error becomes an `error`
    /// message with its description. Pings are answered by the channel.
    public static func serve(_ channel: SecureChannel, handler: ([UInt8]) throws -> [UInt8]) throws(ChannelError) {
        while let message = try channel.receive() {
            switch message.type {
            case .request:
                let result: Result<[UInt8], any Error> = Result { try handler(message.payload) }
                switch result {
                case .success(let bytes):
                    if bytes.count > max(channel.parameters.limits.maxRecordPayload, channel.parameters.limits.maxBulkLength) {
                        try channel.send(type: .error, requestID: message.requestID,
                                         payload: Array("response of \(bytes.count) bytes exceeds the channel's limits".utf8.prefix(64)))
                    } else {
                        try channel.send(type: .response, requestID: message.requestID, payload: bytes)
                    }
                case .failure(let error):
                    try channel.send(type: .error, requestID: message.requestID, payload: Array(String(describing: error).utf8.prefix(min(4096, channel.parameters.limits.maxRecordPayload))))
                }
            case .shutdown where !message.flags.contains(.reply):
                try channel.acknowledgeShutdown()
                return
            default:
                // cancel: requests are served one at a time, so by the time
                // a cancel is read its request has been answered.
                continue
            }
        }
    }
}
