"""A template worker: load the model once, fork workers that share its pages.

    import stockade_worker

    def load():
        model = load_model()          # runs once, in the template
        return lambda payload: model.run(payload)

    stockade_worker.serve_template(load)

stockaded starts the template in a jail with a control channel at the
descriptor named in STOCKADE_TEMPLATE (`ctl=N`, a unix seqpacket socket) and
no request channel of its own. The template calls load(), says it is ready,
then waits. For each worker the daemon makes a fresh channel (socket pair and
sealed params memfd with the worker's own PSK) and sends the worker's two
descriptors over the control channel. The template forks; the child:

- makes itself non-dumpable first (no sibling of the same uid may ptrace it,
  open its /proc/PID/mem, environ or maps, or take its descriptors with
  pidfd_getfd), and asks for SIGKILL when the template ends;
- tells the daemon its pid on the control channel (the kernel attaches the
  sender's credentials, translated into the daemon's pid namespace), then
  closes the control channel and every descriptor but stdio and its own
  channel (moved to 3 and 4);
- runs the handshake with its own key and serves the handler, never
  returning into the template's loop.

So that a worker is ready in a few milliseconds, the template forks a spare
once it has been quiet for SPARE_DELAY: a child set up as above as far as it
can be without its channel (non-dumpable, PDEATHSIG, every descriptor but
stdio, the control channel and a socket pair to the template closed), which
waits on that socket pair. The next FORK goes to it: the template passes the
two descriptors on, unread, and the spare goes on from FORKED. Without a
spare (several FORKs at once, or spare=False) the template forks on the word.

The template never reads a params memfd: no key of one worker is ever in
the memory the next one is forked from. It forks only while it runs a single
thread (fork copies only the calling thread, and a lock held by another
thread would stay locked in the child for ever); OPENBLAS_NUM_THREADS=1,
OMP_NUM_THREADS=1 and TOKENIZERS_PARALLELISM=false keep numpy and the
tokenizer on the main thread, and a fork asked for while more threads run is
refused with the count. See docs/PROTOCOL.md, "Templates".
"""
from __future__ import annotations

import ctypes
import logging
import os
import select
import signal
import socket
import struct
import sys
import time
from typing import Any, Callable, Optional

from .channel import serve
from .noise import AESGCM_SUITE, CHACHAPOLY_SUITE, Handshake

log = logging.getLogger("stockade_worker")

ENV = "STOCKADE_TEMPLATE"
# "0" keeps a forked worker from giving its freed heap back when idle (it
# then keeps the memory of its largest request, and faults none in again).
IDLE_RELEASE_ENV = "STOCKADE_IDLE_RELEASE"
MAGIC = b"STKTMPL1"
# magic, kind, 3 reserved bytes, number (u32), value (i32): big-endian.
MESSAGE = struct.Struct(">8sB3xIi")
READY, FORK, FORKED, EXITED, REFUSED, SPARE = 1, 2, 3, 4, 5, 6
# Why a fork was refused (REFUSED's value): an errno from fork() itself, or
# one of these, above any errno.
REFUSED_THREADS = 1 << 16
REFUSED_FDS = (1 << 16) + 1

# The descriptors a forked worker keeps: stdio, and its channel where
# STOCKADE_CHANNEL says (as a worker the launcher started sees it).
CHILD_SOCKET_FD, CHILD_PARAMS_FD = 3, 4
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_GET_DUMPABLE = 1, 4, 3
_libc = ctypes.CDLL(None, use_errno=True)


def parse_env(value: str) -> int:
    key, sep, num = value.partition("=")
    if key != "ctl" or not sep or not num.isdigit():
        raise ValueError(f"{ENV} must be ctl=N, not {value!r}")
    return int(num)


def thread_count() -> int:
    """The threads this process runs now (the kernel's list, not Python's)."""
    return len(os.listdir("/proc/self/task"))


