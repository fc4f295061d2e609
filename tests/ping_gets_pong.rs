//! A ping gets a pong with the same payload, also between the fragments
//! of a message, and pings are not messages for the backend.

mod common;

use common::*;
use tungstenite::Message;

#[test]
fn ping_gets_pong_with_its_payload() {
    let broker = Broker::start(&[]);
    let mut backend = Backend::connect(&broker);
    let mut ws = join(&broker, &mut backend, "c", "room");
    ws.send(Message::Ping(b"are you there?".to_vec().into()))
        .unwrap();
    match ws.read().expect("an answer") {
        Message::Pong(payload) => assert_eq!(payload.as_ref(), b"are you there?"),
        other => panic!("expected a pong, got {other:?}"),
    }
    ws.send(Message::Ping(Vec::new().into())).unwrap();
    match ws.read().expect("an answer") {
        Message::Pong(payload) => assert!(payload.is_empty()),
        other => panic!("expected a pong, got {other:?}"),
    }
    // No event for the pings: the next one is this message.
    send_text(&mut ws, "after pings");
    assert_eq!(
        backend.expect("new_message")["params"]["message"],
        "after pings"
    );
}

#[test]
fn ping_between_fragments_gets_pong_and_the_message_survives() {
    let broker = Broker::start(&[]);
    let mut backend = Backend::connect(&broker);
    let mut raw = raw_join(&broker, &mut backend, "c", "room");
    let key = Some([3, 1, 4, 1]);
    raw_write(&mut raw, &frame(false, TEXT, b"hel", key));
    raw_write(&mut raw, &masked(PING, b"mid"));
    let (opcode, payload) = read_frame(&mut raw);
    assert_eq!((opcode, payload.as_slice()), (PONG, b"mid".as_slice()));
    raw_write(&mut raw, &frame(true, CONTINUATION, b"lo", key));
    assert_eq!(backend.expect("new_message")["params"]["message"], "hello");
}
