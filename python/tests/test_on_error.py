"""``on_error(error)`` with one argument, as the original README wrote it,
works as well as ``on_error(error, context)``: in a sync subclass, an asyncio
subclass (plain and async) and the app's decorator.

The broker answers a line it cannot use with an ``error`` event (no context);
the tests write such a line themselves.
"""

from __future__ import annotations

import asyncio
from typing import Any, List

from conftest import TIMEOUT, Broker, Events
from pystrands import AsyncPyStrandsClient, Context, PyStrands, PyStrandsClient

BAD_LINE = b'{"action":"no_such_action","request_id":"bad-1","params":{}}\n'


def test_sync_one_and_two_arguments(broker: Broker, clients: List[Any], events: Events) -> None:
    class One(PyStrandsClient):
        def on_error(self, error: Any) -> None:  # type: ignore[override]
            events.put("one", error)

    class Two(PyStrandsClient):
        def on_error(self, error: str, context: Context) -> None:
            events.put("two", error, context)

    for kind in (One, Two):
        client = kind("127.0.0.1", broker.tcp_port)
        clients.append(client)
        assert client.connect()
        client._send(BAD_LINE)
    _, error = events.get("one")
    assert "no_such_action" in error
    _, error, context = events.get("two")
    assert "no_such_action" in error and context == Context()


def test_async_client_and_app_one_and_two_arguments(broker: Broker) -> None:
    async def main() -> None:
        got: "asyncio.Queue[Any]" = asyncio.Queue()

        class OnePlain(AsyncPyStrandsClient):
            def on_error(self, error: Any) -> None:  # type: ignore[override]
                got.put_nowait(("plain", error))

        class OneAsync(AsyncPyStrandsClient):
            async def on_error(self, error: Any) -> None:  # type: ignore[override]
                await got.put(("async", error))

        app_one = PyStrands("127.0.0.1", broker.tcp_port)

        @app_one.on_error
        def only_error(error: str) -> None:
            got.put_nowait(("app", error))

        app_two = PyStrands("127.0.0.1", broker.tcp_port)

        @app_two.on_error
        async def with_context(error: str, context: Context) -> None:
            await got.put(("app2", error, context))

        apis: List[Any] = [OnePlain("127.0.0.1", broker.tcp_port), OneAsync("127.0.0.1", broker.tcp_port), app_one, app_two]
        for api in apis:
            assert await api.connect()
            client = api.client if isinstance(api, PyStrands) else api
            client._write(BAD_LINE)
        try:
            seen = {}
            for _ in apis:
                item = await asyncio.wait_for(got.get(), TIMEOUT)
                seen[item[0]] = item[1:]
            assert set(seen) == {"plain", "async", "app", "app2"}
            assert all("no_such_action" in value[0] for value in seen.values())
            assert seen["app2"][1] == Context()
        finally:
            for api in apis:
                await api.disconnect()

    asyncio.run(asyncio.wait_for(main(), 60))
