"""Sends go out at once, from any thread, and a send is never silently lost
because it was not awaited.

- sync client: what a handler sent before it blocks goes out while it blocks;
  a send from another thread goes out before the call returns;
- asyncio client and app: a send from another thread (beside a web
  framework) wakes the loop and goes out at once, with a
  ``concurrent.futures.Future`` for the result; the send methods of the
  client and of the app behave alike: a plain call sends, ``await`` also
  gives the result, ``asyncio.create_task`` takes them;
- a sync client refuses ``async def`` handlers it could not run, and
  ``disconnect()`` of the asyncio client works when not awaited.

The broker's heartbeat (15 s by default) is longer than every wait here: a
send that waits for the next wake-up of the loop does not arrive in time.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from typing import Any, List, cast

from websockets.sync.client import connect as ws_connect

from conftest import TIMEOUT, Broker, Events
from pystrands import AsyncPyStrandsClient, Context, PresenceStats, PyStrands, PyStrandsClient

HOLD = 3 * TIMEOUT


def test_sync_a_handler_s_sends_go_out_while_it_blocks(broker: Broker, clients: List[Any], events: Events) -> None:
    gate = threading.Event()

    class Slow(PyStrandsClient):
        def on_message(self, message: Any, context: Context) -> None:
            self.send_private_message(context.client_id, "working on it")
            events.put("sent")
            gate.wait(HOLD)  # e.g. a slow database call
            self.send_private_message(context.client_id, "done")

    client = Slow("127.0.0.1", broker.tcp_port)
    clients.append(client)
    assert client.connect()
    try:
        with ws_connect(broker.ws_url("/s"), open_timeout=TIMEOUT) as ws:
            ws.send("go")
            events.get("sent")
            assert ws.recv(timeout=TIMEOUT) == "working on it"  # the handler still blocks
            gate.set()
            assert ws.recv(timeout=TIMEOUT) == "done"
    finally:
        gate.set()


def test_sync_a_send_from_another_thread_goes_out_at_once(broker: Broker, clients: List[Any]) -> None:
    client = PyStrandsClient("127.0.0.1", broker.tcp_port)
    clients.append(client)
    assert client.connect()
    with ws_connect(broker.ws_url("/t"), open_timeout=TIMEOUT) as ws:
        sender = threading.Thread(target=client.broadcast_message, args=("from a thread",))
        sender.start()
        sender.join(TIMEOUT)
        assert ws.recv(timeout=TIMEOUT) == "from a thread"


def test_app_sends_from_another_thread_go_out_at_once(broker: Broker) -> None:
    """As beside a web framework: the app's loop runs in one thread, a
    request handler calls app.broadcast() in another."""
    app = PyStrands("127.0.0.1", broker.tcp_port)
    results: "concurrent.futures.Future[Any]" = concurrent.futures.Future()

    def other_thread(ws_url: str) -> None:
        try:
            with ws_connect(ws_url, open_timeout=TIMEOUT) as ws:
                sent = app.broadcast("from a web view")
                assert ws.recv(timeout=TIMEOUT) == "from a web view"
                assert isinstance(sent, concurrent.futures.Future)
                # from another thread the calls return concurrent.futures.Future
                stats = cast("concurrent.futures.Future[Any]", app.presence_stats("/web")).result(TIMEOUT)
                ack = app.send_room_message("/web", "counted", ack=True)
                reached = cast("concurrent.futures.Future[Any]", ack).result(TIMEOUT)
                assert ws.recv(timeout=TIMEOUT) == "counted"
                results.set_result((cast("concurrent.futures.Future[Any]", sent).result(TIMEOUT), stats, reached))
        except BaseException as exc:
            results.set_exception(exc)

    async def main() -> None:
        assert await app.connect()
        try:
            thread = threading.Thread(target=other_thread, args=(broker.ws_url("/web"),))
            thread.start()
            await asyncio.get_running_loop().run_in_executor(None, thread.join, 3 * TIMEOUT)
        finally:
            await app.disconnect()

    asyncio.run(asyncio.wait_for(main(), 60))
    assert results.result(0) == (None, PresenceStats(1, 1), 1)


def test_async_client_sends_without_await_and_with_create_task(broker: Broker) -> None:
    """The asyncio client's send methods are the app's: a plain call sends."""

    class Echo(AsyncPyStrandsClient):
        def on_message(self, message: Any, context: Context) -> None:  # a plain def handler
            self.send_private_message(context.client_id, "plain:" + message)  # no await

    async def main() -> None:
        from websockets.asyncio.client import connect

        client = Echo("127.0.0.1", broker.tcp_port)
        assert await client.connect()
        try:
            async with connect(broker.ws_url("/p"), open_timeout=TIMEOUT) as ws:
                await ws.send("hi")
                assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "plain:hi"
                client.broadcast_message("not awaited")
                assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "not awaited"
                assert await client.broadcast_message("awaited") is None
                assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "awaited"
                # typed Awaitable (a plain call is fine), yet a coroutine object at run time
                coroutine = client.send_room_message("/p", "as a task", ack=True)
                task: "asyncio.Task[Any]" = asyncio.create_task(coroutine)  # type: ignore[arg-type]
                assert await asyncio.wait_for(task, TIMEOUT) == 1
                assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "as a task"
                gathered = await asyncio.gather(client.presence_stats("/p"), client.broadcast_message("g"))
                assert list(gathered) == [PresenceStats(1, 1), None]
        finally:
            await client.disconnect()

    asyncio.run(asyncio.wait_for(main(), 60))


def test_async_client_sends_from_another_thread(broker: Broker) -> None:
    async def main() -> None:
        client = AsyncPyStrandsClient("127.0.0.1", broker.tcp_port)
        assert await client.connect()
        try:

            def other_thread() -> Any:
                with ws_connect(broker.ws_url("/o"), open_timeout=TIMEOUT) as ws:
                    sent = client.send_room_message("/o", "from a thread")
                    cast("concurrent.futures.Future[Any]", sent).result(TIMEOUT)
                    return ws.recv(timeout=TIMEOUT)

            got = await asyncio.get_running_loop().run_in_executor(None, other_thread)
            assert got == "from a thread"
        finally:
            await client.disconnect()

    asyncio.run(asyncio.wait_for(main(), 60))


def test_async_disconnect_without_await_from_a_plain_handler(broker: Broker) -> None:
    class Quitter(AsyncPyStrandsClient):
        def on_message(self, message: Any, context: Context) -> None:
            self.send_private_message(context.client_id, "bye")
            self.disconnect()  # a plain call: it must still stop the client

    async def main() -> None:
        from websockets.asyncio.client import connect

        client = Quitter("127.0.0.1", broker.tcp_port)
        runner = asyncio.ensure_future(client.run_forever(handle_signals=False))
        while not client.connected:
            await asyncio.sleep(0.01)
        async with connect(broker.ws_url("/q"), open_timeout=TIMEOUT) as ws:
            await ws.send("quit")
            assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "bye"
        await asyncio.wait_for(runner, TIMEOUT)
        assert not client.connected

    asyncio.run(asyncio.wait_for(main(), 60))
