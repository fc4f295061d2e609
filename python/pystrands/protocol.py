"""The PyStrands wire protocol (v1 and its 1.1 extensions), without any I/O.

Every part of the package that talks to the broker (the threaded
:mod:`pystrands.client`, the asyncio :mod:`pystrands.async_client`, and the
publishers of :mod:`pystrands.publisher`) holds one :class:`BackendProtocol`:
the dispatch core. Bytes from the broker go in (:meth:`BackendProtocol.receive_from`);
out come, in the broker's order, the handler calls to make
(:attr:`BackendProtocol.events`), the answers to connection requests (bytes
to write at once), and the replies to requests, settled on the waiter the
I/O layer registered (a ``concurrent.futures.Future`` or an
``asyncio.Future``). Commands go the other way: the core validates the
arguments and builds the line, and says whether a reply is expected
(:class:`Request`). The I/O layers only move bytes, run handlers and wait;
neither parses nor formats JSON itself; both take their settings and
reconnect schedule from :class:`ConnectionSettings`. Nothing here touches a
socket, a thread or an event loop, so everything can be unit-tested with
plain values: lines in, calls, answers and settled waiters out.

Framing: one JSON object per line, UTF-8, ``\\n`` terminated, in both
directions. Envelope: ``{"action": ..., "request_id": ..., "params": {...}}``.
Binary messages (an additive extension the 1.0.0 client ignores) carry the
payload base64-encoded in ``message`` plus ``"binary": true``, both ways.

Hot-path notes (the Python backend is usually what limits a deployment):

- :class:`LineBuffer` splits a whole ``recv()`` chunk at once: one ``rfind``,
  one UTF-8 decode and one ``str.split`` per chunk, never one slice per line,
  so a chunk of N lines costs O(N) however it was cut.
- :func:`decode` calls the C JSON scanner directly, skipping the Python layers
  of ``json.loads``; anything unusual falls back to ``json.loads`` so errors
  keep their precise messages.
- The three send commands are formatted with the C string escaper into an
  f-string: no dict is built and no generic ``json.dumps`` runs per message.
"""

from __future__ import annotations

import binascii
import inspect
import json
import logging
import os
import random
import sys
import uuid
from base64 import b64decode, b64encode
from collections import deque
from inspect import isawaitable
from itertools import count
from json.encoder import encode_basestring
from typing import (
    Any,
    Awaitable,
    Callable,
    Deque,
    Dict,
    Iterable,
    Iterator,
    List,
    Optional,
    Protocol,
    Sequence,
    Tuple,
    Union,
)

from .context import ConnectionRequestContext, Context, PresenceEntry, PresenceStats
from .errors import (
    AuthenticationError,
    BrokerError,
    MessageTooLargeError,
    NotABrokerError,
    ProtocolError,
    PyStrandsConnectionError,
)

__all__ = [
    "CONNECTION_REQUEST",
    "NEW_CONNECTION",
    "NEW_MESSAGE",
    "DISCONNECTED",
    "ERROR",
    "HEARTBEAT",
    "RESPONSE",
    "BROADCAST",
    "MESSAGE_TO_ROOM",
    "MESSAGE_TO_CONNECTION",
    "MAX_LINE_BYTES",
    "LineBuffer",
    "decode",
    "decode_new_message",
    "decode_binary",
    "encode_line",
    "encode_broadcast",
    "encode_room_message",
    "encode_private_message",
    "encode_response",
    "encode_auth",
    "TOKEN_ENV",
    "connection_request_from_params",
    "context_from_params",
    "decide_accepted",
    "encode_decision",
    "ConnectionSettings",
    "BackendProtocol",
    "Request",
    "Outgoing",
    "Call",
    "Waiter",
    "JOIN_ROOM",
    "LEAVE_ROOM",
    "DISCONNECT",
    "SET_METADATA",
    "PRESENCE",
    "PRESENCE_STATS",
    "ACK",
    "MAX_CLOSE_REASON_BYTES",
    "parse_reply",
    "check_text",
    "check_reply_timeout",
    "check_close_code",
    "check_close_reason",
    "message_params",
    "id_list",
    "target_params",
    "connection_request_from_event",
    "HOST_ENV",
    "PORT_ENV",
    "DEFAULT_MAX_LINE_SIZE",
    "broker_address",
    "check_line_size",
    "Lanes",
    "lane_key",
    "count_events",
    "check_size",
]

# Broker -> backend actions.
CONNECTION_REQUEST = "connection_request"
NEW_CONNECTION = "new_connection"
NEW_MESSAGE = "new_message"
DISCONNECTED = "disconnected"
ERROR = "error"
HEARTBEAT = "heartbeat"

# Backend -> broker actions.
AUTH = "auth"
RESPONSE = "response"
BROADCAST = "broadcast"
MESSAGE_TO_ROOM = "message_to_room"
MESSAGE_TO_CONNECTION = "message_to_connection"
# Protocol 1.1 (extensions): room membership, kicks, metadata, presence.
JOIN_ROOM = "join_room"
LEAVE_ROOM = "leave_room"
DISCONNECT = "disconnect"
SET_METADATA = "set_metadata"
PRESENCE = "presence"
PRESENCE_STATS = "presence_stats"

# Broker -> backend replies (protocol 1.1), matched to a request by its
# request_id; ``error`` is also a reply when its request_id is a pending one.
ACK = "ack"
_REPLIES = frozenset((ACK, PRESENCE, PRESENCE_STATS, ERROR))

#: A WebSocket close reason holds at most 123 bytes of UTF-8 (RFC 6455 5.5).
MAX_CLOSE_REASON_BYTES = 123

#: Longest line accepted from the broker (bytes, without the newline). The
#: broker's own limit for a backend line is 16 MiB; a longer partial line means
#: the stream is corrupt, and buffering it further would only waste memory.
MAX_LINE_BYTES = 64 * 1024 * 1024

# The C implementations when available. Typed loosely: the typeshed stubs do
# not declare these, and the encoders pass non-str on purpose (TypeError path).
_escape: Callable[[Any], str] = encode_basestring
_scan_once: Callable[[str, int], Tuple[Any, int]] = json.JSONDecoder().scan_once  # type: ignore[attr-defined]
_scanstring: Callable[[str, int, bool], Tuple[str, int]] = json.decoder.scanstring  # type: ignore[attr-defined]
_json_loads = json.loads
_compact_dumps = json.JSONEncoder(
    ensure_ascii=False, allow_nan=False, separators=(",", ":")
).encode


