"""Unit tests of pystrands.protocol (no I/O) and pystrands.context."""

from __future__ import annotations

import json
import uuid
from typing import Any, Dict, Tuple

import pytest

from pystrands import protocol
from pystrands.context import ConnectionRequestContext, Context
from pystrands.errors import ProtocolError


# ---------------------------------------------------------------- LineBuffer


def test_line_buffer_returns_every_complete_line_of_a_chunk() -> None:
    buf = protocol.LineBuffer()
    assert buf.feed(b'{"a":1}\n{"b":2}\n') == ['{"a":1}', '{"b":2}']
    assert buf.pending_bytes == 0


def test_line_buffer_keeps_a_partial_line_until_its_newline() -> None:
    buf = protocol.LineBuffer()
    assert buf.feed(b'{"a":1}\n{"b"') == ['{"a":1}']
    assert buf.pending_bytes == 4
    assert buf.feed(b":2") == []
    assert buf.feed(b"}\n{") == ['{"b":2}']
    assert buf.feed(b"}\n") == ["{}"]


def test_line_buffer_reassembles_a_multibyte_character_cut_between_chunks() -> None:
    data = '{"m":"héllo 世界 🎉"}\n'.encode("utf-8")
    for cut in range(1, len(data)):
        buf = protocol.LineBuffer()
        lines = buf.feed(data[:cut]) + buf.feed(data[cut:])
        assert lines == ['{"m":"héllo 世界 🎉"}'], cut


def test_line_buffer_byte_by_byte_equals_all_at_once() -> None:
    text = "".join(f'{{"i":{i},"s":"ü{i}"}}\n' for i in range(200))
    data = text.encode("utf-8")
    buf = protocol.LineBuffer()
    out = []
    for i in range(len(data)):
        out.extend(buf.feed(data[i : i + 1]))
    assert out == text.split("\n")[:-1]


def test_line_buffer_many_lines_in_one_chunk() -> None:
    data = b"".join(b'{"i":%d}\n' % i for i in range(10_000))
    lines = protocol.LineBuffer().feed(data)
    assert len(lines) == 10_000
    assert lines[0] == '{"i":0}' and lines[-1] == '{"i":9999}'


@pytest.mark.parametrize("chunk", [7, 13, 64, 1000])
def test_line_buffer_feed_from_a_reused_buffer_equals_feed(chunk: Any) -> None:
    text = "".join(f'{{"i":{i},"s":"ü€🎉{i}"}}\n' for i in range(300))
    data = text.encode("utf-8")
    buf = bytearray(chunk)
    a, b = protocol.LineBuffer(), protocol.LineBuffer()
    via_feed, via_buffer = [], []
    for start in range(0, len(data), chunk):
        piece = data[start : start + chunk]
        buf[: len(piece)] = piece
        buf[len(piece) :] = b"\xff" * (chunk - len(piece))  # garbage past size
        via_feed.extend(a.feed(piece))
        via_buffer.extend(b.feed_from(buf, len(piece)))
    assert via_buffer == via_feed == text.split("\n")[:-1]
    assert b.pending_bytes == 0


def test_line_buffer_keeps_empty_lines_as_empty_strings() -> None:
    assert protocol.LineBuffer().feed(b"\n{}\n\n") == ["", "{}", ""]


def test_line_buffer_rejects_an_endless_line() -> None:
    buf = protocol.LineBuffer(max_line=10)
    buf.feed(b"x" * 6)
    with pytest.raises(ProtocolError):
        buf.feed(b"x" * 6)
    assert buf.pending_bytes == 0  # and it recovers
    assert buf.feed(b"{}\n") == ["{}"]


# ---------------------------------------------------------------- decode


def test_decode_returns_the_envelope() -> None:
    line = '{"action":"new_message","request_id":"r1","params":{"message":"hi","context":{"client_id":"c","room_id":"/r","metadata":{"n":1}}}}'
    assert protocol.decode(line) == json.loads(line)


@pytest.mark.parametrize("line", [' {"action":"heartbeat"}', '{"action":"heartbeat"} ', '{"action":"heartbeat"}\r'])
def test_decode_accepts_surrounding_whitespace(line: Any) -> None:
    assert protocol.decode(line) == {"action": "heartbeat"}


@pytest.mark.parametrize("line", ["not json", '{"a":', "[1,2]", '"text"', '{"a":1} trailing', ""])
def test_decode_rejects_what_is_not_one_json_object(line: Any) -> None:
    with pytest.raises(ProtocolError):
        protocol.decode(line)


def test_protocol_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        protocol.decode("{")


