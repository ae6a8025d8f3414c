"""The CRI pod lifecycle through a real containerd, driven from Python over
gRPC (the `runtime.v1` API of the container-runtime-interface-api package),
against the runtime handler `stockade` (containerd's runc shim calling
stockade-runtime) and against `runc`, Debian's runc, as the baseline.

The OCICRI Swift suite (Tests/OCITests/CRITests.swift, `make test-cri`)
starts the containerd, imports the images and runs this file with the
environment below; run on its own, every test is skipped.

Pods run in the node's network namespace: the containerd has no CNI
configuration, so no interface is made and no packet leaves the host.
"""
import json
import os
import pathlib
import re
import subprocess
import time
import uuid

import grpc
import pytest

from cri_api.v1 import api_pb2 as cri
from cri_api.v1 import api_pb2_grpc as cri_grpc

ENV = os.environ
ENDPOINT = ENV.get("STOCKADE_CRI_ENDPOINT")
pytestmark = pytest.mark.skipif(
    not ENDPOINT, reason="started by the OCICRI Swift suite (make test-cri), which runs containerd for it")

HANDLERS = ENV.get("STOCKADE_CRI_HANDLERS", "stockade,runc").split(",")
IMAGE = ENV.get("STOCKADE_CRI_IMAGE", "")
WORK = pathlib.Path(ENV.get("STOCKADE_CRI_WORKDIR", "/tmp"))
CGROUP_PARENT = ENV.get("STOCKADE_CRI_CGROUP_PARENT", "/stockade-cri")
STOCKADE = ENV.get("STOCKADE_BIN", "")
PROBE = ENV.get("STOCKADE_PROBE", "")
PROFILE = ENV.get("STOCKADE_CRI_PROBE_PROFILE", "")
RPC_TIMEOUT = 60
MIB = 1024 * 1024
# What the kubelet asks for in every container that is not privileged
# (its default ProcMount): containerd masks only what the request names.
MASKED_PATHS = ["/proc/asound", "/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
                "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware"]
READONLY_PATHS = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]


@pytest.fixture(scope="module")
def runtime():
    channel = grpc.insecure_channel(ENDPOINT)
    stub = cri_grpc.RuntimeServiceStub(channel)
    yield stub
    channel.close()


class Pod:
    """One pod sandbox and its containers; `close` stops and removes them
    whatever state a failed assertion left them in."""

    def __init__(self, runtime, handler, name, cgroup_parent=CGROUP_PARENT, network=cri.POD, pid=cri.CONTAINER,
                 sysctls=None):
        self.runtime = runtime
        self.handler = handler
        self.logs = WORK / f"logs-{name}-{uuid.uuid4().hex[:8]}"
        self.logs.mkdir(parents=True)
        self.config = cri.PodSandboxConfig(
            metadata=cri.PodSandboxMetadata(name=name, uid=uuid.uuid4().hex, namespace="stockade-cri", attempt=0),
            log_directory=str(self.logs),
            labels={"suite": "stockade-cri"},
            linux=cri.LinuxPodSandboxConfig(
                cgroup_parent=cgroup_parent,
                security_context=cri.LinuxSandboxSecurityContext(
                    namespace_options=cri.NamespaceOption(network=network, pid=pid, ipc=cri.POD)),
                sysctls=sysctls or {},
            ),
        )
        self.network = network
        self.pid = pid
        self.id = runtime.RunPodSandbox(cri.RunPodSandboxRequest(config=self.config, runtime_handler=handler),
                                        timeout=RPC_TIMEOUT).pod_sandbox_id

    def container(self, name, command, resources=None, mounts=()):
        config = cri.ContainerConfig(
            metadata=cri.ContainerMetadata(name=name, attempt=0),
            image=cri.ImageSpec(image=IMAGE),
            command=command,
            log_path=f"{name}.log",
            mounts=list(mounts),
            linux=cri.LinuxContainerConfig(
                resources=resources,
                security_context=cri.LinuxContainerSecurityContext(
                    namespace_options=cri.NamespaceOption(network=self.network, pid=self.pid, ipc=cri.POD),
                    masked_paths=MASKED_PATHS, readonly_paths=READONLY_PATHS,
                    seccomp=cri.SecurityProfile(profile_type=cri.SecurityProfile.ProfileType.RuntimeDefault)),
            ),
        )
        return self.runtime.CreateContainer(
            cri.CreateContainerRequest(pod_sandbox_id=self.id, config=config, sandbox_config=self.config),
            timeout=RPC_TIMEOUT).container_id

    def close(self):
        try:
            self.runtime.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=self.id), timeout=RPC_TIMEOUT)
        finally:
            self.runtime.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=self.id), timeout=RPC_TIMEOUT)


