"""The threaded backend client: :class:`PyStrandsClient`.

Threading model
---------------
A connected client runs two daemon threads of its own:

- the **dispatcher** reads from the broker and runs every handler. Each
  ``recv`` brings a chunk of up to 256 KiB, handed whole to the client's
  :class:`~pystrands.protocol.BackendProtocol`, which routes every line:
  replies settle the requests waiting for them, client events queue up as
  handler calls, and ``connection_request`` events are answered
  (``on_connection_request``, response written at once) before any other
  handler runs. Then the queued handlers run one at a time, in the order the
  broker sent the events, and whatever they sent is written with one
  ``sendall``. One thread, no hand-off between threads on the hot path.
- the **watchdog** sleeps. When it sees that the same batch of handlers has
  been running for more than :attr:`PyStrandsClient.takeover_after` seconds
  (0.05 by default; a slow ``on_message``, say a 2 s database call), it takes
  over the reading: it answers connection requests itself, at once, and
  queues the other events for the dispatcher, which handles them in order
  when it is free again and then resumes reading itself. So a slow handler
  never makes the broker time a connection request out (``--connect-timeout``,
  5 s by default), and per-client order still holds end to end.

Only one thread reads at a time (a lock, the *read role*, hands the socket
over), and handlers other than ``on_connection_request`` only ever run on the
dispatcher, never two at once. ``on_connection_request`` may run on the
watchdog while another handler is running on the dispatcher: state the two
share needs a lock.

Requests and replies
--------------------
``presence``, ``presence_stats`` and any call with ``ack=True`` wait for the
broker's reply (matched by ``request_id``), up to ``reply_timeout`` seconds.
Called from a handler, the wait must not stop the reading the reply depends
on: the thread that waits reads itself meanwhile (the dispatcher takes the
read role if it is free; the watchdog already holds it), so the reply is
routed, connection requests are still answered, and events that arrive
meanwhile queue up behind the running handler, in order. Called from any
other thread, the call just waits while the dispatcher (or the watchdog)
reads.

Sending
-------
The send methods may be called from any thread. Lines sent from a handler on
the dispatcher are collected and written with one ``sendall`` after the
batch (or once 64 KiB are pending): many messages, one system call. A handler
that sends and then blocks for long can call :meth:`PyStrandsClient.flush`
first. Lines sent from any other thread are written before the send method
returns. A request made from a handler is flushed, with everything sent
before it, before the wait. Sending while not connected (before
``connect()``, after ``disconnect()``, or while reconnecting) raises
:class:`~pystrands.errors.NotConnectedError`.

Reconnecting
------------
With ``auto_reconnect`` (the default) a lost connection is retried after
``reconnect_delay`` seconds, growing by ``reconnect_backoff`` up to
``max_reconnect_delay``, each wait multiplied by a random factor in
[0.5, 1.0] (jitter, so a fleet of backends does not reconnect in lock step).
The broker queues client events while no backend is connected and delivers
them, in order, after the reconnect.
"""

from __future__ import annotations

import logging
import select
import socket
import threading
from concurrent.futures import Future
from concurrent.futures import wait as wait_for_future
from threading import get_ident
from time import monotonic
from typing import Any, List, Optional, Union

from . import protocol
from .commands import Commands
from .context import ConnectionRequestContext, Context, PresenceEntry, PresenceStats
from .errors import NotConnectedError, ProtocolError, PyStrandsConnectionError, ReplyTimeoutError
from .protocol import Outgoing, Request

__all__ = ["PyStrandsClient"]

logger = logging.getLogger("pystrands.client")

_RECV_SIZE = 256 * 1024
_FLUSH_BYTES = 64 * 1024
#: Events the watchdog may queue for a busy dispatcher before it stops reading
#: (TCP back-pressure on the broker, which queues or sheds load).
_MAX_BACKLOG = 100_000
#: Longest single wait of a thread that reads while it waits for a reply.
_READ_STEP = 0.05


class _Session:
    """Identity of one connect()..disconnect() span; its threads exit when
    the client's current session is no longer theirs."""

    __slots__ = ()


