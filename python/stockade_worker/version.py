"""The channel protocol this SDK speaks, and the package's version.

The package's major version is the protocol version (docs/PROTOCOL.md, "The
Stockade channel, version N"; the params memfd's version byte): a worker
written for protocol 1 depends on ``stockade-worker>=1,<2``. Minor and patch
count SDK changes that keep the protocol. pyproject.toml reads
``__version__`` from here, so the two cannot drift apart.
"""

PROTOCOL_VERSION = 1
__version__ = "1.1.0"
