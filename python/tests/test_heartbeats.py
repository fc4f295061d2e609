"""A broker that stops answering is noticed: no data (not even a heartbeat)
for three ``heartbeat_interval`` periods drops the link with a logged
reason, and the client reconnects. Heartbeats never reach a handler.

The broker runs with ``--heartbeat-interval 0.5`` and the clients are told
so (1.5 s of silence drops a link: short, but longer than a busy test machine
holds up a resumed broker); the broker is stopped with SIGSTOP (its sockets stay open, it just
answers nothing) and resumed with SIGCONT.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any, Callable, List

import pytest

from conftest import Broker, Events, wait_for
from pystrands import AsyncPublisher, AsyncPyStrandsClient, Context, Publisher, PyStrands, PyStrandsClient

INTERVAL = 0.5


@pytest.fixture
def beating(broker_factory: Callable[..., Broker]) -> Broker:
    return broker_factory(extra_args=["--heartbeat-interval", str(INTERVAL)])


class Recorder(PyStrandsClient):
    """Records every handler call."""

    def __init__(self, events: Events, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.events = events

    def on_message(self, message: Any, context: Context) -> None:
        self.events.put("message", message)

    def on_error(self, error: str, context: Context) -> None:
        self.events.put("error", error)


def silence_is_logged(caplog: pytest.LogCaptureFixture) -> bool:
    return any(
        r.levelno == logging.WARNING and "not even a heartbeat" in r.getMessage() for r in caplog.records
    )


def test_heartbeats_reach_no_handler(beating: Broker, clients: List[Any], events: Events) -> None:
    client = Recorder(events, "127.0.0.1", beating.tcp_port, heartbeat_interval=INTERVAL)
    clients.append(client)
    assert client.connect()
    wait_for(lambda: client._core.heartbeats >= 3, what="three heartbeats")
    assert events.q.empty()


def test_sync_client_reconnects_when_the_broker_stops_answering(
    beating: Broker, clients: List[Any], caplog: pytest.LogCaptureFixture
) -> None:
    client = PyStrandsClient("127.0.0.1", beating.tcp_port, heartbeat_interval=INTERVAL,
                             reconnect_delay=0.05, max_reconnect_delay=0.2)
    clients.append(client)
    assert client.connect()
    with caplog.at_level(logging.WARNING, logger="pystrands"):
        beating.send_signal(signal.SIGSTOP)
        try:
            wait_for(lambda: silence_is_logged(caplog), what="the silence to be noticed")
            wait_for(lambda: not client.connected, what="the link to be dropped")
        finally:
            beating.send_signal(signal.SIGCONT)
    # A heartbeat after the resume, on the new link: the broker serves it.
    beats = client._core.heartbeats
    wait_for(lambda: client.connected and client._core.heartbeats > beats, what="the reconnect")
    assert client.presence_stats("r").clients == 0  # the new link works


def test_async_client_and_app_reconnect_when_the_broker_stops_answering(
    beating: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        for api in (
            AsyncPyStrandsClient("127.0.0.1", beating.tcp_port, heartbeat_interval=INTERVAL,
                                 reconnect_delay=0.05, max_reconnect_delay=0.2),
            PyStrands("127.0.0.1", beating.tcp_port, heartbeat_interval=INTERVAL,
                      reconnect_delay=0.05, max_reconnect_delay=0.2),
        ):
            caplog.clear()
            serving = asyncio.ensure_future(api.run_forever(handle_signals=False))
            try:
                while not api.connected:
                    await asyncio.sleep(0.01)
                beating.send_signal(signal.SIGSTOP)
                try:
                    while not silence_is_logged(caplog) or api.connected:
                        await asyncio.sleep(0.01)
                finally:
                    beating.send_signal(signal.SIGCONT)
                # A heartbeat after the resume, on the new link.
                beats = api._core.heartbeats
                while not api.connected or api._core.heartbeats <= beats:
                    await asyncio.sleep(0.01)
                assert (await api.presence_stats("r")).clients == 0
            finally:
                await api.disconnect()
                await asyncio.wait_for(serving, 10)

    with caplog.at_level(logging.WARNING, logger="pystrands"):
        asyncio.run(asyncio.wait_for(main(), 60))


def test_publishers_drop_a_silent_link_and_reconnect_on_the_next_call(
    beating: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="pystrands"):
        with Publisher("127.0.0.1", beating.tcp_port, heartbeat_interval=INTERVAL) as publisher:
            publisher.connect()
            beating.send_signal(signal.SIGSTOP)
            try:
                wait_for(lambda: not publisher.connected, what="the publisher to drop the link")
            finally:
                beating.send_signal(signal.SIGCONT)
            assert silence_is_logged(caplog)
            assert publisher.presence_stats("r").clients == 0

        async def main() -> None:
            caplog.clear()
            async with AsyncPublisher("127.0.0.1", beating.tcp_port, heartbeat_interval=INTERVAL) as publisher:
                await publisher.connect()
                beating.send_signal(signal.SIGSTOP)
                try:
                    while publisher.connected:
                        await asyncio.sleep(0.01)
                finally:
                    beating.send_signal(signal.SIGCONT)
                assert silence_is_logged(caplog)
                assert (await publisher.presence_stats("r")).clients == 0

        asyncio.run(asyncio.wait_for(main(), 60))
