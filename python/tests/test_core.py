"""Unit tests of the dispatch core (pystrands.protocol.BackendProtocol) and of
the command mixin, without I/O: lines in; handler calls, answers, settled
waiters and encoded lines out."""

from __future__ import annotations

import json
import logging
from concurrent.futures import Future
from typing import Any, Dict, List, Tuple

import pytest

from pystrands import BrokerError, PresenceEntry, PresenceStats, protocol
from pystrands.commands import Commands
from pystrands.context import ConnectionRequestContext, Context
from pystrands.errors import ProtocolError, PyStrandsConnectionError


class Handlers:
    """The handler object the core picks from; records connection requests."""

    def __init__(self, decide: Any=None) -> None:
        self.decide = decide
        self.requests: List[ConnectionRequestContext] = []

    def on_connection_request(self, request: Any) -> Any:
        self.requests.append(request)
        return self.decide(request) if self.decide else None

    def on_new_connection(self, context: Any) -> None:
        pass

    def on_message(self, message: Any, context: Any) -> None:
        pass

    def on_disconnect(self, context: Any) -> None:
        pass

    def on_error(self, error: Any, context: Any) -> None:
        pass


def line(action: Any, params: Any, request_id: Any="") -> Any:
    return json.dumps({"action": action, "request_id": request_id, "params": params}, separators=(",", ":"))


def feed(core: Any, *lines: Any) -> Any:
    """What the core answers to these lines arriving in one chunk."""
    return core.receive(("\n".join(lines) + "\n").encode("utf-8"))


CTX11 = {"client_id": "ada", "room_id": "lobby", "metadata": {}, "connection_id": "c7", "rooms": ["lobby", "ops"]}
REQUEST = {
    "headers": {"Sec-Websocket-Protocol": ["chat.v2, chat.v1", "x"], "X-User": ["ada"]},
    "url": "/ws/lobby",
    "query": "token=abc&tag=a&tag=b&empty=",
    "remote_addr": "127.0.0.1:5000",
    "connection_id": "c9",
}


def decoded(text: str) -> Tuple[str, Context]:
    """What the fast path reads from a new_message line (it must read it)."""
    result = protocol.decode_new_message(text)
    assert result is not None
    return result


def one_json(data: bytes) -> Dict[str, Any]:
    assert data.endswith(b"\n") and data.count(b"\n") == 1
    value: Dict[str, Any] = json.loads(data)
    return value


# ---------------------------------------------------------------- events -> handler calls


def test_client_events_become_calls_to_the_right_handler_in_order() -> None:
    h = Handlers()
    core = protocol.BackendProtocol(h)
    answers = feed(
        core,
        line("new_connection", {"context": CTX11}),
        line("new_message", {"message": "hi", "context": CTX11}),
        line("new_message", {"message": "AAH/", "binary": True, "context": CTX11}),
        line("heartbeat", {}, "heartbeat"),
        line("some_future_action", {"x": 1}),
        line("disconnected", {"context": CTX11}),
        line("error", {"error": "no answer in time", "context": CTX11}),
    )
    assert answers == []
    calls = list(core.events)
    assert [c[0] for c in calls] == [
        h.on_new_connection,
        h.on_message,
        h.on_message,
        h.on_disconnect,
        h.on_error,
    ]
    ctx = Context("ada", "lobby", {}, "c7", ["lobby", "ops"])
    assert calls[0][1] == (ctx,)
    assert calls[1][1] == ("hi", ctx)
    assert calls[2][1] == (b"\x00\x01\xff", ctx)
    assert calls[4][1] == ("no answer in time", ctx)
    # the last argument is always the Context (per-connection ordering keys on it)
    assert all(isinstance(args[-1], Context) for _, args in calls)


def test_v1_contexts_have_empty_connection_id_and_rooms() -> None:
    core = protocol.BackendProtocol(Handlers())
    feed(core, line("new_message", {"message": "m", "context": {"client_id": "c", "room_id": "r", "metadata": {}}}))
    (_, (_, ctx)), = core.events
    assert ctx == Context("c", "r", {}) and ctx.connection_id == "" and ctx.rooms == []


def test_an_error_without_context_gives_empty_context_fields() -> None:
    h = Handlers()
    core = protocol.BackendProtocol(h)
    feed(core, '{"action":"error","request_id":null,"params":{"error":"message_to_room: missing params.room_id"}}')
    (handler, (error, ctx)), = core.events
    assert handler == h.on_error
    assert error == "message_to_room: missing params.room_id" and ctx == Context()


