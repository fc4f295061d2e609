"""Protocol 1.1: several rooms per connection (join/leave, rooms at accept),
``exclude``, ``set_metadata`` and the new context fields, with the real broker
and real WebSocket clients.

Absence of a frame is shown without waiting: after the operation under test
each WebSocket is sent a marker, and the next frame it receives must be the
expected one (a connection receives frames in the order the backend sent them).
"""

from __future__ import annotations

import asyncio
from contextlib import ExitStack
from typing import Any

from conftest import TIMEOUT, Broker, Events, TabBackend, next_frames, open_tab
from pystrands import AsyncPyStrandsClient, PyStrands


def test_connections_have_ids_and_rooms(broker: Broker, tab_backend: TabBackend, events: Events) -> None:
    with ExitStack() as stack:
        _, a1 = open_tab(stack, broker, events, "/lobby", "ada")
        _, a2 = open_tab(stack, broker, events, "/lobby", "ada", X_Join="ops,news")
        assert a1.connection_id and a2.connection_id and a1.connection_id != a2.connection_id
        assert (a1.room_id, a1.rooms) == ("lobby", ["lobby"])
        assert (a2.room_id, a2.rooms) == ("lobby", ["lobby", "ops", "news"])


def test_rooms_joined_at_accept_get_room_messages(broker: Broker, tab_backend: TabBackend, events: Events) -> None:
    with ExitStack() as stack:
        ws, _ = open_tab(stack, broker, events, "/lobby", "ada", X_Join="news")
        other, _ = open_tab(stack, broker, events, "/lobby", "bob")
        tab_backend.send_room_message("news", "headline")
        tab_backend.broadcast_message("marker")
        assert next_frames(ws, 2) == ["headline", "marker"]
        assert next_frames(other, 1) == ["marker"]


def test_join_by_client_id_reaches_every_tab_by_connection_id_one(broker: Broker, tab_backend: TabBackend, events: Events) -> None:
    with ExitStack() as stack:
        a1, _ = open_tab(stack, broker, events, "/lobby", "ada")
        a2, _ = open_tab(stack, broker, events, "/lobby", "ada")
        b1, cb1 = open_tab(stack, broker, events, "/lobby", "bob")
        c1, _ = open_tab(stack, broker, events, "/lobby", "cy")
        tab_backend.join_room("ops", client_id="ada")
        tab_backend.join_room("ops", connection_id=cb1.connection_id)
        tab_backend.send_room_message("ops", "to ops")
        tab_backend.broadcast_message("marker")
        for ws in (a1, a2, b1):
            assert next_frames(ws, 2) == ["to ops", "marker"]
        assert next_frames(c1, 1) == ["marker"]
        # The events of a joined connection list its rooms in join order;
        # room_id stays the room of the accept.
        a2.send("hello")
        _, _, ctx = events.get("message")
        assert (ctx.room_id, ctx.rooms) == ("lobby", ["lobby", "ops"])


def test_a_connection_in_two_rooms_gets_each_room_message_once(broker: Broker, tab_backend: TabBackend, events: Events) -> None:
    with ExitStack() as stack:
        ws, ctx = open_tab(stack, broker, events, "/lobby", "ada", X_Join="ops")
        tab_backend.join_room("ops", connection_id=ctx.connection_id)  # joining twice: a no-op
        tab_backend.join_room("lobby", client_id="ada")
        tab_backend.send_room_message("ops", "one")
        tab_backend.send_room_message("lobby", "two")
        tab_backend.broadcast_message("marker")
        assert next_frames(ws, 3) == ["one", "two", "marker"]


def test_leave_stops_delivery_by_connection_id_and_by_client_id(broker: Broker, tab_backend: TabBackend, events: Events) -> None:
    with ExitStack() as stack:
        a1, _ = open_tab(stack, broker, events, "/lobby", "ada", X_Join="ops")
        a2, ca2 = open_tab(stack, broker, events, "/lobby", "ada", X_Join="ops")
        b1, _ = open_tab(stack, broker, events, "/lobby", "bob", X_Join="ops")
        tab_backend.leave_room("ops", connection_id=ca2.connection_id)
        tab_backend.send_room_message("ops", "ops 1")
        tab_backend.broadcast_message("marker 1")
        assert next_frames(a1, 2) == ["ops 1", "marker 1"]
        assert next_frames(a2, 1) == ["marker 1"]
        assert next_frames(b1, 2) == ["ops 1", "marker 1"]
        tab_backend.leave_room("ops", client_id="bob")
        tab_backend.leave_room("lobby", client_id="ada")  # the room of the accept too
        tab_backend.send_room_message("ops", "ops 2")
        tab_backend.send_room_message("lobby", "lobby 2")
        tab_backend.broadcast_message("marker 2")
        assert next_frames(a1, 2) == ["ops 2", "marker 2"]
        assert next_frames(a2, 1) == ["marker 2"]
        assert next_frames(b1, 2) == ["lobby 2", "marker 2"]
        a1.send("where am I")
        _, _, ctx = events.get("message")
        assert (ctx.room_id, ctx.rooms) == ("lobby", ["ops"])


