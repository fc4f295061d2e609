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

/// Who a command acts on: every connection of a client id (all its tabs),
/// or one connection.
#[derive(Debug, Clone, PartialEq)]
pub enum Target<'a> {
    /// Every connection of this client id (`client_id`, or `conn_id` in
    /// `message_to_connection`).
    ClientId(Cow<'a, str>),
    /// One connection, by its `connection_id`.
    Connection(Cow<'a, str>),
}

/// What a backend asked for.
#[derive(Debug, PartialEq)]
pub enum Command<'a> {
    /// Authentication: the first line when the broker has a backend token,
    /// or the line by which a backend declares itself send-only.
    Auth {
        /// The token presented.
        token: Option<Cow<'a, str>>,
        /// `false`: a publisher, which gets no connection requests and no
        /// client events (only replies). Default `true`.
        events: bool,
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
        /// Connections that do not get it, by `connection_id`.
        exclude: Vec<Cow<'a, str>>,
    },
    /// A message to every connection of one client id, or to one connection.
    MessageToConnection {
        /// `conn_id` (a client id, as in v1) or `connection_id`.
        target: Target<'a>,
        /// The frame payload.
        message: Payload<'a>,
    },
    /// The target's open connections join a room.
    JoinRoom {
        /// Who joins.
        target: Target<'a>,
        /// The room.
        room_id: Cow<'a, str>,
    },
    /// The target's open connections leave a room.
    LeaveRoom {
        /// Who leaves.
        target: Target<'a>,
        /// The room.
        room_id: Cow<'a, str>,
    },
    /// The target's open connections are closed with a close frame.
    Disconnect {
        /// Who is closed.
        target: Target<'a>,
        /// The close code: 1000 or 3000-4999 (default 1000).
        code: u16,
        /// The close reason, at most 123 bytes of UTF-8 (default "").
        reason: Cow<'a, str>,
    },
    /// The target's later events carry new metadata.
    SetMetadata {
        /// Whose metadata.
        target: Target<'a>,
        /// The new metadata (a JSON object).
        metadata: Value<'a, 'a>,
    },
    /// Who is in a room, per client id.
    Presence {
        /// The room.
        room_id: Cow<'a, str>,
    },
    /// How many clients and connections are in a room.
    PresenceStats {
        /// The room.
        room_id: Cow<'a, str>,
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
    /// More rooms to join at accept, after `room_id`, in order.
    pub rooms: Vec<Cow<'a, str>>,
    /// The metadata to attach (`{}` when absent or null).
    pub metadata: Option<Value<'a, 'a>>,
    /// The subprotocol to select (one the client offered).
    pub subprotocol: Option<Cow<'a, str>>,
    /// When rejecting: the HTTP status (400-499, default 403).
    pub status: Option<u16>,
    /// When rejecting: the plain-text body.
    pub reason: Option<Cow<'a, str>>,
}

/// One decoded backend line.
#[derive(Debug, PartialEq)]
pub struct Line<'a> {
    /// The line's `request_id`, when it has a string one: replies carry it.
    pub request_id: Option<&'a str>,
    /// `"ack": true` in params: the broker answers with the number of
    /// connections the command reached.
    pub ack: bool,
    /// What to do.
    pub command: Command<'a>,
}

/// Why a backend line was not carried out (sent back in an `error` line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandError(pub String);

/// A line that could not be carried out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError<'a> {
    /// The line's `action`, when it has a string one.
    pub action: Option<&'a str>,
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
    /// decoded line, or what was wrong with it.
    pub fn parse<R>(
        &mut self,
        line: &mut [u8],
        on_line: impl FnOnce(Result<Line<'_>, LineError<'_>>) -> R,
    ) -> R {
        let mut tape = self.tape.take().map_or_else(Tape::null, Tape::reset);
        let result = match simd_json::fill_tape(line, &mut self.buffers, &mut tape) {
            Ok(()) => {
                let value = tape.as_value();
                match decode(value) {
                    Ok(line) => on_line(Ok(line)),
                    Err(e) => {
                        let (action, request_id) = Top::ids(value);
                        on_line(Err(LineError {
                            action,
                            request_id,
                            message: e.0,
                        }))
                    }
                }
            }
            Err(e) => on_line(Err(LineError {
                action: None,
                request_id: None,
                message: match e.error() {
                    simd_json::ErrorType::InvalidNumber => format!(
                        "invalid JSON: {e} (numbers must be valid JSON; integers may have up to 128 bits)"
                    ),
                    _ => format!("invalid JSON: {e}"),
                },
            })),
        };
        self.tape = Some(tape.reset());
        result
    }
}

