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
from dataclasses import dataclass
from typing import Callable, Optional

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from .noise import AESGCM_SUITE, CHACHAPOLY_SUITE, HANDSHAKE_OVERHEAD, CipherState, Handshake, LowOrderPoint, NoiseError
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


def _frame(data: bytes) -> bytes:
    return struct.pack(">H", len(data)) + data


def _aead(suite: int, key: bytes):
    return AESGCM(key) if suite == AESGCM_SUITE else ChaCha20Poly1305(key)


class Channel:
    """An established channel, worker side."""

    def __init__(self, sock: socket.socket, params: Params, supported=(AESGCM_SUITE, CHACHAPOLY_SUITE)):
        self.sock = sock
        self.params = params
        self.closed = False
        self.shutdown_seen = False
        self.buf = bytearray(64 << 10)
        self.start = 0
        self.end = 0
        self.fds: list[int] = []
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
        view = memoryview(data)
        first = True
        while view:
            if first and fds:
                n = self.sock.sendmsg([view], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack(f"{len(fds)}i", *fds))])
            else:
                n = self.sock.send(view)
            first = False
            view = view[n:]

    def _fill(self, count: int, what: str, eof_ok: bool = False) -> bool:
        """Reads until `count` unread bytes are buffered."""
        while self.end - self.start < count:
            if len(self.buf) - self.start < count:
                pending = self.buf[self.start:self.end]
                if len(self.buf) < count:
                    self.buf = bytearray(max(count, 2 * len(self.buf)))
                self.buf[:len(pending)] = pending
                self.end = len(pending)
                self.start = 0
            view = memoryview(self.buf)[self.end:]
            # Room for one descriptor: a bulk record brings exactly one.
            n, anc, flags, _ = self.sock.recvmsg_into([view], socket.CMSG_SPACE(4), socket.MSG_CMSG_CLOEXEC)
            arrived = []
            for level, kind, data in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    usable = len(data) - len(data) % 4
                    arrived.extend(struct.unpack(f"{usable // 4}i", data[:usable]))
            if arrived or flags & socket.MSG_CTRUNC:
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
            if n == 0:
                if self.end == self.start and eof_ok:
                    return False
                raise ChannelViolation("truncated", f"stream ended {self.end - self.start} bytes into {what}")
            self.end += n
        return True

    def _take(self, n: int) -> bytes:
        out = bytes(self.buf[self.start:self.start + n])
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
        self._send_all(_frame(data))

    def _first_message_waiting(self) -> bool:
        """Whether the launcher's first handshake message is already here:
        a launcher that offers one suite sends it before this worker names
        its choice, and nothing else ever arrives before the selection."""
        poller = select.poll()
        poller.register(self.sock, select.POLLIN)
        return bool(poller.poll(0))

    def _handshake(self, supported) -> None:
        suite = next((s for s in self.params.suites if s in supported), None)
        if suite is None:
            raise ChannelViolation("bad-suite", "no offered suite is supported")
        self.suite = suite
        selection = _frame(bytes([1, suite]))
        # With message 1 waiting, the selection, message 2 and the hello go
        # out in one write (one wakeup of the launcher, not three).
        if not self._first_message_waiting():
            self._send_all(selection)
            selection = b""
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
        to_worker, to_launcher = hs.split()
        self.rx, self.tx = to_worker, to_launcher
        self.handshake_hash = hs.handshake_hash
        # From the first record on, a descriptor is judged by its record: the
        # launcher may send its hello and a bulk request back to back.
        self.accept_fds = True
        self._send_all(selection + _frame(reply) + self._seal_record(HELLO, 0, AGENT))
        msg = self._receive_record()
        if msg is None or msg[0] != HELLO:
            raise ChannelViolation("unexpected-message", "first record is not hello")
        self.peer_agent = msg[3]

    # -- records --------------------------------------------------------

    def send(self, mtype: int, request_id: int, payload: bytes, flags: int = 0) -> None:
        if self.closed:
            raise ChannelViolation("closed", "channel is closed")
        if mtype in (RESPONSE, ERROR) and request_id not in self.in_flight:
            raise ValueError(f"no request {request_id} to answer")
        bulk = len(payload) > self.params.max_record
        if bulk and mtype != RESPONSE:
            raise ValueError("payload too large for a record")
        if bulk and len(payload) > self.params.max_bulk:
            raise ValueError("payload exceeds the bulk limit")
        # Only a request that is answered leaves in_flight: one refused
        # above can still get its error.
        if mtype in (RESPONSE, ERROR):
            self.bytes_in_flight -= self.in_flight.pop(request_id)
        if bulk:
            self._send_bulk(mtype, request_id, payload)
            return
        self._send_record(mtype, request_id, payload, flags)

    def _send_record(self, mtype: int, request_id: int, payload: bytes, flags: int = 0, fds=()) -> None:
        self._send_all(self._seal_record(mtype, request_id, payload, flags), fds)

    def _seal_record(self, mtype: int, request_id: int, payload: bytes, flags: int = 0) -> bytes:
        """One sealed record, counted as sent (the caller sends it next)."""
        length = BODY_HEADER + len(payload) + TAG
        header = struct.pack(">IB", length, mtype)
        body = struct.pack(">BBHQ", mtype, flags, 0, request_id) + payload
        sealed = self.tx.encrypt_with_ad(header, body)
        self.send_count += 1
        if self.send_count % self.params.rekey_interval == 0:
            self.tx.rekey()
        return header + sealed

    def _send_bulk(self, inner: int, request_id: int, payload: bytes) -> None:
        key = os.urandom(32)
        total = len(payload)
        chunks = (total + BULK_CHUNK - 1) // BULK_CHUNK
        size = total + chunks * TAG
        aead = _aead(self.suite, key)
        fd = os.memfd_create("stockade-bulk", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(fd, size)
            with mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE) as m:
                view = memoryview(payload)
                for i in range(chunks):
                    s = i * BULK_CHUNK
                    chunk = view[s:s + BULK_CHUNK]
                    ad = struct.pack(">QQQ", request_id, total, i)
                    out = aead.encrypt(CipherState(self.suite).nonce(i), chunk, ad)
                    m[s + i * TAG:s + i * TAG + len(out)] = out
            fcntl.fcntl(fd, F_ADD_SEALS, SEALS_IMMUTABLE)
            desc = struct.pack(">B3xIQ", inner, BULK_CHUNK, total) + key
            self._send_record(BULK, request_id, desc, 0, [fd])
        finally:
            os.close(fd)

    def _receive_record(self):
        """Returns (type, flags, request id, payload, via_bulk) or None at a clean end."""
        if not self._fill(HEADER, "a record header", eof_ok=True):
            if self.shutdown_seen:
                self.close()
                return None
            raise ChannelViolation("closed", "the launcher closed the channel without a shutdown")
        length, mtype = struct.unpack_from(">IB", self.buf, self.start)
        if mtype not in TYPE_NAMES:
            raise ChannelViolation("malformed", f"unknown record type {mtype}")
        if length < BODY_HEADER + TAG:
            raise ChannelViolation("malformed", f"record length {length} below the minimum")
        limit = BODY_HEADER + self.params.max_record + TAG
        if length > limit:
            raise ChannelViolation("oversized", f"record length {length} exceeds the limit {limit}")
        self._fill(HEADER + length, "a record")
        header = self._take(HEADER)
        try:
            body = self.rx.decrypt_with_ad(header, self._take(length))
        except NoiseError:
            raise ChannelViolation("bad-tag", f"record {self.recv_count} failed authentication") from None
        self.recv_count += 1
        if self.recv_count % self.params.rekey_interval == 0:
            self.rx.rekey()
        btype, flags, reserved, request_id = struct.unpack_from(">BBHQ", body)
        payload = body[BODY_HEADER:]
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
            mtype, payload = self._receive_bulk(request_id, payload)
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
            aead = _aead(self.suite, key)
            out = bytearray(total)
            with mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ) as m:
                view = memoryview(m)
                try:
                    for i in range(chunks):
                        s = i * chunk
                        n = min(chunk, total - s)
                        src = view[s + i * TAG:s + i * TAG + n + TAG]
                        ad = struct.pack(">QQQ", request_id, total, i)
                        try:
                            out[s:s + n] = aead.decrypt(CipherState(self.suite).nonce(i), src, ad)
                        except InvalidTag:
                            raise ChannelViolation("bad-tag", f"bulk chunk {i} failed authentication") from None
                finally:
                    src = None
                    view.release()
            return inner, bytes(out)
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

    def receive(self):
        """The next message as (type, flags, request id, payload, via_bulk); pings are answered here."""
        while True:
            msg = self._receive_record()
            if msg is None:
                return None
            if msg[0] == PING and not msg[1] & FLAG_REPLY:
                self._send_record(PING, msg[2], msg[3], FLAG_REPLY)
                continue
            return msg

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            for fd in self.fds:
                os.close(fd)
            self.fds = []
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


def serve(handler: Callable[[bytes], bytes], environ=None, idle: Optional[Callable[[], None]] = None) -> int:
    """Serves requests until the launcher shuts the channel down.

    handler(payload) returns the response bytes; an exception becomes an error
    message. Returns 0 after an orderly shutdown; a protocol violation is
    logged, closes the channel and raises ChannelViolation. idle(), when
    given, runs once whenever no request has come for IDLE_AFTER seconds.
    """
    channel = connect(environ)
    try:
        while True:
            if idle is not None and channel.start == channel.end and not channel.fds \
                    and not select.select([channel.sock], [], [], IDLE_AFTER)[0]:
                idle()
            msg = channel.receive()
            if msg is None:
                return 0
            mtype, flags, request_id, payload, _ = msg
            if mtype == REQUEST:
                try:
                    result = bytes(handler(payload))
                except Exception as e:  # the handler's failure goes back as an error message
                    channel.send(ERROR, request_id, error_payload(e)[:min(4096, channel.params.max_record)])
                    continue
                if len(result) > max(channel.params.max_record, channel.params.max_bulk):
                    channel.send(ERROR, request_id, b"response exceeds the channel's limits")
                else:
                    channel.send(RESPONSE, request_id, result)
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
