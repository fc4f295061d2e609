//! The backend side: newline-delimited JSON over TCP.
//!
//! Backend -> broker: a [`LineParser`] parses each line in place with
//! simd-json into a reused tape (no per-line allocation once warm; strings
//! are unescaped in place and borrowed from the line, never copied) and
//! decodes it into a [`Command`]. A line that cannot be used yields a
//! [`LineError`] whose text goes back to the backend in an `error` line.
//!
//! Broker -> backend: the `push_*` functions append one event line to a
//! backend's output buffer. A client's context (`{"client_id":..,
//! "room_id":..,"metadata":..}`) is serialised once when the client is
//! accepted and spliced into every event of that client as raw bytes.

use std::borrow::Cow;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;

use simd_json::prelude::*;
use simd_json::value::tape::{Tape, Value};
use simd_json::Buffers;

use crate::json::push_str;

/// A message for clients: text sent as is, or binary (base64 on the wire,
/// `"binary": true`), already decoded.
#[derive(Debug, PartialEq)]
pub enum Payload<'a> {
    /// A text frame's payload.
    Text(Cow<'a, str>),
    /// A binary frame's payload.
    Binary(Vec<u8>),
}

impl Payload<'_> {
    /// The frame payload bytes.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Payload::Text(t) => t.as_bytes(),
            Payload::Binary(b) => b,
        }
    }

    /// Whether this goes out as a binary frame.
    pub fn is_binary(&self) -> bool {
        matches!(self, Payload::Binary(_))
    }
}

/// What a backend asked for.
#[derive(Debug, PartialEq)]
pub enum Command<'a> {
    /// Authentication, the first line when the broker has a backend token.
    Auth {
        /// The token presented.
        token: Cow<'a, str>,
    },
    /// The answer to a `connection_request`.
    Response(Response<'a>),
    /// A message to every connected client.
    Broadcast {
        /// The frame payload.
        message: Payload<'a>,
    },
    /// A message to every client in one room.
    MessageToRoom {
        /// The room.
        room_id: Cow<'a, str>,
        /// The frame payload.
        message: Payload<'a>,
    },
    /// A message to every connection of one client id.
    MessageToConnection {
        /// The client id (`conn_id` on the wire).
        conn_id: Cow<'a, str>,
        /// The frame payload.
        message: Payload<'a>,
    },
}

/// A backend's answer to a `connection_request`.
#[derive(Debug, PartialEq)]
pub struct Response<'a> {
    /// The `request_id` of the request it answers.
    pub request_id: Cow<'a, str>,
    /// Whether the client may connect.
    pub accepted: bool,
    /// The client id to assign (a new UUID v4 when absent or empty).
    pub client_id: Option<Cow<'a, str>>,
    /// The room to put the client in (the request path when absent).
    pub room_id: Option<Cow<'a, str>>,
    /// The metadata to attach (`{}` when absent or null).
    pub metadata: Option<Value<'a, 'a>>,
}

/// Why a backend line was not carried out (sent back in an `error` line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandError(pub String);

/// A line that could not be carried out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError<'a> {
    /// The line's `request_id`, when it has a string one.
    pub request_id: Option<&'a str>,
    /// What was wrong, for the `error` line.
    pub message: String,
}

/// Parses backend lines, reusing its buffers and tape from line to line.
#[derive(Default)]
pub struct LineParser {
    buffers: Buffers,
    /// Kept between lines for its allocation only (always empty here).
    tape: Option<Tape<'static>>,
}

impl LineParser {
    /// A parser with empty buffers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses `line` (without its `\n`) in place and hands `on_line` the
    /// decoded command, or what was wrong with the line.
    pub fn parse<R>(
        &mut self,
        line: &mut [u8],
        on_line: impl FnOnce(Result<Command<'_>, LineError<'_>>) -> R,
    ) -> R {
        let mut tape = self.tape.take().map_or_else(Tape::null, Tape::reset);
        let result = match simd_json::fill_tape(line, &mut self.buffers, &mut tape) {
            Ok(()) => {
                let value = tape.as_value();
                match decode(value) {
                    Ok(command) => on_line(Ok(command)),
                    Err(e) => on_line(Err(LineError {
                        request_id: value.get("request_id").and_then(Value::into_string),
                        message: e.0,
                    })),
                }
            }
            Err(e) => on_line(Err(LineError {
                request_id: None,
                message: format!("invalid JSON: {e}"),
            })),
        };
        self.tape = Some(tape.reset());
        result
    }
}