/// The params of a line, gathered in one pass over the object (a lookup
/// per key would scan the object once per key).
#[derive(Default)]
struct Params<'v> {
    accepted: Option<Value<'v, 'v>>,
    ack: Option<Value<'v, 'v>>,
    binary: Option<Value<'v, 'v>>,
    client_id: Option<Value<'v, 'v>>,
    code: Option<Value<'v, 'v>>,
    conn_id: Option<Value<'v, 'v>>,
    connection_id: Option<Value<'v, 'v>>,
    events: Option<Value<'v, 'v>>,
    exclude: Option<Value<'v, 'v>>,
    message: Option<Value<'v, 'v>>,
    metadata: Option<Value<'v, 'v>>,
    reason: Option<Value<'v, 'v>>,
    room_id: Option<Value<'v, 'v>>,
    rooms: Option<Value<'v, 'v>>,
    status: Option<Value<'v, 'v>>,
    subprotocol: Option<Value<'v, 'v>>,
    token: Option<Value<'v, 'v>>,
}

impl<'v> Params<'v> {
    fn gather(params: Option<Value<'v, 'v>>) -> Params<'v> {
        let mut p = Params::default();
        let Some(object) = params.and_then(|v| v.as_object()) else {
            return p;
        };
        for (key, value) in object.iter() {
            let slot = match key {
                "accepted" => &mut p.accepted,
                "ack" => &mut p.ack,
                "binary" => &mut p.binary,
                "client_id" => &mut p.client_id,
                "code" => &mut p.code,
                "conn_id" => &mut p.conn_id,
                "connection_id" => &mut p.connection_id,
                "events" => &mut p.events,
                "exclude" => &mut p.exclude,
                "message" => &mut p.message,
                "metadata" => &mut p.metadata,
                "reason" => &mut p.reason,
                "room_id" => &mut p.room_id,
                "rooms" => &mut p.rooms,
                "status" => &mut p.status,
                "subprotocol" => &mut p.subprotocol,
                "token" => &mut p.token,
                _ => continue,
            };
            // As JSON objects are usually read, the last of repeated keys wins.
            *slot = Some(value);
        }
        p
    }
}

/// Reads the fields of one line's params, with errors that name the
/// action and the field.
struct Fields<'v> {
    action: &'v str,
    p: Params<'v>,
}

impl<'v> Fields<'v> {
    fn error(&self, what: std::fmt::Arguments<'_>) -> CommandError {
        CommandError(format!("{}: {what}", self.action))
    }

    /// A string field; `null` counts as absent.
    fn optional_str(
        &self,
        name: &str,
        value: Option<Value<'v, 'v>>,
    ) -> Result<Option<Cow<'v, str>>, CommandError> {
        match value {
            None => Ok(None),
            Some(v) if v.is_null() => Ok(None),
            Some(v) => v
                .into_string()
                .map(|s| Some(Cow::Borrowed(s)))
                .ok_or_else(|| self.error(format_args!("params.{name} must be a string"))),
        }
    }

    fn need_str(
        &self,
        name: &str,
        value: Option<Value<'v, 'v>>,
    ) -> Result<Cow<'v, str>, CommandError> {
        self.optional_str(name, value)?
            .ok_or_else(|| self.error(format_args!("missing params.{name}")))
    }

    fn optional_bool(
        &self,
        name: &str,
        value: Option<Value<'v, 'v>>,
    ) -> Result<Option<bool>, CommandError> {
        match value {
            None => Ok(None),
            Some(v) if v.is_null() => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| self.error(format_args!("params.{name} must be a boolean"))),
        }
    }

    /// A list of strings; `null` counts as an empty list.
    fn str_list(
        &self,
        name: &str,
        value: Option<Value<'v, 'v>>,
    ) -> Result<Vec<Cow<'v, str>>, CommandError> {
        let Some(v) = value.filter(|v| !v.is_null()) else {
            return Ok(Vec::new());
        };
        let not_a_list = || self.error(format_args!("params.{name} must be a list of strings"));
        let list = v.as_array().ok_or_else(not_a_list)?;
        list.iter()
            .map(|item| item.into_string().map(Cow::Borrowed).ok_or_else(not_a_list))
            .collect()
    }

    fn room_id(&self) -> Result<Cow<'v, str>, CommandError> {
        self.need_str("room_id", self.p.room_id)
    }

    /// `client_id` or `connection_id`, exactly one.
    fn target(&self) -> Result<Target<'v>, CommandError> {
        let client_id = self.optional_str("client_id", self.p.client_id)?;
        let connection_id = self.optional_str("connection_id", self.p.connection_id)?;
        match (client_id, connection_id) {
            (Some(id), None) => Ok(Target::ClientId(id)),
            (None, Some(id)) => Ok(Target::Connection(id)),
            (Some(_), Some(_)) => Err(self.error(format_args!(
                "give params.client_id or params.connection_id, not both"
            ))),
            (None, None) => Err(self.error(format_args!(
                "missing params.client_id or params.connection_id"
            ))),
        }
    }

    /// `message`, as text or (with `"binary": true`) base64-decoded bytes.
    fn message(&self) -> Result<Payload<'v>, CommandError> {
        let text = self.need_str("message", self.p.message)?;
        if !self
            .optional_bool("binary", self.p.binary)?
            .unwrap_or(false)
        {
            return Ok(Payload::Text(text));
        }
        BASE64
            .decode(text.as_bytes())
            .map(Payload::Binary)
            .map_err(|e| self.error(format_args!("params.message is not valid base64: {e}")))
    }
}