def _new_message_line(message: Any, context: Any) -> Any:
    # exactly the broker's shape: compact JSON, this key order
    return (
        '{"action":"new_message","request_id":"","params":{"message":'
        + json.dumps(message, ensure_ascii=False)
        + ',"context":'
        + json.dumps(context, ensure_ascii=False, separators=(",", ":"))
        + "}}"
    )


@pytest.mark.parametrize(
    "message",
    ["hi", "", 'q"uote\\ back\nslash', "ünïcode 🎉 世界", "\u2028", "x" * 5000, '"context":{'],
)
@pytest.mark.parametrize(
    "context",
    [
        {"client_id": "c1", "room_id": "/ws/r", "metadata": {}},
        {"client_id": "ü\"id", "room_id": "", "metadata": {"name": "Zoë", "n": [1, {"a": None}]}},
    ],
)
def test_decode_new_message_equals_the_generic_decoder(message: Any, context: Any) -> None:
    line = _new_message_line(message, context)
    generic = protocol.decode(line)["params"]
    for _ in range(2):  # cold, then from the context cache
        got = protocol.decode_new_message(line)
        assert got is not None
        assert got[0] == generic["message"] == message
        assert got[1] == Context(**generic["context"])


def test_decode_new_message_gives_fresh_context_objects() -> None:
    line = _new_message_line("m", {"client_id": "c", "room_id": "r", "metadata": {"k": [1]}})
    a = decoded(line)[1]
    a.metadata["k"].append(2)
    a.room_id = "changed"
    b = decoded(line)[1]
    assert b == Context("c", "r", {"k": [1]})
    empty = _new_message_line("m", {"client_id": "c", "room_id": "r", "metadata": {}})
    x = decoded(empty)[1]
    x.metadata["added"] = True
    assert decoded(empty)[1].metadata == {}


@pytest.mark.parametrize(
    "line",
    [
        '{"action":"new_connection","request_id":"","params":{"context":{"client_id":"c","room_id":"r","metadata":{}}}}',
        '{"action":"new_message","request_id":"","params":{"message":"AAH/","binary":true,"context":{"client_id":"c","room_id":"r","metadata":{}}}}',
        '{"action":"new_message","request_id":"x","params":{"message":"m","context":{"client_id":"c","room_id":"r","metadata":{}}}}',
        '{"params":{"message":"m","context":{"client_id":"c","room_id":"r","metadata":{}}},"action":"new_message"}',
        '{"action":"new_message","request_id":"","params":{"message":"m","context":{"client_id":"c","room_id":"r","metadata":{}},"extra":1}}',
        '{"action":"new_message","request_id":"","params":{"message":"m","context":{"client_id":1,"room_id":"r","metadata":{}}}}',
        '{"action":"new_message","request_id":"","params":{"message":"unterminated',
        '{"action":"new_message","request_id":"","params":{"message":"m","context":{"client_id":"c"',
    ],
)
def test_decode_new_message_leaves_other_shapes_to_the_generic_decoder(line: Any) -> None:
    assert protocol.decode_new_message(line) is None


def test_decode_new_message_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(protocol, "_CONTEXT_CACHE_MAX", 5)
    protocol._context_cache.clear()
    for i in range(12):
        line = _new_message_line("m", {"client_id": f"c{i}", "room_id": "r", "metadata": {}})
        assert decoded(line)[1].client_id == f"c{i}"
        assert len(protocol._context_cache) <= 5


# ---------------------------------------------------------------- encoders

TRICKY = [
    "hello",
    "",
    'quote " backslash \\ slash /',
    "new\nline\ttab\rcr\x00nul\x1fus",
    "héllo wörld",
    "世界 🎉 👨‍👩‍👧",
    "\u2028\u2029",
    "x" * 100_000,
]


def decoded(text: str) -> Tuple[str, Context]:
    """What the fast path reads from a new_message line (it must read it)."""
    result = protocol.decode_new_message(text)
    assert result is not None
    return result


def _one_line(data: bytes) -> Dict[str, Any]:
    assert isinstance(data, bytes)
    assert data.endswith(b"\n") and data.count(b"\n") == 1
    value: Dict[str, Any] = json.loads(data.decode("utf-8"))
    return value


@pytest.mark.parametrize("message", TRICKY)
def test_encode_broadcast(message: Any) -> None:
    assert _one_line(protocol.encode_broadcast(message, "7")) == {
        "action": "broadcast",
        "request_id": "7",
        "params": {"message": message},
    }


@pytest.mark.parametrize("message", TRICKY)
def test_encode_room_message(message: Any) -> None:
    assert _one_line(protocol.encode_room_message("room/ü\"1", message, "8")) == {
        "action": "message_to_room",
        "request_id": "8",
        "params": {"room_id": 'room/ü"1', "message": message},
    }


