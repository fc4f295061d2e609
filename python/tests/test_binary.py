"""Binary WebSocket messages (wire extension: base64 + "binary": true):
on_message receives bytes, and every send method sends bytes as a binary frame."""

from __future__ import annotations

import asyncio
import os
from typing import Any, List

from websockets.asyncio.client import connect
from websockets.sync.client import connect as ws_connect

from conftest import TIMEOUT, Broker, Events
from pystrands import AsyncPyStrandsClient, PyStrands, PyStrandsClient

PAYLOADS = [b"\x00\x01\x02\xff", bytes(range(256)), os.urandom(70_000), b""]


class BinaryEcho(PyStrandsClient):
    def __init__(self, events: Events, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.events = events

    def on_message(self, message: Any, context: Any) -> None:
        self.events.put("message", type(message), message)
        self.send_private_message(context.client_id, message)


def test_sync_binary_round_trip_and_fanout(broker: Broker, clients: List[Any], events: Events) -> None:
    client = BinaryEcho(events, host="127.0.0.1", port=broker.tcp_port)
    clients.append(client)
    assert client.connect()
    with ws_connect(broker.ws_url("/bin"), open_timeout=TIMEOUT) as ws:
        for payload in PAYLOADS:
            ws.send(payload)
            assert events.get("message") == ("message", bytes, payload)
            echoed = ws.recv(timeout=TIMEOUT)
            assert isinstance(echoed, bytes) and echoed == payload
        ws.send("text stays text")
        assert events.get("message") == ("message", str, "text stays text")
        assert ws.recv(timeout=TIMEOUT) == "text stays text"
        client.send_room_message("/bin", bytearray(b"room\x00"))
        assert ws.recv(timeout=TIMEOUT) == b"room\x00"
        client.broadcast_message(memoryview(b"all\xff"))
        assert ws.recv(timeout=TIMEOUT) == b"all\xff"


def test_async_and_app_binary(broker: Broker) -> None:
    async def main() -> None:
        class AEcho(AsyncPyStrandsClient):
            async def on_message(self, message: Any, context: Any) -> None:
                await self.send_private_message(context.client_id, message[::-1])

        client = AEcho("127.0.0.1", broker.tcp_port)
        assert await client.connect()
        try:
            async with connect(broker.ws_url("/a"), open_timeout=TIMEOUT) as ws:
                await ws.send(b"\x01\x02\x03")
                assert await asyncio.wait_for(ws.recv(), TIMEOUT) == b"\x03\x02\x01"
        finally:
            await client.disconnect()

        app = PyStrands("127.0.0.1", broker.tcp_port)

        @app.on_message
        def on_message(message: Any, context: Any) -> None:
            app.broadcast(message + b"!")

        assert await app.connect()
        try:
            async with connect(broker.ws_url("/b"), open_timeout=TIMEOUT) as ws:
                await ws.send(b"\xfe")
                assert await asyncio.wait_for(ws.recv(), TIMEOUT) == b"\xfe!"
        finally:
            await app.disconnect()

    asyncio.run(asyncio.wait_for(main(), 60))
