//! A message over --max-message-size closes the client with 1009, in one
//! frame or reassembled from fragments; a message of exactly the limit
//! passes. So does a message in more than --max-fragments frames.

mod common;

use common::*;

#[test]
fn exactly_the_limit_passes_one_byte_more_gives_1009() {
    let broker = Broker::start(&["--max-message-size", "1000"]);
    let mut backend = Backend::connect(&broker);
    let mut raw = raw_join(&broker, &mut backend, "c", "room");
    let fits = "a".repeat(1000);
    raw_write(&mut raw, &masked(TEXT, fits.as_bytes()));
    assert_eq!(backend.expect("new_message")["params"]["message"], fits);
    raw_write(&mut raw, &masked(TEXT, "b".repeat(1001).as_bytes()));
    expect_close(&mut raw, 1009, AfterClose::Eof);
    backend.expect("disconnected");
}

#[test]
fn fragments_adding_up_past_the_limit_give_1009() {
    let broker = Broker::start(&["--max-message-size", "1000"]);
    let mut backend = Backend::connect(&broker);
    let mut raw = raw_join(&broker, &mut backend, "c", "room");
    let part = "f".repeat(400);
    let key = Some([5, 6, 7, 8]);
    for f in fragments(TEXT, &[part.as_bytes(); 3], key) {
        raw_write(&mut raw, &f);
    }
    expect_close(&mut raw, 1009, AfterClose::Eof);
    backend.expect("disconnected");
}

#[test]
fn a_huge_declared_length_gives_1009_without_sending_it() {
    let broker = Broker::start(&["--max-message-size", "1000"]);
    let mut backend = Backend::connect(&broker);
    let mut raw = raw_join(&broker, &mut backend, "c", "room");
    // Only the header of a 1 GiB frame: refused on the header alone.
    let mut header = vec![0x81, 0x80 | 127];
    header.extend_from_slice(&(1u64 << 30).to_be_bytes());
    header.extend_from_slice(&[1, 2, 3, 4]);
    raw_write(&mut raw, &header);
    expect_close(&mut raw, 1009, AfterClose::Eof);
}

#[test]
fn more_fragments_than_max_fragments_give_1009() {
    let broker = Broker::start(&["--max-fragments", "4"]);
    let mut backend = Backend::connect(&broker);
    let mut raw = raw_join(&broker, &mut backend, "c", "room");
    let key = Some([5, 6, 7, 8]);
    // Four fragments are fine.
    for f in fragments(TEXT, &[b"a", b"b", b"b", b"b"], key) {
        raw_write(&mut raw, &f);
    }
    assert_eq!(backend.expect("new_message")["params"]["message"], "abbb");
    // Five are not.
    for f in fragments(TEXT, &[b"a", b"b", b"b", b"b", b"b"], key) {
        raw_write(&mut raw, &f);
    }
    expect_close(&mut raw, 1009, AfterClose::Eof);
    backend.expect("disconnected");
}
