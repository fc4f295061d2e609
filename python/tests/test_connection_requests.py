"""on_connection_request: defaults, assignment, and the three ways to reject."""

from __future__ import annotations

import logging
import uuid
from typing import Any, List

import pytest
from websockets.sync.client import connect as ws_connect

from conftest import TIMEOUT, Broker, Events, http_status_of
from pystrands import PyStrandsClient


class Recorder(PyStrandsClient):
    def __init__(self, events: Events, decide: Any=None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.events = events
        self.decide = decide

    def on_connection_request(self, request: Any) -> Any:
        self.events.put("request", request)
        if self.decide is not None:
            return self.decide(request)
        return None

    def on_new_connection(self, context: Any) -> None:
        self.events.put("connected", context)


def start(clients: List[Any], broker: Broker, events: Events, decide: Any=None) -> Any:
    client = Recorder(events, decide, host="127.0.0.1", port=broker.tcp_port)
    clients.append(client)
    assert client.connect()
    return client


def refused_status(url: str, **kwargs: Any) -> Any:
    with pytest.raises(Exception) as info:
        with ws_connect(url, open_timeout=TIMEOUT, **kwargs):
            pass
    status = http_status_of(info.value)
    assert status is not None, f"expected an HTTP refusal, got {info.value!r}"
    return status


def test_defaults_and_request_fields(broker: Broker, clients: List[Any], events: Events) -> None:
    start(clients, broker, events)
    with ws_connect(
        broker.ws_url("/ws/room1?token=abc"),
        open_timeout=TIMEOUT,
        additional_headers={"x-user": "alice"},
    ):
        _, request = events.get("request")
        _, context = events.get("connected")
    assert request.url == "/ws/room1"
    assert request.headers.get("X-User") == ["alice"]
    assert request.header("x-user") == "alice"
    assert request.remote_addr.startswith("127.0.0.1:")
    assert request.accepted is True
    # pystrands 1.0.0 defaults: uuid4 client id, room = path, empty metadata.
    assert uuid.UUID(context.client_id).version == 4
    assert context.client_id == request.context.client_id
    assert context.room_id == "/ws/room1"
    assert context.metadata == {}


def test_assignment_reaches_new_connection(broker: Broker, clients: List[Any], events: Events) -> None:
    def assign(request: Any) -> None:
        request.context.client_id = "user-42"
        request.context.room_id = "lobby"
        request.context.metadata = {"name": "Zoë", "roles": ["admin"], "age": 7}

    start(clients, broker, events, assign)
    with ws_connect(broker.ws_url("/anything"), open_timeout=TIMEOUT):
        _, context = events.get("connected")
    assert (context.client_id, context.room_id) == ("user-42", "lobby")
    assert context.metadata == {"name": "Zoë", "roles": ["admin"], "age": 7}


def _reject_by_return(request: Any) -> Any:
    return False


def _reject_by_attribute(request: Any) -> None:
    request.accepted = False


def _reject_by_exception(request: Any) -> None:
    raise RuntimeError("no entry for you")


@pytest.mark.parametrize(
    "decide", [_reject_by_return, _reject_by_attribute, _reject_by_exception],
    ids=["return-False", "accepted-False", "exception"],
)
def test_rejection_gives_403_before_upgrade(broker: Broker, clients: List[Any], events: Events, decide: Any) -> None:
    start(clients, broker, events, decide)
    assert refused_status(broker.ws_url("/ws/room1")) == 403
    events.get("request")


def test_rejection_by_exception_is_logged_with_traceback(broker: Broker, clients: List[Any], events: Events, caplog: pytest.LogCaptureFixture) -> None:
    start(clients, broker, events, _reject_by_exception)
    with caplog.at_level(logging.ERROR, logger="pystrands"):
        assert refused_status(broker.ws_url("/x")) == 403
    records = [r for r in caplog.records if "on_connection_request failed" in r.getMessage()]
    assert records, caplog.text
    assert records[0].exc_info and "no entry for you" in str(records[0].exc_info[1])


def test_a_returned_bool_wins_over_accepted(broker: Broker, clients: List[Any], events: Events) -> None:
    def overrule(request: Any) -> Any:
        request.accepted = False
        return True

    start(clients, broker, events, overrule)
    with ws_connect(broker.ws_url("/ok"), open_timeout=TIMEOUT):
        events.get("connected")


def test_decision_by_header(broker: Broker, clients: List[Any], events: Events) -> None:
    def auth(request: Any) -> Any:
        return request.header("Authorization") == "Bearer good"

    start(clients, broker, events, auth)
    with ws_connect(
        broker.ws_url("/"), open_timeout=TIMEOUT, additional_headers={"Authorization": "Bearer good"}
    ):
        events.get("connected")
    assert refused_status(broker.ws_url("/"), additional_headers={"Authorization": "Bearer bad"}) == 403


def test_invalid_assignment_rejects(broker: Broker, clients: List[Any], events: Events) -> None:
    def bad(request: Any) -> None:
        request.context.client_id = 12345  # not a str

    start(clients, broker, events, bad)
    assert refused_status(broker.ws_url("/")) == 403


def test_no_backend_gives_503(broker: Broker) -> None:
    assert refused_status(broker.ws_url("/")) == 503