def exec_sync(runtime, cid, cmd, timeout=30):
    reply = runtime.ExecSync(cri.ExecSyncRequest(container_id=cid, cmd=cmd, timeout=timeout), timeout=timeout + 30)
    return reply.stdout.decode(), reply.stderr.decode(), reply.exit_code


def container_info(runtime, cid):
    """containerd's verbose status: the task's host pid and the OCI spec it made."""
    reply = runtime.ContainerStatus(cri.ContainerStatusRequest(container_id=cid, verbose=True), timeout=RPC_TIMEOUT)
    return reply.status, json.loads(reply.info["info"])


def status_fields(text):
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


def host_cgroup_file(pid, controller, names):
    """The first of `names` in the host's cgroup directory of `pid` for
    `controller` (cgroup v1), or in its v2 directory."""
    for line in pathlib.Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controller in controllers.split(",") or controllers == "":
            base = pathlib.Path("/sys/fs/cgroup") / (controller if controllers else "") / path.lstrip("/")
            for name in names:
                if (base / name).exists():
                    return base / name
    raise AssertionError(f"no {names} for pid {pid} ({controller})")


def read_limits(pid):
    """(memory limit, cpu quota, cpu period) of `pid`'s cgroup, read on the host."""
    memory = host_cgroup_file(pid, "memory", ["memory.limit_in_bytes", "memory.max"])
    cpu = host_cgroup_file(pid, "cpu", ["cpu.cfs_quota_us", "cpu.max"])
    if cpu.name == "cpu.max":
        quota, period = cpu.read_text().split()
    else:
        quota = cpu.read_text().strip()
        period = (cpu.parent / "cpu.cfs_period_us").read_text().strip()
    return int(memory.read_text().strip()), int(quota), int(period)


