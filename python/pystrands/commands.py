"""The send, room, connection and presence methods, written once for every API.

:class:`Commands` is a mixin without I/O: each method validates its arguments
and builds its line (with :mod:`pystrands.protocol` and the class's
:class:`~pystrands.protocol.BackendProtocol`, ``self._core``, which numbers
requests), then hands it to ``self._issue``, which each API implements in its
own way:

========================================  ===========================================
class                                     a call ...
========================================  ===========================================
:class:`~pystrands.PyStrandsClient`,      sends, and returns the result (``None``, the
:class:`~pystrands.Publisher`             count of an ack, a presence list): blocking
:class:`~pystrands.AsyncPyStrandsClient`, returns a coroutine: ``await`` it (it sends
:class:`~pystrands.AsyncPublisher`        when awaited, as the 1.0.0 async client did)
:class:`~pystrands.PyStrands`             sends at once and returns an awaitable of the
                                          result: ``await`` it for replies and
                                          back-pressure
========================================  ===========================================

The type parameters say what each kind of call returns in that API.
"""

from __future__ import annotations

from typing import Any, Dict, Generic, Iterable, Optional, TypeVar

from .protocol import (
    BROADCAST,
    DISCONNECT,
    JOIN_ROOM,
    LEAVE_ROOM,
    MESSAGE_TO_CONNECTION,
    MESSAGE_TO_ROOM,
    PRESENCE,
    PRESENCE_STATS,
    SET_METADATA,
    BackendProtocol,
    Message,
    Outgoing,
    check_close_code,
    check_close_reason,
    check_text,
    encode_broadcast,
    encode_private_message,
    encode_room_message,
    id_list,
    message_params,
    target_params,
)

__all__ = ["Commands"]

#: What a send or room call returns: ``Optional[int]``, or an awaitable of it.
_Sent = TypeVar("_Sent")
#: What ``presence`` returns: a list of PresenceEntry, or an awaitable of it.
_Members = TypeVar("_Members")
#: What ``presence_stats`` returns: a PresenceStats, or an awaitable of it.
_Stats = TypeVar("_Stats")