def test_bad_lines_are_logged_and_skipped_and_routing_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    core = protocol.BackendProtocol(Handlers())
    with caplog.at_level(logging.ERROR, logger="pystrands"):
        feed(
            core,
            "not json",
            line("new_message", {"context": CTX11}),  # no message
            line("new_message", {"message": "A", "binary": True, "context": CTX11}),  # bad base64
            '{"action":["list"],"params":{}}',
            line("new_message", {"message": "after", "context": CTX11}),
        )
    assert [args[0] for _, args in core.events] == ["after"]
    assert "invalid JSON" in caplog.text and "malformed new_message" in caplog.text


def test_lines_split_across_chunks_and_a_new_connection_forgets_a_partial_line() -> None:
    core = protocol.BackendProtocol(Handlers())
    data = (line("new_message", {"message": "whole", "context": CTX11}) + "\n").encode()
    core.receive(data[:10])
    core.receive(data[10:])
    assert [args[0] for _, args in core.events] == ["whole"]
    core.receive(data[:25])
    assert core.pending_bytes == 25
    core.connection_made()
    assert core.pending_bytes == 0
    core.receive(data)
    assert [args[0] for _, args in core.events] == ["whole", "whole"]


def test_receive_from_a_reused_buffer() -> None:
    core = protocol.BackendProtocol(Handlers())
    data = (line("new_message", {"message": "x", "context": CTX11}) + "\n").encode()
    buf = bytearray(1024)
    buf[: len(data)] = data
    core.receive_from(buf, len(data))
    assert len(core.events) == 1


# ---------------------------------------------------------------- connection requests -> answers


def test_a_connection_request_is_answered_with_the_assigned_context() -> None:
    def assign(request: Any) -> None:
        request.context.client_id = "ada"
        request.context.room_id = "lobby"
        request.context.metadata = {"role": "admin"}
        request.join("ops", "lobby-2", "ops")
        request.select_subprotocol("chat.v1")

    h = Handlers(assign)
    core = protocol.BackendProtocol(h)
    answers = feed(core, line("connection_request", REQUEST, "17"))
    request = h.requests[0]
    assert request.connection_id == "c9" and request.context.connection_id == "c9"
    assert request.query == "token=abc&tag=a&tag=b&empty="
    assert request.query_params == {"token": ["abc"], "tag": ["a", "b"]}
    assert request.subprotocols == ["chat.v2", "chat.v1", "x"]
    assert [one_json(a) for a in answers] == [
        {
            "action": "response",
            "request_id": "17",
            "params": {
                "accepted": True,
                "client_id": "ada",
                "room_id": "lobby",
                "metadata": {"role": "admin"},
                "rooms": ["ops", "lobby-2"],
                "subprotocol": "chat.v1",
            },
        }
    ]
    assert not core.events


def test_reject_with_status_and_reason() -> None:
    h = Handlers(lambda r: r.reject(401, "bad token"))
    answers = feed(protocol.BackendProtocol(h), line("connection_request", REQUEST, "5"))
    params = one_json(answers[0])["params"]
    assert params["accepted"] is False
    assert (params["status"], params["reason"]) == (401, "bad token")
    assert "subprotocol" not in params and "rooms" not in params


def test_a_plain_rejection_leaves_the_status_to_the_broker() -> None:
    h = Handlers(lambda r: False)
    params = one_json(feed(protocol.BackendProtocol(h), line("connection_request", REQUEST, "5"))[0])["params"]
    assert params["accepted"] is False and "status" not in params and "reason" not in params


def test_accepting_after_reject_sends_no_status() -> None:
    def undecided(request: Any) -> Any:
        request.reject(404, "gone")
        request.join("x")
        return True  # a returned bool wins

    params = one_json(feed(protocol.BackendProtocol(Handlers(undecided)), line("connection_request", REQUEST, "5"))[0])["params"]
    assert params["accepted"] is True and params["rooms"] == ["x"] and "status" not in params


