"""The one exception hierarchy of the ``pystrands`` package.

Everything the package raises on purpose derives from :class:`PyStrandsError`,
and each class also derives from the closest built-in exception, so code that
catches ``ConnectionError`` or ``ValueError`` keeps working.
"""

from __future__ import annotations

__all__ = [
    "PyStrandsError",
    "PyStrandsConnectionError",
    "NotConnectedError",
    "ProtocolError",
    "ServerBinaryNotFoundError",
]


class PyStrandsError(Exception):
    """Base class of every error raised by ``pystrands``."""


class PyStrandsConnectionError(PyStrandsError, ConnectionError):
    """The connection to the broker could not be opened, or it was lost."""


class NotConnectedError(PyStrandsConnectionError):
    """A send was attempted while the client is not connected to the broker.

    Raised by ``broadcast_message``, ``send_room_message`` and
    ``send_private_message`` before ``connect()``, after ``disconnect()``,
    and while an automatic reconnect is still in progress.
    """


class ProtocolError(PyStrandsError, ValueError):
    """A line from the broker is not a valid wire-protocol event."""


class ServerBinaryNotFoundError(PyStrandsError, FileNotFoundError):
    """The bundled ``pystrands-server`` executable could not be found."""
