"""An independent worker for the channel tests: the Noise side comes from the
`noiseprotocol` package, not from stockade_worker. It speaks the framing of
docs/PROTOCOL.md (records only, no bulk) and answers each request with the
payload reversed, each ping, and a shutdown.

Usage (started by the Swift tests with the channel fds inherited):
    STOCKADE_CHANNEL=sock=3,params=4 python3 noiseprotocol_peer.py
"""
import fcntl
import os
import socket
import struct
import sys

from noise.connection import NoiseConnection

SUITES = {1: b"Noise_NNpsk0_25519_AESGCM_SHA256", 2: b"Noise_NNpsk0_25519_ChaChaPoly_SHA256"}


def main() -> int:
    fields = dict(f.split("=") for f in os.environ["STOCKADE_CHANNEL"].split(","))
    sock_fd, params_fd = int(fields["sock"]), int(fields["params"])
    assert fcntl.fcntl(params_fd, 1034) & 0xF == 0xF, "params memfd not sealed"
    data = os.pread(params_fd, 4096, 0)
    os.close(params_fd)
    n_suites = data[9]
    off = 10
    suites = list(data[off:off + n_suites]); off += n_suites
    psk = data[off:off + 32]; off += 32
    nonce = data[off:off + 16]; off += 16
    max_record, _max_req = struct.unpack_from(">II", data, off); off += 8
    _max_bytes, _max_bulk, rekey = struct.unpack_from(">QQQ", data, off); off += 24
    names = []
    for _ in range(2):
        (n,) = struct.unpack_from(">H", data, off); off += 2
        names.append(data[off:off + n]); off += n
    prologue = b"".join(struct.pack(">H", len(x)) + x for x in (b"stockade/1", names[0], names[1], nonce))
    suite = suites[0]

    sock = socket.socket(fileno=sock_fd)
    rfile = sock.makefile("rb")

    def read_exact(n):
        out = rfile.read(n)
        if out is None or len(out) != n:
            raise EOFError
        return out

    def frame(data):
        sock.sendall(struct.pack(">H", len(data)) + data)

    def read_frame():
        (n,) = struct.unpack(">H", read_exact(2))
        return read_exact(n)

    frame(bytes([1, suite]))
    conn = NoiseConnection.from_name(SUITES[suite])
    conn.set_as_responder()
    conn.set_psks(psk=psk)
    conn.set_prologue(prologue)
    conn.start_handshake()
    conn.read_message(read_frame())
    frame(conn.write_message(b""))
    assert conn.handshake_finished
    tx = conn.noise_protocol.cipher_state_encrypt
    rx = conn.noise_protocol.cipher_state_decrypt
    counts = {"tx": 0, "rx": 0}

    def send(mtype, rid, payload, flags=0):
        header = struct.pack(">IB", 12 + len(payload) + 16, mtype)
        body = struct.pack(">BBHQ", mtype, flags, 0, rid) + payload
        sock.sendall(header + tx.encrypt_with_ad(header, body))
        counts["tx"] += 1
        if counts["tx"] % rekey == 0:
            tx.rekey()

    def receive():
        try:
            header = read_exact(5)
        except EOFError:
            return None
        length, mtype = struct.unpack(">IB", header)
        assert 28 <= length <= 28 + max_record
        body = rx.decrypt_with_ad(header, read_exact(length))
        counts["rx"] += 1
        if counts["rx"] % rekey == 0:
            rx.rekey()
        btype, flags, _res, rid = struct.unpack_from(">BBHQ", body)
        assert btype == mtype
        return mtype, flags, rid, body[12:]

    send(1, 0, b"noiseprotocol-peer/1")
    hello = receive()
    assert hello[0] == 1
    while True:
        msg = receive()
        if msg is None:
            return 0
        mtype, flags, rid, payload = msg
        if mtype == 2:
            send(3, rid, payload[::-1])
        elif mtype == 6 and not flags & 1:
            send(6, rid, payload, 1)
        elif mtype == 7:
            send(7, 0, b"", 1)
            sock.close()
            return 0


if __name__ == "__main__":
    sys.exit(main())