/// Decodes a parsed line into a command.
pub fn decode<'v>(value: Value<'v, 'v>) -> Result<Command<'v>, CommandError> {
    if value.as_object().is_none() {
        return Err(CommandError("a line must be a JSON object".into()));
    }
    let action = value
        .get("action")
        .ok_or_else(|| CommandError("missing field 'action'".into()))?
        .into_string()
        .ok_or_else(|| CommandError("field 'action' must be a string".into()))?;
    let params = value.get("params");
    let params = match params {
        Some(p) if p.as_object().is_some() => Some(p),
        Some(p) if p.is_null() => None,
        None => None,
        Some(_) => return Err(CommandError("field 'params' must be an object".into())),
    };
    let need = |name: &str| -> Result<Cow<'v, str>, CommandError> {
        match params.and_then(|p| p.get(name)) {
            Some(v) if v.as_str().is_some() => {
                Ok(Cow::Borrowed(v.into_string().unwrap_or_default()))
            }
            Some(_) => Err(CommandError(format!(
                "{action}: params.{name} must be a string"
            ))),
            None => Err(CommandError(format!("{action}: missing params.{name}"))),
        }
    };
    let optional = |name: &str| -> Result<Option<Cow<'v, str>>, CommandError> {
        match params.and_then(|p| p.get(name)) {
            Some(v) if v.as_str().is_some() => Ok(v.into_string().map(Cow::Borrowed)),
            Some(v) if v.is_null() => Ok(None),
            None => Ok(None),
            Some(_) => Err(CommandError(format!(
                "{action}: params.{name} must be a string"
            ))),
        }
    };
    let message = || -> Result<Payload<'v>, CommandError> {
        let text = need("message")?;
        let binary = match params.and_then(|p| p.get("binary")) {
            None => false,
            Some(v) if v.is_null() => false,
            Some(v) => v.as_bool().ok_or_else(|| {
                CommandError(format!("{action}: params.binary must be a boolean"))
            })?,
        };
        if !binary {
            return Ok(Payload::Text(text));
        }
        BASE64
            .decode(text.as_bytes())
            .map(Payload::Binary)
            .map_err(|e| CommandError(format!("{action}: params.message is not valid base64: {e}")))
    };
    match action {
        "response" => {
            let request_id = match value.get("request_id").and_then(Value::into_string) {
                Some(s) => Cow::Borrowed(s),
                None => {
                    return Err(CommandError(
                        "response: missing string field 'request_id'".into(),
                    ))
                }
            };
            let accepted = match params.and_then(|p| p.get("accepted")) {
                Some(v) => v.as_bool().ok_or_else(|| {
                    CommandError("response: params.accepted must be a boolean".into())
                })?,
                None => return Err(CommandError("response: missing params.accepted".into())),
            };
            let metadata = params
                .and_then(|p| p.get("metadata"))
                .filter(|m| !m.is_null());
            Ok(Command::Response(Response {
                request_id,
                accepted,
                client_id: optional("client_id")?.filter(|s| !s.is_empty()),
                room_id: optional("room_id")?,
                metadata,
            }))
        }
        "auth" => Ok(Command::Auth {
            token: need("token")?,
        }),
        "broadcast" => Ok(Command::Broadcast {
            message: message()?,
        }),
        "message_to_room" => Ok(Command::MessageToRoom {
            room_id: need("room_id")?,
            message: message()?,
        }),
        "message_to_connection" => Ok(Command::MessageToConnection {
            conn_id: need("conn_id")?,
            message: message()?,
        }),
        other => Err(CommandError(format!("unknown action '{other}'"))),
    }
}

/// A client context as JSON, serialised once per accepted client.
pub fn context_json(client_id: &str, room_id: &str, metadata: Option<Value<'_, '_>>) -> Box<[u8]> {
    let mut out = Vec::with_capacity(64 + client_id.len() + room_id.len());
    out.extend_from_slice(b"{\"client_id\":");
    push_str(&mut out, client_id);
    out.extend_from_slice(b",\"room_id\":");
    push_str(&mut out, room_id);
    out.extend_from_slice(b",\"metadata\":");
    match metadata {
        // Writing into a Vec cannot fail.
        Some(m) => {
            let _ = m.write(&mut out);
        }
        None => out.extend_from_slice(b"{}"),
    }
    out.push(b'}');
    out.into_boxed_slice()
}

