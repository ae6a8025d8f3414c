"""Unit tests of the SDK's bootstrap parsing (unittest; pytest runs them too).
The end-to-end tests against the Swift launcher are in Tests/ChannelTests."""
import fcntl
import os
import struct
import unittest

from stockade_worker import noise
from stockade_worker.channel import (
    RESPONSE, SEALS_IMMUTABLE, Channel, ChannelViolation, F_ADD_SEALS, parse_env, parse_params, read_params)

PARAMS = (b"STKCHAN1" + bytes([1, 2, 1, 2]) + bytes(range(32)) + bytes(16)
          + struct.pack(">IIQQQ", 1 << 20, 64, 256 << 20, 256 << 20, 1 << 16)
          + struct.pack(">H", 4) + b"acme" + struct.pack(">H", 3) + b"w-1")


def memfd(data: bytes, seal: bool) -> int:
    fd = os.memfd_create("stockade-channel", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.write(fd, data)
    if seal:
        fcntl.fcntl(fd, F_ADD_SEALS, SEALS_IMMUTABLE)
    return fd


def is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False


class Bootstrap(unittest.TestCase):
    def test_env(self):
        self.assertEqual(parse_env("sock=3,params=4"), (3, 4))
        for bad in ["", "sock=3", "sock=3,params=3", "sock=3,params=4,x=1", "sock=a,params=4", "sock=3,sock=4"]:
            with self.assertRaises(ValueError, msg=bad):
                parse_env(bad)

    def test_params(self):
        p = parse_params(PARAMS)
        self.assertEqual((p.tenant, p.worker, p.suites, p.psk), ("acme", "w-1", [1, 2], bytes(range(32))))
        for cut in range(len(PARAMS)):
            with self.assertRaises(ChannelViolation):
                parse_params(PARAMS[:cut])
        with self.assertRaises(ChannelViolation):
            parse_params(PARAMS + b"\x00")

    def test_sealed_params_are_read_and_closed(self):
        fd = memfd(PARAMS, seal=True)
        self.assertEqual(read_params(fd).tenant, "acme")
        self.assertFalse(is_open(fd))

    def test_unsealed_params_are_refused_and_closed(self):
        fd = memfd(PARAMS, seal=False)
        with self.assertRaises(ChannelViolation) as ctx:
            read_params(fd)
        self.assertEqual(ctx.exception.kind, "unsealed-memfd")
        self.assertFalse(is_open(fd))

    def test_non_memfd_is_refused(self):
        r, w = os.pipe()
        os.close(w)
        with self.assertRaises(ChannelViolation):
            read_params(r)
        self.assertFalse(is_open(r))


class Hostile(unittest.TestCase):
    def test_low_order_ephemeral_is_the_sdks_own_error(self):
        # A first message whose ephemeral is the all-zero (low-order) point,
        # with a valid tag (message 1 involves no DH, so the PSK suffices).
        psk, prologue = bytes(range(32)), b"p"
        initiator = noise.Handshake(True, noise.AESGCM_SUITE, prologue, psk)
        zero = bytes(32)
        initiator.ss.mix_key_and_hash(psk)
        initiator.ss.mix_hash(zero)
        initiator.ss.mix_key(zero)
        message = zero + initiator.ss.encrypt_and_hash(b"")
        responder = noise.Handshake(False, noise.AESGCM_SUITE, prologue, psk)
        self.assertEqual(responder.read_message(message), b"")
        with self.assertRaises(noise.LowOrderPoint):
            responder.write_message(b"")
        self.assertTrue(issubclass(noise.LowOrderPoint, noise.NoiseError))

    def test_refused_answer_keeps_its_request_in_flight(self):
        # send() refuses a response over the bulk limit; the request must
        # still be in flight so that an error can answer it.
        c = Channel.__new__(Channel)
        c.closed = False
        c.params = parse_params(PARAMS)
        c.in_flight, c.bytes_in_flight = {7: 10}, 10
        with self.assertRaises(ValueError):
            c.send(RESPONSE, 7, bytes(c.params.max_bulk + 1))
        self.assertEqual((c.in_flight, c.bytes_in_flight), ({7: 10}, 10))


if __name__ == "__main__":
    unittest.main()
