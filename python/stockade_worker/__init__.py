"""Stockade worker SDK: serve requests over the launcher's encrypted channel.

    import stockade_worker

    def handle(payload: bytes) -> bytes:
        return payload[::-1]

    stockade_worker.serve(handle)

The launcher passes a socket and a sealed memfd (PSK and parameters) at the
descriptors named in STOCKADE_CHANNEL; see docs/PROTOCOL.md. A handler
refuses a bad request by raising RequestError (400), RequestTooLarge (413) or
RequestUnprocessable (422); pinned model files arrive as sealed memfds
(model_fds, model_directory). serve_template(load) loads once and serves
from workers forked off that template when stockaded runs the tenant as one.
"""
from .channel import Channel, ChannelViolation, Params, connect, parse_params, serve
from .errors import RequestError, RequestTooLarge, RequestUnprocessable
from .models import ModelFdError, model_directory, model_fds
from .noise import Handshake, NoiseError
from .template import serve_template
from .version import PROTOCOL_VERSION, __version__

__all__ = ["serve", "serve_template", "connect", "Channel", "ChannelViolation", "Params", "parse_params", "Handshake", "NoiseError",
           "RequestError", "RequestTooLarge", "RequestUnprocessable", "model_fds", "model_directory", "ModelFdError",
           "PROTOCOL_VERSION", "__version__"]