def _prctl(option: int, arg: int) -> None:
    if _libc.prctl(option, arg, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl({option}): {os.strerror(err)}")


# A spare is forked once the template has had no message for this long, so
# that making it does not compete for a CPU with a worker just handed out.
SPARE_DELAY = 0.05
# After a failed fork of a spare (the pids budget spent), the next try.
SPARE_RETRY = 1.0


class Template:
    """The template's side of the control channel."""

    def __init__(self, ctl: socket.socket, spare: bool = True):
        self.ctl = ctl
        # number -> pid of each live forked worker.
        self.children: dict[int, int] = {}
        # SIGCHLD wakes the loop through this pipe.
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        # A child forked ahead of need, set up as far as a worker can be
        # without its channel: (pid, the template's end of a socket pair on
        # which it waits for the daemon's descriptors). It holds no key and
        # has run nothing but this module since the fork.
        self.want_spare = spare
        self.spare: Optional[tuple[int, socket.socket]] = None
        self.quiet_since = time.monotonic()
        self.spare_failed = False

    def send(self, kind: int, number: int = 0, value: int = 0) -> None:
        self.ctl.send(MESSAGE.pack(MAGIC, kind, number, value))

    def run(self, handler: Callable[[bytes], bytes]) -> int:
        old = signal.signal(signal.SIGCHLD, lambda *_: None)
        old_wakeup = signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
        try:
            self.send(READY, 0, thread_count())
            while True:
                timeout = None
                if self.want_spare and self.spare is None:
                    timeout = max(0.0, SPARE_DELAY - (time.monotonic() - self.quiet_since))
                ready, _, _ = select.select([self.ctl, self.wake_r], [], [], timeout)
                if not ready:
                    self.make_spare(handler)
                    continue
                if self.wake_r in ready:
                    try:
                        while os.read(self.wake_r, 256):
                            pass
                    except BlockingIOError:
                        pass
                    self.reap()
                if self.ctl in ready:
                    self.quiet_since = time.monotonic()
                    if not self.receive(handler):
                        return 0
        finally:
            self.end_children()
            signal.set_wakeup_fd(old_wakeup)
            signal.signal(signal.SIGCHLD, old)

    def receive(self, handler) -> bool:
        """One message from the daemon; False at the end of the channel."""
        data, anc, flags, _ = self.ctl.recvmsg(MESSAGE.size, socket.CMSG_SPACE(2 * 4), socket.MSG_CMSG_CLOEXEC)
        fds: list[int] = []
        for level, kind, payload in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                usable = len(payload) - len(payload) % 4
                fds.extend(struct.unpack(f"{usable // 4}i", payload[:usable]))
        try:
            if not data:
                return False
            if len(data) != MESSAGE.size or flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
                raise RuntimeError(f"malformed control message of {len(data)} bytes")
            magic, kind, number, _ = MESSAGE.unpack(data)
            if magic != MAGIC or kind != FORK:
                raise RuntimeError(f"unexpected control message kind {kind}")
            if len(fds) != 2:
                self.send(REFUSED, number, REFUSED_FDS)
                return True
            if self.hand_to_spare(number, fds):
                return True
            threads = thread_count()
            if threads != 1:
                log.error("fork of worker %d refused: the template runs %d threads", number, threads)
                self.send(REFUSED, number, REFUSED_THREADS + threads)
                return True
            parent = os.getpid()
            try:
                pid = os.fork()
            except OSError as e:
                self.send(REFUSED, number, e.errno or 0)
                return True
            if pid == 0:
                self.become_worker(number, fds[0], fds[1], handler, parent)
            self.children[number] = pid
            return True
        finally:
            # The parent never keeps a worker's descriptors (nor reads them).
            for fd in fds:
                os.close(fd)

    def hand_to_spare(self, number: int, fds: list[int]) -> bool:
        """Passes the worker's descriptors (unread) to the spare; False when
        there is none or it is gone (the caller then forks one)."""
        if self.spare is None:
            return False
        pid, relay = self.spare
        self.spare = None
        try:
            relay.sendmsg([MESSAGE.pack(MAGIC, FORK, number, 0)],
                          [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("2i", *fds))])
        except OSError:
            _kill(pid)
            return False
        finally:
            relay.close()
        self.children[number] = pid
        return True

    def make_spare(self, handler) -> None:
        """Forks the spare (not while another thread runs, as for a worker)."""
        if thread_count() != 1:
            self.want_spare = False
            log.error("no spare is forked: the template runs %d threads", thread_count())
            return
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        parent = os.getpid()
        try:
            pid = os.fork()
        except OSError as e:
            mine.close()
            theirs.close()
            # The jail's pids budget may be spent for now: try again in a
            # second (forks on the daemon's word still say why, with the errno).
            if not self.spare_failed:
                log.error("no spare is forked: %s; trying again every second", e)
            self.spare_failed = True
            self.quiet_since = time.monotonic() + SPARE_RETRY
            return
        self.spare_failed = False
        if pid == 0:
            mine.close()
            self.wait_as_spare(theirs, handler, parent)
        theirs.close()
        self.spare = (pid, mine)

    def wait_as_spare(self, relay: socket.socket, handler, parent: int) -> None:
        """In the spare: set up, then wait for a worker's descriptors; never returns."""
        code = 70
        try:
            self.child_setup(parent)
            # Nothing of the template's but stdio, the control channel (to
            # announce itself on) and the socket pair to the template.
            keep = sorted({0, 1, 2, self.ctl.fileno(), relay.fileno()})
            for low, high in zip(keep, keep[1:] + [_fd_limit()]):
                os.closerange(low + 1, high)
            # Copies in, now, the pages a handshake writes (object headers,
            # OpenSSL's state), which the worker would otherwise copy from
            # the template while the daemon waits for it.
            _throwaway_handshakes()
            # The daemon learns this process from the kernel now and puts it
            # in the cgroup it will have as a worker, while nothing waits.
            self.ctl.send(MESSAGE.pack(MAGIC, SPARE, 0, 0))
            data, anc, flags, _ = relay.recvmsg(MESSAGE.size, socket.CMSG_SPACE(2 * 4), socket.MSG_CMSG_CLOEXEC)
            fds: list[int] = []
            for level, kind, payload in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    usable = len(payload) - len(payload) % 4
                    fds.extend(struct.unpack(f"{usable // 4}i", payload[:usable]))
            relay.close()
            if not data:  # the template dropped it or ended
                os._exit(0)
            _, _, number, _ = MESSAGE.unpack(data)
            if len(fds) != 2:
                raise RuntimeError(f"the spare got {len(fds)} descriptors")
            self.serve_as_worker(number, fds[0], fds[1], handler)
        except BaseException as e:  # never back into the template's loop
            try:
                log.error("spare failed: %s", e)
                sys.stderr.flush()
            finally:
                os._exit(code)

    def child_setup(self, parent: int) -> None:
        """First thing in a forked child."""
        _prctl(PR_SET_DUMPABLE, 0)
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        # The template may have ended between fork and PDEATHSIG.
        if os.getppid() != parent:
            os._exit(70)
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)

    def become_worker(self, number: int, sock_fd: int, params_fd: int, handler, parent: int) -> None:
        """In the forked child: never returns."""
        code = 70
        try:
            self.child_setup(parent)
            self.serve_as_worker(number, sock_fd, params_fd, handler)
        except BaseException as e:  # the child must never go back into the template's loop
            try:
                log.error("forked worker %d failed: %s", number, e)
                sys.stderr.flush()
            finally:
                os._exit(code)

    def serve_as_worker(self, number: int, sock_fd: int, params_fd: int, handler) -> None:
        """In a set-up child with its descriptors: announces itself, keeps
        nothing of the template's, serves; never returns."""
        code = 70
        try:
            # The kernel attaches this process's credentials: the daemon
            # learns the worker's pid from the kernel, not from the message.
            self.ctl.send(MESSAGE.pack(MAGIC, FORKED, number, 0))
            self.ctl.close()
            # Above every descriptor the template holds, then down to 3 and 4.
            high = max(sock_fd, params_fd, 64) + 1
            sock_hi = _dup_from(sock_fd, high)
            params_hi = _dup_from(params_fd, high)
            os.dup2(sock_hi, CHILD_SOCKET_FD, inheritable=False)
            os.dup2(params_hi, CHILD_PARAMS_FD, inheritable=False)
            os.closerange(CHILD_PARAMS_FD + 1, _fd_limit())
            idle = None if os.environ.get(IDLE_RELEASE_ENV) == "0" else release_heap
            code = serve(handler, {"STOCKADE_CHANNEL": f"sock={CHILD_SOCKET_FD},params={CHILD_PARAMS_FD}"},
                         idle=idle)
        except BaseException as e:  # the child must never go back into the template's loop
            try:
                log.error("forked worker %d failed: %s", number, e)
                sys.stderr.flush()
            finally:
                os._exit(code)
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if self.spare is not None and self.spare[0] == pid:
                # Died unused (a sibling can signal it): the next one is made when quiet.
                self.spare[1].close()
                self.spare = None
                self.quiet_since = time.monotonic()
            for number, child in list(self.children.items()):
                if child == pid:
                    del self.children[number]
                    self.send(EXITED, number, status)

    def end_children(self) -> None:
        if self.spare is not None:
            self.children[-1] = self.spare[0]
            self.spare[1].close()
            self.spare = None
        for pid in self.children.values():
            _kill(pid)
        for pid in list(self.children.values()):
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
        self.children.clear()


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _dup_from(fd: int, lowest: int) -> int:
    import fcntl
    return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, lowest)


