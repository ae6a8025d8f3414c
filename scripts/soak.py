#!/usr/bin/env python3
"""make soak: a few minutes of mixed load on stockaded with attacks and
faults, then what was lost (it must be zero).

Honest clients send echo requests with unique ids on keep-alive connections
to two tenants and check that each answer is theirs. At the same time:
connections that never send a byte, headers sent a byte at a time, bodies
shorter than their Content-Length, Content-Length over the limit, wrong
tokens, malformed HTTP, clients that half-close or vanish mid-request,
workers killed mid-request, chatty workers, and drain/resume cycles.

Lost: an honest request with no answer, or an answer that is not its own.
A refusal the daemon gives in words (429, 503, 502 for a killed worker) is
an answer, counted by status. Loopback unix socket only; bounded in time.

    scripts/soak.py [--seconds 180] [--stockaded .build/debug/stockaded]
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKENS = {"alice": "alice-soak-token-0123456789", "admin": "admin-soak-token-0123456789"}


def config(directory: str) -> str:
    python = os.path.join(REPO, ".venv/bin/python3")
    worker = os.path.join(REPO, "Tests/DaemonTests/Fixtures/test_worker.py")
    root = os.getuid() == 0
    text = f"""
[daemon]
socket = "api.sock"
audit_log = "audit.jsonl"
cgroups = {"true" if root else "false"}
cgroup_base = "stockaded-soak"
drain_timeout = "5s"
max_request_bytes = "1M"
max_connections = 96
max_connections_per_uid = 96
header_timeout = "2s"
body_timeout = "2s"
idle_timeout = "5s"

[client.alice]
token = "{TOKENS['alice']}"
uid = {os.getuid()}

[client.admin]
token = "{TOKENS['admin']}"
uid = {os.getuid()}
"""
    for name in ("alpha", "beta"):
        text += f"""
[tenant.{name}]
profile = "{REPO}/profiles/minimal.toml"
command = ["{python}", "{worker}"]
binds = ["{REPO}/.venv", "{REPO}/Tests/DaemonTests/Fixtures"]
workers_min = 1
workers_max = 2
queue = 64
request_timeout = "10s"
env = {{ TEST_TENANT = "{name}" }}

