"""Error kinds a worker reports for a request it refuses.

An error record's payload starts with its kind and ": " (docs/PROTOCOL.md,
"Error kinds"); stockaded answers the client by the kind:

    input          400  the request is malformed (not JSON, wrong types, bad UTF-8)
    too-large      413  the request is well-formed but larger than this worker takes
    unprocessable  422  well-formed and within limits, but cannot be served

Any other exception is the worker's own failure (stockaded answers 502). A
handler may raise these classes, or any ValueError with a `kind` attribute
of the three (so that a worker need not import the SDK to refuse).
"""

from __future__ import annotations


class RequestError(ValueError):
    """The request is malformed: the client's fault (400)."""

    kind = "input"


class RequestTooLarge(RequestError):
    """The request exceeds what this worker's budget can hold (413)."""

    kind = "too-large"


class RequestUnprocessable(RequestError):
    """The request cannot be served as asked (422)."""

    kind = "unprocessable"


KINDS = ("input", "too-large", "unprocessable")


def error_payload(exc: BaseException) -> bytes:
    """The error record's payload for an exception raised by a handler."""
    kind = getattr(exc, "kind", None)
    if isinstance(exc, ValueError) and kind in KINDS:
        return f"{kind}: {exc}".encode()
    return f"{type(exc).__name__}: {exc}".encode()