def test_a_failing_handler_or_invalid_assignment_refuses_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    def boom(request: Any) -> None:
        raise RuntimeError("db down")

    def bad_room(request: Any) -> None:
        request.rooms.append(42)

    for decide in (boom, bad_room):
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="pystrands"):
            answers = feed(protocol.BackendProtocol(Handlers(decide)), line("connection_request", REQUEST, "9"))
        assert [one_json(a) for a in answers] == [
            {"action": "response", "request_id": "9", "params": {"accepted": False}}
        ]
        assert any(r.exc_info for r in caplog.records if "on_connection_request failed" in r.getMessage())


def test_an_awaitable_decision_is_deferred() -> None:
    deferred = []

    class Pending:
        def __await__(self) -> Any:
            return iter(())

    pending = Pending()
    core = protocol.BackendProtocol(Handlers(lambda r: pending), defer=lambda *a: deferred.append(a))
    assert feed(core, line("connection_request", REQUEST, "3")) == []
    (request_id, request, awaitable), = deferred
    assert request_id == "3" and awaitable is pending
    assert one_json(core.decision(request_id, request, False))["params"]["accepted"] is False


def test_events_are_queued_before_connection_requests_are_answered() -> None:
    """A request handler that reads more (a nested wait for a reply) must find
    the chunk's events already queued, so the new ones queue behind them."""
    seen: List[List[Any]] = []
    core: Any = None

    def decide(request: Any) -> None:
        seen.append([args[0] for _, args in core.events])
        feed(core, line("new_message", {"message": "later", "context": CTX11}))

    core = protocol.BackendProtocol(Handlers(decide))
    feed(
        core,
        line("new_message", {"message": "first", "context": CTX11}),
        line("connection_request", REQUEST, "1"),
        line("new_message", {"message": "second", "context": CTX11}),
    )
    assert seen == [["first", "second"]]
    assert [args[0] for _, args in core.events] == ["first", "second", "later"]


# ---------------------------------------------------------------- replies -> waiters


def ask(core: Any, outgoing: Any) -> Any:
    waiter: "Future[Any]" = Future()
    core.expect(outgoing, waiter)
    return waiter


def test_replies_settle_their_requests_by_request_id() -> None:
    core = protocol.BackendProtocol(Handlers())
    ack = ask(core, core.command("broadcast", {"message": "x"}, ack=True))
    members = ask(core, core.request("presence", {"room_id": "lobby"}, "presence"))
    stats = ask(core, core.request("presence_stats", {"room_id": "lobby"}, "presence_stats"))
    assert core.waiting == 3
    feed(
        core,
        line("presence_stats", {"room_id": "lobby", "clients": 2, "connections": 3}, "3"),
        line("ack", {"connections": 0}, "1"),
        line(
            "presence",
            {"room_id": "lobby", "clients": [
                {"client_id": "ada", "metadata": {"n": 1}, "connections": ["c1", "c2"]},
                {"client_id": "bob", "metadata": {}, "connections": ["c3"]},
            ]},
            "2",
        ),
    )
    assert ack.result(0) == 0
    assert members.result(0) == [
        PresenceEntry("ada", {"n": 1}, ["c1", "c2"]),
        PresenceEntry("bob", {}, ["c3"]),
    ]
    assert members.result(0)[0].connections == ["c1", "c2"]
    assert stats.result(0) == PresenceStats(clients=2, connections=3)
    assert core.waiting == 0 and not core.events  # replies are not events


def test_an_error_reply_fails_the_request_with_the_brokers_message() -> None:
    h = Handlers()
    core = protocol.BackendProtocol(h)
    waiter = ask(core, core.command("join_room", {"client_id": "a", "room_id": "r"}, ack=True))
    feed(core, line("error", {"error": "join_room: room_id must not be empty"}, "1"))
    with pytest.raises(BrokerError) as info:
        waiter.result(0)
    assert info.value.action == "join_room"
    assert info.value.error == "join_room: room_id must not be empty"
    assert "join_room: room_id must not be empty" in str(info.value)
    assert not core.events  # not also an on_error call


def test_an_error_for_no_pending_request_goes_to_on_error() -> None:
    h = Handlers()
    core = protocol.BackendProtocol(h)
    feed(core, line("error", {"error": "unknown action 'x'"}, "77"))
    (handler, (error, _)), = core.events
    assert handler == h.on_error and error == "unknown action 'x'"


def test_a_late_reply_is_dropped() -> None:
    core = protocol.BackendProtocol(Handlers())
    request = core.request("presence", {"room_id": "r"}, "presence")
    waiter = ask(core, request)
    core.forget(request)
    feed(core, line("presence", {"room_id": "r", "clients": []}, request.request_id), line("ack", {"connections": 1}, "999"))
    assert not waiter.done() and not core.events