class LineBuffer:
    """Reassembles newline-terminated lines from arbitrary byte chunks.

    ``feed(chunk)`` returns the complete lines the chunk finished, decoded to
    ``str`` (without the ``\\n``; empty lines are kept as ``""``, callers skip
    them), and keeps any trailing partial line for the next call. A partial
    line longer than ``max_line`` raises :class:`ProtocolError`.
    """

    __slots__ = ("_parts", "_pending", "max_line", "text")

    def __init__(self, max_line: int = MAX_LINE_BYTES) -> None:
        self._parts: List[bytes] = []  # pieces of one unfinished line
        self._pending = 0  # bytes held in _parts
        self.max_line = max_line
        #: The decoded text of the lines the last call returned, newlines
        #: included: one ``in`` searches all of them at C speed.
        self.text = ""

    @property
    def pending_bytes(self) -> int:
        """Bytes of an unfinished line held until its newline arrives."""
        return self._pending

    def feed(self, data: bytes) -> List[str]:
        end = data.rfind(b"\n")
        if end < 0:
            self.text = ""
            if data:
                self._parts.append(data)
                self._pending += len(data)
                if self._pending > self.max_line:
                    self._parts.clear()
                    self._pending = 0
                    raise ProtocolError(
                        f"line from the broker exceeds {self.max_line} bytes"
                    )
            return []
        if self._parts:
            self._parts.append(data[: end + 1])
            chunk = b"".join(self._parts)
            self._parts.clear()
            self._pending = 0
        elif end == len(data) - 1:
            chunk = data
        else:
            chunk = data[: end + 1]
        if end != len(data) - 1:
            rest = data[end + 1 :]
            self._parts.append(rest)
            self._pending = len(rest)
        try:
            text = chunk.decode("utf-8")
        except UnicodeDecodeError:
            # The broker only relays valid UTF-8; keep going rather than drop
            # the whole chunk if that ever fails.
            text = chunk.decode("utf-8", "replace")
        self.text = text
        lines = text.split("\n")
        lines.pop()  # the empty string after the final newline
        return lines

    def feed_from(self, buffer: bytearray, size: int) -> List[str]:
        """Like :meth:`feed` for the first ``size`` bytes of a reused receive
        buffer (``sock.recv_into(buffer)``): a fresh ``recv(256 KiB)`` costs
        CPython an mmap, an mremap and a munmap per call; a reused buffer
        costs none. Only a trailing partial line is kept (copied)."""
        end = buffer.rfind(b"\n", 0, size)
        if end < 0 or self._parts:
            return self.feed(bytes(buffer[:size]))
        try:
            text = buffer[:end].decode("utf-8")
        except UnicodeDecodeError:
            text = buffer[:end].decode("utf-8", "replace")
        if end != size - 1:
            rest = bytes(buffer[end + 1 : size])
            self._parts.append(rest)
            self._pending = len(rest)
        self.text = text
        return text.split("\n")


def decode(line: str) -> Dict[str, Any]:
    """Parse one line into its envelope dict; :class:`ProtocolError` if it is not one."""
    try:
        obj, end = _scan_once(line, 0)
    except (StopIteration, ValueError):
        return _decode_slow(line)
    if end != len(line) or type(obj) is not dict:
        return _decode_slow(line)
    return obj


# The broker writes every text new_message in one shape, with the client's
# context serialised once at accept time and repeated verbatim:
#   {"action":"new_message","request_id":"","params":{"message":"...","context":{...}}}
# decode_new_message() reads only the message string and looks the context
# text up in a cache, instead of parsing the whole envelope for every message.
_NEW_MESSAGE_PREFIX = '{"action":"new_message","request_id":"","params":{"message":"'
_NEW_MESSAGE_START = len(_NEW_MESSAGE_PREFIX)
_CONTEXT_KEY = ',"context":'
_CONTEXT_START = len(_CONTEXT_KEY)
_CONTEXT_CACHE_MAX = 10_000
#: context JSON text -> (client_id, room_id, connection_id, rooms), for
#: contexts with empty metadata
_context_cache: Dict[str, Tuple[str, str, str, Tuple[str, ...]]] = {}


def decode_new_message(line: str) -> Optional[Tuple[str, Context]]:
    """Fast path for the commonest line: a text ``new_message`` in the shape
    this broker writes. Returns ``(message, context)``, or ``None`` for any
    other line (decode those with :func:`decode`). Every context it returns is
    a new object with its own metadata dict."""
    if not line.startswith(_NEW_MESSAGE_PREFIX):
        return None
    try:
        message, end = _scanstring(line, _NEW_MESSAGE_START, True)
    except ValueError:
        return None
    if not line.startswith(_CONTEXT_KEY, end) or not line.endswith("}}"):
        return None
    context_text = line[end + _CONTEXT_START : -2]
    known = _context_cache.get(context_text)
    if known is not None:
        return message, Context(known[0], known[1], {}, known[2], [*known[3]])
    try:
        c, c_end = _scan_once(context_text, 0)
    except (StopIteration, ValueError):
        return None
    if c_end != len(context_text) or type(c) is not dict:
        return None
    client_id = c.get("client_id")
    room_id = c.get("room_id")
    metadata = c.get("metadata")
    if type(client_id) is not str or type(room_id) is not str or type(metadata) is not dict:
        return None
    connection_id = c.get("connection_id", "")
    rooms = c.get("rooms", [])
    if type(connection_id) is not str or type(rooms) is not list:
        return None
    for room in rooms:
        if type(room) is not str:
            return None
    if not metadata:
        if len(_context_cache) >= _CONTEXT_CACHE_MAX:
            _context_cache.clear()
        _context_cache[context_text] = (client_id, room_id, connection_id, tuple(rooms))
    return message, Context(client_id, room_id, metadata, connection_id, rooms)


def _decode_slow(line: str) -> Dict[str, Any]:
    try:
        obj = _json_loads(line)
    except ValueError as exc:
        raise ProtocolError(f"invalid JSON from the broker: {exc}: {line[:200]!r}") from None
    if type(obj) is not dict:
        raise ProtocolError(f"expected a JSON object from the broker: {line[:200]!r}")
    return obj


#: What the send methods accept: text goes out as a text frame, bytes-like
#: objects as a binary frame (the wire extension: base64 + ``"binary": true``).
Message = Union[str, bytes, bytearray, memoryview]
_BYTES_TYPES = (bytes, bytearray, memoryview)


def decode_binary(message: str) -> bytes:
    """The payload of a ``new_message`` that has ``"binary": true``."""
    return b64decode(message)


def encode_line(action: str, params: Dict[str, Any], request_id: str = "") -> bytes:
    """Generic encoder: any action, params as a JSON-serialisable dict."""
    return (
        _compact_dumps({"action": action, "request_id": request_id, "params": params}) + "\n"
    ).encode("utf-8")


def _bad_text(name: str, value: object) -> Exception:
    if isinstance(value, str):  # the only way a str fails to encode: lone surrogates
        return ValueError(f"{name} is not valid Unicode text (it contains a lone surrogate)")
    if name == "message":
        return TypeError(f"message must be a str or bytes, not {type(value).__name__}")
    return TypeError(f"{name} must be a str, not {type(value).__name__}")


def _binary_params(message: Union[bytes, bytearray, memoryview]) -> str:
    return f'"message":"{b64encode(message).decode("ascii")}","binary":true}}}}\n'


def encode_broadcast(message: Message, request_id: str = "") -> bytes:
    """``broadcast``: ``message`` to every connected client (bytes: a binary frame)."""
    try:
        return (
            f'{{"action":"broadcast","request_id":{_escape(request_id)},'
            f'"params":{{"message":{_escape(message)}}}}}\n'
        ).encode("utf-8")
    except (TypeError, UnicodeEncodeError):
        if isinstance(message, _BYTES_TYPES):
            return (
                f'{{"action":"broadcast","request_id":{_escape(request_id)},"params":{{'
                + _binary_params(message)
            ).encode("utf-8")
        raise _bad_text("message", message) from None


def encode_room_message(room_id: str, message: Message, request_id: str = "") -> bytes:
    """``message_to_room``: ``message`` to every client in ``room_id``."""
    try:
        return (
            f'{_ROOM_HEAD}{_escape(request_id)}{_ROOM_KEY}{_escape(room_id)},'
            f'"message":{_escape(message)}}}}}\n'
        ).encode("utf-8")
    except (TypeError, UnicodeEncodeError):
        return _encode_targeted_other(
            _ROOM_HEAD, _ROOM_KEY, "room_id", room_id, message, request_id
        )


def encode_private_message(client_id: str, message: Message, request_id: str = "") -> bytes:
    """``message_to_connection``: ``message`` to every connection of ``client_id``."""
    try:
        return (
            f'{_CONN_HEAD}{_escape(request_id)}{_CONN_KEY}{_escape(client_id)},'
            f'"message":{_escape(message)}}}}}\n'
        ).encode("utf-8")
    except (TypeError, UnicodeEncodeError):
        return _encode_targeted_other(
            _CONN_HEAD, _CONN_KEY, "client_id", client_id, message, request_id
        )


