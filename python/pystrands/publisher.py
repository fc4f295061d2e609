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
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
from concurrent.futures import Future
from concurrent.futures import wait as wait_for_future
from typing import Any, Coroutine, List, Optional, Tuple

from .commands import Commands
from .context import PresenceEntry, PresenceStats
from .errors import ProtocolError, PyStrandsConnectionError, ReplyTimeoutError
from .protocol import (
    TOKEN_ENV,
    BackendProtocol,
    LineBuffer,
    Outgoing,
    Request,
    check_reply_timeout,
    encode_auth,
)

__all__ = ["Publisher", "AsyncPublisher"]

logger = logging.getLogger("pystrands.publisher")

_RECV_SIZE = 64 * 1024


class _PublisherSettings:
    """What both publishers are given: ``Publisher(host, port, token=None, *,
    reply_timeout=5.0, connect_timeout=5.0)``; ``token`` defaults to
    ``$PYSTRANDS_BACKEND_TOKEN``."""

    def __init__(
        self,
        host: str = "localhost",
        port: int = 8081,
        token: Optional[str] = None,
        *,
        reply_timeout: float = 5.0,
        connect_timeout: float = 5.0,
    ) -> None:
        self.host = host
        self.port = port
        #: Sent in the auth line when set; defaults to $PYSTRANDS_BACKEND_TOKEN.
        self.token = token if token is not None else (os.environ.get(TOKEN_ENV) or None)
        #: Seconds to wait for a reply (presence, presence_stats, ack=True).
        self.reply_timeout = check_reply_timeout(reply_timeout)
        #: Seconds to wait for the TCP connection to open.
        self.connect_timeout = connect_timeout
        # No handlers: a publisher takes replies only.
        self._core = BackendProtocol(None)
        self._setup()

    def _setup(self) -> None:
        """The subclass's own state, set up at the end of ``__init__``."""

    @property
    def _peer(self) -> str:
        return f"{self.host}:{self.port}"

    def _auth_line(self) -> bytes:
        return encode_auth(self.token, events=False)


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
                    logger.info("connection to the broker at %s lost (%s); reconnecting", self._peer, exc)

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
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.sendall(self._auth_line())
            sock.settimeout(None)
        except OSError as exc:
            sock.close()
            raise PyStrandsConnectionError(f"cannot connect to the broker at {self._peer}: {exc}") from exc
        self._sock = sock
        self._pid = os.getpid()
        threading.Thread(
            target=self._read, args=(sock,), name="pystrands-publisher", daemon=True
        ).start()
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

    def _read(self, sock: socket.socket) -> None:
        """The connection's reader thread: routes replies (and heartbeats)
        until the connection ends, then marks it lost."""
        lines = LineBuffer()
        receive = self._core.receive_lines
        try:
            while True:
                data = sock.recv(_RECV_SIZE)
                if not data:
                    break
                receive(lines.feed(data))
        except (OSError, ProtocolError) as exc:
            logger.info("publisher connection to %s ended: %s", self._peer, exc)
        finally:
            with self._lock:
                if self._sock is sock:
                    self._sock = None
                    self._core.connection_lost(self._peer)
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
            writer.write(self._auth_line())
            self._writer = writer
            self._reader_task = asyncio.get_running_loop().create_task(self._read(reader, writer))
            logger.info("publisher connected to the broker at %s", self._peer)
            return writer

    def _lose(self, writer: asyncio.StreamWriter) -> None:
        if self._writer is writer:
            self._writer = None
            self._core.connection_lost(self._peer)
        writer.close()

    async def _read(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        lines = LineBuffer()
        receive = self._core.receive_lines
        try:
            while True:
                data = await reader.read(_RECV_SIZE)
                if not data:
                    break
                receive(lines.feed(data))
        except (OSError, ConnectionError, ProtocolError) as exc:
            logger.info("publisher connection to %s ended: %s", self._peer, exc)
        finally:
            self._lose(writer)
