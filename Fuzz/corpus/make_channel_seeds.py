"""Writes seed inputs for the channel fuzz targets (keys and prologue match
ChannelFuzzing in Sources/StockadeChannel/ChannelFuzzing.swift).
Run: .venv/bin/python3 Fuzz/corpus/make_channel_seeds.py"""
import os
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "python"))
from stockade_worker.noise import CipherState, Handshake  # noqa: E402

KEY = bytes([0x42]) * 32
PROLOGUE = b"stockade/1 fuzz"


def write(target, name, data):
    os.makedirs(os.path.join(HERE, target), exist_ok=True)
    with open(os.path.join(HERE, target, name), "wb") as f:
        f.write(data)


for suite, bit in ((1, 0), (2, 0x80)):
    cs = CipherState(suite, KEY)
    stream = b""
    for mtype, rid, payload in ((1, 0, b"hello"), (2, 1, b"x" * 100), (6, 0, b""), (7, 0, b"")):
        header = struct.pack(">IB", 12 + len(payload) + 16, mtype)
        stream += header + cs.encrypt_with_ad(header, struct.pack(">BBHQ", mtype, 0, 0, rid) + payload)
    write("channel-record", f"stream-{suite}", bytes([bit | 0]) + stream)
    bulk = struct.pack(">B3xIQ", 2, 1 << 20, 5000) + bytes(32)
    write("channel-record", f"body-bulk-{suite}", bytes([bit | 1, 7]) + struct.pack(">BBHQ", 8, 0, 0, 3) + bulk)
    write("channel-record", f"body-ping-{suite}", bytes([bit | 1, 5]) + struct.pack(">BBHQ", 6, 1, 0, 0) + b"pong")
    init = Handshake(True, suite, PROLOGUE, KEY, bytes([1]) * 32)
    resp = Handshake(False, suite, PROLOGUE, KEY, bytes([2]) * 32)
    m1 = init.write_message(b"")
    resp.read_message(m1)
    m2 = resp.write_message(b"")
    write("channel-handshake", f"first-{suite}", bytes([bit | 0]) + m1)
    write("channel-handshake", f"reply-{suite}", bytes([bit | 1]) + m2)
write("channel-record", "env", b"\x03sock=3,params=4")
params = (b"STKCHAN1" + bytes([1, 2, 1, 2]) + bytes(32) + bytes(16)
          + struct.pack(">IIQQQ", 1 << 20, 64, 256 << 20, 256 << 20, 1 << 16)
          + struct.pack(">H", 4) + b"acme" + struct.pack(">H", 3) + b"w-1")
write("channel-record", "params", b"\x02" + params)

# Mode 4: scripts for a worker writing into a live launcher channel (see
# ChannelFuzzing.liveStream): step bytes, then their operands.
HELLO = bytes([0x00, 0, 0, 0, 1])           # sealed hello, 16-byte payload
RESPONSE_1 = bytes([0x00, 2, 0, 1, 0])      # sealed response to request 1
BULK_2 = bytes([0x02, 2, 7])                # bulk response to request 2, 8 KiB, right memfd
SHUTDOWN = bytes([0x00, 6, 0, 0, 0])
for suite, bit in ((1, 0), (2, 0x80)):
    write("channel-record", f"live-{suite}", bytes([bit | 4]) + HELLO + RESPONSE_1 + BULK_2 + SHUTDOWN)
write("channel-record", "live-devnull-bytewise", bytes([4]) + HELLO + bytes([0x03 | 5 << 2]) + bytes([0xa0, 2, 0, 1, 0]))
write("channel-record", "live-own-socket", bytes([4]) + HELLO + bytes([0x40, 2, 0, 1, 0]))
write("channel-record", "live-two-memfds", bytes([4]) + HELLO + bytes([0x62, 2, 7]))
write("channel-record", "live-sparse-bulk", bytes([4]) + HELLO + bytes([0x02 | 2 << 2, 2, 63]))
write("channel-record", "live-deadline", bytes([0x44]) + HELLO + bytes([0x03 | 7 << 2]) + RESPONSE_1)
# A 256 KiB bulk record of the wrong size with /dev/null in place of its
# memfd: the worker seals it on several threads, which starts libdispatch's
# pool (and its event loop descriptors) in the middle of the input.
write("channel-record", "live-bulk-devnull-256k", bytes([4, 0x2e, 3, 0xfd]))
