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
    "ReplyTimeoutError",
    "BrokerError",
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


class ReplyTimeoutError(PyStrandsError, TimeoutError):
    """The broker did not answer a request (``presence``, ``presence_stats``,
    or any call made with ``ack=True``) within the client's ``reply_timeout``.

    ``action`` is the request's wire action (e.g. ``"presence"``), ``timeout``
    the seconds waited.
    """

    def __init__(self, action: str, timeout: float, peer: str) -> None:
        super().__init__(f"no reply to {action} from the broker at {peer} within {timeout:g} s")
        self.action = action
        self.timeout = timeout


class BrokerError(PyStrandsError, RuntimeError):
    """The broker answered a request with an ``error`` line: the request was
    not carried out. ``action`` is the request's wire action, ``error`` the
    broker's message, verbatim."""

    def __init__(self, action: str, error: str) -> None:
        super().__init__(f"the broker refused {action}: {error}")
        self.action = action
        self.error = error


class ServerBinaryNotFoundError(PyStrandsError, FileNotFoundError):
    """The bundled ``pystrands-server`` executable could not be found."""