@pytest.mark.parametrize(
    "reply",
    [
        line("presence", {"room_id": "r", "clients": []}, "1"),  # not the reply expected
        line("ack", {}, "1"),
        line("ack", {"connections": "2"}, "1"),
        line("ack", {"connections": -1}, "1"),
    ],
)
def test_a_malformed_reply_fails_the_request_with_protocol_error(reply: Any) -> None:
    core = protocol.BackendProtocol(Handlers())
    waiter = ask(core, core.command("broadcast", {"message": "x"}, ack=True))
    feed(core, reply)
    with pytest.raises(ProtocolError):
        waiter.result(0)


@pytest.mark.parametrize(
    "clients",
    [None, [{"metadata": {}, "connections": []}], [{"client_id": "a", "connections": "c1"}], ["a"]],
)
def test_a_malformed_presence_reply_fails(clients: List[Any]) -> None:
    core = protocol.BackendProtocol(Handlers())
    waiter = ask(core, core.request("presence", {"room_id": "r"}, "presence"))
    feed(core, line("presence", {"room_id": "r", "clients": clients}, "1"))
    with pytest.raises(ProtocolError):
        waiter.result(0)


def test_a_lost_connection_fails_every_waiting_request() -> None:
    core = protocol.BackendProtocol(Handlers())
    a = ask(core, core.request("presence", {"room_id": "r"}, "presence"))
    b = ask(core, core.command("leave_room", {"client_id": "x", "room_id": "r"}, ack=True))
    core.connection_lost("127.0.0.1:8081")
    for waiter, action in ((a, "presence"), (b, "leave_room")):
        with pytest.raises(PyStrandsConnectionError, match=f"lost before the reply to {action}"):
            waiter.result(0)
    assert core.waiting == 0


def test_a_publisher_core_settles_replies_and_drops_events(caplog: pytest.LogCaptureFixture) -> None:
    core = protocol.BackendProtocol(None)
    waiter = ask(core, core.request("presence_stats", {"room_id": "r"}, "presence_stats"))
    with caplog.at_level(logging.WARNING, logger="pystrands"):
        answers = feed(
            core,
            line("connection_request", REQUEST, "4"),
            line("new_message", {"message": "m", "context": CTX11}),
            line("error", {"error": "broadcast: missing params.message"}, "12"),
            line("presence_stats", {"room_id": "r", "clients": 0, "connections": 0}, "1"),
        )
    assert answers == [] and not core.events
    assert waiter.result(0) == PresenceStats(0, 0)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert sum("does not support publisher connections" in w for w in warnings) == 1  # once
    assert any("broadcast: missing params.message" in w for w in warnings)


# ---------------------------------------------------------------- commands -> lines


class Lines(Commands[Any, Any, Any]):
    """The command mixin with an _issue that returns what would be written."""

    def __init__(self) -> None:
        self._core = protocol.BackendProtocol(None)

    def _issue(self, outgoing: Any) -> Any:
        return outgoing


def wire(outgoing: Any) -> Any:
    data = outgoing if isinstance(outgoing, bytes) else outgoing.line
    return one_json(data)


def test_v1_sends_are_unchanged_on_the_wire() -> None:
    c = Lines()
    assert c.broadcast_message("hi") == protocol.encode_broadcast("hi", "1")
    assert c.send_room_message("r", "hi") == protocol.encode_room_message("r", "hi", "2")
    assert c.send_private_message("u", "hi") == protocol.encode_private_message("u", "hi", "3")
    assert c.send_room_message("r", b"\x00") == protocol.encode_room_message("r", b"\x00", "4")


