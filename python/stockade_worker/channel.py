"""The worker's end of the Stockade channel (responder). See docs/PROTOCOL.md."""
from __future__ import annotations

import fcntl
import logging
import mmap
import os
import select
import socket
import stat
import struct
import threading
from dataclasses import dataclass
from typing import Callable, Optional

from cryptography.exceptions import InvalidTag

from .noise import (AESGCM_SUITE, CHACHAPOLY_SUITE, HANDSHAKE_OVERHEAD, NONCE_COUNTER, Handshake, LowOrderPoint, NoiseError,
                    aead_decrypt_into, aead_encrypt_into, make_aead)
from .errors import error_payload
from .version import PROTOCOL_VERSION

log = logging.getLogger("stockade_worker")

ENV = "STOCKADE_CHANNEL"
MAGIC = b"STKCHAN1"
PARAMS_MAX = 4096
AGENT = b"stockade-python/%d" % PROTOCOL_VERSION

HELLO, REQUEST, RESPONSE, ERROR, CANCEL, PING, SHUTDOWN, BULK = range(1, 9)
TYPE_NAMES = {1: "hello", 2: "request", 3: "response", 4: "error", 5: "cancel", 6: "ping", 7: "shutdown", 8: "bulk"}
FLAG_REPLY = 0x01
HEADER = 5
BODY_HEADER = 12
TAG = 16
RECORD_CEILING = 16 << 20
BULK_MIN_CHUNK, BULK_MAX_CHUNK, BULK_CHUNK = 4096, 16 << 20, 1 << 20

F_SEAL_SEAL, F_SEAL_SHRINK, F_SEAL_GROW, F_SEAL_WRITE = 1, 2, 4, 8
SEALS_IMMUTABLE = F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE
F_ADD_SEALS = getattr(fcntl, "F_ADD_SEALS", 1033)
F_GET_SEALS = getattr(fcntl, "F_GET_SEALS", 1034)


class ChannelViolation(Exception):
    """The peer broke the protocol; the channel is closed."""

    def __init__(self, kind: str, reason: str):
        super().__init__(f"channel violation ({kind}): {reason}")
        self.kind = kind
        self.reason = reason


@dataclass
class Params:
    suites: list
    psk: bytes
    spawn_nonce: bytes
    max_record: int
    max_requests: int
    max_bytes: int
    max_bulk: int
    rekey_interval: int
    tenant: str
    worker: str

    @property
    def prologue(self) -> bytes:
        out = b""
        for field in (b"stockade/1", self.tenant.encode(), self.worker.encode(), self.spawn_nonce):
            out += struct.pack(">H", len(field)) + field
        return out


def parse_params(data: bytes) -> Params:
    def bad(why: str) -> ChannelViolation:
        return ChannelViolation("bad-parameters", why)

    if len(data) > PARAMS_MAX:
        raise bad("params too long")
    off = 0

    def take(n: int) -> bytes:
        nonlocal off
        if off + n > len(data):
            raise bad("truncated")
        out = data[off:off + n]
        off += n
        return out

    if take(8) != MAGIC:
        raise bad("bad magic")
    if take(1) != bytes([PROTOCOL_VERSION]):
        raise bad("unsupported params version")
    count = take(1)[0]
    if not 1 <= count <= 2:
        raise bad("bad suite count")
    suites = list(take(count))
    if any(s not in (AESGCM_SUITE, CHACHAPOLY_SUITE) for s in suites) or len(set(suites)) != len(suites):
        raise bad("bad cipher suite list")
    psk = take(32)
    nonce = take(16)
    max_record, max_requests = struct.unpack(">II", take(8))
    max_bytes, max_bulk, rekey = struct.unpack(">QQQ", take(24))
    names = []
    for _ in range(2):
        (n,) = struct.unpack(">H", take(2))
        if n > 255:
            raise bad("name too long")
        try:
            names.append(take(n).decode("utf-8"))
        except UnicodeDecodeError:
            raise bad("name is not UTF-8") from None
    if off != len(data):
        raise bad("trailing bytes")
    if not 64 <= max_record <= RECORD_CEILING or not 1 <= max_requests <= 65536 or max_bytes < max_record \
            or max_bulk > (4 << 30) or rekey < 1:
        raise bad("limits out of range")
    return Params(suites, psk, nonce, max_record, max_requests, max_bytes, max_bulk, rekey, names[0], names[1])


