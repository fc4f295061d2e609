"""A slow on_message must not delay the answer to a connection request.

The broker runs with --connect-timeout 3: if a connection request waited for
the blocked handler, the second WebSocket would get 503 instead of 101. The
handler blocks on an Event the test releases (deterministic, no sleep), and
would otherwise be held twice the broker's timeout. (No timed assertion: a
101 is the proof, and a busy machine may take its time to deliver it.)
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Callable, List

import pytest
from websockets.sync.client import connect as ws_connect

from conftest import TIMEOUT, Broker, Events, wait_for
from pystrands import AsyncPyStrandsClient, PyStrands, PyStrandsClient

CONNECT_TIMEOUT = 3.0
HOLD = 2 * CONNECT_TIMEOUT  # the longest the handler stays blocked


@pytest.mark.parametrize("concurrency", [1, None], ids=["concurrency=1", "default"])
def test_sync_slow_on_message_does_not_stall_acceptance(broker_factory: Callable[..., Broker], clients: List[Any], events: Events, concurrency: Any) -> None:
    """With concurrency=1 every event waits its turn (the broker's order),
    but connection requests are still answered; by default the second
    client's events do not even wait for the first client's slow handler."""
    broker = broker_factory(connect_timeout=CONNECT_TIMEOUT)
    release = threading.Event()

    class Slow(PyStrandsClient):
        def on_message(self, message: Any, context: Any) -> None:
            if message == "block":
                events.put("handler-started", message)
                release.wait(HOLD)
                events.put("handler-done", message)
            else:
                events.put("message", context.room_id, message)
                self.send_private_message(context.client_id, "echo:" + message)

        def on_connect(self, context: Any) -> None:
            events.put("connected", context.room_id)

    client = Slow(host="127.0.0.1", port=broker.tcp_port, concurrency=concurrency)
    clients.append(client)
    assert client.connect()
    with ws_connect(broker.ws_url("/first"), open_timeout=TIMEOUT) as first:
        assert events.get("connected") == ("connected", "/first")
        first.send("block")
        events.get("handler-started")
        for i in range(5):  # queued behind the blocked handler, in order
            first.send(f"m{i}")
        with ws_connect(broker.ws_url("/second"), open_timeout=TIMEOUT) as second:
            second.send("from-second")
            if concurrency is None:
                # handled beside the blocked handler, before it is released
                assert second.recv(timeout=TIMEOUT) == "echo:from-second"
                assert ("handler-done", "block") not in list(events.q.queue)
            else:
                # still blocked: the answer did not wait for the handler
                assert ("handler-done", "block") not in list(events.q.queue)
            release.set()
            got: List[Any] = []
            while len(got) < 8:
                got.append(events.get())
            first_events = [g[1:] for g in got if g[0] == "message" and g[1] == "/first"]
            assert first_events == [("/first", f"m{i}") for i in range(5)]
            # the first client's events come after its slow handler returned
            done_at = got.index(("handler-done", "block"))
            assert all(got.index(("message", "/first", f"m{i}")) > done_at for i in range(5))
            # the second client's new_connection comes before its message
            assert got.index(("connected", "/second")) < got.index(("message", "/second", "from-second"))
            if concurrency == 1:
                assert got.index(("message", "/second", "from-second")) > done_at
            for i in range(5):
                assert first.recv(timeout=TIMEOUT) == f"echo:m{i}"
            if concurrency == 1:
                assert second.recv(timeout=TIMEOUT) == "echo:from-second"
            # the watchdog hands the socket back once the dispatcher caught up
            wait_for(lambda: not client._watchdog_reading, what="the hand-back to the dispatcher")
            second.send("later")
            assert second.recv(timeout=TIMEOUT) == "echo:later"


def test_async_slow_on_message_does_not_stall_acceptance(broker_factory: Callable[..., Broker]) -> None:
    broker = broker_factory(connect_timeout=CONNECT_TIMEOUT)

    async def main() -> None:
        release = asyncio.Event()
        log: "asyncio.Queue[Any]" = asyncio.Queue()

        class Slow(AsyncPyStrandsClient):
            async def on_message(self, message: Any, context: Any) -> None:
                await log.put(("started", message))
                try:
                    await asyncio.wait_for(release.wait(), HOLD)
                except asyncio.TimeoutError:
                    pass
                await log.put(("done", message))

            async def on_connection_request(self, request: Any) -> Any:
                await asyncio.sleep(0)  # an async request handler, really suspending
                return True

        from websockets.asyncio.client import connect

        client = Slow("127.0.0.1", broker.tcp_port)
        assert await client.connect()
        try:
            async with connect(broker.ws_url("/first"), open_timeout=TIMEOUT) as first:
                await first.send("block")
                assert await asyncio.wait_for(log.get(), TIMEOUT) == ("started", "block")
                async with connect(broker.ws_url("/second"), open_timeout=TIMEOUT):
                    assert log.empty()  # the handler is still blocked
                    release.set()
                    assert await asyncio.wait_for(log.get(), TIMEOUT) == ("done", "block")
        finally:
            await client.disconnect()

    asyncio.run(asyncio.wait_for(main(), 30))


def test_app_slow_async_handler_does_not_stall_acceptance(broker_factory: Callable[..., Broker]) -> None:
    broker = broker_factory(connect_timeout=CONNECT_TIMEOUT)

    async def main() -> None:
        from websockets.asyncio.client import connect

        app = PyStrands("127.0.0.1", broker.tcp_port)
        release = asyncio.Event()
        started = asyncio.Event()

        @app.on_message
        async def slow(message: Any, context: Any) -> None:
            started.set()
            try:
                await asyncio.wait_for(release.wait(), HOLD)
            except asyncio.TimeoutError:
                pass

        assert await app.connect()
        try:
            async with connect(broker.ws_url("/a"), open_timeout=TIMEOUT) as a:
                await a.send("block")
                await asyncio.wait_for(started.wait(), TIMEOUT)
                async with connect(broker.ws_url("/b"), open_timeout=TIMEOUT):
                    pass  # 101 while the handler is blocked (503 had the request waited)
                release.set()
        finally:
            await app.disconnect()

    asyncio.run(asyncio.wait_for(main(), 30))
