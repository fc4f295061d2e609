"""PyStrands: Python backends for the PyStrands WebSocket broker.

End users hold WebSocket connections to the broker (``pystrands-server``,
bundled with this package: ``python -m pystrands server``); the application
backend connects to the broker's TCP port with one of these clients and
decides who may connect, which room each client is in, and what everyone
receives.

- :class:`PyStrandsClient`: threaded client, subclass and override ``on_*``.
- :class:`AsyncPyStrandsClient`: the same on asyncio.
- :class:`PyStrands`: decorator API on top of the asyncio client.
- :class:`Context`, :class:`ConnectionRequestContext`: what handlers receive.
- :mod:`pystrands.protocol`: the wire protocol, without I/O.
"""

from __future__ import annotations

from . import context, errors, protocol
from .app import PyStrands
from .async_client import AsyncPyStrandsClient
from .client import PyStrandsClient
from .context import ConnectionRequestContext, Context
from .errors import (
    NotConnectedError,
    ProtocolError,
    PyStrandsConnectionError,
    PyStrandsError,
    ServerBinaryNotFoundError,
)


def _version() -> str:
    try:
        from importlib.metadata import PackageNotFoundError, version
    except ImportError:  # pragma: no cover
        return "0+unknown"
    try:
        return version("pystrands")
    except PackageNotFoundError:  # running from a source tree
        return "0+unknown"


__version__ = _version()

__all__ = [
    "PyStrandsClient",
    "AsyncPyStrandsClient",
    "PyStrands",
    "Context",
    "ConnectionRequestContext",
    "PyStrandsError",
    "PyStrandsConnectionError",
    "NotConnectedError",
    "ProtocolError",
    "ServerBinaryNotFoundError",
    "context",
    "errors",
    "protocol",
    "__version__",
]
