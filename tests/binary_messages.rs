//! Binary messages (an additive extension of wire v1): a client's binary
//! message reaches the backend as `new_message` with the bytes in base64
//! and `"binary": true`; a backend command with `"binary": true` and a
//! base64 message reaches clients as a binary frame. Text stays as it was.

mod common;

use common::*;
use serde_json::json;
use tungstenite::Message;

/// Standard base64 with padding (written here so the test does not share
/// the broker's encoder).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn binary_both_ways_and_text_unchanged() {
    let broker = Broker::start(&[]);
    let mut backend = Backend::connect(&broker);
    let mut ws = join(&broker, &mut backend, "c", "room");
    let bytes: Vec<u8> = (0..=255u8).chain([0, 0, 255]).collect();

    ws.send(Message::Binary(bytes.clone().into())).unwrap();
    let event = backend.expect("new_message");
    assert_eq!(event["params"]["message"], base64(&bytes));
    assert_eq!(event["params"]["binary"], true);
    assert_eq!(event["params"]["context"]["client_id"], "c");

    // Text events do not claim to be binary (a 1.0.0 backend sees no change).
    send_text(&mut ws, "plain");
    let event = backend.expect("new_message");
    assert_eq!(event["params"]["message"], "plain");
    assert_ne!(event["params"]["binary"], true);

    backend.send(&json!({
        "action": "message_to_room",
        "request_id": "b",
        "params": {"room_id": "room", "message": base64(&bytes), "binary": true},
    }));
    match next_message(&mut ws) {
        Message::Binary(got) => assert_eq!(got.as_ref(), bytes.as_slice()),
        other => panic!("expected a binary frame, got {other:?}"),
    }
    // Without the flag, the same string is text.
    backend.send_to_room("room", &base64(b"hi"));
    assert_eq!(recv_text(&mut ws), base64(b"hi"));
}

#[test]
fn bad_base64_gets_an_error_line() {
    let broker = Broker::start(&[]);
    let mut backend = Backend::connect(&broker);
    let mut ws = join(&broker, &mut backend, "c", "room");
    backend.send(&json!({
        "action": "broadcast",
        "request_id": "bad64",
        "params": {"message": "not base64!", "binary": true},
    }));
    let line = backend.expect("error");
    assert_eq!(line["request_id"], "bad64");
    assert!(
        line["params"]["error"].as_str().unwrap().contains("base64"),
        "{line}"
    );
    backend.send_to_room("room", "after");
    assert_eq!(
        recv_text(&mut ws),
        "after",
        "something was sent for the bad line"
    );
}