def test_every_command_on_the_wire() -> None:
    c = Lines()
    cases: List[Tuple[Any, str, Dict[str, Any]]] = [
        (c.broadcast_message("hi", ack=True), "broadcast", {"message": "hi", "ack": True}),
        (
            c.send_room_message("r", "hi", exclude=["c1", "c2"]),
            "message_to_room",
            {"room_id": "r", "message": "hi", "exclude": ["c1", "c2"]},
        ),
        (
            c.send_room_message("r", b"\x00\x01\xff", exclude=("c1",), ack=True),
            "message_to_room",
            {"room_id": "r", "message": "AAH/", "binary": True, "exclude": ["c1"], "ack": True},
        ),
        (
            c.send_private_message("u", "hi", ack=True),
            "message_to_connection",
            {"conn_id": "u", "message": "hi", "ack": True},
        ),
        (
            c.send_connection_message("c3", "hi"),
            "message_to_connection",
            {"connection_id": "c3", "message": "hi"},
        ),
        (c.join_room("r", client_id="u"), "join_room", {"client_id": "u", "room_id": "r"}),
        (
            c.leave_room("r", connection_id="c3", ack=True),
            "leave_room",
            {"connection_id": "c3", "room_id": "r", "ack": True},
        ),
        (
            c.disconnect_client(client_id="u"),
            "disconnect",
            {"client_id": "u", "code": 1000, "reason": ""},
        ),
        (
            c.disconnect_client(connection_id="c3", code=4001, reason="kicked: spam", ack=True),
            "disconnect",
            {"connection_id": "c3", "code": 4001, "reason": "kicked: spam", "ack": True},
        ),
        (
            c.set_metadata({"name": "Zoë"}, client_id="u"),
            "set_metadata",
            {"client_id": "u", "metadata": {"name": "Zoë"}},
        ),
        (c.presence("lobby"), "presence", {"room_id": "lobby"}),
        (c.presence_stats("lobby"), "presence_stats", {"room_id": "lobby"}),
    ]
    ids = set()
    for outgoing, action, params in cases:
        got = wire(outgoing)
        assert (got["action"], got["params"]) == (action, params)
        ids.add(got["request_id"])
        expects_reply = params.get("ack") is True or action.startswith("presence")
        assert isinstance(outgoing, protocol.Request) is expects_reply, action
        if expects_reply:
            assert outgoing.request_id == got["request_id"] and outgoing.action == action
            assert outgoing.reply == ("ack" if params.get("ack") else action)
    assert len(ids) == len(cases)  # every line has its own request id


def test_an_empty_exclude_keeps_the_v1_line() -> None:
    c = Lines()
    assert b"exclude" not in c.send_room_message("r", "hi", exclude=[])


REASON_123 = "é" * 61 + "x"  # 123 bytes of UTF-8


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda c: c.join_room("r"), ValueError, "join_room needs a target"),
        (lambda c: c.leave_room("r", client_id="u", connection_id="c"), ValueError, "not both"),
        (lambda c: c.set_metadata({}), ValueError, "set_metadata needs a target"),
        (lambda c: c.disconnect_client(), ValueError, "disconnect_client needs a target"),
        (lambda c: c.disconnect_client(client_id="u", code=1001), ValueError, "1000 or 3000-4999"),
        (lambda c: c.disconnect_client(client_id="u", code=2999), ValueError, "1000 or 3000-4999"),
        (lambda c: c.disconnect_client(client_id="u", code=5000), ValueError, "1000 or 3000-4999"),
        (lambda c: c.disconnect_client(client_id="u", code=True), ValueError, "1000 or 3000-4999"),
        (lambda c: c.disconnect_client(client_id="u", code="4000"), ValueError, "1000 or 3000-4999"),
        (lambda c: c.disconnect_client(client_id="u", reason=REASON_123 + "x"), ValueError, "124 bytes"),
        (lambda c: c.disconnect_client(client_id="u", reason=b"bye"), TypeError, "reason must be a str"),
        (lambda c: c.join_room(1, client_id="u"), TypeError, "room_id must be a str"),
        (lambda c: c.join_room("r", client_id=7), TypeError, "client_id must be a str"),
        (lambda c: c.join_room("r", connection_id="\udc00"), ValueError, "connection_id is not valid"),
        (lambda c: c.set_metadata(["a"], client_id="u"), TypeError, "metadata must be a dict"),
        (lambda c: c.set_metadata({"x": object()}, client_id="u"), TypeError, "not JSON serializable"),
        (lambda c: c.send_room_message("r", "m", exclude="c1"), TypeError, "collection of connection ids"),
        (lambda c: c.send_room_message("r", "m", exclude=""), TypeError, "collection of connection ids"),
        (lambda c: c.send_room_message("r", "m", exclude=[1]), TypeError, r"exclude\[\] must be a str"),
        (lambda c: c.send_room_message("r", "m", exclude=5), TypeError, "collection of connection ids"),
        (lambda c: c.send_room_message("r", 5, ack=True), TypeError, "message must be a str or bytes"),
        (lambda c: c.send_connection_message(None, "m"), TypeError, "connection_id must be a str"),
        (lambda c: c.presence(None), TypeError, "room_id must be a str"),
        (lambda c: c.presence_stats(3), TypeError, "room_id must be a str"),
    ],
)
def test_arguments_are_checked_before_anything_is_sent(call: Any, error: Any, match: Any) -> None:
    with pytest.raises(error, match=match):
        call(Lines())


