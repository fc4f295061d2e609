"""The asyncio backend client: :class:`AsyncPyStrandsClient`.

Task model
----------
Everything runs on the event loop that called :meth:`AsyncPyStrandsClient.connect`.
The connection is an :class:`asyncio.BufferedProtocol` reading into one
reused buffer; each chunk the loop reads goes at once, inside
``buffer_updated``, to the client's :class:`~pystrands.protocol.BackendProtocol`,
which routes every line:

- ``connection_request`` is answered right there: ``on_connection_request``
  is called at once; if it is a coroutine function, its coroutine runs as its
  own task (one task per connection request, never one per message). The
  answer therefore never waits for another handler.
- A reply (``ack``, ``presence``, ``presence_stats``, or an ``error`` to a
  request) settles the future its request is awaiting, so a handler may
  ``await client.presence(room)`` without blocking anything.
- Every other event becomes a handler call in an in-order queue drained by
  **one** long-lived consumer task, which calls ``on_new_connection``/``on_connect``,
  ``on_message``, ``on_disconnect`` and ``on_error`` one at a time, awaiting
  each (per-client order holds end to end). Handlers may be ``async def`` or
  plain functions.

Sending
-------
Every send, room and presence method returns a coroutine, to be awaited
(``await client.send_private_message(...)``), as in pystrands 1.0.0. Awaited,
it puts the line in a buffer that is written with one ``transport.write`` per
loop iteration: a burst of sends becomes one system call. A send only waits
when the socket's write buffer is over its high-water mark (back-pressure);
``presence``, ``presence_stats`` and ``ack=True`` calls wait for the reply, up
to ``reply_timeout`` seconds. They must be called from the loop's thread.
Sending while not connected raises :class:`~pystrands.errors.NotConnectedError`.

Reconnecting works as in the threaded client: exponential backoff from
``reconnect_delay`` by ``reconnect_backoff`` up to ``max_reconnect_delay``,
each wait multiplied by a random factor in [0.5, 1.0].
"""

from __future__ import annotations

import asyncio
import logging
from inspect import isawaitable
from types import CoroutineType
from typing import Any, Awaitable, Coroutine, Generator, List, Optional, Set, Union

from . import protocol
from .commands import Commands
from .context import ConnectionRequestContext, Context, PresenceEntry, PresenceStats
from .errors import NotConnectedError, ProtocolError, PyStrandsConnectionError, ReplyTimeoutError
from .protocol import Outgoing, Request

__all__ = ["AsyncPyStrandsClient"]

logger = logging.getLogger("pystrands.async_client")

_FLUSH_BYTES = 64 * 1024
_RECV_SIZE = 256 * 1024
#: Queued events (received, not yet handled) above which the client stops
#: reading from the broker until the consumer has caught up by half.
_MAX_BACKLOG = 100_000


class _Sent:
    """Awaitable for a send that needs no waiting (already buffered)."""

    __slots__ = ()

    def __await__(self) -> Generator[Any, None, None]:
        return iter(())  # type: ignore[return-value]

    def __repr__(self) -> str:
        return "<pystrands: sent>"


_SENT = _Sent()


class _BrokerConnection(asyncio.BufferedProtocol):
    """One TCP connection to the broker; forwards everything to the client.

    A BufferedProtocol: the loop reads into one reused 256 KiB buffer, where a
    plain Protocol would get a freshly allocated bytes object per read (which
    CPython maps and unmaps from the OS at that size)."""

    def __init__(self, client: "AsyncPyStrandsClient") -> None:
        self.client = client
        self.transport: Optional[asyncio.Transport] = None
        self.buffer = bytearray(_RECV_SIZE)
        self.write_paused = False
        self.drain_waiters: List["asyncio.Future[None]"] = []
        self.closed: "asyncio.Future[None]" = client._loop.create_future()  # type: ignore[union-attr]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def get_buffer(self, sizehint: int) -> bytearray:
        return self.buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.client._data_received(self, nbytes)

    def eof_received(self) -> Optional[bool]:
        return False  # close the transport

    def connection_lost(self, exc: Optional[Exception]) -> None:
        if not self.closed.done():
            self.closed.set_result(None)
        self._release_drain_waiters()
        self.client._connection_lost(self, exc)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self._release_drain_waiters()

    def _release_drain_waiters(self) -> None:
        waiters, self.drain_waiters = self.drain_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)


