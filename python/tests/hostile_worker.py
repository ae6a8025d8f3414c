"""A hostile worker for the channel tests: it plays one attack, named by
argv[1], against the real launcher (the Swift SecureChannel), the way model
code that took over a worker could. The launcher must name the violation and
stay flat in descriptors, memory and threads.

Attacks that need a completed handshake use the SDK's own Channel for it and
then write records by hand through its sealing state.
"""
import fcntl
import mmap
import os
import socket
import struct
import subprocess
import sys
import time

from stockade_worker import channel as ch
from stockade_worker.noise import Handshake

MIB = 1 << 20


def bootstrap():
    sock_fd, params_fd = ch.parse_env(os.environ[ch.ENV])
    params = ch.read_params(params_fd)
    return socket.socket(fileno=sock_fd), params


def connected() -> ch.Channel:
    return ch.connect()


def next_request(c: ch.Channel):
    while True:
        msg = c.receive()
        if msg is None:
            sys.exit(0)
        if msg[0] == ch.REQUEST:
            return msg


def send_with_fds(sock: socket.socket, data: bytes, fds) -> None:
    sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack(f"{len(fds)}i", *fds))])


def wait_for_end(sock: socket.socket) -> None:
    """Blocks until the launcher closes or shuts down its end."""
    try:
        while sock.recv(65536):
            pass
    except OSError:
        pass


def sealed_memfd(size: int, touch: bool) -> int:
    fd = os.memfd_create("hostile", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, size)
    if touch:
        os.pwrite(fd, b"\x01" * size, 0)
    fcntl.fcntl(fd, ch.F_ADD_SEALS, ch.SEALS_IMMUTABLE)
    return fd


def bulk_descriptor(total: int, chunk: int = 4096) -> bytes:
    return struct.pack(">B3xIQ", ch.RESPONSE, chunk, total) + os.urandom(32)


