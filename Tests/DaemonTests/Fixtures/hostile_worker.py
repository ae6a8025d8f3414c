"""A worker for the daemon tests that turns hostile on request. It serves
like test_worker.py (b"echo:" + data -> b"<tenant>:" + data) and plays an
attack on the channel when asked:
    b"attack:own-socket"    -> a valid answer carrying its own socket end, one
                               byte of a next header, then exit
    b"attack:fd-flood"      -> one byte per sendmsg with four descriptors each
    b"attack:ping-replies"  -> 1 MiB ping replies nobody asked for
    b"attack:hang"          -> never answers
    b"attack:linger"        -> answers; from then on it acknowledges a shutdown
                               but keeps its socket open and stays
"""
import os
import socket
import struct
import sys
import time

from stockade_worker import channel as ch

TENANT = os.environ.get("TEST_TENANT", "?").encode()


def attack(c: ch.Channel, name: bytes, rid: int) -> None:
    sock = c.sock
    if name == b"own-socket":
        c.bytes_in_flight -= c.in_flight.pop(rid)
        header = struct.pack(">IB", ch.BODY_HEADER + 2 + ch.TAG, ch.RESPONSE)
        body = struct.pack(">BBHQ", ch.RESPONSE, 0, 0, rid) + b"ok"
        data = header + c.tx.encrypt_with_ad(header, body) + b"\x00"
        sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", sock.fileno()))])
        os._exit(0)
    if name == b"fd-flood":
        rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("4i", 0, 1, 2, sock.fileno()))]
        for _ in range(4000):
            sock.sendmsg([b"\x00"], rights)
    if name == b"ping-replies":
        for i in range(300):
            c._send_record(ch.PING, 1000 + i, b"\xaa" * (1 << 20), ch.FLAG_REPLY)
    time.sleep(3600)


def main() -> int:
    c = ch.connect()
    linger = False
    while True:
        msg = c.receive()
        if msg is None:
            return 0
        mtype, flags, rid, payload, _ = msg
        if mtype == ch.REQUEST:
            if payload == b"attack:linger":
                linger = True
            elif payload.startswith(b"attack:"):
                try:
                    attack(c, payload[7:], rid)
                except OSError:
                    time.sleep(3600)
            c.send(ch.RESPONSE, rid, TENANT + b":" + payload[5:])
        elif mtype == ch.SHUTDOWN and not flags & ch.FLAG_REPLY:
            c._send_record(ch.SHUTDOWN, 0, b"", ch.FLAG_REPLY)
            if linger:
                time.sleep(3600)
            c.close()
            return 0


if __name__ == "__main__":
    sys.exit(main())
