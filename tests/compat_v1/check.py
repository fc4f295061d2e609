"""Wire compatibility with the published pystrands 1.0.0 client.

Runs a backend written against `pystrands==1.0.0` (the client we replace;
installed from PyPI in its own virtualenv by .ci/test) unchanged against
our broker, and drives it with real WebSocket clients (`websockets`):
assignment and rejection of connection requests, room, private and
broadcast messages, disconnect events, unicode.

    python tests/compat_v1/check.py path/to/pystrands-server

Exits non-zero, naming the failed check, when anything differs.
"""

import asyncio
import queue
import re
import subprocess
import sys
import threading
from typing import Any, Dict, List, Optional, Tuple

import pystrands  # the published 1.0.0 package
import websockets
from pystrands import PyStrandsClient

try:  # websockets >= 13
    from websockets.asyncio.client import connect as ws_connect

    HEADERS_ARG = "additional_headers"
except ImportError:  # older websockets
    from websockets import connect as ws_connect  # type: ignore[no-redef]

    HEADERS_ARG = "extra_headers"

TIMEOUT = 5.0


class Recorder(PyStrandsClient):
    """A 1.0.0-style backend: assigns rooms from the path, rejects /deny."""

    def __init__(self, port: int) -> None:
        super().__init__(host="127.0.0.1", port=port, auto_reconnect=False)
        self.events: "queue.Queue[Tuple[str, Any]]" = queue.Queue()

    def on_connection_request(self, context):  # type: ignore[no-untyped-def]
        self.events.put(("request", context))
        url = context.url
        if url.startswith("/deny"):
            return False
        if url.startswith("/raise"):
            raise RuntimeError("the application refuses")
        name = context.headers.get("X-User", ["anon"])[0]
        context.context.client_id = name
        context.context.room_id = url.rsplit("/", 1)[-1]
        context.context.metadata = {"name": name, "ünï": "✓"}
        return None

    def on_new_connection(self, context):  # type: ignore[no-untyped-def]
        self.events.put(("connect", context))

    def on_message(self, message, context):  # type: ignore[no-untyped-def]
        self.events.put(("message", (message, context)))

    def on_disconnect(self, context):  # type: ignore[no-untyped-def]
        self.events.put(("disconnect", context))

    def on_error(self, error, context):  # type: ignore[no-untyped-def]
        self.events.put(("error", (error, context)))

    def next(self, kind: str) -> Any:
        while True:
            got_kind, value = self.events.get(timeout=TIMEOUT)
            if got_kind == kind:
                return value


def check(condition: bool, what: str) -> None:
    if not condition:
        raise AssertionError(what)
    print(f"ok: {what}")


def start_broker(binary: str) -> Tuple[subprocess.Popen, str, int]:
    proc = subprocess.Popen(
        [binary, "--host", "127.0.0.1", "--ws-port", "0", "--tcp-port", "0", "--admin-port", "0",
         "--connect-timeout", "3", "--log-level", "info"],
        stderr=subprocess.PIPE, text=True,
    )
    assert proc.stderr is not None
    for line in proc.stderr:
        found = re.search(r"websocket=(\S+) backend=(\S+)", line)
        if found:
            threading.Thread(target=proc.stderr.read, daemon=True).start()
            ws, backend = found.groups()
            return proc, ws, int(backend.rsplit(":", 1)[1])
    raise RuntimeError("the broker did not start")


async def open_ws(url: str, headers: Dict[str, str]) -> Any:
    return await ws_connect(url, open_timeout=TIMEOUT, **{HEADERS_ARG: headers})


async def upgrade_status(url: str) -> Optional[int]:
    """The HTTP status of a refused upgrade (None when it succeeded)."""
    try:
        async with ws_connect(url, open_timeout=TIMEOUT):
            return None
    except websockets.exceptions.InvalidStatus as e:  # websockets >= 14
        return e.response.status_code
    except getattr(websockets.exceptions, "InvalidStatusCode", ()) as e:
        return e.status_code


async def scenario(ws_addr: str, backend: Recorder) -> None:
    loop = asyncio.get_running_loop()
    base = f"ws://{ws_addr}"

    async def next_event(kind: str) -> Any:
        return await loop.run_in_executor(None, backend.next, kind)

    alice = await open_ws(f"{base}/ws/lobby?x=1", {"X-User": "alice"})
    request = await next_event("request")
    check(request.url == "/ws/lobby", "url is the path without query")
    check(request.headers.get("X-User") == ["alice"], "headers in canonical form with list values")
    check(re.fullmatch(r"127\.0\.0\.1:\d+", request.remote_addr or "") is not None, "remote_addr is ip:port")
    connected = await next_event("connect")
    check((connected.client_id, connected.room_id) == ("alice", "lobby"), "assigned client_id and room_id")
    check(connected.metadata == {"name": "alice", "ünï": "✓"}, "metadata is exactly the assigned dict")

    bob = await open_ws(f"{base}/ws/lobby", {"X-User": "bob"})
    await next_event("connect")
    carol = await open_ws(f"{base}/ws/other", {"X-User": "carol"})
    await next_event("connect")

    await alice.send("héllo wörld 🎉")
    message, context = await next_event("message")
    check(message == "héllo wörld 🎉", "unicode message reaches the backend intact")
    check(context.client_id == "alice" and context.room_id == "lobby", "message carries the sender's context")

    backend.send_room_message("lobby", "room: ☃")
    check(await asyncio.wait_for(alice.recv(), TIMEOUT) == "room: ☃", "room message reaches alice")
    check(await asyncio.wait_for(bob.recv(), TIMEOUT) == "room: ☃", "room message reaches bob")
    backend.send_private_message("carol", "just you")
    check(await asyncio.wait_for(carol.recv(), TIMEOUT) == "just you", "private message reaches carol")
    backend.broadcast_message("all of you")
    for ws in (alice, bob, carol):
        check(await asyncio.wait_for(ws.recv(), TIMEOUT) == "all of you", "broadcast reaches everyone")
    try:
        extra = await asyncio.wait_for(carol.recv(), 0.3)
        raise AssertionError(f"carol got a message meant for another room: {extra!r}")
    except asyncio.TimeoutError:
        print("ok: room messages stay in their room")

    check(await upgrade_status(f"{base}/deny") == 403, "returning False rejects with 403")
    check(await upgrade_status(f"{base}/raise") == 403, "a raising handler rejects with 403")

    await bob.close()
    gone = await next_event("disconnect")
    check(gone.client_id == "bob" and gone.room_id == "lobby", "disconnect carries the context")
    await alice.close()
    await carol.close()


def main() -> int:
    binary = sys.argv[1]
    print(f"pystrands client version under test: {getattr(pystrands, '__version__', '1.0.0')}")
    proc, ws_addr, backend_port = start_broker(binary)
    backend = Recorder(backend_port)
    try:
        check(backend.connect(), "the 1.0.0 client connects to the backend port")
        asyncio.run(scenario(ws_addr, backend))
    finally:
        proc.terminate()
        code = proc.wait(TIMEOUT)
        backend.disconnect()
    check(code == 0, "the broker exits 0 on SIGTERM")
    print("1.0.0 compatibility: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
