"""--backend-token: the clients send the auth line first (token= or
$PYSTRANDS_BACKEND_TOKEN); a wrong token is refused before any event."""

from __future__ import annotations

import asyncio
from typing import Any, Callable, List

import pytest
from websockets.asyncio.client import connect
from websockets.sync.client import connect as ws_connect

from conftest import TIMEOUT, Broker, Events, http_status_of
from pystrands import AsyncPyStrandsClient, AuthenticationError, PyStrands, PyStrandsClient

TOKEN = "s3cret-tøken"


@pytest.fixture
def guarded(broker_factory: Callable[..., Broker]) -> Any:
    return broker_factory(extra_args=["--backend-token", TOKEN])


class Echo(PyStrandsClient):
    def __init__(self, events: Events, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.events = events

    def on_message(self, message: Any, context: Any) -> None:
        self.send_private_message(context.client_id, message)

    def on_error(self, error: Any, context: Any) -> None:
        self.events.put("error", error)


def echo_works(broker: Broker) -> Any:
    with ws_connect(broker.ws_url("/t"), open_timeout=TIMEOUT) as ws:
        ws.send("ping")
        return ws.recv(timeout=TIMEOUT) == "ping"


def test_sync_client_with_the_token(guarded: Broker, clients: List[Any], events: Events) -> None:
    client = Echo(events, host="127.0.0.1", port=guarded.tcp_port, token=TOKEN)
    clients.append(client)
    assert client.connect()
    assert echo_works(guarded)


def test_token_from_the_environment(guarded: Broker, clients: List[Any], events: Events, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYSTRANDS_BACKEND_TOKEN", TOKEN)
    client = Echo(events, host="127.0.0.1", port=guarded.tcp_port)
    assert client.token == TOKEN
    clients.append(client)
    assert client.connect()
    assert echo_works(guarded)


def test_wrong_token_is_refused(guarded: Broker, clients: List[Any], events: Events) -> None:
    client = Echo(events, host="127.0.0.1", port=guarded.tcp_port, token="wrong", auto_reconnect=False)
    clients.append(client)
    with pytest.raises(AuthenticationError, match="refused the backend's token") as info:
        client.connect()
    assert "authentication failed" in info.value.reason
    assert not client.connected
    assert refused(guarded) == 503


def test_without_a_token_the_backend_is_refused(guarded: Broker, clients: List[Any], events: Events, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PYSTRANDS_BACKEND_TOKEN", raising=False)
    client = Echo(events, host="127.0.0.1", port=guarded.tcp_port)
    assert client.token is None
    clients.append(client)
    with pytest.raises(AuthenticationError, match="none was given"):
        client.connect()
    assert refused(guarded) == 503  # the broker routes nothing to it


def refused(broker: Broker) -> Any:
    with pytest.raises(Exception) as info:
        with ws_connect(broker.ws_url("/t"), open_timeout=TIMEOUT):
            pass
    return http_status_of(info.value)


def test_a_broker_without_token_ignores_the_auth_line(broker: Broker, clients: List[Any], events: Events) -> None:
    client = Echo(events, host="127.0.0.1", port=broker.tcp_port, token="unneeded")
    clients.append(client)
    assert client.connect()
    assert echo_works(broker)


def test_async_client_and_app_with_the_token(guarded: Broker, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PYSTRANDS_BACKEND_TOKEN", raising=False)

    async def main() -> None:
        class AEcho(AsyncPyStrandsClient):
            async def on_message(self, message: Any, context: Any) -> None:
                await self.send_private_message(context.client_id, message)

        client = AEcho("127.0.0.1", guarded.tcp_port, token=TOKEN)
        assert await client.connect()
        try:
            async with connect(guarded.ws_url("/a"), open_timeout=TIMEOUT) as ws:
                await ws.send("a")
                assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "a"
        finally:
            await client.disconnect()

        app = PyStrands("127.0.0.1", guarded.tcp_port, token=TOKEN)

        @app.on_message
        def echo(message: Any, context: Any) -> None:
            app.send_private_message(context.client_id, message)

        assert await app.connect()
        try:
            async with connect(guarded.ws_url("/b"), open_timeout=TIMEOUT) as ws:
                await ws.send("b")
                assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "b"
        finally:
            await app.disconnect()

    asyncio.run(asyncio.wait_for(main(), 60))
