"""Safe by default: what on_connection_request returns decides, and nothing
but True, False and None is a decision.

A handler that returns a value of another type (``USERS.get(token)``, ``0``,
``""``, ``"no"``) rejects the connection (HTTP 403), logged at ERROR once
per handler with the value's type; a handler that raises, calls
``sys.exit()`` or raises ``KeyboardInterrupt`` rejects it too, and the
client goes on answering the next requests. The same holds for message
handlers: ``sys.exit()`` in ``on_message`` does not stop the client. In the
sync client, the asyncio client (plain and ``async def`` handlers) and the
decorator app, each against the real broker with real WebSocket clients.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Any, List, Optional

import pytest
from websockets.asyncio.client import connect
from websockets.sync.client import connect as ws_connect

from conftest import TIMEOUT, Broker, http_status_of
from pystrands import AsyncPyStrandsClient, ConnectionRequestContext, Context, PyStrands, PyStrandsClient

#: What a handler may wrongly return, by the path that makes it do so.
NOT_DECISIONS = {"int": 0, "empty": "", "no": "no", "dict": {"name": "ada"}}


def decide(request: ConnectionRequestContext) -> Any:
    """Rejects, raises or accepts by the request path."""
    path = request.url
    if path == "/exit":
        sys.exit(3)
    if path == "/interrupt":
        raise KeyboardInterrupt
    if path == "/raise":
        raise RuntimeError("database down")
    if path == "/none-accepted":
        return None
    if path == "/none-rejected":
        request.accepted = False
        return None
    if path == "/accepted-str":
        request.accepted = "yes"  # type: ignore[assignment]
        return None
    if path.startswith("/value/"):
        return NOT_DECISIONS[path[len("/value/"):]]
    return True


def status_of(broker: Broker, path: str) -> int:
    """101 when the upgrade succeeds, else the HTTP status of the refusal."""
    try:
        with ws_connect(broker.ws_url(path), open_timeout=TIMEOUT):
            return 101
    except Exception as exc:
        status = http_status_of(exc)
        assert status is not None, repr(exc)
        return status


def exercise(broker: Broker, caplog: pytest.LogCaptureFixture) -> None:
    """The checks shared by every API."""
    for path in ("/exit", "/interrupt", "/raise", "/none-rejected", "/accepted-str"):
        assert status_of(broker, path) == 403, path
    assert status_of(broker, "/none-accepted") == 101
    for key in NOT_DECISIONS:
        assert status_of(broker, f"/value/{key}") == 403, key
    assert status_of(broker, "/value/no") == 403  # again: still rejected, not logged twice
    # the handler of every failure above ran on the client, which goes on
    assert status_of(broker, "/fine") == 101
    invalid = [r for r in caplog.records if "Return True to accept" in r.getMessage()]
    assert [r.levelno for r in invalid].count(logging.ERROR) == 1, invalid  # once per handler
    texts = "\n".join(r.getMessage() for r in invalid)
    for kind in ("int", "str", "dict"):
        assert f"returned a value of type '{kind}'" in texts
    assert "set request.accepted to a value of type 'str'" in texts
    failures = [r for r in caplog.records if "on_connection_request failed" in r.getMessage()]
    raised = {type(r.exc_info[1]).__name__ for r in failures if r.exc_info and r.exc_info[1]}
    assert raised == {"SystemExit", "KeyboardInterrupt", "RuntimeError"}, raised


def test_sync_client(broker: Broker, clients: List[Any], caplog: pytest.LogCaptureFixture) -> None:
    class Deciding(PyStrandsClient):
        def on_connection_request(self, request: ConnectionRequestContext) -> Any:
            return decide(request)

    client = Deciding("127.0.0.1", broker.tcp_port)
    clients.append(client)
    assert client.connect()
    with caplog.at_level(logging.DEBUG, logger="pystrands"):
        exercise(broker, caplog)
    assert client.connected


@pytest.mark.parametrize("style", ["async def", "def"])
def test_async_client(broker: Broker, caplog: pytest.LogCaptureFixture, style: str) -> None:
    if style == "async def":

        class Deciding(AsyncPyStrandsClient):
            async def on_connection_request(self, request: ConnectionRequestContext) -> Any:
                await asyncio.sleep(0)
                return decide(request)

    else:

        class Deciding(AsyncPyStrandsClient):  # type: ignore[no-redef]
            def on_connection_request(self, request: ConnectionRequestContext) -> Any:
                return decide(request)

    async def main() -> None:
        client = Deciding("127.0.0.1", broker.tcp_port)
        assert await client.connect()
        try:
            await asyncio.get_running_loop().run_in_executor(None, exercise, broker, caplog)
            assert client.connected
        finally:
            await client.disconnect()

    with caplog.at_level(logging.DEBUG, logger="pystrands"):
        asyncio.run(asyncio.wait_for(main(), 60))


def test_app(broker: Broker, caplog: pytest.LogCaptureFixture) -> None:
    app = PyStrands("127.0.0.1", broker.tcp_port)

    @app.on_connection_request
    def admit(request: ConnectionRequestContext) -> Any:
        return decide(request)

    async def main() -> None:
        assert await app.connect()
        try:
            await asyncio.get_running_loop().run_in_executor(None, exercise, broker, caplog)
            assert app.connected
        finally:
            await app.disconnect()

    with caplog.at_level(logging.DEBUG, logger="pystrands"):
        asyncio.run(asyncio.wait_for(main(), 60))


def test_sync_client_returning_a_coroutine_rejects(broker: Broker, clients: List[Any], caplog: pytest.LogCaptureFixture) -> None:
    """A sync client cannot run a coroutine: a handler that returns one
    (here set after construction) rejects instead of admitting everyone."""

    async def later(request: ConnectionRequestContext) -> bool:
        return True

    client = PyStrandsClient("127.0.0.1", broker.tcp_port)
    client.on_connection_request = later  # type: ignore[assignment, method-assign]
    clients.append(client)
    assert client.connect()
    with caplog.at_level(logging.ERROR, logger="pystrands"):
        assert status_of(broker, "/x") == 403
    assert any("returned a value of type 'coroutine'" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------- message handlers


def exiting_handler(message: str) -> Optional[str]:
    if message == "exit":
        sys.exit(1)
    if message == "interrupt":
        raise KeyboardInterrupt
    return "echo:" + message


def check_goes_on(broker: Broker) -> None:
    with ws_connect(broker.ws_url("/m"), open_timeout=TIMEOUT) as ws:
        ws.send("exit")
        ws.send("interrupt")
        ws.send("after")
        assert ws.recv(timeout=TIMEOUT) == "echo:after"


def test_sys_exit_in_a_message_handler_does_not_stop_the_sync_client(broker: Broker, clients: List[Any], caplog: pytest.LogCaptureFixture) -> None:
    class Exiting(PyStrandsClient):
        def on_message(self, message: Any, context: Context) -> None:
            reply = exiting_handler(message)
            if reply is not None:
                self.send_private_message(context.client_id, reply)

    client = Exiting("127.0.0.1", broker.tcp_port)
    clients.append(client)
    assert client.connect()
    with caplog.at_level(logging.ERROR, logger="pystrands"):
        check_goes_on(broker)
    assert client.connected
    assert sum("raised SystemExit" in r.getMessage() for r in caplog.records) == 1
    assert sum("raised KeyboardInterrupt" in r.getMessage() for r in caplog.records) == 1


def test_sys_exit_in_a_message_handler_does_not_stop_the_async_client_or_app(broker: Broker) -> None:
    class Exiting(AsyncPyStrandsClient):
        async def on_message(self, message: Any, context: Context) -> None:
            reply = exiting_handler(message)
            if reply is not None:
                await self.send_private_message(context.client_id, reply)

    app = PyStrands("127.0.0.1", broker.tcp_port)

    @app.on_message
    def said(message: Any, context: Context) -> None:
        reply = exiting_handler(message)
        if reply is not None:
            app.send_private_message(context.client_id, reply)

    async def main() -> None:
        for api in (Exiting("127.0.0.1", broker.tcp_port), app):
            assert await api.connect()
            try:
                await asyncio.get_running_loop().run_in_executor(None, check_goes_on, broker)
                assert api.connected
            finally:
                await api.disconnect()

    asyncio.run(asyncio.wait_for(main(), 60))


def test_handlers_cannot_be_async_in_the_sync_client() -> None:
    class Wrong(PyStrandsClient):
        async def on_message(self, message: Any, context: Context) -> None:  # type: ignore[override]
            pass

    with pytest.raises(TypeError, match="on_message is a coroutine function"):
        Wrong("127.0.0.1", 1)

