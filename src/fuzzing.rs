//! Harnesses shared by the cargo-fuzz targets (fuzz/) and the corpus
//! replay test (tests/fuzz_corpus_replay.rs), so that every input the
//! fuzzer kept is checked again by an ordinary `cargo test`.
//!
//! Each harness feeds arbitrary bytes to one parser the way the server
//! does, and panics when an invariant breaks: a consumed count past the
//! input, a buffer past its bound, a close code outside the allowed set.

use crate::backend::{self, Command, LineParser};
use crate::ws::frame::{Event, FrameReader};
use crate::ws::{encode, handshake};

/// Message size limit the harnesses use (small, so limits are reached).
const MAX_MESSAGE: usize = 4096;
/// Fragment limit the harnesses use.
const MAX_FRAGMENTS: usize = 16;
/// Request head limit the harnesses use.
const MAX_REQUEST: usize = 2048;

/// Close codes the broker may send for a client's bytes.
const ALLOWED_CLOSE_CODES: [u16; 3] = [1002, 1007, 1009];

/// The HTTP upgrade parser on arbitrary bytes.
pub fn handshake(data: &[u8]) {
    match handshake::parse(data, 16) {
        Ok(Some((request, head_len))) => {
            assert!(head_len <= data.len(), "head longer than the input");
            assert!(!request.accept_key.is_empty());
            assert!(!request.url.contains('?'), "query string left in url");
            let headers: &[u8] = &request.headers_json;
            assert!(headers.starts_with(b"{") && headers.ends_with(b"}"));
        }
        Ok(None) => {}
        Err(e) => assert!(!e.response().is_empty()),
    }
    let _ = handshake::check_size(data.len(), MAX_REQUEST);
}

/// Splits `data` into chunks: the first byte seeds the chunk sizes.
fn chunks(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    let (seed, mut rest) = match data.split_first() {
        Some((s, r)) => (usize::from(*s), r),
        None => (0, data),
    };
    let mut step = 0usize;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        step += 1;
        let size = 1 + (seed.wrapping_mul(31).wrapping_add(step * 17)) % 97;
        let (chunk, tail) = rest.split_at(size.min(rest.len()));
        rest = tail;
        Some(chunk)
    })
}

/// Feeds frame bytes to a reader the way the server does: each chunk is
/// appended to what is left over, and complete frames are consumed.
/// Returns the close code if the stream was refused.
fn feed_frames(reader: &mut FrameReader, pending: &mut Vec<u8>, chunk: &[u8]) -> Option<u16> {
    pending.extend_from_slice(chunk);
    let mut seen_close = false;
    let result = reader.read(pending, |event| {
        match event {
            Event::Text(t) => assert!(t.len() <= MAX_MESSAGE),
            Event::Binary(b) => assert!(b.len() <= MAX_MESSAGE),
            Event::Ping(p) => assert!(p.len() <= 125),
            Event::Pong => {}
            Event::Close(code, reason) => {
                assert!(reason.len() <= 123);
                if let Some(code) = code {
                    assert!(code >= 1000);
                }
                seen_close = true;
            }
        }
        !seen_close
    });
    match result {
        Ok(used) => {
            assert!(used <= pending.len(), "consumed past the input");
            pending.drain(..used);
            assert!(
                reader.buffered() <= 2 * MAX_MESSAGE + 64,
                "fragment buffer past its bound"
            );
            // An incomplete frame never needs more than one message of bytes.
            assert!(
                pending.len() <= MAX_MESSAGE + 14 + 97,
                "input buffer past its bound"
            );
            None
        }
        Err(e) => {
            assert!(ALLOWED_CLOSE_CODES.contains(&e.close_code()));
            assert!(encode::close(Some(e.close_code()), e.reason()).len() <= 2 + 125);
            Some(e.close_code())
        }
    }
}

