"""The threaded backend client: :class:`PyStrandsClient`.

Threading model
---------------
A connected client runs two daemon threads of its own, plus workers while
handlers are slow:

- the **dispatcher** reads from the broker and runs the handlers. Each
  ``recv`` brings a chunk of up to 256 KiB, handed whole to the client's
  :class:`~pystrands.protocol.BackendProtocol`, which routes every line:
  replies settle the requests waiting for them, client events queue up as
  handler calls, and ``connection_request`` events are answered
  (``on_connection_request``, response written at once) before any other
  handler runs. Then the queued handlers run one at a time, in the order the
  broker sent the events, and whatever they sent is written with one
  ``sendall``. One thread, no hand-off between threads on the hot path.
- the **watchdog** wakes every :attr:`PyStrandsClient.takeover_after` seconds
  (0.05 by default). When the dispatcher has been inside the same handler
  for that long (a database call, say), it

  1. writes what that handler sent so far (sends go out at once, even from a
     handler that then blocks);
  2. takes over the reading: it answers connection requests itself, at once,
     and queues the other events, so a slow handler never makes the broker
     time a connection request out (``--connect-timeout``);
  3. hands the queued events of *other* connections to **worker threads**
     (at most ``concurrency - 1`` of them, started when needed and ended
     when they find nothing to do), so one user's slow handler delays
     nobody else. Events of the slow handler's own connection wait behind
     it: the handlers of one connection always run one at a time, in order
     (:class:`~pystrands.protocol.Lanes`, keyed by ``connection_id``).

  It also watches the link: no data at all from the broker for three
  ``heartbeat_interval`` periods means the broker stopped answering; the
  client drops the connection, logs why, and reconnects.

Only one thread reads at a time (a lock, the *read role*, hands the socket
over). ``on_connection_request`` runs on the thread that reads, possibly
while other handlers run: state they share needs a lock, as state shared
between the handlers of different connections does when ``concurrency`` is
above 1.

Requests and replies
--------------------
``presence``, ``presence_stats`` and any call with ``ack=True`` wait for the
broker's reply (matched by ``request_id``), up to ``reply_timeout`` seconds.
Called from a handler on the dispatcher, the wait must not stop the reading
the reply depends on: the dispatcher reads itself meanwhile, so the reply is
routed, connection requests are still answered, and events that arrive
meanwhile queue up (and go to workers if the wait is long). Called from any
other thread (a worker, your own), the call just waits while the dispatcher
(or the watchdog) reads.

Sending
-------
The send methods may be called from any thread. Lines sent from a handler on
the dispatcher are collected and written with one ``sendall`` after the
batch (or once 64 KiB are pending, or when the handler has run for
``takeover_after``): many messages, one system call. Lines sent from any
other thread (workers included) are written before the send method returns.
A request is flushed, with everything sent before it, before the wait.
Sending while not connected raises :class:`~pystrands.errors.NotConnectedError`;
a line longer than ``max_line_size`` raises
:class:`~pystrands.errors.MessageTooLargeError`.

Stopping
--------
:meth:`PyStrandsClient.disconnect` (and SIGTERM or Ctrl-C during
:meth:`PyStrandsClient.run_forever`) stops taking events, lets the running
handlers and the events already read finish (up to ``shutdown_timeout``),
writes what they sent, then closes; events it could not handle are counted
and logged. See the package README, "Going to production".

Reconnecting
------------
With ``auto_reconnect`` (the default) a lost connection is retried after
``reconnect_delay`` seconds, growing by ``reconnect_backoff`` up to
``max_reconnect_delay``, each wait multiplied by a random factor in
[0.5, 1.0] (jitter, so a fleet of backends does not reconnect in lock step).
The schedule starts over only once the broker has accepted the backend (its
first line, see :meth:`~pystrands.protocol.BackendProtocol.hello`), not on
every TCP connect. A refused token (:class:`~pystrands.errors.AuthenticationError`)
or a peer that is not a broker (:class:`~pystrands.errors.NotABrokerError`)
ends the retrying: ``connect()`` and ``run_forever()`` raise it. The broker
queues client events while no backend is connected and delivers them, in
order, after the reconnect.
"""

from __future__ import annotations

import inspect
import logging
import select
import signal
import socket
import threading
from concurrent.futures import Future
from concurrent.futures import wait as wait_for_future
from threading import get_ident
from time import monotonic
from types import FrameType
from typing import Any, Callable, Dict, Iterator, List, Optional, Union

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

