"""Protocol 1.1: ``presence`` and ``presence_stats`` are exact after joins,
leaves and disconnects, in every API, and work from inside a sync handler."""

from __future__ import annotations

import asyncio
from contextlib import ExitStack
from typing import Any

from conftest import TIMEOUT, Broker, Events, TabBackend, next_frames, open_tab
from pystrands import AsyncPyStrandsClient, PresenceEntry, PresenceStats, PyStrands


def snapshot(entries: Any) -> Any:
    """Presence as {client_id: (metadata, sorted connection ids)}: the order
    of entries and of connections is not part of the contract."""
    assert all(isinstance(e, PresenceEntry) for e in entries)
    assert len({e.client_id for e in entries}) == len(entries), "one entry per client"
    return {e.client_id: (e.metadata, sorted(e.connections)) for e in entries}


def test_presence_is_exact_after_joins_leaves_and_disconnects(broker: Broker, tab_backend: TabBackend, events: Events) -> None:
    b = tab_backend
    assert b.presence("lobby") == []
    assert b.presence_stats("lobby") == PresenceStats(clients=0, connections=0)
    with ExitStack() as outer:
        _, a1 = open_tab(outer, broker, events, "/lobby", "ada")
        _, b1 = open_tab(outer, broker, events, "/kitchen", "bob")
        with ExitStack() as inner:
            _, a2 = open_tab(inner, broker, events, "/lobby", "ada")
            assert snapshot(b.presence("lobby")) == {"ada": ({}, sorted([a1.connection_id, a2.connection_id]))}
            assert b.presence_stats("lobby") == (1, 2)

            b.join_room("lobby", client_id="bob")
            b.set_metadata({"name": "Bob"}, client_id="bob")
            assert snapshot(b.presence("lobby")) == {
                "ada": ({}, sorted([a1.connection_id, a2.connection_id])),
                "bob": ({"name": "Bob"}, [b1.connection_id]),
            }
            assert b.presence_stats("lobby") == PresenceStats(clients=2, connections=3)
            assert snapshot(b.presence("kitchen")) == {"bob": ({"name": "Bob"}, [b1.connection_id])}

            b.leave_room("lobby", connection_id=a1.connection_id)
            assert snapshot(b.presence("lobby")) == {
                "ada": ({}, [a2.connection_id]),
                "bob": ({"name": "Bob"}, [b1.connection_id]),
            }
        # a2 closed: once the backend heard of it, presence no longer has it
        _, gone = events.get("disconnected")
        assert gone.connection_id == a2.connection_id
        assert snapshot(b.presence("lobby")) == {"bob": ({"name": "Bob"}, [b1.connection_id])}
        assert b.presence_stats("lobby") == (1, 1)
        b.disconnect_client(client_id="bob")
        events.get("disconnected")
        assert b.presence("lobby") == [] and b.presence_stats("kitchen") == (0, 0)


def test_presence_from_inside_a_sync_handler(broker: Broker, tab_backend: TabBackend, events: Events) -> None:
    """TabBackend answers "who?" with presence(), called inside on_message."""
    tab_backend.takeover_after = 3600.0  # no watchdog: the handler's own reading must do
    with ExitStack() as stack:
        ws, _ = open_tab(stack, broker, events, "/lobby", "ada")
        open_tab(stack, broker, events, "/lobby", "bob")
        open_tab(stack, broker, events, "/kitchen", "cy")
        ws.send("who?")
        assert next_frames(ws, 1) == ["here:ada,bob"]


def test_presence_from_the_asyncio_client_and_the_app(broker: Broker) -> None:
    async def main() -> None:
        from websockets.asyncio.client import connect

        connections = {}

        class Backend(AsyncPyStrandsClient):
            async def on_connection_request(self, request: Any) -> None:
                request.context.client_id = request.header("X-User") or "anon"
                request.context.metadata = {"user": request.context.client_id}
                request.context.room_id = "lobby"

            async def on_new_connection(self, context: Any) -> None:
                connections[context.client_id] = context.connection_id

            async def on_message(self, message: Any, context: Any) -> None:
                entries = await self.presence(context.room_id)  # awaited inside a handler
                await self.send_connection_message(context.connection_id, str(len(entries)))

        client = Backend("127.0.0.1", broker.tcp_port, reply_timeout=TIMEOUT)
        app = PyStrands("127.0.0.1", broker.tcp_port, reply_timeout=TIMEOUT)
        assert await client.connect()
        try:
            async with connect(broker.ws_url("/"), additional_headers={"X-User": "ada"}, open_timeout=TIMEOUT) as a, \
                    connect(broker.ws_url("/"), additional_headers={"X-User": "bob"}, open_timeout=TIMEOUT):
                await a.send("count")  # handled after both new_connection events
                assert await asyncio.wait_for(a.recv(), TIMEOUT) == "2"
                entries = await client.presence("lobby")
                assert snapshot(entries) == {
                    "ada": ({"user": "ada"}, [connections["ada"]]),
                    "bob": ({"user": "bob"}, [connections["bob"]]),
                }
                assert await app.connect()
                assert await app.presence_stats("lobby") == PresenceStats(2, 2)
                assert snapshot(await app.presence("lobby")) == snapshot(entries)
                assert await app.presence("nowhere") == []
        finally:
            await client.disconnect()
            await app.disconnect()

    asyncio.run(asyncio.wait_for(main(), 60))


def test_presence_counts_one_client_with_many_tabs_once(broker: Broker, tab_backend: TabBackend, events: Events) -> None:
    with ExitStack() as stack:
        ids = [open_tab(stack, broker, events, "/lobby", "ada")[1].connection_id for _ in range(4)]
        (entry,) = tab_backend.presence("lobby")
        assert entry.client_id == "ada" and sorted(entry.connections) == sorted(ids)
        assert tab_backend.presence_stats("lobby") == (1, 4)
