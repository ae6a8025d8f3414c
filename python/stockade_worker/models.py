"""Pinned model files handed over by stockaded as sealed memfds.

stockaded opens each pinned file once, copies it into a memfd it seals
against any change, hashes that memfd, and passes the same memfd to every
worker. STOCKADE_MODEL_FDS names them: `name=fd` pairs separated by commas,
where a name is the file's path relative to the model's directory
(`tokenizer.json`, `1_Pooling/config.json`).
"""

from __future__ import annotations

import fcntl
import os
import tempfile

ENV = "STOCKADE_MODEL_FDS"
# F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE
_IMMUTABLE = 0x1 | 0x2 | 0x4 | 0x8


class ModelFdError(RuntimeError):
    """A model fd is missing, malformed or not sealed."""


def model_fds(environ=None) -> dict[str, int]:
    """name -> fd from STOCKADE_MODEL_FDS, each checked to be a sealed memfd."""
    env = os.environ if environ is None else environ
    value = env.get(ENV, "")
    files: dict[str, int] = {}
    for item in filter(None, value.split(",")):
        name, sep, number = item.rpartition("=")
        if not sep or not name or not number.isdigit():
            raise ModelFdError(f"{ENV}: malformed entry {item!r}")
        if name.startswith("/") or ".." in name.split("/"):
            raise ModelFdError(f"{ENV}: {name!r} must be a relative path without '..'")
        fd = int(number)
        try:
            seals = fcntl.fcntl(fd, getattr(fcntl, "F_GET_SEALS", 1034))
        except OSError as e:
            raise ModelFdError(f"{ENV}: fd {fd} for {name} is not a sealable memfd ({e})") from None
        if seals & _IMMUTABLE != _IMMUTABLE:
            raise ModelFdError(f"{ENV}: fd {fd} for {name} is not sealed against change (seals 0x{seals:x})")
        files[name] = fd
    return files


def model_directory(environ=None, parent: str | None = None) -> str | None:
    """A directory whose entries lead to the sealed model memfds (symlinks to
    /proc/self/fd/N), for loaders that want paths; None when no model fds
    were passed."""
    files = model_fds(environ)
    if not files:
        return None
    base = tempfile.mkdtemp(prefix="stockade-models-", dir=parent)
    for name, fd in files.items():
        path = os.path.join(base, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        os.symlink(f"/proc/self/fd/{fd}", path)
    return base
