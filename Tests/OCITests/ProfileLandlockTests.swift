import Foundation
import Testing
import StockadeJail
@testable import StockadeOCI
#if canImport(Glibc)
import Glibc
#endif

/// `stockade.io/profile` adds the profile's Landlock domain to a container:
/// its `[[mount]]` entries name the container's paths it may reach, the
/// spec's mounts keep their own access, the rest of the image is listed
/// only. Real containers, real Landlock.
@Suite("OCIProfileLandlock", .serialized)
struct ProfileLandlockTests {
    init() throws {
        try #require(getuid() == 0, "stockade-runtime runs as root")
        try #require(FileManager.default.isExecutableFile(atPath: runtimeBinary), "build stockade-runtime first")
        try #require(LandlockPlan.kernelABI() >= 1, "this kernel has no Landlock (\(LandlockPlan.kernelABI())): nothing to enforce the profile's rules")
    }

    /// The profile's grants: busybox's /bin (read, execute), a writable
    /// /scratch, /granted (for the link cases).
    static let profile = """
        [[mount]]
        type = "bind"
        source = "/bin"

        [[mount]]
        type = "bind"
        source = "/tmp"
        target = "/scratch"
        writable = true

        [[mount]]
        type = "bind"
        source = "/usr"
        target = "/granted"
        """

    /// A fixture whose rootfs has a secret the profile does not grant, a
    /// world-writable /data it does not grant either, and /scratch it does.
    static func fixture(_ name: String) throws -> RuntimeFixture {
        let f = try RuntimeFixture(name)
        let rootfs = f.bundle + "/rootfs"
        try "image-secret\n".write(toFile: rootfs + "/etc/secret", atomically: true, encoding: .utf8)
        for d in ["data", "scratch"] {
            mkdir(rootfs + "/" + d, 0o777)
            chmod(rootfs + "/" + d, 0o777)
        }
        let profiles = f.dir + "/profiles"
        mkdir(profiles, 0o755)
        try profile.write(toFile: profiles + "/confined.toml", atomically: true, encoding: .utf8)
        return f
    }

    static let probe = "cat /mnt/hostdata && echo READ-SPEC-BIND; cat /etc/secret && echo READ-IMAGE; "
        + "echo x > /data/w && echo WROTE-IMAGE; echo x > /scratch/w && echo WROTE-GRANTED; "
        + "echo x > /tmp/w && echo WROTE-SPEC-TMPFS; echo done"

    /// Runs `probe` in a container of `f`'s bundle, with or without the
    /// annotation; returns its stdout and stderr.
    static func run(_ f: RuntimeFixture, _ id: String, annotated: Bool) throws -> String {
        try RuntimeFixture.writeConfig(f.bundle, args: ["sh", "-c", probe + "; sleep 60"], cgroupsPath: f.cgroupsPath(id)) { config in
            if annotated { config["annotations"] = ["stockade.io/profile": "confined"] }
            var root = config["root"] as! [String: Any]
            root["readonly"] = false
            config["root"] = root
        }
        // Each container has host ids of its own: a file the last one made
        // would be refused by its mode, not by Landlock.
        for file in ["/data/w", "/scratch/w"] { unlink(f.bundle + "/rootfs" + file) }
        let output = f.dir + "/out-" + id
        let created = try f.run(["create", "--bundle", f.bundle, id], stdout: output, stderr: output)
        try #require(created.status == 0, "\(created)")
        #expect(try f.run(["start", id]).status == 0)
        return f.waitForOutput(output, containing: "done")
    }

    @Test("a path outside the profile's set is refused inside the container, and allowed without the annotation")
    func refusedOutsideProfile() throws {
        let f = try Self.fixture("ll-profile")
        f.environment["STOCKADE_PROFILE_DIR"] = f.dir + "/profiles"

        let plain = try Self.run(f, "plain", annotated: false)
        for word in ["READ-SPEC-BIND", "READ-IMAGE", "WROTE-IMAGE", "WROTE-GRANTED", "WROTE-SPEC-TMPFS"] {
            #expect(plain.contains(word), "without the annotation: \(word) missing in \(plain)")
        }
        _ = try f.run(["delete", "--force", "plain"])

        let confined = try Self.run(f, "confined", annotated: true)
        #expect(confined.contains("READ-SPEC-BIND") && confined.contains("WROTE-SPEC-TMPFS"), "the spec's mounts keep their access: \(confined)")
        #expect(confined.contains("WROTE-GRANTED"), "the profile's writable grant: \(confined)")
        #expect(!confined.contains("READ-IMAGE") && !confined.contains("WROTE-IMAGE"), "the image outside the profile: \(confined)")
        #expect(confined.contains("Permission denied"), "\(confined)")
        #expect(!confined.contains("image-secret"), "\(confined)")

        // The next try: an exec into the confined container gets the same domain.
        let process = f.dir + "/process.json"
        let json = #"{"user":{"uid":0,"gid":0},"args":["sh","-c","cat /etc/secret; echo exit=$?"],"env":["PATH=/bin"],"cwd":"/"}"#
        try json.write(toFile: process, atomically: true, encoding: .utf8)
        let exec = try f.run(["exec", "--process", process, "confined"])
        #expect(!exec.stdout.contains("image-secret") && exec.stdout.contains("exit=1"), "exec: \(exec)")
        #expect(try f.run(["delete", "--force", "confined"]).status == 0)
    }

