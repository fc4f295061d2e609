"""AsyncPyStrandsClient against the real broker: assignment, rejection, rooms,
private, broadcast, disconnect, sync and async callbacks, lifecycle."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from websockets.asyncio.client import connect

from conftest import TIMEOUT, Broker, http_status_of
from pystrands import AsyncPyStrandsClient


def run(coro: Any, timeout: Any=60) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def next_of(q: "asyncio.Queue[Any]", kind: str) -> Any:
    while True:
        item = await asyncio.wait_for(q.get(), TIMEOUT)
        if item[0] == kind:
            return item


async def refused_status(url: str) -> Any:
    with pytest.raises(Exception) as info:
        async with connect(url, open_timeout=TIMEOUT):
            pass
    status = http_status_of(info.value)
    assert status is not None, repr(info.value)
    return status


class SeedAsync(AsyncPyStrandsClient):
    """The README seed, written for asyncio (async callbacks)."""

    def __init__(self, log: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.log = log

    async def on_connection_request(self, request: Any) -> None:
        request.context.room_id = "new_room"
        request.context.client_id = "new_client_id"
        request.context.metadata = {"name": "John Doe"}
        request.accepted = True

    async def on_connect(self, context: Any) -> None:
        await self.log.put(("connect", context))
        await self.send_private_message(
            context.client_id, f"Welcome to the room! {context.metadata.get('name')}"
        )

    async def on_message(self, message: Any, context: Any) -> None:
        await self.log.put(("message", message, context.context.client_id, context.context.room_id))

    async def on_disconnect(self, context: Any) -> None:
        await self.log.put(("disconnect", context.context.client_id))


def test_async_seed_flow(broker: Broker) -> None:
    async def main() -> None:
        log: "asyncio.Queue[Any]" = asyncio.Queue()
        client = SeedAsync(log, "127.0.0.1", broker.tcp_port)
        assert await client.connect()
        await client.broadcast_message("Hello everyone!")
        await client.send_room_message("room1", "Hello room!")
        await client.send_private_message("client123", "Private message!")
        conn_before = client._conn
        runner = asyncio.ensure_future(client.run_forever())
        try:
            async with connect(broker.ws_url("/ws/room1"), open_timeout=TIMEOUT) as ws:
                assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "Welcome to the room! John Doe"
                _, ctx = await next_of(log, "connect")
                assert (ctx.client_id, ctx.room_id, ctx.metadata) == ("new_client_id", "new_room", {"name": "John Doe"})
                await client.send_room_message("new_room", "room hello")
                assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "room hello"
                await client.broadcast_message("everyone")
                assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "everyone"
                await ws.send("héllo 🎉")
                assert await next_of(log, "message") == ("message", "héllo 🎉", "new_client_id", "new_room")
            assert await next_of(log, "disconnect") == ("disconnect", "new_client_id")
            assert client._conn is conn_before  # run_forever reused the connection
        finally:
            await client.disconnect()
            await asyncio.wait_for(runner, TIMEOUT)
        assert runner.done() and runner.exception() is None

    run(main())


class Deciding(AsyncPyStrandsClient):
    def __init__(self, how: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.how = how

    async def on_connection_request(self, request: Any) -> Any:
        if self.how == "return":
            return False
        if self.how == "attribute":
            request.accepted = False
            return None
        raise RuntimeError("async rejection")


@pytest.mark.parametrize("how", ["return", "attribute", "exception"])
def test_async_rejections_give_403(broker: Broker, how: Any, caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        client = Deciding(how, "127.0.0.1", broker.tcp_port)
        assert await client.connect()
        try:
            with caplog.at_level(logging.ERROR, logger="pystrands"):
                assert await refused_status(broker.ws_url("/x")) == 403
        finally:
            await client.disconnect()

    run(main())
    if how == "exception":
        assert any(r.exc_info for r in caplog.records if "on_connection_request" in r.getMessage())


class SyncCallbacks(AsyncPyStrandsClient):
    """Plain (non-async) callbacks are accepted by the asyncio client too."""

    def __init__(self, log: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.log = log

    def on_connection_request(self, request: Any) -> Any:
        if request.url == "/no":
            return False
        request.context.room_id = "sync-room"

    def on_new_connection(self, context: Any) -> None:  # the 1.0.0 name
        self.log.put_nowait(("connected", context.room_id))

    def on_message(self, message: Any, context: Any) -> None:
        self.log.put_nowait(("message", message))
        asyncio.ensure_future(self.send_private_message(context.client_id, message.upper()))

    def on_disconnect(self, context: Any) -> None:
        self.log.put_nowait(("disconnected", context.room_id))


def test_async_client_with_sync_callbacks(broker: Broker) -> None:
    async def main() -> None:
        log: "asyncio.Queue[Any]" = asyncio.Queue()
        client = SyncCallbacks(log, "127.0.0.1", broker.tcp_port)
        assert await client.connect()
        try:
            assert await refused_status(broker.ws_url("/no")) == 403
            async with connect(broker.ws_url("/yes"), open_timeout=TIMEOUT) as ws:
                assert await next_of(log, "connected") == ("connected", "sync-room")
                await ws.send("shout")
                assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "SHOUT"
            assert await next_of(log, "disconnected") == ("disconnected", "sync-room")
        finally:
            await client.disconnect()

    run(main())


def test_async_handler_exception_is_logged_and_the_client_goes_on(broker: Broker, caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        class Flaky(AsyncPyStrandsClient):
            async def on_message(self, message: Any, context: Any) -> None:
                if message == "boom":
                    raise ValueError("handler failure")
                await self.send_private_message(context.client_id, "ok:" + message)

        client = Flaky("127.0.0.1", broker.tcp_port)
        assert await client.connect()
        try:
            async with connect(broker.ws_url("/f"), open_timeout=TIMEOUT) as ws:
                await ws.send("boom")
                await ws.send("fine")
                assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "ok:fine"
        finally:
            await client.disconnect()

    with caplog.at_level(logging.ERROR, logger="pystrands"):
        run(main())
    assert any(r.exc_info and "handler failure" in str(r.exc_info[1]) for r in caplog.records)


def test_async_disconnect_from_inside_a_handler(broker: Broker) -> None:
    async def main() -> None:
        class Quitter(AsyncPyStrandsClient):
            async def on_message(self, message: Any, context: Any) -> None:
                await self.send_private_message(context.client_id, "bye")
                await self.disconnect()

        client = Quitter("127.0.0.1", broker.tcp_port)
        runner = asyncio.ensure_future(client.run_forever())
        while not client.connected:
            await asyncio.sleep(0.01)
        async with connect(broker.ws_url("/q"), open_timeout=TIMEOUT) as ws:
            await ws.send("quit")
            assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "bye"
        await asyncio.wait_for(runner, TIMEOUT)  # run_forever returned
        assert not client.connected

    run(main())


def test_async_cancelling_run_forever_disconnects(broker: Broker) -> None:
    async def main() -> None:
        client = AsyncPyStrandsClient("127.0.0.1", broker.tcp_port)
        runner = asyncio.ensure_future(client.run_forever())
        while not client.connected:
            await asyncio.sleep(0.01)
        runner.cancel()
        with pytest.raises(asyncio.CancelledError):
            await runner
        assert not client.connected

    run(main())
