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
