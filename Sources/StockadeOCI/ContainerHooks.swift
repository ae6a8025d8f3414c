import Foundation
import StockadeJail
import StockadeCgroups
import StockadeSystem
import CStockadeSpawn
#if canImport(Glibc)
import Glibc
#endif

/// The hooks that run while a container is built, in runtime-spec's order:
/// `prestart` and `createRuntime` on the host (the runtime's namespaces),
/// then `createContainer` in the container's namespaces, all three after
/// the namespaces and mounts exist and before the root is switched to;
/// `startContainer` in the container just before its program runs (see
/// ``OCILaunch/startHooks``). Each gets the state on its stdin.
enum ContainerHooks {
    /// The launcher's pause for the spec's build-time hooks; nil when it has none.
    static func pause(_ hooks: Spec.Hooks?, cgroup: (any JailCgroup)?, state: @escaping @Sendable (Int32) -> ContainerState)
        -> (@Sendable (OCILaunch.HookPoint) throws -> Void)? {
        guard let hooks, [hooks.prestart, hooks.createRuntime, hooks.createContainer].contains(where: { !($0 ?? []).isEmpty }) else {
            return nil
        }
        return { point in
            let doc = state(point.pid)
            try Hooks.run(hooks.prestart, name: "prestart", state: doc)
            try Hooks.run(hooks.createRuntime, name: "createRuntime", state: doc)
            try runInContainer(hooks.createContainer, name: "createContainer", state: doc, point: point, cgroup: cgroup)
        }
    }

    /// The spec's startContainer hooks as the worker runs them.
    static func start(_ hooks: Spec.Hooks?) -> [OCILaunch.StartHook] {
        (hooks?.startContainer ?? []).map {
            OCILaunch.StartHook(path: $0.path, args: $0.args ?? [$0.path], env: $0.env ?? [], timeoutSeconds: $0.timeout)
        }
    }

    /// A memfd holding `state`, the stdin of hooks run where no pipe of the
    /// runtime's should reach; read from offset 0 by each.
    static func stateFile(_ state: ContainerState) throws -> Int32 {
        let fd = stk_memfd_create("stockade-oci-state", 1 /* MFD_CLOEXEC */)
        guard fd >= 0 else { throw RuntimeError("hooks: memfd_create: \(errnoName(errno))") }
        do {
            try writeState(state, to: fd)
        } catch {
            close(fd)
            throw error
        }
        return fd
    }

    static func writeState(_ state: ContainerState, to fd: Int32) throws {
        let data = [UInt8](try JSONEncoder().encode(state))
        guard ftruncate(fd, 0) == 0, pwrite(fd, data, data.count, 0) == data.count else {
            throw RuntimeError("hooks: write the state: \(errnoName(errno))")
        }
    }

    /// Whether `pid` is PID 1 of its own pid namespace (the last NSpid
    /// field of its status), as a container's first process is unless it
    /// joined its pod's.
    static func isFirstInItsPidNamespace(_ pid: Int32) -> Bool {
        guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
              let line = status.split(separator: "\n").first(where: { $0.hasPrefix("NSpid:") }) else { return false }
        return line.split(whereSeparator: { $0 == "\t" || $0 == " " }).last == "1"
    }

