"""Publishers: send-only connections to the broker, for code that is not the
backend (a web view, a cron job, a worker) but must reach the clients.

::

    from pystrands import Publisher

    publisher = Publisher("localhost", 8081)       # connects on first use

    def order_shipped(order):                      # e.g. inside a Flask view
        publisher.send_private_message(order.user_id, "your order shipped")

A publisher opens its connection with ``{"action":"auth","params":{"events":false}}``
(plus the backend token, when there is one): the broker (protocol 1.1) never
gives it connection requests or client events and does not count it as a
backend, so it does not keep "no backend connected" (503) answers away from
users while the real backend is down. It still gets replies: ``presence``,
``presence_stats`` and ``ack=True`` work as in the clients.

- :class:`Publisher`: blocking and thread-safe; one connection shared by every
  thread, opened on first use, reopened on the next use after it was lost (and
  in a child process after ``fork``, so one created at import time in a
  pre-forking server works).
- :class:`AsyncPublisher`: the asyncio twin; await every method.

Both wait, when they connect, for the broker to accept them (see
:meth:`~pystrands.protocol.BackendProtocol.hello`): a refused token raises
:class:`~pystrands.errors.AuthenticationError` from the call, and an address
that is not a broker's backend port (its WebSocket port, say)
:class:`~pystrands.errors.NotABrokerError`, instead of sends that vanish.
A line longer than ``max_line_size`` raises
:class:`~pystrands.errors.MessageTooLargeError`; three heartbeat intervals
without data drop the connection (the next call opens a new one).
"""

from __future__ import annotations

import asyncio
import logging
import os
import select
import socket
import threading
from concurrent.futures import Future
from concurrent.futures import wait as wait_for_future
from typing import Any, Coroutine, List, Optional, Tuple

from .commands import Commands
from .context import PresenceEntry, PresenceStats
from .errors import ProtocolError, PyStrandsConnectionError, ReplyTimeoutError
from .protocol import (
    DEFAULT_HEARTBEAT_INTERVAL,
    DEFAULT_MAX_LINE_SIZE,
    MISSED_HEARTBEATS,
    TOKEN_ENV,
    BackendProtocol,
    Outgoing,
    Request,
    broker_address,
    check_count,
    check_reply_timeout,
    check_seconds,
    check_size,
)

__all__ = ["Publisher", "AsyncPublisher"]

logger = logging.getLogger("pystrands.publisher")

_RECV_SIZE = 64 * 1024


class _PublisherSettings:
    """What both publishers are given: ``Publisher(host=None, port=None,
    token=None, *, reply_timeout=5.0, connect_timeout=5.0,
    max_line_size=16 MiB, heartbeat_interval=15.0)``. ``host`` / ``port``
    default to ``$PYSTRANDS_HOST`` / ``$PYSTRANDS_PORT``, else
    ``localhost:8081``; ``token`` to ``$PYSTRANDS_BACKEND_TOKEN``; the other
    settings mean what they mean for the clients
    (:class:`~pystrands.protocol.ConnectionSettings`)."""

    def __init__(
        self,
        host: Optional[str] = None,
        port: Optional[int] = None,
        token: Optional[str] = None,
        *,
        reply_timeout: float = 5.0,
        connect_timeout: float = 5.0,
        max_line_size: int = DEFAULT_MAX_LINE_SIZE,
        heartbeat_interval: Optional[float] = DEFAULT_HEARTBEAT_INTERVAL,
    ) -> None:
        self.host, self.port = broker_address(host, port)
        #: Sent in the auth line when set; defaults to $PYSTRANDS_BACKEND_TOKEN.
        self.token = token if token is not None else (os.environ.get(TOKEN_ENV) or None)
        #: Seconds to wait for a reply (presence, presence_stats, ack=True).
        self.reply_timeout = check_reply_timeout(reply_timeout)
        #: Seconds to wait for the TCP connection to open and the broker to accept it.
        self.connect_timeout = float(check_seconds("connect_timeout", connect_timeout) or 0)
        #: The broker's --max-line-size.
        self.max_line_size = check_count("max_line_size", max_line_size, 1024)
        #: The broker's --heartbeat-interval (None: no liveness check).
        self.heartbeat_interval = check_seconds("heartbeat_interval", heartbeat_interval, none_ok=True)
        # No handlers: a publisher takes replies only.
        self._core = BackendProtocol(None)
        self._core.peer = self.address
        self._setup()

    def _setup(self) -> None:
        """The subclass's own state, set up at the end of ``__init__``."""

    @property
    def address(self) -> str:
        """``host:port`` of the broker; every log line of the publisher names it."""
        return f"{self.host}:{self.port}"

    @property
    def _peer(self) -> str:
        return self.address

    def _silence_limit(self) -> Optional[float]:
        interval = self.heartbeat_interval
        return None if interval is None else MISSED_HEARTBEATS * interval


