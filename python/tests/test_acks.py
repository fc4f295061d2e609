"""Protocol 1.1: with ``ack=True`` every send and room call returns (sync) or
resolves to (asyncio) the number of connections it reached; 0 when nobody
is online."""

from __future__ import annotations

import asyncio
from contextlib import ExitStack

from conftest import TIMEOUT, Broker, Events, TabBackend, next_frames, open_tab
from pystrands import AsyncPyStrandsClient, PyStrands


def test_sync_acks_count_connections(broker: Broker, tab_backend: TabBackend, events: Events) -> None:
    b = tab_backend
    with ExitStack() as stack:
        a1, ca1 = open_tab(stack, broker, events, "/lobby", "ada")
        open_tab(stack, broker, events, "/lobby", "ada")
        open_tab(stack, broker, events, "/kitchen", "bob")
        assert b.broadcast_message("all", ack=True) == 3
        assert b.send_room_message("lobby", "lobby", ack=True) == 2
        assert b.send_room_message("lobby", "not a1", exclude=[ca1.connection_id], ack=True) == 1
        assert b.send_room_message("empty-room", "x", ack=True) == 0
        assert b.send_private_message("ada", "tabs", ack=True) == 2
        assert b.send_private_message("nobody-online", "x", ack=True) == 0
        assert b.send_connection_message(ca1.connection_id, "one tab", ack=True) == 1
        assert b.send_connection_message("no-such-connection", "x", ack=True) == 0
        assert b.join_room("ops", client_id="ada", ack=True) == 2
        assert b.join_room("ops", client_id="nobody-online", ack=True) == 0
        assert b.leave_room("ops", connection_id=ca1.connection_id, ack=True) == 1
        assert b.set_metadata({"k": 1}, client_id="bob", ack=True) == 1
        assert b.set_metadata({"k": 1}, connection_id="no-such-connection", ack=True) == 0
        assert b.disconnect_client(client_id="nobody-online", ack=True) == 0
        assert b.send_room_message("lobby", b"\x01\x02", ack=True) == 2
        # what was acked arrived, once each, in order
        assert next_frames(a1, 5) == ["all", "lobby", "tabs", "one tab", b"\x01\x02"]


def test_asyncio_and_app_acks_resolve_to_counts(broker: Broker) -> None:
    async def main() -> None:
        from websockets.asyncio.client import connect

        client = AsyncPyStrandsClient("127.0.0.1", broker.tcp_port, reply_timeout=TIMEOUT)
        app = PyStrands("127.0.0.1", broker.tcp_port, reply_timeout=TIMEOUT)
        assert await client.connect()
        try:
            async with connect(broker.ws_url("/lobby"), open_timeout=TIMEOUT) as ws:
                assert await client.send_room_message("/lobby", "hi", ack=True) == 1
                assert await client.send_private_message("nobody-online", "x", ack=True) == 0
                assert await client.broadcast_message("all") is None  # no ack: nothing to wait for
                assert await app.connect()
                pending = app.broadcast_message("from app", ack=True)  # sent at once
                assert await pending == 1
                assert await app.send_room_message("elsewhere", "x", ack=True) == 0
                assert [await asyncio.wait_for(ws.recv(), TIMEOUT) for _ in range(3)] == ["hi", "all", "from app"]
        finally:
            await client.disconnect()
            await app.disconnect()

    asyncio.run(asyncio.wait_for(main(), 60))
