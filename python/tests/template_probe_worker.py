"""A template worker for the template tests: each forked worker answers JSON
commands about itself and tries, as an attacker would, to reach a sibling.

    {"op": "whoami"}            -> pid (in the jail), parent pid, dumpable,
                                   oom_score_adj
    {"op": "fds"}               -> /proc/self/fd: number -> link target
    {"op": "attack", "pid": N}  -> what each way into process N gave
    {"op": "control"}           -> the same attack on a child of this worker
                                   that made itself dumpable again: the
                                   probe's own check that the attacks work
    {"op": "crash"}             -> the worker ends with status 3

PROBE_THREADS=1 starts a thread in load(), which a template must refuse;
PROBE_FAIL_LOAD=1 makes load() raise.
"""
from __future__ import annotations

import ctypes
import errno
import json
import os
import signal
import threading
import time

import stockade_worker

libc = ctypes.CDLL(None, use_errno=True)
SYS_PIDFD_OPEN, SYS_PIDFD_GETFD, SYS_PROCESS_VM_READV = 434, 438, 310
PTRACE_ATTACH, PTRACE_SEIZE = 16, 0x4206
PR_GET_DUMPABLE, PR_SET_DUMPABLE = 3, 4


def outcome(call) -> str:
    try:
        result = call()
    except OSError as e:
        return f"denied: {errno.errorcode.get(e.errno, e.errno)}"
    return f"allowed: {result}"


def raw(rc: int) -> str:
    if rc < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return str(rc)


def read_file(path: str, n: int = 64) -> str:
    fd = os.open(path, os.O_RDONLY)
    try:
        return f"{len(os.read(fd, n))} bytes"
    finally:
        os.close(fd)


def read_mem(pid: int) -> str:
    # An address that is mapped in every Python process: the first line of maps.
    fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY)
    try:
        with open(f"/proc/{os.getpid()}/maps") as m:
            start = int(m.readline().split("-")[0], 16)
        return f"{len(os.pread(fd, 16, start))} bytes"
    finally:
        os.close(fd)


def attack(pid: int) -> dict:
    results = {
        "mem": outcome(lambda: read_mem(pid)),
        "environ": outcome(lambda: read_file(f"/proc/{pid}/environ")),
        "maps": outcome(lambda: read_file(f"/proc/{pid}/maps")),
        "fd-dir": outcome(lambda: str(len(os.listdir(f"/proc/{pid}/fd")))),
        "status": outcome(lambda: read_file(f"/proc/{pid}/status")),
        "ptrace-attach": outcome(lambda: raw(libc.ptrace(PTRACE_ATTACH, pid, None, None))),
        "ptrace-seize": outcome(lambda: raw(libc.ptrace(PTRACE_SEIZE, pid, None, None))),
    }
    buf = ctypes.create_string_buffer(16)

    class iovec(ctypes.Structure):
        _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]

    local = iovec(ctypes.cast(buf, ctypes.c_void_p), 16)
    remote = iovec(0x400000, 16)
    results["process_vm_readv"] = outcome(lambda: raw(libc.syscall(SYS_PROCESS_VM_READV, pid, ctypes.byref(local), 1,
                                                                   ctypes.byref(remote), 1, 0)))

    def steal() -> str:
        pidfd = int(raw(libc.syscall(SYS_PIDFD_OPEN, pid, 0)))
        try:
            # fd 3 is a forked worker's channel socket.
            got = int(raw(libc.syscall(SYS_PIDFD_GETFD, pidfd, 3, 0)))
            os.close(got)
            return "got fd 3"
        finally:
            os.close(pidfd)
    results["pidfd_getfd"] = outcome(steal)
    results["signal-0"] = outcome(lambda: (os.kill(pid, 0), "sent")[1])
    return results


def control() -> dict:
    r, w = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(r)
        libc.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0)
        os.write(w, b"x")
        time.sleep(30)
        os._exit(0)
    os.close(w)
    os.read(r, 1)
    os.close(r)
    try:
        return {"mem": outcome(lambda: read_mem(child)), "environ": outcome(lambda: read_file(f"/proc/{child}/environ"))}
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)


def load():
    if os.environ.get("PROBE_FAIL_LOAD") == "1":
        raise RuntimeError("the model is missing")
    if os.environ.get("PROBE_THREADS") == "1":
        threading.Thread(target=time.sleep, args=(600,), daemon=True).start()
    loaded_at = time.time()

    def handle(payload: bytes) -> bytes:
        cmd = json.loads(payload)
        op = cmd["op"]
        if op == "whoami":
            with open("/proc/self/oom_score_adj") as f:
                oom = int(f.read())
            out = {"pid": os.getpid(), "ppid": os.getppid(), "dumpable": libc.prctl(PR_GET_DUMPABLE, 0, 0, 0, 0),
                   "loaded_at": loaded_at, "oom_score_adj": oom}
        elif op == "fds":
            out = {}
            for name in os.listdir("/proc/self/fd"):
                try:
                    out[name] = os.readlink(f"/proc/self/fd/{name}")
                except OSError:
                    pass  # the listing's own descriptor, closed by now
        elif op == "attack":
            out = attack(int(cmd["pid"]))
        elif op == "control":
            out = control()
        elif op == "lower-oom":
            out = outcome(lambda: (open("/proc/self/oom_score_adj", "w").write("0"), "written")[1])
        elif op == "crash":
            os._exit(3)
        else:
            raise ValueError(f"unknown op {op}")
        return json.dumps(out).encode()
    return handle


if __name__ == "__main__":
    raise SystemExit(stockade_worker.serve_template(load))