def parse_env(value: str) -> tuple[int, int]:
    fields = {}
    for field in value.split(","):
        key, sep, num = field.partition("=")
        if not sep or key not in ("sock", "params") or key in fields or not num.isdigit():
            raise ValueError(f"malformed {ENV} field {field!r}")
        fields[key] = int(num)
    if set(fields) != {"sock", "params"} or fields["sock"] == fields["params"]:
        raise ValueError(f"{ENV} must be sock=N,params=M")
    return fields["sock"], fields["params"]


def read_params(fd: int) -> Params:
    """Checks the params fd is a fully sealed memfd, reads it, and closes it."""
    try:
        try:
            seals = fcntl.fcntl(fd, F_GET_SEALS)
        except OSError as e:
            raise ChannelViolation("unsealed-memfd", f"params fd {fd} is not a memfd ({e})") from None
        if seals & SEALS_IMMUTABLE != SEALS_IMMUTABLE:
            raise ChannelViolation("unsealed-memfd", f"params memfd seals are {seals:#x}; need seal,shrink,grow,write")
        size = os.fstat(fd).st_size
        if size > PARAMS_MAX:
            raise ChannelViolation("bad-parameters", f"params memfd holds {size} bytes")
        data = os.pread(fd, size, 0)
        if len(data) != size:
            raise ChannelViolation("bad-parameters", "short read of params memfd")
        return parse_params(data)
    finally:
        os.close(fd)


# The clear record header, the body header, a bulk chunk's additional data
# and the bulk descriptor (docs/PROTOCOL.md), compiled once.
_RECORD_HEADER = struct.Struct(">IB")
_BODY_HEADER = struct.Struct(">BBHQ")
_CHUNK_AD = struct.Struct(">QQQ")
_BULK_DESCRIPTOR = struct.Struct(">B3xIQ")
_ONE_FD_SPACE = socket.CMSG_SPACE(4)

# Record buffers start this small and grow to what the records need, at most
# the record limit; an idle worker gives them back (Channel.trim).
MIN_BUFFER = 64 << 10
# Records with bodies up to this size are sealed and opened by the AEAD calls
# that return new bytes; larger ones into the reused buffers.
SMALL_RECORD = 16 << 10
# A bulk transfer is split across threads only when each gets this many chunks.
MIN_CHUNKS_PER_THREAD = 4
# A bulk payload this large asks for transparent huge pages: 512 times fewer
# page faults while it is written.
HUGE_PAGE_HINT = 2 << 20


class _Scratch:
    """A buffer reused from record to record; grows, never past `limit`."""

    __slots__ = ("data", "view", "limit")

    def __init__(self, limit: int):
        self.limit = limit
        self.data = bytearray(0)
        self.view = memoryview(self.data)

    def take(self, size: int) -> memoryview:
        """A writable view of the first `size` bytes."""
        if size > len(self.data):
            self.data = bytearray(max(size, min(max(2 * len(self.data), MIN_BUFFER), self.limit)))
            self.view = memoryview(self.data)
        return self.view[:size]

    def reclaim(self) -> None:
        """Keeps the buffer for the next record unless something still holds
        a view of it (a views-mode handler that kept its payload or an array
        on it): then the next record gets a new buffer and the kept data
        stays as it was."""
        try:
            self.view.release()
            # A bytearray cannot change size while a view of it is alive;
            # shrinking by one byte and growing back moves nothing.
            if self.data:
                self.data.pop()
                self.data.append(0)
        except BufferError:
            self.data = bytearray(0)
        self.view = memoryview(self.data)

    def drop(self) -> None:
        """Lets go of the buffer (whatever still uses it keeps it)."""
        self.data = bytearray(0)
        self.view = memoryview(self.data)