fn open(out: &mut Vec<u8>, action: &str, request_id: &str) {
    out.extend_from_slice(b"{\"action\":\"");
    out.extend_from_slice(action.as_bytes());
    out.extend_from_slice(b"\",\"request_id\":");
    push_str(out, request_id);
    out.extend_from_slice(b",\"params\":{");
}

const CLOSE: &[u8] = b"}}\n";

/// `connection_request`: a client wants to connect.
pub fn push_connection_request(
    out: &mut Vec<u8>,
    request_id: &str,
    headers_json: &[u8],
    url: &str,
    remote_addr: &str,
) {
    open(out, "connection_request", request_id);
    out.extend_from_slice(b"\"headers\":");
    out.extend_from_slice(headers_json);
    out.extend_from_slice(b",\"url\":");
    push_str(out, url);
    out.extend_from_slice(b",\"remote_addr\":");
    push_str(out, remote_addr);
    out.extend_from_slice(CLOSE);
}

/// `new_connection`: a client was accepted and upgraded.
pub fn push_new_connection(out: &mut Vec<u8>, context: &[u8]) {
    open(out, "new_connection", "");
    out.extend_from_slice(b"\"context\":");
    out.extend_from_slice(context);
    out.extend_from_slice(CLOSE);
}

/// `new_message`: a client sent a text message.
pub fn push_new_message(out: &mut Vec<u8>, message: &str, context: &[u8]) {
    open(out, "new_message", "");
    out.extend_from_slice(b"\"message\":");
    push_str(out, message);
    out.extend_from_slice(b",\"context\":");
    out.extend_from_slice(context);
    out.extend_from_slice(CLOSE);
}

/// `new_message` for a binary message: base64 in `message`, `"binary": true`.
pub fn push_new_binary_message(out: &mut Vec<u8>, message: &[u8], context: &[u8]) {
    open(out, "new_message", "");
    out.extend_from_slice(b"\"message\":\"");
    let start = out.len();
    out.resize(
        start + base64::encoded_len(message.len(), true).unwrap_or(0),
        0,
    );
    let written = BASE64.encode_slice(message, &mut out[start..]).unwrap_or(0);
    out.truncate(start + written);
    out.extend_from_slice(b"\",\"binary\":true,\"context\":");
    out.extend_from_slice(context);
    out.extend_from_slice(CLOSE);
}

/// `disconnected`: a client's connection ended.
pub fn push_disconnected(out: &mut Vec<u8>, context: &[u8]) {
    open(out, "disconnected", "");
    out.extend_from_slice(b"\"context\":");
    out.extend_from_slice(context);
    out.extend_from_slice(CLOSE);
}

/// `error` about a client (for example a connection request that failed).
pub fn push_client_error(out: &mut Vec<u8>, context: &[u8], error: &str) {
    open(out, "error", "");
    out.extend_from_slice(b"\"context\":");
    out.extend_from_slice(context);
    out.extend_from_slice(b",\"error\":");
    push_str(out, error);
    out.extend_from_slice(CLOSE);
}

/// A reply to a backend's line: `action`, the line's `request_id` (null
/// when it had none), and the params `write_params` appends (the members of
/// the object, without its braces).
pub fn push_reply(
    out: &mut Vec<u8>,
    action: &str,
    request_id: Option<&str>,
    write_params: impl FnOnce(&mut Vec<u8>),
) {
    out.extend_from_slice(b"{\"action\":");
    push_str(out, action);
    out.extend_from_slice(b",\"request_id\":");
    match request_id {
        Some(id) => push_str(out, id),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"params\":{");
    write_params(out);
    out.extend_from_slice(CLOSE);
}

/// `error` answering a backend line that could not be carried out.
pub fn push_line_error(out: &mut Vec<u8>, request_id: Option<&str>, error: &str) {
    push_reply(out, "error", request_id, |out| {
        out.extend_from_slice(b"\"error\":");
        push_str(out, error);
    });
}

