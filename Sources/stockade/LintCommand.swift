import ArgumentParser
import StockadeSeccomp
import StockadeConfig
import StockadeJail

struct LintCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "lint",
        abstract: "Check profiles for mistakes without starting anything.",
        discussion: """
            Every error names the file, the line and the key. Unknown keys are errors. \
            A warning names a setting that weakens the jail (a permissive seccomp default, \
            allow_dangerous, binds of host /proc or /sys, a tmpfs without a size, a writable \
            root, new_session = false, Landlock disabled, [fds] pass, a fixed host_base, ...).

            Exit status: 0 when every profile is valid (with --strict: and has no warning); \
            1 when a profile has an error, or with --strict a warning.
            """
    )

    @Flag(help: "Treat every warning as an error (exit status 1).")
    var strict = false

    @Argument(help: "Profile files to check.")
    var profiles: [String]

    func run() throws {
        var failed = 0
        for path in profiles {
            do {
                let profile = try Profile.load(path: path)
                // Lines for the warnings: the text the profile was read from.
                let index = (try? TableReader.readText(path: path, what: "profile")).map(TOMLLineIndex.init(text:))
                let findings = ProfileLint.findings(profile, index: index)
                for finding in findings {
                    print(strict ? finding.description.replacing(": warning: ", with: ": error: ", maxReplacements: 1)
                                 : finding.description)
                }
                // Some policy errors only show when libseccomp builds the program.
                let program = try profile.seccomp.compile()
                for note in program.notes {
                    print("\(path): note: \(note)")
                }
                if strict && !findings.isEmpty {
                    print("\(path): \(findings.count) warning\(findings.count == 1 ? "" : "s") (--strict: errors)")
                    failed += 1
                } else {
                    print("\(path): ok")
                }
            } catch let error as ProfileError {
                print(error.description) // names the file and line itself
                failed += 1
            } catch {
                print("\(path): \(error)")
                failed += 1
            }
        }
        if failed > 0 { throw ExitCode(1) }
    }
}