@pytest.mark.parametrize("handler", HANDLERS)
def test_pod_lifecycle(runtime, handler):
    started = time.monotonic()
    pod = Pod(runtime, handler, f"life-{handler}")
    try:
        sandbox = runtime.PodSandboxStatus(cri.PodSandboxStatusRequest(pod_sandbox_id=pod.id, verbose=True),
                                           timeout=RPC_TIMEOUT)
        assert sandbox.status.state == cri.SANDBOX_READY
        assert sandbox.status.linux.namespaces.options.network == cri.POD
        assert sandbox.status.network.ip == "192.0.2.2"
        assert sandbox.status.runtime_handler == handler
        sandbox_info = json.loads(sandbox.info["info"])
        assert sandbox_info["runtimeHandler"] == handler
        options = sandbox_info.get("runtimeOptions") or {}
        assert options.get("binary_name", "") == ("" if handler == "runc" else ENV["STOCKADE_RUNTIME"]), options

        resources = cri.LinuxContainerResources(memory_limit_in_bytes=64 * MIB, cpu_period=100000, cpu_quota=50000,
                                                cpu_shares=512)
        cid = pod.container("work", ["/bin/sh", "-c", "echo started; exec sleep 3600"], resources=resources)
        assert runtime.ContainerStatus(cri.ContainerStatusRequest(container_id=cid),
                                       timeout=RPC_TIMEOUT).status.state == cri.CONTAINER_CREATED
        runtime.StartContainer(cri.StartContainerRequest(container_id=cid), timeout=RPC_TIMEOUT)
        status, info = container_info(runtime, cid)
        assert status.state == cri.CONTAINER_RUNNING
        pid = info["pid"]
        assert pid > 0 and pathlib.Path(f"/proc/{pid}").exists()

        # ExecSync: stdout, stderr and the exit status come back apart.
        out, err, code = exec_sync(runtime, cid, ["/bin/sh", "-c", "echo out-$((6*7)); echo err >&2; exit 3"])
        assert (out, err, code) == ("out-42\n", "err\n", 3)
        # A program the image lacks: the runtime's own error comes back.
        with pytest.raises(grpc.RpcError) as missing:
            exec_sync(runtime, cid, ["/bin/nope"])
        assert "/bin/nope" in missing.value.details(), missing.value.details()

        # The container's process as the kernel sees it, inside and from the host.
        inside, _, code = exec_sync(runtime, cid, ["/bin/cat", "/proc/self/status", "/proc/self/uid_map"])
        assert code == 0
        fields = status_fields(inside)
        uid_map = [line.split() for line in inside.splitlines() if re.match(r"^\s+\d+\s+\d+\s+\d+$", line)]
        host = status_fields(pathlib.Path(f"/proc/{pid}/status").read_text())
        host_uid = int(host["Uid"].split()[1])
        assert fields["Seccomp"] == "2", "RuntimeDefault: a seccomp filter in both runtimes"
        if handler == "stockade":
            # A Stockade jail: a user namespace of its own mapped away from
            # host root, no_new_privs always, and the init is stockade-init.
            # (The prelude is compiled into the one filter with the spec's:
            # the battery below tells it apart from runc's.)
            assert uid_map and uid_map[0][0] == "0" and uid_map[0][1] != "0" and uid_map[0][2] == "65536", uid_map
            assert host_uid == int(uid_map[0][1]), (host_uid, uid_map)
            assert fields["NoNewPrivs"] == "1"
            assert pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].endswith(b"stockade-init")
        else:
            # runc without a user namespace: the container's root is host root.
            assert uid_map == [["0", "0", "4294967295"]], uid_map
            assert host_uid == 0

        # The resources, read back from the host's cgroup files.
        assert read_limits(pid) == (64 * MIB, 50000, 100000)
        runtime.UpdateContainerResources(cri.UpdateContainerResourcesRequest(
            container_id=cid,
            linux=cri.LinuxContainerResources(memory_limit_in_bytes=96 * MIB, cpu_period=100000, cpu_quota=25000,
                                              cpu_shares=256)),
            timeout=RPC_TIMEOUT)
        assert read_limits(pid) == (96 * MIB, 25000, 100000)

        # ContainerStats: some CPU time and memory after a little work.
        exec_sync(runtime, cid, ["/bin/sh", "-c", "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done"])
        stats = runtime.ContainerStats(cri.ContainerStatsRequest(container_id=cid), timeout=RPC_TIMEOUT).stats
        assert stats.attributes.id == cid
        assert stats.cpu.usage_core_nano_seconds.value > 0
        assert stats.memory.working_set_bytes.value > 0

        log = (pod.logs / "work.log").read_text()
        assert re.search(r" stdout F started$", log, re.M), log

        runtime.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=pod.id), timeout=RPC_TIMEOUT)
        assert runtime.PodSandboxStatus(cri.PodSandboxStatusRequest(pod_sandbox_id=pod.id),
                                        timeout=RPC_TIMEOUT).status.state == cri.SANDBOX_NOTREADY
        assert runtime.ContainerStatus(cri.ContainerStatusRequest(container_id=cid),
                                       timeout=RPC_TIMEOUT).status.state == cri.CONTAINER_EXITED
        deadline = time.monotonic() + 10
        while pathlib.Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not pathlib.Path(f"/proc/{pid}").exists(), "the container's process outlived StopPodSandbox"
    finally:
        pod.close()
    listed = runtime.ListPodSandbox(cri.ListPodSandboxRequest(), timeout=RPC_TIMEOUT).items
    assert pod.id not in [p.id for p in listed]
    containers = runtime.ListContainers(cri.ListContainersRequest(
        filter=cri.ContainerFilter(pod_sandbox_id=pod.id)), timeout=RPC_TIMEOUT).containers
    assert list(containers) == []
    print(f"{handler}: pod lifecycle in {time.monotonic() - started:.2f} s")


