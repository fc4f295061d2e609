"""Echo backend: every message a WebSocket client sends, text or binary, comes
back to it alone (send_private_message to its client_id).

Start a broker, then this backend, then talk to ws://localhost:8080/any/path:

    python -m pystrands server --ws-port 8080 --tcp-port 8081
    python examples/echo_backend.py --port 8081

``--async`` runs the same backend on AsyncPyStrandsClient. This is also the
backend the load generator's external-backend mode measures.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from typing import Union

from pystrands import AsyncPyStrandsClient, Context, PyStrandsClient


class EchoBackend(PyStrandsClient):
    def on_message(self, message: Union[str, bytes], context: Context) -> None:
        self.send_private_message(context.client_id, message)


class AsyncEchoBackend(AsyncPyStrandsClient):
    async def on_message(self, message: Union[str, bytes], context: Context) -> None:
        await self.send_private_message(context.client_id, message)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="localhost", help="broker host (default: localhost)")
    parser.add_argument("--port", type=int, default=8081, help="broker backend TCP port (default: 8081)")
    parser.add_argument("--async", dest="use_async", action="store_true", help="use the asyncio client")
    parser.add_argument(
        "--max-line-size",
        type=int,
        default=16 * 1024 * 1024,
        help="longest line sent to the broker, in bytes; match the broker's --max-line-size "
        "(default: 16 MiB, the broker's default)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    # run_forever() stops gracefully on SIGTERM and Ctrl-C.
    if args.use_async:
        client = AsyncEchoBackend(args.host, args.port, max_line_size=args.max_line_size)
        asyncio.run(client.run_forever())
    else:
        EchoBackend(args.host, args.port, max_line_size=args.max_line_size).run_forever()


if __name__ == "__main__":
    main()
