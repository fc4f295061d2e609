"""The threaded backend client: :class:`PyStrandsClient`.

Threading model
---------------
A connected client runs two threads of its own (both daemon threads):

- the **reader** owns the socket's read side. It reads large chunks, splits
  and decodes every line of a chunk at once (:mod:`pystrands.protocol`), and
  answers ``connection_request`` events itself, *inline*: it calls
  ``on_connection_request`` and writes the ``response`` at once. Every other
  event of the chunk goes, as one batch, to the worker. Because the reader
  never runs ``on_message`` and friends, a slow message handler cannot delay
  the answer to a connection request past the broker's ``--connect-timeout``.
  After a lost connection the reader also runs the reconnect loop.
- the **worker** runs ``on_new_connection``/``on_connect``, ``on_message``,
  ``on_disconnect`` and ``on_error``, one at a time, in the order the broker
  sent the events (so per-client order holds end to end).

So ``on_connection_request`` runs concurrently with the other handlers: state
they share needs a lock. Handlers run one at a time per kind of thread, never
two ``on_message`` calls at once.

Sending
-------
The send methods may be called from any thread. Lines sent by a handler on
the worker thread are collected and written with one ``sendall`` once the
worker has run out of queued events (or after 64 KiB): many messages, one
system call. Consequently a handler that sends and then blocks for a long time
holds back what it sent until it returns; call :meth:`PyStrandsClient.flush`
before blocking work if that matters. Lines sent from any other thread are
written before the send method returns. Sending while not connected (before
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
import queue
import random
import socket
import threading
from itertools import count
from threading import get_ident
from typing import Any, Dict, List, Optional, Union

from . import protocol
from .protocol import Message, decode_binary
from .context import ConnectionRequestContext, Context
from .errors import NotConnectedError, ProtocolError, PyStrandsConnectionError

__all__ = ["PyStrandsClient"]

logger = logging.getLogger("pystrands.client")

_STOP = object()  # worker sentinel
_RECV_SIZE = 256 * 1024
_FLUSH_BYTES = 64 * 1024
#: Events received but not yet handled by the worker before the reader stops
#: reading (TCP back-pressure on the broker, which queues or sheds load).
_MAX_BACKLOG = 100_000


class PyStrandsClient:
    """A backend connected to the PyStrands broker's TCP port.

    Subclass it and override the ``on_*`` callbacks, then ``connect()`` and
    ``run_forever()`` (see the module documentation for which thread runs
    what).
    """

    def __init__(
        self,
        host: str = "localhost",
        port: int = 8081,
        auto_reconnect: bool = True,
        reconnect_delay: float = 1.0,
        max_reconnect_delay: float = 30.0,
        reconnect_backoff: float = 2.0,
    ) -> None:
        self.host = host
        self.port = port
        self.auto_reconnect = auto_reconnect
        self.reconnect_delay = reconnect_delay
        self.max_reconnect_delay = max_reconnect_delay
        self.reconnect_backoff = reconnect_backoff
        #: True while a connection to the broker is open and usable for sending.
        self.connected = False

        self._sock: Optional[socket.socket] = None
        self._state_lock = threading.RLock()  # connect/disconnect/reconnect transitions
        self._send_lock = threading.Lock()  # one writer on the socket at a time
        self._closing = threading.Event()  # disconnect() was called
        self._done = threading.Event()  # run_forever() may return
        self._lost = False  # connection lost and not reconnecting
        self._reader: Optional[threading.Thread] = None
        self._worker: Optional[threading.Thread] = None
        self._worker_ident: Optional[int] = None
        # Batches of events for the current worker; None when no worker should
        # run. A worker stops dispatching as soon as this is no longer its inbox.
        self._inbox: "Optional[queue.SimpleQueue[Any]]" = None
        self._pending: List[bytes] = []  # worker-only write buffer
        self._pending_bytes = 0
        self._received = 0  # events handed to the worker (written by the reader only)
        self._handled = 0  # events the worker finished (written by the worker only)
        self._backlog_ok = threading.Event()
        self._backlog_ok.set()
        self._ids = count(1)

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
            reader, worker = self._reader, self._worker
            inbox, self._inbox = self._inbox, None  # the worker stops dispatching
            self._backlog_ok.set()
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RD)  # wakes the reader's recv()
            except OSError:
                pass
        if inbox is not None:
            inbox.put(_STOP)  # wakes the worker if it is idle
        if worker is not None:
            if worker.ident == me:
                self.flush()  # we are the worker: write what this handler sent
            else:
                worker.join(timeout)
                if worker.is_alive():
                    logger.warning(
                        "disconnect: a handler is still running after %.1f s; closing anyway",
                        timeout,
                    )
        if reader is not None and reader.ident != me:
            reader.join(timeout)
        with self._state_lock:
            self._detach()
            if self._worker is worker:
                self._worker = None
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
                    self._start_threads()  # the reader's loop reconnects
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
        reader = self._reader
        return reader is not None and reader.is_alive() and not self._closing.is_set()

    def _open_socket(self) -> socket.socket:
        sock = socket.create_connection((self.host, self.port), timeout=10.0)
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def _attach(self, sock: socket.socket) -> None:
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
        return True

    def _start_threads(self) -> None:
        if self._inbox is None:
            # (a worker stopped by disconnect() may still be finishing a slow
            # handler: it keeps its old inbox, the new worker gets a new one)
            self._inbox = inbox = queue.SimpleQueue()
            self._received = self._handled = 0
            self._worker = threading.Thread(
                target=self._worker_main, args=(inbox,), name="pystrands-worker", daemon=True
            )
            self._worker.start()
        if self._reader is None or not self._reader.is_alive():
            self._reader = threading.Thread(
                target=self._reader_main, name="pystrands-reader", daemon=True
            )
            self._reader.start()

    # ------------------------------------------------------------------ sending

    def broadcast_message(self, message: Message) -> None:
        """Send ``message`` to every connected WebSocket client."""
        self._send(protocol.encode_broadcast(message, str(next(self._ids))))

    def send_room_message(self, room_id: str, message: Message) -> None:
        """Send ``message`` to every client in ``room_id``."""
        self._send(protocol.encode_room_message(room_id, message, str(next(self._ids))))

    def send_private_message(self, client_id: str, message: Message) -> None:
        """Send ``message`` to every connection whose client_id is ``client_id``."""
        self._send(protocol.encode_private_message(client_id, message, str(next(self._ids))))

    def flush(self) -> None:
        """Write what handlers on the worker thread sent so far.

        Only needed inside a handler that sends and then blocks for long; the
        worker flushes by itself whenever it runs out of queued events.
        """
        if get_ident() == self._worker_ident and self._pending:
            self._flush_pending()

    def _send(self, data: bytes) -> None:
        if not self.connected:
            raise NotConnectedError(
                f"not connected to the broker at {self.host}:{self.port}"
            )
        if get_ident() == self._worker_ident:
            self._pending.append(data)
            self._pending_bytes += len(data)
            if self._pending_bytes >= _FLUSH_BYTES:
                self._flush_pending()
            return
        with self._send_lock:
            sock = self._sock
            if sock is None:
                raise NotConnectedError(
                    f"not connected to the broker at {self.host}:{self.port}"
                )
            try:
                sock.sendall(data)
            except OSError as exc:
                self._write_failed(sock, exc)
                raise PyStrandsConnectionError(f"connection to the broker lost: {exc}") from exc

    def _flush_pending(self) -> None:
        """Worker thread only: write the batch buffer with one sendall."""
        pending = self._pending
        data = pending[0] if len(pending) == 1 else b"".join(pending)
        pending.clear()
        self._pending_bytes = 0
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

    def _write_failed(self, sock: socket.socket, exc: OSError) -> None:
        """Called with _send_lock held: make the reader notice the dead socket."""
        logger.warning("write to the broker failed: %s", exc)
        if self._sock is sock:
            self.connected = False
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    # ------------------------------------------------------------------ reader thread

    def _reader_main(self) -> None:
        while True:
            sock = self._sock
            if sock is not None:
                try:
                    self._read_loop(sock)
                except Exception:  # a bug in a handler path must not kill reconnects
                    logger.exception("reader stopped by an unexpected error")
                with self._state_lock:
                    lost = self._detach(only=sock)
                if lost and not self._closing.is_set():
                    logger.warning("connection to the broker at %s:%s lost", self.host, self.port)
            with self._state_lock:
                if self._closing.is_set():
                    self._reader = None
                    return
                if self._sock is not None:
                    continue  # connect() was called meanwhile
                if not self.auto_reconnect:
                    self._lost = True
                    self._reader = None
                    self._done.set()
                    return
            if not self._reconnect_with_backoff():
                with self._state_lock:
                    if self._sock is None or self._closing.is_set():
                        self._reader = None
                        return

    def _reconnect_with_backoff(self) -> bool:
        delay = max(0.0, float(self.reconnect_delay))
        while not self._closing.is_set():
            wait = delay * random.uniform(0.5, 1.0)
            if self._closing.wait(wait):
                return False
            if self._sock is not None:
                return True  # connect() was called meanwhile
            try:
                sock = self._open_socket()
            except OSError as exc:
                logger.info("reconnect to %s:%s failed: %s", self.host, self.port, exc)
            else:
                with self._state_lock:
                    if self._closing.is_set() or self._sock is not None:
                        sock.close()
                        return not self._closing.is_set()
                    self._attach(sock)
                logger.info("reconnected to the broker at %s:%s", self.host, self.port)
                return True
            delay = min(max(delay, 0.01) * self.reconnect_backoff, self.max_reconnect_delay)
        return False

    def _read_loop(self, sock: socket.socket) -> None:
        lines_of = protocol.LineBuffer().feed
        decode = protocol.decode
        recv = sock.recv
        backlog_ok = self._backlog_ok
        while True:
            try:
                data = recv(_RECV_SIZE)
            except OSError:
                return
            if not data:
                return
            try:
                lines = lines_of(data)
            except ProtocolError as exc:
                logger.error("%s; dropping the connection", exc)
                return
            batch = []
            for line in lines:
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
                    batch.append(event)
            if batch:
                inbox = self._inbox
                if inbox is None:  # disconnect() in progress
                    return
                self._received += len(batch)
                inbox.put(batch)
                if self._received - self._handled > _MAX_BACKLOG:
                    backlog_ok.clear()
                    if self._received - self._handled > _MAX_BACKLOG:
                        backlog_ok.wait()

    def _answer_connection_request(self, event: Dict[str, Any]) -> None:
        request_id = event.get("request_id")
        if not isinstance(request_id, str):
            request_id = "" if request_id is None else str(request_id)
        params = event.get("params")
        request = protocol.connection_request_from_params(params if isinstance(params, dict) else {})
        try:
            result = self.on_connection_request(request)
            accepted = protocol.decide_accepted(result, request)
            line = protocol.encode_response(request_id, accepted, request.context)
        except Exception:
            logger.exception(
                "on_connection_request raised; rejecting the connection from %s to %s",
                request.remote_addr,
                request.url,
            )
            line = protocol.encode_response(request_id, False, None)
        try:
            self._send(line)
        except PyStrandsConnectionError as exc:
            logger.warning("could not answer a connection request: %s", exc)

    # ------------------------------------------------------------------ worker thread

    def _worker_main(self, inbox: "queue.SimpleQueue[Any]") -> None:
        self._worker_ident = get_ident()
        get = inbox.get
        empty = inbox.empty
        dispatch = self._dispatch
        backlog_ok = self._backlog_ok
        try:
            while True:
                batch = get()
                if batch is _STOP or self._inbox is not inbox:
                    break
                dispatch(batch, inbox)
                self._handled += len(batch)
                if not backlog_ok.is_set() and self._received - self._handled <= _MAX_BACKLOG // 2:
                    backlog_ok.set()
                if self._pending and empty():
                    self._flush_pending()
            if self._pending and self._worker_ident == get_ident():
                self._flush_pending()
        finally:
            if self._worker_ident == get_ident():
                self._worker_ident = None

    def _dispatch(self, batch: List[Dict[str, Any]], inbox: object) -> None:
        on_message = self.on_message
        make_context = Context
        for event in batch:
            if self._inbox is not inbox:  # disconnect() was called
                return
            try:
                params = event["params"]
                action = event["action"]
                if action == "new_message":
                    c = params["context"]
                    message = params["message"]
                    if "binary" in params and params["binary"] is True:
                        message = decode_binary(message)
                    on_message(message, make_context(c["client_id"], c["room_id"], c["metadata"]))
                elif action == "new_connection":
                    self.on_new_connection(protocol.context_from_params(params))
                elif action == "disconnected":
                    self.on_disconnect(protocol.context_from_params(params))
                elif action == "error":
                    self.on_error(params.get("error", ""), protocol.context_from_params(params))
            except Exception:
                logger.exception("handler for a %r event raised", event.get("action"))

    # ------------------------------------------------------------------ callbacks

    def on_connection_request(self, request: ConnectionRequestContext) -> Optional[bool]:
        """A WebSocket client asks to connect. Runs on the reader thread.

        Change ``request.context`` (client_id, room_id, metadata) to assign the
        client, and decide by returning True/False or by setting
        ``request.accepted`` (a returned bool wins; ``None`` means
        ``request.accepted``, which starts True). An exception rejects the
        connection and is logged with its traceback.
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