[tenant.{name}.access]
alice = "invoker"
admin = "admin"
"""
    path = os.path.join(directory, "stockaded.toml")
    with open(path, "w") as f:
        f.write(text)
    return path


class Conn:
    """A keep-alive HTTP/1.1 connection on the unix socket."""

    def __init__(self, path: str, timeout: float = 30):
        self.s = socket.socket(socket.AF_UNIX)
        self.s.settimeout(timeout)
        self.s.connect(path)
        self.buf = b""

    def call(self, method: str, target: str, body: bytes = b"", token: str | None = None):
        head = f"{method} {target} HTTP/1.1\r\nHost: s\r\nContent-Length: {len(body)}\r\n"
        if token:
            head += f"Authorization: Bearer {token}\r\n"
        self.s.sendall(head.encode() + b"\r\n" + body)
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head_bytes, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head_bytes.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        length = int(headers.get("content-length", "0"))
        while len(self.buf) < length:
            self._fill()
        out, self.buf = self.buf[:length], self.buf[length:]
        return status, headers, out

    def _fill(self):
        chunk = self.s.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        self.buf += chunk

    def close(self):
        self.s.close()


class Tally:
    def __init__(self):
        self.lock = threading.Lock()
        self.counts = collections.Counter()
        self.lost = []

    def add(self, key: str, n: int = 1):
        with self.lock:
            self.counts[key] += n

    def lose(self, why: str):
        with self.lock:
            self.counts["lost"] += 1
            if len(self.lost) < 20:
                self.lost.append(why)


def honest(sock: str, stop: threading.Event, tally: Tally, seed: int):
    rng = random.Random(seed)
    conn = None
    n = 0
    while not stop.is_set():
        tenant = rng.choice(("alpha", "beta"))
        ident = f"{seed}-{n}-{rng.getrandbits(32):08x}"
        n += 1
        body = b"echo:" + ident.encode()
        try:
            if conn is None:
                conn = Conn(sock)
            status, headers, out = conn.call("POST", f"/v1/tenants/{tenant}/infer", body, TOKENS["alice"])
        except (OSError, ConnectionError) as e:
            # The connection closed under us (idle timeout between calls is
            # 5 s, not reached here): the request had no answer.
            tally.lose(f"{ident}: {e}")
            conn = None
            continue
        tally.add(f"honest-{status}")
        if status == 200:
            if out != f"{tenant}:{ident}".encode():
                tally.lose(f"{ident}: answered {out[:60]!r}")
            else:
                tally.add("honest-ok")
        elif status not in (429, 502, 503):
            tally.lose(f"{ident}: unexpected {status} {out[:80]!r}")
        if headers.get("connection") == "close":
            conn.close()
            conn = None


def attacker(sock: str, stop: threading.Event, tally: Tally, seed: int):
    rng = random.Random(seed)
    held = []
    while not stop.is_set():
        kind = rng.choice(("silent", "slow-head", "short-body", "huge-length", "bad-token", "garbage",
                           "half-close", "vanish", "crash", "chatty"))
        tally.add(f"attack-{kind}")
        try:
            s = socket.socket(socket.AF_UNIX)
            s.settimeout(10)
            s.connect(sock)
            if kind == "silent":
                held.append(s)
                if len(held) > 40:
                    held.pop(0).close()
                continue
            if kind == "slow-head":
                for b in b"GET /v1/tenants HTTP/1.1\r\nHost: s\r\n":
                    s.send(bytes([b]))
                    time.sleep(0.15)
                    if stop.is_set():
                        break
            elif kind == "short-body":
                s.sendall(f"POST /v1/tenants/alpha/infer HTTP/1.1\r\nHost: s\r\nAuthorization: Bearer {TOKENS['alice']}\r\n"
                          "Content-Length: 100\r\n\r\necho:".encode())
            elif kind == "huge-length":
                s.sendall(f"POST /v1/tenants/alpha/infer HTTP/1.1\r\nHost: s\r\nAuthorization: Bearer {TOKENS['alice']}\r\n"
                          "Content-Length: 1000000000\r\n\r\n".encode())
            elif kind == "bad-token":
                s.sendall(f"GET /v1/tenants HTTP/1.1\r\nHost: s\r\nAuthorization: Bearer {TOKENS['alice']}{'A' * 256}\r\n\r\n".encode())
            elif kind == "garbage":
                s.sendall(b"\x16\x03\x01 not http at all\r\n\r\n")
            elif kind in ("half-close", "vanish", "crash", "chatty"):
                body = {"half-close": b"sleep:0.05", "vanish": b"sleep:0.3", "crash": b"crash",
                        "chatty": b"say:" + b"z" * 20000}[kind]
                tenant = rng.choice(("alpha", "beta"))
                s.sendall(f"POST /v1/tenants/{tenant}/infer HTTP/1.1\r\nHost: s\r\nAuthorization: Bearer {TOKENS['alice']}\r\n"
                          f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
                if kind == "half-close":
                    s.shutdown(socket.SHUT_WR)
                if kind == "vanish":
                    s.close()
                    continue
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
            s.close()
            status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else 0
            tally.add(f"attack-answer-{status}")
            if kind == "half-close" and status != 200 and status not in (429, 503):
                tally.lose(f"half-closed client got {status}")
        except (OSError, ValueError, IndexError) as e:
            tally.add(f"attack-error-{type(e).__name__}")
        time.sleep(rng.uniform(0, 0.05))
    for s in held:
        s.close()


def operator(sock: str, stop: threading.Event, tally: Tally):
    while not stop.wait(20):
        for tenant in ("alpha", "beta"):
            try:
                c = Conn(sock)
                c.call("POST", f"/v1/tenants/{tenant}/drain", token=TOKENS["admin"])
                time.sleep(0.5)
                c.call("POST", f"/v1/tenants/{tenant}/resume", token=TOKENS["admin"])
                c.close()
                tally.add("operator-drain-resume")
            except (OSError, ConnectionError) as e:
                tally.lose(f"operator: {e}")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=float(os.environ.get("SOAK_SECONDS", "180")))
    parser.add_argument("--stockaded", default=os.path.join(REPO, ".build/debug/stockaded"))
    args = parser.parse_args()
    directory = tempfile.mkdtemp(prefix="stockaded-soak-")
    os.chmod(directory, 0o755)
    path = config(directory)
    sock = os.path.join(directory, "api.sock")
    log = open(os.path.join(directory, "stockaded.log"), "w")
    daemon = subprocess.Popen([args.stockaded, "--config", path, "--log-level", "warning"], stdout=log, stderr=log)
    try:
        deadline = time.time() + 60
        while True:
            try:
                c = Conn(sock, timeout=5)
                status, _, out = c.call("GET", "/v1/tenants", token=TOKENS["admin"])
                c.close()
                tenants = json.loads(out)["tenants"]
                if status == 200 and all(t["idle"] >= 1 for t in tenants):
                    break
            except (OSError, ConnectionError, ValueError, KeyError):
                pass
            if time.time() > deadline or daemon.poll() is not None:
                print("soak: the daemon did not come up; see", log.name)
                return 1
            time.sleep(0.2)
        print(f"soak: {args.seconds:.0f} s of mixed load on {sock}")
        stop = threading.Event()
        tally = Tally()
        threads = [threading.Thread(target=honest, args=(sock, stop, tally, i)) for i in range(8)]
        threads += [threading.Thread(target=attacker, args=(sock, stop, tally, 100 + i)) for i in range(4)]
        threads.append(threading.Thread(target=operator, args=(sock, stop, tally)))
        for t in threads:
            t.start()
        time.sleep(args.seconds)
        stop.set()
        for t in threads:
            t.join(60)
        c = Conn(sock)
        _, _, health = c.call("GET", "/v1/health", token=TOKENS["admin"])
        _, _, metrics = c.call("GET", "/metrics", token=TOKENS["admin"])
        c.close()
        alive = daemon.poll() is None
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(60)
        except subprocess.TimeoutExpired:
            daemon.kill()
    # Every audit line whole and parseable.
    broken = 0
    with open(os.path.join(directory, "audit.jsonl"), "rb") as f:
        for line in f:
            try:
                json.loads(line)
            except ValueError:
                broken += 1
    for key in sorted(tally.counts):
        print(f"  {key:28} {tally.counts[key]}")
    print(f"  health: {json.loads(health).get('status')}")
    for line in metrics.decode().splitlines():
        if line.startswith(("stockaded_answers_undelivered_total", "stockaded_audit_write_failures_total")):
            print("  " + line)
    print(f"  broken audit lines           {broken}")
    print(f"  daemon alive at the end      {alive}; stopped with status {daemon.returncode}")
    for why in tally.lost:
        print("  lost: " + why)
    lost = tally.counts["lost"] + broken + (0 if alive else 1)
    print(f"soak: lost {lost}")
    return 0 if lost == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
