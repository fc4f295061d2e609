"""Requests that wait for the broker's reply, in every API, against the real
broker: an ``error`` reply fails the request with the broker's message; the
wait works inside handlers (the sync client reads while it waits: no
deadlock) and from other threads; a broker that does not answer gives a
timeout naming the action; a lost connection fails the waiting request.

A request the broker refuses (an action it does not know) stands for any
request: what is tested is the client's reply path, which is the same for
``presence``, ``presence_stats`` and ``ack=True``.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import threading
from typing import Any, List

import pytest
from websockets.sync.client import connect as ws_connect

from conftest import TIMEOUT, Broker, Events, wait_for
from pystrands import (
    AsyncPublisher,
    AsyncPyStrandsClient,
    BrokerError,
    NotConnectedError,
    Publisher,
    PyStrands,
    PyStrandsClient,
    PyStrandsConnectionError,
    PyStrandsError,
    ReplyTimeoutError,
)

UNKNOWN = "no_such_action"


def refused(api: Any) -> Any:
    """A request the broker answers with an ``error`` line."""
    return api._core.request(UNKNOWN, {"x": 1})


def check_refusal(exc: BrokerError) -> None:
    assert exc.action == UNKNOWN
    assert isinstance(exc.error, str) and exc.error
    assert UNKNOWN in str(exc)


def run(coro: Any, timeout: Any=60) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# ---------------------------------------------------------------- error replies


def test_sync_error_reply_raises_broker_error(broker: Broker, clients: List[Any]) -> None:
    client = PyStrandsClient("127.0.0.1", broker.tcp_port, reply_timeout=TIMEOUT)
    clients.append(client)
    assert client.connect()
    with pytest.raises(BrokerError) as info:
        client._issue(refused(client))
    check_refusal(info.value)
    assert isinstance(info.value, PyStrandsError)
    assert client.connected  # the connection is fine after a refusal
    client.broadcast_message("still works")


def test_async_and_app_error_replies_raise_broker_error(broker: Broker) -> None:
    async def main() -> None:
        for kind in (AsyncPyStrandsClient, PyStrands):
            api = kind("127.0.0.1", broker.tcp_port, reply_timeout=TIMEOUT)
            assert await api.connect()
            try:
                with pytest.raises(BrokerError) as info:
                    await api._issue(refused(api))
                check_refusal(info.value)
            finally:
                await api.disconnect()

    run(main())


def test_publishers_get_error_replies(broker: Broker) -> None:
    with Publisher("127.0.0.1", broker.tcp_port, reply_timeout=TIMEOUT) as publisher:
        with pytest.raises(BrokerError) as info:
            publisher._issue(refused(publisher))
        check_refusal(info.value)

    async def main() -> None:
        async with AsyncPublisher("127.0.0.1", broker.tcp_port, reply_timeout=TIMEOUT) as publisher:
            with pytest.raises(BrokerError) as info:
                await publisher._issue(refused(publisher))
            check_refusal(info.value)

    run(main())


# ---------------------------------------------------------------- waits inside handlers and threads


def test_sync_request_inside_on_message_does_not_deadlock(broker: Broker, clients: List[Any]) -> None:
    """The handler runs on the thread that reads; it reads while it waits.
    Messages that arrive meanwhile are handled after it, in order."""

    class Asking(PyStrandsClient):
        takeover_after = 3600.0  # no watchdog: only the handler's own reading can help

        def on_message(self, message: Any, context: Any) -> None:
            if message == "ask":
                try:
                    self._issue(refused(self))
                except BrokerError:
                    answer = "refused"
                except ReplyTimeoutError:
                    answer = "timed out"
                self.send_private_message(context.client_id, answer)
            else:
                self.send_private_message(context.client_id, "echo:" + message)

    # A generous timeout: a deadlocked wait would end in "timed out".
    client = Asking("127.0.0.1", broker.tcp_port, reply_timeout=TIMEOUT)
    clients.append(client)
    assert client.connect()
    with ws_connect(broker.ws_url("/h"), open_timeout=TIMEOUT) as ws:
        ws.send("ask")
        ws.send("m1")
        ws.send("m2")
        assert [ws.recv(timeout=2 * TIMEOUT) for _ in range(3)] == ["refused", "echo:m1", "echo:m2"]


def test_sync_request_inside_on_connection_request(broker: Broker, clients: List[Any], events: Events) -> None:
    class Checking(PyStrandsClient):
        def on_connection_request(self, request: Any) -> None:
            try:
                self._issue(refused(self))
            except BrokerError as exc:
                request.context.metadata = {"check": exc.action}

        def on_new_connection(self, context: Any) -> None:
            events.put("connected", context.metadata)

    client = Checking("127.0.0.1", broker.tcp_port, reply_timeout=TIMEOUT)
    clients.append(client)
    assert client.connect()
    with ws_connect(broker.ws_url("/c"), open_timeout=TIMEOUT):
        assert events.get("connected") == ("connected", {"check": UNKNOWN})


def test_sync_request_from_another_thread_while_a_handler_is_slow(broker: Broker, clients: List[Any], events: Events) -> None:
    """The dispatcher is blocked in a handler: the watchdog reads the reply."""
    release = threading.Event()

    class Slow(PyStrandsClient):
        def on_message(self, message: Any, context: Any) -> None:
            events.put("blocked")
            release.wait(TIMEOUT)
            events.put("released")

    client = Slow("127.0.0.1", broker.tcp_port, reply_timeout=TIMEOUT)
    clients.append(client)
    assert client.connect()
    try:
        with ws_connect(broker.ws_url("/s"), open_timeout=TIMEOUT) as ws:
            ws.send("block")
            events.get("blocked")
            with pytest.raises(BrokerError):
                client._issue(refused(client))
            assert ("released",) not in list(events.q.queue)  # the handler is still blocked
            release.set()
            events.get("released")
    finally:
        release.set()


def test_sync_on_connection_request_on_the_watchdog_may_wait_for_replies(broker: Broker, clients: List[Any], events: Events) -> None:
    """While on_message blocks, the watchdog answers connection requests; a
    request handler running there waits for its reply by reading itself."""
    release = threading.Event()

    class Both(PyStrandsClient):
        def on_message(self, message: Any, context: Any) -> None:
            events.put("blocked")
            release.wait(2 * TIMEOUT)

        def on_connection_request(self, request: Any) -> None:
            try:
                self._issue(refused(self))
            except BrokerError as exc:
                events.put("checked", exc.action, threading.current_thread().name)

    client = Both("127.0.0.1", broker.tcp_port, reply_timeout=TIMEOUT)
    clients.append(client)
    assert client.connect()
    try:
        with ws_connect(broker.ws_url("/a"), open_timeout=TIMEOUT) as first:
            events.get("checked")
            first.send("block")
            events.get("blocked")
            with ws_connect(broker.ws_url("/b"), open_timeout=TIMEOUT):
                assert events.get("checked") == ("checked", UNKNOWN, "pystrands-watchdog")
    finally:
        release.set()


def test_async_request_inside_a_handler(broker: Broker) -> None:
    async def main() -> None:
        from websockets.asyncio.client import connect

        class Asking(AsyncPyStrandsClient):
            async def on_message(self, message: Any, context: Any) -> None:
                try:
                    await self._issue(refused(self))
                except BrokerError as exc:
                    await self.send_private_message(context.client_id, "refused:" + exc.action)

        client = Asking("127.0.0.1", broker.tcp_port, reply_timeout=TIMEOUT)
        assert await client.connect()
        try:
            async with connect(broker.ws_url("/x"), open_timeout=TIMEOUT) as ws:
                await ws.send("ask")
                assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "refused:" + UNKNOWN
        finally:
            await client.disconnect()

    run(main())


# ---------------------------------------------------------------- timeouts and lost connections


class Paused:
    """The broker process stopped (SIGSTOP): connected, but it answers nothing."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker

    def __enter__(self) -> Any:
        self.broker.send_signal(signal.SIGSTOP)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.broker.send_signal(signal.SIGCONT)


