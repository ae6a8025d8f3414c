"""Measure the MiniLM worker's model: load time, throughput, memory.

    python bench.py [--seconds 5] [--json]

Reports the model load time, embeddings per second for batches of 1 and 32
typical sentences (10 to 20 tokens) and for 32 texts at the full 256 tokens,
per second of wall time and per second of CPU time, and the process's
resident memory after loading (VmRSS) and at its peak (VmHWM; loading maps
the weights file for a moment, so it peaks about 90 MiB of page cache above
the steady state). Runs with the same thread settings as worker.py.
"""

from __future__ import annotations

import os
import sys

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402

from model import MiniLM  # noqa: E402

SUBJECTS = ["A man", "The woman", "A small child", "Our team", "The old dog",
            "A street musician", "The committee", "My neighbour"]
ACTIONS = ["is eating a sandwich in the park", "plays the violin at the station",
           "reviewed the quarterly budget before the meeting",
           "is running along the river with a friend",
           "fixed the broken fence behind the house"]


def sentences(n: int) -> list[str]:
    return [f"{SUBJECTS[i % len(SUBJECTS)]} {ACTIONS[(i // len(SUBJECTS)) % len(ACTIONS)]}."
            for i in range(n)]


def memory_kib() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
    return out


def rate(model: MiniLM, texts: list[str], seconds: float) -> tuple[float, float]:
    """Embeddings per second encoding `texts` as one request, repeatedly:
    per second of wall time, and per second of this process's CPU time (the
    second is what a machine shared with other work still measures well)."""
    model.encode(texts)  # warm-up
    done, start, cpu = 0, time.perf_counter(), time.process_time()
    while True:
        model.encode(texts)
        done += len(texts)
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return done / elapsed, done / (time.process_time() - cpu)


def main() -> int:
    p = argparse.ArgumentParser(description="MiniLM model benchmark")
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()

    start, cpu = time.perf_counter(), time.process_time()
    model = MiniLM()
    load_s = time.perf_counter() - start
    load_cpu_s = time.process_time() - cpu
    after_load = memory_kib()

    result = {
        "load_s": round(load_s, 3),
        "load_cpu_s": round(load_cpu_s, 3),
        "rss_after_load_mib": round(after_load["VmRSS"] / 1024, 1),
        "rss_peak_load_mib": round(after_load["VmHWM"] / 1024, 1),
        "tokens_per_typical_sentence": sum(len(e.ids) for e in model.tokenize(sentences(32))) / 32,
    }
    long = [" ".join(f"word{i}{j}" for j in range(300)) for i in range(32)]
    for name, texts in (("batch1", sentences(1)), ("batch32", sentences(32)),
                        ("batch32_256tok", long)):
        wall, cpu = rate(model, texts, args.seconds)
        result[f"emb_per_s_{name}"] = round(wall, 2)
        result[f"emb_per_cpu_s_{name}"] = round(cpu, 2)
    result["rss_peak_mib"] = round(memory_kib()["VmHWM"] / 1024, 1)
    result["loadavg_1min"] = os.getloadavg()[0]
    result["cpus"] = os.cpu_count()
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:28} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
