"""The decorator API (PyStrands) against the real broker."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.sync.client import connect as ws_connect

from conftest import TIMEOUT, Broker, http_status_of, wait_for
from pystrands import Context, PyStrands


def run(coro: Any, timeout: Any=60) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout))


def make_app(broker: Broker, log: Any) -> Any:
    app = PyStrands(host="127.0.0.1", port=broker.tcp_port)

    @app.on_connection_request
    async def admit(request: Any) -> Any:  # async handler
        if request.url.startswith("/private"):
            return False
        if request.url.startswith("/raise"):
            raise PermissionError("nope")
        if request.url.startswith("/flag"):
            request.accepted = False
            return None
        request.context.room_id = request.url.strip("/").split("/")[0]
        request.context.metadata = {"via": "app"}
        return True

    @app.on_new_connection
    def joined(context: Any) -> None:  # sync handler
        log.put_nowait(("joined", context))
        app.send_private_message(context.client_id, "welcome")  # no await: sends anyway

    @app.on_message
    async def said(message: Any, context: Any) -> None:
        log.put_nowait(("message", message, context))
        if message == "room":
            await app.send_room_message(context.room_id, f"room:{context.room_id}")
        elif message == "all":
            app.broadcast("to everyone")
        elif message == "all2":
            await app.broadcast_message("to everyone again")

    @app.on_disconnect
    async def left(context: Any) -> None:
        log.put_nowait(("left", context.client_id))

    return app


async def next_of(q: Any, kind: Any) -> Any:
    while True:
        item = await asyncio.wait_for(q.get(), TIMEOUT)
        if item[0] == kind:
            return item


def test_decorated_handlers_sync_and_async(broker: Broker) -> None:
    async def main() -> None:
        log: "asyncio.Queue[Any]" = asyncio.Queue()
        app = make_app(broker, log)
        serving = asyncio.ensure_future(app.serve())
        try:
            while not app.connected:
                await asyncio.sleep(0.01)
            async with connect(broker.ws_url("/lobby/x"), open_timeout=TIMEOUT) as a, \
                    connect(broker.ws_url("/lobby/y"), open_timeout=TIMEOUT) as b, \
                    connect(broker.ws_url("/other"), open_timeout=TIMEOUT) as c:
                for ws in (a, b, c):
                    assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "welcome"
                _, ctx = await next_of(log, "joined")
                assert ctx.room_id == "lobby" and ctx.metadata == {"via": "app"}
                await a.send("room")
                assert await asyncio.wait_for(a.recv(), TIMEOUT) == "room:lobby"
                assert await asyncio.wait_for(b.recv(), TIMEOUT) == "room:lobby"
                await c.send("all")
                for ws in (a, b, c):
                    assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "to everyone"
                await c.send("all2")
                for ws in (a, b, c):
                    assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "to everyone again"
                # c never got lobby's room message: its next frame is the broadcast above
                _, message, mctx = await next_of(log, "message")
                assert message == "room" and mctx.context.room_id == "lobby"
            for path in ("/private", "/raise", "/flag"):
                with pytest.raises(Exception) as info:
                    async with connect(broker.ws_url(path), open_timeout=TIMEOUT):
                        pass
                assert http_status_of(info.value) == 403, path
            await next_of(log, "left")
        finally:
            await app.disconnect()
            await asyncio.wait_for(serving, TIMEOUT)

    run(main())


def test_decorators_return_the_function_and_accept_parentheses() -> None:
    app = PyStrands()

    def handler(message: Any, context: Any) -> None:
        return None

    assert app.on_message(handler) is handler
    assert app.on_message()(handler) is handler
    assert app.on_connect is not None
    with pytest.raises(TypeError):
        app.on_message(42)  # type: ignore[call-overload]


def test_app_run_blocks_until_disconnect(broker: Broker) -> None:
    app = PyStrands(host="127.0.0.1", port=broker.tcp_port)

    @app.on_message
    async def quit_on_request(message: Any, context: Any) -> None:
        await app.send_private_message(context.client_id, "stopping")
        await app.disconnect()

    runner = threading.Thread(target=app.run, daemon=True)
    runner.start()
    wait_for(lambda: app.connected, what="the app to connect")
    with ws_connect(broker.ws_url("/stop"), open_timeout=TIMEOUT) as ws:
        ws.send("quit")
        assert ws.recv(timeout=TIMEOUT) == "stopping"
    runner.join(TIMEOUT)
    assert not runner.is_alive(), "app.run() did not return"


def test_app_on_error_receives_broker_errors(broker: Broker) -> None:
    """The broker answers a line it cannot use with an `error` event that has
    no context; the handler gets empty context fields, not a crash."""

    async def main() -> None:
        app = PyStrands(host="127.0.0.1", port=broker.tcp_port)
        errors: "asyncio.Queue[Any]" = asyncio.Queue()

        @app.on_error
        def on_error(error: Any, context: Any) -> None:
            errors.put_nowait((error, context))

        serving = asyncio.ensure_future(app.serve())
        try:
            while not app.connected:
                await asyncio.sleep(0.01)
            app.client._write(b'{"action":"no_such_action","request_id":"bad-1","params":{}}\n')
            error, context = await asyncio.wait_for(errors.get(), TIMEOUT)
            assert isinstance(error, str) and error
            assert context == Context("", "", {})
            assert context.context.client_id == ""
        finally:
            await app.disconnect()
            await asyncio.wait_for(serving, TIMEOUT)

    run(main())