def check_timeout(exc: ReplyTimeoutError, action: str) -> None:
    assert exc.action == action
    assert f"no reply to {action}" in str(exc)
    assert isinstance(exc, TimeoutError) and isinstance(exc, PyStrandsError)


def test_sync_reply_timeout_names_the_action(broker: Broker, clients: List[Any]) -> None:
    client = PyStrandsClient("127.0.0.1", broker.tcp_port, reply_timeout=0.3)
    clients.append(client)
    assert client.connect()
    with Paused(broker):
        with pytest.raises(ReplyTimeoutError) as info:
            client.presence("lobby")
        check_timeout(info.value, "presence")
        with pytest.raises(ReplyTimeoutError) as info:
            client.join_room("lobby", client_id="ada", ack=True)
        check_timeout(info.value, "join_room")
    assert client._core.waiting == 0


def test_async_and_app_reply_timeouts_name_the_action(broker: Broker) -> None:
    async def main() -> None:
        client = AsyncPyStrandsClient("127.0.0.1", broker.tcp_port, reply_timeout=0.3)
        app = PyStrands("127.0.0.1", broker.tcp_port, reply_timeout=0.3)
        assert await client.connect() and await app.connect()
        try:
            with Paused(broker):
                with pytest.raises(ReplyTimeoutError) as info:
                    await client.presence_stats("lobby")
                check_timeout(info.value, "presence_stats")
                with pytest.raises(ReplyTimeoutError) as info:
                    await app.send_room_message("lobby", "hi", ack=True)
                check_timeout(info.value, "message_to_room")
        finally:
            await client.disconnect()
            await app.disconnect()

    run(main())


