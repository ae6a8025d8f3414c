"""Tests of the template half of the SDK that need no daemon (the daemon's
side and the jail are tested in Tests/DaemonTests/TemplateTests.swift)."""
from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from stockade_worker import template


def test_parse_env():
    assert template.parse_env("ctl=3") == 3
    for bad in ("", "ctl=", "ctl=x", "sock=3", "ctl=3,params=4"):
        with pytest.raises(ValueError):
            template.parse_env(bad)


def _public() -> bytes:
    return X25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def test_forked_children_draw_different_ephemeral_keys_after_warm_up():
    # The warm-up leaves OpenSSL's generator seeded in the template; each
    # forked child must still draw keys of its own.
    template.warm_up()
    keys = []
    for _ in range(3):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            os.write(w, _public())
            os._exit(0)
        os.close(w)
        keys.append(os.read(r, 32))
        os.close(r)
        os.waitpid(pid, 0)
    keys.append(_public())
    assert all(len(k) == 32 for k in keys)
    assert len(set(keys)) == len(keys)


def test_thread_count_counts_the_kernels_tasks():
    import threading
    before = template.thread_count()
    done = threading.Event()
    t = threading.Thread(target=done.wait)
    t.start()
    try:
        assert template.thread_count() == before + 1
    finally:
        done.set()
        t.join()


def test_refusal_values_are_above_every_errno():
    assert template.REFUSED_THREADS > 4095 and template.REFUSED_FDS > template.REFUSED_THREADS


def test_a_spare_that_cannot_be_forked_is_tried_again_later(monkeypatch):
    import errno
    import socket
    import time

    ctl, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        t = template.Template(ctl)

        def no_fork():
            raise OSError(errno.EAGAIN, "Resource temporarily unavailable")

        monkeypatch.setattr(template.os, "fork", no_fork)
        before = time.monotonic()
        t.make_spare(lambda payload: payload)
        assert t.spare is None
        assert t.want_spare, "a spent pids budget must not turn spares off for good"
        assert t.spare_failed
        assert t.quiet_since >= before + template.SPARE_RETRY
    finally:
        ctl.close()
        peer.close()