class Commands(Generic[_Sent, _Members, _Stats]):
    """Every command a backend can send to the broker.

    Targets: ``client_id`` addresses every connection of that client (all its
    tabs), ``connection_id`` one connection; room and connection commands take
    exactly one of the two. Every send and room call takes ``ack``: with
    ``ack=True`` the broker answers with the number of connections the command
    reached (0: nobody online), within the client's ``reply_timeout``
    (:class:`~pystrands.errors.ReplyTimeoutError` otherwise); without it the
    result is ``None`` and nothing comes back. A refused request raises
    :class:`~pystrands.errors.BrokerError` with the broker's message. Bad
    arguments raise ``TypeError``/``ValueError`` before anything is sent.
    """

    _core: BackendProtocol

    def _issue(self, outgoing: Outgoing) -> Any:
        """Write ``outgoing`` and produce the result (the API's own way)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ messages

    def broadcast_message(self, message: Message, *, ack: bool = False) -> _Sent:
        """Send ``message`` to every connected client (``bytes``: a binary frame)."""
        core = self._core
        if ack:
            outgoing = core.command(BROADCAST, message_params(message), ack)
        else:
            outgoing = encode_broadcast(message, core.next_id())
        return self._issue(outgoing)  # type: ignore[no-any-return]

    def send_room_message(
        self, room_id: str, message: Message, *, exclude: Iterable[str] = (), ack: bool = False
    ) -> _Sent:
        """Send ``message`` to every connection in ``room_id``, except the
        connections whose ids are in ``exclude`` (e.g. the sender's own tab:
        ``exclude=[context.connection_id]``)."""
        core = self._core
        if ack or exclude or isinstance(exclude, str):
            params: Dict[str, Any] = {"room_id": check_text("room_id", room_id)}
            params.update(message_params(message))
            excluded = id_list("exclude", exclude)
            if excluded:
                params["exclude"] = excluded
            outgoing = core.command(MESSAGE_TO_ROOM, params, ack)
        else:
            outgoing = encode_room_message(room_id, message, core.next_id())
        return self._issue(outgoing)  # type: ignore[no-any-return]

    def send_private_message(self, client_id: str, message: Message, *, ack: bool = False) -> _Sent:
        """Send ``message`` to every connection of ``client_id`` (all its tabs)."""
        core = self._core
        if ack:
            params: Dict[str, Any] = {"conn_id": check_text("client_id", client_id)}
            params.update(message_params(message))
            outgoing = core.command(MESSAGE_TO_CONNECTION, params, ack)
        else:
            outgoing = encode_private_message(client_id, message, core.next_id())
        return self._issue(outgoing)  # type: ignore[no-any-return]

    def send_connection_message(
        self, connection_id: str, message: Message, *, ack: bool = False
    ) -> _Sent:
        """Send ``message`` to the one connection ``connection_id``."""
        params: Dict[str, Any] = {"connection_id": check_text("connection_id", connection_id)}
        params.update(message_params(message))
        outgoing = self._core.command(MESSAGE_TO_CONNECTION, params, ack)
        return self._issue(outgoing)  # type: ignore[no-any-return]

    # ------------------------------------------------------------------ rooms and connections

    def join_room(
        self,
        room_id: str,
        *,
        client_id: Optional[str] = None,
        connection_id: Optional[str] = None,
        ack: bool = False,
    ) -> _Sent:
        """The target's connections that are open now join ``room_id``
        (joining twice is a no-op)."""
        return self._membership(JOIN_ROOM, room_id, client_id, connection_id, ack)

    def leave_room(
        self,
        room_id: str,
        *,
        client_id: Optional[str] = None,
        connection_id: Optional[str] = None,
        ack: bool = False,
    ) -> _Sent:
        """The target's connections leave ``room_id`` (the room assigned at
        accept included). A connection in no room stays open and still gets
        private messages and broadcasts."""
        return self._membership(LEAVE_ROOM, room_id, client_id, connection_id, ack)

    def _membership(
        self,
        action: str,
        room_id: str,
        client_id: Optional[str],
        connection_id: Optional[str],
        ack: bool,
    ) -> _Sent:
        params = target_params(action, client_id, connection_id)
        params["room_id"] = check_text("room_id", room_id)
        outgoing = self._core.command(action, params, ack)
        return self._issue(outgoing)  # type: ignore[no-any-return]

    def disconnect_client(
        self,
        *,
        client_id: Optional[str] = None,
        connection_id: Optional[str] = None,
        code: int = 1000,
        reason: str = "",
        ack: bool = False,
    ) -> _Sent:
        """Close the target's connections with a close frame of ``code``
        (1000 or 3000-4999) and ``reason`` (at most 123 bytes of UTF-8); each
        then gets the usual ``on_disconnect``."""
        params = target_params("disconnect_client", client_id, connection_id)
        params["code"] = check_close_code(code)
        params["reason"] = check_close_reason(reason)
        outgoing = self._core.command(DISCONNECT, params, ack)
        return self._issue(outgoing)  # type: ignore[no-any-return]

    def set_metadata(
        self,
        metadata: Dict[str, Any],
        *,
        client_id: Optional[str] = None,
        connection_id: Optional[str] = None,
        ack: bool = False,
    ) -> _Sent:
        """Replace the metadata of the target's connections: later events
        (and presence) carry ``metadata``."""
        if not isinstance(metadata, dict):
            raise TypeError(f"set_metadata: metadata must be a dict, not {type(metadata).__name__}")
        params = target_params("set_metadata", client_id, connection_id)
        params["metadata"] = metadata
        outgoing = self._core.command(SET_METADATA, params, ack)
        return self._issue(outgoing)  # type: ignore[no-any-return]

    # ------------------------------------------------------------------ presence

    def presence(self, room_id: str) -> _Members:
        """Who is in ``room_id``: one :class:`~pystrands.PresenceEntry` per
        client (``client_id``, ``metadata``, ``connections``); ``[]`` for a
        room nobody is in."""
        params = {"room_id": check_text("room_id", room_id)}
        outgoing = self._core.request(PRESENCE, params, PRESENCE)
        return self._issue(outgoing)  # type: ignore[no-any-return]

    def presence_stats(self, room_id: str) -> _Stats:
        """How many clients and connections ``room_id`` has: a
        :class:`~pystrands.PresenceStats` (``clients``, ``connections``)."""
        params = {"room_id": check_text("room_id", room_id)}
        outgoing = self._core.request(PRESENCE_STATS, params, PRESENCE_STATS)
        return self._issue(outgoing)  # type: ignore[no-any-return]