# The fixed parts of the two addressed commands, formatted once.
_ROOM_HEAD = f'{{"action":"{MESSAGE_TO_ROOM}","request_id":'
_ROOM_KEY = ',"params":{"room_id":'
_CONN_HEAD = f'{{"action":"{MESSAGE_TO_CONNECTION}","request_id":'
_CONN_KEY = ',"params":{"conn_id":'


def _encode_targeted_other(
    head: str, key: str, name: str, target: str, message: Message, request_id: str
) -> bytes:
    """The rest of :func:`encode_room_message` and :func:`encode_private_message`
    once the text fast path has failed: a binary ``message`` to ``target`` is
    encoded (``head``/``key`` are the command's fixed parts), anything else
    raises, naming the bad argument (``name`` is the caller's for ``target``).
    Kept out of the two encoders so their fast path stays one f-string."""
    if isinstance(message, _BYTES_TYPES) and _is_text(target):
        return (
            f"{head}{_escape(request_id)}{key}{_escape(target)}," + _binary_params(message)
        ).encode("utf-8")
    bad = name if not _is_text(target) else "message"
    raise _bad_text(bad, target if bad == name else message) from None


def _is_text(value: object) -> bool:
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def encode_response(
    request_id: str,
    accepted: bool,
    context: Optional[Context],
    *,
    rooms: Sequence[str] = (),
    subprotocol: Optional[str] = None,
    status: Optional[int] = None,
    reason: str = "",
) -> bytes:
    """``response`` to the ``connection_request`` whose id is ``request_id``.

    The context's fields are always included when there is a context (also
    for a rejection: harmless, and it tells the broker's logs who was refused).
    Protocol 1.1 fields, each only when set: on acceptance ``rooms`` (more
    rooms to join besides ``context.room_id``) and ``subprotocol``; on
    rejection ``status`` (400-499) and ``reason`` (the plain-text body).
    """
    params: Dict[str, Any] = {"accepted": bool(accepted)}
    if context is not None:
        client_id, room_id, metadata = context.client_id, context.room_id, context.metadata
        if not isinstance(client_id, str):
            raise TypeError(f"context.client_id must be a str, not {type(client_id).__name__}")
        if not isinstance(room_id, str):
            raise TypeError(f"context.room_id must be a str, not {type(room_id).__name__}")
        if metadata is None:
            metadata = {}
        elif not isinstance(metadata, dict):
            raise TypeError(f"context.metadata must be a dict, not {type(metadata).__name__}")
        params["client_id"] = client_id
        params["room_id"] = room_id
        params["metadata"] = metadata
    if accepted:
        if rooms:
            params["rooms"] = [check_text("rooms[]", room) for room in rooms]
        if subprotocol is not None:
            params["subprotocol"] = check_text("subprotocol", subprotocol)
    elif status is not None:
        if type(status) is not int or not 400 <= status <= 499:
            raise ValueError(f"status must be an int from 400 to 499, got {status!r}")
        params["status"] = status
        if reason:
            params["reason"] = check_text("reason", reason)
    return encode_line(RESPONSE, params, request_id)


def encode_decision(request_id: str, request: ConnectionRequestContext, accepted: bool) -> bytes:
    """The ``response`` that carries out the decision on ``request``: its
    context, extra rooms and subprotocol when accepted; the status and reason
    of :meth:`~pystrands.context.ConnectionRequestContext.reject` when not."""
    return encode_response(
        request_id,
        accepted,
        request.context,
        rooms=request.rooms,
        subprotocol=request.subprotocol,
        status=request.status,
        reason=request.reason,
    )


#: Environment variable the clients read the backend token from when no
#: ``token=`` is given (the broker's ``--backend-token`` / PYSTRANDS_BACKEND_TOKEN).
TOKEN_ENV = "PYSTRANDS_BACKEND_TOKEN"
#: Environment variables the clients and publishers read the broker's address
#: from when ``host`` / ``port`` are not given.
HOST_ENV = "PYSTRANDS_HOST"
PORT_ENV = "PYSTRANDS_PORT"
DEFAULT_HOST = "localhost"
DEFAULT_PORT = 8081
#: The broker's default ``--max-line-size``: the longest line a backend may send.
DEFAULT_MAX_LINE_SIZE = 16 * 1024 * 1024
#: The broker's default ``--heartbeat-interval``, in seconds.
DEFAULT_HEARTBEAT_INTERVAL = 15.0
#: Heartbeat intervals without any data from the broker after which a client
#: declares the link dead and reconnects.
MISSED_HEARTBEATS = 3


def broker_address(host: Optional[str], port: Optional[int]) -> Tuple[str, int]:
    """The broker's backend address: ``host`` and ``port`` when given, else
    ``$PYSTRANDS_HOST`` / ``$PYSTRANDS_PORT``, else ``localhost:8081``."""
    if host is None:
        host = os.environ.get(HOST_ENV) or DEFAULT_HOST
    if port is None:
        raw = os.environ.get(PORT_ENV)
        if raw:
            try:
                port = int(raw)
            except ValueError:
                raise ValueError(f"{PORT_ENV}={raw!r} is not a port number") from None
            if not 0 < port < 65536:
                raise ValueError(f"{PORT_ENV}={raw!r} is not a port number (1-65535)")
        else:
            port = DEFAULT_PORT
    return host, port


def check_seconds(name: str, value: Optional[float], none_ok: bool = False) -> Optional[float]:
    """``value`` as a float if it is a positive number of seconds (or None
    when ``none_ok``), else ValueError naming ``name``."""
    if value is None and none_ok:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
    return float(value)