def test_a_close_reason_of_123_bytes_is_allowed() -> None:
    assert len(REASON_123.encode()) == 123
    assert wire(Lines().disconnect_client(client_id="u", code=3000, reason=REASON_123))["params"]["reason"] == REASON_123


def test_auth_lines() -> None:
    assert protocol.encode_auth(None, events=False) == (
        b'{"action":"auth","request_id":"","params":{"events":false}}\n'
    )
    assert one_json(protocol.encode_auth("s3cret", events=False))["params"] == {"events": False, "token": "s3cret"}
    assert one_json(protocol.encode_auth("s3cret"))["params"] == {"token": "s3cret"}
    with pytest.raises(TypeError):
        protocol.encode_auth(None)


# ---------------------------------------------------------------- the request and context models


def test_subprotocols_and_selecting_one() -> None:
    request = protocol.connection_request_from_params(REQUEST)
    assert request.subprotocol is None
    request.select_subprotocol("x")
    assert request.subprotocol == "x"
    with pytest.raises(ValueError, match="not offered"):
        request.select_subprotocol("chat.v3")
    assert protocol.connection_request_from_params({}).subprotocols == []
    lower = ConnectionRequestContext(headers={"sec-websocket-protocol": [" a ,b,, "]})
    assert lower.subprotocols == ["a", "b"]


@pytest.mark.parametrize("status", [399, 500, 200, "401", 401.0, True])
def test_reject_takes_a_4xx_status_only(status: Any) -> None:
    request = ConnectionRequestContext()
    with pytest.raises(ValueError, match="400 to 499"):
        request.reject(status)
    assert request.accepted is True and request.status is None


def test_reject_defaults_and_return_value() -> None:
    request = ConnectionRequestContext()
    # `return request.reject()` means: use request.accepted
    assert request.reject() is None  # type: ignore[func-returns-value]
    assert (request.accepted, request.status, request.reason) == (False, 403, "")
    with pytest.raises(TypeError):
        request.reject(401, b"bytes")  # type: ignore[arg-type]


def test_request_without_query_has_empty_params() -> None:
    request = protocol.connection_request_from_params({"url": "/x"})
    assert request.query == "" and request.query_params == {} and request.connection_id == ""


def test_join_checks_types_and_skips_duplicates() -> None:
    request = ConnectionRequestContext()
    request.join("a", "b")
    request.join("a")
    assert request.rooms == ["a", "b"]
    with pytest.raises(TypeError):
        request.join(1)  # type: ignore[arg-type]


def test_context_v11_fields_repr_equality_and_json() -> None:
    ctx = Context("c", "r", {"a": 1}, "c7", ["r", "x"])
    assert repr(ctx) == "Context(client_id='c', room_id='r', metadata={'a': 1}, connection_id='c7', rooms=['r', 'x'])"
    assert ctx != Context("c", "r", {"a": 1}, "c8", ["r", "x"])
    assert ctx != Context("c", "r", {"a": 1}, "c7", ["r"])
    assert Context.from_json(ctx.to_json()) == ctx
    assert Context("c", "r").to_json() == {"client_id": "c", "room_id": "r", "metadata": {}}


def test_fast_path_reads_v11_contexts_with_fresh_room_lists() -> None:
    text = line("new_message", {"message": "m", "context": CTX11})
    for _ in range(2):  # cold, then from the cache
        message, ctx = decoded(text)
        assert ctx == Context("ada", "lobby", {}, "c7", ["lobby", "ops"])
        ctx.rooms.append("mutated")
    bad = line("new_message", {"message": "m", "context": dict(CTX11, rooms=[1])})
    assert protocol.decode_new_message(bad) is None


def test_request_model_round_trip() -> None:
    request = protocol.connection_request_from_params(REQUEST)
    request.join("ops")
    assert ConnectionRequestContext.from_json(request.to_json()) == request
