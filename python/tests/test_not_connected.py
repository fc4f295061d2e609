"""Sending while not connected raises NotConnectedError (not a silent log line)."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from conftest import Broker
from pystrands import (
    AsyncPyStrandsClient,
    NotConnectedError,
    PyStrands,
    PyStrandsClient,
    PyStrandsConnectionError,
    PyStrandsError,
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


SENDS = [
    ("broadcast_message", ("hi",)),
    ("send_room_message", ("room", "hi")),
    ("send_private_message", ("client", "hi")),
]


def test_error_hierarchy() -> None:
    assert issubclass(NotConnectedError, PyStrandsConnectionError)
    assert issubclass(NotConnectedError, ConnectionError)
    assert issubclass(PyStrandsConnectionError, PyStrandsError)


@pytest.mark.parametrize("method, args", SENDS)
def test_sync_send_before_connect_raises(method: Any, args: Any) -> None:
    client = PyStrandsClient("127.0.0.1", free_port())
    with pytest.raises(NotConnectedError, match="not connected"):
        getattr(client, method)(*args)


@pytest.mark.parametrize("method, args", SENDS)
def test_sync_send_after_disconnect_raises(broker: Broker, method: Any, args: Any) -> None:
    client = PyStrandsClient("127.0.0.1", broker.tcp_port)
    assert client.connect()
    getattr(client, method)(*args)  # fine while connected
    client.disconnect()
    assert not client.connected
    with pytest.raises(NotConnectedError):
        getattr(client, method)(*args)


def test_sync_connect_to_nothing_returns_false_and_sends_raise() -> None:
    client = PyStrandsClient("127.0.0.1", free_port(), auto_reconnect=False)
    assert client.connect() is False
    with pytest.raises(NotConnectedError):
        client.broadcast_message("x")


def test_sync_run_forever_without_broker_and_without_reconnect_raises() -> None:
    client = PyStrandsClient("127.0.0.1", free_port(), auto_reconnect=False)
    with pytest.raises(PyStrandsConnectionError):
        client.run_forever()


def test_sync_wrong_argument_type_raises_type_error(broker: Broker) -> None:
    client = PyStrandsClient("127.0.0.1", broker.tcp_port)
    assert client.connect()
    try:
        with pytest.raises(TypeError):
            client.send_private_message("c", {"not": "text"})  # type: ignore[arg-type]
        client.send_private_message("c", "still connected")
        assert client.connected
    finally:
        client.disconnect()


@pytest.mark.parametrize("method, args", SENDS)
def test_async_send_while_disconnected_raises(broker: Broker, method: Any, args: Any) -> None:
    async def main() -> None:
        client = AsyncPyStrandsClient("127.0.0.1", broker.tcp_port)
        with pytest.raises(NotConnectedError):
            await getattr(client, method)(*args)
        assert await client.connect()
        await getattr(client, method)(*args)
        await client.disconnect()
        with pytest.raises(NotConnectedError):
            await getattr(client, method)(*args)

    asyncio.run(asyncio.wait_for(main(), 30))


def test_async_run_forever_without_broker_and_without_reconnect_raises() -> None:
    async def main() -> None:
        client = AsyncPyStrandsClient("127.0.0.1", free_port(), auto_reconnect=False)
        assert await client.connect() is False
        with pytest.raises(PyStrandsConnectionError):
            await client.run_forever()

    asyncio.run(asyncio.wait_for(main(), 30))


def test_app_send_while_disconnected_raises() -> None:
    app = PyStrands("127.0.0.1", free_port())
    with pytest.raises(NotConnectedError):
        app.broadcast("hi")
    with pytest.raises(NotConnectedError):
        app.send_room_message("r", "hi")
    with pytest.raises(NotConnectedError):
        app.send_private_message("c", "hi")
