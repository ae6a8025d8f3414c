"""The test worker, plus one request for the denial tests:
    b"deny:NR,COUNT"  -> makes raw system call NR (no arguments) COUNT times
                         and answers b"errno E count C other O" (E: the first
                         errno, C: calls that failed with it, O: the rest)
    b"bind:PORT"      -> binds a TCP socket to 127.0.0.1:PORT in the jail's own
                         network namespace; answers b"bound" or b"errno E"
Everything else is test_worker.py's.
"""
import ctypes
import os
import socket
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_worker  # noqa: E402
import stockade_worker  # noqa: E402

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long


def handle(payload: bytes) -> bytes:
    if payload.startswith(b"deny:"):
        nr, count = (int(x) for x in payload[5:].split(b","))
        first, same, other = 0, 0, 0
        for _ in range(count):
            if libc.syscall(ctypes.c_long(nr), ctypes.c_long(0), ctypes.c_long(0), ctypes.c_long(0)) == -1:
                e = ctypes.get_errno()
                if first == 0:
                    first = e
                if e == first:
                    same += 1
                    continue
            other += 1
        return b"errno %d count %d other %d" % (first, same, other)
    if payload.startswith(b"bind:"):
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", int(payload[5:])))
            return b"bound"
        except OSError as e:
            return b"errno %d" % e.errno
        finally:
            s.close()
    return test_worker.handle(payload)


if __name__ == "__main__":
    sys.exit(stockade_worker.serve(handle))