/// The close codes a backend may close a client with: 1000 (normal) and
/// the ranges RFC 6455 leaves to libraries and applications.
pub fn is_application_close_code(code: u64) -> bool {
    code == 1000 || (3000..=4999).contains(&code)
}

/// Longest close reason: a close frame's payload is at most 125 bytes,
/// two of which are the code.
pub const MAX_CLOSE_REASON: usize = 123;

/// A line's top-level fields, gathered in one pass over the object (a
/// lookup per key would scan it once per key); as in params, the last of
/// repeated keys wins.
struct Top<'v> {
    action: Option<Value<'v, 'v>>,
    params: Option<Value<'v, 'v>>,
    request_id: Option<Value<'v, 'v>>,
}

impl<'v> Top<'v> {
    /// None when the line is not an object.
    fn gather(value: Value<'v, 'v>) -> Option<Top<'v>> {
        let mut top = Top {
            action: None,
            params: None,
            request_id: None,
        };
        for (key, value) in value.as_object()?.iter() {
            match key {
                "action" => top.action = Some(value),
                "params" => top.params = Some(value),
                "request_id" => top.request_id = Some(value),
                _ => {}
            }
        }
        Some(top)
    }

    /// The string `action` and `request_id` an error line echoes.
    fn ids(value: Value<'v, 'v>) -> (Option<&'v str>, Option<&'v str>) {
        Top::gather(value).map_or((None, None), |t| {
            (
                t.action.and_then(Value::into_string),
                t.request_id.and_then(Value::into_string),
            )
        })
    }
}

