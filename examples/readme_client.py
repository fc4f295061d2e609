"""The original README's quick-start backend, runnable: assigns every client to
"new_room" as "new_client_id" and welcomes it by name.

    python -m pystrands server --ws-port 8080 --tcp-port 8081
    python examples/readme_client.py --port 8081
"""

from __future__ import annotations

import argparse
from typing import Union

from pystrands import ConnectionRequestContext, Context, PyStrandsClient


class MyClient(PyStrandsClient):
    def on_connection_request(self, request: ConnectionRequestContext) -> None:
        print(f"Connection request from {request.context.client_id} in room {request.context.room_id}")
        request.context.room_id = "new_room"            # by default it is websocket url endpoint
        request.context.client_id = "new_client_id"     # by default it is uuid
        request.context.metadata = {"name": "John Doe"} # additional metadata
        request.accepted = True                         # accepted by default

    def on_connect(self, context: Context) -> None:
        print(f"Connected to {context.client_id} in room {context.room_id}")
        self.send_private_message(context.client_id, f"Welcome to the room! {context.metadata.get('name')}")

    def on_message(self, message: Union[str, bytes], context: Context) -> None:
        text = message if isinstance(message, str) else message.decode("utf-8", "replace")
        print(f"Received message: {text} from {context.context.client_id} in room {context.context.room_id}")

    def on_disconnect(self, context: Context) -> None:
        print(f"Disconnected from {context.context.client_id} in room {context.context.room_id}")

    def on_error(self, error: str, context: Context) -> None:
        print(f"Error: {error} from {context.context.client_id} in room {context.context.room_id}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="the README's quick-start backend")
    parser.add_argument("--host", default="localhost")
    parser.add_argument("--port", type=int, default=8081)
    args = parser.parse_args()

    client = MyClient(host=args.host, port=args.port)
    client.connect()
    client.broadcast_message("Hello everyone!")
    client.send_room_message("room1", "Hello room!")
    client.send_private_message("client123", "Private message!")
    client.run_forever()