def byte_view(data) -> memoryview:
    """`data` (bytes, bytearray, memoryview, a numpy array or any other
    buffer) as a flat view of unsigned bytes, without a copy when it is
    C-contiguous; anything else is copied once, in C order."""
    try:
        view = memoryview(data)
    except TypeError:
        return memoryview(bytes(data))
    if view.ndim == 1 and view.format == "B" and view.c_contiguous:
        return view
    if view.c_contiguous:
        try:
            return view.cast("B")
        except (TypeError, ValueError):
            pass
    return memoryview(view.tobytes())


def _for_each_run(count: int, body: Callable[[range], None]) -> None:
    """Calls `body` with contiguous runs of range(count), one per thread
    (this one included) up to the processors this process may use, and waits
    for all of them. The AEAD calls and pwrite release the GIL, so the runs
    encrypt in parallel. No thread outlives the call (a template may fork
    after it). Raises the first error a run raised, after every run ended."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except OSError:
        cpus = 1
    threads = max(1, min(cpus, count // MIN_CHUNKS_PER_THREAD))
    if threads == 1:
        body(range(count))
        return
    errors: list = []

    def part(k: int) -> None:
        try:
            body(range(count * k // threads, count * (k + 1) // threads))
        except BaseException as e:  # handed to the caller below
            errors.append(e)

    started = []
    for k in range(1, threads):
        worker = threading.Thread(target=part, args=(k,), name="stockade-bulk", daemon=True)
        try:
            worker.start()
            started.append(worker)
        except RuntimeError:
            # No thread to be had (a pids limit): this one does that run too.
            part(k)
    part(0)
    for worker in started:
        worker.join()
    if errors:
        raise errors[0]


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while data:
        n = os.pwrite(fd, data, offset)
        data = data[n:]
        offset += n


class Channel:
    """An established channel, worker side."""

    def __init__(self, sock: socket.socket, params: Params, supported=(AESGCM_SUITE, CHACHAPOLY_SUITE)):
        self.sock = sock
        self.params = params
        self.closed = False
        self.shutdown_seen = False
        self.buf = bytearray(MIN_BUFFER)
        self._rx_view = memoryview(self.buf)
        self.start = 0
        self.end = 0
        # Decrypted record bodies, and the plaintext and wire form of records
        # sent: reused, so a record costs no allocation of its size.
        body_limit = BODY_HEADER + params.max_record + TAG
        self._body = _Scratch(body_limit)
        self._plain = _Scratch(body_limit)
        self._wire = _Scratch(HEADER + body_limit)
        self.fds: list[int] = []
        # Bulk memfds read and not yet closed (release_spent).
        self._spent: list = []
        # Whether the last payload returned is a view of the body buffer.
        self._lent = False
        # Descriptors are refused during the Noise handshake.
        self.accept_fds = False
        self.in_flight: dict[int, int] = {}
        self.bytes_in_flight = 0
        self.recv_count = 0
        self.send_count = 0
        self.peer_agent = b""
        try:
            self._handshake(supported)
        except BaseException:
            self.close()
            raise

    # -- plumbing -------------------------------------------------------

    def _send_all(self, data, fds=()) -> None:
        if not fds:
            n = self.sock.send(data)
            if n == len(data):
                return
            data = memoryview(data)[n:]
        view = memoryview(data)
        if fds:
            n = self.sock.sendmsg([view], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack(f"{len(fds)}i", *fds))])
            view = view[n:]
        send = self.sock.send
        while view:
            view = view[send(view):]

    def _fill(self, count: int, what: str, eof_ok: bool = False) -> bool:
        """Reads until `count` unread bytes are buffered."""
        while self.end - self.start < count:
            if len(self.buf) - self.start < count:
                pending = self.buf[self.start:self.end]
                if len(self.buf) < count:
                    self._rx_view.release()
                    self.buf = bytearray(max(count, 2 * len(self.buf)))
                    self._rx_view = memoryview(self.buf)
                self.buf[:len(pending)] = pending
                self.end = len(pending)
                self.start = 0
            # Room for one descriptor: a bulk record brings exactly one.
            n, anc, flags, _ = self.sock.recvmsg_into([self._rx_view[self.end:]], _ONE_FD_SPACE, socket.MSG_CMSG_CLOEXEC)
            if anc or flags & socket.MSG_CTRUNC:
                self._arrived(anc, flags)
            if n == 0:
                if self.end == self.start and eof_ok:
                    return False
                raise ChannelViolation("truncated", f"stream ended {self.end - self.start} bytes into {what}")
            self.end += n
        return True

    def _arrived(self, anc, flags: int) -> None:
        """Takes the descriptors of one message, or closes them all and raises."""
        arrived = []
        for level, kind, data in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                usable = len(data) - len(data) % 4
                arrived.extend(struct.unpack(f"{usable // 4}i", data[:usable]))
        if not arrived and not flags & socket.MSG_CTRUNC:
            return
        # Checked at once; every refused descriptor is closed before the raise.
        why = None
        if flags & socket.MSG_CTRUNC or len(arrived) > 1:
            why = "more than one descriptor in one message"
        elif not self.accept_fds:
            why = "a descriptor during the handshake"
        elif self.fds:
            why = "a second descriptor before the first was used"
        if why is not None:
            for fd in arrived:
                os.close(fd)
            raise ChannelViolation("unexpected-fds", why)
        self.fds.extend(arrived)

    def _take(self, n: int) -> bytes:
        out = bytes(self._rx_view[self.start:self.start + n])
        self.start += n
        if self.start == self.end:
            self.start = self.end = 0
        return out

    def _read_frame(self) -> bytes:
        self._fill(2, "handshake")
        (n,) = struct.unpack_from(">H", self.buf, self.start)
        if n != HANDSHAKE_OVERHEAD:
            raise ChannelViolation("malformed", f"handshake frame of {n} bytes; it is exactly {HANDSHAKE_OVERHEAD}")
        self._fill(2 + n, "handshake")
        self._take(2)
        if self.fds:
            raise ChannelViolation("unexpected-fds", "descriptors during the handshake")
        return self._take(n)

    def _write_frame(self, data: bytes) -> None:
        self._send_all(struct.pack(">H", len(data)) + data)

    def _handshake(self, supported) -> None:
        suite = next((s for s in self.params.suites if s in supported), None)
        if suite is None:
            raise ChannelViolation("bad-suite", "no offered suite is supported")
        self.suite = suite
        self._write_frame(bytes([1, suite]))
        hs = Handshake(False, suite, self.params.prologue, self.params.psk)
        try:
            if hs.read_message(self._read_frame()) != b"":
                raise ChannelViolation("malformed", "unexpected handshake payload")
            reply = hs.write_message(b"")
        except LowOrderPoint as e:
            raise ChannelViolation("malformed", str(e)) from None
        except NoiseError as e:
            raise ChannelViolation("bad-tag", str(e)) from None
        # The PSK is not needed again; drop this reference to it.
        self.params.psk = b""
        self._write_frame(reply)
        to_worker, to_launcher = hs.split()
        self.rx, self.tx = to_worker, to_launcher
        self.handshake_hash = hs.handshake_hash
        # From the first record on, a descriptor is judged by its record: the
        # launcher may send its hello and a bulk request back to back.
        self.accept_fds = True
        self.send(HELLO, 0, AGENT)
        msg = self._receive_record()
        if msg is None or msg[0] != HELLO:
            raise ChannelViolation("unexpected-message", "first record is not hello")
        self.peer_agent = bytes(msg[3])

    def trim(self) -> None:
        """Gives back record buffers grown past MIN_BUFFER (an idle worker
        calls this; they grow again with the next large record)."""
        if self.start == self.end and len(self.buf) > MIN_BUFFER:
            self._rx_view.release()
            self.buf = bytearray(MIN_BUFFER)
            self._rx_view = memoryview(self.buf)
            self.start = self.end = 0
        for scratch in (self._body, self._plain, self._wire):
            if len(scratch.data) > MIN_BUFFER:
                scratch.drop()

    # -- records --------------------------------------------------------

    def send(self, mtype: int, request_id: int, payload, flags: int = 0) -> None:
        """Sends one message; `payload` is any bytes-like object (a numpy
        array too), read in place when it is C-contiguous."""
        if self.closed:
            raise ChannelViolation("closed", "channel is closed")
        if mtype in (RESPONSE, ERROR) and request_id not in self.in_flight:
            raise ValueError(f"no request {request_id} to answer")
        view = byte_view(payload)
        bulk = len(view) > self.params.max_record
        if bulk and mtype != RESPONSE:
            raise ValueError("payload too large for a record")
        if bulk and len(view) > self.params.max_bulk:
            raise ValueError("payload exceeds the bulk limit")
        # Only a request that is answered leaves in_flight: one refused
        # above can still get its error.
        if mtype in (RESPONSE, ERROR):
            self.bytes_in_flight -= self.in_flight.pop(request_id)
        if bulk:
            self._send_bulk(mtype, request_id, view)
        else:
            self._seal_and_send(mtype, request_id, view, flags, ())

    def _send_record(self, mtype: int, request_id: int, payload, flags: int = 0, fds=()) -> None:
        """Sends one record, unchecked."""
        self._seal_and_send(mtype, request_id, byte_view(payload), flags, fds)

    def _seal_and_send(self, mtype: int, request_id: int, payload: memoryview, flags: int, fds) -> None:
        body_length = BODY_HEADER + len(payload)
        if body_length <= SMALL_RECORD:
            header = _RECORD_HEADER.pack(body_length + TAG, mtype)
            body = _BODY_HEADER.pack(mtype, flags, 0, request_id) + payload
            self._send_all(header + self.tx.encrypt_with_ad(header, body), fds)
        else:
            # The body is put together in one reused buffer and sealed
            # straight into the record behind its header: one send, nothing
            # allocated.
            plain = self._plain.take(body_length)
            _BODY_HEADER.pack_into(plain, 0, mtype, flags, 0, request_id)
            plain[BODY_HEADER:] = payload
            size = HEADER + body_length + TAG
            wire = self._wire.take(size)
            _RECORD_HEADER.pack_into(wire, 0, body_length + TAG, mtype)
            self.tx.encrypt_into(wire[:HEADER], plain, wire[HEADER:])
            self._send_all(wire, fds)
        self.send_count += 1
        if self.send_count % self.params.rekey_interval == 0:
            self.tx.rekey()

    def _send_bulk(self, inner: int, request_id: int, payload: memoryview) -> None:
        key = os.urandom(32)
        total = len(payload)
        chunks = (total + BULK_CHUNK - 1) // BULK_CHUNK
        size = total + chunks * TAG
        counter = NONCE_COUNTER[self.suite]
        suite = self.suite
        fd = os.memfd_create("stockade-bulk", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)

        def seal(indices: range) -> None:
            # Each run has its own AEAD object, nonce, additional data and
            # staging buffer. A chunk is sealed into the staging buffer and
            # written with pwrite, not through a mapping of the memfd: whole
            # pages written that way are not zeroed first.
            aead = make_aead(suite, key)
            nonce, ad = bytearray(12), bytearray(_CHUNK_AD.size)
            staging = memoryview(bytearray(BULK_CHUNK + TAG))
            for i in indices:
                s = i * BULK_CHUNK
                n = min(BULK_CHUNK, total - s)
                counter.pack_into(nonce, 4, i)
                _CHUNK_AD.pack_into(ad, 0, request_id, total, i)
                aead_encrypt_into(aead, nonce, payload[s:s + n], ad, staging[:n + TAG])
                _pwrite_all(fd, staging[:n + TAG], s + i * TAG)

        try:
            os.ftruncate(fd, size)
            _for_each_run(chunks, seal)
            fcntl.fcntl(fd, F_ADD_SEALS, SEALS_IMMUTABLE)
            desc = _BULK_DESCRIPTOR.pack(inner, BULK_CHUNK, total) + key
            self._send_record(BULK, request_id, desc, 0, [fd])
        finally:
            os.close(fd)

    def _receive_record(self):
        """Returns (type, flags, request id, payload, via_bulk) or None at a
        clean end. The payload is bytes (a small record), or a read-only
        view: of the body buffer (a large record; reused only once no view
        of it is left) or of a bulk payload's own mapping."""
        if self._lent:
            # The body buffer holds the last large payload handed out: it is
            # reused only if no view of it is left.
            self._body.reclaim()
            self._lent = False
        if not self._fill(HEADER, "a record header", eof_ok=True):
            if self.shutdown_seen:
                self.close()
                return None
            raise ChannelViolation("closed", "the launcher closed the channel without a shutdown")
        length, mtype = _RECORD_HEADER.unpack_from(self.buf, self.start)
        if mtype not in TYPE_NAMES:
            raise ChannelViolation("malformed", f"unknown record type {mtype}")
        if length < BODY_HEADER + TAG:
            raise ChannelViolation("malformed", f"record length {length} below the minimum")
        limit = BODY_HEADER + self.params.max_record + TAG
        if length > limit:
            raise ChannelViolation("oversized", f"record length {length} exceeds the limit {limit}")
        self._fill(HEADER + length, "a record")
        start = self.start
        sealed = start + HEADER
        rx = self._rx_view
        try:
            if length - TAG <= SMALL_RECORD:
                body = self.rx.decrypt_with_ad(rx[start:sealed], rx[sealed:sealed + length])
                lent = False
            else:
                body = self._body.take(length - TAG)
                self.rx.decrypt_into(rx[start:sealed], rx[sealed:sealed + length], body)
                lent = True
        except NoiseError:
            raise ChannelViolation("bad-tag", f"record {self.recv_count} failed authentication") from None
        self.start = sealed + length
        if self.start == self.end:
            self.start = self.end = 0
        self.recv_count += 1
        if self.recv_count % self.params.rekey_interval == 0:
            self.rx.rekey()
        btype, flags, reserved, request_id = _BODY_HEADER.unpack_from(body)
        # A small body is bytes of its own; a large one's payload is a view
        # of the reused body buffer, checked before the buffer is reused.
        payload = body[BODY_HEADER:].toreadonly() if lent else body[BODY_HEADER:]
        self._lent = lent
        if btype != mtype:
            raise ChannelViolation("malformed", "body type does not match header type")
        if flags & ~(FLAG_REPLY if mtype in (PING, SHUTDOWN) else 0) or reserved:
            raise ChannelViolation("malformed", "flags or reserved bits set")
        if mtype in (REQUEST, RESPONSE, ERROR, CANCEL, BULK) and request_id == 0:
            raise ChannelViolation("malformed", "request id 0")
        if mtype in (HELLO, SHUTDOWN) and request_id != 0:
            raise ChannelViolation("malformed", "hello/shutdown with a request id")
        via_bulk = False
        if mtype == BULK:
            mtype, payload = self._receive_bulk(request_id, bytes(payload))
            self._lent = False
            via_bulk = True
        if self.fds and self.start == self.end:
            raise ChannelViolation("unexpected-fds", "descriptors arrived with no bulk record")
        self._account(mtype, flags, request_id, len(payload))
        return mtype, flags, request_id, payload, via_bulk

    def _receive_bulk(self, request_id: int, desc: bytes):
        if len(desc) != 48:
            raise ChannelViolation("malformed", "bulk descriptor length")
        inner, r0, r1, r2, chunk, total = struct.unpack_from(">BBBBIQ", desc)
        key = desc[16:48]
        if inner not in (REQUEST, RESPONSE) or r0 or r1 or r2:
            raise ChannelViolation("malformed", "bad bulk descriptor")
        if not BULK_MIN_CHUNK <= chunk <= BULK_MAX_CHUNK or not 1 <= total <= self.params.max_bulk:
            raise ChannelViolation("oversized", "bulk sizes out of range")
        # The inner message is checked before the descriptor is touched.
        if inner != REQUEST:
            raise ChannelViolation("unexpected-message", f"a worker does not accept a bulk {TYPE_NAMES[inner]}")
        self._account(inner, 0, request_id, total, commit=False)
        if not self.fds:
            raise ChannelViolation("unexpected-fds", "bulk record without a memfd")
        fd = self.fds.pop(0)
        spent = False
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise ChannelViolation("unsealed-memfd", "bulk descriptor is not a regular file")
            try:
                seals = fcntl.fcntl(fd, F_GET_SEALS)
            except OSError:
                raise ChannelViolation("unsealed-memfd", "bulk descriptor is not a memfd") from None
            need = F_SEAL_WRITE | F_SEAL_SHRINK | F_SEAL_GROW
            if seals & need != need:
                raise ChannelViolation("unsealed-memfd", f"bulk memfd seals {seals:#x}")
            chunks = (total + chunk - 1) // chunk
            size = total + chunks * TAG
            if info.st_size != size:
                raise ChannelViolation("malformed", "bulk memfd has the wrong size")
            if info.st_blocks * 512 < size:
                raise ChannelViolation("malformed", f"bulk memfd of {size} bytes has holes")
            # The plaintext gets a private anonymous mapping of its own: its
            # pages are zero-filled as they are first written (no memset
            # ahead of the cipher) and given back the moment the last view
            # of it goes.
            out = mmap.mmap(-1, total, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
            if total >= HUGE_PAGE_HINT and hasattr(mmap, "MADV_HUGEPAGE"):
                try:
                    out.madvise(mmap.MADV_HUGEPAGE)
                except OSError:
                    pass
            plain = memoryview(out)
            failed: list[int] = []
            counter = NONCE_COUNTER[self.suite]
            suite = self.suite
            m = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ)
            try:
                sealed = memoryview(m)

                def open_chunks(indices: range) -> None:
                    aead = make_aead(suite, key)
                    nonce, ad = bytearray(12), bytearray(_CHUNK_AD.size)
                    for i in indices:
                        s = i * chunk
                        n = min(chunk, total - s)
                        counter.pack_into(nonce, 4, i)
                        _CHUNK_AD.pack_into(ad, 0, request_id, total, i)
                        try:
                            aead_decrypt_into(aead, nonce, sealed[s + i * TAG:s + i * TAG + n + TAG], ad, plain[s:s + n])
                        except InvalidTag:
                            failed.append(i)
                            return

                try:
                    _for_each_run(chunks, open_chunks)
                finally:
                    # The mapping closes only once no view of it is left.
                    open_chunks = None
                    sealed.release()
                if failed:
                    raise ChannelViolation("bad-tag", f"bulk chunk {min(failed)} failed authentication")
                # The sender's memfd is unmapped and closed once the answer
                # is on its way (release_spent): tearing down a large mapping
                # and freeing its pages is then off the round trip's path.
                self._spent.append((m, fd))
                spent = True
            finally:
                if not spent:
                    m.close()
            return inner, plain.toreadonly()
        finally:
            if not spent:
                os.close(fd)

    def release_spent(self) -> None:
        """Unmaps and closes the bulk memfds already read."""
        while self._spent:
            m, fd = self._spent.pop()
            try:
                m.close()
            finally:
                os.close(fd)

    def _account(self, mtype: int, flags: int, request_id: int, size: int, commit: bool = True) -> None:
        if mtype == HELLO:
            if self.recv_count != 1:
                raise ChannelViolation("unexpected-message", "a second hello")
            return
        if self.recv_count == 1:
            raise ChannelViolation("unexpected-message", "first record is not hello")
        if mtype == REQUEST:
            if request_id in self.in_flight:
                raise ChannelViolation("unexpected-message", f"request id {request_id} already in flight")
            if len(self.in_flight) >= self.params.max_requests:
                raise ChannelViolation("credit-exceeded", "too many requests in flight")
            if size > self.params.max_bytes - self.bytes_in_flight:
                raise ChannelViolation("credit-exceeded", "too many request bytes in flight")
            if commit:
                self.in_flight[request_id] = size
                self.bytes_in_flight += size
        elif mtype == SHUTDOWN:
            if commit:
                self.shutdown_seen = True
        elif mtype == PING and flags & FLAG_REPLY:
            # This SDK sends no pings, so no reply is ever expected.
            raise ChannelViolation("unexpected-message", f"a ping reply for id {request_id}, which no ping is waiting for")
        elif mtype not in (CANCEL, PING):
            raise ChannelViolation("unexpected-message", f"a worker does not accept {TYPE_NAMES[mtype]}")

    def receive(self, views: bool = False):
        """The next message as (type, flags, request id, payload, via_bulk);
        pings are answered here. The payload is bytes; with views=True it is
        a read-only memoryview instead, without a copy: of a bulk payload's
        own mapping, or of the buffer a large record was opened into, which
        is reused for a later record only once no view of it is left."""
        self.release_spent()
        while True:
            msg = self._receive_record()
            if msg is None:
                return None
            if msg[0] == PING and not msg[1] & FLAG_REPLY:
                self._send_record(PING, msg[2], msg[3], FLAG_REPLY)
                msg = None
                continue
            payload = msg[3]
            if views:
                if type(payload) is bytes:
                    payload = memoryview(payload)
            elif type(payload) is not bytes:
                payload = bytes(payload)
            return msg[0], msg[1], msg[2], payload, msg[4]

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            for fd in self.fds:
                os.close(fd)
            self.fds = []
            self.release_spent()
            self.sock.close()