class PyStrandsClient(
    protocol.ConnectionSettings, Commands[Optional[int], List[PresenceEntry], PresenceStats]
):
    """A backend connected to the PyStrands broker's TCP port.

    Subclass it and override the ``on_*`` callbacks, then ``connect()`` and
    ``run_forever()`` (see the module documentation for which thread runs
    what). The send, room and presence methods
    (:class:`~pystrands.commands.Commands`) block until sent, and, for
    ``presence``, ``presence_stats`` and ``ack=True``, until the reply.
    """

    #: Seconds one batch of handlers may run before the watchdog thread takes
    #: over reading, so that connection requests are still answered. Keep it
    #: well below the broker's ``--connect-timeout``.
    takeover_after: float = 0.05

    def _setup(self) -> None:
        # Called at the end of ConnectionSettings.__init__, which takes the
        # arguments and sets host, port, ..., token and connected.
        # The dispatch core: routing, decisions, replies; fed under _read_role.
        self._core = protocol.BackendProtocol(self)
        self._sock: Optional[socket.socket] = None
        self._recv_buffer = bytearray(_RECV_SIZE)  # reused by whichever thread reads
        self._link_down: Optional[socket.socket] = None  # a waiting reader saw EOF/error on it
        self._state_lock = threading.RLock()  # connect/disconnect/reconnect transitions
        self._send_lock = threading.Lock()  # one writer on the socket at a time
        self._read_role = threading.Lock()  # held by the thread that may recv
        self._reader: Optional[int] = None  # ident of the thread holding _read_role
        self._closing = threading.Event()  # disconnect() was called
        self._done = threading.Event()  # run_forever() may return
        self._lost = False  # connection lost and not reconnecting
        self._session: Optional[_Session] = None
        self._dispatcher: Optional[threading.Thread] = None
        self._watchdog: Optional[threading.Thread] = None
        self._dispatch_ident: Optional[int] = None
        self._in_dispatch = False
        self._dispatch_seq = 0
        # Signals events queued (in self._core.events) by the watchdog, and
        # its hand-back of the socket.
        self._cv = threading.Condition(threading.Lock())
        self._watchdog_reading = False
        self._out: List[bytes] = []  # dispatcher-only write buffer
        self._out_bytes = 0

    @property
    def _peer(self) -> str:
        return f"{self.host}:{self.port}"

    # ------------------------------------------------------------------ connection

    def connect(self) -> bool:
        """Open the connection to the broker; True on success, False otherwise.

        Calling it while connected does nothing and returns True.
        """
        with self._state_lock:
            if self.connected:
                return True
            self._closing.clear()
            self._done.clear()
            self._lost = False
            try:
                sock = self._open_socket()
            except OSError as exc:
                logger.warning("cannot connect to the broker at %s:%s: %s", self.host, self.port, exc)
                return False
            self._attach(sock)
            self._start_threads()
        logger.info("connected to the broker at %s:%s", self.host, self.port)
        return True

    def disconnect(self, timeout: float = 5.0) -> None:
        """Close the connection and stop reconnecting.

        Stops reading, lets the handler that is running finish (waiting up to
        ``timeout`` seconds), writes what handlers sent, then closes the socket.
        Events already received but not yet handled are dropped. Safe to call
        from any thread, including from inside a handler.
        """
        me = get_ident()
        self._closing.set()
        with self._state_lock:
            sock = self._sock
            dispatcher, watchdog = self._dispatcher, self._watchdog
            self._session = None  # threads stop dispatching and reading
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RD)  # wakes a recv() or select()
            except OSError:
                pass
        with self._cv:
            self._cv.notify_all()
        if dispatcher is not None:
            if dispatcher.ident == me:
                self.flush()  # inside a handler: write what it sent so far
            else:
                dispatcher.join(timeout)
                if dispatcher.is_alive():
                    logger.warning(
                        "disconnect: a handler is still running after %.1f s; closing anyway",
                        timeout,
                    )
        if watchdog is not None and watchdog.ident != me:
            watchdog.join(timeout)
        with self._state_lock:
            self._detach()
            if self._session is None:
                self._core.events.clear()
            self._done.set()
        logger.info("disconnected from the broker")

    def run_forever(self) -> None:
        """Connect if needed and block until :meth:`disconnect` (or Ctrl-C).

        Reuses the connection opened by an earlier ``connect()``. If the first
        connection fails it keeps retrying when ``auto_reconnect`` is on, and
        raises :class:`~pystrands.errors.PyStrandsConnectionError` otherwise;
        the same when an established connection is lost without
        ``auto_reconnect``.
        """
        with self._state_lock:
            if not self.connected and not self._reconnecting():
                if not self.connect():
                    if not self.auto_reconnect:
                        raise PyStrandsConnectionError(
                            f"cannot connect to the broker at {self.host}:{self.port}"
                        )
                    self._closing.clear()
                    self._done.clear()
                    self._start_threads()  # the dispatcher's loop reconnects
        try:
            while not self._done.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
        lost = self._lost
        self.disconnect()
        if lost:
            raise PyStrandsConnectionError(
                f"connection to the broker at {self.host}:{self.port} lost"
            )

    def _reconnecting(self) -> bool:
        dispatcher = self._dispatcher
        return dispatcher is not None and dispatcher.is_alive() and not self._closing.is_set()

    def _open_socket(self) -> socket.socket:
        sock = socket.create_connection((self.host, self.port), timeout=10.0)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.token is not None:
                sock.sendall(protocol.encode_auth(self.token))
            sock.settimeout(None)
        except BaseException:
            sock.close()
            raise
        return sock

    def _attach(self, sock: socket.socket) -> None:
        with self._read_role:  # nobody is reading the old socket's buffer now
            self._core.connection_made()
            with self._send_lock:
                self._sock = sock
            self.connected = True

    def _detach(self, only: Optional[socket.socket] = None) -> bool:
        """Forget the current socket (if it is ``only``, when given) and close it."""
        with self._send_lock:
            sock = self._sock
            if sock is None or (only is not None and sock is not only):
                return False
            self._sock = None
            self.connected = False
        try:
            sock.close()
        except OSError:
            pass
        self._core.connection_lost(self._peer)
        return True

    def _start_threads(self) -> None:
        if self._session is None:
            self._session = session = _Session()
            self._core.events.clear()
            self._dispatcher = threading.Thread(
                target=self._dispatcher_main, args=(session,), name="pystrands-dispatch", daemon=True
            )
            self._watchdog = threading.Thread(
                target=self._watchdog_main, args=(session,), name="pystrands-watchdog", daemon=True
            )
            self._dispatcher.start()
            self._watchdog.start()

    # ------------------------------------------------------------------ sending

    def _issue(self, outgoing: Outgoing) -> Any:
        if type(outgoing) is bytes:
            self._send(outgoing)
            return None
        return self._ask(outgoing)  # type: ignore[arg-type]

    def _ask(self, request: Request) -> Any:
        """Send a request and wait for its reply (reading meanwhile when this
        thread is the one that reads: see the module documentation)."""
        waiter: "Future[Any]" = Future()
        core = self._core
        core.expect(request, waiter)
        try:
            self._send(request.line)
            self.flush()  # from a handler: out before the wait
        except BaseException:
            core.forget(request)
            raise
        timeout = self.reply_timeout
        deadline = monotonic() + timeout
        me = get_ident()
        while not waiter.done():
            remaining = deadline - monotonic()
            if remaining <= 0:
                break
            step = min(remaining, _READ_STEP)
            if me == self._reader:
                # This thread holds the read role (the watchdog, or the
                # dispatcher answering a connection request): read, or nobody will.
                self._read_while_waiting(waiter, step)
            elif me == self._dispatch_ident and self._read_role.acquire(False):
                self._reader = me
                try:
                    self._read_while_waiting(waiter, step)
                finally:
                    self._reader = None
                    self._read_role.release()
            else:
                wait_for_future((waiter,), step if me == self._dispatch_ident else remaining)
        if not waiter.done():
            core.forget(request)
            if not waiter.done():  # the reply may have come meanwhile
                raise ReplyTimeoutError(request.action, timeout, self._peer)
        return waiter.result()

    def _read_while_waiting(self, waiter: "Future[Any]", wait: float) -> None:
        sock = self._sock
        if sock is None or self._link_down is sock:
            wait_for_future((waiter,), wait)  # failed by the detach, or timed out
        else:
            self._read_chunk(sock, wait)

    def flush(self) -> None:
        """Write what handlers sent so far in this batch.

        Only needed inside a handler that sends and then blocks for long; the
        dispatcher flushes by itself after every batch.
        """
        if get_ident() == self._dispatch_ident and self._out:
            self._flush_out()

    def _send(self, data: bytes) -> None:
        if not self.connected:
            raise NotConnectedError(f"not connected to the broker at {self.host}:{self.port}")
        if get_ident() == self._dispatch_ident:
            self._out.append(data)
            self._out_bytes += len(data)
            if self._out_bytes >= _FLUSH_BYTES:
                self._flush_out()
            return
        with self._send_lock:
            sock = self._sock
            if sock is None:
                raise NotConnectedError(f"not connected to the broker at {self.host}:{self.port}")
            try:
                sock.sendall(data)
            except OSError as exc:
                self._write_failed(sock, exc)
                raise PyStrandsConnectionError(f"connection to the broker lost: {exc}") from exc

    def _flush_out(self) -> None:
        """Dispatcher only: write its buffer with one sendall."""
        out = self._out
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        self._out_bytes = 0
        with self._send_lock:
            sock = self._sock
            if sock is None:
                logger.warning("connection lost: %d bytes sent by handlers were not delivered", len(data))
                return
            try:
                sock.sendall(data)
            except OSError as exc:
                self._write_failed(sock, exc)
                logger.warning("connection lost: %d bytes sent by handlers were not delivered", len(data))

    def _send_answers(self, answers: List[bytes]) -> None:
        """Write the responses to connection requests at once."""
        for answer in answers:
            try:
                self._send(answer)
            except PyStrandsConnectionError as exc:
                logger.warning("could not answer a connection request: %s", exc)
        if self._out and get_ident() == self._dispatch_ident:
            self._flush_out()

    def _write_failed(self, sock: socket.socket, exc: OSError) -> None:
        """Called with _send_lock held: make the reading thread notice."""
        logger.warning("write to the broker failed: %s", exc)
        if self._sock is sock:
            self.connected = False
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    # ------------------------------------------------------------------ dispatcher thread

    def _dispatcher_main(self, session: _Session) -> None:
        self._dispatch_ident = get_ident()
        try:
            while self._session is session:
                sock = self._sock
                if sock is not None:
                    try:
                        self._serve(sock, session)
                    except Exception:  # a bug must not end the reconnect loop
                        logger.exception("dispatcher stopped by an unexpected error")
                    if self._out and self._dispatch_ident == get_ident():
                        self._flush_out()
                    with self._state_lock:
                        lost = self._detach(only=sock) if self._session is session else False
                    if lost:
                        logger.warning("connection to the broker at %s:%s lost", self.host, self.port)
                with self._state_lock:
                    if self._session is not session:
                        return
                    if self._sock is not None:
                        continue  # connect() was called meanwhile
                    if not self.auto_reconnect:
                        self._lost = True
                        self._session = None
                        self._done.set()
                        return
                self._reconnect_with_backoff(session)
        finally:
            if self._dispatch_ident == get_ident():
                self._dispatch_ident = None

    def _reconnect_with_backoff(self, session: _Session) -> bool:
        waits = self._reconnect_waits()
        while self._session is session:
            if self._closing.wait(next(waits)):
                return False
            if self._sock is not None:
                return True  # connect() was called meanwhile
            try:
                sock = self._open_socket()
            except OSError as exc:
                logger.info("reconnect to %s:%s failed: %s", self.host, self.port, exc)
            else:
                with self._state_lock:
                    if self._session is not session or self._sock is not None:
                        sock.close()
                        return self._session is session
                    self._attach(sock)
                logger.info("reconnected to the broker at %s:%s", self.host, self.port)
                return True
        return False

    def _serve(self, sock: socket.socket, session: _Session) -> None:
        """Read and dispatch until the connection ends or the session stops.

        This loop is the hot path of the whole package; it keeps what it uses
        in locals for the life of the connection.
        """
        recv_into = sock.recv_into
        buffer = self._recv_buffer
        read_role = self._read_role
        receive = self._core.receive_from
        events = self._core.events
        run_events = self._run_events
        out = self._out
        flush = self._flush_out
        me = get_ident()
        while True:
            if events:
                run_events(session)
                if self._session is not session:  # disconnect() was called
                    return
                if out:
                    flush()
                continue
            if not read_role.acquire(False):
                # The watchdog is reading for us (we were busy): take its events.
                if not self._wait_for_watchdog(session):
                    return
                continue
            self._reader = me
            try:
                if events:
                    continue  # the watchdog handed the socket back with events queued
                if self._link_down is sock or self._session is not session:
                    return
                try:
                    size = recv_into(buffer)
                except OSError:
                    return
                if not size:
                    return
                try:
                    # Routes the chunk, answering its connection requests
                    # before any other handler runs (a slow one must not hold
                    # an answer back).
                    answers = receive(buffer, size)
                except ProtocolError as exc:
                    logger.error("%s; dropping the connection", exc)
                    return
            finally:
                self._reader = None
                read_role.release()
            if answers:
                self._send_answers(answers)

    def _run_events(self, session: _Session) -> None:
        """Run the queued handler calls, in order, until none is left (the
        watchdog and waits for replies may add more meanwhile)."""
        popleft = self._core.events.popleft
        self._dispatch_seq += 1
        self._in_dispatch = True
        try:
            while self._session is session:
                try:
                    handler, args = popleft()
                except IndexError:
                    return
                try:
                    handler(*args)
                except Exception:
                    logger.exception("%s raised", getattr(handler, "__name__", handler))
        finally:
            self._in_dispatch = False

    def _wait_for_watchdog(self, session: _Session) -> bool:
        cv = self._cv
        events = self._core.events
        with cv:
            while not events and self._watchdog_reading and self._session is session:
                cv.wait(0.1)
        return self._session is session

    def _read_chunk(self, sock: socket.socket, wait: float) -> bool:
        """Holding the read role: wait up to ``wait`` seconds for data, then
        read and route one chunk (answers written at once, events queued).
        False when the link is down."""
        try:
            ready, _, _ = select.select([sock], [], [], wait)
        except (OSError, ValueError):
            self._link_lost(sock)
            return False
        if not ready:
            return True
        try:
            size = sock.recv_into(self._recv_buffer)
        except OSError:
            size = 0
        if not size:
            self._link_lost(sock)
            return False
        try:
            answers = self._core.receive_from(self._recv_buffer, size)
        except ProtocolError as exc:
            logger.error("%s; dropping the connection", exc)
            self._link_lost(sock)
            return False
        if answers:
            self._send_answers(answers)
        if self._core.events:
            with self._cv:
                self._cv.notify_all()
        return True

    def _link_lost(self, sock: socket.socket) -> None:
        """A thread other than the dispatcher's read loop saw the link end:
        the dispatcher detaches when it next looks; requests waiting for a
        reply fail now."""
        self._link_down = sock
        self._core.connection_lost(self._peer)

    # ------------------------------------------------------------------ watchdog thread

    def _watchdog_main(self, session: _Session) -> None:
        last_seq = -1
        while self._session is session:
            if self._closing.wait(self.takeover_after):
                return
            seq = self._dispatch_seq
            if self._in_dispatch and seq == last_seq:
                sock = self._sock
                if sock is not None:
                    # Announce before taking the socket, so that a dispatcher
                    # that finds it taken waits instead of spinning.
                    with self._cv:
                        self._watchdog_reading = True
                    if self._read_role.acquire(False):
                        self._read_for_dispatcher(sock, session, seq)
                    else:
                        with self._cv:
                            self._watchdog_reading = False
                            self._cv.notify_all()
                seq = self._dispatch_seq
            last_seq = seq

    def _read_for_dispatcher(self, sock: socket.socket, session: _Session, seq: int) -> None:
        """Holding _read_role: read while the dispatcher is busy, answer
        connection requests, queue the rest; hand the socket back when the
        dispatcher has caught up."""
        cv = self._cv
        events = self._core.events
        self._reader = get_ident()
        try:
            if not (self._in_dispatch and self._dispatch_seq == seq and self._sock is sock):
                return  # it finished meanwhile
            while self._session is session:
                if not self._read_chunk(sock, self.takeover_after):
                    return
                if len(events) > _MAX_BACKLOG:
                    with cv:
                        while len(events) > _MAX_BACKLOG and self._session is session:
                            cv.wait(0.1)
                if not self._in_dispatch and not events:
                    return  # the dispatcher has caught up: it reads again
        finally:
            self._reader = None
            self._read_role.release()
            with cv:
                self._watchdog_reading = False
                cv.notify_all()

    # ------------------------------------------------------------------ callbacks

    def on_connection_request(self, request: ConnectionRequestContext) -> Optional[bool]:
        """A WebSocket client asks to connect.

        Change ``request.context`` (client_id, room_id, metadata) to assign the
        client, and decide by returning True/False or by setting
        ``request.accepted`` (a returned bool wins; ``None`` means
        ``request.accepted``, which starts True). An exception rejects the
        connection and is logged with its traceback. Runs on the dispatcher,
        or on the watchdog while the dispatcher is busy with a slow handler.
        """
        return True

    def on_new_connection(self, context: Context) -> None:
        """A client was accepted and is connected (pystrands 1.0.0's name).

        The default calls :meth:`on_connect`, so overriding either works.
        """
        self.on_connect(context)

    def on_connect(self, context: Context) -> None:
        """A client was accepted and is connected (the README's name)."""

    def on_message(self, message: Union[str, bytes], context: Context) -> None:
        """A client sent ``message`` (``bytes`` for a binary message)."""

    def on_disconnect(self, context: Context) -> None:
        """A client's WebSocket closed."""

    def on_error(self, error: str, context: Context) -> None:
        """The broker reported an error. ``context`` has empty fields when the
        error concerns no particular client (e.g. a line it could not use)."""
        logger.warning("broker reported an error: %s", error)
