import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// A pod's sysctls (`linux.sysctl` of its sandbox): the pod's network
/// namespace (made outside the runtime, as containerd makes it) and the ipc
/// and uts namespaces the launcher makes for the sandbox belong to the
/// launcher's user namespace, where the container holds no capability; the
/// launcher writes their sysctls from its spawner thread while it is inside
/// them. The values must land in the pod's namespaces and nowhere else.
@Suite("OCIPodSysctls", .serialized)
struct PodSysctlTests {
    init() throws {
        try #require(getuid() == 0, "stockade-runtime runs as root, as containerd runs runc")
        try #require(FileManager.default.isExecutableFile(atPath: runtimeBinary), "build stockade-runtime first (swift build --build-tests)")
        try #require(FileManager.default.isExecutableFile(atPath: "/usr/sbin/ip"), "iproute2 makes the pod's network namespace: make deps")
    }

    static func ip(_ args: [String]) throws -> (Int32, String) {
        let pipe = Pipe()
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, pipe.fileHandleForWriting.fileDescriptor, 1)
        posix_spawn_file_actions_adddup2(&actions, pipe.fileHandleForWriting.fileDescriptor, 2)
        var argv: [UnsafeMutablePointer<CChar>?] = (["ip"] + args).map { strdup($0) } + [nil]
        defer { for a in argv { free(a) } }
        var pid: pid_t = 0
        guard posix_spawn(&pid, "/usr/sbin/ip", &actions, nil, &argv, environ) == 0 else { throw RuntimeTestError("spawn ip") }
        try pipe.fileHandleForWriting.close()
        let out = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        var status: Int32 = 0
        waitpid(pid, &status, 0)
        return ((status >> 8) & 0xff, out)
    }

    /// A sandbox's spec as containerd writes one: the pod's network namespace by path.
    static func sandbox(_ config: inout [String: Any], netns: String, sysctl: [String: String]) {
        config["annotations"] = ["io.kubernetes.cri.container-type": "sandbox"]
        var linux = config["linux"] as! [String: Any]
        linux["namespaces"] = [["type": "pid"], ["type": "ipc"], ["type": "uts"], ["type": "mount"],
                               ["type": "network", "path": netns], ["type": "cgroup"]]
        linux["sysctl"] = sysctl
        config["linux"] = linux
    }

    @Test("the sandbox's net, ipc and uts sysctls are written by the launcher in the pod's namespaces: read back inside and in the pod's netns, the host's unchanged; a key of no namespace is refused by name")
    func podSysctls() throws {
        let f = try RuntimeFixture("podsysctl")
        let name = "stk-sysctl-\(getpid())"
        let added = try Self.ip(["netns", "add", name])
        try #require(added.0 == 0, "ip netns add: \(added.1)")
        defer { _ = try? Self.ip(["netns", "del", name]) }
        let netns = "/run/netns/" + name
        let files = ["/proc/sys/net/ipv4/ip_unprivileged_port_start", "/proc/sys/kernel/shmmax", "/proc/sys/fs/mqueue/msg_max",
                     "/proc/sys/kernel/domainname"]
        let host = try files.map { try String(contentsOfFile: $0, encoding: .utf8) }
        let out = f.dir + "/out-pod"
        try RuntimeFixture.writeConfig(f.bundle, args: ["sh", "-c", "cat \(files.joined(separator: " ")); echo done; sleep 60"],
                                       cgroupsPath: f.cgroupsPath("pod")) {
            Self.sandbox(&$0, netns: netns, sysctl: ["net.ipv4.ip_unprivileged_port_start": "1234", "kernel.shmmax": "123456789",
                                                      "fs.mqueue.msg_max": "20", "kernel.domainname": "pod.example"])
        }
        let created = try f.run(["create", "--bundle", f.bundle, "pod"], stdout: out)
        try #require(created.status == 0, "\(created)")
        try #require(try f.run(["start", "pod"]).status == 0)
        let text = f.waitForOutput(out, containing: "done")
        #expect(text == "1234\n123456789\n20\npod.example\ndone\n", "\(text)")
        // The network sysctl is the pod's network namespace's, seen from outside the container.
        let seen = try Self.ip(["netns", "exec", name, "cat", files[0]])
        #expect(seen.0 == 0 && seen.1 == "1234\n", "\(seen)")
        // The host's, and the launcher's own namespaces, kept theirs.
        for (file, before) in zip(files, host) {
            #expect(try String(contentsOfFile: file, encoding: .utf8) == before, "\(file) changed on the host")
        }
        #expect(try f.run(["delete", "--force", "pod"]).status == 0)

        let refused: [([String: String], String)] = [
            (["kernel.panic": "1"], "sysctl \"kernel.panic\" is not in a separate kernel namespace"),
            (["vm.swappiness": "1"], "sysctl \"vm.swappiness\" is not in a separate kernel namespace"),
            (["kernel.printk": "1"], "sysctl \"kernel.printk\" is not in a separate kernel namespace"),
            (["net.ipv4.ip_unprivileged_port_start": "many"], "write the sysctl net/ipv4/ip_unprivileged_port_start in the pod's network namespace"),
        ]
        for (i, (sysctl, message)) in refused.enumerated() {
            try RuntimeFixture.writeConfig(f.bundle, args: ["true"], cgroupsPath: f.cgroupsPath("bad\(i)")) {
                Self.sandbox(&$0, netns: netns, sysctl: sysctl)
            }
            let r = try f.run(["create", "--bundle", f.bundle, "bad\(i)"])
            #expect(r.status != 0 && r.stderr.contains(message), "\(sysctl): \(r)")
        }
        #expect(try String(contentsOfFile: files[0], encoding: .utf8) == host[0])
    }
}
