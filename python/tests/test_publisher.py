"""Protocol 1.1: publishers (``Publisher``, ``AsyncPublisher``) send without
receiving events: the broker gives them no connection requests and no client
events, does not count them as a backend (so they do not keep 503 answers
away), and still answers their requests."""

from __future__ import annotations

import asyncio
import logging
import threading
from contextlib import ExitStack
from typing import Any, Callable, List

import pytest
from websockets.sync.client import connect as ws_connect

from conftest import TIMEOUT, Broker, Events, TabBackend, http_status_of, next_frames, open_tab, wait_for
from pystrands import AsyncPublisher, PresenceStats, Publisher

#: The broker waits this long for a backend's answer: longer than a WebSocket
#: client here waits for its handshake, so a request handed to a publisher
#: (which never answers) shows up as a handshake timeout, not as a 503.
SLOW_ANSWER = 3 * TIMEOUT


def refused_status(url: str) -> Any:
    with pytest.raises(Exception) as info:
        with ws_connect(url, open_timeout=TIMEOUT):
            pass
    status = http_status_of(info.value)
    assert status is not None, f"expected an HTTP refusal, got {info.value!r}"
    return status


def test_a_publisher_does_not_keep_503s_away(broker_factory: Callable[..., Broker]) -> None:
    broker = broker_factory(connect_timeout=SLOW_ANSWER)
    with Publisher("127.0.0.1", broker.tcp_port, reply_timeout=TIMEOUT) as publisher:
        publisher.connect()
        assert publisher.presence_stats("lobby") == PresenceStats(0, 0)  # connected and answered
        assert refused_status(broker.ws_url("/lobby")) == 503


def test_an_async_publisher_does_not_keep_503s_away(broker_factory: Callable[..., Broker]) -> None:
    broker = broker_factory(connect_timeout=SLOW_ANSWER)

    async def main() -> None:
        async with AsyncPublisher("127.0.0.1", broker.tcp_port, reply_timeout=TIMEOUT) as publisher:
            assert await publisher.presence("lobby") == []
            status = await asyncio.get_running_loop().run_in_executor(None, refused_status, broker.ws_url("/"))
            assert status == 503

    asyncio.run(asyncio.wait_for(main(), 60))


def test_a_publisher_gets_no_events(broker_factory: Callable[..., Broker], clients: List[Any], events: Events, caplog: pytest.LogCaptureFixture) -> None:
    from conftest import TabBackend

    broker = broker_factory(connect_timeout=SLOW_ANSWER)
    with Publisher("127.0.0.1", broker.tcp_port, reply_timeout=TIMEOUT) as publisher, ExitStack() as stack:
        publisher.connect()
        backend = TabBackend(events, "127.0.0.1", broker.tcp_port, reply_timeout=TIMEOUT)
        clients.append(backend)
        assert backend.connect()
        with caplog.at_level(logging.WARNING, logger="pystrands"):
            # Were the publisher a backend, some of these requests would go to it
            # and never be answered; every one must reach the real backend.
            tabs = [open_tab(stack, broker, events, "/lobby", f"user{i}") for i in range(6)]
            for i, (ws, _) in enumerate(tabs):
                ws.send(f"hi {i}")
                _, message, ctx = events.get("message")
                assert (message, ctx.client_id) == (f"hi {i}", f"user{i}")
            assert publisher.send_room_message("lobby", "from the publisher", ack=True) == 6
            for ws, _ in tabs:
                assert next_frames(ws, 1) == ["from the publisher"]
        assert "publisher" not in caplog.text


def test_publisher_sends_every_command(broker: Broker, tab_backend: TabBackend, events: Events) -> None:
    with Publisher("127.0.0.1", broker.tcp_port, reply_timeout=TIMEOUT) as p, ExitStack() as stack:
        a1, ca1 = open_tab(stack, broker, events, "/lobby", "ada")
        a2, ca2 = open_tab(stack, broker, events, "/lobby", "ada")
        p.broadcast_message("all")
        p.send_room_message("lobby", "room", exclude=[ca2.connection_id])
        p.send_private_message("ada", b"\x00private")
        p.send_connection_message(ca2.connection_id, "tab 2")
        assert p.join_room("ops", client_id="ada", ack=True) == 2
        p.leave_room("ops", connection_id=ca1.connection_id)
        p.send_room_message("ops", "ops")
        p.set_metadata({"via": "publisher"}, connection_id=ca1.connection_id)
        assert next_frames(a1, 3) == ["all", "room", b"\x00private"]
        assert next_frames(a2, 4) == ["all", b"\x00private", "tab 2", "ops"]
        (entry,) = p.presence("lobby")
        assert sorted(entry.connections) == sorted([ca1.connection_id, ca2.connection_id])
        a1.send("metadata?")
        _, _, ctx = events.get("message")
        assert ctx.metadata == {"via": "publisher"}
        p.disconnect_client(connection_id=ca1.connection_id, code=4000, reason="bye")
        assert events.get("disconnected")[1].connection_id == ca1.connection_id


