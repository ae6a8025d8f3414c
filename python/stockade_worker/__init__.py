"""Stockade worker SDK: serve requests over the launcher's encrypted channel.

    import stockade_worker

    def handle(payload: bytes) -> bytes:
        return payload[::-1]

    stockade_worker.serve(handle)

The launcher passes a socket and a sealed memfd (PSK and parameters) at the
descriptors named in STOCKADE_CHANNEL; see docs/PROTOCOL.md.
"""
from .channel import Channel, ChannelViolation, Params, connect, parse_params, serve
from .noise import Handshake, NoiseError

__all__ = ["serve", "connect", "Channel", "ChannelViolation", "Params", "parse_params", "Handshake", "NoiseError"]
__version__ = "0.1.0"