def connect(environ=None, supported=(AESGCM_SUITE, CHACHAPOLY_SUITE)) -> Channel:
    """Reads STOCKADE_CHANNEL, checks and closes the params memfd, and answers the handshake."""
    env = os.environ if environ is None else environ
    value = env.get(ENV)
    if value is None:
        raise RuntimeError(f"{ENV} is not set; this worker must be started by stockade")
    sock_fd, params_fd = parse_env(value)
    params = read_params(params_fd)
    sock = socket.socket(fileno=sock_fd)
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
        sock.detach()
        raise ChannelViolation("bad-parameters", f"fd {sock_fd} is not a unix stream socket")
    # Nothing this worker starts inherits the channel: a child holding it
    # would keep the launcher from seeing this worker's end of stream.
    sock.set_inheritable(False)
    return Channel(sock, params, supported)


IDLE_AFTER = 0.1


def _answer(channel: Channel, handler: Callable, request_id: int, payload) -> None:
    """Runs the handler on one request and sends its answer; returns with
    nothing of the handler's left referenced."""
    try:
        result = byte_view(handler(payload))
    except Exception as e:  # the handler's failure goes back as an error message
        channel.send(ERROR, request_id, error_payload(e)[:min(4096, channel.params.max_record)])
        return
    if len(result) > max(channel.params.max_record, channel.params.max_bulk):
        channel.send(ERROR, request_id, b"response exceeds the channel's limits")
    else:
        channel.send(RESPONSE, request_id, result)


