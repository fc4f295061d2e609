"""Protocol 1.1: the query string and the offered subprotocols reach
``on_connection_request``; the backend can select a subprotocol (echoed in
the 101) and reject with its own HTTP status and body. Browsers cannot set
headers on a WebSocket, so a token in the query string is how they sign in."""

from __future__ import annotations

import asyncio
from typing import Any, List

import pytest
from websockets.sync.client import connect as ws_connect
from websockets.typing import Subprotocol

from conftest import TIMEOUT, Broker, Events
from pystrands import AsyncPyStrandsClient, PyStrands, PyStrandsClient


class QueryAuth(PyStrandsClient):
    """Admits ?token=good; anything else: 401 with a reason."""

    def __init__(self, events: Events, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.events = events

    def on_connection_request(self, request: Any) -> Any:
        self.events.put("request", request)
        if request.query_params.get("token") != ["good"]:
            return request.reject(401, "bad token")
        if "chat.v1" in request.subprotocols:
            request.select_subprotocol("chat.v1")
        request.context.client_id = request.query_params.get("user", ["anon"])[0]
        return True

    def on_new_connection(self, context: Any) -> None:
        self.events.put("connected", context)


def start(broker: Broker, clients: List[Any], events: Events) -> Any:
    client = QueryAuth(events, "127.0.0.1", broker.tcp_port)
    clients.append(client)
    assert client.connect()
    return client


def refusal(url: str, **kwargs: Any) -> Any:
    """(status, body) of a refused WebSocket handshake."""
    with pytest.raises(Exception) as info:
        with ws_connect(url, open_timeout=TIMEOUT, **kwargs):
            pass
    response = getattr(info.value, "response", None)
    assert response is not None, f"expected an HTTP refusal, got {info.value!r}"
    return response.status_code, response.body


def test_query_string_round_trip(broker: Broker, clients: List[Any], events: Events) -> None:
    start(broker, clients, events)
    with ws_connect(broker.ws_url("/ws/lobby?token=good&user=ada&tag=a&tag=b%20c"), open_timeout=TIMEOUT):
        _, request = events.get("request")
        _, context = events.get("connected")
    assert request.url == "/ws/lobby"  # the path only, as in v1
    assert request.query == "token=good&user=ada&tag=a&tag=b%20c"
    assert request.query_params == {"token": ["good"], "user": ["ada"], "tag": ["a", "b c"]}
    assert context.client_id == "ada"
    assert request.connection_id and request.connection_id == context.connection_id


def test_no_query_string(broker: Broker, clients: List[Any], events: Events) -> None:
    start(broker, clients, events)
    assert refusal(broker.ws_url("/ws/lobby")) == (401, b"bad token")
    _, request = events.get("request")
    assert request.query == "" and request.query_params == {}


def test_custom_reject_status_and_body(broker: Broker, clients: List[Any], events: Events) -> None:
    start(broker, clients, events)
    assert refusal(broker.ws_url("/x?token=bad")) == (401, b"bad token")


def test_connection_ids_are_unique(broker: Broker, clients: List[Any], events: Events) -> None:
    start(broker, clients, events)
    seen = set()
    for _ in range(5):
        with ws_connect(broker.ws_url("/x?token=good"), open_timeout=TIMEOUT):
            _, context = events.get("connected")
            seen.add(context.connection_id)
    assert len(seen) == 5 and "" not in seen


def test_subprotocol_round_trip(broker: Broker, clients: List[Any], events: Events) -> None:
    start(broker, clients, events)
    with ws_connect(
        broker.ws_url("/x?token=good"), open_timeout=TIMEOUT, subprotocols=[Subprotocol("chat.v2"), Subprotocol("chat.v1")]
    ) as ws:
        assert ws.subprotocol == "chat.v1"
    _, request = events.get("request")
    assert request.subprotocols == ["chat.v2", "chat.v1"]
    assert request.subprotocol == "chat.v1"


def test_no_subprotocol_offered_none_selected(broker: Broker, clients: List[Any], events: Events) -> None:
    start(broker, clients, events)
    with ws_connect(broker.ws_url("/x?token=good"), open_timeout=TIMEOUT) as ws:
        assert ws.subprotocol is None
    _, request = events.get("request")
    assert request.subprotocols == [] and request.subprotocol is None


def test_asyncio_client_and_app_reject_and_select(broker: Broker) -> None:
    async def main() -> None:
        from websockets.asyncio.client import connect

        class Backend(AsyncPyStrandsClient):
            async def on_connection_request(self, request: Any) -> Any:
                await asyncio.sleep(0)  # a really asynchronous decision
                if request.query != "let=me":
                    request.reject(418, "short and stout")
                    return None
                request.select_subprotocol("v9")
                return True

        client = Backend("127.0.0.1", broker.tcp_port)
        assert await client.connect()
        try:
            async with connect(broker.ws_url("/a?let=me"), subprotocols=[Subprotocol("v9")], open_timeout=TIMEOUT) as ws:
                assert ws.subprotocol == "v9"
            status = await asyncio.get_running_loop().run_in_executor(None, refusal, broker.ws_url("/a"))
            assert status == (418, b"short and stout")
        finally:
            await client.disconnect()

        app = PyStrands("127.0.0.1", broker.tcp_port)

        @app.on_connection_request
        def gate(request: Any) -> Any:
            return request.reject(451, "unavailable for legal reasons")

        assert await app.connect()
        try:
            status = await asyncio.get_running_loop().run_in_executor(None, refusal, broker.ws_url("/b"))
            assert status == (451, b"unavailable for legal reasons")
        finally:
            await app.disconnect()

    asyncio.run(asyncio.wait_for(main(), 60))
