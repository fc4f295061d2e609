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
connection requests answered at once, other events in order by one consumer
task), available as ``app.client``.

The send, room and presence methods (:class:`~pystrands.commands.Commands`)
write at once (into the buffer flushed on the next loop iteration) and
return an awaitable, so both ``app.broadcast("hi")`` and
``await app.broadcast("hi")`` send; awaiting also waits out back-pressure,
and gives the result of ``presence``, ``presence_stats`` and ``ack=True``
calls (``await app.presence("lobby")``). They are not coroutines: pass them
to ``await`` or ``asyncio.gather``, not to ``asyncio.create_task``. Call them
from the event loop's thread.
"""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable, List, Optional, TypeVar, overload

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
        host: str = "localhost",
        port: int = 8081,
        auto_reconnect: bool = True,
        reconnect_delay: float = 1.0,
        max_reconnect_delay: float = 30.0,
        reconnect_backoff: float = 2.0,
        *,
        token: Optional[str] = None,
        reply_timeout: float = 5.0,
    ) -> None:
        #: The underlying asyncio client; handlers are installed on it.
        self.client = AsyncPyStrandsClient(
            host,
            port,
            auto_reconnect=auto_reconnect,
            reconnect_delay=reconnect_delay,
            max_reconnect_delay=max_reconnect_delay,
            reconnect_backoff=reconnect_backoff,
            token=token,
            reply_timeout=reply_timeout,
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
        """``handler(error, context)``: the broker reported an error."""
        return self._install("on_error", func)

    # ------------------------------------------------------------------ sending

    def _issue(self, outgoing: Outgoing) -> Awaitable[Any]:
        return self.client._issue_now(outgoing)

    broadcast = Commands.broadcast_message

    # ------------------------------------------------------------------ running

    @property
    def connected(self) -> bool:
        return self.client.connected

    async def connect(self) -> bool:
        """Open the connection (inside a running event loop)."""
        return await self.client.connect()

    async def disconnect(self, timeout: float = 5.0) -> None:
        """Close the connection; a pending :meth:`serve` returns."""
        await self.client.disconnect(timeout)

    async def serve(self) -> None:
        """Connect if needed and handle events until :meth:`disconnect`."""
        await self.client.run_forever()

    run_forever = serve

    def run(self) -> None:
        """Blocking entry point: ``asyncio.run(app.serve())``; Ctrl-C stops it."""
        try:
            asyncio.run(self.serve())
        except KeyboardInterrupt:
            pass
