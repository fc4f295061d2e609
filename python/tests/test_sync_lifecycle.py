"""PyStrandsClient lifecycle: disconnect from inside a handler, disconnect
while a handler is stuck, connect again afterwards, handler exceptions."""

from __future__ import annotations

import pytest
import logging
import threading
import time
from typing import Any, List

from websockets.sync.client import connect as ws_connect

from conftest import TIMEOUT, Broker, Events, wait_for
from pystrands import PyStrandsClient


def test_disconnect_from_inside_a_handler(broker: Broker, events: Events) -> None:
    class Quitter(PyStrandsClient):
        def on_message(self, message: Any, context: Any) -> None:
            self.send_private_message(context.client_id, "bye")
            self.disconnect()
            events.put("after-disconnect", self.connected)

    client = Quitter("127.0.0.1", broker.tcp_port)
    runner = threading.Thread(target=client.run_forever, daemon=True)
    runner.start()
    wait_for(lambda: client.connected, what="the client to connect")
    with ws_connect(broker.ws_url("/q"), open_timeout=TIMEOUT) as ws:
        ws.send("quit")
        assert ws.recv(timeout=TIMEOUT) == "bye"  # sent before the socket closed
    assert events.get("after-disconnect") == ("after-disconnect", False)
    runner.join(TIMEOUT)
    assert not runner.is_alive()


def test_disconnect_does_not_wait_forever_for_a_stuck_handler(broker: Broker, events: Events, caplog: pytest.LogCaptureFixture) -> None:
    release = threading.Event()

    class Stuck(PyStrandsClient):
        def on_message(self, message: Any, context: Any) -> None:
            events.put("stuck")
            release.wait(3 * TIMEOUT)

    client = Stuck("127.0.0.1", broker.tcp_port)
    assert client.connect()
    try:
        with ws_connect(broker.ws_url("/s"), open_timeout=TIMEOUT) as ws:
            ws.send("x")
            events.get("stuck")
            t0 = time.monotonic()
            with caplog.at_level(logging.WARNING, logger="pystrands"):
                client.disconnect(timeout=0.3)
            # Far less than the handler's 3 x TIMEOUT, with room for a busy machine.
            assert time.monotonic() - t0 < TIMEOUT
            assert not client.connected
            assert "still running" in caplog.text
    finally:
        release.set()


def test_connect_again_after_disconnect(broker: Broker, clients: List[Any]) -> None:
    class Echo(PyStrandsClient):
        def on_message(self, message: Any, context: Any) -> None:
            self.send_private_message(context.client_id, message)

    client = Echo("127.0.0.1", broker.tcp_port)
    clients.append(client)
    for round_no in range(3):
        assert client.connect()
        with ws_connect(broker.ws_url("/again"), open_timeout=TIMEOUT) as ws:
            ws.send(f"round {round_no}")
            assert ws.recv(timeout=TIMEOUT) == f"round {round_no}"
        client.disconnect()
        assert not client.connected


def test_a_raising_handler_is_logged_and_the_client_goes_on(broker: Broker, clients: List[Any], caplog: pytest.LogCaptureFixture) -> None:
    class Flaky(PyStrandsClient):
        def on_message(self, message: Any, context: Any) -> None:
            if message == "boom":
                raise ValueError("handler failure")
            self.send_private_message(context.client_id, "ok:" + message)

    client = Flaky("127.0.0.1", broker.tcp_port)
    clients.append(client)
    assert client.connect()
    with caplog.at_level(logging.ERROR, logger="pystrands"):
        with ws_connect(broker.ws_url("/f"), open_timeout=TIMEOUT) as ws:
            ws.send("boom")
            ws.send("fine")
            assert ws.recv(timeout=TIMEOUT) == "ok:fine"
    assert any(r.exc_info and "handler failure" in str(r.exc_info[1]) for r in caplog.records)