class Publisher(_PublisherSettings, Commands[Optional[int], List[PresenceEntry], PresenceStats]):
    """A blocking, thread-safe, send-only connection to the broker.

    Every method of :class:`~pystrands.commands.Commands` (sends, room and
    connection commands, presence) works as in :class:`~pystrands.PyStrandsClient`,
    from any thread. The first call connects (or call :meth:`connect`); a call
    after the connection was lost reconnects first. A write that fails is
    retried once on a new connection (a line the broker did not receive whole
    is dropped by it, so nothing is sent twice); if that fails too, the call
    raises :class:`~pystrands.errors.PyStrandsConnectionError`. A line the
    kernel accepted just before the connection broke is lost without an error:
    use ``ack=True`` where that matters.
    """

    def _setup(self) -> None:
        self._lock = threading.Lock()  # connecting and writing
        self._feed = threading.Lock()  # feeding the core (one connection's reader at a time)
        self._sock: Optional[socket.socket] = None
        self._pid = 0  # the process that opened _sock

    @property
    def connected(self) -> bool:
        """True while a connection is open (it opens on first use)."""
        return self._sock is not None and self._pid == os.getpid()

    def connect(self) -> None:
        """Open the connection now rather than on first use;
        :class:`~pystrands.errors.PyStrandsConnectionError` if it fails."""
        with self._lock:
            self._connection()

    def close(self) -> None:
        """Close the connection (a later call opens a new one). Requests
        waiting for a reply fail with ``PyStrandsConnectionError``."""
        with self._lock:
            sock = self._sock
            if sock is not None:
                self._drop(sock)

    def __enter__(self) -> "Publisher":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ internals

    def _issue(self, outgoing: Outgoing) -> Any:
        check_size(outgoing, self.max_line_size)
        if isinstance(outgoing, bytes):
            self._send(outgoing, None)
            return None
        waiter: "Future[Any]" = Future()
        self._send(outgoing.line, (outgoing, waiter))
        return self._wait(outgoing, waiter)

    def _send(self, line: bytes, expecting: "Optional[Tuple[Request, Future[Any]]]") -> None:
        """Write ``line`` (registering ``expecting`` first), connecting if
        needed and retrying once on a new connection if the write fails."""
        with self._lock:
            for attempt in (1, 2):
                sock = self._connection()
                if expecting is not None:
                    self._core.expect(*expecting)
                try:
                    sock.sendall(line)
                    return
                except OSError as exc:
                    if expecting is not None:
                        self._core.forget(expecting[0])
                    self._drop(sock)
                    if attempt == 2:
                        raise PyStrandsConnectionError(
                            f"cannot write to the broker at {self._peer}: {exc}"
                        ) from exc
                    logger.warning("connection to the broker at %s lost (%s); reconnecting", self._peer, exc)

    def _wait(self, request: Request, waiter: "Future[Any]") -> Any:
        timeout = self.reply_timeout
        if not wait_for_future((waiter,), timeout).done:
            self._core.forget(request)
            if not waiter.done():
                raise ReplyTimeoutError(request.action, timeout, self._peer)
        return waiter.result()

    def _connection(self) -> socket.socket:
        """Holding _lock: the open socket, connecting first if needed."""
        sock = self._sock
        if sock is not None:
            if self._pid == os.getpid():
                return sock
            # A child process after fork: the socket is the parent's. Let go of
            # it without shutdown (that would end the parent's connection too).
            self._sock = None
            sock.close()
            self._core.connection_lost(self._peer)
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.connect_timeout)
        except OSError as exc:
            raise PyStrandsConnectionError(f"cannot connect to the broker at {self._peer}: {exc}") from exc
        greeting: "Future[Optional[BaseException]]" = Future()

        def greeted(outcome: Optional[BaseException]) -> None:
            if not greeting.done():
                greeting.set_result(outcome)

        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._feed:
                self._core.connection_made()
                hello = self._core.hello(self.token, greeted, events=False)
            sock.sendall(hello)
            sock.settimeout(None)
        except OSError as exc:
            sock.close()
            raise PyStrandsConnectionError(f"cannot connect to the broker at {self._peer}: {exc}") from exc
        self._sock = sock
        self._pid = os.getpid()
        threading.Thread(
            target=self._read, args=(sock, greeted), name="pystrands-publisher", daemon=True
        ).start()
        wait_for_future((greeting,), self.connect_timeout)
        outcome = greeting.result() if greeting.done() else None
        if outcome is not None:
            self._drop(sock)
            raise outcome
        if not greeting.done():
            self._core.end_greeting()  # a broker before protocol 1.1: no answer to the probe
        logger.info("publisher connected to the broker at %s", self._peer)
        return sock

    def _drop(self, sock: socket.socket) -> None:
        """Holding _lock: forget ``sock``; its reader thread closes it."""
        if self._sock is sock:
            self._sock = None
            self._core.connection_lost(self._peer)
        try:
            sock.shutdown(socket.SHUT_RDWR)  # wakes the reader
        except OSError:
            pass

    def _read(self, sock: socket.socket, greeted: Any) -> None:
        """The connection's reader thread: routes replies (and heartbeats)
        until the connection ends or falls silent, then marks it lost."""
        receive = self._core.receive
        silence = self._silence_limit()
        try:
            while True:
                if silence is not None:
                    ready, _, _ = select.select([sock], [], [], silence)
                    if not ready:
                        logger.warning(
                            "publisher connection to %s dropped: no data (not even a heartbeat) "
                            "for %.1f s, %d times heartbeat_interval",
                            self._peer,
                            silence,
                            MISSED_HEARTBEATS,
                        )
                        break
                data = sock.recv(_RECV_SIZE)
                if not data:
                    break
                with self._feed:
                    if self._sock is not sock:
                        break
                    receive(data)
        except (OSError, ValueError, ProtocolError) as exc:
            logger.info("publisher connection to %s ended: %s", self._peer, exc)
        finally:
            greeted(
                PyStrandsConnectionError(
                    f"the broker at {self._peer} closed the connection before accepting the publisher"
                )
            )
            with self._lock:
                if self._sock is sock:
                    self._sock = None
                    self._core.connection_lost(self._peer)
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()


