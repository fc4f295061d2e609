"""What the backend knows about a WebSocket client, and about a connection request.

:class:`Context` travels with every event about an accepted client
(``client_id``, ``room_id``, ``metadata``). :class:`ConnectionRequestContext`
is what ``on_connection_request`` receives: the upgrade request's headers,
URL and peer address, the :class:`Context` the client will get if accepted
(the application may change it), and the ``accepted`` decision.

Both are plain mutable objects with ``__slots__``: attribute access, a readable
``repr``, equality by value, and ``from_json``/``to_json`` as in pystrands 1.0.0.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Union

__all__ = ["Context", "ConnectionRequestContext"]


class Context:
    """Identity of one WebSocket client: who it is, which room it is in, and
    the metadata the backend attached when it accepted the connection.

    ``context.context`` returns the context itself, so handlers written as
    ``context.context.client_id`` (the original README's spelling) and as
    ``context.client_id`` both work.
    """

    __slots__ = ("client_id", "room_id", "metadata")

    def __init__(
        self,
        client_id: str = "",
        room_id: str = "",
        metadata: Optional[Dict[str, Any]] = None,
    ) -> None:
        self.client_id = client_id
        self.room_id = room_id
        self.metadata: Dict[str, Any] = {} if metadata is None else metadata

    @property
    def context(self) -> "Context":
        """This context itself (compatibility with ``context.context.client_id``)."""
        return self

    @classmethod
    def from_json(cls, data: Optional[Mapping[str, Any]]) -> "Context":
        """Build a context from a ``{"client_id", "room_id", "metadata"}`` mapping.

        Missing keys (or ``None``) give empty values; this is what an ``error``
        event that concerns no particular client carries.
        """
        if not data:
            return cls()
        metadata = data.get("metadata")
        return cls(
            data.get("client_id") or "",
            data.get("room_id") or "",
            metadata if isinstance(metadata, dict) else {},
        )

    def to_json(self) -> Dict[str, Any]:
        """The wire form: ``{"client_id": ..., "room_id": ..., "metadata": ...}``."""
        return {
            "client_id": self.client_id,
            "room_id": self.room_id,
            "metadata": self.metadata,
        }

    def __repr__(self) -> str:
        return (
            f"Context(client_id={self.client_id!r}, room_id={self.room_id!r}, "
            f"metadata={self.metadata!r})"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Context):
            return NotImplemented
        return (
            self.client_id == other.client_id
            and self.room_id == other.room_id
            and self.metadata == other.metadata
        )

    __hash__ = None  # type: ignore[assignment]  # mutable: not hashable


class ConnectionRequestContext:
    """A WebSocket upgrade waiting for the backend's decision.

    - ``headers``: header name (canonical form, e.g. ``X-User``) -> list of values
    - ``url``: the request path, e.g. ``/ws/room1``
    - ``remote_addr``: ``"ip:port"`` of the peer
    - ``context``: the :class:`Context` the client gets if accepted; by default
      a fresh UUID4 ``client_id``, ``room_id`` equal to ``url``, empty metadata
    - ``accepted``: the decision, ``True`` unless the handler changes it
    """

    __slots__ = ("headers", "url", "remote_addr", "context", "accepted")

    def __init__(
        self,
        headers: Optional[Dict[str, List[str]]] = None,
        url: str = "",
        remote_addr: str = "",
        context: Optional[Context] = None,
        accepted: bool = True,
    ) -> None:
        self.headers: Dict[str, List[str]] = {} if headers is None else headers
        self.url = url
        self.remote_addr = remote_addr
        self.context: Context = Context() if context is None else context
        self.accepted = accepted

    def header(self, name: str, default: Optional[str] = None) -> Optional[str]:
        """First value of header ``name`` (case-insensitive), or ``default``."""
        values = self.headers.get(name)
        if values is None:
            lowered = name.lower()
            for key, vals in self.headers.items():
                if key.lower() == lowered:
                    values = vals
                    break
        if not values:
            return default
        return values[0] if isinstance(values, list) else str(values)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "ConnectionRequestContext":
        """Build from a mapping; ``context`` may be a :class:`Context` or a dict."""
        ctx: Union[Context, Mapping[str, Any], None] = data.get("context")
        if not isinstance(ctx, Context):
            ctx = Context.from_json(ctx)
        accepted = data.get("accepted")
        return cls(
            data.get("headers") or {},
            data.get("url") or "",
            data.get("remote_addr") or "",
            ctx,
            True if accepted is None else bool(accepted),
        )

    def to_json(self) -> Dict[str, Any]:
        return {
            "headers": self.headers,
            "url": self.url,
            "remote_addr": self.remote_addr,
            "context": self.context.to_json(),
            "accepted": self.accepted,
        }

    def __repr__(self) -> str:
        return (
            f"ConnectionRequestContext(url={self.url!r}, remote_addr={self.remote_addr!r}, "
            f"context={self.context!r}, accepted={self.accepted!r}, headers={self.headers!r})"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ConnectionRequestContext):
            return NotImplemented
        return (
            self.headers == other.headers
            and self.url == other.url
            and self.remote_addr == other.remote_addr
            and self.context == other.context
            and self.accepted == other.accepted
        )

    __hash__ = None  # type: ignore[assignment]
