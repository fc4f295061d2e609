"""Every log line of the clients names the broker's address, and a failed
reconnect is a WARNING in both clients. One scenario walks through most of
what a client logs: connecting, a rejected connection request, a failing
handler, an error from the broker, the broker going away, failed and
successful reconnects, and the disconnect."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, List

import pytest
from websockets.sync.client import connect as ws_connect

from conftest import TIMEOUT, Broker, http_status_of, wait_for
from pystrands import AsyncPyStrandsClient, ConnectionRequestContext, Context, PyStrandsClient

BAD_LINE = b'{"action":"no_such_action","request_id":"bad-1","params":{}}\n'
#: A quick reconnect schedule.
DELAY, MAX_DELAY = 0.05, 0.1


def provoke(broker: Broker) -> None:
    """A connection request that the handler fails on, and a message whose
    handler fails."""
    with pytest.raises(Exception) as info:
        with ws_connect(broker.ws_url("/refuse"), open_timeout=TIMEOUT):
            pass
    assert http_status_of(info.value) == 403
    with ws_connect(broker.ws_url("/ok"), open_timeout=TIMEOUT) as ws:
        ws.send("boom")
        ws.send("ping")
        assert ws.recv(timeout=TIMEOUT) == "pong"


def failed_reconnects(caplog: pytest.LogCaptureFixture) -> List[logging.LogRecord]:
    return [r for r in caplog.records if "reconnect to the broker at" in r.getMessage()]


def check(caplog: pytest.LogCaptureFixture, broker: Broker) -> None:
    address = f"127.0.0.1:{broker.tcp_port}"
    records = [r for r in caplog.records if r.name.startswith("pystrands")]
    assert len(records) >= 8
    without = [r.getMessage() for r in records if address not in r.getMessage()]
    assert not without, without
    assert all(r.levelno == logging.WARNING for r in failed_reconnects(caplog))
    for text in ("on_connection_request failed", "on_message raised", "reported an error",
                 "lost", "reconnected", "disconnected"):
        assert any(text in r.getMessage() for r in records), text


def test_sync_client(broker: Broker, clients: List[Any], caplog: pytest.LogCaptureFixture) -> None:
    class Noisy(PyStrandsClient):
        def on_connection_request(self, request: ConnectionRequestContext) -> bool:
            if request.url == "/refuse":
                raise PermissionError("no")
            return True

        def on_message(self, message: Any, context: Context) -> None:
            if message == "boom":
                raise ValueError("handler failure")
            self.send_private_message(context.client_id, "pong")

    client = Noisy("127.0.0.1", broker.tcp_port, reconnect_delay=DELAY, max_reconnect_delay=MAX_DELAY)
    clients.append(client)
    with caplog.at_level(logging.DEBUG, logger="pystrands"):
        assert client.connect()
        provoke(broker)
        client._send(BAD_LINE)
        wait_for(lambda: any("reported an error" in r.getMessage() for r in caplog.records), what="the error")
        broker.stop()
        wait_for(lambda: failed_reconnects(caplog), what="a failed reconnect")
        broker.start(broker.ws_port, broker.tcp_port)
        wait_for(lambda: client.connected and any("reconnected" in r.getMessage() for r in caplog.records),
                 what="the reconnect")
        client.disconnect()
    check(caplog, broker)


def test_async_client(broker: Broker, caplog: pytest.LogCaptureFixture) -> None:
    class Noisy(AsyncPyStrandsClient):
        async def on_connection_request(self, request: ConnectionRequestContext) -> bool:
            if request.url == "/refuse":
                raise PermissionError("no")
            return True

        async def on_message(self, message: Any, context: Context) -> None:
            if message == "boom":
                raise ValueError("handler failure")
            await self.send_private_message(context.client_id, "pong")

    async def until(predicate: Any) -> None:
        for _ in range(int(TIMEOUT / 0.01)):
            if predicate():
                return
            await asyncio.sleep(0.01)
        raise AssertionError("timed out")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        client = Noisy("127.0.0.1", broker.tcp_port, reconnect_delay=DELAY, max_reconnect_delay=MAX_DELAY)
        assert await client.connect()
        serving = asyncio.ensure_future(client.run_forever(handle_signals=False))
        await loop.run_in_executor(None, provoke, broker)
        client._write(BAD_LINE)
        await until(lambda: any("reported an error" in r.getMessage() for r in caplog.records))
        await loop.run_in_executor(None, broker.stop)
        await until(lambda: failed_reconnects(caplog))
        await loop.run_in_executor(None, broker.start, broker.ws_port, broker.tcp_port)
        await until(lambda: client.connected and any("reconnected" in r.getMessage() for r in caplog.records))
        await client.disconnect()
        await asyncio.wait_for(serving, TIMEOUT)

    with caplog.at_level(logging.DEBUG, logger="pystrands"):
        asyncio.run(asyncio.wait_for(main(), 60))
    check(caplog, broker)