class AsyncPublisher(
    _PublisherSettings,
    Commands[
        Coroutine[Any, Any, Optional[int]],
        Coroutine[Any, Any, List[PresenceEntry]],
        Coroutine[Any, Any, PresenceStats],
    ],
):
    """The asyncio twin of :class:`Publisher`: await every method (it
    connects on first use and reconnects after the connection was lost).
    Use it from one event loop. A write that fails raises
    :class:`~pystrands.errors.PyStrandsConnectionError` (no retry: whether the
    broker got the line is unknown); the next call reconnects."""

    def _setup(self) -> None:
        # Made on the running loop (asyncio primitives bind to a loop on 3.8/3.9).
        self._lock: Optional[asyncio.Lock] = None
        self._writer: Optional[asyncio.StreamWriter] = None
        self._reader_task: "Optional[asyncio.Task[None]]" = None

    @property
    def connected(self) -> bool:
        """True while a connection is open (it opens on first use)."""
        return self._writer is not None and not self._writer.is_closing()

    async def connect(self) -> None:
        """Open the connection now rather than on first use."""
        await self._connection()

    async def close(self) -> None:
        """Close the connection (a later call opens a new one)."""
        writer, self._writer = self._writer, None
        task, self._reader_task = self._reader_task, None
        self._core.connection_lost(self._peer)
        if task is not None:
            task.cancel()
        if writer is not None:
            writer.close()
            try:
                await writer.wait_closed()
            except (OSError, ConnectionError):
                pass

    async def __aenter__(self) -> "AsyncPublisher":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    # ------------------------------------------------------------------ internals

    async def _issue(self, outgoing: Outgoing) -> Any:
        check_size(outgoing, self.max_line_size)
        writer = await self._connection()
        if isinstance(outgoing, bytes):
            await self._write(writer, outgoing)
            return None
        request = outgoing
        loop = asyncio.get_running_loop()
        waiter: "asyncio.Future[Any]" = loop.create_future()
        self._core.expect(request, waiter)
        try:
            await self._write(writer, request.line)
            return await asyncio.wait_for(waiter, self.reply_timeout)
        except asyncio.TimeoutError:
            raise ReplyTimeoutError(request.action, self.reply_timeout, self._peer) from None
        finally:
            self._core.forget(request)

    async def _write(self, writer: asyncio.StreamWriter, line: bytes) -> None:
        try:
            writer.write(line)
            await writer.drain()
        except (OSError, ConnectionError) as exc:
            self._lose(writer)
            raise PyStrandsConnectionError(f"cannot write to the broker at {self._peer}: {exc}") from exc

    async def _connection(self) -> asyncio.StreamWriter:
        current = self._writer
        if current is not None and not current.is_closing():
            return current
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            current = self._writer
            if current is not None and not current.is_closing():
                return current
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(self.host, self.port), self.connect_timeout
                )
            except (OSError, asyncio.TimeoutError) as exc:
                raise PyStrandsConnectionError(
                    f"cannot connect to the broker at {self._peer}: {exc!r}"
                ) from exc
            sock = writer.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            greeting: "asyncio.Future[Optional[BaseException]]" = (
                asyncio.get_running_loop().create_future()
            )

            def greeted(outcome: Optional[BaseException]) -> None:
                if not greeting.done():
                    greeting.set_result(outcome)

            self._core.connection_made()
            writer.write(self._core.hello(self.token, greeted, events=False))
            self._writer = writer
            self._reader_task = asyncio.get_running_loop().create_task(
                self._read(reader, writer, greeted)
            )
            try:
                outcome = await asyncio.wait_for(asyncio.shield(greeting), self.connect_timeout)
            except asyncio.TimeoutError:
                self._core.end_greeting()  # a broker before protocol 1.1: no answer to the probe
                outcome = None
            if outcome is not None:
                self._lose(writer)
                raise outcome
            logger.info("publisher connected to the broker at %s", self._peer)
            return writer

    def _lose(self, writer: asyncio.StreamWriter) -> None:
        if self._writer is writer:
            self._writer = None
            self._core.connection_lost(self._peer)
        writer.close()

    async def _read(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, greeted: Any
    ) -> None:
        receive = self._core.receive
        silence = self._silence_limit()
        try:
            while True:
                try:
                    data = await asyncio.wait_for(reader.read(_RECV_SIZE), silence)
                except asyncio.TimeoutError:
                    logger.warning(
                        "publisher connection to %s dropped: no data (not even a heartbeat) "
                        "for %.1f s, %d times heartbeat_interval",
                        self._peer,
                        silence,
                        MISSED_HEARTBEATS,
                    )
                    break
                if not data or self._writer is not writer:
                    break
                receive(data)
        except (OSError, ConnectionError, ProtocolError) as exc:
            logger.info("publisher connection to %s ended: %s", self._peer, exc)
        finally:
            greeted(
                PyStrandsConnectionError(
                    f"the broker at {self._peer} closed the connection before accepting the publisher"
                )
            )
            self._lose(writer)