class AsyncPyStrandsClient(
    protocol.ConnectionSettings,
    Commands[
        Coroutine[Any, Any, Optional[int]],
        Coroutine[Any, Any, List[PresenceEntry]],
        Coroutine[Any, Any, PresenceStats],
    ],
):
    """A backend connected to the broker's TCP port, on asyncio.

    Subclass it and override the ``on_*`` callbacks (``async def`` or plain
    ``def``), then ``await client.connect()`` and ``await client.run_forever()``.
    Await every send, room and presence method
    (:class:`~pystrands.commands.Commands`).
    """

    def _setup(self) -> None:
        # Called at the end of ConnectionSettings.__init__, which takes the
        # arguments and sets host, port, ..., token and connected.
        # Loop-bound objects are created in connect(), on the running loop
        # (asyncio primitives made outside it break on Python 3.8/3.9).
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        # The dispatch core: routing, decisions, replies, the event queue.
        self._core = protocol.BackendProtocol(self, defer=self._decide_later)
        self._conn: Optional[_BrokerConnection] = None
        self._closing = False
        self._lost = False
        self._stopped: Optional[asyncio.Event] = None
        self._out: List[bytes] = []
        self._out_bytes = 0
        self._flush_handle: Optional[asyncio.Handle] = None
        # Identifies the running consumer task (None: events are not handled).
        self._consuming: Optional[object] = None
        self._wakeup: Optional["asyncio.Future[None]"] = None
        self._consumer: Optional["asyncio.Task[None]"] = None
        self._reconnect_task: Optional["asyncio.Task[None]"] = None
        self._tasks: Set["asyncio.Task[Any]"] = set()
        self._reading_paused = False

    @property
    def _peer(self) -> str:
        return f"{self.host}:{self.port}"

    # ------------------------------------------------------------------ connection

    async def connect(self) -> bool:
        """Open the connection to the broker; True on success, False otherwise."""
        if self.connected:
            return True
        self._prepare()
        self._closing = False
        self._lost = False
        return await self._open()

    def _prepare(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._stopped is None:
            self._loop = loop
            self._stopped = asyncio.Event()
        self._stopped.clear()

    async def _open(self) -> bool:
        loop = self._loop
        assert loop is not None
        try:
            _, conn = await loop.create_connection(
                lambda: _BrokerConnection(self), self.host, self.port
            )
        except OSError as exc:
            logger.warning("cannot connect to the broker at %s:%s: %s", self.host, self.port, exc)
            return False
        if self._closing or self.connected:  # disconnect()/connect() raced with us
            conn.transport.close()  # type: ignore[union-attr]
            return self.connected
        if self.token is not None:
            conn.transport.write(protocol.encode_auth(self.token))  # type: ignore[union-attr]
        self._core.connection_made()
        self._conn = conn
        self.connected = True
        self._reading_paused = False
        if self._consuming is None:
            self._consuming = token = object()
            self._consumer = loop.create_task(self._consume(token))
        logger.info("connected to the broker at %s:%s", self.host, self.port)
        return True

    async def disconnect(self, timeout: float = 5.0) -> None:
        """Close the connection and stop reconnecting.

        Stops reading, lets the handler that is running finish (waiting up to
        ``timeout`` seconds, then cancelling it), writes what was sent, and
        closes the connection. Events received but not yet handled are
        dropped. May be awaited from inside a handler.
        """
        self._closing = True
        if self._reconnect_task is not None:
            if self._reconnect_task is not asyncio.current_task():
                self._reconnect_task.cancel()
            self._reconnect_task = None
        conn = self._conn
        if conn is not None and conn.transport is not None:
            conn.transport.pause_reading()
        self._consuming = None  # the consumer stops dispatching
        consumer, self._consumer = self._consumer, None
        self._core.events.clear()
        self._wake_consumer()
        if consumer is not None and consumer is not asyncio.current_task():
            done, _ = await asyncio.wait({consumer}, timeout=timeout)
            if not done:
                logger.warning(
                    "disconnect: a handler is still running after %.1f s; cancelling it", timeout
                )
                consumer.cancel()
        self._flush()
        if conn is not None and conn.transport is not None:
            conn.transport.close()
            try:
                await asyncio.wait_for(asyncio.shield(conn.closed), timeout)
            except asyncio.TimeoutError:
                conn.transport.abort()
        self._conn = None
        self.connected = False
        if self._stopped is not None:
            self._stopped.set()
        logger.info("disconnected from the broker")

    async def run_forever(self) -> None:
        """Connect if needed and wait until :meth:`disconnect` is awaited.

        Reuses the connection of an earlier ``connect()``. Without
        ``auto_reconnect``, a failed first connection or a lost one raises
        :class:`~pystrands.errors.PyStrandsConnectionError`. Cancelling the
        task that runs it disconnects and re-raises the cancellation.
        """
        if not self.connected and self._reconnect_task is None:
            if not await self.connect():
                if not self.auto_reconnect:
                    raise PyStrandsConnectionError(
                        f"cannot connect to the broker at {self.host}:{self.port}"
                    )
                self._start_reconnect()
        assert self._stopped is not None
        try:
            await self._stopped.wait()
        except asyncio.CancelledError:
            await self.disconnect()
            raise
        lost = self._lost
        await self.disconnect()
        if lost:
            raise PyStrandsConnectionError(
                f"connection to the broker at {self.host}:{self.port} lost"
            )

    def _start_reconnect(self) -> None:
        if self._reconnect_task is None and self._loop is not None:
            self._reconnect_task = self._loop.create_task(self._reconnect_with_backoff())

    async def _reconnect_with_backoff(self) -> None:
        waits = self._reconnect_waits()
        try:
            while not self._closing and not self.connected:
                await asyncio.sleep(next(waits))
                if self._closing or self.connected:
                    return
                if await self._open():
                    logger.info("reconnected to the broker at %s:%s", self.host, self.port)
                    return
        finally:
            if self._reconnect_task is asyncio.current_task():
                self._reconnect_task = None

    def _connection_lost(self, conn: _BrokerConnection, exc: Optional[Exception]) -> None:
        if conn is not self._conn:
            return
        self._conn = None
        self.connected = False
        self._core.connection_lost(self._peer)
        if self._out:
            logger.warning(
                "connection lost: %d bytes sent by handlers were not delivered", self._out_bytes
            )
            self._out.clear()
            self._out_bytes = 0
        if self._closing:
            return
        logger.warning("connection to the broker at %s:%s lost", self.host, self.port)
        if self.auto_reconnect:
            self._start_reconnect()
        else:
            self._lost = True
            if self._stopped is not None:
                self._stopped.set()

    # ------------------------------------------------------------------ sending

    async def _issue(self, outgoing: Outgoing) -> Any:
        """The client's own methods: nothing is sent until awaited (as 1.0.0)."""
        if type(outgoing) is bytes:
            self._write(outgoing)
            conn = self._conn
            if conn is not None and conn.write_paused:
                await self._drain()
            return None
        return await self._ask(outgoing)  # type: ignore[arg-type]

    def _issue_now(self, outgoing: Outgoing) -> Awaitable[Any]:
        """For :class:`~pystrands.app.PyStrands`: send now, return an
        awaitable of the result (back-pressure, or the reply)."""
        if type(outgoing) is bytes:
            self._write(outgoing)
            conn = self._conn
            if conn is not None and conn.write_paused:
                return asyncio.ensure_future(self._drain())
            return _SENT
        return self._ask(outgoing)  # type: ignore[arg-type]

    def _ask(self, request: Request) -> "asyncio.Future[Any]":
        """Write a request now; the future settles with its reply, or with
        :class:`~pystrands.errors.ReplyTimeoutError` after ``reply_timeout``."""
        loop = self._loop
        if loop is None or not self.connected:
            raise NotConnectedError(f"not connected to the broker at {self._peer}")
        core = self._core
        waiter: "asyncio.Future[Any]" = loop.create_future()
        core.expect(request, waiter)
        try:
            self._write(request.line)
            self._flush()
        except BaseException:
            core.forget(request)
            raise
        timeout = self.reply_timeout
        timer = loop.call_later(timeout, self._reply_timed_out, request, waiter, timeout)

        def settled(_: "asyncio.Future[Any]") -> None:
            timer.cancel()
            core.forget(request)

        waiter.add_done_callback(settled)
        return waiter

    def _reply_timed_out(
        self, request: Request, waiter: "asyncio.Future[Any]", timeout: float
    ) -> None:
        if not waiter.done():
            waiter.set_exception(ReplyTimeoutError(request.action, timeout, self._peer))

    async def flush(self) -> None:
        """Write buffered sends now and wait while the socket is over its
        high-water mark. Rarely needed: buffered sends go out on the next loop
        iteration by themselves."""
        self._flush()
        conn = self._conn
        if conn is not None and conn.write_paused:
            await self._drain()

    def _write(self, data: bytes) -> None:
        """Buffer one encoded line; written with the others of this loop iteration."""
        if not self.connected:
            raise NotConnectedError(f"not connected to the broker at {self.host}:{self.port}")
        self._out.append(data)
        self._out_bytes += len(data)
        if self._flush_handle is None:
            self._flush_handle = self._loop.call_soon(self._scheduled_flush)  # type: ignore[union-attr]
        elif self._out_bytes >= _FLUSH_BYTES:
            self._flush()

    def _scheduled_flush(self) -> None:
        self._flush_handle = None
        self._flush()

    def _flush(self) -> None:
        out = self._out
        if not out:
            return
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        self._out_bytes = 0
        conn = self._conn
        if conn is None or conn.transport is None or conn.transport.is_closing():
            logger.warning("connection lost: %d bytes sent were not delivered", len(data))
            return
        conn.transport.write(data)

    async def _drain(self) -> None:
        conn = self._conn
        if conn is None or not conn.write_paused:
            return
        self._flush()
        waiter = self._loop.create_future()  # type: ignore[union-attr]
        conn.drain_waiters.append(waiter)
        await waiter

    # ------------------------------------------------------------------ receiving

    def _data_received(self, conn: _BrokerConnection, nbytes: int) -> None:
        if conn is not self._conn or self._consuming is None:
            return  # a connection being replaced, or disconnect() is under way
        core = self._core
        events = core.events
        before = len(events)
        try:
            answers = core.receive_from(conn.buffer, nbytes)
        except ProtocolError as exc:
            logger.error("%s; dropping the connection", exc)
            if conn.transport is not None:
                conn.transport.abort()
            return
        for answer in answers:
            self._write_answer(answer)
        size = len(events)
        if size != before:
            self._wake_consumer()
            if size > _MAX_BACKLOG and not self._reading_paused and conn.transport is not None:
                self._reading_paused = True
                conn.transport.pause_reading()

    def _wake_consumer(self) -> None:
        waiter = self._wakeup
        if waiter is not None:
            self._wakeup = None
            if not waiter.done():
                waiter.set_result(None)

    def _write_answer(self, line: bytes) -> None:
        try:
            self._write(line)
        except NotConnectedError as exc:
            logger.warning("could not answer a connection request: %s", exc)

    def _decide_later(
        self, request_id: str, request: ConnectionRequestContext, pending: Awaitable[Any]
    ) -> None:
        """The core's ``defer``: ``on_connection_request`` returned an
        awaitable; await it in a task of its own, then answer."""
        task = self._loop.create_task(  # type: ignore[union-attr]
            self._answer_later(request_id, request, pending)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer_later(
        self, request_id: str, request: ConnectionRequestContext, pending: Awaitable[Any]
    ) -> None:
        try:
            result = await pending
        except Exception:
            line = self._core.refusal(request_id, request)
        else:
            line = self._core.decision(request_id, request, result)
        self._write_answer(line)

    async def _consume(self, token: object) -> None:
        """The one task that runs the event handlers, in order."""
        loop = self._loop
        assert loop is not None
        events = self._core.events
        popleft = events.popleft
        coroutine = CoroutineType
        while self._consuming is token:
            if not events:
                if self._reading_paused:
                    self._resume_reading()
                self._wakeup = waiter = loop.create_future()
                await waiter
                continue
            handler, args = popleft()
            try:
                result = handler(*args)
                if result is not None:
                    if type(result) is coroutine or isawaitable(result):
                        await result
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("%s raised", getattr(handler, "__name__", handler))
            if self._reading_paused and len(events) <= _MAX_BACKLOG // 2:
                self._resume_reading()

    def _resume_reading(self) -> None:
        self._reading_paused = False
        conn = self._conn
        if conn is not None and conn.transport is not None and not self._closing:
            conn.transport.resume_reading()

    # ------------------------------------------------------------------ callbacks

    async def on_connection_request(self, request: ConnectionRequestContext) -> Optional[bool]:
        """A WebSocket client asks to connect; answered without waiting for
        other handlers. Change ``request.context`` to assign the client; decide
        by returning True/False or by setting ``request.accepted`` (a returned
        bool wins). An exception rejects the connection and is logged."""
        return True

    async def on_new_connection(self, context: Context) -> None:
        """A client was accepted (1.0.0's name); the default calls :meth:`on_connect`."""
        result = self.on_connect(context)
        if result is not None and isawaitable(result):
            await result

    async def on_connect(self, context: Context) -> None:
        """A client was accepted and is connected (the README's name)."""

    async def on_message(self, message: Union[str, bytes], context: Context) -> None:
        """A client sent ``message`` (``bytes`` for a binary message)."""

    async def on_disconnect(self, context: Context) -> None:
        """A client's WebSocket closed."""

    async def on_error(self, error: str, context: Context) -> None:
        """The broker reported an error (``context`` fields are empty when it
        concerns no particular client)."""
        logger.warning("broker reported an error: %s", error)
