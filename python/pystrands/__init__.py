"""PyStrands: Python backends for the PyStrands WebSocket broker.

End users hold WebSocket connections to the broker (``pystrands-server``,
bundled with this package: ``python -m pystrands server``); the application
backend connects to the broker's TCP port with one of these clients and
decides who may connect, which room each client is in, and what everyone
receives.

- :class:`PyStrandsClient`: threaded client, subclass and override ``on_*``.
- :class:`AsyncPyStrandsClient`: the same on asyncio.
- :class:`PyStrands`: decorator API on top of the asyncio client.
- :class:`Publisher`, :class:`AsyncPublisher`: send-only connections, for
  code that is not the backend (a web view, a cron job).
- :class:`Context`, :class:`ConnectionRequestContext`: what handlers receive;
  :class:`PresenceEntry`, :class:`PresenceStats`: what presence queries return.
- :mod:`pystrands.protocol`: the wire protocol and the dispatch core, without I/O.
"""

from __future__ import annotations

from . import context, errors, protocol
from .app import PyStrands
from .async_client import AsyncPyStrandsClient
from .client import PyStrandsClient
from .context import ConnectionRequestContext, Context, PresenceEntry, PresenceStats
from .errors import (
    AuthenticationError,
    BrokerError,
    MessageTooLargeError,
    NotABrokerError,
    NotConnectedError,
    ProtocolError,
    PyStrandsConnectionError,
    PyStrandsError,
    ReplyTimeoutError,
    ServerBinaryNotFoundError,
)
from .publisher import AsyncPublisher, Publisher


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
    "Publisher",
    "AsyncPublisher",
    "Context",
    "ConnectionRequestContext",
    "PresenceEntry",
    "PresenceStats",
    "PyStrandsError",
    "PyStrandsConnectionError",
    "NotConnectedError",
    "AuthenticationError",
    "NotABrokerError",
    "MessageTooLargeError",
    "ProtocolError",
    "ReplyTimeoutError",
    "BrokerError",
    "ServerBinaryNotFoundError",
    "context",
    "errors",
    "protocol",
    "__version__",
]
