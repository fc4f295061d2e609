"""Protocol 1.1: ``disconnect_client`` closes connections with the backend's
close code and reason, which arrive at a real WebSocket client; the backend
then gets the usual ``on_disconnect``."""

from __future__ import annotations

import asyncio
from contextlib import ExitStack
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed

from conftest import TIMEOUT, Broker, Events, TabBackend, next_frames, open_tab
from pystrands import PyStrands


def close_of(ws: Any) -> Any:
    """The close frame a WebSocket received (its next recv() ends the connection)."""
    with pytest.raises(ConnectionClosed) as info:
        ws.recv(timeout=TIMEOUT)
    assert info.value.rcvd is not None, "closed without a close frame"
    return info.value.rcvd.code, info.value.rcvd.reason


def test_kick_one_tab_with_code_and_reason(broker: Broker, tab_backend: TabBackend, events: Events) -> None:
    with ExitStack() as stack:
        a1, ca1 = open_tab(stack, broker, events, "/lobby", "ada")
        a2, _ = open_tab(stack, broker, events, "/lobby", "ada")
        tab_backend.disconnect_client(connection_id=ca1.connection_id, code=4001, reason="kicked: spam")
        assert close_of(a1) == (4001, "kicked: spam")
        _, gone = events.get("disconnected")
        assert gone.connection_id == ca1.connection_id
        tab_backend.send_private_message("ada", "the other tab stays")
        assert next_frames(a2, 1) == ["the other tab stays"]


def test_kick_every_tab_of_a_client_default_code(broker: Broker, tab_backend: TabBackend, events: Events) -> None:
    with ExitStack() as stack:
        a1, ca1 = open_tab(stack, broker, events, "/lobby", "ada")
        a2, ca2 = open_tab(stack, broker, events, "/lobby", "ada")
        b1, _ = open_tab(stack, broker, events, "/lobby", "bob")
        tab_backend.disconnect_client(client_id="ada")
        assert close_of(a1) == (1000, "")
        assert close_of(a2) == (1000, "")
        gone = {events.get("disconnected")[1].connection_id for _ in range(2)}
        assert gone == {ca1.connection_id, ca2.connection_id}
        tab_backend.broadcast_message("bob stays")
        assert next_frames(b1, 1) == ["bob stays"]


@pytest.mark.parametrize(
    "code, reason",
    [(3000, "x"), (4999, "é" * 61 + "x"), (1000, "bye 👋")],  # the second: 123 bytes of UTF-8
)
def test_codes_and_unicode_reasons_arrive_intact(broker: Broker, tab_backend: TabBackend, events: Events, code: Any, reason: Any) -> None:
    with ExitStack() as stack:
        ws, ctx = open_tab(stack, broker, events, "/lobby", "ada")
        assert tab_backend.disconnect_client(connection_id=ctx.connection_id, code=code, reason=reason, ack=True) == 1
        assert close_of(ws) == (code, reason)


def test_kick_from_the_app(broker: Broker, events: Events) -> None:
    async def main() -> None:
        from websockets.asyncio.client import connect

        app = PyStrands("127.0.0.1", broker.tcp_port, reply_timeout=TIMEOUT)
        joined: "asyncio.Queue[Any]" = asyncio.Queue()

        @app.on_new_connection
        def remember(context: Any) -> None:
            joined.put_nowait(context)

        assert await app.connect()
        try:
            async with connect(broker.ws_url("/x"), open_timeout=TIMEOUT) as ws:
                ctx = await asyncio.wait_for(joined.get(), TIMEOUT)
                await app.disconnect_client(client_id=ctx.client_id, code=4403, reason="banned")
                with pytest.raises(ConnectionClosed) as info:
                    await asyncio.wait_for(ws.recv(), TIMEOUT)
                close = info.value.rcvd
                assert close is not None and (close.code, close.reason) == (4403, "banned")
        finally:
            await app.disconnect()

    asyncio.run(asyncio.wait_for(main(), 60))
