"""Handlers of different connections run concurrently; one connection's
handlers run one at a time, in order; ``concurrency`` bounds how many run at
once, and ``concurrency=1`` restores the broker's global order.

Each test holds one connection's handler on an event that the test sets only
after it has seen what must happen meanwhile (another connection's reply,
or another event waiting its turn): no sleeps, bounded waits. Sync client,
asyncio client and decorator app, real broker, real WebSocket clients.
"""

from __future__ import annotations

import asyncio
import threading
from contextlib import ExitStack
from typing import Any, Callable, List, Optional

import pytest
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as ws_connect

from conftest import TIMEOUT, Broker, Events, wait_for
from pystrands import AsyncPyStrandsClient, Context, PyStrands, PyStrandsClient

#: How long a held handler waits at most for the test to release it.
HOLD = 3 * TIMEOUT


def open_ws(stack: ExitStack, broker: Broker, path: str) -> ClientConnection:
    return stack.enter_context(ws_connect(broker.ws_url(path), open_timeout=TIMEOUT))


def queued(api: Any) -> int:
    """Events the client has read and not yet started (its own bookkeeping)."""
    client = api.client if isinstance(api, PyStrands) else api
    if isinstance(client, PyStrandsClient):
        lanes = getattr(client._session, "lanes", None)
        return len(client._core.events) + (lanes.parked if lanes is not None else 0)
    lanes = getattr(client, "_lanes", None)
    return len(client._core.events) + (lanes.parked if lanes is not None else 0)


def scenario(broker: Broker, api: Any, events: Events, release: Callable[[str], None], concurrency: Optional[int]) -> None:
    """The connections /a, /b and /c; the handler holds on ``hold:<name>``
    until ``release(name)``, echoes everything else."""
    with ExitStack() as stack:
        a = open_ws(stack, broker, "/a")
        b = open_ws(stack, broker, "/b")
        a.send("hold:a")
        events.get("held")
        for i in range(3):
            a.send(f"a{i}")  # behind the held handler of the same connection
        b.send("b0")
        if concurrency == 1:
            # strict order: b0 waits for a's handler, and so do a's events
            wait_for(lambda: queued(api) >= 4, what="b0 and a0-a2 to be read and wait")
            assert ("echoed", "b0") not in list(events.q.queue)
            release("a")
            assert [a.recv(timeout=TIMEOUT) for _ in range(4)] == ["done:a", "echo:a0", "echo:a1", "echo:a2"]
            assert b.recv(timeout=TIMEOUT) == "echo:b0"
            return
        # b's handler runs while a's is held
        assert b.recv(timeout=TIMEOUT) == "echo:b0"
        assert ("done", "a") not in list(events.q.queue)
        if concurrency == 2:
            # a and b hold both places: c's event waits until one is free
            c = open_ws(stack, broker, "/c")
            b.send("hold:b")
            events.get("held")
            c.send("c0")
            wait_for(lambda: queued(api) >= 4, what="c0 (and a0-a2) to wait for a free place")
            assert ("echoed", "c0") not in list(events.q.queue)
            release("b")
            assert b.recv(timeout=TIMEOUT) == "done:b"
            assert c.recv(timeout=TIMEOUT) == "echo:c0"
        # a's own events were not run beside its held handler, and keep their order
        assert not any(item[0] == "echoed" and str(item[1]).startswith("a") for item in list(events.q.queue))
        release("a")
        assert [a.recv(timeout=TIMEOUT) for _ in range(4)] == ["done:a", "echo:a0", "echo:a1", "echo:a2"]


CONCURRENCY = [pytest.param(None, id="default"), pytest.param(1, id="concurrency=1"), pytest.param(2, id="concurrency=2")]


def settings(concurrency: Optional[int]) -> Any:
    """The keyword arguments: none for the default."""
    return {} if concurrency is None else {"concurrency": concurrency}


