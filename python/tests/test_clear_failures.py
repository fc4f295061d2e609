"""Clear failures instead of endless retries:

- a wrong or missing token raises AuthenticationError from connect() (and
  from run_forever() when a reconnect is refused), and the retrying stops;
- the reconnect backoff starts over only once the broker has accepted the
  backend, not at every TCP connect;
- pointing a client at the broker's WebSocket port raises NotABrokerError,
  which says so.

Sync client, asyncio client, decorator app and publishers, real broker.
"""

from __future__ import annotations

import asyncio
import random
import socket
import threading
from typing import Any, Callable, Iterator, List

import pytest

from conftest import TIMEOUT, Broker, wait_for
from pystrands import (
    AsyncPublisher,
    AsyncPyStrandsClient,
    AuthenticationError,
    NotABrokerError,
    Publisher,
    PyStrands,
    PyStrandsClient,
    PyStrandsConnectionError,
)

TOKEN = "right-token"


@pytest.fixture
def guarded(broker_factory: Callable[..., Broker]) -> Broker:
    return broker_factory(extra_args=["--backend-token", TOKEN])


def run(coro: Any, timeout: float = 60) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout))


# ---------------------------------------------------------------- tokens


@pytest.mark.parametrize("token", ["wrong", None], ids=["wrong token", "no token"])
def test_every_api_raises_authentication_error(guarded: Broker, token: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PYSTRANDS_BACKEND_TOKEN", raising=False)
    expected = "refused the backend's token" if token else "none was given"
    sync = PyStrandsClient("127.0.0.1", guarded.tcp_port, token=token)
    with pytest.raises(AuthenticationError, match=expected):
        sync.connect()
    assert not sync.connected and not sync._reconnecting()
    with pytest.raises(AuthenticationError, match=expected):
        Publisher("127.0.0.1", guarded.tcp_port, token=token).broadcast_message("hi")

    async def main() -> None:
        for api in (AsyncPyStrandsClient("127.0.0.1", guarded.tcp_port, token=token),
                    PyStrands("127.0.0.1", guarded.tcp_port, token=token)):
            with pytest.raises(AuthenticationError, match=expected):
                await api.connect()
            assert not api.connected
        with pytest.raises(AuthenticationError, match=expected):
            await AsyncPublisher("127.0.0.1", guarded.tcp_port, token=token).presence("r")

    run(main())


def restart_with_token(broker: Broker, binary: str, token: str) -> Broker:
    """Stop ``broker`` and start another on the same ports with ``token``."""
    broker.stop()
    other = Broker(binary, extra_args=["--backend-token", token])
    for _ in range(int(TIMEOUT / 0.05)):
        try:
            return other.start(broker.ws_port, broker.tcp_port)
        except BaseException:
            threading.Event().wait(0.05)
    raise AssertionError("could not restart the broker on the same ports")


def test_sync_run_forever_stops_retrying_when_a_reconnect_is_refused(guarded: Broker, broker_binary: str) -> None:
    client = PyStrandsClient("127.0.0.1", guarded.tcp_port, token=TOKEN, reconnect_delay=0.05)
    assert client.connect()
    outcome: List[BaseException] = []

    def serve() -> None:
        try:
            client.run_forever(handle_signals=False)
        except BaseException as exc:  # recorded, asserted below
            outcome.append(exc)

    runner = threading.Thread(target=serve)
    runner.start()
    other = restart_with_token(guarded, broker_binary, "a-new-token")
    try:
        runner.join(TIMEOUT)
        assert not runner.is_alive(), "run_forever kept retrying"
        assert len(outcome) == 1 and isinstance(outcome[0], AuthenticationError), outcome
        assert not client.connected
    finally:
        client.disconnect()
        other.stop()


def test_async_run_forever_stops_retrying_when_a_reconnect_is_refused(guarded: Broker, broker_binary: str) -> None:
    async def main() -> None:
        client = AsyncPyStrandsClient("127.0.0.1", guarded.tcp_port, token=TOKEN, reconnect_delay=0.05)
        assert await client.connect()
        serving = asyncio.ensure_future(client.run_forever(handle_signals=False))
        other = await asyncio.get_running_loop().run_in_executor(
            None, restart_with_token, guarded, broker_binary, "a-new-token"
        )
        try:
            with pytest.raises(AuthenticationError):
                await asyncio.wait_for(serving, TIMEOUT)
            assert not client.connected
        finally:
            other.stop()

    run(main())


# ---------------------------------------------------------------- backoff


class PendingSlot:
    """A backend connection that never authenticates: with
    ``--max-pending-backends 1`` it takes the only place, so the broker
    refuses every other backend at once ("too many backends waiting")."""

    def __init__(self, broker: Broker) -> None:
        self.sock = socket.create_connection(("127.0.0.1", broker.tcp_port))
        broker.wait_log(r"waiting for its auth line")

    def release(self) -> None:
        self.sock.close()


def recording(client: Any, waits: List[float]) -> None:
    """Record every wait of the client's reconnect schedule."""
    schedule = client._reconnect_waits

    def recorded() -> Iterator[float]:
        for wait in schedule():
            waits.append(wait)
            yield wait

    client._reconnect_waits = recorded


@pytest.fixture
def crowded(broker_factory: Callable[..., Broker]) -> Broker:
    return broker_factory(
        connect_timeout=30.0,
        extra_args=["--backend-token", TOKEN, "--max-pending-backends", "1"],
    )


def test_sync_backoff_grows_while_the_broker_refuses_and_starts_over_once_accepted(
    crowded: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(random, "uniform", lambda a, b: b)  # no jitter
    slot = PendingSlot(crowded)
    client = PyStrandsClient("127.0.0.1", crowded.tcp_port, token=TOKEN,
                             reconnect_delay=0.02, max_reconnect_delay=0.32)
    waits: List[float] = []
    recording(client, waits)
    runner = threading.Thread(target=client.run_forever, kwargs={"handle_signals": False}, daemon=True)
    runner.start()  # the first connect is refused; the dispatcher retries
    try:
        wait_for(lambda: len(waits) >= 6, what="six refused reconnects")
        assert waits[:6] == pytest.approx([0.02, 0.04, 0.08, 0.16, 0.32, 0.32])
        slot.release()

        def accepted() -> bool:  # the broker answers a request only once it accepted the backend
            try:
                client.presence_stats("r")
            except PyStrandsConnectionError:
                return False
            return True

        wait_for(accepted, what="the broker to accept the backend")
        before = len(waits)
        assert client._sock is not None
        client._sock.shutdown(socket.SHUT_RDWR)  # the link drops
        wait_for(lambda: len(waits) > before, what="a reconnect")
        assert waits[before] == pytest.approx(0.02)  # accepted in between: the schedule starts over
    finally:
        client.disconnect()
        runner.join(TIMEOUT)


def test_async_backoff_grows_while_the_broker_refuses(crowded: Broker, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(random, "uniform", lambda a, b: b)
    slot = PendingSlot(crowded)

    async def main() -> None:
        client = AsyncPyStrandsClient("127.0.0.1", crowded.tcp_port, token=TOKEN,
                                      reconnect_delay=0.02, max_reconnect_delay=0.32)
        waits: List[float] = []
        recording(client, waits)
        serving = asyncio.ensure_future(client.run_forever(handle_signals=False))
        try:
            while len(waits) < 6:
                await asyncio.sleep(0.01)
            assert waits[:6] == pytest.approx([0.02, 0.04, 0.08, 0.16, 0.32, 0.32])
            slot.release()
            while True:  # the broker answers a request only once it accepted the backend
                try:
                    await client.presence_stats("r")
                    break
                except PyStrandsConnectionError:
                    await asyncio.sleep(0.01)
            before = len(waits)
            assert client._conn is not None and client._conn.transport is not None
            client._conn.transport.abort()
            while len(waits) <= before:
                await asyncio.sleep(0.01)
            assert waits[before] == pytest.approx(0.02)
        finally:
            await client.disconnect()
            await asyncio.wait_for(serving, TIMEOUT)

    run(main())


# ---------------------------------------------------------------- the wrong port


def check_not_a_broker(exc: NotABrokerError) -> None:
    text = str(exc)
    assert "answered with HTTP" in text and "WebSocket port" in text and "--tcp-port" in text
    assert isinstance(exc, PyStrandsConnectionError)


def test_every_api_names_the_websocket_port(broker: Broker) -> None:
    port = broker.ws_port
    with pytest.raises(NotABrokerError) as info:
        PyStrandsClient("127.0.0.1", port).connect()
    check_not_a_broker(info.value)
    with pytest.raises(NotABrokerError):
        PyStrandsClient("127.0.0.1", port).run_forever(handle_signals=False)
    with pytest.raises(NotABrokerError):
        Publisher("127.0.0.1", port).broadcast_message("hi")

    async def main() -> None:
        for api in (AsyncPyStrandsClient("127.0.0.1", port), PyStrands("127.0.0.1", port)):
            with pytest.raises(NotABrokerError) as info:
                await api.connect()
            check_not_a_broker(info.value)
        with pytest.raises(NotABrokerError):
            await AsyncPublisher("127.0.0.1", port).broadcast_message("hi")

    run(main())