/// The frame reader on arbitrary bytes split at arbitrary points.
pub fn frame_reader(data: &[u8]) {
    let mut reader = FrameReader::new(MAX_MESSAGE, MAX_FRAGMENTS);
    let mut pending = Vec::new();
    for chunk in chunks(data) {
        if feed_frames(&mut reader, &mut pending, chunk).is_some() {
            return;
        }
    }
}

/// A client connection's byte stream, start to end: the upgrade request
/// (bounded like the server bounds it), then frames, in arbitrary chunks.
pub fn connection(data: &[u8]) {
    let mut head = Vec::new();
    let mut reader = FrameReader::new(MAX_MESSAGE, MAX_FRAGMENTS);
    let mut pending = Vec::new();
    let mut upgraded = false;
    for chunk in chunks(data) {
        if upgraded {
            if feed_frames(&mut reader, &mut pending, chunk).is_some() {
                return;
            }
            continue;
        }
        head.extend_from_slice(chunk);
        match handshake::parse(&head, 16) {
            Ok(Some((_, head_len))) => {
                if head_len > MAX_REQUEST {
                    return;
                }
                upgraded = true;
                let rest = head.split_off(head_len);
                if feed_frames(&mut reader, &mut pending, &rest).is_some() {
                    return;
                }
            }
            Ok(None) => {
                if handshake::check_size(head.len(), MAX_REQUEST).is_err() {
                    return;
                }
            }
            Err(_) => return,
        }
        assert!(head.len() <= MAX_REQUEST + 97);
    }
}

/// The backend line parser and command decoder on arbitrary lines; every
/// accepted command is carried out as far as encoding goes.
pub fn backend_lines(data: &[u8]) {
    let mut parser = LineParser::new();
    let mut owned = data.to_vec();
    for line in owned.split_mut(|b| *b == b'\n') {
        let mut out = Vec::new();
        parser.parse(line, |parsed| match parsed.map(|l| l.command) {
            Ok(Command::Response(r)) => {
                let rooms = r.room_id.iter().chain(&r.rooms).map(|s| s.as_ref());
                let ctx = backend::Context::new(
                    r.client_id.as_deref().unwrap_or("id"),
                    r.room_id.as_deref().unwrap_or("/"),
                    r.metadata,
                    "n-1",
                    rooms,
                );
                backend::push_new_connection(&mut out, ctx.json());
            }
            Ok(
                Command::Broadcast { message }
                | Command::MessageToRoom { message, .. }
                | Command::MessageToConnection { message, .. },
            ) => {
                let frame = encode::message(message.as_bytes(), message.is_binary());
                assert!(frame.len() >= message.as_bytes().len() + 2);
            }
            Ok(Command::Disconnect { code, reason, .. }) => {
                assert!(backend::is_application_close_code(code.into()));
                assert!(encode::close(Some(code), &reason).len() <= 2 + 125);
            }
            Ok(Command::SetMetadata { metadata, .. }) => {
                let mut ctx = backend::Context::new("id", "/", None, "n-1", ["/"]);
                ctx.set_metadata(metadata);
                backend::push_new_connection(&mut out, ctx.json());
            }
            Ok(
                Command::Auth { .. }
                | Command::JoinRoom { .. }
                | Command::LeaveRoom { .. }
                | Command::Presence { .. }
                | Command::PresenceStats { .. },
            ) => {}
            Err(e) => {
                assert!(!e.message.is_empty());
                backend::push_line_error(&mut out, e.request_id, &e.message);
            }
        });
        // Every event line the broker writes is one line of valid JSON.
        if !out.is_empty() {
            assert_eq!(out.iter().filter(|b| **b == b'\n').count(), 1);
            let mut check = out.clone();
            let n = check.len() - 1;
            assert!(simd_json::to_tape(&mut check[..n]).is_ok());
        }
    }
}

/// Most clients and backends the server harness opens.
const MAX_FAKE_CLIENTS: usize = 8;
const MAX_FAKE_BACKENDS: usize = 3;