@pytest.mark.parametrize("handler", HANDLERS)
def test_a_pod_in_the_nodes_network_namespace(runtime, handler):
    """hostNetwork: the pod shares the node's network (and uts) namespace,
    which a Stockade container in its own user namespace cannot mount a
    sysfs for: it gets the host's /sys read-only instead."""
    pod = Pod(runtime, handler, f"hostnet-{handler}", network=cri.NODE)
    try:
        cid = pod.container("work", ["/bin/sleep", "3600"])
        runtime.StartContainer(cri.StartContainerRequest(container_id=cid), timeout=RPC_TIMEOUT)
        out, err, code = exec_sync(runtime, cid, ["/bin/sh", "-c",
                                                  "cat /proc/self/uid_map; ls /sys/class/net; touch /sys/x 2>&1; true"])
        assert code == 0, (out, err)
        assert "lo" in out.split(), out
        assert "Read-only file system" in out, out
        host_net = os.readlink("/proc/self/ns/net")
        _, info = container_info(runtime, cid)
        assert os.readlink(f"/proc/{info['pid']}/ns/net") == host_net
        uid_map = out.split("\n")[0].split()
        assert (uid_map[1] != "0") if handler == "stockade" else (uid_map == ["0", "0", "4294967295"]), uid_map
    finally:
        pod.close()


def sandbox_pid(runtime, pod):
    reply = runtime.PodSandboxStatus(cri.PodSandboxStatusRequest(pod_sandbox_id=pod.id, verbose=True), timeout=RPC_TIMEOUT)
    return json.loads(reply.info["info"])["pid"]


@pytest.mark.parametrize("handler", HANDLERS)
def test_a_pod_sharing_its_pid_namespace(runtime, handler):
    """shareProcessNamespace: the pod's containers see the sandbox's
    processes and each other's, and nothing outside the pod. Under Stockade
    they share the sandbox's user namespace (one per pod) and its id map."""
    started = time.monotonic()
    outside = subprocess.Popen(["sleep", "300"])
    pod = Pod(runtime, handler, f"sharedpid-{handler}", pid=cri.POD)
    try:
        cid = pod.container("work", ["/bin/sleep", "3600"])
        runtime.StartContainer(cri.StartContainerRequest(container_id=cid), timeout=RPC_TIMEOUT)
        out, err, code = exec_sync(runtime, cid, ["/bin/sh", "-c",
                                                  'for p in /proc/[0-9]*; do echo "@${p#/proc/}"; cat $p/cmdline; echo; done; '
                                                  f"kill -0 {outside.pid} 2>&1; kill -0 {os.getpid()} 2>&1; "
                                                  "cat /proc/self/uid_map"])
        processes = {}
        for block in out.split("@")[1:]:
            number, _, cmdline = block.partition("\n")
            if number.isdigit():
                processes[int(number)] = cmdline.replace("\0", " ").strip()
        pause = [n for n, cmd in processes.items() if "trap 'exit 0' TERM INT" in cmd]
        assert pause, f"the sandbox's pause is not visible in the pod's container: {processes}"
        assert any(cmd.startswith("/bin/sleep 3600") for cmd in processes.values()), processes
        if handler == "stockade":
            # PID 1 of the pod is the sandbox's stockade-init, the pause its child.
            assert processes.get(1, "").split(" ")[0].endswith("stockade-init"), processes
        else:
            assert pause == [1], processes
        # Only the pod's processes: nothing of the host's is there to signal.
        assert not any("containerd" in cmd or "pytest" in cmd for cmd in processes.values()), processes
        assert out.count("No such process") == 2, out
        assert outside.poll() is None
        _, info = container_info(runtime, cid)
        sandbox = sandbox_pid(runtime, pod)
        assert os.readlink(f"/proc/{info['pid']}/ns/pid_for_children") == os.readlink(f"/proc/{sandbox}/ns/pid")
        uid_map = [line.split() for line in out.splitlines() if re.match(r"^\s+\d+\s+\d+\s+\d+$", line)]
        if handler == "stockade":
            # One user namespace per pod, the sandbox's, with its id map.
            assert os.readlink(f"/proc/{info['pid']}/ns/user") == os.readlink(f"/proc/{sandbox}/ns/user")
            assert os.readlink(f"/proc/{sandbox}/ns/user") != os.readlink("/proc/self/ns/user")
            sandbox_map = [line.split() for line in pathlib.Path(f"/proc/{sandbox}/uid_map").read_text().splitlines()]
            assert uid_map == sandbox_map and uid_map[0][1] != "0", (uid_map, sandbox_map)
        else:
            assert uid_map == [["0", "0", "4294967295"]], uid_map

        # Stopping the container ends every process of it, also those its
        # first process left in the pod's pid namespace when it died.
        def in_pod():
            found = []
            for entry in pathlib.Path("/proc").iterdir():
                try:
                    if entry.name.isdigit() and os.readlink(entry / "ns/pid") == os.readlink(f"/proc/{sandbox}/ns/pid") \
                            and (entry / "cmdline").read_bytes() == b"/bin/sleep\x003600\x00":
                        found.append(int(entry.name))
                except OSError:
                    pass
            return found
        assert in_pod(), "the container's sleep is not in the pod's pid namespace"
        runtime.StopContainer(cri.StopContainerRequest(container_id=cid, timeout=0), timeout=RPC_TIMEOUT)
        deadline = time.monotonic() + 5
        while in_pod() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not in_pod(), "the container's process outlived StopContainer"
    finally:
        pod.close()
        outside.kill()
        outside.wait()
    print(f"{handler}: pod sharing its pid namespace in {time.monotonic() - started:.2f} s")


