"""The SDK's channel (serve) against a launcher written here from the wire
contract (docs/PROTOCOL.md) on the SDK's own Noise handshake, in one process:
records and bulk transfers both ways, bytes and views handlers, numpy arrays
in and out, the reuse of the record buffer, tampered records and limits. The
Swift launcher against the same worker is in Tests/ChannelTests."""
import fcntl
import logging
import os
import socket
import struct
import threading
import unittest

import numpy as np
from cryptography.exceptions import InvalidTag

from stockade_worker import channel as ch
from stockade_worker import noise

MIB = 1 << 20


def params_memfd(suite, psk, nonce, max_record, max_bulk, rekey, tenant=b"t", worker=b"w") -> int:
    data = ch.MAGIC + bytes([1, 1, suite]) + psk + nonce
    data += struct.pack(">II", max_record, 64) + struct.pack(">QQQ", 256 * MIB, max_bulk, rekey)
    for name in (tenant, worker):
        data += struct.pack(">H", len(name)) + name
    fd = os.memfd_create("params", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.write(fd, data)
    fcntl.fcntl(fd, ch.F_ADD_SEALS, ch.SEALS_IMMUTABLE)
    return fd


class Launcher:
    """The launcher's end: starts serve(handler) on a thread and talks to it."""

    def __init__(self, handler, suite=noise.AESGCM_SUITE, views=False, max_record=MIB, max_bulk=256 * MIB, rekey=1000,
                 idle=None):
        self.suite, self.rekey_interval = suite, rekey
        self.sock, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        psk, nonce = os.urandom(32), os.urandom(16)
        fd = params_memfd(suite, psk, nonce, max_record, max_bulk, rekey)
        environ = {ch.ENV: f"sock={worker_end.detach()},params={fd}"}
        self.result = None
        self.error = None

        def run():
            try:
                self.result = ch.serve(handler, environ, idle=idle, views=views)
            except BaseException as e:  # the test reads it
                self.error = e

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        self._handshake(psk, ch.Params([suite], psk, nonce, max_record, 64, 256 * MIB, max_bulk, rekey, "t", "w").prologue)
        self.sent = self.received = 0
        self.next_id = 1
        hello = self.read_record()
        assert hello[0] == ch.HELLO and hello[3] == ch.AGENT, hello
        self.write_record(ch.HELLO, 0, b"test-launcher")

    def _exact(self, n: int) -> bytes:
        data = self.sock.recv(n, socket.MSG_WAITALL)
        if len(data) != n:
            raise EOFError(f"{len(data)} of {n} bytes")
        return data

    def _handshake(self, psk, prologue) -> None:
        assert self._exact(2) == struct.pack(">H", 2)
        assert self._exact(2) == bytes([1, self.suite])
        hs = noise.Handshake(True, self.suite, prologue, psk)
        msg = hs.write_message(b"")
        self.sock.sendall(struct.pack(">H", len(msg)) + msg)
        (n,) = struct.unpack(">H", self._exact(2))
        hs.read_message(self._exact(n))
        self.tx, self.rx = hs.split()

    def seal(self, mtype, request_id, payload, flags=0) -> bytes:
        body = struct.pack(">BBHQ", mtype, flags, 0, request_id) + bytes(payload)
        header = struct.pack(">IB", len(body) + ch.TAG, mtype)
        record = header + self.tx.encrypt_with_ad(header, body)
        self.sent += 1
        if self.sent % self.rekey_interval == 0:
            self.tx.rekey()
        return record

    def write_record(self, mtype, request_id, payload, flags=0, fds=()) -> None:
        record = self.seal(mtype, request_id, payload, flags)
        if fds:
            self.sock.sendmsg([record], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack(f"{len(fds)}i", *fds))])
        else:
            self.sock.sendall(record)

    def read_record(self):
        """(type, flags, request id, payload, fds)."""
        header, anc, _, _ = self.sock.recvmsg(5, socket.CMSG_SPACE(4), socket.MSG_WAITALL)
        if len(header) < 5:
            raise EOFError("channel ended")
        fds = [struct.unpack("i", data[:4])[0] for _, _, data in anc]
        length, mtype = struct.unpack(">IB", header)
        body = self.rx.decrypt_with_ad(header, self._exact(length))
        self.received += 1
        if self.received % self.rekey_interval == 0:
            self.rx.rekey()
        btype, flags, _, request_id = struct.unpack_from(">BBHQ", body)
        assert btype == mtype
        return mtype, flags, request_id, body[12:], fds

    def bulk(self, payload: bytes, request_id: int, tamper_chunk=None, chunk=ch.BULK_CHUNK):
        """A sealed memfd with `payload` and its descriptor record's payload."""
        key = os.urandom(32)
        aead = noise.make_aead(self.suite, key)
        fd = os.memfd_create("bulk", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        total = len(payload)
        for i, s in enumerate(range(0, total, chunk)):
            nonce = bytes(4) + noise.NONCE_COUNTER[self.suite].pack(i)
            sealed = bytearray(aead.encrypt(nonce, payload[s:s + chunk], struct.pack(">QQQ", request_id, total, i)))
            if i == tamper_chunk:
                sealed[7] ^= 1
            os.pwrite(fd, sealed, s + i * ch.TAG)
        fcntl.fcntl(fd, ch.F_ADD_SEALS, ch.SEALS_IMMUTABLE)
        return fd, struct.pack(">B3xIQ", ch.REQUEST, chunk, total) + key

    def request(self, payload) -> bytes:
        request_id, self.next_id = self.next_id, self.next_id + 1
        payload = bytes(payload)
        if len(payload) > MIB:
            fd, desc = self.bulk(payload, request_id)
            self.write_record(ch.BULK, request_id, desc, fds=[fd])
            os.close(fd)
        else:
            self.write_record(ch.REQUEST, request_id, payload)
        mtype, _, rid, body, fds = self.read_record()
        assert rid == request_id
        if mtype == ch.ERROR:
            raise RuntimeError(body.decode())
        if mtype == ch.RESPONSE:
            return body
        assert mtype == ch.BULK and len(fds) == 1, (mtype, fds)
        return self.open_bulk(body, request_id, fds[0])

    def open_bulk(self, desc: bytes, request_id: int, fd: int) -> bytes:
        inner, chunk, total = struct.unpack_from(">B3xIQ", desc)
        assert inner == ch.RESPONSE
        aead = noise.make_aead(self.suite, desc[16:48])
        out = bytearray()
        try:
            for i, s in enumerate(range(0, total, chunk)):
                n = min(chunk, total - s)
                nonce = bytes(4) + noise.NONCE_COUNTER[self.suite].pack(i)
                out += aead.decrypt(nonce, os.pread(fd, n + ch.TAG, s + i * ch.TAG), struct.pack(">QQQ", request_id, total, i))
        finally:
            os.close(fd)
        return bytes(out)

    def shutdown(self) -> int:
        self.write_record(ch.SHUTDOWN, 0, b"")
        assert self.read_record()[:2] == (ch.SHUTDOWN, ch.FLAG_REPLY)
        self.thread.join(10)
        self.sock.close()
        if self.error is not None:
            raise self.error
        return self.result

    def ended_with(self, kind: str) -> ch.ChannelViolation:
        """Waits for the worker to close the channel on a violation of `kind`."""
        self.thread.join(10)
        assert not self.thread.is_alive()
        with self.assertEOF():
            pass
        assert isinstance(self.error, ch.ChannelViolation), self.error
        assert self.error.kind == kind, self.error
        return self.error

    def assertEOF(self):
        test = self

        class Closed:
            def __enter__(self):
                return None

            def __exit__(self, *exc):
                while True:
                    try:
                        data = test.sock.recv(1 << 16)
                    except ConnectionResetError:
                        break
                    if not data:
                        break
                test.sock.close()
                return False

        return Closed()


def pattern(n: int, seed: int = 0) -> bytes:
    return bytes((i * 7 + seed) & 0xFF for i in range(min(n, 4096))) * (n // 4096) + \
        bytes((i * 7 + seed) & 0xFF for i in range(n % 4096))


def memfds(name: str) -> list:
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith(f"/memfd:{name} "):
                out.append(fd)
        except OSError:
            pass
    return out


def reverse(payload):
    return bytes(payload)[::-1]


class Records(unittest.TestCase):
    def test_both_suites_every_size_with_rekeys(self):
        for suite in (noise.AESGCM_SUITE, noise.CHACHAPOLY_SUITE):
            with self.subTest(suite=suite):
                seen = []

                def handler(payload):
                    seen.append(type(payload))
                    return payload[::-1]

                launcher = Launcher(handler, suite=suite, rekey=3)
                # Either side of the small-record boundary too.
                edges = (ch.SMALL_RECORD - ch.BODY_HEADER, ch.SMALL_RECORD - ch.BODY_HEADER + 1)
                for size in (0, 1, 64, 65536, 200_000, MIB) + edges:
                    data = pattern(size, size & 0xFF)
                    self.assertEqual(launcher.request(data), data[::-1], size)
                self.assertEqual(launcher.shutdown(), 0)
                self.assertEqual(set(seen), {bytes})

    def test_record_buffers_grow_and_trim(self):
        launcher = Launcher(reverse)
        self.assertEqual(launcher.request(pattern(MIB)), pattern(MIB)[::-1])
        self.assertEqual(launcher.request(b"small"), b"llams")
        launcher.shutdown()

    def test_ping_is_answered_with_its_payload(self):
        launcher = Launcher(reverse)
        launcher.write_record(ch.PING, 77, b"are you there")
        self.assertEqual(launcher.read_record()[:4], (ch.PING, ch.FLAG_REPLY, 77, b"are you there"))
        launcher.shutdown()

    def test_without_the_into_methods(self):
        # cryptography before 47 (Debian's 38) has no encrypt_into/decrypt_into.
        saved = noise.HAS_INTO
        noise.HAS_INTO = False
        try:
            launcher = Launcher(reverse, rekey=2)
            for size in (0, 64, MIB, 3 * MIB + 5):
                data = pattern(size)
                self.assertEqual(launcher.request(data), data[::-1], size)
            launcher.shutdown()
        finally:
            noise.HAS_INTO = saved


class Views(unittest.TestCase):
    def test_views_handler_gets_readonly_views_and_returns_arrays(self):
        seen = []

        def handler(payload):
            seen.append((type(payload), payload.readonly))
            values = np.frombuffer(payload, dtype=np.float32)
            self.assertFalse(values.flags.owndata)
            return values * 2

        launcher = Launcher(handler, views=True)
        for count in (16, 65536, 3 * MIB // 4 + 3):
            values = np.arange(count, dtype=np.float32)
            got = np.frombuffer(launcher.request(values.tobytes()), dtype=np.float32)
            np.testing.assert_array_equal(got, values * 2)
        launcher.shutdown()
        self.assertEqual(set(seen), {(memoryview, True)})

    def test_a_view_returned_as_is_is_echoed(self):
        launcher = Launcher(lambda payload: payload, views=True)
        for size in (5, MIB, 5 * MIB + 1):
            data = pattern(size, 3)
            self.assertEqual(launcher.request(data), data, size)
        launcher.shutdown()

    def test_kept_arrays_and_slices_keep_their_data(self):
        # The record buffer is reused only when nothing of the handler's
        # still points into it.
        kept = []

        def handler(payload):
            if payload[0] == 1:
                kept.append(np.frombuffer(payload, dtype=np.uint8))
            elif payload[0] == 2:
                kept.append(payload[1:9])
            return b"ok"

        launcher = Launcher(handler, views=True)
        # Past SMALL_RECORD: opened into the reused body buffer.
        first = b"\x01" + bytes(range(1, 256)) * 100
        second = b"\x02" + b"slice-kept" * 3000
        self.assertGreater(min(len(first), len(second)), ch.SMALL_RECORD)
        launcher.request(first)
        launcher.request(second)
        for i in range(5):
            launcher.request(bytes([3]) + bytes([0xEE]) * (ch.SMALL_RECORD + 1000 + i))
        launcher.shutdown()
        self.assertEqual(kept[0].tobytes(), first)
        self.assertEqual(bytes(kept[1]), second[1:9])

    def test_an_idle_worker_trims_its_buffers_and_kept_data_stays(self):
        kept, idled = [], threading.Event()

        def handler(payload):
            kept.append(np.frombuffer(payload, dtype=np.uint8)[:4])
            return payload[:8]

        launcher = Launcher(handler, views=True, idle=idled.set)
        first = b"\xAA" * (2 * ch.MIN_BUFFER)
        self.assertEqual(launcher.request(first), first[:8])
        self.assertTrue(idled.wait(5), "idle() never ran")
        for i in range(3):
            data = bytes([i]) * (3 * ch.SMALL_RECORD)
            self.assertEqual(launcher.request(data), data[:8])
        launcher.shutdown()
        self.assertEqual([a.tobytes() for a in kept], [b"\xAA" * 4] + [bytes([i]) * 4 for i in range(3)])

    def test_the_payload_object_itself_is_released(self):
        kept = []
        launcher = Launcher(lambda payload: kept.append(payload) or b"ok", views=True)
        launcher.request(b"some payload")
        launcher.request(bytes(100_000))
        launcher.request(b"another one")
        launcher.shutdown()
        for payload in kept:
            with self.assertRaises(ValueError):
                bytes(payload)

    def test_what_is_made_from_a_bulk_payload_is_the_handlers_to_keep(self):
        kept = []

        def handler(payload):
            kept.append(payload[:])
            return b"ok"

        launcher = Launcher(handler, views=True)
        big = pattern(3 * MIB + 17, 9)
        launcher.request(big)
        launcher.request(b"small after it")
        self.assertEqual(memfds("bulk"), [], "the memfd read is closed once the answer is out")
        launcher.shutdown()
        self.assertEqual(bytes(kept[0]), big)
        self.assertTrue(kept[0].readonly)

    def test_noncontiguous_and_multidimensional_arrays(self):
        grid = np.arange(64 * 1024, dtype=np.int32).reshape(256, 256)
        answers = {b"2d": grid, b"strided": grid[:, ::2], b"bigendian": grid.astype(">i4")}
        launcher = Launcher(lambda payload: answers[bytes(payload)], views=True)
        self.assertEqual(launcher.request(b"2d"), grid.tobytes())
        self.assertEqual(launcher.request(b"strided"), grid[:, ::2].tobytes())
        self.assertEqual(launcher.request(b"bigendian"), grid.astype(">i4").tobytes())
        launcher.shutdown()


class Violations(unittest.TestCase):
    def test_tampered_record_closes_with_a_logged_reason(self):
        launcher = Launcher(reverse)
        self.assertEqual(launcher.request(b"fine"), b"enif")
        record = bytearray(launcher.seal(ch.REQUEST, 9, pattern(70000)))
        record[5 + 12 + 40000] ^= 0x10
        with self.assertLogs("stockade_worker", logging.ERROR) as logs:
            launcher.sock.sendall(record)
            violation = launcher.ended_with("bad-tag")
        self.assertIn("failed authentication", str(violation))
        self.assertIn("channel violation; closing", logs.output[0])

    def test_tampered_large_record(self):
        launcher = Launcher(reverse)
        record = bytearray(launcher.seal(ch.REQUEST, 1, pattern(MIB)))
        record[-3] ^= 0x01
        with self.assertLogs("stockade_worker", logging.ERROR):
            launcher.sock.sendall(record)
            violation = launcher.ended_with("bad-tag")
        self.assertIn("record 1 failed authentication", str(violation))

    def test_tampered_bulk_chunk_names_the_chunk(self):
        launcher = Launcher(reverse, views=True)
        fd, desc = launcher.bulk(pattern(6 * MIB), 5, tamper_chunk=4)
        with self.assertLogs("stockade_worker", logging.ERROR):
            launcher.write_record(ch.BULK, 5, desc, fds=[fd])
            os.close(fd)
            violation = launcher.ended_with("bad-tag")
        self.assertIn("bulk chunk 4 failed authentication", str(violation))

    def test_record_over_the_limit(self):
        launcher = Launcher(reverse, max_record=4096)
        with self.assertLogs("stockade_worker", logging.ERROR):
            launcher.sock.sendall(launcher.seal(ch.REQUEST, 1, bytes(4097)))
            launcher.ended_with("oversized")

    def test_bulk_over_the_limit(self):
        launcher = Launcher(reverse, max_bulk=2 * MIB)
        fd, desc = launcher.bulk(pattern(2 * MIB + 1), 1)
        with self.assertLogs("stockade_worker", logging.ERROR):
            launcher.write_record(ch.BULK, 1, desc, fds=[fd])
            os.close(fd)
            launcher.ended_with("oversized")

    def test_response_over_the_bulk_limit_becomes_an_error(self):
        launcher = Launcher(lambda payload: bytes(3 * MIB), max_bulk=2 * MIB)
        with self.assertRaisesRegex(RuntimeError, "exceeds the channel's limits"):
            launcher.request(b"x")
        launcher.shutdown()


class Helpers(unittest.TestCase):
    def test_byte_view(self):
        self.assertEqual(bytes(ch.byte_view(b"abc")), b"abc")
        self.assertEqual(bytes(ch.byte_view([1, 2])), b"\x01\x02")
        arr = np.arange(6, dtype=np.uint16).reshape(2, 3)
        view = ch.byte_view(arr)
        self.assertEqual((view.format, view.ndim, bytes(view)), ("B", 1, arr.tobytes()))

    def test_scratch_reclaim_keeps_a_buffer_still_in_use(self):
        scratch = ch._Scratch(1 << 20)
        part = scratch.take(100)[10:20]
        part[:] = b"0123456789"
        before = scratch.data
        scratch.reclaim()
        self.assertIsNot(scratch.data, before)
        scratch.take(100)[:] = bytes(100)
        self.assertEqual(bytes(part), b"0123456789")
        del part
        kept = scratch.data
        scratch.reclaim()
        self.assertIs(scratch.data, kept)

    def test_aead_into_matches_the_one_shot_calls(self):
        for suite in (noise.AESGCM_SUITE, noise.CHACHAPOLY_SUITE):
            aead = noise.make_aead(suite, bytes(range(32)))
            nonce, ad, data = bytes(12), b"ad", pattern(5000)
            out = bytearray(len(data) + noise.TAG)
            noise.aead_encrypt_into(aead, nonce, data, ad, memoryview(out))
            self.assertEqual(bytes(out), aead.encrypt(nonce, data, ad))
            back = bytearray(len(data))
            noise.aead_decrypt_into(aead, nonce, out, ad, memoryview(back))
            self.assertEqual(bytes(back), data)
            out[0] ^= 1
            with self.assertRaises(InvalidTag):
                noise.aead_decrypt_into(aead, nonce, out, ad, memoryview(back))


if __name__ == "__main__":
    unittest.main()
