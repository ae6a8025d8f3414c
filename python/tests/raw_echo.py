"""Unencrypted baseline for the channel benchmark: echoes `u32 length ‖ bytes`
frames on the socket named by STOCKADE_CHANNEL (sock=N), until end of stream."""
import os
import socket
import struct
import sys


def main() -> int:
    fields = dict(f.split("=") for f in os.environ["STOCKADE_CHANNEL"].split(","))
    if "params" in fields:
        os.close(int(fields["params"]))
    sock = socket.socket(fileno=int(fields["sock"]))
    buf = bytearray(64 << 20)
    view = memoryview(buf)

    def fill(n):
        got = 0
        while got < n:
            k = sock.recv_into(view[got:n])
            if k == 0:
                return False
            got += k
        return True

    while fill(4):
        (n,) = struct.unpack_from(">I", buf)
        if not fill(n):
            return 1
        sock.sendall(struct.pack(">I", n))
        sock.sendall(view[:n])
    return 0


if __name__ == "__main__":
    sys.exit(main())
