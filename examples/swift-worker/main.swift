// stockade-swift-worker: a tiny service behind the Stockade channel.
//
// Started by the launcher with STOCKADE_CHANNEL=sock=3,params=4 (see
// docs/PROTOCOL.md). Each request is `verb:data`:
//
//     echo:<bytes>     -> the bytes
//     reverse:<bytes>  -> the bytes reversed
//     sha256:<bytes>   -> the 32-byte SHA-256 digest
//
// Anything else is answered with an error message.
import StockadeChannel
import Foundation

enum WorkerFailure: Error, CustomStringConvertible {
    case unknownVerb(String)
    var description: String {
        switch self {
        case .unknownVerb(let verb): "unknown verb '\(verb)'; use echo:, reverse: or sha256:"
        }
    }
}

func handle(_ request: [UInt8]) throws -> [UInt8] {
    guard let colon = request.firstIndex(of: UInt8(ascii: ":")) else {
        throw WorkerFailure.unknownVerb(String(decoding: request.prefix(32), as: UTF8.self))
    }
    let verb = String(decoding: request[..<colon], as: UTF8.self)
    let data = Array(request[(colon + 1)...])
    switch verb {
    case "echo": return data
    case "reverse": return data.reversed()
    case "sha256": return SHA256.hash(data)
    default: throw WorkerFailure.unknownVerb(verb)
    }
}

do {
    let channel = try WorkerChannel.accept()
    try WorkerChannel.serve(channel, handler: handle)
} catch {
    FileHandle.standardError.write(Data("stockade-swift-worker: \(error)\n".utf8))
    exit(1)
}
