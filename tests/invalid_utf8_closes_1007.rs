//! Invalid UTF-8 in a text message closes the client with 1007, whether it
//! is in one frame or split across fragments; the bad message never reaches
//! the backend. (A character split across fragments is fine.)

mod common;

use common::*;

/// The mask of the fragmented messages here.
const KEY: Option<[u8; 4]> = Some([9, 8, 7, 6]);

#[test]
fn invalid_utf8_in_one_frame_gives_1007() {
    let broker = Broker::start(&[]);
    let mut backend = Backend::connect(&broker);
    let mut raw = raw_join(&broker, &mut backend, "c", "room");
    raw_write(&mut raw, &masked(TEXT, "before".as_bytes()));
    raw_write(&mut raw, &masked(TEXT, b"ok \xc3\x28 not ok"));
    expect_close(&mut raw, 1007, AfterClose::Eof);
    assert_eq!(backend.expect("new_message")["params"]["message"], "before");
    // The next event is the disconnect, not the bad message.
    backend.expect("disconnected");
}

#[test]
fn invalid_utf8_across_fragments_gives_1007() {
    let broker = Broker::start(&[]);
    let mut backend = Backend::connect(&broker);
    let mut raw = raw_join(&broker, &mut backend, "c", "room");
    // "€" is e2 82 ac: the first fragment ends inside it, the second
    // continues with a byte that cannot follow.
    for f in fragments(TEXT, &[b"price \xe2\x82", b"\x28"], KEY) {
        raw_write(&mut raw, &f);
    }
    expect_close(&mut raw, 1007, AfterClose::Eof);
    backend.expect("disconnected");
}

#[test]
fn a_character_split_across_fragments_is_fine() {
    let broker = Broker::start(&[]);
    let mut backend = Backend::connect(&broker);
    let mut raw = raw_join(&broker, &mut backend, "c", "room");
    for f in fragments(TEXT, &[b"price \xe2\x82", b"\xac 5"], KEY) {
        raw_write(&mut raw, &f);
    }
    assert_eq!(
        backend.expect("new_message")["params"]["message"],
        "price € 5"
    );
}

#[test]
fn invalid_utf8_in_a_close_reason_gives_1007() {
    let broker = Broker::start(&[]);
    let mut backend = Backend::connect(&broker);
    let mut raw = raw_join(&broker, &mut backend, "c", "room");
    raw_write(&mut raw, &masked(CLOSE, b"\x03\xe8bad \xff reason"));
    expect_close(&mut raw, 1007, AfterClose::Eof);
    backend.expect("disconnected");
}
