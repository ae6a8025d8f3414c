"""Stockade worker: all-MiniLM-L6-v2 sentence embeddings.

Request payload: UTF-8 JSON `{"texts": ["...", ...]}`.
Response payload: `b"EMB1" ‖ u32 n ‖ u32 dim ‖ float32[n*dim]`, little-endian,
rows in request order, each of L2 norm 1.

Run by the Stockade launcher under profiles/inference-cpu.toml, it loads the
model once and then serves requests over the channel through the
`stockade_worker` SDK. For testing without the SDK or a jail:

    python worker.py --stdin < request.json > response.bin

reads one request from stdin and writes the binary response to stdout.
"""

from __future__ import annotations

import os
import sys

# One BLAS thread per worker unless the profile says otherwise: the
# attention's many small per-head matmuls get much slower when OpenBLAS
# splits each across threads, and a pool runs one worker per core anyway.
# Must be set before numpy is imported.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
# Tokenize on the calling thread: otherwise the tokenizer starts a thread
# pool as large as the CPUs it sees, which the jail's pids budget would
# have to cover, for no gain on requests of a few dozen sentences.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The model files come from the installed package; nothing may reach the
# Hugging Face hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import json  # noqa: E402

import numpy as np  # noqa: E402

from model import MiniLM  # noqa: E402

from client import HEADER, MAGIC  # noqa: E402

# Request limits: a request larger than these is refused with a clear error
# instead of growing the worker towards its memory budget. The model reads at
# most 256 tokens of a text; a longer text is truncated, but its whole string
# is still tokenized first, hence the caps on characters and bytes.
MAX_REQUEST_BYTES = 8 << 20
MAX_TEXTS = 1024
MAX_TEXT_CHARS = 100_000
BATCH_SIZE = 32
# What the loaded model and a forward pass take (about 285 MiB measured at
# MAX_BATCH_TOKENS), and what each request byte may cost while it is received,
# parsed and tokenized (the payload and its copies, its decoded str, the
# list of texts, a chunk of encodings): a request must fit in what the budget
# leaves after the model. 24 bytes per byte: an 8 MB request of 1,024 texts
# of 8,000 characters was OOM-killed under 384M at 8.
MODEL_RESIDENT_BYTES = 320 << 20
BYTES_PER_REQUEST_BYTE = 24


def request_limit(environ=os.environ) -> int:
    """The largest request this worker takes: MAX_REQUEST_BYTES, or less when
    the jail's memory budget (STOCKADE_MEMORY_MAX, set by stockaded) cannot
    hold that much besides the model."""
    budget = environ.get("STOCKADE_MEMORY_MAX")
    if not budget or not budget.isdigit():
        return MAX_REQUEST_BYTES
    room = int(budget) - MODEL_RESIDENT_BYTES
    return max(64 << 10, min(MAX_REQUEST_BYTES, room // BYTES_PER_REQUEST_BYTE))


class RequestError(ValueError):
    """The request payload is not a valid embedding request (400)."""

    kind = "input"


class RequestTooLarge(RequestError):
    """The request is larger than this worker's budget can hold (413)."""

    kind = "too-large"


def parse_request(payload: bytes, limit: int = MAX_REQUEST_BYTES) -> list[str]:
    """The texts of a request payload, checked."""
    if len(payload) > limit:
        raise RequestTooLarge(f"request has {len(payload)} bytes; this worker's "
                              f"memory budget takes at most {limit}")
    try:
        request = json.loads(payload.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise RequestError(f"request is not UTF-8: {e}") from None
    except ValueError as e:
        raise RequestError(f"request is not JSON: {e}") from None
    if not isinstance(request, dict) or "texts" not in request:
        raise RequestError('request must be a JSON object {"texts": [...]}')
    texts = request["texts"]
    if not isinstance(texts, list):
        raise RequestError(f'"texts" must be a list of strings, not '
                           f"{type(texts).__name__}")
    if len(texts) > MAX_TEXTS:
        raise RequestTooLarge(f"too many texts: {len(texts)} (at most {MAX_TEXTS} "
                           "per request)")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise RequestError(f"texts[{i}] is {type(text).__name__}, not a string")
        if len(text) > MAX_TEXT_CHARS:
            raise RequestTooLarge(f"texts[{i}] has {len(text)} characters (at most "
                               f"{MAX_TEXT_CHARS})")
    return texts


def encode_response(embeddings: np.ndarray) -> bytes:
    """The binary response for an (n, dim) float32 array."""
    n, dim = embeddings.shape
    body = np.ascontiguousarray(embeddings, dtype="<f4").tobytes()
    return HEADER.pack(MAGIC, n, dim) + body


class Embedder:
    """The request handler: holds the loaded model."""

    def __init__(self, model: MiniLM, limit: int = MAX_REQUEST_BYTES) -> None:
        self.model = model
        self.limit = limit

    def __call__(self, payload: bytes) -> bytes:
        texts = parse_request(payload, self.limit)
        return encode_response(self.model.encode(texts, batch_size=BATCH_SIZE))


def _import_serve():
    """The SDK's serve_template(): the stockade-worker package installed in
    this worker's venv (`pip install ./python`). Under a tenant with
    `template = true` it loads once and serves from forked workers; under
    any other it serves as serve() does."""
    from stockade_worker import serve_template
    return serve_template


def main(argv: list[str]) -> int:
    if len(argv) > 1 and argv[1] not in ("--stdin",):
        print(f"usage: {argv[0]} [--stdin]", file=sys.stderr)
        return 2

    # Load before serving, so that a warm worker answers its first request
    # without paying for the model. Under stockaded the model files are the
    # sealed memfds it hashed (STOCKADE_MODEL_FDS), never a path on disk.
    model_path = None
    if os.environ.get("STOCKADE_MODEL_FDS"):
        _import_serve()
        from stockade_worker import model_directory
        model_path = model_directory()

    def load() -> Embedder:
        return Embedder(MiniLM(model_path), request_limit())

    if len(argv) > 1 and argv[1] == "--stdin":
        handler = load()
        try:
            response = handler(sys.stdin.buffer.read())
        except RequestError as e:
            print(f"worker: {e}", file=sys.stderr)
            return 1
        sys.stdout.buffer.write(response)
        sys.stdout.buffer.flush()
        return 0

    try:
        serve_template = _import_serve()
    except ImportError as e:
        print("worker: the stockade_worker SDK is not importable "
              f"({e}); install it into this venv (pip install ./python), "
              "or use --stdin",
              file=sys.stderr)
        return 2
    return serve_template(load)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
