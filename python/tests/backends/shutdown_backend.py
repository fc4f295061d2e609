"""A backend for test_shutdown.py, run as its own process so that the test
can send it real signals: ``shutdown_backend.py --api sync|async|app --port N
[--shutdown-timeout S]``.

It echoes every message (``echo:<message>``). ``slow`` waits until four more
events of its connection are read and waiting, prints ``READY``, works for a
moment and answers ``done:slow``; ``stuck`` does the same but then blocks far
longer than any shutdown timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import threading
import time
from typing import Any

from pystrands import AsyncPyStrandsClient, Context, PyStrands, PyStrandsClient

WAITING = 4
#: Seconds ``slow`` works after READY (the signal comes meanwhile).
WORK = 0.3


def queued(client: Any) -> int:
    """Events read and waiting (the client's own bookkeeping)."""
    if isinstance(client, PyStrandsClient):
        lanes = getattr(client._session, "lanes", None)
        return len(client._core.events) + (lanes.parked if lanes is not None else 0)
    lanes = getattr(client, "_lanes", None)
    return len(client._core.events) + (lanes.parked if lanes is not None else 0)


def ready_when_queued(client: Any) -> None:
    """Prints READY once the events are waiting and run_forever's signal
    handlers are in place (the sync client installs them after connecting,
    so a starved main thread could otherwise meet the test's signal first)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (
        queued(client) < WAITING or signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None)
    ):
        time.sleep(0.005)
    print("READY", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--api", choices=["sync", "async", "app"], required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--shutdown-timeout", type=float)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    settings = {} if args.shutdown_timeout is None else {"shutdown_timeout": args.shutdown_timeout}

    if args.api == "sync":

        class Sync(PyStrandsClient):
            def on_message(self, message: Any, context: Context) -> None:
                if message in ("slow", "stuck"):
                    ready_when_queued(self)
                    if message == "stuck":
                        threading.Event().wait(60)
                    time.sleep(WORK)
                    self.send_private_message(context.client_id, "done:" + message)
                else:
                    self.send_private_message(context.client_id, "echo:" + message)

        Sync("127.0.0.1", args.port, **settings).run_forever()
        return 0

    if args.api == "async":

        class Async(AsyncPyStrandsClient):
            async def on_message(self, message: Any, context: Context) -> None:
                if message in ("slow", "stuck"):
                    await asyncio.get_running_loop().run_in_executor(None, ready_when_queued, self)
                    if message == "stuck":
                        await asyncio.sleep(60)
                    await asyncio.sleep(WORK)
                    await self.send_private_message(context.client_id, "done:" + message)
                else:
                    await self.send_private_message(context.client_id, "echo:" + message)

        asyncio.run(Async("127.0.0.1", args.port, **settings).run_forever())
        return 0

    app = PyStrands("127.0.0.1", args.port, **settings)

    @app.on_message
    async def said(message: Any, context: Context) -> None:
        if message in ("slow", "stuck"):
            await asyncio.get_running_loop().run_in_executor(None, ready_when_queued, app.client)
            if message == "stuck":
                await asyncio.sleep(60)
            await asyncio.sleep(WORK)
            app.send_private_message(context.client_id, "done:" + message)
        else:
            app.send_private_message(context.client_id, "echo:" + message)

    app.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
