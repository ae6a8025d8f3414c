/// The security layers that come from the profile and not from the caller:
/// the seccomp program and the Landlock rules. Called by every launcher
/// front end (the CLI, the daemon) before `Launcher.launch`.
public enum JailSecurity {
    public static func prepare(_ request: inout LaunchRequest) throws {
    }
}
