// stockade-runtime: Stockade behind containerd's runc shim. It speaks
// runc's command line (global flags before the command, then create,
// start, state, kill, delete, ps, exec, pause, resume, update, features,
// list) and builds every container with Stockade's launcher.
import ArgumentParser
import Foundation
import StockadeConfig
import StockadeOCI
#if canImport(Glibc)
import Glibc
#endif

/// The global flags, read before the command as runc (urfave/cli) reads
/// them: `--root DIR`, `--root=DIR`, one dash or two.
struct Globals {
    var root = "/run/stockade-runtime"
    var log: String?
    var logFormat = "text"
    var systemdCgroup = false
    var debug = false

    /// Consumes the global flags; returns the rest (the command and its arguments).
    static func parse(_ args: [String]) throws -> (Globals, [String]) {
        var g = Globals()
        var i = 0
        func value(_ name: String, _ inline: String?) throws -> String {
            if let inline { return inline }
            i += 1
            guard i < args.count else { throw RuntimeError("flag needs an argument: --\(name)") }
            return args[i]
        }
        while i < args.count, args[i].hasPrefix("-"), args[i] != "-" {
            var flag = args[i].drop(while: { $0 == "-" })
            var inline: String?
            if let eq = flag.firstIndex(of: "=") {
                inline = String(flag[flag.index(after: eq)...])
                flag = flag[..<eq]
            }
            switch flag {
            case "root": g.root = try value("root", inline)
            case "log": g.log = try value("log", inline)
            case "log-format":
                g.logFormat = try value("log-format", inline)
                guard ["json", "text"].contains(g.logFormat) else {
                    throw RuntimeError("invalid log-format: \(g.logFormat)")
                }
            case "systemd-cgroup": g.systemdCgroup = inline.map { $0 != "false" } ?? true
            case "debug": g.debug = inline.map { $0 != "false" } ?? true
            // Accepted for runc compatibility; Stockade decides these itself.
            case "rootless", "criu": _ = try value(String(flag), inline)
            case "version", "v": return (g, ["--version"])
            case "help", "h": return (g, ["--help"])
            default: throw RuntimeError("flag provided but not defined: -\(flag)")
            }
            i += 1
        }
        return (g, Array(args[i...]))
    }
}

/// Errors go to stderr and, with `--log`, to the log as runc writes them
/// (`{"level":"error","msg":...,"time":...}` for json): the shim reads the
/// last error line from there.
enum Log {
    nonisolated(unsafe) static var globals = Globals()

    static func write(level: String, _ message: String) {
        guard let path = globals.log else { return }
        let fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0o600)
        guard fd >= 0 else { return }
        defer { close(fd) }
        let time = ISO8601DateFormatter().string(from: Date())
        var line: String
        if globals.logFormat == "json" {
            let object = ["level": level, "msg": message, "time": time]
            let data = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])) ?? Data()
            line = String(decoding: data, as: UTF8.self)
        } else {
            line = "time=\"\(time)\" level=\(level) msg=\"\(message.replacingOccurrences(of: "\"", with: "\\\""))\""
        }
        line += "\n"
        _ = line.withCString { Glibc.write(fd, $0, strlen($0)) }
    }

    static func fail(_ error: any Error) -> Never {
        let message = "\(error)"
        write(level: "error", message)
        FileHandle.standardError.write(Data((message + "\n").utf8))
        exit(1)
    }
}

func runtime() throws -> Runtime {
    try Runtime(root: Log.globals.root, systemdCgroup: Log.globals.systemdCgroup)
}

func printJSON<T: Encodable>(_ value: T, pretty: Bool = true) throws {
    let encoder = JSONEncoder()
    encoder.outputFormatting = pretty ? [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes] : [.sortedKeys, .withoutEscapingSlashes]
    FileHandle.standardOutput.write(try encoder.encode(value) + Data("\n".utf8))
}

/// A document named on the command line: a file, or `-` for stdin.
func readInput(_ path: String, flag: String) throws -> Data {
    guard let data = path == "-" ? FileHandle.standardInput.readDataToEndOfFile()
        : FileHandle(forReadingAtPath: path)?.readDataToEndOfFile() else {
        throw RuntimeError("\(flag) \(path): cannot be read")
    }
    return data
}

