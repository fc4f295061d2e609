"""The README's seed example, as written, against the real broker."""

from __future__ import annotations

import threading
from typing import Any

from websockets.sync.client import connect as ws_connect

from conftest import TIMEOUT, Broker, Events, wait_for
from pystrands import PyStrandsClient


# --- the seed example from the original README (issue 3), unchanged -----------
class MyClient(PyStrandsClient):
    def on_connection_request(self, request: Any) -> None:
        print(f"Connection request from {request.context.client_id} in room {request.context.room_id}")
        request.context.room_id = "new_room"            # by default it is websocket url endpoint
        request.context.client_id = "new_client_id"     # by default it is uuid
        request.context.metadata = {"name": "John Doe"} # additional metadata
        request.accepted = True                         # accepted by default

    def on_connect(self, context: Any) -> None:
        print(f"Connected to {context.client_id} in room {context.room_id}")
        self.send_private_message(context.client_id, f"Welcome to the room! {context.metadata.get('name')}")

    def on_message(self, message: Any, context: Any) -> None:
        print(f"Received message: {message} from {context.context.client_id} in room {context.context.room_id}")

    def on_disconnect(self, context: Any) -> None:
        print(f"Disconnected from {context.context.client_id} in room {context.context.room_id}")

    def on_error(self, error: Any, context: Any) -> None:
        print(f"Error: {error} from {context.context.client_id} in room {context.context.room_id}")
# ---------------------------------------------------------------------------------


class ObservedClient(MyClient):
    """The seed client, plus events the test can wait on."""

    def __init__(self, events: Events, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.events = events

    def on_message(self, message: Any, context: Any) -> None:
        super().on_message(message, context)
        self.events.put("message", message)

    def on_disconnect(self, context: Any) -> None:
        super().on_disconnect(context)
        self.events.put("disconnect", context)


def test_seed_example_end_to_end(broker: Broker, events: Events, capsys: Any) -> None:
    client = ObservedClient(events, host="127.0.0.1", port=broker.tcp_port)
    assert client.connect() is True
    client.broadcast_message("Hello everyone!")
    client.send_room_message("room1", "Hello room!")
    client.send_private_message("client123", "Private message!")
    sock_before = client._sock

    runner = threading.Thread(target=client.run_forever, daemon=True)
    runner.start()
    try:
        with ws_connect(broker.ws_url("/ws/room1"), open_timeout=TIMEOUT) as ws:
            # on_connect's private message to the assigned client_id, built
            # from the metadata the broker handed back in new_connection.
            assert ws.recv(timeout=TIMEOUT) == "Welcome to the room! John Doe"
            # The assigned room.
            client.send_room_message("new_room", "to the new room")
            assert ws.recv(timeout=TIMEOUT) == "to the new room"
            client.send_private_message("new_client_id", "just you")
            assert ws.recv(timeout=TIMEOUT) == "just you"
            ws.send("hi there")
            assert events.get("message") == ("message", "hi there")
        events.get("disconnect")
        # run_forever() reused the connection connect() opened.
        assert client._sock is sock_before
    finally:
        client.disconnect()
        runner.join(TIMEOUT)
    assert not runner.is_alive(), "run_forever() did not return after disconnect()"

    out = capsys.readouterr().out
    assert "Connection request from " in out and "in room /ws/room1" in out
    assert "Connected to new_client_id in room new_room" in out
    assert "Received message: hi there from new_client_id in room new_room" in out
    assert "Disconnected from new_client_id in room new_room" in out