/// Decodes a parsed line into a command.
pub fn decode<'v>(value: Value<'v, 'v>) -> Result<Line<'v>, CommandError> {
    let Some(Top {
        action,
        params,
        request_id,
    }) = Top::gather(value)
    else {
        return Err(CommandError("a line must be a JSON object".into()));
    };
    let action = action
        .ok_or_else(|| CommandError("missing field 'action'".into()))?
        .into_string()
        .ok_or_else(|| CommandError("field 'action' must be a string".into()))?;
    let params = match params {
        Some(p) if p.as_object().is_some() => Some(p),
        Some(p) if p.is_null() => None,
        None => None,
        Some(_) => return Err(CommandError("field 'params' must be an object".into())),
    };
    let request_id = request_id.and_then(Value::into_string);
    let f = Fields {
        action,
        p: Params::gather(params),
    };
    let mut ackable = true;
    let command = match action {
        "response" => {
            ackable = false;
            let Some(request_id) = request_id else {
                return Err(f.error(format_args!("missing string field 'request_id'")));
            };
            let accepted = f
                .optional_bool("accepted", f.p.accepted)?
                .ok_or_else(|| f.error(format_args!("missing params.accepted")))?;
            let status = match f.p.status.filter(|v| !v.is_null()) {
                None => None,
                Some(v) => match v.as_u64() {
                    Some(s @ 400..=499) => Some(s as u16),
                    _ => {
                        return Err(f.error(format_args!(
                            "params.status must be an HTTP status from 400 to 499"
                        )))
                    }
                },
            };
            Command::Response(Response {
                request_id: Cow::Borrowed(request_id),
                accepted,
                client_id: f
                    .optional_str("client_id", f.p.client_id)?
                    .filter(|s| !s.is_empty()),
                room_id: f.optional_str("room_id", f.p.room_id)?,
                rooms: f.str_list("rooms", f.p.rooms)?,
                metadata: f.p.metadata.filter(|m| !m.is_null()),
                subprotocol: f.optional_str("subprotocol", f.p.subprotocol)?,
                status,
                reason: f.optional_str("reason", f.p.reason)?,
            })
        }
        "auth" => {
            ackable = false;
            Command::Auth {
                token: f.optional_str("token", f.p.token)?,
                events: f.optional_bool("events", f.p.events)?.unwrap_or(true),
            }
        }
        "broadcast" => Command::Broadcast {
            message: f.message()?,
        },
        "message_to_room" => Command::MessageToRoom {
            room_id: f.room_id()?,
            message: f.message()?,
            exclude: f.str_list("exclude", f.p.exclude)?,
        },
        "message_to_connection" => {
            let conn_id = f.optional_str("conn_id", f.p.conn_id)?;
            let connection_id = f.optional_str("connection_id", f.p.connection_id)?;
            let target = match (conn_id, connection_id) {
                (Some(id), None) => Target::ClientId(id),
                (None, Some(id)) => Target::Connection(id),
                (Some(_), Some(_)) => {
                    return Err(f.error(format_args!(
                        "give params.conn_id or params.connection_id, not both"
                    )))
                }
                (None, None) => {
                    return Err(f.error(format_args!(
                        "missing params.conn_id (a client_id) or params.connection_id"
                    )))
                }
            };
            Command::MessageToConnection {
                target,
                message: f.message()?,
            }
        }
        "join_room" => Command::JoinRoom {
            target: f.target()?,
            room_id: f.room_id()?,
        },
        "leave_room" => Command::LeaveRoom {
            target: f.target()?,
            room_id: f.room_id()?,
        },
        "disconnect" => {
            let target = f.target()?;
            let code = match f.p.code.filter(|v| !v.is_null()) {
                None => 1000,
                Some(v) => match v.as_u64() {
                    Some(c) if is_application_close_code(c) => c as u16,
                    _ => {
                        return Err(f.error(format_args!(
                            "params.code must be 1000 or from 3000 to 4999"
                        )))
                    }
                },
            };
            let reason = f.optional_str("reason", f.p.reason)?.unwrap_or_default();
            if reason.len() > MAX_CLOSE_REASON {
                return Err(f.error(format_args!(
                    "params.reason is {} bytes of UTF-8; a close reason holds at most {MAX_CLOSE_REASON}",
                    reason.len()
                )));
            }
            Command::Disconnect {
                target,
                code,
                reason,
            }
        }
        "set_metadata" => {
            let target = f.target()?;
            let metadata = f
                .p
                .metadata
                .filter(|m| m.as_object().is_some())
                .ok_or_else(|| f.error(format_args!("params.metadata must be a JSON object")))?;
            Command::SetMetadata { target, metadata }
        }
        "presence" => {
            ackable = false;
            Command::Presence {
                room_id: f.room_id()?,
            }
        }
        "presence_stats" => {
            ackable = false;
            Command::PresenceStats {
                room_id: f.room_id()?,
            }
        }
        other => return Err(CommandError(format!("unknown action '{other}'"))),
    };
    let ack = ackable && f.optional_bool("ack", f.p.ack)?.unwrap_or(false);
    Ok(Line {
        request_id,
        ack,
        command,
    })
}

/// A client's context as every event of it carries it:
/// `{"client_id":..,"room_id":..,"metadata":{..},"connection_id":..,"rooms":[..]}`.
///
/// Serialised once at accept and spliced into each event as raw bytes;
/// rebuilt only when its rooms or metadata change. The v1 keys come first,
/// in v1's order; `room_id` stays the room assigned at accept.
#[derive(Debug, Clone)]
pub struct Context {
    json: Box<[u8]>,
    /// Where the metadata object lies in `json`.
    metadata: (u32, u32),
    /// Where `,"rooms":` starts.
    rooms_at: u32,
}

