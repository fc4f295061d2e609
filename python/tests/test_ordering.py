"""10,000 messages keep their order, in both directions, through the real broker."""

from __future__ import annotations

import asyncio
import threading
from typing import Any, List

from websockets.sync.client import connect as ws_connect

from conftest import TIMEOUT, Broker, Events
from pystrands import AsyncPyStrandsClient, PyStrandsClient

N = 10_000


class Echo(PyStrandsClient):
    def __init__(self, events: Events, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.events = events
        self.seen: List[str] = []

    def on_message(self, message: Any, context: Any) -> None:
        self.seen.append(message)
        self.send_private_message(context.client_id, message)
        if len(self.seen) == N:
            self.events.put("all-seen")


def _pipelined_echo(url: str) -> Any:
    """Send N numbered messages from one thread while reading echoes on another."""
    with ws_connect(url, open_timeout=TIMEOUT) as ws:
        def sender() -> None:
            for i in range(N):
                ws.send(str(i))

        t = threading.Thread(target=sender, daemon=True)
        t.start()
        got = [ws.recv(timeout=TIMEOUT) for _ in range(N)]
        t.join(TIMEOUT)
    return got


def test_sync_10000_echoes_in_order(broker: Broker, clients: List[Any], events: Events) -> None:
    client = Echo(events, host="127.0.0.1", port=broker.tcp_port)
    clients.append(client)
    assert client.connect()
    got = _pipelined_echo(broker.ws_url("/order"))
    events.get("all-seen")
    assert client.seen == [str(i) for i in range(N)]
    assert got == [str(i) for i in range(N)]


def test_sync_10000_room_messages_in_order(broker: Broker, clients: List[Any], events: Events) -> None:
    client = PyStrandsClient("127.0.0.1", broker.tcp_port)
    clients.append(client)
    assert client.connect()
    with ws_connect(broker.ws_url("/room"), open_timeout=TIMEOUT) as ws:
        def sender() -> None:
            for i in range(N):
                client.send_room_message("/room", f"m{i}")

        t = threading.Thread(target=sender, daemon=True)
        t.start()
        got = [ws.recv(timeout=TIMEOUT) for _ in range(N)]
        t.join(TIMEOUT)
    assert got == [f"m{i}" for i in range(N)]


def test_async_10000_echoes_in_order(broker: Broker) -> None:
    async def main() -> None:
        seen = []

        class AEcho(AsyncPyStrandsClient):
            async def on_message(self, message: Any, context: Any) -> None:
                seen.append(message)
                await self.send_private_message(context.client_id, message)

        client = AEcho("127.0.0.1", broker.tcp_port)
        assert await client.connect()
        try:
            loop = asyncio.get_running_loop()
            got = await loop.run_in_executor(None, _pipelined_echo, broker.ws_url("/aorder"))
        finally:
            await client.disconnect()
        assert seen == [str(i) for i in range(N)]
        assert got == [str(i) for i in range(N)]

    asyncio.run(asyncio.wait_for(main(), 120))
