"""The PyStrands wire protocol v1, without any I/O.

Both clients (the threaded :mod:`pystrands.client` and the asyncio
:mod:`pystrands.async_client`) use this module to turn bytes from the broker
into event objects and commands into bytes; neither parses nor formats JSON
itself; both take their settings and reconnect schedule from
:class:`ConnectionSettings`. Nothing here touches a socket, a thread or an
event loop, so every function can be unit-tested with plain values.

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

import json
import os
import random
import uuid
from base64 import b64decode, b64encode
from json.encoder import encode_basestring
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple, Union

from .context import ConnectionRequestContext, Context
from .errors import ProtocolError

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
#: context JSON text -> (client_id, room_id), for contexts with empty metadata
_context_cache: Dict[str, Tuple[str, str]] = {}


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
        return message, Context(known[0], known[1], {})
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
    if not metadata:
        if len(_context_cache) >= _CONTEXT_CACHE_MAX:
            _context_cache.clear()
        _context_cache[context_text] = (client_id, room_id)
    return message, Context(client_id, room_id, metadata)


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


def encode_response(request_id: str, accepted: bool, context: Optional[Context]) -> bytes:
    """``response`` to the ``connection_request`` whose id is ``request_id``.

    The context's fields are always included when there is a context (also
    for a rejection: harmless, and it tells the broker's logs who was refused).
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
    return encode_line(RESPONSE, params, request_id)


#: Environment variable the clients read the backend token from when no
#: ``token=`` is given (the broker's ``--backend-token`` / PYSTRANDS_BACKEND_TOKEN).
TOKEN_ENV = "PYSTRANDS_BACKEND_TOKEN"


class ConnectionSettings:
    """Where and how a backend connects: the settings shared by the threaded
    and the asyncio clients (not I/O: the clients do the connecting).

    The arguments become attributes of the same names (the 1.0.0 API);
    ``token`` defaults to ``$PYSTRANDS_BACKEND_TOKEN``. After setting them,
    ``__init__`` calls :meth:`_setup` for the client's own state.
    """

    def __init__(
        self,
        host: str = "localhost",
        port: int = 8081,
        auto_reconnect: bool = True,
        reconnect_delay: float = 1.0,
        max_reconnect_delay: float = 30.0,
        reconnect_backoff: float = 2.0,
        *,
        token: Optional[str] = None,
    ) -> None:
        self.host = host
        self.port = port
        self.auto_reconnect = auto_reconnect
        self.reconnect_delay = reconnect_delay
        self.max_reconnect_delay = max_reconnect_delay
        self.reconnect_backoff = reconnect_backoff
        #: Sent first on every connection when set (the broker's --backend-token);
        #: defaults to $PYSTRANDS_BACKEND_TOKEN.
        self.token = token if token is not None else (os.environ.get(TOKEN_ENV) or None)
        #: True while a connection to the broker is open and usable for sending.
        self.connected = False
        self._setup()

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


def encode_auth(token: str) -> bytes:
    """``auth``: the first line on a broker that requires ``--backend-token``
    (a broker without a token ignores it)."""
    if not isinstance(token, str):
        raise TypeError(f"token must be a str, not {type(token).__name__}")
    return encode_line(AUTH, {"token": token})


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
    empty metadata, ``accepted = True``."""
    url = params.get("url")
    if not isinstance(url, str):
        url = ""
    headers = params.get("headers")
    remote_addr = params.get("remote_addr")
    return ConnectionRequestContext(
        headers if isinstance(headers, dict) else {},
        url,
        remote_addr if isinstance(remote_addr, str) else "",
        Context(str(uuid.uuid4()), url, {}),
        True,
    )


def context_from_params(params: Dict[str, Any]) -> Context:
    """The :class:`Context` of an event (empty fields when the event has none,
    e.g. an ``error`` about a line the broker could not use)."""
    c = params.get("context")
    if type(c) is dict:
        try:
            return Context(c["client_id"], c["room_id"], c["metadata"])
        except KeyError:
            pass
    return Context.from_json(c if isinstance(c, dict) else None)


def decide_accepted(result: object, request: ConnectionRequestContext) -> bool:
    """A bool returned by the handler wins; anything else means ``request.accepted``."""
    if result is True or result is False:
        return result
    return bool(request.accepted)
