// libFuzzer entry points for the parsers that read untrusted input.
//
// `make fuzz` builds this with `-sanitize=fuzzer -DFUZZING`: libFuzzer then
// provides main() and calls LLVMFuzzerTestOneInput with the target chosen
// by STOCKADE_FUZZ_TARGET. Built normally it replays files given on the
// command line through a target, so a crash found by the fuzzer can be
// re-run under a debugger: `stockade-fuzz profile crash-1234`.
#if canImport(Glibc)
import Glibc
#endif

/// Every fuzz target, by name. Each must accept any bytes without crashing.
let fuzzTargets: [String: @Sendable ([UInt8]) -> Void] = [
    "profile": fuzzProfile,
    "docker-seccomp": fuzzDockerSeccomp,
    "channel-record": fuzzChannelRecord,
    "channel-handshake": fuzzChannelHandshake,
    "tenants": fuzzTenants,
]

#if FUZZING
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzTestOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let name = getenv("STOCKADE_FUZZ_TARGET").map { String(cString: $0) } ?? "profile"
    guard let target = fuzzTargets[name] else {
        print("stockade-fuzz: unknown target \(name); targets: \(fuzzTargets.keys.sorted())")
        exit(2)
    }
    target(data.map { Array(UnsafeBufferPointer(start: $0, count: size)) } ?? [])
    return 0
}
#else
@main
struct StockadeFuzzReplay {
    static func main() {
        let arguments = Array(CommandLine.arguments.dropFirst())
        guard let name = arguments.first, let target = fuzzTargets[name] else {
            print("usage: stockade-fuzz TARGET FILE...   targets: \(fuzzTargets.keys.sorted().joined(separator: ", "))")
            exit(2)
        }
        for path in arguments.dropFirst() {
            guard let file = fopen(path, "rb") else { print("cannot open \(path)"); exit(1) }
            var bytes: [UInt8] = []
            var buffer = [UInt8](repeating: 0, count: 65536)
            while true {
                let n = fread(&buffer, 1, buffer.count, file)
                if n <= 0 { break }
                bytes += buffer[0..<n]
            }
            fclose(file)
            target(bytes)
            print("\(path): ok")
        }
    }
}
#endif