def test_a_connection_in_no_room_stays_open_and_gets_private_messages(broker: Broker, tab_backend: TabBackend, events: Events) -> None:
    with ExitStack() as stack:
        ws, ctx = open_tab(stack, broker, events, "/lobby", "ada")
        tab_backend.leave_room("lobby", connection_id=ctx.connection_id)
        tab_backend.send_room_message("lobby", "not for you")
        tab_backend.send_private_message("ada", "private")
        tab_backend.send_connection_message(ctx.connection_id, "to this tab")
        tab_backend.broadcast_message("everyone")
        assert next_frames(ws, 3) == ["private", "to this tab", "everyone"]
        ws.send("still here")
        _, message, later = events.get("message")
        assert message == "still here" and later.rooms == [] and later.room_id == "lobby"


def test_exclude_skips_exactly_the_named_tab(broker: Broker, tab_backend: TabBackend, events: Events) -> None:
    with ExitStack() as stack:
        a1, ca1 = open_tab(stack, broker, events, "/lobby", "ada")
        a2, ca2 = open_tab(stack, broker, events, "/lobby", "ada")
        b1, cb1 = open_tab(stack, broker, events, "/lobby", "bob")
        tab_backend.send_room_message("lobby", "not to ada's first tab", exclude=[ca1.connection_id])
        everyone = [ca1.connection_id, "no-such-id", cb1.connection_id, ca2.connection_id]
        tab_backend.send_room_message("lobby", "to nobody", exclude=everyone)
        tab_backend.send_room_message("lobby", b"\x00binary", exclude={cb1.connection_id})
        tab_backend.broadcast_message("marker")
        assert next_frames(a1, 2) == [b"\x00binary", "marker"]
        assert next_frames(a2, 3) == ["not to ada's first tab", b"\x00binary", "marker"]
        assert next_frames(b1, 2) == ["not to ada's first tab", "marker"]


def test_set_metadata_by_client_id_and_by_connection_id(broker: Broker, tab_backend: TabBackend, events: Events) -> None:
    with ExitStack() as stack:
        a1, _ = open_tab(stack, broker, events, "/lobby", "ada")
        a2, ca2 = open_tab(stack, broker, events, "/lobby", "ada")
        b1, _ = open_tab(stack, broker, events, "/lobby", "bob")
        tab_backend.set_metadata({"name": "Ada", "level": 1}, client_id="ada")
        tab_backend.set_metadata({"name": "Ada", "level": 2}, connection_id=ca2.connection_id)
        seen = {}
        for ws, label in ((a1, "a1"), (a2, "a2"), (b1, "b1")):
            ws.send(label)
            _, message, ctx = events.get("message")
            seen[message] = ctx.metadata
        assert seen == {"a1": {"name": "Ada", "level": 1}, "a2": {"name": "Ada", "level": 2}, "b1": {}}
    # and the disconnected events carry it too
    metadata = [events.get("disconnected")[1].metadata for _ in range(3)]
    assert sorted(metadata, key=lambda m: m.get("level", 0)) == [
        {},
        {"name": "Ada", "level": 1},
        {"name": "Ada", "level": 2},
    ]


def test_room_commands_from_the_asyncio_client_and_the_app(broker: Broker) -> None:
    async def main() -> None:
        from websockets.asyncio.client import connect

        contexts: "asyncio.Queue[Any]" = asyncio.Queue()

        class Backend(AsyncPyStrandsClient):
            async def on_connection_request(self, request: Any) -> None:
                request.context.client_id = request.header("X-User") or "anon"
                request.context.room_id = "lobby"

            async def on_new_connection(self, context: Any) -> None:
                contexts.put_nowait(context)

        client = Backend("127.0.0.1", broker.tcp_port, reply_timeout=TIMEOUT)
        app = PyStrands("127.0.0.1", broker.tcp_port, reply_timeout=TIMEOUT)
        assert await client.connect()
        try:
            async with connect(broker.ws_url("/"), additional_headers={"X-User": "ada"}, open_timeout=TIMEOUT) as a, \
                    connect(broker.ws_url("/"), additional_headers={"X-User": "bob"}, open_timeout=TIMEOUT) as b:
                ca = await asyncio.wait_for(contexts.get(), TIMEOUT)
                await asyncio.wait_for(contexts.get(), TIMEOUT)
                assert await client.join_room("ops", client_id="ada", ack=True) == 1
                await client.send_room_message("ops", "via client", exclude=())
                assert await asyncio.wait_for(a.recv(), TIMEOUT) == "via client"
                assert await app.connect()
                await app.join_room("ops", client_id="bob")
                await app.leave_room("ops", connection_id=ca.connection_id)
                assert await app.send_room_message("ops", "via app", ack=True) == 1
                await app.broadcast("marker")
                assert await asyncio.wait_for(b.recv(), TIMEOUT) == "via app"
                assert await asyncio.wait_for(a.recv(), TIMEOUT) == "marker"
                assert await asyncio.wait_for(b.recv(), TIMEOUT) == "marker"
        finally:
            await client.disconnect()
            await app.disconnect()

    asyncio.run(asyncio.wait_for(main(), 60))
