"""The decorator API: :class:`PyStrands`.

::

    from pystrands import PyStrands

    app = PyStrands(host="localhost", port=8081)

    @app.on_connection_request
    def check(request):
        request.context.room_id = "lobby"
        return request.header("Authorization") == "Bearer secret"

    @app.on_message
    async def echo(message, context):
        await app.send_private_message(context.client_id, message)

    app.run()

Handlers may be plain functions or coroutine functions. The application runs
on :class:`~pystrands.async_client.AsyncPyStrandsClient` (same task model:
connection requests answered at once; the events of one connection in
order, those of different connections concurrently, up to ``concurrency``),
available as ``app.client``.

The send, room and presence methods (:class:`~pystrands.commands.Commands`)
are the client's: they write at once (into the buffer flushed on the next
loop iteration) and return an awaitable, so both ``app.broadcast("hi")`` and
``await app.broadcast("hi")`` send; awaiting also waits out back-pressure,
and gives the result of ``presence``, ``presence_stats`` and ``ack=True``
calls (``await app.presence("lobby")``). From another thread (beside a web
framework) they hand the line to the loop, which sends it at once, and
return a ``concurrent.futures.Future`` of the result.
"""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable, List, Optional, TypeVar, overload

from . import protocol
from .async_client import AsyncPyStrandsClient
from .commands import Commands
from .context import PresenceEntry, PresenceStats
from .protocol import Outgoing

__all__ = ["PyStrands"]

F = TypeVar("F", bound=Callable[..., Any])


class PyStrands(
    Commands[
        Awaitable[Optional[int]],
        Awaitable[List[PresenceEntry]],
        Awaitable[PresenceStats],
    ]
):
    """A backend application assembled from decorated handler functions."""

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
        max_line_size: int = protocol.DEFAULT_MAX_LINE_SIZE,
        heartbeat_interval: Optional[float] = protocol.DEFAULT_HEARTBEAT_INTERVAL,
        connect_timeout: float = 5.0,
    ) -> None:
        #: The underlying asyncio client; handlers are installed on it. The
        #: settings are its own (see AsyncPyStrandsClient).
        self.client = AsyncPyStrandsClient(
            host,
            port,
            auto_reconnect=auto_reconnect,
            reconnect_delay=reconnect_delay,
            max_reconnect_delay=max_reconnect_delay,
            reconnect_backoff=reconnect_backoff,
            token=token,
            reply_timeout=reply_timeout,
            concurrency=concurrency,
            shutdown_timeout=shutdown_timeout,
            max_line_size=max_line_size,
            heartbeat_interval=heartbeat_interval,
            connect_timeout=connect_timeout,
        )
        self._core = self.client._core

    # ------------------------------------------------------------------ decorators

    def _install(self, name: str, func: Optional[F]) -> Any:
        def register(f: F) -> F:
            if not callable(f):
                raise TypeError(f"@app.{name} needs a function, got {f!r}")
            setattr(self.client, name, f)  # the client calls it like its own method
            return f

        return register if func is None else register(func)

    @overload
    def on_connection_request(self, func: F) -> F: ...
    @overload
    def on_connection_request(self, func: None = None) -> Callable[[F], F]: ...
    def on_connection_request(self, func: Optional[F] = None) -> Any:
        """``handler(request)``: assign ``request.context``; return True/False or
        set ``request.accepted``. Raising rejects the connection."""
        return self._install("on_connection_request", func)

    @overload
    def on_new_connection(self, func: F) -> F: ...
    @overload
    def on_new_connection(self, func: None = None) -> Callable[[F], F]: ...
    def on_new_connection(self, func: Optional[F] = None) -> Any:
        """``handler(context)``: a client was accepted and is connected."""
        return self._install("on_new_connection", func)

    on_connect = on_new_connection

    @overload
    def on_message(self, func: F) -> F: ...
    @overload
    def on_message(self, func: None = None) -> Callable[[F], F]: ...
    def on_message(self, func: Optional[F] = None) -> Any:
        """``handler(message, context)``: a client sent a message."""
        return self._install("on_message", func)

    @overload
    def on_disconnect(self, func: F) -> F: ...
    @overload
    def on_disconnect(self, func: None = None) -> Callable[[F], F]: ...
    def on_disconnect(self, func: Optional[F] = None) -> Any:
        """``handler(context)``: a client's WebSocket closed."""
        return self._install("on_disconnect", func)

    @overload
    def on_error(self, func: F) -> F: ...
    @overload
    def on_error(self, func: None = None) -> Callable[[F], F]: ...
    def on_error(self, func: Optional[F] = None) -> Any:
        """``handler(error, context)`` or ``handler(error)``: the broker reported an error."""
        return self._install("on_error", func)

    # ------------------------------------------------------------------ sending

    def _issue(self, outgoing: Outgoing) -> Any:
        return self.client._issue(outgoing)

    broadcast = Commands.broadcast_message

    def flush(self) -> Awaitable[None]:
        """Write buffered sends now (see :meth:`AsyncPyStrandsClient.flush`)."""
        return self.client.flush()

    # ------------------------------------------------------------------ running

    @property
    def connected(self) -> bool:
        """True while connected to the broker (read-only)."""
        return self.client.connected

    async def connect(self) -> bool:
        """Open the connection (inside a running event loop); see
        :meth:`AsyncPyStrandsClient.connect`."""
        return await self.client.connect()

    def disconnect(self, timeout: Optional[float] = None) -> Awaitable[None]:
        """Stop gracefully and close the connection; a pending :meth:`serve`
        returns. Starts at once; await it to wait for the end (see
        :meth:`AsyncPyStrandsClient.disconnect`)."""
        return self.client.disconnect(timeout)

    async def serve(self, handle_signals: bool = True) -> None:
        """Connect if needed and handle events until :meth:`disconnect`,
        SIGTERM or Ctrl-C (see :meth:`AsyncPyStrandsClient.run_forever`)."""
        await self.client.run_forever(handle_signals)

    run_forever = serve

    def run(self) -> None:
        """Blocking entry point: ``asyncio.run(app.serve())``; SIGTERM and
        Ctrl-C stop it gracefully."""
        try:
            asyncio.run(self.serve())
        except KeyboardInterrupt:
            pass

    async def __aenter__(self) -> "PyStrands":
        """``async with app:`` connects (raising when it cannot) and
        disconnects at the end of the block."""
        await self.client.__aenter__()
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.client.disconnect()
