import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// A container's terminal is a pty of its own devpts: `ttyname` inside
/// names it (`/dev/pts/N`), `/dev/console` is bound to it, as under runc;
/// an exec with a terminal gets a pty in the container's /dev/pts too.
@Suite("OCITerminal", .serialized)
struct TerminalTests {
    init() throws {
        try #require(getuid() == 0, "stockade-runtime runs as root")
        try #require(FileManager.default.isExecutableFile(atPath: runtimeBinary), "build stockade-runtime first")
    }

    /// Accepts one console-socket connection and returns the pty leader it carries.
    static func leader(_ listener: Int32) throws -> Int32 {
        let conn = accept(listener, nil, nil)
        try #require(conn >= 0)
        defer { close(conn) }
        let (_, fds) = receiveDescriptors(conn)
        try #require(fds.count == 1, "descriptors: \(fds)")
        return fds[0]
    }

    @Test("ttyname inside the container names its /dev/pts/N, which is /dev/console; exec --tty gets one of the container's ptys")
    func ttyname() throws {
        let f = try RuntimeFixture("tty")
        let id = "tty1"
        let script = "tty; [ /dev/console -ef /proc/self/fd/0 ] && echo console-is-the-tty; ls /dev/pts; echo ready; exec cat"
        try RuntimeFixture.writeTerminalConfig(f.bundle, args: ["sh", "-c", script], cgroupsPath: f.cgroupsPath(id))
        let socketPath = f.dir + "/console.sock"
        let listener = try consoleListener(socketPath)
        defer { close(listener) }
        let created = try f.run(["create", "--bundle", f.bundle, "--console-socket", socketPath, id])
        try #require(created.status == 0, "\(created)")
        let leader = try Self.leader(listener)
        defer { close(leader) }
        #expect(try f.run(["start", id]).status == 0)
        let output = readTerminal(leader, until: "ready")
        #expect(output.contains("/dev/pts/0\r\n"), "ttyname: \(output.debugDescription)")
        #expect(output.contains("console-is-the-tty"), "\(output.debugDescription)")
        #expect(!output.contains("not a tty"), "\(output.debugDescription)")

        // exec --tty: a second pty of the same devpts.
        let process = f.dir + "/process.json"
        let doc: [String: Any] = ["terminal": true, "user": ["uid": 0, "gid": 0], "args": ["sh", "-c", "tty; ls /dev/pts; echo exec-done"],
                                  "env": ["PATH=/bin"], "cwd": "/"]
        try JSONSerialization.data(withJSONObject: doc).write(to: URL(fileURLWithPath: process))
        let execSocket = f.dir + "/exec.sock"
        let execListener = try consoleListener(execSocket)
        defer { close(execListener) }
        let exec = try f.run(["exec", "--process", process, "--detach", "--console-socket", execSocket, id])
        #expect(exec.status == 0, "\(exec)")
        let execLeader = try Self.leader(execListener)
        defer { close(execLeader) }
        let execOutput = readTerminal(execLeader, until: "exec-done")
        #expect(execOutput.contains("/dev/pts/1\r\n"), "exec's ttyname: \(execOutput.debugDescription)")
        #expect(try f.run(["delete", "--force", id]).status == 0)
    }
}
