"""A worker on the SDK for the channel tests. Requests:
    b"reverse:" + data   -> data reversed
    b"sha256:" + data    -> SHA-256 of data
    b"size:" + n         -> n bytes (a large response: bulk)
    b"fail"              -> raises (an error message goes back)
    b"fds"               -> the worker's open fds as fd:target, space separated
    anything else        -> echoed
With --views the handler gets a read-only memoryview (serve(views=True)) and
echoes a payload that starts with 0x7e by returning that view itself.
"""
import hashlib
import os
import sys

import stockade_worker


def handle(payload: bytes) -> bytes:
    if payload.startswith(b"reverse:"):
        return payload[8:][::-1]
    if payload.startswith(b"sha256:"):
        return hashlib.sha256(payload[7:]).digest()
    if payload.startswith(b"size:"):
        return bytes(i & 0xFF for i in range(int(payload[5:]))) if int(payload[5:]) < 1 << 16 else b"\x5a" * int(payload[5:])
    if payload == b"fail":
        raise ValueError("asked to fail")
    if payload == b"fds":
        out = []
        for name in sorted(os.listdir("/proc/self/fd"), key=int):
            try:
                out.append(f"{name}:{os.readlink('/proc/self/fd/' + name)}")
            except OSError:
                pass
        return " ".join(out).encode()
    return payload


def handle_view(payload: memoryview):
    if len(payload) and payload[0] == 0x7E:
        return payload
    return handle(bytes(payload))


if __name__ == "__main__":
    if sys.argv[1:] == ["--views"]:
        sys.exit(stockade_worker.serve(handle_view, views=True))
    sys.exit(stockade_worker.serve(handle))
