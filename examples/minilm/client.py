"""Client-side helpers for the MiniLM worker's wire format.

Request:  UTF-8 JSON `{"texts": ["...", ...]}`.
Response: `b"EMB1" ‖ u32 n ‖ u32 dim ‖ float32[n*dim]`, all little-endian.

Only numpy and the standard library: a client does not need the model.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence

import numpy as np

MAGIC = b"EMB1"
HEADER = struct.Struct("<4sII")


class ResponseError(ValueError):
    """A response payload that is not a well-formed EMB1 message."""


def encode_request(texts: Sequence[str]) -> bytes:
    """The request payload for `texts`."""
    texts = list(texts)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}] is {type(text).__name__}, not str")
    return json.dumps({"texts": texts}, ensure_ascii=False).encode("utf-8")


def decode_response(payload: bytes) -> np.ndarray:
    """The (n, dim) float32 array carried by a response payload.

    Raises ResponseError when the magic, the header or the length is wrong.
    """
    if len(payload) < HEADER.size:
        raise ResponseError(f"response has {len(payload)} bytes, shorter than "
                            f"its {HEADER.size}-byte header")
    magic, n, dim = HEADER.unpack_from(payload)
    if magic != MAGIC:
        raise ResponseError(f"response starts with {magic!r}, not {MAGIC!r}")
    expected = HEADER.size + 4 * n * dim
    if len(payload) != expected:
        raise ResponseError(f"response header says {n}x{dim} float32 "
                            f"({expected} bytes in all) but it has "
                            f"{len(payload)} bytes")
    body = np.frombuffer(payload, dtype="<f4", count=n * dim, offset=HEADER.size)
    return body.reshape(n, dim).astype(np.float32)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two vectors (computed in float64)."""
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    denom = np.linalg.norm(a) * np.linalg.norm(b)
    if denom == 0.0:
        raise ValueError("cosine of a zero vector is undefined")
    return float(a @ b / denom)


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-by-row cosine similarity of two (n, dim) arrays."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} and {b.shape}")
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