def main(attack: str) -> int:
    # -- during the handshake ----------------------------------------------
    if attack == "handshake-fds":
        # Every byte of the suite selection with descriptors attached.
        sock, params = bootstrap()
        frame = struct.pack(">H", 2) + bytes([1, params.suites[0]])
        for i in range(len(frame)):
            try:
                send_with_fds(sock, frame[i:i + 1], [0, 1, 2, sock.fileno()])
            except OSError:
                break
        wait_for_end(sock)
        return 0
    if attack == "handshake-oversized-frame":
        sock, _ = bootstrap()
        sock.sendall(struct.pack(">H", 65535) + b"\x00" * 65535)
        wait_for_end(sock)
        return 0
    if attack == "handshake-trickle":
        # One byte at a time, each well inside any per-read timeout.
        sock, params = bootstrap()
        delay = float(sys.argv[2])
        for b in struct.pack(">H", 2) + bytes([1, params.suites[0]]):
            sock.send(bytes([b]))
            time.sleep(delay)
        hs = Handshake(False, params.suites[0], params.prologue, params.psk)
        wait_for_end(sock)
        del hs
        return 0
    if attack == "no-hello":
        # The handshake, then silence instead of the hello.
        sock, params = bootstrap()
        suite = params.suites[0]
        sock.sendall(struct.pack(">H", 2) + bytes([1, suite]))
        hs = Handshake(False, suite, params.prologue, params.psk)
        head = sock.recv(2, socket.MSG_WAITALL)
        (n,) = struct.unpack(">H", head)
        hs.read_message(sock.recv(n, socket.MSG_WAITALL))
        reply = hs.write_message(b"")
        sock.sendall(struct.pack(">H", len(reply)) + reply)
        wait_for_end(sock)
        return 0

    c = connected()
    sock = c.sock

    # -- after the handshake -----------------------------------------------
    if attack == "unsolicited-ping-replies":
        # Ping replies nobody asked for, 1 MiB each, while a request waits.
        _, _, rid, _, _ = next_request(c)
        count = int(sys.argv[2])
        try:
            for i in range(count):
                c._send_record(ch.PING, 1000 + i, b"\xaa" * MIB, ch.FLAG_REPLY)
            c.send(ch.RESPONSE, rid, b"done")
        except OSError:
            pass
        wait_for_end(sock)
        return 0
    if attack == "fd-flood":
        # One byte per sendmsg, four descriptors each, while a request waits.
        next_request(c)
        record = b"\x00" * 64
        for i in range(4000):
            try:
                send_with_fds(sock, record[i % 64:i % 64 + 1], [0, 1, 2, sock.fileno()])
            except OSError:
                break
        wait_for_end(sock)
        return 0
    if attack == "own-socket-with-answer":
        # A valid answer carrying the worker's own socket end, one byte of
        # a next header, and exit: if the launcher kept the descriptor it
        # would wait for an end of stream that never comes.
        _, _, rid, payload, _ = next_request(c)
        c.bytes_in_flight -= c.in_flight.pop(rid)
        length = ch.BODY_HEADER + len(payload) + ch.TAG
        header = struct.pack(">IB", length, ch.RESPONSE)
        body = struct.pack(">BBHQ", ch.RESPONSE, 0, 0, rid) + payload
        sealed = c.tx.encrypt_with_ad(header, body)
        send_with_fds(sock, header + sealed + b"\x00", [sock.fileno()])
        os._exit(0)
    if attack == "memfd-with-answer":
        # A sealed memfd, which a bulk record could carry, on a plain answer.
        _, _, rid, payload, _ = next_request(c)
        fd = sealed_memfd(4096, touch=True)
        c.bytes_in_flight -= c.in_flight.pop(rid)
        length = ch.BODY_HEADER + len(payload) + ch.TAG
        header = struct.pack(">IB", length, ch.RESPONSE)
        body = struct.pack(">BBHQ", ch.RESPONSE, 0, 0, rid) + payload
        send_with_fds(sock, header + c.tx.encrypt_with_ad(header, body), [fd])
        os.close(fd)
        wait_for_end(sock)
        return 0
    if attack == "own-socket-as-bulk":
        # The same, on a bulk record that claims the socket is its memfd.
        _, _, rid, _, _ = next_request(c)
        c._send_record(ch.BULK, rid, bulk_descriptor(3 * MIB), 0, [sock.fileno()])
        sock.send(b"\x00")
        os._exit(0)
    if attack == "sparse-bulk":
        # A sealed memfd of the right size that is all holes: mapping it
        # with populate would allocate every page in the launcher.
        _, _, rid, _, _ = next_request(c)
        total = 64 * MIB
        chunk = 1 << 20
        size = total + (total // chunk) * ch.TAG
        fd = sealed_memfd(size, touch=False)
        c._send_record(ch.BULK, rid, bulk_descriptor(total, chunk), 0, [fd])
        os.close(fd)
        wait_for_end(sock)
        return 0
    if attack == "bulk-not-in-flight":
        # A bulk answer for a request id the launcher never sent.
        next_request(c)
        total = 2 * MIB
        fd = sealed_memfd(total + (total // 4096) * ch.TAG, touch=True)
        c._send_record(ch.BULK, 999_999, bulk_descriptor(total), 0, [fd])
        os.close(fd)
        wait_for_end(sock)
        return 0
    if attack == "ping-flood-no-read":
        # Pings (1 MiB each) until the launcher's answers fill the socket,
        # never reading one: the launcher's send of an answer blocks.
        next_request(c)
        sock.setblocking(False)
        try:
            for i in range(10_000):
                c._send_record(ch.PING, i + 1, b"\x55" * MIB, 0)
        except OSError:
            pass
        sock.setblocking(True)
        time.sleep(60)
        return 0
    if attack == "hang-request":
        next_request(c)
        time.sleep(60)
        return 0
    if attack == "shutdown-linger":
        # Answers the shutdown, then keeps the socket open and stays.
        while True:
            msg = c.receive()
            if msg is not None and msg[0] == ch.SHUTDOWN:
                c._send_record(ch.SHUTDOWN, 0, b"", ch.FLAG_REPLY)
                break
        time.sleep(60)
        return 0
    if attack == "child-holds-socket":
        # A child of the worker outlives it; with the channel socket
        # close-on-exec, the launcher still sees the worker's end of stream.
        _, _, rid, _, _ = next_request(c)
        child = subprocess.Popen(["/bin/sleep", "30"], close_fds=False)
        c.send(ch.RESPONSE, rid, str(child.pid).encode())
        os._exit(0)
    print(f"unknown attack {attack!r}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