@pytest.mark.parametrize("concurrency", CONCURRENCY)
def test_sync_client(broker: Broker, clients: List[Any], events: Events, concurrency: Optional[int]) -> None:
    gates = {name: threading.Event() for name in "abc"}

    class Echo(PyStrandsClient):
        def on_message(self, message: Any, context: Context) -> None:
            if message.startswith("hold:"):
                name = message[5:]
                events.put("held", name)
                gates[name].wait(HOLD)
                events.put("done", name)
                self.send_connection_message(context.connection_id, "done:" + name)
            else:
                events.put("echoed", message)
                self.send_connection_message(context.connection_id, "echo:" + message)

    client = Echo("127.0.0.1", broker.tcp_port, **settings(concurrency))
    clients.append(client)
    assert client.connect()
    try:
        scenario(broker, client, events, lambda name: gates[name].set(), concurrency)
    finally:
        for gate in gates.values():
            gate.set()


def run_async_scenario(broker: Broker, make: Callable[[Callable[[str], Any], Events], Any], concurrency: Optional[int]) -> None:
    events = Events()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        gates = {name: asyncio.Event() for name in "abc"}

        async def hold(name: str) -> None:
            events.put("held", name)
            try:
                await asyncio.wait_for(gates[name].wait(), HOLD)
            finally:
                events.put("done", name)

        api = make(hold, events)
        assert await api.connect()
        try:
            def release(name: str) -> None:
                loop.call_soon_threadsafe(gates[name].set)

            await loop.run_in_executor(None, scenario, broker, api, events, release, concurrency)
        finally:
            for gate in gates.values():
                gate.set()
            await api.disconnect()

    asyncio.run(asyncio.wait_for(main(), 120))


@pytest.mark.parametrize("concurrency", CONCURRENCY)
def test_async_client(broker: Broker, concurrency: Optional[int]) -> None:
    def make(hold: Callable[[str], Any], events: Events) -> Any:
        class Echo(AsyncPyStrandsClient):
            async def on_message(self, message: Any, context: Context) -> None:
                if message.startswith("hold:"):
                    await hold(message[5:])
                    await self.send_connection_message(context.connection_id, "done:" + message[5:])
                else:
                    events.put("echoed", message)
                    await self.send_connection_message(context.connection_id, "echo:" + message)

        return Echo("127.0.0.1", broker.tcp_port, **settings(concurrency))

    run_async_scenario(broker, make, concurrency)


@pytest.mark.parametrize("concurrency", CONCURRENCY)
def test_app(broker: Broker, concurrency: Optional[int]) -> None:
    def make(hold: Callable[[str], Any], events: Events) -> Any:
        app = PyStrands("127.0.0.1", broker.tcp_port, **settings(concurrency))

        @app.on_message
        async def said(message: Any, context: Context) -> None:
            if message.startswith("hold:"):
                await hold(message[5:])
                app.send_connection_message(context.connection_id, "done:" + message[5:])
            else:
                events.put("echoed", message)
                app.send_connection_message(context.connection_id, "echo:" + message)

        return app

    run_async_scenario(broker, make, concurrency)


def test_defaults_are_documented_bounds() -> None:
    assert PyStrandsClient("127.0.0.1", 1).concurrency == 32
    assert AsyncPyStrandsClient("127.0.0.1", 1).concurrency == 100
    assert PyStrands("127.0.0.1", 1).client.concurrency == 100
    with pytest.raises(ValueError, match="concurrency"):
        PyStrandsClient("127.0.0.1", 1, concurrency=0)


def test_sync_a_request_inside_a_handler_on_a_worker(broker: Broker, clients: List[Any], events: Events) -> None:
    """A handler running on a worker thread (the dispatcher is held by
    another connection's handler) can wait for a reply: someone reads."""
    gate = threading.Event()

    class Asking(PyStrandsClient):
        def on_message(self, message: Any, context: Context) -> None:
            if message == "hold":
                events.put("held")
                gate.wait(HOLD)
                return
            stats = self.presence_stats(context.room_id)
            self.send_connection_message(context.connection_id, f"{threading.current_thread().name}:{stats.connections}")

    client = Asking("127.0.0.1", broker.tcp_port, reply_timeout=TIMEOUT)
    clients.append(client)
    assert client.connect()
    try:
        with ExitStack() as stack:
            a = open_ws(stack, broker, "/r")
            b = open_ws(stack, broker, "/r")
            a.send("hold")
            events.get("held")
            b.send("count")
            assert b.recv(timeout=TIMEOUT) == "pystrands-worker:2"
    finally:
        gate.set()