def test_publisher_reply_timeouts_name_the_action(broker: Broker) -> None:
    with Publisher("127.0.0.1", broker.tcp_port, reply_timeout=0.3) as publisher:
        publisher.connect()
        with Paused(broker):
            with pytest.raises(ReplyTimeoutError) as info:
                publisher.disconnect_client(client_id="ada", ack=True)
            check_timeout(info.value, "disconnect")

    async def main() -> None:
        async with AsyncPublisher("127.0.0.1", broker.tcp_port, reply_timeout=0.3) as publisher:
            await publisher.connect()
            with Paused(broker):
                with pytest.raises(ReplyTimeoutError) as info:
                    await publisher.set_metadata({"a": 1}, connection_id="c1", ack=True)
                check_timeout(info.value, "set_metadata")

    run(main())


def test_a_lost_connection_fails_the_waiting_request(broker: Broker, clients: List[Any]) -> None:
    client = PyStrandsClient("127.0.0.1", broker.tcp_port, auto_reconnect=False, reply_timeout=30)
    clients.append(client)
    assert client.connect()
    outcome = []

    def ask() -> None:
        try:
            client.presence("lobby")
        except Exception as exc:  # recorded, asserted below
            outcome.append(exc)

    broker.send_signal(signal.SIGSTOP)
    asker = threading.Thread(target=ask)
    asker.start()
    wait_for(lambda: client._core.waiting == 1, what="the request to be sent")
    broker.stop(signal.SIGKILL)  # the kernel closes the broker's sockets
    asker.join(TIMEOUT)
    assert not asker.is_alive()
    assert len(outcome) == 1 and type(outcome[0]) is PyStrandsConnectionError, outcome
    assert "lost before the reply to presence" in str(outcome[0])


def test_async_lost_connection_fails_the_waiting_request(broker: Broker) -> None:
    async def main() -> None:
        client = AsyncPyStrandsClient("127.0.0.1", broker.tcp_port, auto_reconnect=False, reply_timeout=30)
        assert await client.connect()
        try:
            broker.send_signal(signal.SIGSTOP)
            asking = asyncio.ensure_future(client.presence("lobby"))
            while client._core.waiting != 1:
                await asyncio.sleep(0.01)
            broker.stop(signal.SIGKILL)
            with pytest.raises(PyStrandsConnectionError, match="lost before the reply to presence"):
                await asyncio.wait_for(asking, TIMEOUT)
        finally:
            await client.disconnect()

    run(main())


# ---------------------------------------------------------------- before anything is sent


def test_arguments_are_checked_in_every_api_before_sending() -> None:
    port = free_port()
    sync = PyStrandsClient("127.0.0.1", port)
    with pytest.raises(ValueError, match="join_room needs a target"):
        sync.join_room("r")
    with pytest.raises(ValueError, match="1000 or 3000-4999"):
        Publisher("127.0.0.1", port).disconnect_client(client_id="a", code=1006)
    with pytest.raises(ValueError, match="not both"):
        PyStrands("127.0.0.1", port).leave_room("r", client_id="a", connection_id="b")
    # the asyncio APIs check when called, before the coroutine is awaited
    with pytest.raises(ValueError, match="at most 123"):
        AsyncPyStrandsClient("127.0.0.1", port).disconnect_client(client_id="a", reason="x" * 124)
    with pytest.raises(TypeError, match="metadata must be a dict"):
        AsyncPublisher("127.0.0.1", port).set_metadata("admin", client_id="a")  # type: ignore[arg-type, unused-coroutine]


def test_new_commands_raise_not_connected_while_disconnected() -> None:
    port = free_port()
    sync = PyStrandsClient("127.0.0.1", port)
    for call in (
        lambda: sync.join_room("r", client_id="a"),
        lambda: sync.presence("r"),
        lambda: sync.send_connection_message("c1", "hi"),
        lambda: sync.broadcast_message("hi", ack=True),
    ):
        with pytest.raises(NotConnectedError):
            call()
    assert sync._core.waiting == 0

    async def main() -> None:
        client = AsyncPyStrandsClient("127.0.0.1", port)
        with pytest.raises(NotConnectedError):
            await client.presence("r")
        with pytest.raises(NotConnectedError):
            await client.leave_room("r", connection_id="c1", ack=True)
        app = PyStrands("127.0.0.1", port)
        with pytest.raises(NotConnectedError):
            app.presence_stats("r")
        with pytest.raises(NotConnectedError):
            app.set_metadata({}, client_id="a")

    run(main())


def test_publisher_without_broker_raises_connection_error() -> None:
    port = free_port()
    with pytest.raises(PyStrandsConnectionError, match="cannot connect"):
        Publisher("127.0.0.1", port, connect_timeout=2).broadcast_message("hi")

    async def main() -> None:
        with pytest.raises(PyStrandsConnectionError, match="cannot connect"):
            await AsyncPublisher("127.0.0.1", port, connect_timeout=2).broadcast_message("hi")

    run(main())
