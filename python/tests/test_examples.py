"""The scripts in examples/ run against the real broker."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any

import pytest
from websockets.sync.client import connect as ws_connect

from conftest import PACKAGE_PARENT, REPO, TIMEOUT, Broker, http_status_of

EXAMPLES = REPO / "examples"


def start_example(name: Any, broker: Broker, *args: Any) -> Any:
    env = dict(os.environ)
    env["PYTHONPATH"] = PACKAGE_PARENT + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"  # its prints are asserted on
    return subprocess.Popen(
        [sys.executable, str(EXAMPLES / name), "--host", "127.0.0.1", "--port", str(broker.tcp_port), *args],
        env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )


def connect_when_backend_is_up(url: str, proc: Any, **kwargs: Any) -> Any:
    """The broker answers 503 until a backend is connected: retry until it is."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        try:
            return ws_connect(url, open_timeout=TIMEOUT, **kwargs)
        except Exception as exc:
            if http_status_of(exc) != 503 or time.monotonic() > deadline or proc.poll() is not None:
                raise
            time.sleep(0.05)


def stop(proc: Any) -> Any:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(TIMEOUT)
    return proc.stdout.read().decode("utf-8", "replace")


@pytest.mark.parametrize("flags", [[], ["--async"]], ids=["sync", "async"])
def test_echo_backend(broker: Broker, flags: Any) -> None:
    proc = start_example("echo_backend.py", broker, *flags)
    try:
        with connect_when_backend_is_up(broker.ws_url("/echo"), proc) as ws:
            for text in ["hello", "ünïcödé 🎉", "x" * 10_000]:
                ws.send(text)
                assert ws.recv(timeout=TIMEOUT) == text
    finally:
        stop(proc)


def test_readme_client_welcomes_by_name(broker: Broker) -> None:
    proc = start_example("readme_client.py", broker)
    try:
        with connect_when_backend_is_up(broker.ws_url("/ws/room1"), proc) as ws:
            assert ws.recv(timeout=TIMEOUT) == "Welcome to the room! John Doe"
            ws.send("hi")
    finally:
        out = stop(proc)
    assert "Connected to new_client_id in room new_room" in out, out


def test_chat_app(broker: Broker) -> None:
    proc = start_example("chat_app.py", broker)
    try:
        with connect_when_backend_is_up(broker.ws_url("/chat/r1"), proc,
                                        additional_headers={"X-Name": "ann"}) as ann:
            assert ann.recv(timeout=TIMEOUT) == "* ann joined"
            with ws_connect(broker.ws_url("/chat/r1"), open_timeout=TIMEOUT,
                            additional_headers={"X-Name": "bob"}) as bob:
                assert ann.recv(timeout=TIMEOUT) == "* bob joined"
                assert bob.recv(timeout=TIMEOUT) == "* bob joined"
                bob.send("hi ann")
                assert ann.recv(timeout=TIMEOUT) == "bob: hi ann"
                # read everything before closing: websockets 13's sync client
                # cannot finish a close handshake behind an unread message
                assert bob.recv(timeout=TIMEOUT) == "bob: hi ann"
            assert ann.recv(timeout=TIMEOUT) == "* bob left"
    finally:
        stop(proc)


@pytest.mark.parametrize("flags", [[], ["--async"]], ids=["sync", "async"])
def test_ctrl_c_stops_a_backend_cleanly(broker: Broker, flags: Any) -> None:
    import signal

    proc = start_example("echo_backend.py", broker, *flags)
    try:
        with connect_when_backend_is_up(broker.ws_url("/e"), proc) as ws:
            ws.send("up?")
            assert ws.recv(timeout=TIMEOUT) == "up?"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(TIMEOUT) == 0
    finally:
        out = stop(proc)
    assert "Traceback" not in out, out