__all__ = ["PyStrandsClient"]

logger = logging.getLogger("pystrands.client")

_RECV_SIZE = 256 * 1024
_FLUSH_BYTES = 64 * 1024
#: Events the watchdog may queue for busy handlers before it stops reading
#: (TCP back-pressure on the broker, which queues or sheds load).
_MAX_BACKLOG = 100_000
#: Longest single wait of a thread that reads while it waits for a reply.
_READ_STEP = 0.05
#: Most bytes read (and only counted) from the socket when it is closed.
_UNREAD_LIMIT = 64 * 1024 * 1024
#: Errors after which retrying cannot help.
_FATAL = (AuthenticationError, NotABrokerError)
#: The callbacks, which must be plain functions in this client.
_HANDLERS = (
    "on_connection_request",
    "on_new_connection",
    "on_connect",
    "on_message",
    "on_disconnect",
    "on_error",
)


class _Session:
    """One connect()..disconnect() span and its dispatch state; its threads
    exit when the client's current session is no longer theirs."""

    __slots__ = ("lanes", "lock", "multi", "workers", "stuck", "ended")

    def __init__(self) -> None:
        #: Per-connection order once handlers run on several threads.
        self.lanes = protocol.Lanes()
        #: Guards lanes, multi and workers.
        self.lock = threading.Lock()
        #: True while handlers may run on several threads (workers); every
        #: thread that runs handlers then claims them through ``lanes``.
        self.multi = False
        #: Worker threads alive.
        self.workers = 0
        #: The call the watchdog saw the dispatcher stuck in, or None.
        self.stuck: Optional[Call] = None
        #: Set when the session ends.
        self.ended = threading.Event()


class _StopSignal(BaseException):
    """Raised in the main thread by the first SIGTERM/SIGINT during run_forever()."""


