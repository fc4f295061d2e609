"""The asyncio backend client: :class:`AsyncPyStrandsClient`.

Task model
----------
Everything runs on the event loop that called :meth:`AsyncPyStrandsClient.connect`.
The connection is an :class:`asyncio.BufferedProtocol` reading into one
reused buffer; each chunk the loop reads is split and decoded at once
(:mod:`pystrands.protocol`) inside ``buffer_updated``.

- ``connection_request`` is answered right there: ``on_connection_request``
  is called at once; if it is a coroutine function, its coroutine runs as its
  own task (one task per connection request, never one per message). The
  answer therefore never waits for another handler.
- Every other event is appended to an in-order queue drained by **one**
  long-lived consumer task, which calls ``on_new_connection``/``on_connect``,
  ``on_message``, ``on_disconnect`` and ``on_error`` one at a time, awaiting
  each (per-client order holds end to end). Handlers may be ``async def`` or
  plain functions.

Sending
-------
The send coroutines (``await client.send_private_message(...)``) put the line
in a buffer that is written with one ``transport.write`` per loop iteration:
a burst of sends becomes one system call. They only wait when the socket's
write buffer is over its high-water mark (back-pressure). They must be called
from the loop's thread. Sending while not connected raises
:class:`~pystrands.errors.NotConnectedError`.

Reconnecting works as in the threaded client: exponential backoff from
``reconnect_delay`` by ``reconnect_backoff`` up to ``max_reconnect_delay``,
each wait multiplied by a random factor in [0.5, 1.0].
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from inspect import isawaitable
from itertools import count
from types import CoroutineType
from typing import Any, Awaitable, Deque, Dict, List, Optional, Set, Union

from . import protocol
from .protocol import Message, decode_binary
from .context import ConnectionRequestContext, Context
from .errors import NotConnectedError, ProtocolError, PyStrandsConnectionError

__all__ = ["AsyncPyStrandsClient"]

logger = logging.getLogger("pystrands.async_client")

_FLUSH_BYTES = 64 * 1024
_RECV_SIZE = 256 * 1024
#: Queued events (received, not yet handled) above which the client stops
#: reading from the broker until the consumer has caught up by half.
_MAX_BACKLOG = 100_000



class _BrokerConnection(asyncio.BufferedProtocol):
    """One TCP connection to the broker; forwards everything to the client.

    A BufferedProtocol: the loop reads into one reused 256 KiB buffer, where a
    plain Protocol would get a freshly allocated bytes object per read (which
    CPython maps and unmaps from the OS at that size)."""

    def __init__(self, client: "AsyncPyStrandsClient") -> None:
        self.client = client
        self.transport: Optional[asyncio.Transport] = None
        self.lines = protocol.LineBuffer()
        self.buffer = bytearray(_RECV_SIZE)
        self.write_paused = False
        self.drain_waiters: List["asyncio.Future[None]"] = []
        self.closed: "asyncio.Future[None]" = client._loop.create_future()  # type: ignore[union-attr]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def get_buffer(self, sizehint: int) -> bytearray:
        return self.buffer

    def buffer_updated(self, nbytes: int) -> None:
        try:
            lines = self.lines.feed_from(self.buffer, nbytes)
        except ProtocolError as exc:
            logger.error("%s; dropping the connection", exc)
            if self.transport is not None:
                self.transport.abort()
            return
        self.client._lines_received(self, lines)

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


class AsyncPyStrandsClient(protocol.ConnectionSettings):
    """A backend connected to the broker's TCP port, on asyncio.

    Subclass it and override the ``on_*`` callbacks (``async def`` or plain
    ``def``), then ``await client.connect()`` and ``await client.run_forever()``.
    """

    def _setup(self) -> None:
        # Called at the end of ConnectionSettings.__init__, which takes the
        # arguments and sets host, port, ..., token and connected.
        # Loop-bound objects are created in connect(), on the running loop
        # (asyncio primitives made outside it break on Python 3.8/3.9).
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._conn: Optional[_BrokerConnection] = None
        self._closing = False
        self._lost = False
        self._stopped: Optional[asyncio.Event] = None
        self._out: List[bytes] = []
        self._out_bytes = 0
        self._flush_handle: Optional[asyncio.Handle] = None
        # Events for the consumer task: (message, Context) tuples for text
        # messages (the fast path), envelope dicts for everything else.
        self._inbox: Optional[Deque[Any]] = None
        self._wakeup: Optional["asyncio.Future[None]"] = None
        self._consumer: Optional["asyncio.Task[None]"] = None
        self._reconnect_task: Optional["asyncio.Task[None]"] = None
        self._tasks: Set["asyncio.Task[Any]"] = set()
        self._reading_paused = False
        self._next_id = map(str, count(1)).__next__  # request ids "1", "2", ...

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
        self._conn = conn
        self.connected = True
        self._reading_paused = False
        if self._inbox is None:
            inbox: Deque[Any] = deque()
            self._inbox = inbox
            self._consumer = loop.create_task(self._consume(inbox))
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
        inbox, self._inbox = self._inbox, None  # the consumer stops dispatching
        consumer, self._consumer = self._consumer, None
        if inbox is not None:
            inbox.clear()
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

    async def broadcast_message(self, message: Message) -> None:
        """Send ``message`` to every connected WebSocket client."""
        self._write(protocol.encode_broadcast(message, self._next_id()))
        conn = self._conn
        if conn is not None and conn.write_paused:
            await self._drain()

    async def send_room_message(self, room_id: str, message: Message) -> None:
        """Send ``message`` to every client in ``room_id``."""
        self._write(protocol.encode_room_message(room_id, message, self._next_id()))
        conn = self._conn
        if conn is not None and conn.write_paused:
            await self._drain()

    async def send_private_message(self, client_id: str, message: Message) -> None:
        """Send ``message`` to every connection whose client_id is ``client_id``."""
        self._write(protocol.encode_private_message(client_id, message, self._next_id()))
        conn = self._conn
        if conn is not None and conn.write_paused:
            await self._drain()

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

    def _lines_received(self, conn: _BrokerConnection, lines: List[str]) -> None:
        inbox = self._inbox
        if inbox is None or conn is not self._conn:
            return
        before = len(inbox)
        append = inbox.append
        decode = protocol.decode
        fast = protocol.decode_new_message
        for line in lines:
            known = fast(line)
            if known is not None:
                append(known)  # (message, context) of a text new_message
                continue
            if not line:
                continue
            try:
                event = decode(line)
            except ProtocolError as exc:
                logger.error("%s", exc)
                continue
            action = event.get("action")
            if action == "connection_request":
                self._answer_connection_request(event)
            elif action != "heartbeat":
                append(event)
        size = len(inbox)
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

    def _answer_connection_request(self, event: Dict[str, Any]) -> None:
        request_id, request = protocol.connection_request_from_event(event)
        try:
            result = self.on_connection_request(request)
        except Exception:
            self._reject_after_error(request_id, request)
            return
        if result is not None and isawaitable(result):
            task = self._loop.create_task(  # type: ignore[union-attr]
                self._answer_later(request_id, request, result)
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:
            self._send_response(request_id, request, result)

    async def _answer_later(
        self, request_id: str, request: ConnectionRequestContext, pending: Awaitable[Any]
    ) -> None:
        try:
            result = await pending
        except Exception:
            self._reject_after_error(request_id, request)
            return
        self._send_response(request_id, request, result)

    def _send_response(
        self, request_id: str, request: ConnectionRequestContext, result: object
    ) -> None:
        try:
            line = protocol.encode_response(
                request_id, protocol.decide_accepted(result, request), request.context
            )
        except Exception:
            self._reject_after_error(request_id, request)
            return
        try:
            self._write(line)
        except NotConnectedError as exc:
            logger.warning("could not answer a connection request: %s", exc)

    def _reject_after_error(self, request_id: str, request: ConnectionRequestContext) -> None:
        logger.exception(
            "on_connection_request failed; rejecting the connection from %s to %s",
            request.remote_addr,
            request.url,
        )
        try:
            self._write(protocol.encode_response(request_id, False, None))
        except NotConnectedError as exc:
            logger.warning("could not answer a connection request: %s", exc)

    async def _consume(self, inbox: Deque[Any]) -> None:
        """The one task that runs the event handlers, in order."""
        loop = self._loop
        assert loop is not None
        popleft = inbox.popleft
        coroutine = CoroutineType
        while self._inbox is inbox:
            if not inbox:
                if self._reading_paused:
                    self._resume_reading()
                self._wakeup = waiter = loop.create_future()
                await waiter
                continue
            event = popleft()
            try:
                if type(event) is tuple:
                    result = self.on_message(event[0], event[1])
                else:
                    result = self._handle_event(event)
                if result is not None:
                    if type(result) is coroutine or isawaitable(result):
                        await result
            except asyncio.CancelledError:
                raise
            except Exception:
                action = "new_message" if type(event) is tuple else event.get("action")
                logger.exception("handler for a %r event raised", action)
            if self._reading_paused and len(inbox) <= _MAX_BACKLOG // 2:
                self._resume_reading()

    def _handle_event(self, event: Dict[str, Any]) -> Any:
        """Call the handler of an event that is not a plain text message."""
        params = event["params"]
        action = event["action"]
        if action == "new_message":
            c = params["context"]
            message = params["message"]
            if "binary" in params and params["binary"] is True:
                message = decode_binary(message)
            return self.on_message(message, Context(c["client_id"], c["room_id"], c["metadata"]))
        if action == "new_connection":
            return self.on_new_connection(protocol.context_from_params(params))
        if action == "disconnected":
            return self.on_disconnect(protocol.context_from_params(params))
        if action == "error":
            return self.on_error(params.get("error", ""), protocol.context_from_params(params))
        return None

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
