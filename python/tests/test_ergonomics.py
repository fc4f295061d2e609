"""Context managers, a read-only ``connected``, and the broker address from
``PYSTRANDS_HOST`` / ``PYSTRANDS_PORT`` when none is given."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from websockets.sync.client import connect as ws_connect

from conftest import TIMEOUT, Broker
from pystrands import (
    AsyncPublisher,
    AsyncPyStrandsClient,
    Context,
    Publisher,
    PyStrands,
    PyStrandsClient,
    PyStrandsConnectionError,
)


def test_sync_client_is_a_context_manager(broker: Broker) -> None:
    class Echo(PyStrandsClient):
        def on_message(self, message: Any, context: Context) -> None:
            self.send_private_message(context.client_id, message)

    with Echo("127.0.0.1", broker.tcp_port) as client:
        assert client.connected
        with ws_connect(broker.ws_url("/c"), open_timeout=TIMEOUT) as ws:
            ws.send("inside")
            assert ws.recv(timeout=TIMEOUT) == "inside"
    assert not client.connected


def test_async_client_and_app_are_async_context_managers(broker: Broker) -> None:
    async def main() -> None:
        async with AsyncPyStrandsClient("127.0.0.1", broker.tcp_port) as client:
            assert client.connected
            assert (await client.presence_stats("r")).clients == 0
        assert not client.connected
        app = PyStrands("127.0.0.1", broker.tcp_port)
        async with app as entered:
            assert entered is app and app.connected
        assert not app.connected

    asyncio.run(asyncio.wait_for(main(), 60))


def test_a_context_manager_that_cannot_connect_raises(unused_port: int) -> None:
    with pytest.raises(PyStrandsConnectionError, match="cannot connect"):
        with PyStrandsClient("127.0.0.1", unused_port):
            pass

    async def main() -> None:
        with pytest.raises(PyStrandsConnectionError, match="cannot connect"):
            async with AsyncPyStrandsClient("127.0.0.1", unused_port):
                pass

    asyncio.run(asyncio.wait_for(main(), 60))


def test_connected_is_read_only() -> None:
    for api in (PyStrandsClient("h", 1), AsyncPyStrandsClient("h", 1), PyStrands("h", 1)):
        with pytest.raises(AttributeError):
            api.connected = True  # type: ignore[misc]
        assert api.connected is False


def test_address_from_the_environment(broker: Broker, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYSTRANDS_HOST", "127.0.0.1")
    monkeypatch.setenv("PYSTRANDS_PORT", str(broker.tcp_port))
    sync = PyStrandsClient()
    assert (sync.host, sync.port) == ("127.0.0.1", broker.tcp_port)
    for api in (AsyncPyStrandsClient(), PyStrands().client, Publisher(), AsyncPublisher()):
        assert (api.host, api.port) == ("127.0.0.1", broker.tcp_port)
    # an explicit address wins
    assert PyStrandsClient("localhost", 9).port == 9
    with sync:
        assert sync.connected
    monkeypatch.setenv("PYSTRANDS_PORT", "not-a-port")
    with pytest.raises(ValueError, match="PYSTRANDS_PORT"):
        PyStrandsClient()


def test_defaults_without_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PYSTRANDS_HOST", raising=False)
    monkeypatch.delenv("PYSTRANDS_PORT", raising=False)
    client = PyStrandsClient()
    assert (client.host, client.port) == ("localhost", 8081)
