//! The broker pings every open client each --ping-interval; a client that
//! sends nothing, not even a pong, within --ping-timeout is closed with
//! 1001 and the backend gets `disconnected`. A client that answers stays.

mod common;

use common::*;

#[test]
fn a_client_that_never_answers_pings_is_closed() {
    let broker = Broker::start(&["--ping-interval", "0.2", "--ping-timeout", "0.3"]);
    let mut backend = Backend::connect(&broker);
    let mut raw = raw_join(&broker, &mut backend, "mute", "room");
    let (opcode, _) = read_frame(&mut raw);
    assert_eq!(opcode, PING, "expected a ping first");
    // Not answering: next comes the close.
    expect_close(&mut raw, 1001, AfterClose::Unchecked);
    let event = backend.expect("disconnected");
    assert_eq!(event["params"]["context"]["client_id"], "mute");
}

#[test]
fn a_client_that_answers_pings_stays_open() {
    // The test has 0.8 s to answer each ping (a busy machine may hold it up).
    let broker = Broker::start(&["--ping-interval", "0.2", "--ping-timeout", "0.8"]);
    let mut backend = Backend::connect(&broker);
    let mut raw = raw_join(&broker, &mut backend, "lively", "room");
    // Four pings answered: over two seconds, about three timeouts.
    for _ in 0..4 {
        let (opcode, payload) = read_frame(&mut raw);
        assert_eq!(opcode, PING, "expected a ping, got opcode {opcode}");
        raw_write(&mut raw, &masked(PONG, &payload));
    }
    backend.send_to_room("room", "still here");
    loop {
        let (opcode, payload) = read_frame(&mut raw);
        match opcode {
            PING => raw_write(&mut raw, &masked(PONG, &payload)),
            TEXT => {
                assert_eq!(payload, b"still here");
                break;
            }
            other => panic!("unexpected opcode {other}: {payload:?}"),
        }
    }
}
