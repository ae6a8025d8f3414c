import ArgumentParser
import StockadeConfig
import StockadeJail

struct LintCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "lint",
        abstract: "Check profiles for mistakes without starting anything.",
        discussion: "Every error names the file, the line and the key. Unknown keys are errors."
    )

    @Argument(help: "Profile files to check.")
    var profiles: [String]

    func run() throws {
        var failed = 0
        for path in profiles {
            do {
                let profile = try Profile.load(path: path)
                for warning in ProfileLint.warnings(profile) {
                    print("\(path): warning: \(warning)")
                }
                // Some policy errors only show when libseccomp builds the program.
                let program = try profile.seccomp.compile()
                for note in program.notes {
                    print("\(path): note: \(note)")
                }
                print("\(path): ok")
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