def check_count(name: str, value: int, minimum: int = 1) -> int:
    """``value`` if it is an int of at least ``minimum``, else ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int of at least {minimum}, got {value!r}")
    return value


class ConnectionSettings:
    """Where and how a backend connects: the settings shared by the threaded
    and the asyncio clients (not I/O: the clients do the connecting).

    The arguments become attributes of the same names (the 1.0.0 API):

    - ``host``, ``port``: the broker's backend (TCP) port; when not given,
      ``$PYSTRANDS_HOST`` / ``$PYSTRANDS_PORT``, else ``localhost:8081``;
    - ``auto_reconnect``, ``reconnect_delay``, ``max_reconnect_delay``,
      ``reconnect_backoff``: the reconnect schedule (:meth:`_reconnect_waits`);
    - ``token``: defaults to ``$PYSTRANDS_BACKEND_TOKEN``;
    - ``reply_timeout`` (seconds, default 5): bounds every wait for a reply;
    - ``concurrency``: how many handlers may run at once (of different
      connections: one connection's handlers always run one at a time, in
      order); ``1`` handles every event in the broker's order. Default: the
      client class's :attr:`default_concurrency`;
    - ``shutdown_timeout`` (seconds, default 10): how long a graceful stop
      (``disconnect()``, SIGTERM, Ctrl-C) waits for running handlers and for
      the events already read;
    - ``max_line_size`` (bytes, default 16 MiB): the broker's
      ``--max-line-size``; a command whose line is longer raises
      :class:`~pystrands.errors.MessageTooLargeError` instead of being sent;
    - ``heartbeat_interval`` (seconds, default 15; ``None``: no check): the
      broker's ``--heartbeat-interval``; no data from the broker for three
      intervals means the link is dead, and the client reconnects;
    - ``connect_timeout`` (seconds, default 5): bounds the TCP connect and
      the wait for the broker to accept the backend.

    After setting them, ``__init__`` calls :meth:`_setup` for the client's
    own state.
    """

    # Slots, not an instance dict: the clients' attributes are read on every
    # event, and a dict of many keys defeats CPython's attribute caches (a
    # subclass's own attributes still go to its instance dict).
    __slots__ = (
        "host",
        "port",
        "auto_reconnect",
        "reconnect_delay",
        "max_reconnect_delay",
        "reconnect_backoff",
        "token",
        "reply_timeout",
        "concurrency",
        "shutdown_timeout",
        "max_line_size",
        "heartbeat_interval",
        "connect_timeout",
        "_connected",
    )

    #: The default of ``concurrency`` (each client class sets its own).
    default_concurrency = 1

    def __init__(
        self,
        host: Optional[str] = None,
        port: Optional[int] = None,
        auto_reconnect: bool = True,
        reconnect_delay: float = 1.0,
        max_reconnect_delay: float = 30.0,
        reconnect_backoff: float = 2.0,
        *,
        token: Optional[str] = None,
        reply_timeout: float = 5.0,
        concurrency: Optional[int] = None,
        shutdown_timeout: float = 10.0,
        max_line_size: int = DEFAULT_MAX_LINE_SIZE,
        heartbeat_interval: Optional[float] = DEFAULT_HEARTBEAT_INTERVAL,
        connect_timeout: float = 5.0,
    ) -> None:
        self.host, self.port = broker_address(host, port)
        self.auto_reconnect = auto_reconnect
        self.reconnect_delay = reconnect_delay
        self.max_reconnect_delay = max_reconnect_delay
        self.reconnect_backoff = reconnect_backoff
        #: Sent first on every connection when set (the broker's
        #: ``--backend-token``); defaults to $PYSTRANDS_BACKEND_TOKEN.
        self.token = token if token is not None else (os.environ.get(TOKEN_ENV) or None)
        #: Seconds to wait for the broker's reply to a request (``presence``,
        #: ``presence_stats``, any call with ``ack=True``) before raising
        #: :class:`~pystrands.errors.ReplyTimeoutError`.
        self.reply_timeout = check_reply_timeout(reply_timeout)
        #: Handlers that may run at once (of different connections).
        self.concurrency = check_count(
            "concurrency", self.default_concurrency if concurrency is None else concurrency
        )
        #: Seconds a graceful stop waits for handlers and events already read.
        self.shutdown_timeout = float(check_seconds("shutdown_timeout", shutdown_timeout) or 0)
        #: Longest line the broker accepts (its ``--max-line-size``).
        self.max_line_size = check_count("max_line_size", max_line_size, 1024)
        #: The broker's ``--heartbeat-interval``; None: no liveness check.
        self.heartbeat_interval = check_seconds("heartbeat_interval", heartbeat_interval, none_ok=True)
        #: Seconds for the TCP connect and for the broker to accept the backend.
        self.connect_timeout = float(check_seconds("connect_timeout", connect_timeout) or 0)
        self._connected = False
        self._setup()

    @property
    def connected(self) -> bool:
        """True while a connection to the broker is open and usable for
        sending. Read-only: :meth:`connect` and :meth:`disconnect` change it."""
        return self._connected

    @property
    def address(self) -> str:
        """``host:port`` of the broker; every log line of the client names it."""
        return f"{self.host}:{self.port}"

    def _setup(self) -> None:
        """The subclass's own state, set up at the end of ``__init__``."""

    def _reconnect_waits(self) -> Iterator[float]:
        """The waits before each reconnect attempt, in seconds: from
        ``reconnect_delay``, growing by ``reconnect_backoff`` up to
        ``max_reconnect_delay``, each multiplied by a random factor in
        [0.5, 1.0] (jitter). Each wait is drawn when it is needed, so the
        settings in force then apply."""
        delay = max(0.0, float(self.reconnect_delay))
        while True:
            yield delay * random.uniform(0.5, 1.0)
            delay = min(max(delay, 0.01) * self.reconnect_backoff, self.max_reconnect_delay)