def serve(handler: Callable, environ=None, idle: Optional[Callable[[], None]] = None, views: bool = False) -> int:
    """Serves requests until the launcher shuts the channel down.

    handler(payload) returns the response: bytes, or any bytes-like object
    (bytearray, memoryview, a numpy array), sent without a copy when it is
    C-contiguous. An exception becomes an error message. Returns 0 after an
    orderly shutdown; a protocol violation is logged, closes the channel and
    raises ChannelViolation. idle(), when given, runs once whenever no
    request has come for IDLE_AFTER seconds.

    The payload is bytes. With views=True it is a read-only memoryview
    instead, never copied: numpy.frombuffer(payload, dtype) is an array on
    the decrypted bytes themselves, and an array or view made from it may be
    kept: a large record is opened into a buffer the channel reuses only
    once nothing made from it is left (it checks before each record). The
    payload object itself is released after the answer is sent: keep a
    copy (bytes(payload)) or an array, not it.
    """
    channel = connect(environ)
    try:
        while True:
            if idle is not None and channel.start == channel.end and not channel.fds \
                    and not select.select([channel.sock], [], [], IDLE_AFTER)[0]:
                channel.trim()
                idle()
            msg = channel.receive(views)
            if msg is None:
                return 0
            mtype, flags, request_id, payload, via_bulk = msg
            msg = None
            if mtype == REQUEST:
                _answer(channel, handler, request_id, payload)
                if views:
                    # Whatever the handler kept was made from it; the view
                    # itself is done, and its buffer can be reused unless
                    # something made from it is still alive.
                    try:
                        payload.release()
                    except BufferError:
                        pass
                payload = None
            elif mtype == SHUTDOWN and not flags & FLAG_REPLY:
                channel._send_record(SHUTDOWN, 0, b"", FLAG_REPLY)
                channel.close()
                return 0
            # cancel: requests are served one at a time, so its request is already answered.
    except ChannelViolation as v:
        log.error("channel violation; closing: %s", v)
        raise
    finally:
        channel.close()