struct Create: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Create a container; its process waits for start.")
    @Option(name: [.customLong("bundle"), .customShort("b")]) var bundle: String = "."
    @Option(name: .customLong("pid-file")) var pidFile: String?
    @Option(name: .customLong("console-socket")) var consoleSocket: String?
    @Flag(name: .customLong("no-pivot")) var noPivot = false
    @Flag(name: .customLong("no-new-keyring")) var noNewKeyring = false
    @Option(name: .customLong("preserve-fds")) var preserveFDs: Int = 0
    @Argument var id: String
    func run() throws {
        guard preserveFDs == 0 else { throw RuntimeError("--preserve-fds is not supported: a container gets stdio only") }
        // --no-pivot and --no-new-keyring are accepted and ignored: every
        // jail pivots into its root and gets a fresh keyring.
        try runtime().create(id: id, .init(bundle: bundle, pidFile: pidFile, consoleSocket: consoleSocket))
    }
}

struct Start: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Start a created container.")
    @Argument var id: String
    func run() throws { try runtime().start(id: id) }
}

struct State: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Print a container's state (runtime-spec JSON).")
    @Argument var id: String
    func run() throws { try printJSON(try runtime().state(id: id)) }
}

struct Kill: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Send a signal to a container's init (or, with --all, to all its processes).")
    @Flag(name: [.customLong("all"), .customShort("a")]) var all = false
    @Argument var id: String
    @Argument var signal: String = "SIGTERM"
    func run() throws {
        guard let number = Signals.number(signal) else { throw RuntimeError("unknown signal \"\(signal)\"") }
        try runtime().kill(id: id, signal: number, all: all)
    }
}

struct Delete: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Delete a stopped (or, with --force, any) container.")
    @Flag(name: [.customLong("force"), .customShort("f")]) var force = false
    @Argument var id: String
    func run() throws { try runtime().delete(id: id, force: force) }
}

struct Ps: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "List a container's processes.")
    @Option(name: [.customLong("format"), .customShort("f")]) var format = "table"
    @Argument var id: String
    func run() throws {
        let pids = try runtime().processes(id: id)
        if format == "json" {
            try printJSON(pids, pretty: false)
        } else {
            print("PID")
            for p in pids { print(p) }
        }
    }
}

struct Exec: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Run a process in a running container.")
    @Option(name: [.customLong("process"), .customShort("p")]) var process: String?
    @Flag(name: [.customLong("detach"), .customShort("d")]) var detach = false
    @Option(name: .customLong("pid-file")) var pidFile: String?
    @Option(name: .customLong("console-socket")) var consoleSocket: String?
    @Flag(name: [.customLong("tty"), .customShort("t")]) var tty = false
    @Option(name: .customLong("cwd")) var cwd: String?
    @Option(name: [.customLong("env"), .customShort("e")]) var env: [String] = []
    @Option(name: .customLong("preserve-fds")) var preserveFDs: Int = 0
    @Argument var id: String
    @Argument(parsing: .captureForPassthrough) var command: [String] = []
    func run() throws {
        guard preserveFDs == 0 else { throw RuntimeError("--preserve-fds is not supported: a process gets stdio only") }
        let data: Data
        let file: String
        if let process {
            data = try readInput(process, flag: "--process")
            file = process
        } else {
            // runc's form with the command on the line: the container's own
            // process, with these arguments.
            guard !command.isEmpty else { throw RuntimeError("exec: give --process FILE or a command") }
            let rt = try runtime()
            let record = try rt.state(id: id)
            var p = try SpecFiles.readConfig(bundle: record.bundle).process
            p?.args = command
            p?.terminal = tty
            if let cwd { p?.cwd = cwd }
            let baseEnv = p?.env ?? []
            p?.env = baseEnv + env
            data = try JSONEncoder().encode(p)
            file = "exec arguments"
        }
        let status = try runtime().exec(id: id, .init(process: data, processFile: file, detach: detach, pidFile: pidFile,
                                                      consoleSocket: consoleSocket))
        if let status { throw ExitCode(status) }
    }
}

