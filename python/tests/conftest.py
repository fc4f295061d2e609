"""Fixtures: the REAL broker binary on ephemeral loopback ports, and helpers.

The broker executable is, in order: ``$PYSTRANDS_SERVER_BIN``; the
``pystrands-server`` on PATH or in this interpreter's scripts directory (what
``pip install .`` installs); else ``target/debug/pystrands-server`` of this
checkout (``cargo build``). Each test gets its own broker process, started
with ``--ws-port 0 --tcp-port 0`` and stopped by PID.

The tests import ``pystrands`` from this checkout's ``python/`` directory, so
they test the source next to them whatever else is installed; with
``PYSTRANDS_TEST_INSTALLED=1`` they test the installed package instead (a
wheel's contents), and fail if that would be the source tree after all.
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple

import pytest

REPO = Path(__file__).resolve().parent.parent.parent
SOURCE = str(REPO / "python")
if os.environ.get("PYSTRANDS_TEST_INSTALLED"):
    # `python -m pytest` puts the working directory on sys.path: from python/
    # that is the source tree, which must not shadow the installed package.
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != SOURCE]
else:
    sys.path.insert(0, SOURCE)

import pystrands  # noqa: E402

if os.environ.get("PYSTRANDS_TEST_INSTALLED") and pystrands.__file__.startswith(SOURCE):
    raise RuntimeError(f"PYSTRANDS_TEST_INSTALLED is set but pystrands comes from {pystrands.__file__}")

#: The directory holding the ``pystrands`` package under test, for the
#: PYTHONPATH of subprocesses (the launcher, the examples).
PACKAGE_PARENT = str(Path(pystrands.__file__).resolve().parent.parent)

LISTENING = re.compile(r"websocket=(\S+) backend=(\S+)")
EXE = "pystrands-server" + (".exe" if os.name == "nt" else "")

#: Upper bound for anything a test waits for (an event, a message, a state).
TIMEOUT = 10.0


def server_binary() -> str:
    override = os.environ.get("PYSTRANDS_SERVER_BIN")
    if override:
        return override
    on_path = shutil.which(EXE)
    if on_path:
        return on_path
    scripts = sysconfig.get_path("scripts")
    if scripts and (Path(scripts) / EXE).is_file():
        return str(Path(scripts) / EXE)
    if (Path(sys.executable).parent / EXE).is_file():
        return str(Path(sys.executable).parent / EXE)
    return str(REPO / "target" / "debug" / EXE)


def _split_addr(addr: str) -> Tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host.strip("[]"), int(port)


class Broker:
    """One pystrands-server process; restartable on the same ports."""

    def __init__(self, binary: str, connect_timeout: float = 5.0, extra_args: Sequence[str] = ()) -> None:
        self.binary = binary
        self.connect_timeout = connect_timeout
        self.extra_args = list(extra_args)
        self.proc: "Optional[subprocess.Popen[bytes]]" = None
        self.log_lines: List[str] = []
        self.ws_host = self.tcp_host = "127.0.0.1"
        self.ws_port = self.tcp_port = 0

    def start(self, ws_port: int = 0, tcp_port: int = 0) -> "Broker":
        args = [
            self.binary,
            "--host", "127.0.0.1",
            "--ws-port", str(ws_port),
            "--tcp-port", str(tcp_port),
            "--connect-timeout", str(self.connect_timeout),
            "--log-level", "info",
            *self.extra_args,
        ]
        if "--admin-port" not in self.extra_args:
            # Off unless a test asks for it: two brokers would compete for 8082.
            args += ["--admin-port", "0"]
        self.proc = proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        found: "queue.Queue[Optional[str]]" = queue.Queue()

        def pump() -> None:
            assert proc.stderr is not None
            for raw in proc.stderr:
                line = raw.decode("utf-8", "replace").rstrip("\n")
                self.log_lines.append(line)
                if LISTENING.search(line):
                    found.put(line)
            found.put(None)

        threading.Thread(target=pump, name="broker-stderr", daemon=True).start()
        try:
            line = found.get(timeout=TIMEOUT)
        except queue.Empty:
            line = None
        if line is None:
            self.stop()
            pytest.fail(f"broker did not report its ports; its log:\n{self.logs}")
        match = LISTENING.search(line)
        assert match
        self.ws_host, self.ws_port = _split_addr(match.group(1))
        self.tcp_host, self.tcp_port = _split_addr(match.group(2))
        return self

    def restart(self) -> "Broker":
        """Stop (SIGTERM) and start again on the same two ports."""
        self.stop()
        deadline = time.monotonic() + TIMEOUT
        while True:  # the ports are free at once in practice; retry briefly if not
            try:
                return self.start(self.ws_port, self.tcp_port)
            except pytest.fail.Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def stop(self, sig: int = signal.SIGTERM) -> Optional[int]:
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            os.kill(proc.pid, sig)
            try:
                proc.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(TIMEOUT)
        self.proc = None
        return proc.returncode

    def send_signal(self, sig: int) -> None:
        """Send ``sig`` to the running broker (SIGSTOP / SIGCONT pause it)."""
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait_log(self, pattern: str, count: int = 1, timeout: float = TIMEOUT) -> None:
        """Wait until ``count`` lines of the broker's log match ``pattern``."""
        regex = re.compile(pattern)
        wait_for(
            lambda: sum(1 for line in list(self.log_lines) if regex.search(line)) >= count,
            timeout,
            f"{count} broker log line(s) matching {pattern!r}; log:\n{self.logs}",
        )

    def ws_url(self, path: str = "/") -> str:
        return f"ws://{self.ws_host}:{self.ws_port}{path}"

    @property
    def logs(self) -> str:
        return "\n".join(self.log_lines)


