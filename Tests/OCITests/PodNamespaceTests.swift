import Foundation
import Testing
import StockadeJail
import StockadeOCI
#if canImport(Glibc)
import Glibc
#endif

/// How a CRI pod's specs map (no container is started; OCICRI runs them
/// through containerd): a namespace the runtime's own user namespace owns
/// is entered before the clone, a sandbox's ipc and uts are made by the
/// launcher, sysfs and mqueue follow who owns the net and ipc namespaces,
/// and a spec without a cgroup namespace gets one.
@Suite("OCIPodNamespaces", .serialized)
struct PodNamespaceTests {
    init() throws {
        try #require(getuid() == 0, "the bundle's rootfs is made as root")
    }

    /// The launch request for the fixture's bundle with CRI's namespaces:
    /// the network namespace joined by path (here the test's own, which
    /// the host's user namespace owns, as containerd's are), no cgroup one.
    func request(_ name: String, sandbox: Bool, joinIPC: String? = nil, sysctl: [String: String]? = nil,
                 hostname: String = "pod-host") throws -> LaunchRequest {
        let f = try RuntimeFixture(name)
        try RuntimeFixture.writeConfig(f.bundle, args: ["sleep", "1"]) { config in
            var linux = config["linux"] as! [String: Any]
            var namespaces: [[String: Any]] = [["type": "pid"], ["type": "uts"], ["type": "mount"],
                                               ["type": "network", "path": "/proc/self/ns/net"]]
            namespaces.append(joinIPC.map { ["type": "ipc", "path": $0] } ?? ["type": "ipc"])
            linux["namespaces"] = namespaces
            config["linux"] = linux
            config["hostname"] = hostname
            if let sysctl { linux["sysctl"] = sysctl; config["linux"] = linux }
            if sandbox { config["annotations"] = [SpecJail.criContainerType: "sandbox"] }
        }
        let spec = try SpecFiles.readConfig(bundle: f.bundle)
        return try SpecJail.request(spec: spec, bundle: f.bundle)
    }

    func kernelTypes(_ oci: OCILaunch) -> [String] {
        oci.mounts.compactMap { if case .kernel(let type, _, _, _, _, _) = $0 { type } else { nil } }
    }

    @Test("a sandbox: its net namespace entered before the clone, ipc and uts made by the launcher with the hostname, /sys the host's read-only, no /dev/mqueue, a cgroup namespace")
    func sandbox() throws {
        let request = try request("podsandbox", sandbox: true)
        let oci = try #require(request.oci)
        defer { for j in oci.join + oci.enterBeforeClone { close(j.fd) } }
        #expect(oci.enterBeforeClone.map(\.namespace) == [.net])
        #expect(oci.join.isEmpty)
        #expect(oci.unshareBeforeClone == [.ipc, .uts])
        #expect(oci.hostnameBeforeClone == "pod-host" && request.profile.hostname == nil)
        #expect(request.profile.namespaces.isSuperset(of: [.user, .pid, .mount, .cgroup]))
        #expect(request.profile.namespaces.isDisjoint(with: [.ipc, .uts, .net]))
        #expect(!kernelTypes(oci).contains("sysfs") && !kernelTypes(oci).contains("mqueue"), "\(kernelTypes(oci))")
        let sys = oci.mounts.compactMap { if case .spec(let m) = $0, m.target == "/sys" { m } else { nil } }
        #expect(sys.count == 1 && sys.first?.source == "/sys" && sys.first?.writable == false && sys.first?.noexec == true)
    }

    @Test("a pod's container: the sandbox's launcher-owned ipc namespace is entered before the clone too; its own uts stays the child's, with its hostname")
    func container() throws {
        let request = try request("podcontainer", sandbox: false, joinIPC: "/proc/self/ns/ipc")
        let oci = try #require(request.oci)
        defer { for j in oci.join + oci.enterBeforeClone { close(j.fd) } }
        #expect(Set(oci.enterBeforeClone.map(\.namespace)) == [.net, .ipc])
        #expect(oci.unshareBeforeClone.isEmpty && oci.hostnameBeforeClone == nil)
        #expect(request.profile.namespaces.contains(.uts) && request.profile.hostname == "pod-host")
        #expect(!kernelTypes(oci).contains("mqueue"))
    }