/// A valid upgrade request (with a query and an offered subprotocol).
const UPGRADE: &[u8] = b"GET /ws/r0?token=t HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n\
Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: chat\r\n\r\n";

/// Backend lines the harness picks from; `{id}` is replaced by the latest
/// request id the backend was sent, `{n}` by a small number, `{cid}` by a
/// connection id seen in its output.
const LINES: &[&str] = &[
    r#"{"action":"response","request_id":"{id}","params":{"accepted":true,"client_id":"c{n}","room_id":"r{n}","rooms":["r0","x"],"metadata":{"n":{n}}}}"#,
    r#"{"action":"response","request_id":"{id}","params":{"accepted":false,"status":401,"reason":"no"}}"#,
    r#"{"action":"response","request_id":"{id}","params":{"accepted":true,"subprotocol":"chat"}}"#,
    r#"{"action":"response","request_id":"{id}","params":{"accepted":true,"subprotocol":"nope"}}"#,
    r#"{"action":"message_to_room","request_id":"m","params":{"room_id":"r{n}","message":"hello {n}","ack":true}}"#,
    r#"{"action":"message_to_room","params":{"room_id":"r0","message":"AAH/","binary":true,"exclude":["{cid}"]}}"#,
    r#"{"action":"broadcast","params":{"message":"all"}}"#,
    r#"{"action":"message_to_connection","params":{"conn_id":"c{n}","message":"you"}}"#,
    r#"{"action":"message_to_connection","params":{"connection_id":"{cid}","message":"tab"}}"#,
    r#"{"action":"join_room","request_id":"j","params":{"client_id":"c{n}","room_id":"r{n}","ack":true}}"#,
    r#"{"action":"leave_room","params":{"connection_id":"{cid}","room_id":"r0"}}"#,
    r#"{"action":"disconnect","params":{"client_id":"c{n}","code":4000,"reason":"bye"}}"#,
    r#"{"action":"set_metadata","params":{"connection_id":"{cid}","metadata":{"k":[{n}]}}}"#,
    r#"{"action":"presence","request_id":"p","params":{"room_id":"r{n}"}}"#,
    r#"{"action":"presence_stats","request_id":"s","params":{"room_id":"r0"}}"#,
    r#"{"action":"auth","params":{"events":false}}"#,
    r#"{"action":"nope"}"#,
];

/// One in-memory connection of the harness.
struct FakePeer {
    which: crate::server::Fake,
    pipe: crate::server::FakeStream,
}

impl FakePeer {
    fn new(server: &mut crate::server::Server, client: bool) -> FakePeer {
        let pipe = crate::server::FakeStream::default();
        pipe.0.borrow_mut().room = 1 << 20;
        let which = if client {
            server.harness_client(pipe.clone())
        } else {
            server.harness_backend(pipe.clone())
        };
        let peer = FakePeer { which, pipe };
        // A new socket is writable: the poller says so once.
        peer.ready(server);
        peer
    }

    fn send(&self, server: &mut crate::server::Server, bytes: &[u8]) {
        self.pipe.0.borrow_mut().input.extend_from_slice(bytes);
        self.ready(server);
    }

    fn ready(&self, server: &mut crate::server::Server) {
        if server.harness_alive(self.which) {
            let signal = crate::socket::Signal {
                readable: true,
                writable: true,
                read_closed: self.pipe.0.borrow().eof,
                error: false,
            };
            server.harness_event(self.which, signal);
        }
    }

    /// The `request_id` of the latest `connection_request` in the output,
    /// and a connection id seen in it.
    fn seen(&self) -> (String, String) {
        let p = self.pipe.0.borrow();
        let text = String::from_utf8_lossy(&p.output);
        let after = |key: &str| {
            text.rfind(key)
                .map(|i| {
                    let rest = &text[i + key.len()..];
                    rest.split('"').next().unwrap_or("").to_owned()
                })
                .unwrap_or_default()
        };
        (after("\"request_id\":\""), after("\"connection_id\":\""))
    }
}