/// `heartbeat`, sent to every backend periodically.
pub fn push_heartbeat(out: &mut Vec<u8>) {
    out.extend_from_slice(
        b"{\"action\":\"heartbeat\",\"request_id\":\"heartbeat\",\"params\":{}}\n",
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_command<R>(line: &str, f: impl FnOnce(Result<Command<'_>, CommandError>) -> R) -> R {
        let mut bytes = line.as_bytes().to_vec();
        LineParser::new().parse(&mut bytes, |c| f(c.map_err(|e| CommandError(e.message))))
    }

    #[test]
    fn decodes_the_v1_actions() {
        with_command(
            r#"{"action":"message_to_room","request_id":"1","params":{"room_id":"r\n1","message":"hi"}}"#,
            |c| {
                assert_eq!(
                    c.unwrap(),
                    Command::MessageToRoom {
                        room_id: "r\n1".into(),
                        message: Payload::Text("hi".into())
                    }
                )
            },
        );
        with_command(
            r#"{"action":"response","request_id":"7","params":{"accepted":true,"client_id":"c","room_id":"r","metadata":{"a":[1,2]}}}"#,
            |c| match c.unwrap() {
                Command::Response(Response {
                    request_id,
                    accepted,
                    client_id,
                    room_id,
                    metadata,
                }) => {
                    assert_eq!((request_id.as_ref(), accepted), ("7", true));
                    assert_eq!(client_id.as_deref(), Some("c"));
                    assert_eq!(room_id.as_deref(), Some("r"));
                    let ctx = context_json("c", "r", metadata);
                    let v: serde_json::Value = serde_json::from_slice(&ctx).unwrap();
                    assert_eq!(v["metadata"], serde_json::json!({"a": [1, 2]}));
                }
                other => panic!("{other:?}"),
            },
        );
        with_command(
            r#"{"action":"response","request_id":"7","params":{"accepted":false}}"#,
            |c| {
                assert!(matches!(
                    c.unwrap(),
                    Command::Response(Response {
                        accepted: false,
                        client_id: None,
                        ..
                    })
                ))
            },
        );
    }

    #[test]
    fn binary_payloads_round_trip_through_base64() {
        with_command(
            r#"{"action":"broadcast","params":{"message":"AAH/","binary":true}}"#,
            |c| {
                assert_eq!(
                    c.unwrap(),
                    Command::Broadcast {
                        message: Payload::Binary(vec![0, 1, 255])
                    }
                )
            },
        );
        let mut out = Vec::new();
        push_new_binary_message(&mut out, &[0, 1, 255], b"{}");
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["params"]["message"], "AAH/");
        assert_eq!(v["params"]["binary"], true);
    }

    #[test]
    fn errors_say_what_was_wrong() {
        let cases = [
            ("not json", "invalid JSON"),
            ("[1]", "must be a JSON object"),
            (r#"{"params":{}}"#, "missing field 'action'"),
            (r#"{"action":"fly"}"#, "unknown action 'fly'"),
            (r#"{"action":"auth","params":{}}"#, "missing params.token"),
            (
                r#"{"action":"broadcast","params":{}}"#,
                "missing params.message",
            ),
            (
                r#"{"action":"broadcast","params":{"message":3}}"#,
                "must be a string",
            ),
            (
                r#"{"action":"response","params":{"accepted":true}}"#,
                "request_id",
            ),
        ];
        for (line, want) in cases {
            with_command(line, |c| {
                let e = c.unwrap_err();
                assert!(e.0.contains(want), "{line}: {}", e.0);
            });
        }
    }

    #[test]
    fn events_are_single_json_lines() {
        let ctx = context_json("c\"1", "room", None);
        let mut out = Vec::new();
        push_new_message(&mut out, "line\nbreak", &ctx);
        push_connection_request(&mut out, "9", b"{\"X\":[\"y\"]}", "/ws/a", "127.0.0.1:5");
        push_line_error(&mut out, None, "bad");
        push_heartbeat(&mut out);
        let lines: Vec<serde_json::Value> = out
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 4);
        assert_eq!(lines[0]["params"]["message"], "line\nbreak");
        assert_eq!(lines[0]["params"]["context"]["client_id"], "c\"1");
        assert_eq!(
            lines[0]["params"]["context"]["metadata"],
            serde_json::json!({})
        );
        assert_eq!(lines[1]["params"]["headers"]["X"][0], "y");
        assert_eq!(lines[2]["request_id"], serde_json::Value::Null);
        assert_eq!(lines[3]["request_id"], "heartbeat");
    }
}