class PyStrandsClient(
    protocol.ConnectionSettings, Commands[Optional[int], List[PresenceEntry], PresenceStats]
):
    """A backend connected to the PyStrands broker's TCP port.

    Subclass it and override the ``on_*`` callbacks (plain functions: this
    client runs them on threads; for ``async def`` callbacks use
    :class:`~pystrands.AsyncPyStrandsClient`), then ``connect()`` and
    ``run_forever()``, or ``with MyClient(...) as client:``. The send, room and
    presence methods (:class:`~pystrands.commands.Commands`) block until
    sent, and, for ``presence``, ``presence_stats`` and ``ack=True``, until
    the reply. See the module documentation for which thread runs what.
    """

    __slots__ = (
        "_core",
        "_sock",
        "_recv_buffer",
        "_link_down",
        "_state_lock",
        "_send_lock",
        "_read_role",
        "_reader",
        "_closing",
        "_done",
        "_hurry",
        "_lost",
        "_fatal",
        "_session",
        "_dispatcher",
        "_watchdog",
        "_dispatch_ident",
        "_in_dispatch",
        "_dispatch_seq",
        "_current",
        "_cv",
        "_watchdog_reading",
        "_out",
        "_out_bytes",
        "_waits",
        "_loss_reason",
        "_warned_results",
        "_signalled",
        "_greeting",
    )

    #: ``concurrency`` when not given: at most 32 handlers (of different
    #: connections) run at once, on the dispatcher and up to 31 workers.
    default_concurrency = 32

    #: Seconds one handler may run before the watchdog thread writes what it
    #: sent, takes over reading (so connection requests are still answered)
    #: and hands other connections' events to workers. Keep it well below
    #: the broker's ``--connect-timeout``.
    takeover_after: float = 0.05

    def _setup(self) -> None:
        # Called at the end of ConnectionSettings.__init__, which takes the
        # arguments and sets host, port, ..., token and _connected.
        for name in _HANDLERS:
            if inspect.iscoroutinefunction(getattr(self, name, None)):
                raise TypeError(
                    f"{type(self).__name__}.{name} is a coroutine function (async def), but "
                    "PyStrandsClient calls handlers as plain functions and cannot await them: "
                    "make it a plain def, or subclass AsyncPyStrandsClient"
                )
        # The dispatch core: routing, decisions, replies; fed under _read_role.
        self._core = protocol.BackendProtocol(self)
        self._core.peer = self.address
        self._sock: Optional[socket.socket] = None
        self._recv_buffer = bytearray(_RECV_SIZE)  # reused by whichever thread reads
        self._link_down: Optional[socket.socket] = None  # a waiting reader saw EOF/error on it
        self._state_lock = threading.RLock()  # connect/disconnect/reconnect transitions
        self._send_lock = threading.Lock()  # one writer on the socket at a time
        self._read_role = threading.Lock()  # held by the thread that may recv
        self._reader: Optional[int] = None  # ident of the thread holding _read_role
        self._closing = threading.Event()  # disconnect() was called
        self._done = threading.Event()  # run_forever() may return
        self._hurry = threading.Event()  # a second signal: stop waiting for handlers
        self._lost = False  # connection lost and not reconnecting
        self._fatal: Optional[BaseException] = None  # why retrying stopped
        self._session: Optional[_Session] = None
        self._dispatcher: Optional[threading.Thread] = None
        self._watchdog: Optional[threading.Thread] = None
        self._dispatch_ident: Optional[int] = None
        self._in_dispatch = False
        self._dispatch_seq = 0
        self._current: Optional[Call] = None  # the call the dispatcher is running
        # Signals events queued (in self._core.events) by the watchdog, and
        # its hand-back of the socket.
        self._cv = threading.Condition(threading.Lock())
        self._watchdog_reading = False
        self._out: List[bytes] = []  # dispatcher-only write buffer
        self._out_bytes = 0
        self._waits: Optional[Iterator[float]] = None  # the reconnect schedule in use
        self._loss_reason = ""  # why the watchdog dropped the link
        self._warned_results: List[Any] = []
        self._signalled = False
        self._greeting: "Optional[Future[Optional[BaseException]]]" = None  # connect() waits on it

    @property
    def _peer(self) -> str:
        return self.address

    # ------------------------------------------------------------------ connection

    def connect(self) -> bool:
        """Open the connection to the broker and wait until it accepts the
        backend; True on success, False when the broker cannot be reached
        (or refused the backend for a reason worth retrying).

        Raises :class:`~pystrands.errors.AuthenticationError` when the broker
        refuses the token (wrong, or missing while it requires one), and
        :class:`~pystrands.errors.NotABrokerError` when what answers is not a
        broker's backend port (e.g. its WebSocket port). Calling it while
        connected does nothing and returns True.
        """
        with self._state_lock:
            if self._connected:
                return True
            self._closing.clear()
            self._done.clear()
            self._hurry.clear()
            self._lost = False
            self._fatal = None
            try:
                sock = self._open_socket()
            except OSError as exc:
                logger.warning("cannot connect to the broker at %s: %s", self.address, exc)
                return False
            greeting: "Future[Optional[BaseException]]" = Future()
            self._greeting = greeting
            self._attach(sock, greeting)
            self._start_threads()
        wait_for_future((greeting,), self.connect_timeout)
        if not greeting.done():
            self._core.end_greeting()
            logger.info(
                "the broker at %s did not answer within %.1f s (a broker before protocol 1.1 "
                "ignores the probe); going on with the open connection",
                self.address,
                self.connect_timeout,
            )
        outcome = greeting.result() if greeting.done() else None
        if outcome is not None:
            self._abandon()
            if isinstance(outcome, _FATAL):
                raise outcome
            logger.warning("cannot connect to the broker at %s: %s", self.address, outcome)
            return False
        if not self._connected:
            logger.warning("cannot connect to the broker at %s: it closed the connection", self.address)
            self._abandon()
            return False
        logger.info("connected to the broker at %s", self.address)
        return True

    def _abandon(self) -> None:
        """End a session that never got going (the broker refused it)."""
        self._closing.set()
        with self._state_lock:
            session, self._session = self._session, None
            if session is not None:
                session.ended.set()
            sock = self._sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        dispatcher = self._dispatcher
        if dispatcher is not None and dispatcher.ident != get_ident():
            dispatcher.join(self.connect_timeout)
        with self._state_lock:
            self._detach()
            self._core.events.clear()
            self._done.set()

    def disconnect(self, timeout: Optional[float] = None) -> None:
        """Stop gracefully and close the connection; no reconnecting.

        From outside the handlers (your thread, run_forever's signal
        handling): stops taking events, lets the handlers that are running
        and the events already read finish (waiting up to ``timeout``
        seconds, default ``shutdown_timeout``), writes what they sent, then
        closes. Events it could not handle (still queued then, or arriving
        after the stop began, or left unread in the socket) are counted and
        logged at WARNING.

        From inside a handler it cannot wait for itself: it writes what was
        sent so far and closes at once; events not yet handled are counted
        and logged. Safe to call from any thread, more than once.
        """
        if timeout is None:
            timeout = self.shutdown_timeout
        me = get_ident()
        inside = me == self._dispatch_ident or me == self._reader or self._is_worker()
        deadline = monotonic() + max(0.0, timeout)
        self._closing.set()
        with self._state_lock:
            session = self._session
            sock = self._sock
            dispatcher, watchdog = self._dispatcher, self._watchdog
        if session is None and sock is None:
            self._done.set()
            return
        if sock is not None:
            self._core.stop_events()  # replies still arrive; events are counted
        running = 0
        if session is not None and not inside and sock is not None:
            running = self._drain(session, deadline)
        with self._state_lock:
            if self._session is session and session is not None:
                self._session = None
                session.ended.set()
            sock = self._sock
        with self._cv:
            self._cv.notify_all()
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RD)  # wakes a recv() or select(); unread data stays
            except OSError:
                pass
        if dispatcher is not None and dispatcher.ident != me:
            dispatcher.join(max(0.05, min(1.0, deadline - monotonic())))
        if watchdog is not None and watchdog.ident != me:
            watchdog.join(1.0)
        queued = len(self._core.events)
        self._core.events.clear()
        if session is not None:
            with session.lock:
                queued += session.lanes.clear()
        self._flush_out()
        dropped = self._core.dropped
        unread = self._count_unread(sock) if sock is not None else 0
        with self._state_lock:
            self._detach()
            self._done.set()
        self._report_stop(queued, dropped, unread, running, timeout)
        logger.info("disconnected from the broker at %s", self.address)

    def _is_worker(self) -> bool:
        thread = threading.current_thread()
        return getattr(thread, "_pystrands_client", None) is self

    def _drain(self, session: _Session, deadline: float) -> int:
        """Wait until no handler runs and no event is queued, or the
        deadline (or a second signal); return how many handlers still run."""
        events = self._core.events
        while True:
            with session.lock:
                quiet = (
                    not events
                    and not self._in_dispatch
                    and not session.lanes.busy
                    and session.workers == 0
                )
                running = len(session.lanes.busy) + (
                    1 if self._in_dispatch and not session.multi else 0
                )
            if quiet or not self._connected:
                return 0
            if monotonic() >= deadline or self._hurry.is_set():
                return running
            self._hurry.wait(min(0.01, max(0.0, deadline - monotonic())))

    def _report_stop(self, queued: int, dropped: int, unread: int, running: int, timeout: float) -> None:
        if running:
            logger.warning(
                "broker at %s: %d handler(s) still running after %.1f s (shutdown_timeout); "
                "closing anyway: what they send from now on is not delivered",
                self.address,
                running,
                timeout,
            )
        protocol.log_unhandled(logger, self.address, queued, dropped, unread)

    def _count_unread(self, sock: socket.socket) -> int:
        """Read (without handling) what the broker wrote that was never read,
        and count its client events, plus those of a partial line held."""
        data = []
        total = 0
        try:
            sock.setblocking(False)
            while total < _UNREAD_LIMIT:
                chunk = sock.recv(_RECV_SIZE)
                if not chunk:
                    break
                data.append(chunk)
                total += len(chunk)
        except OSError:
            pass
        return self._core.unhandled_in(b"".join(data))

    def run_forever(self, handle_signals: bool = True) -> None:
        """Connect if needed and block until :meth:`disconnect`, SIGTERM or
        Ctrl-C; then stop gracefully (see :meth:`disconnect`) and return.

        With ``handle_signals`` (the default; only in the main thread)
        SIGTERM and SIGINT start the graceful stop; a second one stops
        waiting for handlers. The previous signal handlers are restored on
        return. Reuses the connection opened by an earlier ``connect()``. If
        the first connection fails it keeps retrying when ``auto_reconnect``
        is on, and raises :class:`~pystrands.errors.PyStrandsConnectionError`
        otherwise; the same when an established connection is lost without
        ``auto_reconnect``. A refused token or a peer that is not a broker
        raises :class:`~pystrands.errors.AuthenticationError` /
        :class:`~pystrands.errors.NotABrokerError`, whether at the first
        connect or at a reconnect.
        """
        if not self._connected and not self._reconnecting():
            if not self.connect():
                if not self.auto_reconnect:
                    raise PyStrandsConnectionError(f"cannot connect to the broker at {self.address}")
                with self._state_lock:
                    self._closing.clear()
                    self._done.clear()
                    self._start_threads()  # the dispatcher's loop reconnects
        previous = self._install_signal_handlers() if handle_signals else {}
        try:
            try:
                while not self._done.wait(0.5):
                    pass
            except (KeyboardInterrupt, _StopSignal) as exc:
                what = "Ctrl-C" if isinstance(exc, KeyboardInterrupt) else "a signal"
                logger.info(
                    "broker at %s: %s: stopping (waiting up to %.1f s for running handlers)",
                    self.address,
                    what,
                    self.shutdown_timeout,
                )
            self.disconnect()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            self._signalled = False
        if self._fatal is not None:
            raise self._fatal
        if self._lost:
            raise PyStrandsConnectionError(f"connection to the broker at {self.address} lost")

    def _install_signal_handlers(self) -> Dict[int, Any]:
        if threading.current_thread() is not threading.main_thread():
            return {}
        self._signalled = False

        def on_signal(signum: int, frame: Optional[FrameType]) -> None:
            if self._signalled:
                self._hurry.set()  # a second signal: stop waiting for handlers
                return
            self._signalled = True
            raise _StopSignal(signum)

        previous: Dict[int, Any] = {}
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.getsignal(signum)
            signal.signal(signum, on_signal)
        return previous

    def __enter__(self) -> "PyStrandsClient":
        """``with Client(...) as client:`` connects (raising
        :class:`~pystrands.errors.PyStrandsConnectionError` when it cannot)
        and disconnects at the end of the block."""
        if not self.connect():
            raise PyStrandsConnectionError(f"cannot connect to the broker at {self.address}")
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.disconnect()

    def _reconnecting(self) -> bool:
        dispatcher = self._dispatcher
        return dispatcher is not None and dispatcher.is_alive() and not self._closing.is_set()

    def _open_socket(self) -> socket.socket:
        sock = socket.create_connection((self.host, self.port), timeout=self.connect_timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(None)
        except BaseException:
            sock.close()
            raise
        return sock

    def _attach(
        self, sock: socket.socket, greeting: "Optional[Future[Optional[BaseException]]]" = None
    ) -> None:
        """Make ``sock`` the connection and say hello (see
        :meth:`~pystrands.protocol.BackendProtocol.hello`); ``greeting``
        receives the broker's verdict (a reconnect passes None)."""
        core = self._core
        with self._read_role:  # nobody is reading the old socket's buffer now
            core.connection_made()
            core.peer = self.address
            core.max_line_size = self.max_line_size
            hello = core.hello(self.token, lambda outcome: self._greeted(sock, greeting, outcome))
            with self._send_lock:
                self._sock = sock
            self._connected = True
        try:
            sock.sendall(hello)
        except OSError as exc:
            logger.warning("cannot write to the broker at %s: %s", self.address, exc)
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _greeted(
        self,
        sock: socket.socket,
        greeting: "Optional[Future[Optional[BaseException]]]",
        outcome: Optional[BaseException],
    ) -> None:
        """The broker's verdict on a new connection (on the reading thread)."""
        if outcome is None:
            if greeting is None:
                logger.info("reconnected to the broker at %s", self.address)
            self._waits = None  # accepted: the next loss starts the schedule over
        else:
            if isinstance(outcome, _FATAL):
                self._fatal = outcome
                if greeting is None:
                    logger.error("%s; not reconnecting", outcome)
            elif greeting is None:
                logger.warning("reconnect to the broker at %s failed: %s", self.address, outcome)
            self._link_lost(sock)
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if greeting is not None and not greeting.done():
            greeting.set_result(outcome)

    def _detach(self, only: Optional[socket.socket] = None) -> bool:
        """Forget the current socket (if it is ``only``, when given) and close it."""
        with self._send_lock:
            sock = self._sock
            if sock is None or (only is not None and sock is not only):
                return False
            self._sock = None
            self._connected = False
        try:
            sock.close()
        except OSError:
            pass
        self._core.connection_lost(self.address)
        greeting = self._greeting
        if greeting is not None and not greeting.done():
            greeting.set_result(
                PyStrandsConnectionError(
                    f"the broker at {self.address} closed the connection before accepting the backend"
                )
            )
        return True

    def _start_threads(self) -> None:
        if self._session is None:
            self._session = session = _Session()
            self._core.events.clear()
            self._current = None
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
                raise ReplyTimeoutError(request.action, timeout, self.address)
        return waiter.result()

    def _read_while_waiting(self, waiter: "Future[Any]", wait: float) -> None:
        sock = self._sock
        if sock is None or self._link_down is sock:
            wait_for_future((waiter,), wait)  # failed by the detach, or timed out
        else:
            self._read_chunk(sock, wait)

    def flush(self) -> None:
        """Write what handlers sent so far in this batch.

        Rarely needed: the dispatcher flushes after every batch, and the
        watchdog when a handler has run for ``takeover_after`` seconds.
        """
        if get_ident() == self._dispatch_ident and self._out:
            self._flush_out()

    def _send(self, data: bytes) -> None:
        if not self._connected:
            raise NotConnectedError(f"not connected to the broker at {self.address}")
        if len(data) > self.max_line_size:
            protocol.check_size(data, self.max_line_size)
        if get_ident() == self._dispatch_ident:
            self._out.append(data)
            self._out_bytes += len(data)
            if self._out_bytes >= _FLUSH_BYTES:
                self._flush_out()
            return
        with self._send_lock:
            sock = self._sock
            if sock is None:
                raise NotConnectedError(f"not connected to the broker at {self.address}")
            try:
                sock.sendall(data)
            except OSError as exc:
                self._write_failed(sock, exc)
                raise PyStrandsConnectionError(
                    f"connection to the broker at {self.address} lost: {exc}"
                ) from exc

    def _flush_out(self) -> None:
        """Write the dispatcher's buffer with one sendall. The dispatcher
        calls it after a batch; the watchdog and disconnect() too, while the
        dispatcher may be appending: only the items present now are taken,
        and the lock keeps the order."""
        out = self._out
        with self._send_lock:
            n = len(out)
            if not n:
                return
            items = out[:n]
            del out[:n]
            self._out_bytes = 0
            data = items[0] if n == 1 else b"".join(items)
            sock = self._sock
            if sock is None:
                logger.warning(
                    "broker at %s: connection lost: %d bytes sent by handlers were not delivered",
                    self.address,
                    len(data),
                )
                return
            try:
                sock.sendall(data)
            except OSError as exc:
                self._write_failed(sock, exc)
                logger.warning(
                    "broker at %s: connection lost: %d bytes sent by handlers were not delivered",
                    self.address,
                    len(data),
                )

    def _send_answers(self, answers: List[bytes]) -> None:
        """Write the responses to connection requests at once."""
        for answer in answers:
            try:
                self._send(answer)
            except PyStrandsConnectionError as exc:
                logger.warning("broker at %s: could not answer a connection request: %s", self.address, exc)
        if self._out and get_ident() == self._dispatch_ident:
            self._flush_out()

    def _write_failed(self, sock: socket.socket, exc: OSError) -> None:
        """Called with _send_lock held: make the reading thread notice."""
        logger.warning("write to the broker at %s failed: %s", self.address, exc)
        if self._sock is sock:
            self._connected = False
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
                        logger.exception(
                            "broker at %s: dispatcher stopped by an unexpected error", self.address
                        )
                    if self._out and self._dispatch_ident == get_ident():
                        self._flush_out()
                    with self._state_lock:
                        lost = self._detach(only=sock) if self._session is session else False
                    if lost:
                        reason, self._loss_reason = self._loss_reason, ""
                        if self._fatal is None:
                            logger.warning(
                                "connection to the broker at %s lost%s",
                                self.address,
                                f": {reason}" if reason else "",
                            )
                with self._state_lock:
                    if self._session is not session:
                        return
                    if self._sock is not None:
                        continue  # connect() was called meanwhile
                    if self._fatal is not None or not self.auto_reconnect:
                        self._lost = self._fatal is None
                        self._session = None
                        session.ended.set()
                        self._done.set()
                        return
                self._reconnect_with_backoff(session)
        finally:
            if self._dispatch_ident == get_ident():
                self._dispatch_ident = None

    def _reconnect_with_backoff(self, session: _Session) -> bool:
        if self._waits is None:
            self._waits = self._reconnect_waits()
        waits = self._waits
        while self._session is session:
            if self._closing.wait(next(waits)):
                return False
            if self._sock is not None:
                return True  # connect() was called meanwhile
            try:
                sock = self._open_socket()
            except OSError as exc:
                logger.warning("reconnect to the broker at %s failed: %s", self.address, exc)
            else:
                with self._state_lock:
                    if self._session is not session or self._sock is not None:
                        sock.close()
                        return self._session is session
                    self._attach(sock)
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
                    logger.error("broker at %s: %s; dropping the connection", self.address, exc)
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
        handler_failed = self._core.handler_failed
        self._dispatch_seq += 1
        self._in_dispatch = True
        try:
            if session.multi:
                self._run_lanes(session, None)
                return
            while self._session is session:
                try:
                    call = popleft()
                except IndexError:
                    return
                self._current = call
                handler, args = call
                try:
                    result = handler(*args)
                    if result is not None:
                        self._returned(handler, result)
                except BaseException:
                    handler_failed(handler)
                self._current = None
                if session.multi:
                    # The watchdog handed work to workers meanwhile: from
                    # now on, take calls through the lanes.
                    self._run_lanes(session, call)
                    return
        finally:
            self._current = None
            self._in_dispatch = False

    def _run_lanes(self, session: _Session, finished: Optional[Call]) -> None:
        """The dispatcher's share of the work while workers run handlers
        too: calls claimed through the session's lanes (see
        :class:`~pystrands.protocol.Lanes`). ``finished`` is a call the
        dispatcher just ran (its lane is released first)."""
        lanes = session.lanes
        events = self._core.events
        handler_failed = self._core.handler_failed
        while True:
            with session.lock:
                call = lanes.release(finished) if finished is not None else None
                if call is None:
                    if self._session is not session:
                        return
                    call = lanes.claim(events)
                    if call is None:
                        if session.workers == 0 and not lanes.busy:
                            session.multi = False  # nobody else runs handlers: back to the fast path
                        return
            self._current = call
            handler, args = call
            try:
                result = handler(*args)
                if result is not None:
                    self._returned(handler, result)
            except BaseException:
                handler_failed(handler)
            self._current = None
            finished = call

    def _returned(self, handler: Callable[..., Any], result: Any) -> None:
        """A handler returned a value: harmless, unless it is an awaitable
        this client cannot run (a coroutine function set after construction):
        that did nothing, which must not go unnoticed (logged at ERROR once
        per handler)."""
        if not inspect.isawaitable(result):
            return
        if inspect.iscoroutine(result):
            result.close()  # never run; no "never awaited" warning on top
        func = getattr(handler, "__func__", handler)
        first = not any(func is f for f in self._warned_results)
        if first:
            self._warned_results.append(func)
        logger.log(
            logging.ERROR if first else logging.DEBUG,
            "broker at %s: %s returned an awaitable, which PyStrandsClient cannot run, so it "
            "did nothing: make the handler a plain def, or use AsyncPyStrandsClient "
            "(logged once per handler)",
            self.address,
            getattr(handler, "__name__", handler),
        )

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
            logger.error("broker at %s: %s; dropping the connection", self.address, exc)
            self._link_lost(sock)
            return False
        if answers:
            self._send_answers(answers)
        if self._core.events:
            with self._cv:
                self._cv.notify_all()
            session = self._session
            if session is not None and session.stuck is not None:
                self._offload(session)
        return True

    def _link_lost(self, sock: socket.socket) -> None:
        """A thread other than the dispatcher's read loop saw the link end:
        the dispatcher detaches when it next looks; requests waiting for a
        reply fail now."""
        self._link_down = sock
        self._core.connection_lost(self.address)

    # ------------------------------------------------------------------ workers

    def _offload(self, session: _Session) -> None:
        """The dispatcher is stuck in ``session.stuck``: let workers run the
        queued events of other connections (at most ``concurrency`` handlers
        at once, the dispatcher's included)."""
        if self.concurrency < 2 or not self._core.events:
            return
        with session.lock:
            if self._session is not session:
                return
            if not session.multi:
                stuck = session.stuck
                if stuck is None:
                    return
                # Announce first, then check the dispatcher is still in that
                # call: if it is, it will see `multi` when the call returns
                # (and take its next calls through the lanes); if it is not,
                # it may have taken its next call without the lanes, so no
                # worker may start until it has seen `multi` itself.
                session.multi = True
                if self._current is not stuck:
                    return
                session.lanes.hold(stuck)
            lanes = session.lanes
            # Start a worker only when every thread that runs handlers is
            # inside one (the dispatcher included, when its lane is held).
            if session.workers + 1 >= self.concurrency or len(lanes.busy) <= session.workers:
                return
            session.workers += 1
        worker = threading.Thread(
            target=self._worker_main, args=(session,), name="pystrands-worker", daemon=True
        )
        worker._pystrands_client = self  # type: ignore[attr-defined]
        worker.start()

    def _worker_main(self, session: _Session) -> None:
        """A worker: claims calls through the lanes until none is left."""
        lanes = session.lanes
        events = self._core.events
        handler_failed = self._core.handler_failed
        finished: Optional[Call] = None
        try:
            while True:
                with session.lock:
                    call = lanes.release(finished) if finished is not None else None
                    finished = None
                    if call is None:
                        if self._session is not session:
                            return
                        call = lanes.claim(events)
                        if call is None:
                            return
                handler, args = call
                try:
                    result = handler(*args)
                    if result is not None:
                        self._returned(handler, result)
                except BaseException:
                    handler_failed(handler)
                finished = call
        finally:
            with session.lock:
                if finished is not None and self._session is session:
                    lanes.release(finished)
                session.workers -= 1

    # ------------------------------------------------------------------ watchdog thread

    def _watchdog_main(self, session: _Session) -> None:
        last_seq = -1
        last_call: Optional[Call] = None
        last_chunks = -1
        last_sock: Optional[socket.socket] = None
        heard = monotonic()
        core = self._core
        while self._session is session:
            if session.ended.wait(self.takeover_after):
                return
            now = monotonic()
            sock = self._sock
            chunks = core.chunks
            if chunks != last_chunks or sock is not last_sock:
                last_chunks, last_sock, heard = chunks, sock, now
            interval = self.heartbeat_interval
            if (
                interval is not None
                and sock is not None
                and now - heard > protocol.MISSED_HEARTBEATS * interval
                and not self._closing.is_set()
            ):
                self._link_silent(sock, now - heard)
                heard = now
            current = self._current
            if current is not None and current is last_call:
                # The same handler for a whole tick: write what it sent, and
                # let workers take the other connections' events.
                session.stuck = current
                if self._out:
                    self._flush_out()
                self._offload(session)
            else:
                session.stuck = None
            last_call = current
            seq = self._dispatch_seq
            if self._in_dispatch and seq == last_seq:
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

    def _link_silent(self, sock: socket.socket, silent: float) -> None:
        """No data from the broker for three heartbeat intervals: drop the
        link (the dispatcher then reconnects)."""
        self._loss_reason = (
            f"no data (not even a heartbeat) for {silent:.1f} s, "
            f"{protocol.MISSED_HEARTBEATS} times heartbeat_interval ({self.heartbeat_interval:g} s)"
        )
        self._link_lost(sock)
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _read_for_dispatcher(self, sock: socket.socket, session: _Session, seq: int) -> None:
        """Holding _read_role: read while the dispatcher is busy, answer
        connection requests, queue the rest; hand the socket back when the
        dispatcher has caught up."""
        cv = self._cv
        events = self._core.events
        lanes = session.lanes
        self._reader = get_ident()
        try:
            if not (self._in_dispatch and self._dispatch_seq == seq and self._sock is sock):
                return  # it finished meanwhile
            while self._session is session:
                if not self._read_chunk(sock, self.takeover_after):
                    return
                if len(events) + lanes.parked > _MAX_BACKLOG:
                    with cv:
                        while len(events) + lanes.parked > _MAX_BACKLOG and self._session is session:
                            cv.wait(0.1)
                if not self._in_dispatch and not events:
                    return  # the dispatcher has caught up: it reads again
                current = self._current
                if current is not None and current is session.stuck:
                    if self._out:
                        self._flush_out()
                    self._offload(session)
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
        client, and decide: return True or False, or return None and set
        ``request.accepted`` (which starts True). Any other return value
        (``0``, ``""``, a user object) rejects the connection and is logged
        at ERROR, as does an exception (``sys.exit()`` included). Runs on the
        thread that reads: keep it quick.
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
        error concerns no particular client (e.g. a line it could not use).
        An override may take ``error`` alone: ``def on_error(self, error)``."""
        logger.warning("broker at %s reported an error: %s", self.address, error)