/// The server's own state machine through in-memory connections: clients
/// and backends connect, send arbitrary bytes or well-formed requests,
/// frames and lines, stop reading, hang up; the loop's turns end in
/// between. After every turn the loop's invariants hold (bounded queues
/// and buffers, hub and phases in step, nothing left half-ended), and at
/// the end every byte a client got is a well-formed HTTP reply followed,
/// after a 101, by well-formed server frames, and every line a backend got
/// is JSON.
pub fn server(data: &[u8]) {
    use crate::server::Server;
    let config = crate::config::Config {
        max_message_size: MAX_MESSAGE,
        max_fragments: MAX_FRAGMENTS,
        max_request_size: MAX_REQUEST,
        max_outbound_bytes: 4096,
        max_backend_buffer: 4096,
        max_line_size: 4096,
        max_pending_requests: 4,
        queue_size: 8,
        queue_bytes: 2048,
        max_connections: MAX_FAKE_CLIENTS,
        ..crate::config::Config::default()
    };
    let Ok(mut server) = Server::for_harness(config) else {
        return;
    };
    let mut clients: Vec<FakePeer> = Vec::new();
    let mut backends: Vec<FakePeer> = Vec::new();
    let mut bytes = data.iter().copied();
    let mut next = move || bytes.next();
    while let Some(op) = next() {
        let arg = next().unwrap_or(0);
        let pick = |list: &Vec<FakePeer>| -> Option<usize> {
            (!list.is_empty()).then(|| usize::from(arg) % list.len())
        };
        match op % 12 {
            0 if clients.len() < MAX_FAKE_CLIENTS => clients.push(FakePeer::new(&mut server, true)),
            1 if backends.len() < MAX_FAKE_BACKENDS => {
                backends.push(FakePeer::new(&mut server, false))
            }
            2 => {
                // Raw bytes to a client: the next `len` bytes of the input.
                let len = usize::from(next().unwrap_or(0));
                let chunk: Vec<u8> = (0..len).map_while(|_| next()).collect();
                if let Some(i) = pick(&clients) {
                    clients[i].send(&mut server, &chunk);
                }
            }
            3 => {
                let len = usize::from(next().unwrap_or(0));
                let chunk: Vec<u8> = (0..len).map_while(|_| next()).collect();
                if let Some(i) = pick(&backends) {
                    backends[i].send(&mut server, &chunk);
                }
            }
            4 => {
                if let Some(i) = pick(&backends) {
                    let template = LINES[usize::from(next().unwrap_or(0)) % LINES.len()];
                    let (id, cid) = backends[i].seen();
                    let line = template
                        .replace("{id}", &id)
                        .replace("{cid}", &cid)
                        .replace("{n}", &(arg % 4).to_string());
                    backends[i].send(&mut server, format!("{line}\n").as_bytes());
                }
            }
            5 => {
                if let Some(i) = pick(&clients) {
                    clients[i].send(&mut server, UPGRADE);
                }
            }
            6 => {
                // A client frame: text, ping, close or binary, masked.
                if let Some(i) = pick(&clients) {
                    let (opcode, payload): (u8, &[u8]) = match next().unwrap_or(0) % 4 {
                        0 => (0x1, b"hi"),
                        1 => (0x9, b"p"),
                        2 => (0x8, &[0x03, 0xe8]),
                        _ => (0x2, &[0, 1, 2]),
                    };
                    let mut frame = vec![0x80 | opcode, 0x80 | payload.len() as u8, 1, 2, 3, 4];
                    frame.extend(
                        payload
                            .iter()
                            .enumerate()
                            .map(|(j, b)| b ^ [1, 2, 3, 4][j % 4]),
                    );
                    clients[i].send(&mut server, &frame);
                }
            }
            7 => {
                // A client hangs up (or is reset).
                if let Some(i) = pick(&clients) {
                    {
                        let mut p = clients[i].pipe.0.borrow_mut();
                        p.eof = true;
                        p.reset = arg & 0x80 != 0;
                    }
                    clients[i].ready(&mut server);
                }
            }
            8 => {
                // How much a client takes before its writes block.
                if let Some(i) = pick(&clients) {
                    clients[i].pipe.0.borrow_mut().room = usize::from(next().unwrap_or(0)) * 64;
                    clients[i].ready(&mut server);
                }
            }
            9 => {
                if let Some(i) = pick(&backends) {
                    backends[i].pipe.0.borrow_mut().room = usize::from(next().unwrap_or(0)) * 256;
                    backends[i].ready(&mut server);
                }
            }
            10 => {
                if let Some(i) = pick(&backends) {
                    backends[i].pipe.0.borrow_mut().eof = true;
                    backends[i].ready(&mut server);
                }
            }
            _ => {
                server.harness_end_turn();
                server.harness_check();
            }
        }
    }
    server.harness_end_turn();
    server.harness_check();
    for client in &clients {
        check_client_output(&client.pipe.0.borrow().output);
    }

    // What a backend got is JSON lines. The last may be cut: the broker
    // writes as much as the socket takes and keeps the rest queued, or the
    // backend was closed with a line half written.
    for backend in &backends {
        let output = &backend.pipe.0.borrow().output;
        let complete = output
            .iter()
            .rposition(|b| *b == b'\n')
            .map_or(0, |end| end + 1);
        for line in output[..complete].split(|b| *b == b'\n') {
            if !line.is_empty() {
                let mut line = line.to_vec();
                assert!(
                    simd_json::to_tape(&mut line).is_ok(),
                    "a backend got a line that is not JSON"
                );
            }
        }
    }
}

