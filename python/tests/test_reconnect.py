"""Automatic reconnection: after a broker restart, and after a lost backend
connection while the broker keeps running (the events the broker queued in
the meantime arrive, in order)."""

from __future__ import annotations

import asyncio
import random
import socket
import threading
from typing import Any, List

import pytest
from websockets.sync.client import connect as ws_connect

from conftest import TIMEOUT, Broker, Events, wait_for
from pystrands import AsyncPyStrandsClient, PyStrandsClient, PyStrandsConnectionError

DISCONNECTED_LOG = r"backend \S+ disconnected"


class Echo(PyStrandsClient):
    def __init__(self, events: Events, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.events = events

    def on_message(self, message: Any, context: Any) -> None:
        self.events.put("message", message)
        self.send_private_message(context.client_id, "echo:" + message)


def test_sync_reconnects_after_broker_restart(broker: Broker, clients: List[Any], events: Events) -> None:
    client = Echo(events, host="127.0.0.1", port=broker.tcp_port,
                  reconnect_delay=0.05, max_reconnect_delay=0.2)
    clients.append(client)
    assert client.connect()
    with ws_connect(broker.ws_url("/before"), open_timeout=TIMEOUT) as ws:
        ws.send("one")
        assert ws.recv(timeout=TIMEOUT) == "echo:one"

    assert broker.stop() == 0
    wait_for(lambda: not client.connected, what="the client to notice the broker is gone")
    broker.restart()
    wait_for(lambda: client.connected, what="the client to reconnect")
    with ws_connect(broker.ws_url("/after"), open_timeout=TIMEOUT) as ws:
        ws.send("two")
        assert ws.recv(timeout=TIMEOUT) == "echo:two"


def test_sync_queued_events_arrive_after_reconnect(
    broker: Broker, clients: List[Any], events: Events, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = Echo(events, host="127.0.0.1", port=broker.tcp_port, reconnect_delay=0.05)
    clients.append(client)
    assert client.connect()
    # The reconnect waits until the test has sent while disconnected (a
    # delay alone would race a busy machine).
    released = threading.Event()
    real_open = client._open_socket

    def open_when_released() -> socket.socket:
        released.wait(TIMEOUT)
        return real_open()

    monkeypatch.setattr(client, "_open_socket", open_when_released)
    with ws_connect(broker.ws_url("/q"), open_timeout=TIMEOUT) as ws:
        ws.send("first")
        assert ws.recv(timeout=TIMEOUT) == "echo:first"

        assert client._sock is not None
        client._sock.shutdown(socket.SHUT_RDWR)  # the network drops the backend link
        broker.wait_log(DISCONNECTED_LOG)
        wait_for(lambda: not client.connected, what="the client to notice the drop")
        for i in range(20):
            ws.send(f"queued-{i}")
        sent_while_disconnected = not client.connected
        assert sent_while_disconnected
        released.set()
        for i in range(20):
            assert ws.recv(timeout=TIMEOUT) == f"echo:queued-{i}"
    received = [events.get("message")[1] for _ in range(21)]
    assert received == ["first"] + [f"queued-{i}" for i in range(20)]


def test_sync_no_auto_reconnect_ends_run_forever_with_an_error(broker: Broker) -> None:
    client = PyStrandsClient("127.0.0.1", broker.tcp_port, auto_reconnect=False)
    assert client.connect()

    outcome: List[Any] = []

    def run() -> None:
        try:
            client.run_forever()
            outcome.append("returned")
        except PyStrandsConnectionError as exc:
            outcome.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    broker.stop()
    t.join(TIMEOUT)
    assert not t.is_alive()
    assert isinstance(outcome[0], PyStrandsConnectionError)


def test_sync_backoff_grows_with_jitter_and_caps(monkeypatch: pytest.MonkeyPatch) -> None:
    """The reconnect waits: delay x backoff^n capped at max, each x U(0.5, 1)."""
    from pystrands.client import _Session

    client = PyStrandsClient("127.0.0.1", 1, reconnect_delay=0.1,
                             max_reconnect_delay=0.4, reconnect_backoff=2.0)
    session = client._session = _Session()
    waits = []

    def fake_wait(timeout: Any=None) -> Any:
        waits.append(timeout)
        return len(waits) >= 6  # "disconnect() was called" at the 6th wait

    def refuse() -> None:
        raise ConnectionRefusedError("nobody home")

    monkeypatch.setattr(client._closing, "wait", fake_wait)
    monkeypatch.setattr(client, "_open_socket", refuse)
    monkeypatch.setattr(random, "uniform", lambda a, b: (a + b) / 2)  # 0.75
    assert client._reconnect_with_backoff(session) is False
    assert waits == pytest.approx([0.075, 0.15, 0.3, 0.3, 0.3, 0.3])


def test_async_reconnects_and_gets_queued_events(broker: Broker, monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> None:
        from websockets.asyncio.client import connect

        received: "asyncio.Queue[Any]" = asyncio.Queue()

        class AEcho(AsyncPyStrandsClient):
            async def on_message(self, message: Any, context: Any) -> None:
                await received.put(message)
                await self.send_private_message(context.client_id, "echo:" + message)

        client = AEcho("127.0.0.1", broker.tcp_port, reconnect_delay=0.05)
        assert await client.connect()
        # The reconnect waits until the test has sent while disconnected (a
        # delay alone would race a busy machine).
        released = asyncio.Event()
        real_open = client._open

        async def open_when_released(reconnect: bool = False) -> Any:
            await asyncio.wait_for(released.wait(), TIMEOUT)
            return await real_open(reconnect)

        monkeypatch.setattr(client, "_open", open_when_released)
        try:
            async with connect(broker.ws_url("/aq"), open_timeout=TIMEOUT) as ws:
                await ws.send("first")
                assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "echo:first"
                assert client._conn is not None and client._conn.transport is not None
                client._conn.transport.abort()  # the link drops
                await asyncio.get_running_loop().run_in_executor(
                    None, broker.wait_log, DISCONNECTED_LOG
                )
                for i in range(20):
                    await ws.send(f"queued-{i}")
                assert not client.connected
                released.set()
                for i in range(20):
                    assert await asyncio.wait_for(ws.recv(), TIMEOUT) == f"echo:queued-{i}"
            got = [received.get_nowait() for _ in range(21)]
            assert got == ["first"] + [f"queued-{i}" for i in range(20)]

            # and a broker restart
            client.reconnect_delay = 0.05
            await asyncio.get_running_loop().run_in_executor(None, broker.restart)
            deadline = asyncio.get_running_loop().time() + TIMEOUT
            while True:  # wait out the reconnect (no event to await from outside)
                try:
                    async with connect(broker.ws_url("/again"), open_timeout=TIMEOUT) as ws:
                        await ws.send("again")
                        assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "echo:again"
                        break
                except Exception as exc:  # 503 until the backend is back
                    if "503" not in str(exc) or asyncio.get_running_loop().time() > deadline:
                        raise
                    await asyncio.sleep(0.05)
        finally:
            await client.disconnect()

    asyncio.run(asyncio.wait_for(main(), 60))