impl Context {
    /// A context for a connection in `rooms` (join order).
    pub fn new<'r>(
        client_id: &str,
        room_id: &str,
        metadata: Option<Value<'_, '_>>,
        connection_id: &str,
        rooms: impl IntoIterator<Item = &'r str>,
    ) -> Context {
        let mut out = Vec::with_capacity(96 + client_id.len() + 2 * room_id.len());
        out.extend_from_slice(b"{\"client_id\":");
        push_str(&mut out, client_id);
        out.extend_from_slice(b",\"room_id\":");
        push_str(&mut out, room_id);
        out.extend_from_slice(b",\"metadata\":");
        let start = out.len();
        match metadata {
            // Writing into a Vec cannot fail.
            Some(m) => {
                let _ = m.write(&mut out);
            }
            None => out.extend_from_slice(b"{}"),
        }
        let end = out.len();
        out.extend_from_slice(b",\"connection_id\":");
        push_str(&mut out, connection_id);
        let rooms_at = out.len();
        push_rooms(&mut out, rooms);
        Context {
            json: out.into_boxed_slice(),
            metadata: (start as u32, end as u32),
            rooms_at: rooms_at as u32,
        }
    }

    /// The context object, as spliced into events.
    pub fn json(&self) -> &[u8] {
        &self.json
    }

    /// The metadata object alone.
    pub fn metadata(&self) -> &[u8] {
        &self.json[self.metadata.0 as usize..self.metadata.1 as usize]
    }

    /// The connection's rooms changed.
    pub fn set_rooms<'r>(&mut self, rooms: impl IntoIterator<Item = &'r str>) {
        let mut out = Vec::with_capacity(self.json.len() + 16);
        out.extend_from_slice(&self.json[..self.rooms_at as usize]);
        push_rooms(&mut out, rooms);
        self.json = out.into_boxed_slice();
    }

    /// The connection's metadata changed.
    pub fn set_metadata(&mut self, metadata: Value<'_, '_>) {
        let (start, end) = (self.metadata.0 as usize, self.metadata.1 as usize);
        let mut out = Vec::with_capacity(self.json.len() + 32);
        out.extend_from_slice(&self.json[..start]);
        let _ = metadata.write(&mut out);
        let new_end = out.len();
        out.extend_from_slice(&self.json[end..]);
        let grew = new_end as i64 - end as i64;
        self.metadata.1 = new_end as u32;
        self.rooms_at = (self.rooms_at as i64 + grew) as u32;
        self.json = out.into_boxed_slice();
    }
}

/// `,"rooms":[..]}`: the end of a context.
fn push_rooms<'r>(out: &mut Vec<u8>, rooms: impl IntoIterator<Item = &'r str>) {
    out.extend_from_slice(b",\"rooms\":[");
    for (i, room) in rooms.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        push_str(out, room);
    }
    out.extend_from_slice(b"]}");
}

fn open(out: &mut Vec<u8>, action: &str, request_id: &str) {
    out.extend_from_slice(b"{\"action\":\"");
    out.extend_from_slice(action.as_bytes());
    out.extend_from_slice(b"\",\"request_id\":");
    push_str(out, request_id);
    out.extend_from_slice(b",\"params\":{");
}

const CLOSE: &[u8] = b"}}\n";

/// What a `connection_request` tells the backend about the client.
#[derive(Debug, Clone, Copy)]
pub struct RequestInfo<'a> {
    /// Headers as the JSON object the handshake built.
    pub headers_json: &'a [u8],
    /// The path, without query string.
    pub url: &'a str,
    /// The raw query string, without `?` (`""` when absent).
    pub query: &'a str,
    /// `ip:port` of the client.
    pub remote_addr: &'a str,
    /// The connection's id for the broker's lifetime.
    pub connection_id: &'a str,
}

/// `connection_request`: a client wants to connect.
pub fn push_connection_request(out: &mut Vec<u8>, request_id: &str, info: RequestInfo<'_>) {
    open(out, "connection_request", request_id);
    out.extend_from_slice(b"\"headers\":");
    out.extend_from_slice(info.headers_json);
    out.extend_from_slice(b",\"url\":");
    push_str(out, info.url);
    out.extend_from_slice(b",\"remote_addr\":");
    push_str(out, info.remote_addr);
    out.extend_from_slice(b",\"connection_id\":");
    push_str(out, info.connection_id);
    out.extend_from_slice(b",\"query\":");
    push_str(out, info.query);
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

/// One client id in a `presence` reply.
#[derive(Debug)]
pub struct PresenceEntry<'a> {
    /// The client id.
    pub client_id: &'a str,
    /// The metadata of its first connection listed (a JSON object).
    pub metadata: &'a [u8],
    /// The ids of its connections in the room.
    pub connections: Vec<Cow<'a, str>>,
}

/// The `presence` reply: who is in `room_id`.
pub fn push_presence(
    out: &mut Vec<u8>,
    request_id: Option<&str>,
    room_id: &str,
    entries: &[PresenceEntry<'_>],
) {
    push_reply(out, "presence", request_id, |out| {
        out.extend_from_slice(b"\"room_id\":");
        push_str(out, room_id);
        out.extend_from_slice(b",\"clients\":[");
        for (i, entry) in entries.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(b"{\"client_id\":");
            push_str(out, entry.client_id);
            out.extend_from_slice(b",\"metadata\":");
            out.extend_from_slice(entry.metadata);
            out.extend_from_slice(b",\"connections\":[");
            for (j, id) in entry.connections.iter().enumerate() {
                if j > 0 {
                    out.push(b',');
                }
                push_str(out, id);
            }
            out.extend_from_slice(b"]}");
        }
        out.push(b']');
    });
}

