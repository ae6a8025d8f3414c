import StockadeJail
#if canImport(Glibc)
import Glibc
#endif

/// A pod's network namespace under containerd's CRI plugin is made by
/// containerd, so it belongs to the host's user namespace, while every
/// Stockade container lives in a user namespace of its own (or its pod's).
/// A process inside that user namespace holds no capability over the
/// host's, so it can neither join such a namespace (setns: EPERM) nor mount
/// a sysfs for it (sysfs checks CAP_SYS_ADMIN over the network namespace's
/// owner). These two steps arrange it the other way round.
extension SpecJail {
    /// containerd's annotation telling a pod's sandbox (pause) container
    /// from the pod's other containers.
    public static let criContainerType = "io.kubernetes.cri.container-type"

    /// All of the below, for a container's init (`create`).
    static func arrangePodNamespaces(_ spec: Spec, profile: inout Profile, oci: inout OCILaunch) {
        let ownUserNamespace = profile.namespaces.contains(.user) || oci.join.contains { $0.namespace == .user }
        // A spec that names no cgroup namespace (containerd's on a cgroup v1
        // host) would leave the container in the host's, where the kernel
        // refuses its `cgroup` mount: it gets one of its own, rooted at its
        // cgroup, which also hides the host's cgroup paths from it.
        if ownUserNamespace && !oci.join.contains(where: { $0.namespace == .cgroup }) {
            profile.namespaces.insert(.cgroup)
        }
        enterLauncherOwnedBeforeClone(&oci, ownUserNamespace: ownUserNamespace)
        enterPodPidNamespaceBeforeClone(&oci)
        podSandboxNamespacesFromTheLauncher(spec, profile: &profile, oci: &oci)
        sysfsWithoutOwnNetwork(&oci, ownUserNamespace: ownUserNamespace, newNetwork: profile.namespaces.contains(.net))
        mqueueWithoutOwnIPC(&oci, ownUserNamespace: ownUserNamespace, newIPC: profile.namespaces.contains(.ipc))
    }

    /// A joined pid namespace (the pod's, CRI `pid: POD`) is entered by the
    /// spawner thread before the clone (setns of a pid namespace moves only
    /// the thread's children), so that the child is born in it: /proc is
    /// mounted for the mounter's own pid namespace, and the kernel allows
    /// that mount only with a capability over that namespace's owner, the
    /// pod's user namespace, which the child joins right after.
    static func enterPodPidNamespaceBeforeClone(_ oci: inout OCILaunch) {
        oci.enterBeforeClone += oci.join.filter { $0.namespace == .pid }
        oci.join.removeAll { $0.namespace == .pid }
    }

    /// A pod's sandbox container in a user namespace of its own: its new
    /// ipc and uts namespaces, which the pod's other containers join, are
    /// made by the launcher (owned by its user namespace, like the pod's
    /// network namespace), so each of those containers, in a user namespace
    /// of its own too, can enter them before its clone. The hostname is set
    /// by the launcher; the container holds no capability over either.
    static func podSandboxNamespacesFromTheLauncher(_ spec: Spec, profile: inout Profile, oci: inout OCILaunch) {
        guard spec.annotations?[criContainerType] == "sandbox", profile.namespaces.contains(.user) else { return }
        for kind in [Profile.Namespace.ipc, .uts] where profile.namespaces.contains(kind) {
            profile.namespaces.remove(kind)
            oci.unshareBeforeClone.append(kind)
        }
        if oci.unshareBeforeClone.contains(.uts) {
            oci.hostnameBeforeClone = profile.hostname
            profile.hostname = nil
        }
    }

