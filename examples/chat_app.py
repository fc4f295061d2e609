"""Chat rooms with the decorator API. Clients connect to
ws://localhost:8080/chat/<room> (an X-Name header sets their display name);
everyone in a room sees every line said in it.

    python -m pystrands server --ws-port 8080 --tcp-port 8081
    python examples/chat_app.py --port 8081
"""

from __future__ import annotations

import argparse
from typing import Union

from pystrands import ConnectionRequestContext, Context, PyStrands

parser = argparse.ArgumentParser(description="decorator-API chat rooms")
parser.add_argument("--host", default="localhost")
parser.add_argument("--port", type=int, default=8081)
args = parser.parse_args()

app = PyStrands(host=args.host, port=args.port)


@app.on_connection_request
def admit(request: ConnectionRequestContext) -> bool:
    parts = [p for p in request.url.split("/") if p]
    if len(parts) != 2 or parts[0] != "chat":
        return False  # only /chat/<room>
    request.context.room_id = parts[1]
    request.context.metadata = {"name": request.header("X-Name") or request.context.client_id[:8]}
    return True


@app.on_new_connection
async def joined(context: Context) -> None:
    await app.send_room_message(context.room_id, f"* {context.metadata['name']} joined")


@app.on_message
async def said(message: Union[str, bytes], context: Context) -> None:
    text = message if isinstance(message, str) else message.decode("utf-8", "replace")
    await app.send_room_message(context.room_id, f"{context.metadata['name']}: {text}")


@app.on_disconnect
def left(context: Context) -> None:
    app.send_room_message(context.room_id, f"* {context.metadata['name']} left")


if __name__ == "__main__":
    app.run()
