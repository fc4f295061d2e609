"""The asyncio backend client: :class:`AsyncPyStrandsClient`.

Task model
----------
Everything runs on the event loop that called :meth:`AsyncPyStrandsClient.connect`.
The connection is an :class:`asyncio.BufferedProtocol` reading into one
reused buffer; each chunk the loop reads goes at once, inside
``buffer_updated``, to the client's :class:`~pystrands.protocol.BackendProtocol`,
which routes every line:

- ``connection_request`` is answered right there: ``on_connection_request``
  is called at once; if it returns a coroutine, that runs as its own task
  (one task per connection request). The answer never waits for another
  handler.
- A reply (``ack``, ``presence``, ``presence_stats``, or an ``error`` to a
  request) settles the future its request is awaiting, so a handler may
  ``await client.presence(room)`` without blocking anything.
- Every other event becomes a handler call in an in-order queue. One
  long-lived task (the *dispatcher task*) takes calls from it and runs them,
  awaiting each. When a handler really suspends (it awaits I/O) and more
  events arrive meanwhile, those of other connections go to *worker tasks*,
  created then and ended as soon as they find nothing to do, at most
  ``concurrency`` handlers at once (100 by default). The handlers of one
  connection always run one at a time, in the broker's order: a call whose
  connection has a handler running waits behind it
  (:class:`~pystrands.protocol.Lanes`, keyed by ``connection_id``). A
  handler that never suspends costs no task at all: the fast path is one
  task running handlers back to back, as before.

Handlers may be ``async def`` or plain functions. A handler that blocks the
loop without awaiting blocks everything, as in any asyncio program.

Sending
-------
Every send, room and presence method sends at once and returns an
awaitable: ``client.broadcast_message("hi")`` sends, and so does ``await
client.broadcast_message("hi")``; awaiting also waits out back-pressure (the
socket's buffer over its high-water mark) and gives the reply of
``presence``, ``presence_stats`` and ``ack=True`` calls. The awaitable is a
coroutine object, so ``asyncio.create_task``, ``gather`` and ``wait_for``
take it too. Lines are written with one ``transport.write`` per loop
iteration: a burst of sends becomes one system call. From another thread
the methods hand the line to the loop (``call_soon_threadsafe``, which wakes
it: the line goes out at once) and return a ``concurrent.futures.Future``
of the result. Sending while not connected raises
:class:`~pystrands.errors.NotConnectedError`; a line longer than
``max_line_size`` raises :class:`~pystrands.errors.MessageTooLargeError`.

``connect()``, ``run_forever()`` and ``serve()`` are coroutines: await them.
``disconnect()`` and ``flush()`` start at once and return an awaitable.

Reconnecting, stopping, liveness: as in the threaded client (see
:mod:`pystrands.client`): exponential backoff with jitter that starts over
only once the broker accepted the backend; a refused token or a peer that is
not a broker ends the retrying; three heartbeat intervals of silence drop the
link; ``disconnect()`` (SIGTERM and Ctrl-C in ``run_forever``) stops
gracefully within ``shutdown_timeout``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import signal
import socket
import threading
from inspect import isawaitable
from threading import get_ident
from types import CoroutineType
from typing import (
    Any,
    Awaitable,
    Coroutine,
    Dict,
    Generator,
    Iterator,
    List,
    Optional,
    Set,
    Union,
)

from . import protocol
from .commands import Commands
from .context import ConnectionRequestContext, Context, PresenceEntry, PresenceStats
from .errors import (
    AuthenticationError,
    NotABrokerError,
    NotConnectedError,
    ProtocolError,
    PyStrandsConnectionError,
    ReplyTimeoutError,
)
from .protocol import Call, Outgoing, Request

__all__ = ["AsyncPyStrandsClient"]

logger = logging.getLogger("pystrands.async_client")

_FLUSH_BYTES = 64 * 1024
_RECV_SIZE = 256 * 1024
#: Queued events (received, not yet handled) above which the client stops
#: reading from the broker until the handlers have caught up by half.
_MAX_BACKLOG = 100_000
#: Most bytes read (and only counted) from the socket when it is closed.
_UNREAD_LIMIT = 64 * 1024 * 1024
#: Errors after which retrying cannot help.
_FATAL = (AuthenticationError, NotABrokerError)


class _Done(Coroutine[Any, Any, None]):
    """What a send returns when nothing is left to wait for (the line is
    buffered): awaiting it, or running it as a task, gives None at once.
    Not awaiting it is fine too."""

    __slots__ = ()

    # ``await`` calls ``__await__`` on the type: a bound built-in method is
    # called without arguments, and an empty tuple's iterator is exhausted at
    # once (the await gives None). This is every plain send's path, so it
    # runs without a Python frame.
    __await__ = ().__iter__  # type: ignore[assignment]

    def send(self, value: Any) -> Any:
        raise StopIteration

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        if val is None:
            raise typ
        raise val

    def close(self) -> None:
        pass

    def __repr__(self) -> str:
        return "<pystrands: sent>"


_SENT = _Done()


class _Pending(Coroutine[Any, Any, Any]):
    """What a send returns when there is something to wait for: the reply
    of a request, or the end of back-pressure. Awaiting it (or running it as
    a task) waits for ``future``; the line was sent already, so not awaiting
    it does not lose it."""

    __slots__ = ("_future", "_steps")

    def __init__(self, future: "asyncio.Future[Any]") -> None:
        self._future = future
        self._steps: Optional[Generator[Any, None, Any]] = None

    def __await__(self) -> Generator[Any, None, Any]:
        return self._future.__await__()

    def _iter(self) -> Generator[Any, None, Any]:
        if self._steps is None:
            self._steps = self._future.__await__()
        return self._steps

    def send(self, value: Any) -> Any:
        return self._iter().send(value)

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        return self._iter().throw(typ if val is None else val)

    def close(self) -> None:
        if self._steps is not None:
            self._steps.close()

    def __repr__(self) -> str:
        return f"<pystrands: pending {self._future!r}>"


class _Worker:
    """A task that runs handlers: the dispatcher task, or a worker task."""

    __slots__ = ("call", "task", "waiter")

    def __init__(self) -> None:
        #: The call it is running (None between calls).
        self.call: Optional[Call] = None
        self.task: "Optional[asyncio.Task[None]]" = None
        #: The future the dispatcher task waits on while there is nothing to do.
        self.waiter: "Optional[asyncio.Future[None]]" = None


class _BrokerConnection(asyncio.BufferedProtocol):
    """One TCP connection to the broker; forwards everything to the client.

    A BufferedProtocol: the loop reads into one reused 256 KiB buffer, where a
    plain Protocol would get a freshly allocated bytes object per read (which
    CPython maps and unmaps from the OS at that size)."""

    def __init__(self, client: "AsyncPyStrandsClient") -> None:
        loop = client._loop
        assert loop is not None
        self.client = client
        self.transport: Optional[asyncio.Transport] = None
        self.buffer = bytearray(_RECV_SIZE)
        self.write_paused = False
        self.drain_waiters: List["asyncio.Future[None]"] = []
        self.closed: "asyncio.Future[None]" = loop.create_future()
        #: The broker's verdict on this connection (None: accepted).
        self.greeting: "asyncio.Future[Optional[BaseException]]" = loop.create_future()
        self.liveness: Optional[asyncio.TimerHandle] = None
        self.reason = ""  # why the client dropped it
        self.attached = False  # the client took it as its connection

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Attach at once: the broker may send queued events right after the
        # connect, and the transport may read them before the coroutine that
        # opened the connection resumes.
        self.transport = transport  # type: ignore[assignment]
        self.client._attach(self)

    def get_buffer(self, sizehint: int) -> bytearray:
        return self.buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.client._data_received(self, nbytes)

    def eof_received(self) -> Optional[bool]:
        return False  # close the transport

    def connection_lost(self, exc: Optional[Exception]) -> None:
        if not self.closed.done():
            self.closed.set_result(None)
        if self.liveness is not None:
            self.liveness.cancel()
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
        Awaitable[Optional[int]],
        Awaitable[List[PresenceEntry]],
        Awaitable[PresenceStats],
    ],
):
    """A backend connected to the broker's TCP port, on asyncio.

    Subclass it and override the ``on_*`` callbacks (``async def`` or plain
    ``def``: both type-check against these declarations), then ``await
    client.connect()`` and ``await client.run_forever()``, or ``async with
    MyClient(...) as client:``. The send, room and presence methods
    (:class:`~pystrands.commands.Commands`) send at once and return an
    awaitable of the result.
    """

    __slots__ = (
        "_loop",
        "_loop_thread",
        "_core",
        "_conn",
        "_closing",
        "_lost",
        "_fatal",
        "_stopped",
        "_hurry",
        "_signalled",
        "_out",
        "_out_bytes",
        "_flush_handle",
        "_consuming",
        "_base",
        "_extra",
        "_lanes",
        "_multi",
        "_reconnect_task",
        "_stop_task",
        "_tasks",
        "_reading_paused",
        "_waits",
    )

    #: ``concurrency`` when not given: at most 100 handlers (of different
    #: connections) run at once.
    default_concurrency = 100

    def _setup(self) -> None:
        # Called at the end of ConnectionSettings.__init__, which takes the
        # arguments and sets host, port, ..., token and _connected.
        # Loop-bound objects are created in connect(), on the running loop
        # (asyncio primitives made outside it break on Python 3.8/3.9).
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._loop_thread: Optional[int] = None
        # The dispatch core: routing, decisions, replies, the event queue.
        self._core = protocol.BackendProtocol(self, defer=self._decide_later)
        self._core.peer = self.address
        self._conn: Optional[_BrokerConnection] = None
        self._closing = False
        self._lost = False
        self._fatal: Optional[BaseException] = None
        self._stopped: Optional[asyncio.Event] = None
        self._hurry: Optional[asyncio.Event] = None
        self._signalled = False
        self._out: List[bytes] = []
        self._out_bytes = 0
        self._flush_handle: Optional[asyncio.Handle] = None
        # Identifies the running dispatch (None: events are not handled).
        self._consuming: Optional[object] = None
        self._base: Optional[_Worker] = None  # the dispatcher task's state
        self._extra: Set[_Worker] = set()  # worker tasks alive
        self._lanes = protocol.Lanes()
        self._multi = False  # handlers run in several tasks: claim through the lanes
        self._reconnect_task: Optional["asyncio.Task[None]"] = None
        self._stop_task: Optional["asyncio.Task[None]"] = None
        self._tasks: Set["asyncio.Task[Any]"] = set()
        self._reading_paused = False
        self._waits: Optional[Iterator[float]] = None  # the reconnect schedule in use

    @property
    def _peer(self) -> str:
        return self.address

    # ------------------------------------------------------------------ connection

    async def connect(self) -> bool:
        """Open the connection to the broker and wait until it accepts the
        backend; True on success, False when the broker cannot be reached.

        Raises :class:`~pystrands.errors.AuthenticationError` when the broker
        refuses the token, and :class:`~pystrands.errors.NotABrokerError` when
        what answers is not a broker's backend port (e.g. its WebSocket port).
        """
        if self._connected:
            return True
        self._prepare()
        self._closing = False
        self._lost = False
        self._fatal = None
        conn = await self._open()
        if conn is None:
            return False
        try:
            outcome = await asyncio.wait_for(asyncio.shield(conn.greeting), self.connect_timeout)
        except asyncio.TimeoutError:
            self._core.end_greeting()
            outcome = None
            logger.info(
                "the broker at %s did not answer within %.1f s (a broker before protocol 1.1 "
                "ignores the probe); going on with the open connection",
                self.address,
                self.connect_timeout,
            )
        if outcome is not None:
            self._abandon(conn)
            if isinstance(outcome, _FATAL):
                raise outcome
            logger.warning("cannot connect to the broker at %s: %s", self.address, outcome)
            return False
        logger.info("connected to the broker at %s", self.address)
        return True

    def _prepare(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._stopped is None:
            self._loop = loop
            self._stopped = asyncio.Event()
            self._hurry = asyncio.Event()
        self._loop_thread = get_ident()
        self._stopped.clear()
        assert self._hurry is not None
        self._hurry.clear()

    async def _open(self, reconnect: bool = False) -> Optional[_BrokerConnection]:
        """One connection attempt: the TCP connect and the hello; the
        broker's verdict comes later (``conn.greeting``)."""
        loop = self._loop
        assert loop is not None
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(lambda: _BrokerConnection(self), self.host, self.port),
                self.connect_timeout,
            )
        except (OSError, asyncio.TimeoutError) as exc:
            logger.warning(
                "%s to the broker at %s failed: %s",
                "reconnect" if reconnect else "connect",
                self.address,
                exc or "timed out",
            )
            return None
        return conn if conn.attached else None

    def _attach(self, conn: _BrokerConnection) -> None:
        """A new connection is up (from its ``connection_made``): say hello
        (see :meth:`~pystrands.protocol.BackendProtocol.hello`) and make it
        the client's connection, before anything is read from it."""
        transport = conn.transport
        loop = self._loop
        assert transport is not None and loop is not None
        if self._closing or self._connected:  # disconnect()/connect() raced with us
            transport.close()
            return
        core = self._core
        core.connection_made()
        core.peer = self.address
        core.max_line_size = self.max_line_size
        transport.write(core.hello(self.token, lambda outcome: self._greeted(conn, outcome)))
        conn.attached = True
        self._conn = conn
        self._connected = True
        self._reading_paused = False
        if self._consuming is None:
            self._consuming = token = object()
            self._base = base = _Worker()
            base.task = loop.create_task(self._consume(token, base))
        self._watch(conn)

    def _greeted(self, conn: _BrokerConnection, outcome: Optional[BaseException]) -> None:
        """The broker's verdict on a new connection (see
        :meth:`~pystrands.protocol.BackendProtocol.hello`)."""
        # The verdict first: the coroutine waiting for it (connect() or the
        # reconnect loop) then runs before the loss of a refused connection.
        if not conn.greeting.done():
            conn.greeting.set_result(outcome)
        if outcome is None:
            self._waits = None  # accepted: the next loss starts the schedule over
        else:
            if isinstance(outcome, _FATAL):
                self._fatal = outcome
            conn.reason = str(outcome)
            if conn.transport is not None:
                conn.transport.abort()

    def _abandon(self, conn: _BrokerConnection) -> None:
        """Drop a connection the broker refused (during connect())."""
        if conn.transport is not None:
            conn.transport.abort()
        if self._conn is conn:
            self._conn = None
            self._connected = False
        self._stop_dispatch()

    def _watch(self, conn: _BrokerConnection) -> None:
        """The liveness check: no data for three heartbeat intervals drops
        the link (the reconnect follows)."""
        interval = self.heartbeat_interval
        loop = self._loop
        if interval is None or loop is None:
            return
        core = self._core
        state = [core.chunks, loop.time()]

        def check() -> None:
            if conn is not self._conn or self._closing:
                return
            now = loop.time()
            if core.chunks != state[0] or self._reading_paused:
                # new data, or reading paused on purpose (a backlog): not silence
                state[0], state[1] = core.chunks, now
            elif now - state[1] > protocol.MISSED_HEARTBEATS * interval:
                conn.reason = (
                    f"no data (not even a heartbeat) for {now - state[1]:.1f} s, "
                    f"{protocol.MISSED_HEARTBEATS} times heartbeat_interval ({interval:g} s)"
                )
                if conn.transport is not None:
                    conn.transport.abort()
                return
            conn.liveness = loop.call_later(interval / 2, check)

        conn.liveness = loop.call_later(interval / 2, check)

    def disconnect(self, timeout: Optional[float] = None) -> Awaitable[None]:
        """Stop gracefully and close the connection; no reconnecting.

        Starts at once (a plain call works) and returns an awaitable that is
        done when the connection is closed. From outside the handlers: stops
        taking events, lets the running handlers and the events already read
        finish (up to ``timeout`` seconds, default ``shutdown_timeout``; then
        cancels what still runs), writes what they sent, and closes. Events
        it could not handle are counted and logged at WARNING. From inside a
        handler it cannot wait for itself: it writes what was sent and closes
        at once. From another thread it returns a
        ``concurrent.futures.Future``.
        """
        loop = self._loop
        if loop is None or loop.is_closed():
            return _SENT
        if timeout is None:
            timeout = self.shutdown_timeout
        if get_ident() != self._loop_thread:
            return asyncio.run_coroutine_threadsafe(self._stop(timeout, None), loop)  # type: ignore[return-value]
        task = self._stop_task
        if task is None or task.done():
            caller = asyncio.current_task()
            task = self._stop_task = loop.create_task(self._stop(timeout, caller))
        return _Pending(task)

    async def _stop(self, timeout: float, caller: "Optional[asyncio.Task[Any]]") -> None:
        loop = self._loop
        assert loop is not None
        deadline = loop.time() + max(0.0, timeout)
        inside = caller is not None and (
            caller in self._tasks
            or (self._base is not None and caller is self._base.task)
            or any(w.task is caller for w in self._extra)
        )
        self._closing = True
        if self._reconnect_task is not None:
            if self._reconnect_task is not caller:
                self._reconnect_task.cancel()
            self._reconnect_task = None
        conn = self._conn
        running = 0
        if conn is not None:
            self._core.stop_events()  # replies still arrive; events are counted
            if not inside:
                running = await self._drain(deadline)
        if conn is not None and conn.transport is not None:
            conn.transport.pause_reading()
        workers = [w for w in ([self._base] if self._base else []) + list(self._extra)]
        self._stop_dispatch()
        if running:
            for worker in workers:
                if worker.task is not None and worker.task is not caller and not worker.task.done():
                    worker.task.cancel()
        queued = len(self._core.events) + self._lanes.clear()
        self._core.events.clear()
        self._flush()
        dropped = self._core.dropped
        unread = self._count_unread(conn) if conn is not None else 0
        if conn is not None and conn.transport is not None:
            conn.transport.close()
            try:
                await asyncio.wait_for(asyncio.shield(conn.closed), max(0.1, deadline - loop.time()))
            except asyncio.TimeoutError:
                conn.transport.abort()
        self._conn = None
        self._connected = False
        if self._stopped is not None:
            self._stopped.set()
        if running:
            logger.warning(
                "broker at %s: %d handler(s) still running after %.1f s (shutdown_timeout); "
                "cancelled",
                self.address,
                running,
                timeout,
            )
        protocol.log_unhandled(logger, self.address, queued, dropped, unread)
        logger.info("disconnected from the broker at %s", self.address)

    def _quiet(self) -> bool:
        base = self._base
        return (
            not self._core.events
            and (base is None or base.call is None)
            and not self._extra
            and not self._lanes.busy
        )

    async def _drain(self, deadline: float) -> int:
        """Wait until no handler runs and no event is queued, or the
        deadline (or a second signal); return how many handlers still run."""
        loop = self._loop
        assert loop is not None and self._hurry is not None
        while not self._quiet():
            if loop.time() >= deadline or self._hurry.is_set() or self._conn is None:
                base = self._base
                return len(self._extra) + (1 if base is not None and base.call is not None else 0)
            await asyncio.sleep(0.01)
        return 0

    def _stop_dispatch(self) -> None:
        """The dispatcher task and the workers stop taking calls."""
        self._consuming = None
        base = self._base
        if base is not None:
            self._wake(base)
        self._base = None
        self._extra = set()
        self._multi = False

    def _count_unread(self, conn: _BrokerConnection) -> int:
        """Read (without handling) what the broker wrote that was never read
        (reading is paused), and count its client events, plus those of a
        partial line held."""
        data = []
        transport = conn.transport
        sock = transport.get_extra_info("socket") if transport is not None else None
        if sock is not None:
            try:
                with socket.socket(fileno=os.dup(sock.fileno())) as copy:
                    copy.setblocking(False)
                    total = 0
                    while total < _UNREAD_LIMIT:
                        chunk = copy.recv(_RECV_SIZE)
                        if not chunk:
                            break
                        data.append(chunk)
                        total += len(chunk)
            except OSError:
                pass
        return self._core.unhandled_in(b"".join(data))

    async def run_forever(self, handle_signals: bool = True) -> None:
        """Connect if needed and handle events until :meth:`disconnect`,
        SIGTERM or Ctrl-C; then stop gracefully and return.

        With ``handle_signals`` (the default; in the main thread, on loops
        that support it) SIGTERM and SIGINT start the graceful stop, and a
        second one stops waiting for handlers; the previous handlers are
        restored on return. Pass ``handle_signals=False`` when the program
        handles signals itself (a web server hosting the client), and call
        ``await client.disconnect()`` from its shutdown hook.

        Reuses the connection of an earlier ``connect()``. Without
        ``auto_reconnect``, a failed first connection or a lost one raises
        :class:`~pystrands.errors.PyStrandsConnectionError`. A refused token
        or a peer that is not a broker raises
        :class:`~pystrands.errors.AuthenticationError` /
        :class:`~pystrands.errors.NotABrokerError`, at the first connect or
        at a reconnect. Cancelling the task that runs it disconnects and
        re-raises the cancellation.
        """
        if not self._connected and self._reconnect_task is None:
            if not await self.connect():
                if not self.auto_reconnect:
                    raise PyStrandsConnectionError(f"cannot connect to the broker at {self.address}")
                self._start_reconnect()
        assert self._stopped is not None
        installed = self._install_signal_handlers() if handle_signals else {}
        try:
            try:
                await self._stopped.wait()
            except asyncio.CancelledError:
                await self.disconnect()
                raise
            lost = self._lost
            await self.disconnect()
        finally:
            self._remove_signal_handlers(installed)
        if self._fatal is not None:
            raise self._fatal
        if lost:
            raise PyStrandsConnectionError(f"connection to the broker at {self.address} lost")

    def _install_signal_handlers(self) -> Dict[int, Any]:
        loop = self._loop
        if loop is None or threading.current_thread() is not threading.main_thread():
            return {}
        self._signalled = False
        installed: Dict[int, Any] = {}
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous = signal.getsignal(signum)
            try:
                loop.add_signal_handler(signum, self._on_signal, signum)
            except (NotImplementedError, RuntimeError, ValueError):
                continue  # e.g. Windows, or a loop without signal support
            installed[signum] = previous
        return installed

    def _remove_signal_handlers(self, installed: Dict[int, Any]) -> None:
        loop = self._loop
        for signum, previous in installed.items():
            if loop is not None and not loop.is_closed():
                loop.remove_signal_handler(signum)
            if previous is not None:
                signal.signal(signum, previous)

    def _on_signal(self, signum: int) -> None:
        if self._signalled:
            if self._hurry is not None:
                self._hurry.set()  # a second signal: stop waiting for handlers
            return
        self._signalled = True
        logger.info(
            "broker at %s: %s: stopping (waiting up to %.1f s for running handlers)",
            self.address,
            signal.Signals(signum).name,
            self.shutdown_timeout,
        )
        if self._stopped is not None:
            self._stopped.set()

    async def __aenter__(self) -> "AsyncPyStrandsClient":
        """``async with Client(...) as client:`` connects (raising
        :class:`~pystrands.errors.PyStrandsConnectionError` when it cannot)
        and disconnects at the end of the block."""
        if not await self.connect():
            raise PyStrandsConnectionError(f"cannot connect to the broker at {self.address}")
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.disconnect()

    def _start_reconnect(self) -> None:
        if self._reconnect_task is None and self._loop is not None:
            self._reconnect_task = self._loop.create_task(self._reconnect_with_backoff())

    async def _reconnect_with_backoff(self) -> None:
        if self._waits is None:
            self._waits = self._reconnect_waits()
        waits = self._waits
        try:
            while not self._closing and not self._connected:
                await asyncio.sleep(next(waits))
                if self._closing or self._connected:
                    return
                conn = await self._open(reconnect=True)
                if conn is None:
                    continue
                outcome = await asyncio.shield(conn.greeting) if self._fatal is None else None
                if outcome is None:
                    logger.info("reconnected to the broker at %s", self.address)
                    return
                if isinstance(outcome, _FATAL):
                    logger.error("%s; not reconnecting", outcome)
                    return
                logger.warning("reconnect to the broker at %s failed: %s", self.address, outcome)
                # The refused connection is closing: once it is, go on here
                # (its loss starts no reconnect of its own).
                try:
                    await asyncio.wait_for(asyncio.shield(conn.closed), self.connect_timeout)
                except asyncio.TimeoutError:
                    if conn.transport is not None:
                        conn.transport.abort()
        finally:
            if self._reconnect_task is asyncio.current_task():
                self._reconnect_task = None

    def _connection_lost(self, conn: _BrokerConnection, exc: Optional[Exception]) -> None:
        if not conn.greeting.done():
            conn.greeting.set_result(
                PyStrandsConnectionError(
                    f"the broker at {self.address} closed the connection before accepting the backend"
                )
            )
        if conn is not self._conn:
            return
        self._conn = None
        self._connected = False
        self._core.connection_lost(self.address)
        if self._out:
            logger.warning(
                "broker at %s: connection lost: %d bytes sent by handlers were not delivered",
                self.address,
                self._out_bytes,
            )
            self._out.clear()
            self._out_bytes = 0
        if self._closing:
            return
        if self._fatal is not None:  # connect() raises it, the reconnect loop logs it
            self._stop_dispatch()
            if self._stopped is not None:
                self._stopped.set()
            return
        if self._reconnect_task is not None:
            return  # the greeting of a reconnect failed: that loop goes on
        reason = conn.reason or (str(exc) if exc else "")
        logger.warning(
            "connection to the broker at %s lost%s", self.address, f": {reason}" if reason else ""
        )
        if self.auto_reconnect:
            self._start_reconnect()
        else:
            self._lost = True
            if self._stopped is not None:
                self._stopped.set()

    # ------------------------------------------------------------------ sending

    def _issue(self, outgoing: Outgoing) -> Any:
        """Send ``outgoing`` now; return an awaitable of its result (see the
        module documentation)."""
        if get_ident() != self._loop_thread:
            return self._issue_from_thread(outgoing)
        if type(outgoing) is bytes:
            # _write() inlined: this is the path of every send.
            size = len(outgoing)
            if size > self.max_line_size:
                protocol.check_size(outgoing, self.max_line_size)
            if not self._connected:
                raise NotConnectedError(f"not connected to the broker at {self.address}")
            self._out.append(outgoing)
            self._out_bytes += size
            if self._flush_handle is None:
                self._flush_handle = self._loop.call_soon(self._scheduled_flush)  # type: ignore[union-attr]
            elif self._out_bytes >= _FLUSH_BYTES:
                self._flush()
            conn = self._conn
            if conn is not None and conn.write_paused:
                return _Pending(self._drain_waiter(conn))
            return _SENT
        return _Pending(self._ask(outgoing))  # type: ignore[arg-type]

    def _issue_from_thread(self, outgoing: Outgoing) -> "concurrent.futures.Future[Any]":
        """A send from a thread other than the loop's: checked here, sent
        on the loop at once (the loop is woken), result in a Future."""
        loop = self._loop
        if loop is None or not self._connected or loop.is_closed():
            raise NotConnectedError(f"not connected to the broker at {self.address}")
        protocol.check_size(outgoing, self.max_line_size)
        result: "concurrent.futures.Future[Any]" = concurrent.futures.Future()

        def on_loop() -> None:
            try:
                awaitable = self._issue(outgoing)
            except BaseException as exc:
                result.set_exception(exc)
                return
            if awaitable is _SENT:
                result.set_result(None)
                return
            task = asyncio.ensure_future(awaitable)

            def copy(done: "asyncio.Future[Any]") -> None:
                if done.cancelled():
                    result.cancel()
                elif done.exception() is not None:
                    result.set_exception(done.exception())
                else:
                    result.set_result(done.result())

            task.add_done_callback(copy)

        loop.call_soon_threadsafe(on_loop)
        return result

    def _drain_waiter(self, conn: _BrokerConnection) -> "asyncio.Future[None]":
        self._flush()
        waiter: "asyncio.Future[None]" = self._loop.create_future()  # type: ignore[union-attr]
        if conn.write_paused:
            conn.drain_waiters.append(waiter)
        else:
            waiter.set_result(None)
        return waiter

    def _ask(self, request: Request) -> "asyncio.Future[Any]":
        """Write a request now; the future settles with its reply, or with
        :class:`~pystrands.errors.ReplyTimeoutError` after ``reply_timeout``."""
        loop = self._loop
        if loop is None or not self._connected:
            raise NotConnectedError(f"not connected to the broker at {self.address}")
        if len(request.line) > self.max_line_size:
            protocol.check_size(request, self.max_line_size)
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
            waiter.set_exception(ReplyTimeoutError(request.action, timeout, self.address))

    def flush(self) -> Awaitable[None]:
        """Write buffered sends now; the awaitable waits while the socket is
        over its high-water mark. Rarely needed: buffered sends go out on the
        next loop iteration by themselves."""
        self._flush()
        conn = self._conn
        if conn is not None and conn.write_paused:
            return _Pending(self._drain_waiter(conn))
        return _SENT

    def _write(self, data: bytes) -> None:
        """Buffer one encoded line; written with the others of this loop iteration."""
        if not self._connected:
            raise NotConnectedError(f"not connected to the broker at {self.address}")
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
            logger.warning(
                "broker at %s: connection lost: %d bytes sent were not delivered",
                self.address,
                len(data),
            )
            return
        conn.transport.write(data)

    # ------------------------------------------------------------------ receiving

    def _data_received(self, conn: _BrokerConnection, nbytes: int) -> None:
        if conn is not self._conn:
            return  # a connection being replaced
        core = self._core
        events = core.events
        before = len(events)
        try:
            answers = core.receive_from(conn.buffer, nbytes)
        except ProtocolError as exc:
            logger.error("broker at %s: %s; dropping the connection", self.address, exc)
            if conn.transport is not None:
                conn.transport.abort()
            return
        for answer in answers:
            self._write_answer(answer)
        size = len(events)
        if size != before:
            base = self._base
            if base is None:
                return
            if base.call is None:
                self._wake(base)
            elif self.concurrency > 1:
                self._offload(base)  # the dispatcher task is inside a handler that awaits
            if (
                size + self._lanes.parked > _MAX_BACKLOG
                and not self._reading_paused
                and conn.transport is not None
            ):
                self._reading_paused = True
                conn.transport.pause_reading()

    def _wake(self, worker: _Worker) -> None:
        waiter = worker.waiter
        if waiter is not None:
            worker.waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def _offload(self, base: _Worker) -> None:
        """The dispatcher task is suspended inside a handler and events wait:
        from now on calls are claimed through the lanes, and a worker task
        takes the waiting ones unless every task is inside a handler and
        ``concurrency`` is reached."""
        if not self._multi:
            self._multi = True
            if base.call is not None:
                self._lanes.hold(base.call)
        extra = self._extra
        if len(extra) + 1 >= self.concurrency:
            return
        for worker in extra:
            if worker.call is None:
                return  # one is between calls: it takes the waiting ones
        token = self._consuming
        if token is None:
            return
        worker = _Worker()
        extra.add(worker)
        worker.task = self._loop.create_task(self._work(token, worker))  # type: ignore[union-attr]

    def _write_answer(self, line: bytes) -> None:
        try:
            self._write(line)
        except NotConnectedError as exc:
            logger.warning("broker at %s: could not answer a connection request: %s", self.address, exc)

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
        except asyncio.CancelledError:
            if self._closing:
                raise
            line = self._core.refusal(request_id, request)
        except BaseException:  # sys.exit() and KeyboardInterrupt too: reject, go on
            line = self._core.refusal(request_id, request)
        else:
            line = self._core.decision(request_id, request, result)
        self._write_answer(line)

    async def _consume(self, token: object, me: _Worker) -> None:
        """The dispatcher task: runs the queued handler calls, in order.

        ``me.call`` tells :meth:`_data_received` whether this task is inside a
        handler: set before each call, cleared before waiting for more (the
        task cannot be seen between two calls: it only yields inside a
        handler or when waiting)."""
        loop = self._loop
        assert loop is not None
        events = self._core.events
        popleft = events.popleft
        coroutine = CoroutineType
        handler_failed = self._core.handler_failed
        while self._consuming is token:
            if not events:
                if self._reading_paused:
                    self._resume_reading()
                me.call = None
                me.waiter = waiter = loop.create_future()
                await waiter
                continue
            call = popleft()
            me.call = call
            handler, args = call
            try:
                result = handler(*args)
                if result is not None:
                    if type(result) is coroutine or isawaitable(result):
                        await result
            except asyncio.CancelledError:
                if self._closing:
                    raise
                handler_failed(handler)
            except BaseException:
                handler_failed(handler)
            if self._multi:
                # Worker tasks took events meanwhile: from now on calls are
                # claimed through the lanes, until they are done.
                await self._run_lanes(token, me, call)
            if self._reading_paused and len(events) + self._lanes.parked <= _MAX_BACKLOG // 2:
                self._resume_reading()
        me.call = None

    async def _run_lanes(self, token: object, me: _Worker, finished: Optional[Call]) -> None:
        """Run calls claimed through the lanes while several tasks run
        handlers; ``finished`` is a call ``me`` just ran (its lane is
        released first). A worker task returns when nothing is left to
        claim; the dispatcher task waits for more instead, until no worker
        runs, and then returns to the fast path."""
        loop = self._loop
        assert loop is not None
        lanes = self._lanes
        events = self._core.events
        coroutine = CoroutineType
        handler_failed = self._core.handler_failed
        while self._consuming is token:
            call = lanes.release(finished) if finished is not None else None
            finished = None
            if call is None:
                call = lanes.claim(events)
                if call is None:
                    me.call = None
                    if me is not self._base:
                        return
                    if not self._extra and not lanes.busy:
                        self._multi = False  # nobody else runs handlers: back to the fast path
                        return
                    if self._reading_paused:
                        self._resume_reading()
                    me.waiter = waiter = loop.create_future()
                    await waiter
                    continue
            me.call = call
            handler, args = call
            try:
                result = handler(*args)
                if result is not None:
                    if type(result) is coroutine or isawaitable(result):
                        await result
            except asyncio.CancelledError:
                if self._closing:
                    raise
                handler_failed(handler)
            except BaseException:
                handler_failed(handler)
            me.call = None
            finished = call
            if self._reading_paused and len(events) + lanes.parked <= _MAX_BACKLOG // 2:
                self._resume_reading()

    async def _work(self, token: object, me: _Worker) -> None:
        """A worker task: runs calls through the lanes until none is left."""
        try:
            await self._run_lanes(token, me, None)
        finally:
            self._extra.discard(me)
            if not self._extra and not self._lanes.busy and self._consuming is token:
                base = self._base
                if base is not None and base.call is None:
                    self._multi = False

    def _resume_reading(self) -> None:
        self._reading_paused = False
        conn = self._conn
        if conn is not None and conn.transport is not None and not self._closing:
            conn.transport.resume_reading()

    # ------------------------------------------------------------------ callbacks
    # Declared as plain functions that may return an awaitable, so that
    # overrides written as ``async def`` and as plain ``def`` both type-check.

    def on_connection_request(
        self, request: ConnectionRequestContext
    ) -> Union[Optional[bool], Awaitable[Optional[bool]]]:
        """A WebSocket client asks to connect; answered without waiting for
        other handlers. Change ``request.context`` to assign the client;
        decide by returning True/False, or None and setting
        ``request.accepted``. Any other value rejects (logged at ERROR), as
        does an exception. May be ``async def``: it then runs as a task of
        its own."""
        return True

    def on_new_connection(self, context: Context) -> Optional[Awaitable[None]]:
        """A client was accepted (1.0.0's name); the default calls :meth:`on_connect`."""
        return self.on_connect(context)

    def on_connect(self, context: Context) -> Optional[Awaitable[None]]:
        """A client was accepted and is connected (the README's name)."""
        return None

    def on_message(self, message: Union[str, bytes], context: Context) -> Optional[Awaitable[None]]:
        """A client sent ``message`` (``bytes`` for a binary message)."""
        return None

    def on_disconnect(self, context: Context) -> Optional[Awaitable[None]]:
        """A client's WebSocket closed."""
        return None

    def on_error(self, error: str, context: Context) -> Optional[Awaitable[None]]:
        """The broker reported an error (``context`` fields are empty when it
        concerns no particular client). An override may take ``error`` alone."""
        logger.warning("broker at %s reported an error: %s", self.address, error)
        return None
