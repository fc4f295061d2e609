//! A client that never reads is closed once its send queue passes
//! --max-outbound-bytes (close 1008 "slow consumer", logged at info), while
//! another member of the same room keeps receiving everything, in order.

mod common;

use std::sync::mpsc;
use std::thread;

use common::*;
use tungstenite::Message;

const LIMIT: &str = "65536";
/// Messages per batch: a batch (about 32 KB) fits in the limit, so the
/// reading member's queue never reaches it.
const BATCH: usize = 32;
const SIZE: usize = 1000;
/// Give up if the silent client is not closed after this much.
const MAX_BYTES: usize = 256 * 1024 * 1024;

fn payload(i: usize) -> String {
    numbered(i, SIZE)
}

fn index_of(text: &str) -> usize {
    number_of(text, SIZE)
}

#[test]
fn a_client_that_never_reads_is_closed_and_the_room_goes_on() {
    let broker = Broker::start(&["--max-outbound-bytes", LIMIT]);
    let mut backend = Backend::connect(&broker);
    let mut reader = join(&broker, &mut backend, "reader", "room");
    let mut silent = join(&broker, &mut backend, "silent", "room");
    let silent_addr = silent.get_ref().local_addr().unwrap();

    let (progress, done) = mpsc::channel();
    let reading = thread::spawn(move || {
        let mut count = 0;
        loop {
            let text = recv_text(&mut reader);
            if text == "END" {
                return count;
            }
            assert_eq!(index_of(&text), count, "the reading member lost order");
            count += 1;
            let _ = progress.send(count);
        }
    });

    // Stream to the room in batches; the next batch goes once the reading
    // member has everything, so only the silent client falls behind.
    let mut sent = 0;
    let mut closed_at = None;
    while closed_at.is_none_or(|at| sent < at + 20 * BATCH) {
        assert!(
            sent * SIZE < MAX_BYTES,
            "the silent client was not closed after {sent} messages"
        );
        backend.send_all((sent..sent + BATCH).map(|i| to_room("room", &payload(i))));
        sent += BATCH;
        loop {
            let got = done
                .recv_timeout(TIMEOUT)
                .expect("the reading member stalled (delayed by the silent one?)");
            if got == sent {
                break;
            }
        }
        if closed_at.is_none() && broker.has_log(&["slow consumer"]) {
            closed_at = Some(sent);
        }
    }
    backend.send_to_room("room", "END");
    let received = reading
        .join()
        .expect("the reading member got everything in order");
    assert_eq!(received, sent);
    broker.wait_log(&["INFO", &silent_addr.to_string(), "slow consumer"]);
    let gone = backend.expect("disconnected");
    assert_eq!(gone["params"]["context"]["client_id"], "silent");

    // What the silent client did get is a clean prefix, then close 1008.
    let mut next = 0;
    loop {
        match next_message(&mut silent) {
            Message::Text(t) => {
                assert_eq!(index_of(&t), next, "the silent client's stream is corrupt");
                next += 1;
            }
            Message::Close(Some(frame)) => {
                assert_eq!(u16::from(frame.code), 1008, "close code: {frame:?}");
                assert_eq!(frame.reason.as_str(), "slow consumer");
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(
        next < sent,
        "the silent client got everything: it was not behind"
    );
}

/// The bound is on what a client leaves unread, not on how much one burst
/// from a backend adds in one loop turn: a member that reads everything
/// (the kernel takes megabytes on loopback) must not be cut as "slow".
#[test]
fn a_reading_member_survives_a_burst_larger_than_the_limit() {
    const COUNT: usize = 100;
    let broker = Broker::start(&["--max-outbound-bytes", LIMIT]);
    let mut backend = Backend::connect(&broker);
    let mut reader = join(&broker, &mut backend, "reader", "room");
    let reading = thread::spawn(move || {
        for i in 0..COUNT {
            match next_message(&mut reader) {
                Message::Text(t) => assert_eq!(index_of(&t), i, "out of order"),
                other => panic!("message {i}: expected text, got {other:?}"),
            }
        }
    });
    // About 100 KB in one write: more than the limit, far less than what
    // the socket buffers take.
    backend.send_all((0..COUNT).map(|i| to_room("room", &payload(i))));
    reading
        .join()
        .expect("the reading member got the whole burst");
    assert!(!broker.has_log(&["slow consumer"]));
}