@pytest.mark.parametrize("message", TRICKY)
def test_encode_private_message_uses_conn_id(message: Any) -> None:
    assert _one_line(protocol.encode_private_message("client\n1", message, "9")) == {
        "action": "message_to_connection",
        "request_id": "9",
        "params": {"conn_id": "client\n1", "message": message},
    }


def test_encoders_send_non_ascii_as_utf8_not_escapes() -> None:
    assert "世界".encode("utf-8") in protocol.encode_broadcast("世界")


@pytest.mark.parametrize(
    "call",
    [
        lambda: protocol.encode_broadcast(123),  # type: ignore[arg-type]
        lambda: protocol.encode_broadcast({"a": 1}),  # type: ignore[arg-type]
        lambda: protocol.encode_room_message(None, "m"),  # type: ignore[arg-type]
        lambda: protocol.encode_room_message("r", 1.5),  # type: ignore[arg-type]
        lambda: protocol.encode_private_message(42, "m"),  # type: ignore[arg-type]
        lambda: protocol.encode_private_message("c", ["m"]),  # type: ignore[arg-type]
    ],
)
def test_encoders_reject_non_text_with_type_error(call: Any) -> None:
    with pytest.raises(TypeError, match="must be a str"):
        call()


def test_encoder_error_names_the_bad_argument() -> None:
    with pytest.raises(TypeError, match="client_id"):
        protocol.encode_private_message(42, "m")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="message"):
        protocol.encode_private_message("c", 42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="room_id"):
        protocol.encode_room_message(1, "m")  # type: ignore[arg-type]


def test_encoders_reject_lone_surrogates_with_value_error() -> None:
    with pytest.raises(ValueError, match="surrogate"):
        protocol.encode_broadcast("bad \ud800")
    with pytest.raises(ValueError, match="room_id"):
        protocol.encode_room_message("\udcff", "m")


BINARY = [b"", b"\x00\x01\xff", bytes(range(256)), b"x" * 100_001]


@pytest.mark.parametrize("payload", BINARY)
@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_encoders_send_bytes_as_base64_binary(payload: Any, kind: Any) -> None:
    data = kind(payload)
    line = _one_line(protocol.encode_broadcast(data, "1"))
    assert line["params"]["binary"] is True
    assert protocol.decode_binary(line["params"]["message"]) == payload
    line = _one_line(protocol.encode_room_message("room", data, "2"))
    assert line["params"]["room_id"] == "room" and line["params"]["binary"] is True
    assert protocol.decode_binary(line["params"]["message"]) == payload
    line = _one_line(protocol.encode_private_message("cid", data, "3"))
    assert line["params"]["conn_id"] == "cid" and line["params"]["binary"] is True
    assert protocol.decode_binary(line["params"]["message"]) == payload


def test_binary_wire_form_matches_the_broker() -> None:
    assert protocol.encode_broadcast(b"\x00\x01\xff") == (
        b'{"action":"broadcast","request_id":"","params":{"message":"AAH/","binary":true}}\n'
    )


def test_text_never_carries_the_binary_flag() -> None:
    assert b"binary" not in protocol.encode_private_message("c", "bytes-looking text")


def test_encode_response_accepted_carries_the_context() -> None:
    ctx = Context("alice", "lobby", {"name": "Alice", "tags": ["a", "ü"], "n": 1.5})
    assert _one_line(protocol.encode_response("req-1", True, ctx)) == {
        "action": "response",
        "request_id": "req-1",
        "params": {
            "accepted": True,
            "client_id": "alice",
            "room_id": "lobby",
            "metadata": {"name": "Alice", "tags": ["a", "ü"], "n": 1.5},
        },
    }


def test_encode_response_rejection_without_context() -> None:
    assert _one_line(protocol.encode_response("r", False, None)) == {
        "action": "response",
        "request_id": "r",
        "params": {"accepted": False},
    }


def test_encode_response_none_metadata_becomes_empty_object() -> None:
    line = _one_line(protocol.encode_response("r", True, Context("c", "r", None)))
    assert line["params"]["metadata"] == {}
    ctx = Context("c", "r")
    ctx.metadata = None  # type: ignore[assignment]
    assert _one_line(protocol.encode_response("r", True, ctx))["params"]["metadata"] == {}


@pytest.mark.parametrize(
    "ctx",
    [Context(1, "r"), Context("c", None), Context("c", "r", ["not", "a", "dict"])],  # type: ignore[arg-type]
)
def test_encode_response_rejects_wrong_types(ctx: Any) -> None:
    with pytest.raises(TypeError):
        protocol.encode_response("r", True, ctx)


def test_encode_response_rejects_unserialisable_metadata() -> None:
    with pytest.raises(TypeError):
        protocol.encode_response("r", True, Context("c", "r", {"x": object()}))
    with pytest.raises(ValueError):
        protocol.encode_response("r", True, Context("c", "r", {"x": float("nan")}))