    /// createContainer: each hook in the container's namespaces (those it
    /// shares with the runtime are not joined), as the container's root,
    /// its working directory the container's root at its host path, with
    /// the host's tree as its root (the runtime's paths resolve), in the
    /// container's cgroup (placed there before it runs anything).
    static func runInContainer(_ hooks: [Spec.Hook]?, name: String, state: ContainerState, point: OCILaunch.HookPoint,
                               cgroup: (any JailCgroup)?) throws {
        guard let hooks, !hooks.isEmpty else { return }
        // CLONE_NEW* (linux/sched.h; Glibc hides them behind _GNU_SOURCE).
        let mountFlag: Int32 = 0x0002_0000
        let kinds: [(String, Int32)] = [("mnt", mountFlag), ("cgroup", 0x0200_0000), ("ipc", 0x0800_0000), ("uts", 0x0400_0000),
                                        ("net", 0x4000_0000), ("pid_for_children", 0x2000_0000), ("user", 0x1000_0000)]
        var fds: [Int32] = []
        var types: [Int32] = []
        defer { for fd in fds { close(fd) } }
        for (kind, type) in kinds {
            let fd = open("/proc/\(point.pid)/ns/\(kind)", O_RDONLY | O_CLOEXEC)
            guard fd >= 0 else { throw RuntimeError("hooks.\(name): open /proc/\(point.pid)/ns/\(kind): \(errnoName(errno))") }
            // A container in its pod's pid namespace (not PID 1 there): the
            // hook stays out of it. The pod's processes share the container's
            // user namespace and would see the hook there, and could open its
            // /proc files while its root is the host's tree.
            if kind == "pid_for_children" && !isFirstInItsPidNamespace(point.pid) {
                close(fd)
                continue
            }
            var theirs = stat(), mine = stat()
            let mineKind = kind == "pid_for_children" ? "pid" : kind
            if type != mountFlag, fstat(fd, &theirs) == 0, stat("/proc/self/ns/\(mineKind)", &mine) == 0,
               theirs.st_ino == mine.st_ino, theirs.st_dev == mine.st_dev {
                close(fd)
                continue
            }
            fds.append(fd)
            types.append(type)
        }
        let input = try stateFile(state)
        defer { close(input) }
        for (i, hook) in hooks.enumerated() {
            let label = "hooks.\(name)[\(i)] \(hook.path)"
            let argv = CStrings(hook.args ?? [hook.path])
            let envp = CStrings(hook.env ?? [])
            // The hook waits for one byte while it is moved into the container's cgroup.
            var go: [Int32] = [-1, -1]
            guard stk_pipe2_cloexec(&go) == 0 else { throw RuntimeError("\(label): pipe: \(errnoName(errno))") }
            let pid = stk_oci_spawn_hook(fds, types, Int32(fds.count), point.rootPath, point.rootDevice, point.rootInode,
                                         input, go[0], hook.path, argv.pointer, envp.pointer)
            close(go[0])
            defer { close(go[1]) }
            guard pid > 0 else { throw RuntimeError("\(label): fork: \(errnoName(-pid))") }
            do {
                try cgroup?.attach(pid: pid)
            } catch {
                Glibc.kill(pid, SIGKILL)
                _ = waitpid(pid, nil, 0)
                throw RuntimeError("\(label): place it in the container's cgroup: \(error)")
            }
            var byte: UInt8 = 1
            _ = write(go[1], &byte, 1)
            let timeout = hook.timeout ?? 30
            let deadline = ContinuousClock.now + .seconds(timeout)
            var status: Int32 = 0
            while true {
                let r = waitpid(pid, &status, WNOHANG)
                if r == pid { break }
                if r < 0 && errno != EINTR { throw RuntimeError("\(label): waitpid: \(errnoName(errno))") }
                if ContinuousClock.now > deadline {
                    Glibc.kill(pid, SIGKILL)
                    _ = waitpid(pid, &status, 0)
                    throw RuntimeError("\(label): timed out after \(timeout) s")
                }
                usleep(2_000)
            }
            let termination = ProcessTermination(waitStatus: status)
            guard termination.shellStatus == 0 else {
                let why = termination.shellStatus == 126 || termination.shellStatus == 127
                    ? " (it could not be started in the container's namespaces, or was not found)" : ""
                throw RuntimeError("\(label): exited with status \(termination.shellStatus)\(why)")
            }
        }
    }
}

/// A NULL-terminated `char *[]` of copies of `strings`, freed with it.
final class CStrings {
    let pointer: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>
    private let count: Int

    init(_ strings: [String]) {
        count = strings.count
        pointer = .allocate(capacity: strings.count + 1)
        for (i, s) in strings.enumerated() { pointer[i] = strdup(s) }
        pointer[strings.count] = nil
    }

    deinit {
        for i in 0..<count { free(pointer[i]) }
        pointer.deallocate()
    }
}
