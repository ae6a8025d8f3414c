"""A worker on the SDK for the daemon tests. Requests:
    b"echo:" + data     -> b"<tenant>:" + data  (the tenant comes from the environment)
    b"sleep:" + secs    -> sleeps, then b"slept"
    b"pid"              -> the worker's pid inside the jail
    b"crash"            -> the worker kills itself with SIGKILL (no answer)
    b"fail"             -> raises (an error message goes back)
    b"alloc:" + mib     -> touches that many MiB (to meet the memory budget)
    b"model:" + path    -> the SHA-256 of a file the jail can read
    b"modelfd:" + name  -> the SHA-256 of the sealed model memfd of that name
    b"say:" + text      -> writes text to stdout and stderr, then b"said"
    b"forge"            -> tries to rewrite fds 1 and 2 (lseek, ftruncate);
                           answers what fd 1 is (b"fifo" for a pipe)
    b"bad-input"        -> refuses the request as malformed (400)
    b"too-big"          -> refuses the request as too large (413)
    b"big:" + n         -> an answer of n bytes
"""
import hashlib
import os
import stat
import signal
import sys
import time

import stockade_worker

TENANT = os.environ.get("TEST_TENANT", "?").encode()


def handle(payload: bytes) -> bytes:
    if payload.startswith(b"echo:"):
        return TENANT + b":" + payload[5:]
    if payload.startswith(b"sleep:"):
        time.sleep(float(payload[6:]))
        return b"slept"
    if payload == b"pid":
        return str(os.getpid()).encode()
    if payload == b"crash":
        os.kill(os.getpid(), signal.SIGKILL)
    if payload.startswith(b"alloc:"):
        blocks = [bytearray(1 << 20) for _ in range(int(payload[6:]))]
        return str(len(blocks)).encode()
    if payload == b"fail":
        raise ValueError("asked to fail")
    if payload.startswith(b"modelfd:"):
        fd = stockade_worker.model_fds()[payload[8:].decode()]
        size = os.fstat(fd).st_size
        return hashlib.sha256(os.pread(fd, size, 0)).hexdigest().encode()
    if payload.startswith(b"say:"):
        os.write(1, payload[4:] + b"\n")
        os.write(2, payload[4:] + b"\n")
        return b"said"
    if payload == b"forge":
        os.write(2, b"stockaded: [error] forged daemon line\n\x1b[2J")
        for fd in (1, 2):
            for attempt in (lambda: os.lseek(fd, 0, os.SEEK_SET), lambda: os.ftruncate(fd, 0)):
                try:
                    attempt()
                except OSError:
                    pass
        return b"fifo" if stat.S_ISFIFO(os.fstat(1).st_mode) else b"not-a-pipe"
    if payload == b"bad-input":
        raise stockade_worker.RequestError("the request is not what this worker takes")
    if payload == b"too-big":
        raise stockade_worker.RequestTooLarge("more than this worker can hold")
    if payload.startswith(b"big:"):
        return b"x" * int(payload[4:])
    if payload.startswith(b"model:"):
        with open(payload[6:].decode(), "rb") as f:
            return hashlib.sha256(f.read()).hexdigest().encode()
    return payload


if __name__ == "__main__":
    sys.exit(stockade_worker.serve(handle))