@pytest.mark.parametrize("handler", HANDLERS)
def test_pod_sysctls(runtime, handler):
    """The pod's sysctls (PodSandboxConfig.linux.sysctls) land in the pod's
    network and ipc namespaces, which its containers share; the host's stay."""
    keys = {"net.ipv4.ip_unprivileged_port_start": "1234", "kernel.shmmax": "123456789"}
    files = ["/proc/sys/" + key.replace(".", "/") for key in keys]
    host = [pathlib.Path(f).read_text() for f in files]
    pod = Pod(runtime, handler, f"sysctl-{handler}", sysctls=keys)
    try:
        cid = pod.container("work", ["/bin/sleep", "3600"])
        runtime.StartContainer(cri.StartContainerRequest(container_id=cid), timeout=RPC_TIMEOUT)
        out, err, code = exec_sync(runtime, cid, ["/bin/cat"] + files)
        assert (out, code) == ("1234\n123456789\n", 0), (out, err)
        assert [pathlib.Path(f).read_text() for f in files] == host
    finally:
        pod.close()
    # A key of no namespace is refused at RunPodSandbox, by name.
    with pytest.raises(grpc.RpcError) as refused:
        Pod(runtime, handler, f"sysctl-bad-{handler}", sysctls={"kernel.panic": "1"}).close()
    assert "kernel.panic" in refused.value.details(), refused.value.details()


def cri_log_text(path):
    """The container's stdout from a CRI log file (TIME STREAM P|F TEXT lines,
    P: a partial line continued in the next)."""
    text = ""
    for line in path.read_text().splitlines():
        parts = line.split(" ", 3)
        if len(parts) == 4 and parts[1] == "stdout":
            text += parts[3] + ("\n" if parts[2] == "F" else "")
    return text


class PodPidsLimit:
    """The pod's own cgroup below CGROUP_PARENT with a pids limit, as the
    kubelet makes one for every pod (podPidsLimit): CRI has no per-container
    pids limit."""

    def __init__(self, name, limit):
        self.parent = f"{CGROUP_PARENT}/{name}"
        v1 = pathlib.Path("/sys/fs/cgroup/pids")
        if v1.is_dir():
            self.dir = v1 / self.parent.lstrip("/")
        else:
            unified = pathlib.Path("/sys/fs/cgroup")
            self.dir = unified / self.parent.lstrip("/")
            for parent in [unified / CGROUP_PARENT.lstrip("/"), self.dir]:
                parent.mkdir(exist_ok=True)
                (parent.parent / "cgroup.subtree_control").write_text("+pids")
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "pids.max").write_text(str(limit))

    def close(self):
        self.dir.rmdir()


