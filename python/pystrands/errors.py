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
    "AuthenticationError",
    "NotABrokerError",
    "ProtocolError",
    "MessageTooLargeError",
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


class AuthenticationError(PyStrandsConnectionError):
    """The broker refused the backend's token (wrong, or missing while the
    broker runs with ``--backend-token``). Retrying cannot help, so the
    client stops: ``connect()`` and ``run_forever()`` raise it. ``reason`` is
    the broker's message, verbatim."""

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason


class NotABrokerError(PyStrandsConnectionError):
    """What answered at the backend address is not a PyStrands broker's
    backend port (for example its WebSocket port, which answers with HTTP).
    Retrying cannot help: ``connect()`` and ``run_forever()`` raise it."""


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


class MessageTooLargeError(PyStrandsError, ValueError):
    """A command's line would be longer than the client's ``max_line_size``
    (the broker's ``--max-line-size``, 16 MiB by default). The broker would
    close the whole backend connection on such a line, so it is not sent.

    ``size`` is the line's length in bytes, ``limit`` the setting.
    """

    def __init__(self, action: str, size: int, limit: int) -> None:
        super().__init__(
            f"{action}: the line is {size:,} bytes, over max_line_size ({limit:,} bytes); "
            "the broker (--max-line-size) would close the backend connection on it. "
            "JSON escaping and base64 (binary messages) make a line longer than its message."
        )
        self.action = action
        self.size = size
        self.limit = limit


class ServerBinaryNotFoundError(PyStrandsError, FileNotFoundError):
    """The bundled ``pystrands-server`` executable could not be found."""