struct Pause: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Freeze every process of a container.")
    @Argument var id: String
    func run() throws { try runtime().pause(id: id) }
}

struct Resume: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Thaw a paused container.")
    @Argument var id: String
    func run() throws { try runtime().resume(id: id) }
}

struct Update: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Change a container's resources (runtime-spec linux.resources JSON).")
    @Option(name: [.customLong("resources"), .customShort("r")]) var resources: String?
    @Option(name: .customLong("memory")) var memory: Int64?
    @Option(name: .customLong("pids-limit")) var pidsLimit: Int64?
    @Argument var id: String
    func run() throws {
        var data: Data
        var source = "--resources"
        if let resources {
            data = try readInput(resources, flag: "--resources")
            source = resources == "-" ? "resources (stdin)" : resources
        } else {
            var r: [String: Any] = [:]
            if let memory { r["memory"] = ["limit": memory] }
            if let pidsLimit { r["pids"] = ["limit": pidsLimit] }
            data = try JSONSerialization.data(withJSONObject: r)
        }
        try runtime().update(id: id, resources: data, source: source)
    }
}

struct Features: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Print what this runtime supports (runtime-spec features JSON).")
    func run() throws { try printJSON(RuntimeFeatures.document()) }
}

struct List: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "List containers.")
    @Option(name: [.customLong("format"), .customShort("f")]) var format = "table"
    @Flag(name: [.customLong("quiet"), .customShort("q")]) var quiet = false
    func run() throws {
        let all = try runtime().list()
        if format == "json" { return try printJSON(all, pretty: false) }
        if quiet { return all.forEach { print($0.id) } }
        print("ID\tPID\tSTATUS\tBUNDLE\tCREATED\tOWNER")
        for s in all { print("\(s.id)\t\(s.pid)\t\(s.status)\t\(s.bundle)\t\(s.created)\t\(s.owner)") }
    }
}

let commands: [String: any ParsableCommand.Type] = [
    "create": Create.self, "start": Start.self, "state": State.self, "kill": Kill.self, "delete": Delete.self,
    "ps": Ps.self, "exec": Exec.self, "pause": Pause.self, "resume": Resume.self, "update": Update.self,
    "features": Features.self, "list": List.self,
]

let usage = """
    stockade-runtime: Stockade as an OCI runtime (runc's command line)
    usage: stockade-runtime [--root DIR] [--log FILE] [--log-format json|text] [--systemd-cgroup] [--debug] COMMAND ...
    commands: \(commands.keys.sorted().joined(separator: ", "))
    """

// A hook that exits without reading the state on its stdin is an EPIPE,
// not the end of the runtime. Every jail's signal dispositions are reset.
signal(SIGPIPE, SIG_IGN)
do {
    let (globals, rest) = try Globals.parse(Array(CommandLine.arguments.dropFirst()))
    Log.globals = globals
    guard let name = rest.first else {
        print(usage)
        exit(0)
    }
    if name == "--version" {
        print("stockade-runtime version \(Stockade.version)\nspec: \(Runtime.specVersion)")
        exit(0)
    }
    if name == "--help" || name == "help" {
        print(usage)
        exit(0)
    }
    guard let type = commands[name] else { throw RuntimeError("command \"\(name)\" is not supported") }
    var command: any ParsableCommand
    do {
        command = try type.parseAsRoot(Array(rest.dropFirst()))
    } catch {
        // --help and friends: the subcommand's usage, status 0.
        if type.exitCode(for: error) == .success {
            print(type.fullMessage(for: error))
            exit(0)
        }
        Log.fail(RuntimeError("\(name): \(type.message(for: error))"))
    }
    do {
        try command.run()
    } catch let code as ExitCode {
        exit(code.rawValue)
    } catch where type.exitCode(for: error) == .success {
        // `--help` parses into a help command whose run reports the usage.
        print(type.fullMessage(for: error))
        exit(0)
    }
} catch {
    Log.fail(error)
}