def _fd_limit() -> int:
    try:
        return max(os.sysconf("SC_OPEN_MAX"), 1024)
    except (OSError, ValueError):
        return 1 << 16


def release_heap() -> None:
    """Gives the heap's free pages back to the kernel (malloc_trim). A
    forked worker runs it when idle: what a request allocated and freed
    would otherwise stay private to each worker on top of the pages it
    shares (about 1 MiB a MiniLM request here; far more where a model's
    weights share heap pages with a request's temporaries); under steady
    load it does not run, so requests do not pay for faulting that memory
    in again."""
    trim = getattr(_libc, "malloc_trim", None)
    if trim is not None:
        trim(0)


def warm_up() -> None:
    """Runs one throwaway handshake per suite and a collection, in the
    template: OpenSSL's lazily loaded providers and cipher tables, and the
    objects the collector would otherwise touch in every child, are then
    made once and shared, not copied into each forked worker (a child's
    first handshake took about 17 ms cold here, under 1 ms warm). The keys
    are random and dropped; OpenSSL reseeds its generator in each child
    (it notices the new pid), so no two workers draw the same ephemeral key.
    """
    import gc
    _throwaway_handshakes()
    gc.collect()
    release_heap()
    # The collector leaves what exists now alone: it would write into the
    # headers of every object it scans, and so copy the page in each child.
    gc.freeze()