/// What a client got must be an HTTP reply and, after a 101, server frames:
/// unmasked, final, known opcodes, text in UTF-8, close codes valid. It may
/// be cut anywhere: a client that stops reading is closed with its reply
/// or frame half written.
fn check_client_output(output: &[u8]) {
    let start = &output[..output.len().min(9)];
    assert!(b"HTTP/1.1 ".starts_with(start), "not an HTTP reply");
    let Some(end) = memchr::memmem::find(output, b"\r\n\r\n") else {
        return;
    };
    if !output.starts_with(b"HTTP/1.1 101 ") {
        return;
    }
    let mut rest = &output[end + 4..];
    while !rest.is_empty() {
        let mut cursor = std::io::Cursor::new(rest);
        let Ok(Some((header, len))) = tungstenite::protocol::frame::FrameHeader::parse(&mut cursor)
        else {
            // A frame cut short: the connection ended while writing it.
            return;
        };
        let start = cursor.position() as usize;
        assert!(
            header.mask.is_none() && header.is_final,
            "a masked or partial server frame"
        );
        let len = len as usize;
        if rest.len() < start + len {
            return;
        }
        let payload = &rest[start..start + len];
        use tungstenite::protocol::frame::coding::{Control, Data, OpCode};
        match header.opcode {
            OpCode::Data(Data::Text) => {
                assert!(
                    std::str::from_utf8(payload).is_ok(),
                    "a text frame not in UTF-8"
                )
            }
            OpCode::Data(Data::Binary) | OpCode::Control(Control::Ping | Control::Pong) => {}
            OpCode::Control(Control::Close) => {
                if payload.len() >= 2 {
                    let code = u16::from_be_bytes([payload[0], payload[1]]);
                    assert!(
                        crate::ws::frame::is_valid_close_code(code),
                        "close code {code}"
                    );
                }
            }
            other => panic!("the broker sent opcode {other:?}"),
        }
        rest = &rest[start + len..];
    }
}
