"""A client of stockaded for the MiniLM tenants (HTTP on the unix socket).

    ask.py --token T TENANT "a sentence" ["another" ...]   prints embeddings' norms and cosines
    ask.py --token T --demo TENANT [TENANT ...]            the `make run` check: sentence pairs,
                                                           reference embeddings, resource use
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from client import cosine, cosine_rows, decode_response, encode_request  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_SOCKET = os.path.normpath(os.path.join(HERE, "..", "..", ".build", "stockaded", "api.sock"))


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float = 120.0):
        super().__init__("stockaded", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


class Daemon:
    def __init__(self, path: str, token: str):
        self.path = path
        self.token = token
        self.conn = UnixHTTPConnection(path)

    def call(self, method: str, url: str, body: bytes | None = None) -> tuple[int, bytes]:
        headers = {"Authorization": f"Bearer {self.token}"}
        if body is not None:
            headers["Content-Type"] = "application/octet-stream"
        self.conn.request(method, url, body=body, headers=headers)
        r = self.conn.getresponse()
        return r.status, r.read()

    def embed(self, tenant: str, texts: list[str]):
        status, body = self.call("POST", f"/v1/tenants/{tenant}/infer", encode_request(texts))
        if status != 200:
            raise RuntimeError(f"{tenant}: HTTP {status}: {body.decode(errors='replace')}")
        return decode_response(body)

    def tenant(self, tenant: str) -> dict:
        status, body = self.call("GET", f"/v1/tenants/{tenant}")
        if status != 200:
            raise RuntimeError(f"{tenant}: HTTP {status}: {body.decode(errors='replace')}")
        return json.loads(body)


def wait_ready(d: Daemon, tenants: list[str], seconds: float) -> None:
    """Until each tenant has a warm worker (its model loaded)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            infos = [d.tenant(t) for t in tenants]
            if all(i["idle"] + i["busy"] >= 1 for i in infos):
                return
            failing = [f"{i['name']}: {i['refusal']}" for i in infos if i.get("refusal")]
            if failing:
                raise SystemExit("stockaded cannot start workers: " + "; ".join(failing))
        except (OSError, http.client.HTTPException):
            d.conn.close()
        if time.monotonic() > deadline:
            raise SystemExit(f"no warm worker after {seconds:.0f} s")
        time.sleep(0.2)


PAIRS = [(0, 1), (2, 3), (4, 5), (0, 2), (0, 6)]


def demo(d: Daemon, tenants: list[str]) -> int:
    with open(os.path.join(HERE, "reference.json"), encoding="utf-8") as f:
        ref = json.load(f)
    import numpy as np
    texts, expected = ref["texts"], np.asarray(ref["embeddings"], dtype=np.float32)
    wait_ready(d, tenants, 120)
    ok = True
    for t in tenants:
        start = time.monotonic()
        got = d.embed(t, texts)
        ms = (time.monotonic() - start) * 1000
        agreement = cosine_rows(got, expected)
        worst = float(agreement.min())
        good = worst > 0.999
        ok &= good
        print(f"\n[{t}] {len(texts)} texts embedded through stockaded in {ms:.0f} ms; "
              f"cosine to reference.json: min {worst:.6f} -> {'OK' if good else 'MISMATCH'}")
        for a, b in PAIRS:
            print(f"  {cosine(got[a], got[b]):+.4f}  {texts[a]!r} ~ {texts[b]!r}")
    # Same request on every tenant: the same answer.
    if len(tenants) > 1:
        first = d.embed(tenants[0], texts[:4])
        for t in tenants[1:]:
            same = float(cosine_rows(first, d.embed(t, texts[:4])).min())
            print(f"\n[{tenants[0]}] vs [{t}]: min cosine {same:.6f}")
            ok &= same > 0.999
    print("\nresource use per tenant (workers live and exited):")
    for t in tenants:
        i = d.tenant(t)
        u = i["usage"]
        budget = []
        if u.get("budgetMemoryMaxBytes"):
            budget.append(f"memory_max {u['budgetMemoryMaxBytes'] >> 20} MiB")
        if u.get("budgetCPUs"):
            budget.append(f"cpu {u['budgetCPUs']:g}")
        if u.get("budgetPidsMax"):
            budget.append(f"pids_max {u['budgetPidsMax']}")
        print(f"  {t}: {i['served']} served, {i['failed']} failed; workers {i['idle']} idle/{i['busy']} busy "
              f"(min {i['workersMin']}, max {i['workersMax']}); cpu {u['cpuUserSeconds']:.2f} s user "
              f"+ {u['cpuSystemSeconds']:.2f} s sys, throttled {u['throttledSeconds']:.2f} s, "
              f"memory peak {u['memoryPeakBytes'] / 2**20:.0f} MiB, pids peak {u['pidsPeak']}; "
              f"budget: {', '.join(budget) or 'none'}")
    print("\nall embeddings match the reference" if ok else "\nMISMATCH against the reference")
    return 0 if ok else 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--socket", default=DEFAULT_SOCKET)
    p.add_argument("--token", default=os.environ.get("STOCKADE_TOKEN"), help="bearer token (or $STOCKADE_TOKEN)")
    p.add_argument("--demo", action="store_true", help="run the make-run check on the given tenants")
    p.add_argument("tenant")
    p.add_argument("rest", nargs="*")
    a = p.parse_args()
    if not a.token:
        p.error("give --token or set STOCKADE_TOKEN")
    d = Daemon(a.socket, a.token)
    if a.demo:
        return demo(d, [a.tenant] + a.rest)
    if not a.rest:
        p.error("give at least one sentence")
    emb = d.embed(a.tenant, a.rest)
    for i, text in enumerate(a.rest):
        print(f"{text!r}: {emb.shape[1]} dims, first {emb[i][:4]}")
    for i in range(len(a.rest)):
        for j in range(i + 1, len(a.rest)):
            print(f"cosine({i}, {j}) = {cosine(emb[i], emb[j]):+.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