def _throwaway_handshakes() -> None:
    """One handshake per suite with a random PSK, both ends here, dropped."""
    for suite in (AESGCM_SUITE, CHACHAPOLY_SUITE):
        psk = os.urandom(32)
        initiator = Handshake(True, suite, b"warm-up", psk)
        responder = Handshake(False, suite, b"warm-up", psk)
        responder.read_message(initiator.write_message(b""))
        initiator.read_message(responder.write_message(b""))
        a, _ = initiator.split()
        b, _ = responder.split()
        b.decrypt_with_ad(b"", a.encrypt_with_ad(b"", b"x"))


def serve_template(load: Callable[[], Any], handle: Optional[Callable[[Any, bytes], bytes]] = None,
                   environ=None, spare: bool = True) -> int:
    """Loads once, then forks one worker per daemon request.

    load() runs once in the template. Without `handle` it returns the
    request handler (payload -> bytes); with it, handle(loaded, payload) is
    the handler. Run outside a template (no STOCKADE_TEMPLATE, only
    STOCKADE_CHANNEL) it loads and serves as serve() does, so one worker
    script runs either way. Returns 0 when the daemon closes the control
    channel; the forked workers end with the template. spare=False makes
    no spare ahead of need (each worker is forked on the daemon's word).
    """
    env = os.environ if environ is None else environ
    value = env.get(ENV)
    if value is not None:
        # Before anything is loaded: a forked worker (same uid) must not be
        # able to open the template's /proc/PID/mem and change what every
        # later worker is forked from.
        _prctl(PR_SET_DUMPABLE, 0)
    loaded = load()
    handler: Callable[[bytes], bytes] = loaded if handle is None else (lambda payload: handle(loaded, payload))
    if value is None:
        return serve(handler, environ)
    ctl_fd = parse_env(value)
    ctl = socket.socket(fileno=ctl_fd)
    if ctl.family != socket.AF_UNIX or ctl.type != socket.SOCK_SEQPACKET:
        ctl.detach()
        raise RuntimeError(f"{ENV}: fd {ctl_fd} is not a unix seqpacket socket")
    ctl.set_inheritable(False)
    warm_up()
    try:
        return Template(ctl, spare=spare).run(handler)
    finally:
        ctl.close()