    /// `linux.sysctl`, checked: those of the namespaces the launcher
    /// enters or makes before the clone (the pod's network namespace, its
    /// ipc and uts ones, owned by the launcher's user namespace, where the
    /// container holds no capability) are written by the launcher inside
    /// them; the rest by the container's child in its own namespaces.
    static func splitSysctls(_ sysctls: [(key: String, value: String, namespace: Profile.Namespace)], oci: inout OCILaunch) {
        let launcher = Set(oci.enterBeforeClone.map(\.namespace) + oci.unshareBeforeClone)
        oci.launcherSysctls = sysctls.filter { launcher.contains($0.namespace) }
        oci.sysctls = sysctls.filter { !launcher.contains($0.namespace) }.map { ($0.key, $0.value) }
    }

    /// The spec's `mqueue` mount, for a container in a user namespace of
    /// its own whose ipc namespace that user namespace does not own (a
    /// pod's, or the host's): the kernel refuses it the mount, so it is
    /// left out. POSIX message queues still work (mq_open needs no mount);
    /// only listing them under /dev/mqueue does not.
    static func mqueueWithoutOwnIPC(_ oci: inout OCILaunch, ownUserNamespace: Bool, newIPC: Bool) {
        guard ownUserNamespace, !newIPC, !oci.join.contains(where: { $0.namespace == .ipc }) else { return }
        var kept: [OCILaunch.Mount] = []
        var fields: [String] = []
        for (i, mount) in oci.mounts.enumerated() {
            if case .kernel(let type, _, _, _, _, _) = mount, type == "mqueue" { continue }
            kept.append(mount)
            if i < oci.mountFields.count { fields.append(oci.mountFields[i]) }
        }
        oci.mounts = kept
        oci.mountFields = fields
    }

    /// Moves the joined net, ipc and uts namespaces that the launcher's own
    /// user namespace owns from `oci.join` (joined by the child, too late)
    /// to `oci.enterBeforeClone` (the child is cloned inside them), when the
    /// container gets a user namespace other than the launcher's. Those it
    /// shares with its pod's containers (owned by the pod's user namespace)
    /// stay joined by the child after it joins that user namespace.
    static func enterLauncherOwnedBeforeClone(_ oci: inout OCILaunch, ownUserNamespace: Bool) {
        guard ownUserNamespace else { return }
        var mine = stat()
        guard stat("/proc/self/ns/user", &mine) == 0 else { return }
        var kept: [(fd: Int32, namespace: Profile.Namespace)] = []
        for joined in oci.join {
            if [.net, .ipc, .uts].contains(joined.namespace) {
                let owner = ioctl(joined.fd, 0xB701 /* NS_GET_USERNS */)
                var theirs = stat()
                let launcherOwns = owner >= 0 && fstat(owner, &theirs) == 0
                    && theirs.st_ino == mine.st_ino && theirs.st_dev == mine.st_dev
                if owner >= 0 { close(owner) }
                if launcherOwns {
                    oci.enterBeforeClone.append(joined)
                    continue
                }
            }
            kept.append(joined)
        }
        oci.join = kept
    }

    /// The spec's `sysfs` mounts, for a container in a user namespace of
    /// its own whose network namespace that user namespace does not own
    /// (the host's, or a pod's that containerd made): the kernel refuses it
    /// a sysfs, so it gets the host's /sys, bound recursively read-only,
    /// nosuid, nodev and noexec, as runc does in the same case. Its
    /// /sys/class/net is the host's namespace's view; maskedPaths and the
    /// spec's later mounts (cgroup at /sys/fs/cgroup) still go on top.
    static func sysfsWithoutOwnNetwork(_ oci: inout OCILaunch, ownUserNamespace: Bool, newNetwork: Bool) {
        guard ownUserNamespace, !newNetwork, !oci.join.contains(where: { $0.namespace == .net }) else { return }
        oci.mounts = oci.mounts.map { mount in
            guard case .kernel(let type, let target, _, _, _, _) = mount, type == "sysfs" else { return mount }
            return .spec(MountSpec(kind: .bind, source: "/sys", target: target, writable: false, noexec: true))
        }
    }
}