def probe_in_pod(runtime, handler):
    """The battery as the only process of a container in a pod: its report."""
    limit = PodPidsLimit(f"probe-{handler}", 128)
    pod = None
    try:
        pod = Pod(runtime, handler, f"probe-{handler}", cgroup_parent=limit.parent)
        cid = pod.container("probe", ["/stockade-probe", "--json"],
                            resources=cri.LinuxContainerResources(memory_limit_in_bytes=256 * MIB),
                            mounts=[cri.Mount(container_path="/stockade-probe", host_path=PROBE, readonly=True)])
        runtime.StartContainer(cri.StartContainerRequest(container_id=cid), timeout=RPC_TIMEOUT)
        deadline = time.monotonic() + 240
        status = None
        while time.monotonic() < deadline:
            status = runtime.ContainerStatus(cri.ContainerStatusRequest(container_id=cid), timeout=RPC_TIMEOUT).status
            if status.state == cri.CONTAINER_EXITED:
                break
            time.sleep(0.2)
        assert status is not None and status.state == cri.CONTAINER_EXITED, "the probe did not finish in 240 s"
        text = cri_log_text(pod.logs / "probe.log")
        try:
            report = json.loads(text)
        except ValueError:
            raise AssertionError(f"the probe in the {handler} pod gave no report (exit {status.exit_code}): {text[-2000:]}")
        return {p["number"]: p for p in report["probes"]}
    finally:
        if pod is not None:
            pod.close()
        limit.close()


def probe_by_stockade():
    """`stockade probe`'s own report for the profile closest to a CRI
    container with the RuntimeDefault seccomp profile."""
    ran = subprocess.run([STOCKADE, "probe", "--profile", PROFILE, "--probe-binary", PROBE, "--json"],
                         capture_output=True, text=True, timeout=300)
    report = json.loads(ran.stdout)
    return {p["number"]: p for p in report["probes"]}


# Where a pod through CRI and `stockade probe` differ by design, and why.
# Each entry is checked both ways: the verdict must differ as stated.
EXPECTED_DIFFERENCES = {
    1: "the pod's container holds containerd's default capabilities (the spec's process.capabilities), which "
       "Stockade grants inside the container's own user namespace; the profile of `stockade probe` holds none",
}


def test_probe_battery_in_a_stockade_pod_matches_stockade_probe(runtime):
    if "stockade" not in HANDLERS:
        pytest.skip("the stockade handler is not configured")
    started = time.monotonic()
    pod = probe_in_pod(runtime, "stockade")
    own = probe_by_stockade()
    lines = []
    for number in sorted(set(own) | set(pod)):
        mine, theirs = pod.get(number), own.get(number)
        if mine is None or theirs is None:
            lines.append(f"probe {number}: only in {'stockade probe' if mine is None else 'the pod'}")
            continue
        expected = EXPECTED_DIFFERENCES.get(number)
        differs = mine["pass"] != theirs["pass"]
        if differs and expected is None:
            lines.append(f"probe {number} {mine['name']}: pod {'PASS' if mine['pass'] else 'FAIL'} ({mine['result']})"
                         f" but stockade probe {'PASS' if theirs['pass'] else 'FAIL'} ({theirs['result']})")
        elif not differs and expected is not None:
            lines.append(f"probe {number} {mine['name']}: expected to differ ({expected}) but both "
                         f"{'PASS' if mine['pass'] else 'FAIL'}: {mine['result']}")
    print(f"probe battery in a stockade pod: {sum(p['pass'] for p in pod.values())} of {len(pod)} pass, "
          f"stockade probe: {sum(p['pass'] for p in own.values())} of {len(own)}, {time.monotonic() - started:.1f} s")
    assert not lines, "\n".join(lines)


def test_probe_battery_in_a_runc_pod_finds_what_stockade_closes(runtime):
    """The same battery under runc (the baseline): it must find the holes
    that Stockade's jail closes, or the comparison above proves nothing."""
    if "runc" not in HANDLERS:
        pytest.skip("the runc handler is not configured")
    report = probe_in_pod(runtime, "runc")
    failed = sorted(n for n, p in report.items() if not p["pass"])
    print(f"probe battery in a runc pod: {len(report) - len(failed)} of {len(report)} pass; fails: "
          + ", ".join(f"{n} {report[n]['name']}" for n in failed))
    # Under runc the container's root is host root (no user namespace: 3
    # and 47), and containerd's default seccomp profile allows io_uring (14),
    # which Stockade's prelude denies under the same spec.
    for number in (3, 14, 47):
        assert number in failed, report[number]