def test_encode_line_is_compact_json() -> None:
    assert protocol.encode_line("x", {"a": [1, 2]}, "id") == b'{"action":"x","request_id":"id","params":{"a":[1,2]}}\n'


# ---------------------------------------------------------------- requests and contexts


def test_connection_request_defaults_match_pystrands_1_0_0() -> None:
    params = {
        "headers": {"X-User": ["alice"], "User-Agent": ["test"]},
        "url": "/ws/room1",
        "remote_addr": "127.0.0.1:5555",
    }
    req = protocol.connection_request_from_params(params)
    assert req.headers == params["headers"]
    assert req.url == "/ws/room1"
    assert req.remote_addr == "127.0.0.1:5555"
    assert req.accepted is True
    assert req.context.room_id == "/ws/room1"
    assert req.context.metadata == {}
    assert uuid.UUID(req.context.client_id).version == 4
    other = protocol.connection_request_from_params(params)
    assert other.context.client_id != req.context.client_id


def test_connection_request_tolerates_missing_params() -> None:
    req = protocol.connection_request_from_params({})
    assert req.url == "" and req.headers == {} and req.remote_addr == ""
    assert req.accepted is True


def test_context_from_params() -> None:
    ctx = protocol.context_from_params(
        {"context": {"client_id": "c", "room_id": "r", "metadata": {"k": "v"}}}
    )
    assert ctx == Context("c", "r", {"k": "v"})


@pytest.mark.parametrize("params", [{}, {"context": None}, {"context": {}}, {"context": "junk"}])
def test_context_from_params_without_a_context_gives_empty_fields(params: Any) -> None:
    ctx = protocol.context_from_params(params)
    assert ctx == Context("", "", {})
    assert ctx.context.client_id == ""


@pytest.mark.parametrize(
    "result, accepted, expected",
    [
        (True, False, True),
        (False, True, False),
        (None, True, True),
        (None, False, False),
    ],
)
def test_decide_accepted_a_returned_bool_wins(result: Any, accepted: Any, expected: Any) -> None:
    req = ConnectionRequestContext(accepted=accepted)
    assert protocol.decide_accepted(result, req) is expected


@pytest.mark.parametrize(
    "result, accepted, kind",
    [
        ("yes", True, "str"),
        (1, True, "int"),
        (0, True, "int"),
        ("", True, "str"),
        ({"user": "ada"}, True, "dict"),
        (None, 1, "int"),
        (None, "yes", "str"),
    ],
)
def test_decide_accepted_refuses_anything_but_a_bool_or_none(result: Any, accepted: Any, kind: Any) -> None:
    req = ConnectionRequestContext(accepted=accepted)
    with pytest.raises(TypeError, match=f"of type '{kind}', not True"):
        protocol.decide_accepted(result, req)


def test_context_attribute_access_repr_equality_and_self_alias() -> None:
    ctx = Context("c1", "room", {"a": 1})
    assert ctx.context is ctx
    assert ctx.context.context.client_id == "c1"
    assert repr(ctx) == "Context(client_id='c1', room_id='room', metadata={'a': 1})"
    assert ctx == Context("c1", "room", {"a": 1})
    assert ctx != Context("c2", "room", {"a": 1})
    assert ctx != Context("c1", "room", {"a": 2})
    assert Context().metadata == {} and Context().metadata is not Context().metadata
    with pytest.raises(TypeError):
        hash(ctx)


def test_context_json_round_trip() -> None:
    ctx = Context("c1", "room", {"a": [1]})
    assert Context.from_json(ctx.to_json()) == ctx
    assert Context.from_json(None) == Context()


def test_connection_request_context_model() -> None:
    req = ConnectionRequestContext(
        headers={"Authorization": ["Bearer t"], "X-Multi": ["a", "b"]},
        url="/ws/x",
        remote_addr="1.2.3.4:5",
        context=Context("c", "/ws/x"),
    )
    assert req.accepted is True
    assert req.header("authorization") == "Bearer t"
    assert req.header("X-Multi") == "a"
    assert req.header("missing", "dflt") == "dflt"
    assert "url='/ws/x'" in repr(req) and "Context(client_id='c'" in repr(req)
    same = ConnectionRequestContext.from_json(req.to_json())
    assert same == req
    from_obj = ConnectionRequestContext.from_json({**req.to_json(), "context": req.context})
    assert from_obj == req
    same.accepted = False
    assert same != req


def test_encode_auth() -> None:
    assert _one_line(protocol.encode_auth("tøken \"x\"")) == {
        "action": "auth",
        "request_id": "",
        "params": {"token": 'tøken "x"'},
    }
    with pytest.raises(TypeError):
        protocol.encode_auth(123)  # type: ignore[arg-type]