    @Test("a granted path that is a link in the image fails create, naming it; a link inside a granted directory reaches nothing")
    func linksInTheImage() throws {
        let f = try Self.fixture("ll-links")
        f.environment["STOCKADE_PROFILE_DIR"] = f.dir + "/profiles"
        let rootfs = f.bundle + "/rootfs"

        // /granted -> /etc: following it would grant the image's /etc.
        symlink("/etc", rootfs + "/granted")
        try RuntimeFixture.writeConfig(f.bundle, args: ["cat", "/granted/secret"], cgroupsPath: f.cgroupsPath("link1")) {
            $0["annotations"] = ["stockade.io/profile": "confined"]
        }
        let r = try f.run(["create", "--bundle", f.bundle, "link1"])
        #expect(r.status != 0 && r.stderr.contains("/granted") && r.stderr.contains("symbolic link"), "\(r)")
        #expect(try f.run(["state", "link1"]).stderr.contains("does not exist"))

        // /granted a directory holding a link to /etc: Landlock checks what
        // the link resolves to, which lies outside every grant.
        unlink(rootfs + "/granted")
        mkdir(rootfs + "/granted", 0o755)
        symlink("/etc", rootfs + "/granted/etc")
        try RuntimeFixture.writeConfig(f.bundle, args: ["sh", "-c", "cat /granted/etc/secret; echo done; sleep 60"],
                                       cgroupsPath: f.cgroupsPath("link2")) {
            $0["annotations"] = ["stockade.io/profile": "confined"]
        }
        let output = f.dir + "/out-link2"
        let created = try f.run(["create", "--bundle", f.bundle, "link2"], stdout: output, stderr: output)
        try #require(created.status == 0, "\(created)")
        #expect(try f.run(["start", "link2"]).status == 0)
        let text = f.waitForOutput(output, containing: "done")
        #expect(!text.contains("image-secret") && text.contains("Permission denied"), "\(text)")
        #expect(try f.run(["delete", "--force", "link2"]).status == 0)
    }

    @Test("the domain: the profile's entries optional with their rights, the spec's mounts as given, symlink entries none")
    func plan() throws {
        var profile = try Profile.parse(text: Self.profile + "\n[[mount]]\ntype = \"symlink\"\nsource = \"usr/bin\"\ntarget = \"/sbin\"\n", file: "confined.toml")
        let grants = profile.mounts
        profile.mounts = []
        profile.filesystem.proc = true
        let spec: [OCILaunch.Mount] = [
            .spec(MountSpec(kind: .tmpfs, source: nil, target: "/tmp", writable: true)),
            .kernel(type: "sysfs", target: "/sys", options: nil, writable: false, noexec: true, dev: false),
        ]
        let ll = try #require(try SpecLandlock.plan(profile: profile, grants: grants, specMounts: spec, abi: 5))
        func rule(_ path: String) -> LaunchLandlock.Rule? { ll.rules.first { $0.path == path } }
        let exec = LandlockPlan.FS.execute, write = LandlockPlan.FS.writeFile, read = LandlockPlan.FS.readFile
        #expect(rule("/bin").map { $0.optional && $0.access & exec != 0 && $0.access & write == 0 } == true)
        #expect(rule("/scratch").map { $0.optional && $0.access & write != 0 } == true)
        #expect(rule("/tmp").map { !$0.optional && $0.access & write != 0 } == true)
        #expect(rule("/sys").map { !$0.optional && $0.access & read != 0 && $0.access & (write | exec) == 0 } == true)
        #expect(rule("/").map { $0.access == LandlockPlan.FS.readDir } == true, "the root is listed only")
        #expect(rule("/sbin") == nil && rule("/usr") == nil)
        #expect(ll.netHandled != 0 && ll.tcpPorts.isEmpty, "TCP as the profile says: none")
    }
}
