"""A command too long for the broker's ``--max-line-size`` raises
MessageTooLargeError in the send, and the connection stays up (the broker
would otherwise close the whole backend connection). The clients cannot
know the broker's setting: ``max_line_size`` (default 16 MiB, the broker's
default) says it. Every API, real broker."""

from __future__ import annotations

import asyncio
from typing import Any, Callable, List

import pytest
from websockets.sync.client import connect as ws_connect

from conftest import TIMEOUT, Broker
from pystrands import (
    AsyncPublisher,
    AsyncPyStrandsClient,
    MessageTooLargeError,
    Publisher,
    PyStrands,
    PyStrandsClient,
    PyStrandsError,
)

LIMIT = 4096
TOO_LONG = "x" * (LIMIT + 100)
#: Binary grows by a third in base64: short enough as bytes, too long as a line.
TOO_LONG_BINARY = b"\x00" * (LIMIT - 1000)


@pytest.fixture
def small(broker_factory: Callable[..., Broker]) -> Broker:
    return broker_factory(extra_args=["--max-line-size", str(LIMIT)])


def check_error(exc: MessageTooLargeError) -> None:
    assert isinstance(exc, PyStrandsError) and isinstance(exc, ValueError)
    assert exc.limit == LIMIT and exc.size > LIMIT
    assert "max_line_size" in str(exc) and "--max-line-size" in str(exc)


def test_defaults_are_the_broker_s() -> None:
    for api in (PyStrandsClient("h", 1), AsyncPyStrandsClient("h", 1), PyStrands("h", 1).client,
                Publisher("h", 1), AsyncPublisher("h", 1)):
        assert api.max_line_size == 16 * 1024 * 1024


def test_sync_client(small: Broker, clients: List[Any]) -> None:
    client = PyStrandsClient("127.0.0.1", small.tcp_port, max_line_size=LIMIT)
    clients.append(client)
    assert client.connect()
    with ws_connect(small.ws_url("/r"), open_timeout=TIMEOUT) as ws:
        calls: List[Callable[[], Any]] = [
            lambda: client.send_room_message("/r", TOO_LONG),
            lambda: client.send_room_message("/r", TOO_LONG_BINARY),
            lambda: client.broadcast_message(TOO_LONG, ack=True),
            lambda: client.set_metadata({"bio": TOO_LONG}, client_id="ada"),
        ]
        for call in calls:
            with pytest.raises(MessageTooLargeError) as info:
                call()
            check_error(info.value)
        assert client._core.waiting == 0
        assert client.send_room_message("/r", "still connected", ack=True) == 1
        assert ws.recv(timeout=TIMEOUT) == "still connected"
    assert client.connected


def test_sync_client_default_limit(broker: Broker, clients: List[Any]) -> None:
    client = PyStrandsClient("127.0.0.1", broker.tcp_port)
    clients.append(client)
    assert client.connect()
    with pytest.raises(MessageTooLargeError):
        client.broadcast_message("y" * (16 * 1024 * 1024))
    assert client.presence_stats("r").connections == 0  # the link is fine


def test_async_client_and_app(small: Broker) -> None:
    async def main() -> None:
        for api in (
            AsyncPyStrandsClient("127.0.0.1", small.tcp_port, max_line_size=LIMIT),
            PyStrands("127.0.0.1", small.tcp_port, max_line_size=LIMIT),
        ):
            assert await api.connect()
            try:
                with pytest.raises(MessageTooLargeError) as info:
                    api.send_private_message("ada", TOO_LONG)  # raises in the call
                check_error(info.value)
                with pytest.raises(MessageTooLargeError):
                    await api.send_room_message("r", TOO_LONG_BINARY, ack=True)
                assert await api.presence_stats("r") is not None
                assert api.connected
            finally:
                await api.disconnect()

    asyncio.run(asyncio.wait_for(main(), 60))


def test_publishers(small: Broker) -> None:
    with Publisher("127.0.0.1", small.tcp_port, max_line_size=LIMIT) as publisher:
        with pytest.raises(MessageTooLargeError) as info:
            publisher.broadcast_message(TOO_LONG)
        check_error(info.value)
        assert publisher.send_room_message("r", "fine", ack=True) == 0

    async def main() -> None:
        async with AsyncPublisher("127.0.0.1", small.tcp_port, max_line_size=LIMIT) as publisher:
            with pytest.raises(MessageTooLargeError):
                await publisher.send_connection_message("c1", TOO_LONG)
            assert await publisher.send_room_message("r", "fine", ack=True) == 0

    asyncio.run(asyncio.wait_for(main(), 60))