    @Test("a sandbox's sysctls of the ipc and uts namespaces the launcher makes go to the launcher; a container's own namespaces' to its child")
    func sysctls() throws {
        let keys = ["net.ipv4.ip_unprivileged_port_start": "1", "kernel.shmmax": "2", "kernel.domainname": "d"]
        // (The network namespace here is the runtime's own: its keys are refused, as runc refuses them.)
        #expect(throws: (any Error).self) { try request("podsysctlnet", sandbox: true, sysctl: keys) }
        let sandbox = try request("podsysctl", sandbox: true, sysctl: keys.filter { !$0.key.hasPrefix("net.") })
        let oci = try #require(sandbox.oci)
        defer { for j in oci.join + oci.enterBeforeClone { close(j.fd) } }
        #expect(oci.launcherSysctls.map(\.key) == ["kernel/domainname", "kernel/shmmax"])
        #expect(oci.launcherSysctls.map(\.namespace) == [.uts, .ipc])
        #expect(oci.sysctls.isEmpty)

        let f = try RuntimeFixture("podsysctlplain")
        try RuntimeFixture.writeConfig(f.bundle, args: ["true"]) { config in
            var linux = config["linux"] as! [String: Any]
            linux["sysctl"] = keys
            config["linux"] = linux
        }
        let plain = try #require(try SpecJail.request(spec: try SpecFiles.readConfig(bundle: f.bundle), bundle: f.bundle).oci)
        #expect(plain.launcherSysctls.isEmpty && plain.sysctls.count == 3)
    }

    @Test("a sandbox's hostname and launcher-side sysctls holding a NUL byte are refused by the spec (the launcher hands them to the kernel as C strings, outside the child's plan)")
    func nulBytes() throws {
        func refusal(_ name: String, _ make: () throws -> LaunchRequest) -> String {
            do {
                let request = try make()
                for j in (request.oci?.join ?? []) + (request.oci?.enterBeforeClone ?? []) { close(j.fd) }
                return "accepted: \(name)"
            } catch {
                return "\(error)"
            }
        }
        let hostname = refusal("hostname") { try request("podnulhost", sandbox: true, hostname: "pod\u{0}host") }
        #expect(hostname.contains("config.json hostname") && hostname.contains("NUL byte"), "\(hostname)")
        let key = refusal("sysctl name") { try request("podnulkey", sandbox: true, sysctl: ["kernel.shmmax\u{0}x": "2"]) }
        #expect(key.contains("linux.sysctl") && key.contains("is not a sysctl name") && !key.utf8.contains(0), "\(key)")
        let value = refusal("sysctl value") { try request("podnulvalue", sandbox: true, sysctl: ["kernel.domainname": "d\u{0}e"]) }
        #expect(value.contains("linux.sysctl") && value.contains("the value holds a NUL byte"), "\(value)")
    }

    @Test("a container with namespaces of its own keeps its kernel sysfs and mqueue, and nothing is entered before its clone")
    func plain() throws {
        let f = try RuntimeFixture("podplain")
        try RuntimeFixture.writeConfig(f.bundle, args: ["sleep", "1"])
        let request = try SpecJail.request(spec: try SpecFiles.readConfig(bundle: f.bundle), bundle: f.bundle)
        let oci = try #require(request.oci)
        #expect(oci.enterBeforeClone.isEmpty && oci.unshareBeforeClone.isEmpty && oci.join.isEmpty)
        #expect(kernelTypes(oci).contains("sysfs") && kernelTypes(oci).contains("mqueue"))
    }
}
