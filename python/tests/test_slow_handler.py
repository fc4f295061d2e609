"""A slow on_message must not delay the answer to a connection request.

The broker runs with --connect-timeout 1: if a connection request waited for
the blocked handler, the second WebSocket would get 503 instead of 101. The
handler blocks on an Event the test releases (deterministic, no sleep), and is
held well past the broker's timeout.
"""

from __future__ import annotations

import asyncio
import threading
import time

from websockets.sync.client import connect as ws_connect

from conftest import TIMEOUT
from pystrands import AsyncPyStrandsClient, PyStrands, PyStrandsClient

HOLD = 2.0  # seconds the handler stays blocked: twice the broker's timeout


def test_sync_slow_on_message_does_not_stall_acceptance(broker_factory, clients, events):
    broker = broker_factory(connect_timeout=1.0)
    release = threading.Event()

    class Slow(PyStrandsClient):
        def on_message(self, message, context):
            events.put("handler-started", message)
            release.wait(HOLD)
            events.put("handler-done", message)

        def on_connect(self, context):
            events.put("connected", context.room_id)

    client = Slow(host="127.0.0.1", port=broker.tcp_port)
    clients.append(client)
    assert client.connect()
    with ws_connect(broker.ws_url("/first"), open_timeout=TIMEOUT) as first:
        assert events.get("connected") == ("connected", "/first")
        first.send("block")
        events.get("handler-started")
        t0 = time.monotonic()
        with ws_connect(broker.ws_url("/second"), open_timeout=TIMEOUT):
            accepted_after = time.monotonic() - t0
            # still blocked: the answer did not wait for the handler
            assert ("handler-done", "block") not in list(events.q.queue)
            release.set()
            assert events.get("handler-done") == ("handler-done", "block")
            # events stay in order: second's new_connection after the message
            assert events.get("connected") == ("connected", "/second")
    assert accepted_after < 1.0


def test_async_slow_on_message_does_not_stall_acceptance(broker_factory):
    broker = broker_factory(connect_timeout=1.0)

    async def main():
        release = asyncio.Event()
        log = asyncio.Queue()

        class Slow(AsyncPyStrandsClient):
            async def on_message(self, message, context):
                await log.put(("started", message))
                try:
                    await asyncio.wait_for(release.wait(), HOLD)
                except asyncio.TimeoutError:
                    pass
                await log.put(("done", message))

            async def on_connection_request(self, request):
                await asyncio.sleep(0)  # an async request handler, really suspending
                return True

        from websockets.asyncio.client import connect

        client = Slow("127.0.0.1", broker.tcp_port)
        assert await client.connect()
        try:
            async with connect(broker.ws_url("/first"), open_timeout=TIMEOUT) as first:
                await first.send("block")
                assert await asyncio.wait_for(log.get(), TIMEOUT) == ("started", "block")
                t0 = time.monotonic()
                async with connect(broker.ws_url("/second"), open_timeout=TIMEOUT):
                    elapsed = time.monotonic() - t0
                    assert log.empty()  # the handler is still blocked
                    release.set()
                    assert await asyncio.wait_for(log.get(), TIMEOUT) == ("done", "block")
            assert elapsed < 1.0
        finally:
            await client.disconnect()

    asyncio.run(asyncio.wait_for(main(), 30))


def test_app_slow_async_handler_does_not_stall_acceptance(broker_factory):
    broker = broker_factory(connect_timeout=1.0)

    async def main():
        from websockets.asyncio.client import connect

        app = PyStrands("127.0.0.1", broker.tcp_port)
        release = asyncio.Event()
        started = asyncio.Event()

        @app.on_message
        async def slow(message, context):
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
                t0 = time.monotonic()
                async with connect(broker.ws_url("/b"), open_timeout=TIMEOUT):
                    assert time.monotonic() - t0 < 1.0
                release.set()
        finally:
            await app.disconnect()

    asyncio.run(asyncio.wait_for(main(), 30))