@pytest.fixture(scope="session")
def broker_binary() -> str:
    path = server_binary()
    if not os.access(path, os.X_OK):
        pytest.fail(
            f"broker executable not found at {path}: run `cargo build` in {REPO}, "
            "or set PYSTRANDS_SERVER_BIN"
        )
    return path


@pytest.fixture
def broker_factory(broker_binary: str) -> Iterator[Callable[..., Broker]]:
    """``broker_factory(connect_timeout=1.0, extra_args=[...])`` -> a started Broker."""
    started: List[Broker] = []

    def make(connect_timeout: float = 5.0, extra_args: Sequence[str] = ()) -> Broker:
        b = Broker(broker_binary, connect_timeout, extra_args)
        started.append(b)
        return b.start()

    yield make
    for b in started:
        b.stop()


@pytest.fixture
def broker(broker_factory: Callable[..., Broker]) -> Broker:
    return broker_factory()


def wait_for(predicate: Callable[[], Any], timeout: float = TIMEOUT, what: str = "a condition") -> Any:
    """Poll a state that has no event to await (e.g. ``client.connected``)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.01)


class Events:
    """A thread-safe record of callbacks that tests can await one by one."""

    def __init__(self) -> None:
        self.q: "queue.Queue[Tuple[Any, ...]]" = queue.Queue()

    def put(self, *item: Any) -> None:
        self.q.put(item)

    def get(self, kind: Optional[str] = None, timeout: float = TIMEOUT) -> Tuple[Any, ...]:
        """Next recorded item (of ``kind``, skipping others)."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                item = self.q.get(timeout=max(0.0, remaining))
            except queue.Empty:
                raise AssertionError(f"timed out after {timeout:.0f} s waiting for {kind or 'an event'}") from None
            if kind is None or item[0] == kind:
                return item


@pytest.fixture
def events() -> Events:
    return Events()


def http_status_of(exc: BaseException) -> Optional[int]:
    """The HTTP status of a refused WebSocket handshake (websockets' exceptions)."""
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    if status is None:
        status = getattr(exc, "status_code", None)  # legacy InvalidStatusCode
    return status


@pytest.fixture
def clients() -> Iterator[List[Any]]:
    """Append sync clients here; they are disconnected at teardown."""
    made: List[Any] = []
    yield made
    for c in made:
        try:
            c.disconnect(timeout=2.0)
        except Exception:
            pass


# ---------------------------------------------------------------- protocol 1.1 helpers


class TabBackend(pystrands.PyStrandsClient):
    """A sync backend for the room and connection tests.

    The ``X-User`` header names the client_id (so several tabs can share one),
    the path without slashes the room, ``X-Join`` (comma separated) more rooms
    to join at accept. It records ``("connected", context)``,
    ``("message", text, context)`` and ``("disconnected", context)`` in
    ``events``; a message ``who?`` is answered with the presence of the
    sender's room (a request made inside a handler).
    """

    def __init__(self, events: "Events", *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.events = events

    def on_connection_request(self, request: Any) -> None:
        user = request.header("X-User")
        if user:
            request.context.client_id = user
        request.context.room_id = request.url.strip("/")
        extra = request.header("X-Join")
        if extra:
            request.join(*extra.split(","))

    def on_new_connection(self, context: Any) -> None:
        self.events.put("connected", context)

    def on_message(self, message: Any, context: Any) -> None:
        if message == "who?":
            entries = self.presence(context.room_id)
            names = ",".join(sorted(e.client_id for e in entries))
            self.send_connection_message(context.connection_id, "here:" + names)
        self.events.put("message", message, context)

    def on_disconnect(self, context: Any) -> None:
        self.events.put("disconnected", context)


@pytest.fixture
def tab_backend(broker: Broker, clients: List[Any], events: "Events") -> TabBackend:
    backend = TabBackend(events, "127.0.0.1", broker.tcp_port, reply_timeout=TIMEOUT)
    clients.append(backend)
    assert backend.connect()
    return backend


def open_tab(stack: Any, broker: Broker, events: "Events", path: str, user: str, **headers: str) -> Tuple[Any, Any]:
    """Open a WebSocket (closed by ``stack``) as ``user`` and return it with
    its context, as the backend's ``new_connection`` reported it."""
    from websockets.sync.client import connect as ws_connect

    extra = {"X-User": user}
    extra.update({k.replace("_", "-"): v for k, v in headers.items()})
    ws = stack.enter_context(ws_connect(broker.ws_url(path), open_timeout=TIMEOUT, additional_headers=extra))
    _, context = events.get("connected")
    assert context.client_id == user
    return ws, context


def next_frames(ws: Any, count: int) -> List[Any]:
    """The next ``count`` frames a WebSocket receives."""
    return [ws.recv(timeout=TIMEOUT) for _ in range(count)]


@pytest.fixture
def unused_port() -> int:
    """A loopback port nothing listens on (bound and released)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port
