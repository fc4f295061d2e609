"""SIGTERM and Ctrl-C stop a backend gracefully: it stops taking events,
finishes the running handler and the events it had already read, writes what
they sent, then disconnects and exits 0. What it could not handle within
``shutdown_timeout`` is logged with its count.

The backend runs as its own process (tests/backends/shutdown_backend.py) so
that it gets real signals; the sync client, the asyncio client and the
decorator app each take their turn.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO, Any, List

import pytest
from websockets.sync.client import connect as ws_connect

from conftest import PACKAGE_PARENT, TIMEOUT, Broker, http_status_of

BACKEND = Path(__file__).resolve().parent / "backends" / "shutdown_backend.py"
APIS = ["sync", "async", "app"]


class Backend:
    """The backend process, its stdout lines queued, its stderr kept."""

    def __init__(self, api: str, broker: Broker, *args: str) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = PACKAGE_PARENT + os.pathsep + env.get("PYTHONPATH", "")
        self.proc = subprocess.Popen(
            [sys.executable, str(BACKEND), "--api", api, "--port", str(broker.tcp_port), *args],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.stdout: "queue.Queue[str]" = queue.Queue()
        self.stderr: List[str] = []
        self._pumps = [
            threading.Thread(target=self._pump, args=(self.proc.stdout, self.stdout.put), daemon=True),
            threading.Thread(target=self._pump, args=(self.proc.stderr, self.stderr.append), daemon=True),
        ]
        for pump in self._pumps:
            pump.start()

    @staticmethod
    def _pump(stream: "IO[bytes] | None", put: "Any") -> None:
        assert stream is not None
        for raw in stream:
            put(raw.decode("utf-8", "replace").rstrip("\n"))

    def wait_line(self, text: str) -> None:
        while True:
            try:
                line = self.stdout.get(timeout=TIMEOUT)
            except queue.Empty:
                raise AssertionError(f"the backend never printed {text!r}; its log:\n{self.log}") from None
            if line == text:
                return

    def wait_log(self, pattern: str) -> None:
        regex = re.compile(pattern)
        for _ in range(int(TIMEOUT / 0.01)):
            if any(regex.search(line) for line in list(self.stderr)):
                return
            threading.Event().wait(0.01)
        raise AssertionError(f"no log line matching {pattern!r}:\n{self.log}")

    def exit_code(self) -> int:
        code = self.proc.wait(TIMEOUT)
        for pump in self._pumps:
            pump.join(TIMEOUT)
        return code

    @property
    def log(self) -> str:
        return "\n".join(self.stderr)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(TIMEOUT)


def connect_when_up(broker: Broker, backend: Backend, path: str) -> "Any":
    """The broker answers 503 until the backend is connected."""
    for _ in range(int(TIMEOUT / 0.05)):
        try:
            return ws_connect(broker.ws_url(path), open_timeout=TIMEOUT)
        except Exception as exc:
            if http_status_of(exc) != 503 or backend.proc.poll() is not None:
                raise
            threading.Event().wait(0.05)
    raise AssertionError(f"the backend did not connect:\n{backend.log}")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
@pytest.mark.parametrize("api", APIS)
def test_a_signal_lets_running_and_read_events_finish(broker: Broker, api: str, sig: int) -> None:
    backend = Backend(api, broker)
    try:
        with connect_when_up(broker, backend, "/s") as ws:
            ws.send("slow")
            for i in range(4):
                ws.send(f"m{i}")
            backend.wait_line("READY")  # slow runs, m0-m3 are read and wait behind it
            backend.proc.send_signal(sig)
            got = [ws.recv(timeout=TIMEOUT) for _ in range(5)]
            assert got == ["done:slow", "echo:m0", "echo:m1", "echo:m2", "echo:m3"], backend.log
            assert backend.exit_code() == 0, backend.log  # before this client leaves (an event)
    finally:
        backend.stop()
    assert "stopping" in backend.log
    assert "disconnected from the broker at 127.0.0.1:" in backend.log
    assert "not handled" not in backend.log and "Traceback" not in backend.log, backend.log


@pytest.mark.parametrize("api", APIS)
def test_what_could_not_be_handled_in_time_is_counted(broker: Broker, api: str) -> None:
    backend = Backend(api, broker, "--shutdown-timeout", "3")
    try:
        with connect_when_up(broker, backend, "/t") as ws:
            ws.send("stuck")
            for i in range(4):
                ws.send(f"m{i}")
            backend.wait_line("READY")
            backend.proc.send_signal(signal.SIGTERM)
            backend.wait_log("stopping")
            for i in range(3):
                ws.send(f"late{i}")  # arrive while the backend waits for the stuck handler
            assert backend.exit_code() == 0, backend.log
    finally:
        backend.stop()
    assert re.search(r"1 handler\(s\) still running after 3\.0 s", backend.log), backend.log
    assert re.search(
        r"7 event\(s\) not handled: 4 read but not started in time, 3 arrived after the stop began",
        backend.log,
    ), backend.log
