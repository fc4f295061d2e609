"""Rooms, private messages, broadcast, unicode and disconnect events (sync client)."""

from __future__ import annotations

import contextlib
import threading
from typing import Any, List

import pytest
from websockets.sync.client import connect as ws_connect

from conftest import TIMEOUT, Broker, Events
from pystrands import PyStrandsClient


class Router(PyStrandsClient):
    """Assigns client_id and room from the path /<room>/<client_id>; echoes."""

    def __init__(self, events: Events, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.events = events

    def on_connection_request(self, request: Any) -> None:
        _, room, client_id = request.url.split("/")
        request.context.room_id = room
        request.context.client_id = client_id

    def on_connect(self, context: Any) -> None:
        self.events.put("connected", context)

    def on_message(self, message: Any, context: Any) -> None:
        self.events.put("message", message, context)
        if message.startswith("echo:"):
            self.send_private_message(context.client_id, message[5:])

    def on_disconnect(self, context: Any) -> None:
        self.events.put("disconnected", context)


@pytest.fixture
def stack() -> Any:
    with contextlib.ExitStack() as s:
        yield s


@pytest.fixture
def router(broker: Broker, clients: List[Any], events: Events) -> Any:
    client = Router(events, host="127.0.0.1", port=broker.tcp_port)
    clients.append(client)
    assert client.connect()
    return client


def join(stack: Any, broker: Broker, events: Events, room: Any, client_id: Any) -> Any:
    ws = stack.enter_context(ws_connect(broker.ws_url(f"/{room}/{client_id}"), open_timeout=TIMEOUT))
    _, context = events.get("connected")
    assert (context.room_id, context.client_id) == (room, client_id)
    return ws


def nothing_more(ws: Any, marker_sender: Any, marker: Any) -> None:
    """Assert ``ws`` receives nothing before a marker sent after the tested messages."""
    marker_sender(marker)
    assert ws.recv(timeout=TIMEOUT) == marker


def test_room_messages_reach_members_only(broker: Broker, events: Events, router: Any, stack: Any) -> None:
    a1 = join(stack, broker, events, "a", "u1")
    a2 = join(stack, broker, events, "a", "u2")
    b1 = join(stack, broker, events, "b", "u3")
    router.send_room_message("a", "to room a")
    assert a1.recv(timeout=TIMEOUT) == "to room a"
    assert a2.recv(timeout=TIMEOUT) == "to room a"
    router.send_room_message("b", "to room b")
    # b1's first message is room b's: room a's never reached it.
    assert b1.recv(timeout=TIMEOUT) == "to room b"
    nothing_more(a1, lambda m: router.send_private_message("u1", m), "marker-a1")


def test_private_message_reaches_every_connection_of_the_client(broker: Broker, events: Events, router: Any, stack: Any) -> None:
    tab1 = join(stack, broker, events, "r", "same")
    tab2 = join(stack, broker, events, "r", "same")
    other = join(stack, broker, events, "r", "other")
    router.send_private_message("same", "psst")
    assert tab1.recv(timeout=TIMEOUT) == "psst"
    assert tab2.recv(timeout=TIMEOUT) == "psst"
    nothing_more(other, lambda m: router.send_private_message("other", m), "marker-other")


def test_broadcast_reaches_everyone(broker: Broker, events: Events, router: Any, stack: Any) -> None:
    conns = [join(stack, broker, events, room, f"c{i}") for i, room in enumerate(["x", "y", "z"])]
    router.broadcast_message("all hands")
    for ws in conns:
        assert ws.recv(timeout=TIMEOUT) == "all hands"


UNICODE = [
    "héllo wörld",
    "日本語のテキスト",
    "emoji 🎉🚀 and ZWJ 👨‍👩‍👧‍👦",
    "RTL שלום مرحبا",
    'quotes " and \\ backslash\nnewline\ttab',
    "\u2028\u2029 separators, NUL-free control \x01\x1f",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 astral",
]


def test_unicode_round_trip(broker: Broker, events: Events, router: Any, stack: Any) -> None:
    ws = join(stack, broker, events, "u", "uni")
    for text in UNICODE:
        ws.send("echo:" + text)
        _, message, context = events.get("message")
        assert message == "echo:" + text
        assert ws.recv(timeout=TIMEOUT) == text
    router.send_room_message("u", "".join(UNICODE))
    assert ws.recv(timeout=TIMEOUT) == "".join(UNICODE)


def test_message_context_and_disconnect_event(broker: Broker, events: Events, router: Any, stack: Any) -> None:
    ws = join(stack, broker, events, "room9", "id9")
    ws.send("hello")
    _, message, context = events.get("message")
    assert message == "hello"
    assert (context.client_id, context.room_id, context.metadata) == ("id9", "room9", {})
    assert context.context is context
    ws.close()
    _, gone = events.get("disconnected")
    assert (gone.client_id, gone.room_id) == ("id9", "room9")


def test_sends_are_safe_from_many_threads(broker: Broker, events: Events, router: Any, stack: Any) -> None:
    ws = join(stack, broker, events, "t", "threads")
    per_thread = 500
    barrier = threading.Barrier(4)

    def blast(n: Any) -> None:
        barrier.wait()
        for i in range(per_thread):
            router.send_private_message("threads", f"{n}:{i}")

    threads = [threading.Thread(target=blast, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
    got = [ws.recv(timeout=TIMEOUT) for _ in range(4 * per_thread)]
    # Every message arrives intact, and each thread's in its own order.
    for n in range(4):
        mine = [int(m.split(":")[1]) for m in got if m.startswith(f"{n}:")]
        assert mine == list(range(per_thread))