def check_reply_timeout(seconds: float) -> float:
    """``seconds`` if it is a usable reply timeout (a positive number), else ValueError."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds > 0:
        raise ValueError(f"reply_timeout must be a positive number of seconds, got {seconds!r}")
    return float(seconds)


def encode_auth(token: Optional[str], *, events: bool = True) -> bytes:
    """``auth``: the first line on a broker that requires ``--backend-token``
    (a broker without a token ignores the token). ``events=False`` (protocol
    1.1) makes the connection a publisher: the broker sends it replies only,
    never connection requests or client events; ``token`` may then be None."""
    params: Dict[str, Any] = {}
    if not events:
        params["events"] = False
    if token is not None or events:
        if not isinstance(token, str):
            raise TypeError(f"token must be a str, not {type(token).__name__}")
        params["token"] = token
    return encode_line(AUTH, params)


def connection_request_from_event(
    event: Dict[str, Any]
) -> Tuple[str, ConnectionRequestContext]:
    """The request id (a str, ``""`` when missing) to answer with, and the
    request object (:func:`connection_request_from_params`) of a decoded
    ``connection_request`` event."""
    request_id = event.get("request_id")
    if not isinstance(request_id, str):
        request_id = "" if request_id is None else str(request_id)
    params = event.get("params")
    return request_id, connection_request_from_params(params if isinstance(params, dict) else {})


def connection_request_from_params(params: Dict[str, Any]) -> ConnectionRequestContext:
    """The request object handed to ``on_connection_request``, with the defaults
    of pystrands 1.0.0: a new UUID4 ``client_id``, ``room_id`` = the URL path,
    empty metadata, ``accepted = True``; plus, from a protocol 1.1 broker, the
    ``connection_id`` and the raw ``query`` string."""
    url = params.get("url")
    if not isinstance(url, str):
        url = ""
    headers = params.get("headers")
    remote_addr = params.get("remote_addr")
    connection_id = params.get("connection_id")
    if not isinstance(connection_id, str):
        connection_id = ""
    query = params.get("query")
    return ConnectionRequestContext(
        headers if isinstance(headers, dict) else {},
        url,
        remote_addr if isinstance(remote_addr, str) else "",
        Context(str(uuid.uuid4()), url, {}, connection_id),
        True,
        connection_id=connection_id,
        query=query if isinstance(query, str) else "",
    )


def context_from_params(params: Dict[str, Any]) -> Context:
    """The :class:`Context` of an event (empty fields when the event has none,
    e.g. an ``error`` about a line the broker could not use)."""
    c = params.get("context")
    return Context.from_json(c if isinstance(c, dict) else None)


def decide_accepted(result: object, request: ConnectionRequestContext) -> bool:
    """The decision of ``on_connection_request``: a returned ``True`` or
    ``False`` wins; ``None`` (no return) means ``request.accepted``. Anything
    else (``0``, ``""``, ``"no"``, a user object, a coroutine that a sync
    client cannot run) is a mistake that must not admit anyone: it raises
    :class:`TypeError`, which the core turns into a rejection.
    ``request.accepted`` must be a bool for the same reason."""
    if result is True or result is False:
        return result
    if result is not None:
        raise TypeError(
            f"on_connection_request returned a value of type {type(result).__name__!r}, "
            "not True, False or None"
        )
    accepted = request.accepted
    if accepted is True or accepted is False:
        return accepted
    raise TypeError(
        f"on_connection_request set request.accepted to a value of type "
        f"{type(accepted).__name__!r}, not True or False"
    )


def check_line_size(action: str, line: bytes, limit: int) -> bytes:
    """``line`` if the broker accepts it (at most ``limit`` bytes before its
    newline), else :class:`~pystrands.errors.MessageTooLargeError`."""
    if len(line) - 1 > limit:
        raise MessageTooLargeError(action, len(line) - 1, limit)
    return line


# ---------------------------------------------------------------------------
# The dispatch core: one per client, publisher or application.

logger = logging.getLogger("pystrands.protocol")


def log_unhandled(log: logging.Logger, address: str, queued: int, dropped: int, unread: int) -> None:
    """At the end of a graceful stop, say how many events were not handled
    and why (nothing is logged when every event was)."""
    lost = queued + dropped + unread
    if lost:
        log.warning(
            "broker at %s: %d event(s) not handled: %d read but not started in time, "
            "%d arrived after the stop began, %d left unread in the socket",
            address,
            lost,
            queued,
            dropped,
            unread,
        )

#: A handler call for the I/O layer to make, in the broker's order: the
#: handler and its arguments. The last argument is always the event's
#: :class:`Context`, whose ``connection_id`` (or ``client_id``) can key
#: per-connection ordering.
Call = Tuple[Callable[..., Any], Tuple[Any, ...]]


class Waiter(Protocol):
    """What the I/O layer registers to receive a reply: the part of the
    interface that ``concurrent.futures.Future`` and ``asyncio.Future`` share."""

    def done(self) -> bool: ...

    def set_result(self, result: Any) -> None: ...

    def set_exception(self, exception: BaseException) -> None: ...


class Request:
    """A line that expects a reply: ``action`` (the wire action), its
    ``request_id``, the encoded ``line``, and the ``reply`` action that answers
    it (``ack``, ``presence`` or ``presence_stats``; ``error`` always may)."""

    __slots__ = ("action", "request_id", "line", "reply")

    def __init__(self, action: str, request_id: str, line: bytes, reply: str) -> None:
        self.action = action
        self.request_id = request_id
        self.line = line
        self.reply = reply

    def __repr__(self) -> str:
        return f"Request({self.action!r}, request_id={self.request_id!r}, reply={self.reply!r})"


#: What a command method of :class:`BackendProtocol` returns: the line to
#: write (nothing comes back), or a :class:`Request` (a reply will).
Outgoing = Union[bytes, Request]

#: Called with (request_id, request, awaitable) when ``on_connection_request``
#: returned an awaitable: the asyncio layer awaits it, then writes
#: :meth:`BackendProtocol.decision`.
Defer = Callable[[str, ConnectionRequestContext, Awaitable[Any]], None]


class _Discard:
    """A waiter that drops what it is given (the reply to the hello probe)."""

    __slots__ = ()

    def done(self) -> bool:
        return False

    def set_result(self, result: Any) -> None:
        pass

    def set_exception(self, exception: BaseException) -> None:
        pass


_DISCARD = _Discard()

#: What the broker says (in the ``error`` line it writes before closing) when
#: it refuses a backend's token; other refusals (too many backends waiting to
#: authenticate) are worth retrying.
_AUTH_REFUSALS = ("authentication failed", "auth line")

#: The broker -> backend actions that are client events (what a stop may
#: leave unhandled); heartbeats and replies are not.
_EVENT_ACTIONS = frozenset((CONNECTION_REQUEST, NEW_CONNECTION, NEW_MESSAGE, DISCONNECTED))


def lane_key(call: Call) -> str:
    """The ordering key of a handler call: its context's ``connection_id``
    (one connection), or its ``client_id`` from a broker before protocol
    1.1; ``""`` for errors that concern no client."""
    context = call[1][-1]
    try:
        return context.connection_id or context.client_id  # type: ignore[no-any-return]
    except AttributeError:
        return ""


class Lanes:
    """Per-connection order for handler calls run by several workers at once.

    Every call has a lane (:func:`lane_key`: its connection). A worker takes
    the next call with :meth:`claim`, which skips calls whose lane is busy
    (another worker is running a call of that connection) by parking them
    behind it; after running a call the worker asks :meth:`release` for the
    next parked call of the same lane, which it runs before anything else.
    So calls of one connection run one at a time, in the broker's order, and
    calls of different connections run side by side.

    Not thread-safe by itself: the threaded client holds its lock around
    every method; the asyncio client uses it from the loop's thread only.
    """

    __slots__ = ("busy", "parked")

    def __init__(self) -> None:
        #: lane -> the calls parked behind the one running (a lane is busy
        #: while it has an entry).
        self.busy: Dict[str, Deque[Call]] = {}
        #: Calls parked in all lanes.
        self.parked = 0

    def claim(self, events: Deque[Call]) -> Optional[Call]:
        """The next call of ``events`` whose lane is free, now marked busy;
        calls of busy lanes met on the way are parked. None when ``events``
        has run out."""
        busy = self.busy
        while events:
            call = events.popleft()
            key = lane_key(call)
            lane = busy.get(key)
            if lane is None:
                busy[key] = deque()
                return call
            lane.append(call)
            self.parked += 1
        return None

    def hold(self, call: Call) -> None:
        """Mark the lane of ``call`` busy: it is already running (a worker
        took it before lanes were in use)."""
        self.busy.setdefault(lane_key(call), deque())

    def release(self, call: Call) -> Optional[Call]:
        """``call`` has finished: the next call parked in its lane, for the
        caller to run now (the lane stays busy), or None (the lane is free)."""
        key = lane_key(call)
        lane = self.busy.get(key)
        if lane is None:
            return None
        if lane:
            self.parked -= 1
            return lane.popleft()
        del self.busy[key]
        return None

    def clear(self) -> int:
        """Forget every lane; return how many parked calls were dropped."""
        dropped = self.parked
        self.busy.clear()
        self.parked = 0
        return dropped


def count_events(data: bytes) -> int:
    """How many client events (connection requests, connections, messages,
    disconnections, errors about a client) the lines of ``data`` hold; a
    last line without its newline counts too. Heartbeats and replies do not."""
    found = 0
    for raw in data.split(b"\n"):
        if not raw.strip():
            continue
        try:
            event = _json_loads(raw)
        except ValueError:
            found += 1  # a cut line: it began as an event or a reply; count it
            continue
        if type(event) is not dict:
            continue
        action = event.get("action")
        if action in _EVENT_ACTIONS:
            found += 1
        elif action == ERROR:
            params = event.get("params")
            if type(params) is dict and "context" in params:
                found += 1
    return found


def _positional_arity(func: Callable[..., Any]) -> int:
    """How many positional arguments ``func`` takes (2 when it takes ``*args``
    or cannot be inspected)."""
    try:
        parameters = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):
        return 2
    positional = 0
    for p in parameters:
        if p.kind is inspect.Parameter.VAR_POSITIONAL:
            return 2
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD):
            positional += 1
    return positional


class BackendProtocol:
    """The backend's side of the broker link, without I/O: routing, decisions,
    reply matching and command encoding, written once for every I/O layer.

    Outbound first: :meth:`hello` gives the bytes to write on a new
    connection (the ``auth`` line when there is a token, and a
    ``presence_stats`` probe); the broker's first line then tells whether it
    accepted the backend: ``greeting`` (given to :meth:`hello`) is called
    once with None, or with the error to raise (a refused token, an HTTP
    answer from a WebSocket port). See :meth:`hello`.

    Inbound, :meth:`receive_from` (or :meth:`receive`) takes what was read and:

    1. routes every complete line, in order: a client event becomes a
       :data:`Call` appended to :attr:`events` (``new_message`` ->
       ``handlers.on_message(message, context)``, ``new_connection`` ->
       ``handlers.on_new_connection(context)``, ``disconnected`` ->
       ``handlers.on_disconnect(context)``, ``error`` ->
       ``handlers.on_error(error, context)``, or ``on_error(error)`` when the
       handler takes one argument); a reply (``ack``, ``presence``,
       ``presence_stats``, or ``error``, whose ``request_id`` is a pending
       request's) settles that request's waiter; heartbeats are counted
       (:attr:`heartbeats`) and unknown actions dropped, neither reaches a
       handler;
    2. then answers the chunk's connection requests: it calls
       ``handlers.on_connection_request(request)`` and returns the
       ``response`` lines for the I/O layer to write at once. A handler that
       returns an awaitable is handed to ``defer`` (the asyncio layer), which
       later writes :meth:`decision`. Only ``True``, ``False`` and ``None``
       are decisions (:func:`decide_accepted`): anything else rejects, and is
       logged at ERROR once per handler; so does any exception, ``SystemExit``
       and ``KeyboardInterrupt`` included (logged with its traceback).

    Events are queued before any connection-request handler runs, so events
    that a handler's own wait for a reply lets in (a nested read) queue
    behind the chunk's: :attr:`events` is always in the broker's order.

    ``handlers`` is the object whose ``on_*`` methods handle events (a client),
    or None for a publisher, which gets replies only: events it is sent
    anyway are dropped with a warning.

    Thread-safety: one thread receives at a time (the I/O layer's read role);
    :meth:`expect`, :meth:`forget` and the command methods may be called from
    any thread (the pending table is changed only by single dict operations).
    """

    __slots__ = (
        "handlers",
        "defer",
        "events",
        "next_id",
        "peer",
        "max_line_size",
        "chunks",
        "heartbeats",
        "dropped",
        "_pending",
        "_lines",
        "_warned_events",
        "_greeting",
        "_heard",
        "_token_sent",
        "_warned_decisions",
        "_error_handler",
        "_error_takes_context",
        "_draining",
    )

    def __init__(self, handlers: Optional[Any], *, defer: Optional[Defer] = None) -> None:
        self.handlers = handlers
        self.defer = defer
        #: Handler calls not yet made, in the broker's order; the I/O layer
        #: pops them from the left.
        self.events: Deque[Call] = deque()
        #: Request ids "1", "2", ...: unique per client, thread-safe (C-level ``next``).
        self.next_id: Callable[[], str] = map(str, count(1)).__next__
        #: ``host:port`` of the broker, for log lines (the I/O layer sets it).
        self.peer = ""
        #: The broker's ``--max-line-size``: answers longer than this are refused.
        self.max_line_size = DEFAULT_MAX_LINE_SIZE
        #: Chunks received so far (the I/O layers' liveness check watches it).
        self.chunks = 0
        #: Heartbeats received so far.
        self.heartbeats = 0
        self._pending: Dict[str, Tuple[Request, Waiter]] = {}
        self._lines = LineBuffer()
        self._warned_events = False
        self._greeting: Optional[Callable[[Optional[BaseException]], None]] = None
        self._heard = False
        self._token_sent = False
        self._warned_decisions: List[Any] = []
        self._error_handler: Any = None
        self._error_takes_context = True
        self._draining = False
        #: Client events that arrived after :meth:`stop_events` (not handled).
        self.dropped = 0

    # ------------------------------------------------------------------ link

    def connection_made(self) -> None:
        """A new connection to the broker: forget any partial line of the old one."""
        self._lines = LineBuffer()
        self._greeting = None
        self._heard = False
        self._draining = False

    def hello(
        self,
        token: Optional[str],
        greeting: Callable[[Optional[BaseException]], None],
        *,
        events: bool = True,
    ) -> bytes:
        """The first bytes to write on a new connection (after
        :meth:`connection_made`): the ``auth`` line (when there is a
        ``token``, and always for a publisher: ``events=False``), then a
        ``presence_stats`` request, a probe the broker answers at once once
        it has accepted the backend.

        The first line from the broker settles the greeting: ``greeting`` is
        called once, from :meth:`receive_from`, with

        - None when that line is anything but a refusal (the probe's reply,
          or an event or heartbeat that came first): the broker accepted the
          backend;
        - :class:`~pystrands.errors.AuthenticationError` when the broker
          refused the token (a wrong one, or none while it requires one): it
          writes an ``error`` line and closes;
        - :class:`~pystrands.errors.PyStrandsConnectionError` for another
          refusal (too many backends waiting to authenticate; worth retrying);
        - :class:`~pystrands.errors.NotABrokerError` when the peer answered
          something that is not a JSON line, e.g. the HTTP 400 of the
          broker's WebSocket port.

        A broker that answers nothing (one before protocol 1.1 ignores the
        probe, a stopped one cannot answer) leaves the greeting open: the I/O
        layer decides after its ``connect_timeout`` and calls
        :meth:`end_greeting`. The probe's reply itself is dropped.
        """
        self._greeting = greeting
        self._token_sent = token is not None
        first = encode_auth(token, events=events) if (token is not None or not events) else b""
        probe = self.request(PRESENCE_STATS, {"room_id": ""}, PRESENCE_STATS)
        self._pending[probe.request_id] = (probe, _DISCARD)
        return first + probe.line

    def end_greeting(self) -> None:
        """Stop waiting for the broker's first line (the I/O layer's
        ``connect_timeout`` passed): later lines are routed as usual."""
        self._greeting = None

    @property
    def greeting_pending(self) -> bool:
        """True while the broker's first line is awaited (see :meth:`hello`)."""
        return self._greeting is not None

    def _greeted(self, outcome: Optional[BaseException]) -> None:
        greeting, self._greeting = self._greeting, None
        if greeting is not None:
            greeting(outcome)

    def _greet(self, data: bytes) -> List[bytes]:
        """Receive while the greeting is open: the first bytes and the first
        line decide it (see :meth:`hello`), then routing goes on as usual."""
        peer = self.peer
        if not self._heard and data:
            self._heard = True
            if not data.startswith(b"{"):
                first = data.split(b"\n", 1)[0][:80]
                if data.startswith(b"HTTP/"):
                    why = (
                        f"the server at {peer} answered with HTTP ({first!r}), so it is not a "
                        "PyStrands broker's backend port. Is it the broker's WebSocket port "
                        "(--ws-port)? Backends connect to its TCP port (--tcp-port, 8081 by default)."
                    )
                else:
                    why = (
                        f"the server at {peer} is not a PyStrands broker's backend port: "
                        f"it answered {first!r}, not a JSON line"
                    )
                self._greeted(NotABrokerError(why))
                return []
        lines = self._lines.feed(data)
        for index, line in enumerate(lines):
            if not line:
                continue
            refusal = self._refusal_of(line)
            self._greeted(refusal)
            if refusal is not None:
                return []
            return self.receive_lines(lines[index:])
        return []

    def _refusal_of(self, line: str) -> Optional[BaseException]:
        peer = self.peer
        try:
            event = decode(line)
        except ProtocolError:
            return NotABrokerError(
                f"the server at {peer} is not a PyStrands broker's backend port: "
                f"it answered {line[:80]!r}, not a JSON line"
            )
        if event.get("action") != ERROR or event.get("request_id") is not None:
            return None
        params = event.get("params")
        if type(params) is not dict or "context" in params:
            return None
        text = str(params.get("error", ""))
        if any(marker in text for marker in _AUTH_REFUSALS):
            if self._token_sent:
                why = "refused the backend's token"
            else:
                why = (
                    "requires a token (--backend-token) and none was given "
                    f"(token=... or ${TOKEN_ENV})"
                )
            return AuthenticationError(f"the broker at {peer} {why}: {text}", text)
        return PyStrandsConnectionError(f"the broker at {peer} refused the backend: {text}")

    def connection_lost(self, peer: Optional[str] = None) -> None:
        """The connection is gone: every request still waiting fails with
        :class:`~pystrands.errors.PyStrandsConnectionError`."""
        peer = peer or self.peer
        while True:
            try:
                _, (request, waiter) = self._pending.popitem()
            except KeyError:
                return
            if not waiter.done():
                waiter.set_exception(
                    PyStrandsConnectionError(
                        f"connection to the broker at {peer} lost before the reply to {request.action}"
                    )
                )

    @property
    def pending_bytes(self) -> int:
        """Bytes of an unfinished line held until its newline arrives."""
        return self._lines.pending_bytes

    def unhandled_in(self, data: bytes) -> int:
        """The client events in ``data`` (what was left unread when the
        connection closed) and in the unfinished line held from before: what
        a stop could not handle (see :func:`count_events`)."""
        held = b"".join(self._lines._parts)
        return count_events(held + data)

    # ------------------------------------------------------------------ inbound

    def receive_from(self, buffer: bytearray, size: int) -> List[bytes]:
        """Route the first ``size`` bytes of a reused receive buffer (see
        :meth:`LineBuffer.feed_from`); return the answers to write now.
        Raises :class:`ProtocolError` for a line over the size limit."""
        self.chunks += 1
        if self._greeting is not None:
            return self._greet(bytes(buffer[:size]))
        return self.receive_lines(self._lines.feed_from(buffer, size))

    def receive(self, data: bytes) -> List[bytes]:
        """Like :meth:`receive_from`, for a bytes chunk."""
        self.chunks += 1
        if self._greeting is not None:
            return self._greet(data)
        return self.receive_lines(self._lines.feed(data))

    def receive_lines(self, lines: Iterable[str]) -> List[bytes]:
        """Route complete lines (step 1), then answer their connection
        requests (step 2); return the ``response`` lines to write now."""
        if self._draining:
            return self._drain(lines)
        handlers = self.handlers
        on_message = handlers.on_message if handlers is not None else None
        append = self.events.append
        fast = decode_new_message
        requests: Optional[List[Dict[str, Any]]] = None
        for line in lines:
            if on_message is not None:
                known = fast(line)
                if known is not None:
                    append((on_message, known))
                    continue
            if not line:
                continue
            try:
                event = decode(line)
            except ProtocolError as exc:
                logger.error("broker at %s: %s", self.peer, exc)
                continue
            action = event.get("action")
            if action == CONNECTION_REQUEST:
                if requests is None:
                    requests = []
                requests.append(event)
            elif action == HEARTBEAT:
                self.heartbeats += 1
            elif type(action) is str:
                self._route(action, event)
        if requests is None:
            return []
        answers = []
        for event in requests:
            answer = self._answer(event)
            if answer is not None:
                answers.append(answer)
        return answers

    def _route(self, action: str, event: Dict[str, Any]) -> None:
        params = event.get("params")
        if type(params) is not dict:
            params = {}
        if action in _REPLIES:
            request_id = event.get("request_id")
            entry = self._pending.pop(request_id, None) if type(request_id) is str else None
            if entry is not None:
                self._settle(entry[0], entry[1], action, params)
                return
            if action != ERROR:  # a reply that came after its request timed out
                logger.debug("broker at %s: no request waits for the %s reply %r", self.peer, action, request_id)
                return
        call = self._call_for(action, params)
        if call is not None:
            self.events.append(call)

    def _call_for(self, action: str, params: Dict[str, Any]) -> Optional[Call]:
        """Pick the handler of an event (None: nothing to call)."""
        handlers = self.handlers
        if handlers is None:
            if action == ERROR:
                logger.warning("broker at %s reported an error: %s", self.peer, params.get("error", ""))
            elif action in (NEW_MESSAGE, NEW_CONNECTION, DISCONNECTED):
                self._unexpected(action)
            return None
        try:
            if action == NEW_MESSAGE:
                message = params["message"]
                if "binary" in params and params["binary"] is True:
                    message = decode_binary(message)
                elif type(message) is not str:
                    raise TypeError(f"message is a {type(message).__name__}")
                return handlers.on_message, (message, context_from_params(params))
            if action == NEW_CONNECTION:
                return handlers.on_new_connection, (context_from_params(params),)
            if action == DISCONNECTED:
                return handlers.on_disconnect, (context_from_params(params),)
            if action == ERROR:
                return self._error_call(handlers.on_error), (
                    params.get("error", ""),
                    context_from_params(params),
                )
        except (KeyError, TypeError, ValueError, binascii.Error) as exc:
            logger.error("broker at %s: malformed %s event (%s): dropped", self.peer, action, exc)
        return None

    def _error_call(self, handler: Callable[..., Any]) -> Callable[..., Any]:
        """``on_error`` as the core calls it, ``(error, context)``: the
        handler itself, or for a handler that takes only ``error`` (as the
        original README wrote it) a wrapper that leaves the context out."""
        func = getattr(handler, "__func__", handler)
        if func is not self._error_handler:
            self._error_handler = func
            self._error_takes_context = _positional_arity(handler) >= 2
        if self._error_takes_context:
            return handler

        def on_error(error: str, context: Context) -> Any:
            return handler(error)

        on_error.__name__ = getattr(handler, "__name__", "on_error")
        return on_error

    def _answer(self, event: Dict[str, Any]) -> Optional[bytes]:
        request_id, request = connection_request_from_event(event)
        handlers = self.handlers
        if handlers is None:
            self._unexpected(CONNECTION_REQUEST)
            return None
        handler = handlers.on_connection_request
        try:
            result = handler(request)
        except BaseException:  # sys.exit() and KeyboardInterrupt too: reject, go on
            return self.refusal(request_id, request)
        if result is not None and self.defer is not None and isawaitable(result):
            self.defer(request_id, request, result)
            return None
        return self.decision(request_id, request, result)

    def decision(self, request_id: str, request: ConnectionRequestContext, result: object) -> bytes:
        """The ``response`` for a handler's ``result`` (see :func:`decide_accepted`):
        a refusal, logged, for anything but True, False or None, or when the
        request cannot be encoded (e.g. a non-str client_id) or is longer
        than :attr:`max_line_size`."""
        try:
            accepted = decide_accepted(result, request)
        except TypeError as exc:
            if inspect.iscoroutine(result):
                result.close()  # a sync client cannot run it; do not warn "never awaited"
            self._bad_decision(exc, request)
            return encode_response(request_id, False, None)
        try:
            line = encode_decision(request_id, request, accepted)
            return check_line_size(RESPONSE, line, self.max_line_size)
        except Exception:
            return self.refusal(request_id, request)

    def _bad_decision(self, exc: TypeError, request: ConnectionRequestContext) -> None:
        handler = getattr(self.handlers, "on_connection_request", None)
        func = getattr(handler, "__func__", handler)
        first = not any(func is seen for seen in self._warned_decisions)
        if first:
            self._warned_decisions.append(func)
        logger.log(
            logging.ERROR if first else logging.DEBUG,
            "broker at %s: %s; the connection from %s to %s is rejected. Return True to "
            "accept, False to reject, or None to use request.accepted (logged once per handler)",
            self.peer,
            exc,
            request.remote_addr,
            request.url,
        )

    def refusal(self, request_id: str, request: ConnectionRequestContext) -> bytes:
        """The ``response`` refusing ``request`` after its handler failed; call
        it inside the ``except`` block (the traceback is logged)."""
        logger.error(
            "broker at %s: on_connection_request failed; rejecting the connection from %s to %s",
            self.peer,
            request.remote_addr,
            request.url,
            exc_info=True,
        )
        return encode_response(request_id, False, None)

    def handler_failed(self, handler: Callable[..., Any]) -> None:
        """Log the exception a handler raised (call it inside the ``except``
        block); the client goes on with the next event, whatever it was."""
        exc = sys.exc_info()[1]
        name = getattr(handler, "__name__", repr(handler))
        if isinstance(exc, (SystemExit, KeyboardInterrupt)):
            logger.error(
                "broker at %s: %s raised %s; a handler cannot stop the client this way "
                "(call disconnect(), or stop run_forever() with a signal): the client goes on",
                self.peer,
                name,
                type(exc).__name__,
                exc_info=True,
            )
        else:
            logger.error("broker at %s: %s raised", self.peer, name, exc_info=True)

    def _unexpected(self, action: str) -> None:
        level = logging.DEBUG if self._warned_events else logging.WARNING
        self._warned_events = True
        logger.log(
            level,
            "broker at %s: a publisher was sent a %s event and dropped it: this broker does not "
            "support publisher connections (protocol 1.1)",
            self.peer,
            action,
        )

    # ------------------------------------------------------------------ replies

    def expect(self, request: Request, waiter: Waiter) -> None:
        """Settle ``waiter`` with the reply to ``request`` (register it before
        writing the line): the reply's value, or an exception:
        :class:`~pystrands.errors.BrokerError` for an ``error`` reply,
        :class:`ProtocolError` for a malformed one,
        :class:`~pystrands.errors.PyStrandsConnectionError` if the connection
        is lost first."""
        self._pending[request.request_id] = (request, waiter)

    def forget(self, request: Request) -> None:
        """Stop waiting for the reply to ``request`` (it timed out or was cancelled)."""
        self._pending.pop(request.request_id, None)

    @property
    def waiting(self) -> int:
        """How many requests wait for their reply."""
        return sum(1 for _, waiter in list(self._pending.values()) if waiter is not _DISCARD)

    @staticmethod
    def _settle(request: Request, waiter: Waiter, action: str, params: Dict[str, Any]) -> None:
        if waiter.done():
            return
        if action == ERROR:
            waiter.set_exception(BrokerError(request.action, str(params.get("error", ""))))
            return
        try:
            value = parse_reply(request.reply, action, params)
        except ProtocolError as exc:
            waiter.set_exception(exc)
            return
        waiter.set_result(value)

    # ------------------------------------------------------------------ commands
    # The public methods (pystrands.commands.Commands) validate their
    # arguments with the functions below and build their lines here.

    def command(self, action: str, params: Dict[str, Any], ack: bool = False) -> Outgoing:
        """``action`` with ``params``: the line (fire-and-forget), or with
        ``ack`` a :class:`Request` answered by an ``ack`` reply."""
        if ack:
            params["ack"] = True
            return self.request(action, params, ACK)
        return encode_line(action, params, self.next_id())

    def request(self, action: str, params: Dict[str, Any], reply: str = ACK) -> Request:
        """A :class:`Request`: ``action`` with ``params``, answered by ``reply``
        (or ``error``) with the same request_id."""
        request_id = self.next_id()
        return Request(action, request_id, encode_line(action, params, request_id), reply)

    def stop_events(self) -> None:
        """A graceful stop has begun: from now on client events are not
        queued (nor connection requests answered) but counted in
        :attr:`dropped`; replies and heartbeats are still routed, so
        handlers that are still running can get their replies."""
        self._draining = True
        self.dropped = 0

    def _drain(self, lines: Iterable[str]) -> List[bytes]:
        for line in lines:
            if not line:
                continue
            try:
                event = decode(line)
            except ProtocolError:
                continue
            action = event.get("action")
            if action == HEARTBEAT:
                self.heartbeats += 1
            elif action in _EVENT_ACTIONS:
                self.dropped += 1
            elif action in _REPLIES and type(action) is str:
                params = event.get("params")
                request_id = event.get("request_id")
                if action == ERROR and type(params) is dict and "context" in params:
                    self.dropped += 1
                elif type(request_id) is str and request_id in self._pending:
                    self._route(action, event)
        return []


def check_size(outgoing: Outgoing, limit: int) -> None:
    """:class:`~pystrands.errors.MessageTooLargeError` if the line of
    ``outgoing`` (a command's line or :class:`Request`) is longer than ``limit``."""
    if type(outgoing) is bytes:
        if len(outgoing) - 1 > limit:
            raise MessageTooLargeError(_action_of(outgoing), len(outgoing) - 1, limit)
    elif len(outgoing.line) - 1 > limit:  # type: ignore[union-attr]
        raise MessageTooLargeError(outgoing.action, len(outgoing.line) - 1, limit)  # type: ignore[union-attr]


def _action_of(line: bytes) -> str:
    """The action of an encoded command line (for error messages)."""
    head = line[:64]
    start = head.find(b'"action":"')
    if start < 0:
        return "command"
    start += len(b'"action":"')
    end = head.find(b'"', start)
    return head[start:end].decode("ascii", "replace") if end > 0 else "command"


def parse_reply(expected: str, action: str, params: Dict[str, Any]) -> Any:
    """The value of a reply: ``ack`` -> int (connections reached), ``presence``
    -> list of :class:`PresenceEntry`, ``presence_stats`` ->
    :class:`PresenceStats`. :class:`ProtocolError` if it is not the reply
    ``expected`` or is malformed."""
    if action != expected:
        raise ProtocolError(f"expected a {expected} reply from the broker, got {action}")
    if expected == ACK:
        return _count(params, "connections", ACK)
    if expected == PRESENCE_STATS:
        return PresenceStats(
            _count(params, "clients", PRESENCE_STATS), _count(params, "connections", PRESENCE_STATS)
        )
    if expected == PRESENCE:
        clients = params.get("clients")
        if type(clients) is not list:
            raise ProtocolError("presence reply without a clients list")
        entries = []
        for entry in clients:
            if type(entry) is not dict or type(entry.get("client_id")) is not str:
                raise ProtocolError(f"presence reply with a malformed entry: {entry!r}")
            metadata = entry.get("metadata")
            connections = entry.get("connections")
            if not isinstance(connections, list) or not all(type(c) is str for c in connections):
                raise ProtocolError(f"presence reply with malformed connections: {entry!r}")
            entries.append(
                PresenceEntry(entry["client_id"], metadata if type(metadata) is dict else {}, connections)
            )
        return entries
    return params


def _count(params: Dict[str, Any], key: str, action: str) -> int:
    value = params.get(key)
    if type(value) is not int or value < 0:
        raise ProtocolError(f"{action} reply without a count in {key}: {value!r}")
    return value


def check_text(name: str, value: object) -> str:
    """``value`` if it is a str that can be sent (no lone surrogates), else
    TypeError/ValueError naming ``name``."""
    if not _is_text(value):
        raise _bad_text(name, value)
    return value  # type: ignore[return-value]


def message_params(message: Message) -> Dict[str, Any]:
    """``{"message": ...}`` for a text message, base64 plus ``"binary": true``
    for a bytes-like one; TypeError/ValueError for anything else."""
    if isinstance(message, _BYTES_TYPES):
        return {"message": b64encode(message).decode("ascii"), "binary": True}
    return {"message": check_text("message", message)}


def id_list(name: str, ids: Iterable[str]) -> List[str]:
    """``ids`` (connection ids) as a list of str; TypeError naming ``name``
    for a single str or anything that is not a collection of str."""
    if isinstance(ids, (str, bytes)):
        raise TypeError(f"{name} must be a collection of connection ids, not a single {type(ids).__name__}")
    try:
        items = list(ids)
    except TypeError:
        raise TypeError(f"{name} must be a collection of connection ids, not {type(ids).__name__}") from None
    return [check_text(f"{name}[]", item) for item in items]


def target_params(method: str, client_id: Optional[str], connection_id: Optional[str]) -> Dict[str, Any]:
    """The target of a room or connection command, ``{"client_id": ...}`` or
    ``{"connection_id": ...}``: exactly one of the two, else ValueError naming
    ``method``."""
    if client_id is None and connection_id is None:
        raise ValueError(
            f"{method} needs a target: client_id=... (every connection of that client) "
            "or connection_id=... (one connection)"
        )
    if client_id is not None and connection_id is not None:
        raise ValueError(f"{method} takes one target, client_id or connection_id, not both")
    if client_id is not None:
        return {"client_id": check_text("client_id", client_id)}
    return {"connection_id": check_text("connection_id", connection_id)}


def check_close_code(code: int) -> int:
    """``code`` if a backend may close a connection with it: 1000 or 3000-4999."""
    if type(code) is not int or not (code == 1000 or 3000 <= code <= 4999):
        raise ValueError(f"disconnect_client: code must be 1000 or 3000-4999, got {code!r}")
    return code


def check_close_reason(reason: str) -> str:
    """``reason`` if it fits a close frame: at most 123 bytes of UTF-8."""
    size = len(check_text("reason", reason).encode("utf-8"))
    if size > MAX_CLOSE_REASON_BYTES:
        raise ValueError(
            f"disconnect_client: reason is {size} bytes of UTF-8; a close reason "
            f"holds at most {MAX_CLOSE_REASON_BYTES}"
        )
    return reason