def test_a_publisher_is_thread_safe(broker: Broker, tab_backend: TabBackend, events: Events) -> None:
    threads, per_thread = 8, 25
    with Publisher("127.0.0.1", broker.tcp_port, reply_timeout=TIMEOUT) as p, ExitStack() as stack:
        ws, _ = open_tab(stack, broker, events, "/lobby", "ada")
        counts: List[int] = []
        errors: List[Exception] = []

        def publish(t: Any) -> None:
            n = 0
            try:
                for i in range(per_thread):
                    p.send_room_message("lobby", f"{t}:{i}")
                    reached = p.send_private_message("ada", f"{t}:{i}!", ack=True)
                    assert reached is not None
                    n += reached
            except Exception as exc:  # asserted below
                errors.append(exc)
            counts.append(n)

        workers = [threading.Thread(target=publish, args=(t,)) for t in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(6 * TIMEOUT)
        assert errors == [] and counts == [per_thread] * threads
        got = next_frames(ws, 2 * threads * per_thread)
        for t in range(threads):  # each thread's messages arrive, once, in its order
            mine = [m for m in got if m.split(":")[0] == str(t)]
            assert mine == [x for i in range(per_thread) for x in (f"{t}:{i}", f"{t}:{i}!")]


def test_a_publisher_reconnects_after_the_broker_restarts(broker: Broker, clients: List[Any], events: Events) -> None:
    from conftest import TabBackend

    backend = TabBackend(events, "127.0.0.1", broker.tcp_port, reconnect_delay=0.05, reply_timeout=TIMEOUT)
    clients.append(backend)
    assert backend.connect()
    with Publisher("127.0.0.1", broker.tcp_port, reply_timeout=TIMEOUT) as p:
        assert p.presence("lobby") == []
        broker.restart()
        wait_for(lambda: not p.connected, what="the publisher to see its connection end")
        wait_for(lambda: backend.connected, what="the backend to reconnect")
        with ExitStack() as stack:
            ws, _ = open_tab(stack, broker, events, "/lobby", "ada")
            assert p.broadcast_message("after the restart", ack=True) == 1
            assert next_frames(ws, 1) == ["after the restart"]
        assert p.connected


def test_a_publisher_with_the_backend_token(broker_factory: Callable[..., Broker], clients: List[Any], events: Events) -> None:
    from conftest import TabBackend

    broker = broker_factory(extra_args=["--backend-token", "s3cret"])
    backend = TabBackend(events, "127.0.0.1", broker.tcp_port, token="s3cret", reply_timeout=TIMEOUT)
    clients.append(backend)
    assert backend.connect()
    with Publisher("127.0.0.1", broker.tcp_port, token="s3cret", reply_timeout=TIMEOUT) as p, ExitStack() as stack:
        ws, _ = open_tab(stack, broker, events, "/lobby", "ada")
        assert p.send_room_message("lobby", "authenticated", ack=True) == 1
        assert next_frames(ws, 1) == ["authenticated"]


def test_async_publisher_sends_and_asks(broker: Broker, tab_backend: TabBackend, events: Events) -> None:
    with ExitStack() as stack:
        ws, ctx = open_tab(stack, broker, events, "/lobby", "ada")

        async def main() -> None:
            async with AsyncPublisher("127.0.0.1", broker.tcp_port, reply_timeout=TIMEOUT) as p:
                await p.send_room_message("lobby", "one")
                assert await p.send_connection_message(ctx.connection_id, "two", ack=True) == 1
                assert await p.join_room("ops", client_id="ada", ack=True) == 1
                assert await p.presence_stats("ops") == PresenceStats(1, 1)
                (entry,) = await p.presence("ops")
                assert entry.client_id == "ada" and entry.connections == [ctx.connection_id]
                # many at once from one loop
                counts = await asyncio.gather(*(p.broadcast_message(f"b{i}", ack=True) for i in range(20)))
                assert counts == [1] * 20

        asyncio.run(asyncio.wait_for(main(), 60))
        got = next_frames(ws, 22)
        assert got[:2] == ["one", "two"] and sorted(got[2:]) == sorted(f"b{i}" for i in range(20))
