// stockade-fuzz: the fuzz targets, selected by name.
//
// Built normally it replays inputs:   stockade-fuzz <target> [file|dir ...]
// (no paths: Fuzz/corpus/<target>/ when run from the package root).
// Built for libFuzzer (make fuzz):
//   swift build --product stockade-fuzz -Xswiftc -sanitize=fuzzer -Xswiftc -DFUZZING \
//       -Xswiftc -parse-as-library --scratch-path .build-fuzz
//   STOCKADE_FUZZ_TARGET=<target> .build-fuzz/debug/stockade-fuzz [libFuzzer flags] [corpus dir]
import StockadeCore
import Foundation

/// Every target, by name. Add one line per target.
let fuzzTargets: [String: @Sendable ([UInt8]) -> Void] = [
    "channel-record": fuzzChannelRecord,
    "channel-handshake": fuzzChannelHandshake,
]

#if FUZZING
/// The target libFuzzer drives, from STOCKADE_FUZZ_TARGET.
let selectedFuzzTarget: @Sendable ([UInt8]) -> Void = {
    let name = ProcessInfo.processInfo.environment["STOCKADE_FUZZ_TARGET"] ?? ""
    guard let target = fuzzTargets[name] else {
        FileHandle.standardError.write(Data("stockade-fuzz: set STOCKADE_FUZZ_TARGET to one of: \(fuzzTargets.keys.sorted().joined(separator: ", "))\n".utf8))
        exit(2)
    }
    return target
}()

@_cdecl("LLVMFuzzerTestOneInput")
public func stockadeFuzzOne(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    selectedFuzzTarget(data.map { Array(UnsafeBufferPointer(start: $0, count: size)) } ?? [])
    return 0
}

@_silgen_name("LLVMFuzzerRunDriver")
func LLVMFuzzerRunDriver(
    _ argc: UnsafeMutablePointer<CInt>,
    _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
    _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> CInt
) -> CInt

/// SwiftPM links an executable's entry point as `<module>_main`; in library
/// mode there is none, so hand control to libFuzzer's driver here.
@_cdecl("stockade_fuzz_main")
public func stockadeFuzzMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    var argc = argc
    var argv = argv
    _ = selectedFuzzTarget
    return LLVMFuzzerRunDriver(&argc, &argv) { data, size in stockadeFuzzOne(data, size) }
}
#else
/// Replays inputs through one target. main.swift must parse as a library
/// for libFuzzer (no top-level statements, even in an inactive branch), so
/// the normal build runs this from a global's initializer, which script
/// mode evaluates at start-up.
func replayInputs() -> Int32 {
    let arguments = Array(CommandLine.arguments.dropFirst())
    guard let name = arguments.first, let target = fuzzTargets[name] else {
        print("usage: stockade-fuzz <target> [file|dir ...]; targets: \(fuzzTargets.keys.sorted().joined(separator: ", "))")
        return 2
    }
    var paths = Array(arguments.dropFirst())
    if paths.isEmpty { paths = ["Fuzz/corpus/\(name)"] }
    var count = 0
    for path in paths {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
            print("stockade-fuzz: \(path) does not exist")
            return 2
        }
        let files = isDirectory.boolValue
            ? ((try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []).sorted().map { path + "/" + $0 }
            : [path]
        for file in files {
            guard let data = FileManager.default.contents(atPath: file) else { continue }
            target(Array(data))
            count += 1
        }
    }
    print("stockade-fuzz: \(name): replayed \(count) inputs")
    return 0
}

let replayStatus: Int32 = { exit(replayInputs()) }()
#endif
