import Foundation
import StockadeJail
import StockadeSystem
import SystemPackage

/// The package root, found from this file's path.
let packageRoot: String = {
    var url = URL(fileURLWithPath: #filePath)
    for _ in 0..<3 { url.deleteLastPathComponent() }
    return url.path
}()

/// The shipped minimal profile, with `edit` applied to its text first.
func minimalProfile(_ edit: (String) -> String = { $0 }) throws -> Profile {
    let text = try String(contentsOfFile: packageRoot + "/profiles/minimal.toml", encoding: .utf8)
    return try Profile.parse(text: edit(text), file: "minimal.toml")
}

/// What a jailed command printed and how it ended.
struct JailRun {
    var exit: JailExit
    /// The jail's PID 1 as the launcher saw it (gone once `exit` is known).
    var pid: Int32
    var stdout: String
    var stderr: String
    var lines: [String] { stdout.split(separator: "\n").map(String.init) }
}

/// Runs `command` in a jail from `profile`, capturing stdout and stderr
/// through pipes passed in as fds 1 and 2.
func runJailed(_ profile: Profile, _ command: [String], timeLimit: Duration? = .seconds(60),
               configure: (inout LaunchRequest) throws -> Void = { _ in }) throws -> JailRun {
    let out = try PipeEnds.make()
    let err = try PipeEnds.make()
    var request = LaunchRequest(profile: profile, command: command)
    request.passedFDs = [(out.write.rawValue, 1), (err.write.rawValue, 2)]
    try configure(&request)
    try JailSecurity.prepare(&request)
    let jail: Jail
    do {
        jail = try Launcher.launch(request)
    } catch {
        for fd in [out.read, out.write, err.read, err.write] { try? fd.close() }
        throw error
    }
    try out.write.close()
    try err.write.close()
    // Drain both pipes while the jail runs (a full pipe would stall it).
    let stdoutBox = Box(), stderrBox = Box()
    let group = DispatchGroup()
    for (fd, box) in [(out.read, stdoutBox), (err.read, stderrBox)] {
        DispatchQueue.global().async(group: group) {
            box.bytes = (try? fd.readToEnd()) ?? []
            try? fd.close()
        }
    }
    let exit = try jail.wait(timeLimit: timeLimit)
    group.wait()
    return JailRun(exit: exit, pid: jail.pid, stdout: String(decoding: stdoutBox.bytes, as: UTF8.self),
                   stderr: String(decoding: stderrBox.bytes, as: UTF8.self))
}

final class Box: @unchecked Sendable {
    var bytes: [UInt8] = []
}

/// Runs a host program and returns its stdout and status.
@discardableResult
func host(_ argv: [String], environment: [String: String]? = nil) throws -> (output: String, status: Int32) {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: argv[0])
    process.arguments = Array(argv.dropFirst())
    if let environment { process.environment = environment }
    let pipe = Pipe()
    process.standardOutput = pipe
    process.standardError = pipe
    try process.run()
    let data = pipe.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return (String(decoding: data, as: UTF8.self), process.terminationStatus)
}

/// Pids whose parent is this test process.
func childPids() -> [Int32] {
    let me = getpid()
    let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
    return entries.compactMap { Int32($0) }.filter { pid in
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = stat.lastIndex(of: ")") else { return false }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        return fields.count > 2 && Int32(fields[1]) == me
    }
}
