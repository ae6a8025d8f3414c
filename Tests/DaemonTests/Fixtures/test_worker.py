"""A worker on the SDK for the daemon tests. Requests:
    b"echo:" + data     -> b"<tenant>:" + data  (the tenant comes from the environment)
    b"sleep:" + secs    -> sleeps, then b"slept"
    b"pid"              -> the worker's pid inside the jail
    b"crash"            -> the worker kills itself with SIGKILL (no answer)
    b"fail"             -> raises (an error message goes back)
    b"alloc:" + mib     -> touches that many MiB (to meet the memory budget)
    b"model:" + path    -> the SHA-256 of a file the jail can read
"""
import hashlib
import os
import signal
import sys
import time

sys.path.insert(0, os.environ["STOCKADE_SDK"])
import stockade_worker  # noqa: E402

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
    if payload.startswith(b"model:"):
        with open(payload[6:].decode(), "rb") as f:
            return hashlib.sha256(f.read()).hexdigest().encode()
    return payload


if __name__ == "__main__":
    sys.exit(stockade_worker.serve(handle))
