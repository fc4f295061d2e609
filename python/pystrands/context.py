"""What the backend knows about a WebSocket client, and about a connection request.

:class:`Context` travels with every event about an accepted connection
(``client_id``, ``room_id``, ``metadata``, and from brokers speaking protocol
1.1 ``connection_id`` and ``rooms``). :class:`ConnectionRequestContext` is
what ``on_connection_request`` receives: the upgrade request's headers, path,
query string and peer address, the :class:`Context` the client will get if
accepted (the application may change it), and the decision: accept (with
extra rooms and a subprotocol) or reject (with an HTTP status and a reason).
:class:`PresenceEntry` and :class:`PresenceStats` are the answers to
``presence`` and ``presence_stats``.

Context objects are plain mutable objects with ``__slots__``: attribute
access, a readable ``repr``, equality by value, and ``from_json``/``to_json``
as in pystrands 1.0.0.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Union
from urllib.parse import parse_qs

__all__ = ["Context", "ConnectionRequestContext", "PresenceEntry", "PresenceStats"]


class Context:
    """Identity of one WebSocket connection: which client it belongs to, the
    room it was assigned at accept, the metadata the backend attached, and
    (protocol 1.1) its ``connection_id`` and the ``rooms`` it is in now.

    - ``client_id``: the client (user) id; one client may hold several
      connections (tabs).
    - ``room_id``: the room assigned when the connection was accepted (kept
      even after the connection left it, as pystrands 1.0.0 backends expect).
    - ``metadata``: the dict set at accept or by ``set_metadata``.
    - ``connection_id``: this one connection, unique for the broker's
      lifetime; ``""`` from a broker before protocol 1.1.
    - ``rooms``: the rooms the connection is in when the event was sent, in
      join order; ``[]`` from a broker before protocol 1.1.

    ``context.context`` returns the context itself, so handlers written as
    ``context.context.client_id`` (the original README's spelling) and as
    ``context.client_id`` both work.
    """

    __slots__ = ("client_id", "room_id", "metadata", "connection_id", "rooms")

    def __init__(
        self,
        client_id: str = "",
        room_id: str = "",
        metadata: Optional[Dict[str, Any]] = None,
        connection_id: str = "",
        rooms: Optional[List[str]] = None,
    ) -> None:
        self.client_id = client_id
        self.room_id = room_id
        self.metadata: Dict[str, Any] = {} if metadata is None else metadata
        self.connection_id = connection_id
        self.rooms: List[str] = [] if rooms is None else rooms

    @property
    def context(self) -> "Context":
        """This context itself (compatibility with ``context.context.client_id``)."""
        return self

    @classmethod
    def from_json(cls, data: Optional[Mapping[str, Any]]) -> "Context":
        """Build a context from its wire form (a mapping with ``client_id``,
        ``room_id``, ``metadata`` and optionally ``connection_id``, ``rooms``).

        Missing keys (or ``None``) give empty values; this is what an ``error``
        event that concerns no particular client carries.
        """
        if not data:
            return cls()
        metadata = data.get("metadata")
        connection_id = data.get("connection_id")
        rooms = data.get("rooms")
        return cls(
            data.get("client_id") or "",
            data.get("room_id") or "",
            metadata if isinstance(metadata, dict) else {},
            connection_id if isinstance(connection_id, str) else "",
            [r for r in rooms if isinstance(r, str)] if isinstance(rooms, list) else [],
        )

    def to_json(self) -> Dict[str, Any]:
        """The wire form: ``{"client_id": ..., "room_id": ..., "metadata": ...}``,
        plus ``connection_id`` and ``rooms`` when they are set."""
        data = {
            "client_id": self.client_id,
            "room_id": self.room_id,
            "metadata": self.metadata,
        }
        if self.connection_id:
            data["connection_id"] = self.connection_id
        if self.rooms:
            data["rooms"] = list(self.rooms)
        return data

    def __repr__(self) -> str:
        extra = ""
        if self.connection_id or self.rooms:
            extra = f", connection_id={self.connection_id!r}, rooms={self.rooms!r}"
        return (
            f"Context(client_id={self.client_id!r}, room_id={self.room_id!r}, "
            f"metadata={self.metadata!r}{extra})"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Context):
            return NotImplemented
        return (
            self.client_id == other.client_id
            and self.room_id == other.room_id
            and self.metadata == other.metadata
            and self.connection_id == other.connection_id
            and self.rooms == other.rooms
        )

    __hash__ = None  # type: ignore[assignment]  # mutable: not hashable


#: The header a WebSocket client lists its subprotocols in (canonical form).
SUBPROTOCOL_HEADER = "Sec-Websocket-Protocol"


class ConnectionRequestContext:
    """A WebSocket upgrade waiting for the backend's decision.

    - ``headers``: header name (canonical form, e.g. ``X-User``) -> list of values
    - ``url``: the request path, e.g. ``/ws/room1`` (no query string)
    - ``query``: the raw query string without ``?`` (``""`` when absent);
      :attr:`query_params` parses it
    - ``remote_addr``: ``"ip:port"`` of the peer
    - ``connection_id``: the id the connection will keep if accepted
    - ``context``: the :class:`Context` the client gets if accepted; by default
      a fresh UUID4 ``client_id``, ``room_id`` equal to ``url``, empty metadata
    - ``accepted``: the decision, ``True`` unless the handler changes it
    - ``rooms``: more rooms to join at accept, besides ``context.room_id``
      (:meth:`join` adds to it; ``context.rooms`` is not read here: the
      broker fills it in the events)

    :meth:`select_subprotocol` picks one of the :attr:`subprotocols` the client
    offered; :meth:`reject` refuses with an HTTP status and a reason.
    ``query``, ``connection_id`` and ``subprotocols`` are empty when the broker
    speaks protocol 1.0.
    """

    __slots__ = (
        "headers",
        "url",
        "remote_addr",
        "context",
        "accepted",
        "connection_id",
        "query",
        "rooms",
        "_subprotocol",
        "_status",
        "_reason",
    )

    def __init__(
        self,
        headers: Optional[Dict[str, List[str]]] = None,
        url: str = "",
        remote_addr: str = "",
        context: Optional[Context] = None,
        accepted: bool = True,
        *,
        connection_id: str = "",
        query: str = "",
        rooms: Optional[List[str]] = None,
    ) -> None:
        self.headers: Dict[str, List[str]] = {} if headers is None else headers
        self.url = url
        self.remote_addr = remote_addr
        self.context: Context = Context() if context is None else context
        self.accepted = accepted
        self.connection_id = connection_id
        self.query = query
        self.rooms: List[str] = [] if rooms is None else rooms
        self._subprotocol: Optional[str] = None
        self._status: Optional[int] = None
        self._reason = ""

    def header(self, name: str, default: Optional[str] = None) -> Optional[str]:
        """First value of header ``name`` (case-insensitive), or ``default``."""
        values = self._header_values(name)
        if not values:
            return default
        return values[0]

    def _header_values(self, name: str) -> List[str]:
        values = self.headers.get(name)
        if values is None:
            lowered = name.lower()
            for key, vals in self.headers.items():
                if key.lower() == lowered:
                    values = vals
                    break
        if values is None:
            return []
        return values if isinstance(values, list) else [str(values)]

    @property
    def query_params(self) -> Dict[str, List[str]]:
        """The query string parsed as :func:`urllib.parse.parse_qs` does:
        ``?token=abc&tag=a&tag=b`` gives ``{"token": ["abc"], "tag": ["a", "b"]}``."""
        return parse_qs(self.query)

    @property
    def subprotocols(self) -> List[str]:
        """The subprotocols the client offered (``Sec-WebSocket-Protocol``,
        every value split at commas and trimmed), in the client's order."""
        offered: List[str] = []
        for value in self._header_values(SUBPROTOCOL_HEADER):
            for name in str(value).split(","):
                name = name.strip()
                if name:
                    offered.append(name)
        return offered

    def select_subprotocol(self, name: str) -> None:
        """Accept the connection with subprotocol ``name``, which the broker
        echoes in its 101 reply. ``name`` must be one the client offered
        (:attr:`subprotocols`), else :class:`ValueError`."""
        offered = self.subprotocols
        if name not in offered:
            raise ValueError(f"subprotocol {name!r} was not offered by the client (offered: {offered})")
        self._subprotocol = name

    @property
    def subprotocol(self) -> Optional[str]:
        """The subprotocol chosen with :meth:`select_subprotocol`, or ``None``."""
        return self._subprotocol

    def join(self, *room_ids: str) -> None:
        """Also join ``room_ids`` at accept, besides ``context.room_id`` (in
        this order; a room already listed is not added twice)."""
        for room_id in room_ids:
            if not isinstance(room_id, str):
                raise TypeError(f"room_id must be a str, not {type(room_id).__name__}")
            if room_id not in self.rooms:
                self.rooms.append(room_id)

    def reject(self, status: int = 403, reason: str = "") -> None:
        """Refuse the connection with HTTP ``status`` (400-499) and ``reason``
        as the plain-text body. Sets ``accepted`` to False, so a handler may
        end with ``return request.reject(401, "bad token")``."""
        if type(status) is not int or not 400 <= status <= 499:
            raise ValueError(f"reject: status must be an int from 400 to 499, got {status!r}")
        if not isinstance(reason, str):
            raise TypeError(f"reject: reason must be a str, not {type(reason).__name__}")
        self._status = status
        self._reason = reason
        self.accepted = False

    @property
    def status(self) -> Optional[int]:
        """The HTTP status given to :meth:`reject`, or ``None`` (the broker's default, 403)."""
        return self._status

    @property
    def reason(self) -> str:
        """The body given to :meth:`reject` (``""`` when none)."""
        return self._reason

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "ConnectionRequestContext":
        """Build from a mapping; ``context`` may be a :class:`Context` or a dict."""
        ctx: Union[Context, Mapping[str, Any], None] = data.get("context")
        if not isinstance(ctx, Context):
            ctx = Context.from_json(ctx)
        accepted = data.get("accepted")
        rooms = data.get("rooms")
        return cls(
            data.get("headers") or {},
            data.get("url") or "",
            data.get("remote_addr") or "",
            ctx,
            True if accepted is None else bool(accepted),
            connection_id=data.get("connection_id") or "",
            query=data.get("query") or "",
            rooms=list(rooms) if isinstance(rooms, list) else None,
        )

    def to_json(self) -> Dict[str, Any]:
        return {
            "headers": self.headers,
            "url": self.url,
            "query": self.query,
            "remote_addr": self.remote_addr,
            "connection_id": self.connection_id,
            "context": self.context.to_json(),
            "accepted": self.accepted,
            "rooms": list(self.rooms),
        }

    def __repr__(self) -> str:
        return (
            f"ConnectionRequestContext(url={self.url!r}, query={self.query!r}, "
            f"remote_addr={self.remote_addr!r}, connection_id={self.connection_id!r}, "
            f"context={self.context!r}, accepted={self.accepted!r}, headers={self.headers!r})"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ConnectionRequestContext):
            return NotImplemented
        return (
            self.headers == other.headers
            and self.url == other.url
            and self.query == other.query
            and self.remote_addr == other.remote_addr
            and self.connection_id == other.connection_id
            and self.context == other.context
            and self.accepted == other.accepted
            and self.rooms == other.rooms
            and self._subprotocol == other._subprotocol
            and self._status == other._status
            and self._reason == other._reason
        )

    __hash__ = None  # type: ignore[assignment]


class PresenceEntry(NamedTuple):
    """One client in a room, as ``presence(room_id)`` reports it."""

    #: The client's id.
    client_id: str
    #: The metadata of its connections (as set at accept or by ``set_metadata``).
    metadata: Dict[str, Any]
    #: The ``connection_id`` of each of its connections in the room.
    connections: List[str]


class PresenceStats(NamedTuple):
    """Counts of a room, as ``presence_stats(room_id)`` reports them."""

    #: Distinct client_ids in the room.
    clients: int
    #: Connections in the room (a client with two tabs counts twice).
    connections: int
