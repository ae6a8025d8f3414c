import ArgumentParser
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import StockadeConfig
import StockadeSeccomp
import StockadeJail
import SystemPackage

/// `stockade compile PROFILE`: the seccomp filter a profile produces.
struct CompileCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "compile",
        abstract: "Show the seccomp filter a profile compiles to.",
        discussion: """
        Reads the profile, compiles its [seccomp] policy the way `stockade run` \
        does (the hardening every jail gets, then the profile's rules through \
        libseccomp), and prints the BPF program as readable pseudo-assembly, \
        with the system calls named. --raw writes the program's bytes instead \
        (a struct sock_filter array), for tools that load or inspect filters.
        """
    )

    @Argument(help: "The profile (a TOML file).")
    var profile: String

    @Flag(help: "Write the raw BPF bytes instead of the listing.")
    var raw = false

    @Option(name: .shortAndLong, help: "Write to this file instead of standard output.")
    var output: String?

    func run() throws {
        let program: SeccompProgram
        do {
            program = try Profile.load(path: profile).seccomp.compile()
        } catch let error as ProfileError {
            throw PolicyCommandError(error.description)
        } catch {
            throw PolicyCommandError("\(error)")
        }
        let data: Data
        if raw {
            data = Data(program.bytes)
        } else {
            var text = "# \(profile): \(program.instructions.count) instructions "
            text += "(\(program.preludeCount) hardening, \(program.instructions.count - program.preludeCount) policy), "
            text += "default \(program.defaultAction), libseccomp \(SeccompProgram.libseccompVersion)\n"
            for (name, reason) in program.lifted.sorted(by: { $0.key < $1.key }) {
                text += "# hardening lifted for \(name): \(reason)\n"
            }
            for note in program.notes { text += "# note: \(note)\n" }
            text += SeccompDisassembler.render(program.instructions, preludeCount: program.preludeCount) + "\n"
            data = Data(text.utf8)
        }
        if let output {
            guard FileManager.default.createFile(atPath: output, contents: data) else {
                throw PolicyCommandError("cannot write \(output)")
            }
        } else {
            do {
                _ = try FileDescriptor.standardOutput.writeAll(data)
            } catch {
                throw PolicyCommandError("cannot write the filter to standard output: \(error)")
            }
        }
    }
}

/// A failure already worded for the user: printed as is, exit status 1.
struct PolicyCommandError: Error, CustomStringConvertible {
    var description: String
    init(_ message: String) { description = message }
}