/// The `presence_stats` reply: how many client ids and connections.
pub fn push_presence_stats(
    out: &mut Vec<u8>,
    request_id: Option<&str>,
    room_id: &str,
    clients: usize,
    connections: usize,
) {
    push_reply(out, "presence_stats", request_id, |out| {
        out.extend_from_slice(b"\"room_id\":");
        push_str(out, room_id);
        out.extend_from_slice(
            format!(",\"clients\":{clients},\"connections\":{connections}").as_bytes(),
        );
    });
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

    fn with_line<R>(line: &str, f: impl FnOnce(Result<Line<'_>, CommandError>) -> R) -> R {
        let mut bytes = line.as_bytes().to_vec();
        LineParser::new().parse(&mut bytes, |c| f(c.map_err(|e| CommandError(e.message))))
    }

    fn with_command<R>(line: &str, f: impl FnOnce(Result<Command<'_>, CommandError>) -> R) -> R {
        with_line(line, |l| f(l.map(|l| l.command)))
    }

    fn context_value(ctx: &Context) -> serde_json::Value {
        serde_json::from_slice(ctx.json()).unwrap()
    }

    #[test]
    fn the_last_of_repeated_keys_wins_at_every_level() {
        with_line(
            r#"{"action":"bogus","request_id":"1","params":{"room_id":"a","message":"x","room_id":"b"},"action":"message_to_room","request_id":"2"}"#,
            |l| {
                let l = l.unwrap();
                assert_eq!(l.request_id, Some("2"));
                assert_eq!(
                    l.command,
                    Command::MessageToRoom {
                        room_id: "b".into(),
                        message: Payload::Text("x".into()),
                        exclude: vec![],
                    }
                );
            },
        );
        // An error line names the action and request id the line was read
        // with: the last ones.
        LineParser::new().parse(
            &mut br#"{"action":"x","request_id":"1","action":"join_room","request_id":"2"}"#
                .to_vec(),
            |r| {
                let e = r.unwrap_err();
                assert_eq!((e.action, e.request_id), (Some("join_room"), Some("2")));
            },
        );
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
                        message: Payload::Text("hi".into()),
                        exclude: vec![],
                    }
                )
            },
        );
        with_command(
            r#"{"action":"message_to_connection","params":{"conn_id":"u1","message":"hi"}}"#,
            |c| {
                assert_eq!(
                    c.unwrap(),
                    Command::MessageToConnection {
                        target: Target::ClientId("u1".into()),
                        message: Payload::Text("hi".into()),
                    }
                )
            },
        );
        with_command(
            r#"{"action":"response","request_id":"7","params":{"accepted":true,"client_id":"c","room_id":"r","metadata":{"a":[1,2]}}}"#,
            |c| match c.unwrap() {
                Command::Response(r) => {
                    assert_eq!((r.request_id.as_ref(), r.accepted), ("7", true));
                    assert_eq!(r.client_id.as_deref(), Some("c"));
                    assert_eq!(r.room_id.as_deref(), Some("r"));
                    assert!(r.rooms.is_empty() && r.subprotocol.is_none() && r.status.is_none());
                    let ctx = Context::new("c", "r", r.metadata, "n-1", ["r"]);
                    assert_eq!(
                        context_value(&ctx),
                        serde_json::json!({"client_id": "c", "room_id": "r", "metadata": {"a": [1, 2]},
                            "connection_id": "n-1", "rooms": ["r"]})
                    );
                    assert_eq!(ctx.metadata(), br#"{"a":[1,2]}"#);
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
    fn decodes_the_v1_1_actions() {
        with_line(
            r#"{"action":"join_room","request_id":"q","params":{"client_id":"u","room_id":"r","ack":true}}"#,
            |l| {
                let l = l.unwrap();
                assert_eq!((l.request_id, l.ack), (Some("q"), true));
                assert_eq!(
                    l.command,
                    Command::JoinRoom {
                        target: Target::ClientId("u".into()),
                        room_id: "r".into()
                    }
                );
            },
        );
        with_command(
            r#"{"action":"leave_room","params":{"connection_id":"n-2","room_id":"r"}}"#,
            |c| {
                assert_eq!(
                    c.unwrap(),
                    Command::LeaveRoom {
                        target: Target::Connection("n-2".into()),
                        room_id: "r".into()
                    }
                )
            },
        );
        with_command(
            r#"{"action":"disconnect","params":{"client_id":"u","code":4001,"reason":"bye"}}"#,
            |c| {
                assert_eq!(
                    c.unwrap(),
                    Command::Disconnect {
                        target: Target::ClientId("u".into()),
                        code: 4001,
                        reason: "bye".into()
                    }
                )
            },
        );
        with_command(
            r#"{"action":"disconnect","params":{"connection_id":"n-1"}}"#,
            |c| {
                assert!(matches!(
                    c.unwrap(),
                    Command::Disconnect { code: 1000, reason, .. } if reason.is_empty()
                ))
            },
        );
        with_command(
            r#"{"action":"message_to_room","params":{"room_id":"r","message":"m","exclude":["n-1","n-2"]}}"#,
            |c| match c.unwrap() {
                Command::MessageToRoom { exclude, .. } => assert_eq!(exclude, ["n-1", "n-2"]),
                other => panic!("{other:?}"),
            },
        );
        with_command(
            r#"{"action":"response","request_id":"1","params":{"accepted":false,"status":401,"reason":"no token","rooms":["a","b"],"subprotocol":"chat"}}"#,
            |c| match c.unwrap() {
                Command::Response(r) => {
                    assert_eq!(r.status, Some(401));
                    assert_eq!(r.reason.as_deref(), Some("no token"));
                    assert_eq!(r.rooms, ["a", "b"]);
                    assert_eq!(r.subprotocol.as_deref(), Some("chat"));
                }
                other => panic!("{other:?}"),
            },
        );
        with_command(r#"{"action":"auth","params":{"events":false}}"#, |c| {
            assert_eq!(
                c.unwrap(),
                Command::Auth {
                    token: None,
                    events: false
                }
            )
        });
        with_line(
            r#"{"action":"presence","request_id":"p","params":{"room_id":"r","ack":true}}"#,
            |l| {
                let l = l.unwrap();
                // Replies are what presence is for: no separate ack.
                assert!(!l.ack);
                assert_eq!(
                    l.command,
                    Command::Presence {
                        room_id: "r".into()
                    }
                );
            },
        );
    }

    #[test]
    fn context_follows_rooms_and_metadata() {
        let mut ctx = Context::new("u\"1", "/ws/a", None, "n-7", ["/ws/a"]);
        ctx.set_rooms(["/ws/a", "b"]);
        assert_eq!(
            context_value(&ctx)["rooms"],
            serde_json::json!(["/ws/a", "b"])
        );
        let mut meta = br#"{"name":"Ann","tags":[1,2,3]}"#.to_vec();
        let tape = simd_json::to_tape(&mut meta).unwrap();
        ctx.set_metadata(tape.as_value());
        ctx.set_rooms(["b"]);
        let v = context_value(&ctx);
        assert_eq!(
            v["metadata"],
            serde_json::json!({"name": "Ann", "tags": [1, 2, 3]})
        );
        assert_eq!(v["rooms"], serde_json::json!(["b"]));
        assert_eq!(v["room_id"], "/ws/a");
        assert_eq!(v["client_id"], "u\"1");
        assert_eq!(v["connection_id"], "n-7");
        assert_eq!(ctx.metadata(), br#"{"name":"Ann","tags":[1,2,3]}"#);
        let mut small = br#"{}"#.to_vec();
        let tape = simd_json::to_tape(&mut small).unwrap();
        ctx.set_metadata(tape.as_value());
        assert_eq!(context_value(&ctx)["rooms"], serde_json::json!(["b"]));
        assert_eq!(ctx.metadata(), b"{}");
    }

    #[test]
    fn integers_beyond_64_bits_pass_through_unchanged() {
        for n in [
            "18446744073709551616",
            "123456789012345678901234567890",
            "-123456789012345678901234567890",
            "170141183460469231731687303715884105727",
        ] {
            let line = format!(
                r#"{{"action":"set_metadata","params":{{"client_id":"a","metadata":{{"n":{n},"f":1.5e300}}}}}}"#
            );
            with_command(&line, |c| match c.unwrap() {
                Command::SetMetadata { metadata, .. } => {
                    let mut ctx = Context::new("a", "r", None, "c", []);
                    ctx.set_metadata(metadata);
                    let want = format!(r#"{{"n":{n},"f":1.5e300}}"#);
                    assert_eq!(String::from_utf8_lossy(ctx.metadata()), want);
                }
                other => panic!("{other:?}"),
            });
        }
        let huge = format!(
            r#"{{"action":"broadcast","params":{{"message":"m","n":{}}}}}"#,
            "9".repeat(50)
        );
        with_command(&huge, |c| {
            let e = c.unwrap_err();
            assert!(e.0.contains("up to 128 bits"), "{}", e.0);
        });
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
            (
                r#"{"action":"broadcast","params":{}}"#,
                "broadcast: missing params.message",
            ),
            (
                r#"{"action":"broadcast","params":{"message":3}}"#,
                "params.message must be a string",
            ),
            (
                r#"{"action":"broadcast","params":{"message":"m","ack":1}}"#,
                "broadcast: params.ack must be a boolean",
            ),
            (
                r#"{"action":"response","params":{"accepted":true}}"#,
                "request_id",
            ),
            (
                r#"{"action":"response","request_id":"1","params":{"accepted":false,"status":302}}"#,
                "response: params.status must be an HTTP status from 400 to 499",
            ),
            (
                r#"{"action":"response","request_id":"1","params":{"accepted":true,"rooms":"a"}}"#,
                "response: params.rooms must be a list of strings",
            ),
            (
                r#"{"action":"join_room","params":{"room_id":"r"}}"#,
                "join_room: missing params.client_id or params.connection_id",
            ),
            (
                r#"{"action":"join_room","params":{"client_id":"a","connection_id":"b","room_id":"r"}}"#,
                "join_room: give params.client_id or params.connection_id, not both",
            ),
            (
                r#"{"action":"leave_room","params":{"client_id":"a"}}"#,
                "leave_room: missing params.room_id",
            ),
            (
                r#"{"action":"disconnect","params":{"client_id":"a","code":1001}}"#,
                "disconnect: params.code must be 1000 or from 3000 to 4999",
            ),
            (
                r#"{"action":"disconnect","params":{"client_id":"a","code":"x"}}"#,
                "disconnect: params.code",
            ),
            (
                r#"{"action":"set_metadata","params":{"client_id":"a","metadata":[1]}}"#,
                "set_metadata: params.metadata must be a JSON object",
            ),
            (
                r#"{"action":"message_to_room","params":{"room_id":"r","message":"m","exclude":[1]}}"#,
                "message_to_room: params.exclude must be a list of strings",
            ),
            (
                r#"{"action":"message_to_connection","params":{"message":"m"}}"#,
                "missing params.conn_id",
            ),
            (
                r#"{"action":"presence","params":{}}"#,
                "presence: missing params.room_id",
            ),
            (
                r#"{"action":"auth","params":{"events":"no"}}"#,
                "auth: params.events must be a boolean",
            ),
        ];
        for (line, want) in cases {
            with_command(line, |c| {
                let e = c.unwrap_err();
                assert!(e.0.contains(want), "{line}: {}", e.0);
            });
        }
        let long = format!(
            r#"{{"action":"disconnect","params":{{"client_id":"a","reason":"{}"}}}}"#,
            "é".repeat(62)
        );
        with_command(&long, |c| {
            let e = c.unwrap_err();
            assert!(e.0.contains("124 bytes") && e.0.contains("123"), "{}", e.0);
        });
    }

    #[test]
    fn events_are_single_json_lines() {
        let ctx = Context::new("c\"1", "room", None, "n-1", ["room"]);
        let mut out = Vec::new();
        push_new_message(&mut out, "line\nbreak", ctx.json());
        push_connection_request(
            &mut out,
            "9",
            RequestInfo {
                headers_json: b"{\"X\":[\"y\"]}",
                url: "/ws/a",
                query: "t=1&u=%20",
                remote_addr: "127.0.0.1:5",
                connection_id: "n-9",
            },
        );
        push_line_error(&mut out, None, "bad");
        push_heartbeat(&mut out);
        push_reply(&mut out, "ack", Some("r1"), |out| {
            out.extend_from_slice(b"\"connections\":3")
        });
        let lines: Vec<serde_json::Value> = out
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 5);
        assert_eq!(lines[0]["params"]["message"], "line\nbreak");
        assert_eq!(lines[0]["params"]["context"]["client_id"], "c\"1");
        assert_eq!(
            lines[0]["params"]["context"]["metadata"],
            serde_json::json!({})
        );
        assert_eq!(lines[1]["params"]["headers"]["X"][0], "y");
        assert_eq!(lines[1]["params"]["query"], "t=1&u=%20");
        assert_eq!(lines[1]["params"]["connection_id"], "n-9");
        assert_eq!(lines[2]["request_id"], serde_json::Value::Null);
        assert_eq!(lines[3]["request_id"], "heartbeat");
        assert_eq!(
            lines[4],
            serde_json::json!({"action": "ack", "request_id": "r1", "params": {"connections": 3}})
        );
    }
}
