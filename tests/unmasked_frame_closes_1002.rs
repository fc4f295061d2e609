//! A client frame without a mask is a protocol error: close 1002, and the
//! frame's content never reaches the backend.

mod common;

use common::*;

#[test]
fn an_unmasked_text_frame_gives_1002() {
    let broker = Broker::start(&[]);
    let mut backend = Backend::connect(&broker);
    let mut raw = raw_join(&broker, &mut backend, "c", "room");
    raw_write(&mut raw, &masked(TEXT, b"masked"));
    raw_write(&mut raw, &frame(true, TEXT, b"unmasked", None));
    expect_close(&mut raw, 1002, AfterClose::Eof);
    assert_eq!(backend.expect("new_message")["params"]["message"], "masked");
    backend.expect("disconnected");
}

#[test]
fn an_unmasked_ping_gives_1002() {
    let broker = Broker::start(&[]);
    let mut backend = Backend::connect(&broker);
    let mut raw = raw_join(&broker, &mut backend, "c", "room");
    raw_write(&mut raw, &frame(true, PING, b"hi", None));
    expect_close(&mut raw, 1002, AfterClose::Eof);
}
