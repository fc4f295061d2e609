//! A client's close frame is answered with a close frame carrying the same
//! code, then the broker closes the connection.

mod common;

use common::*;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::CloseFrame;

#[test]
fn close_code_is_echoed_then_the_connection_ends() {
    let broker = Broker::start(&[]);
    let mut backend = Backend::connect(&broker);
    let mut raw = raw_join(&broker, &mut backend, "c", "room");
    let mut payload = 4321u16.to_be_bytes().to_vec();
    payload.extend_from_slice(b"going away now");
    raw_write(&mut raw, &masked(CLOSE, &payload));
    let after = expect_close(&mut raw, 4321, AfterClose::Eof);
    assert!(after.is_empty(), "bytes after the close frame");
    backend.expect("disconnected");
}

#[test]
fn normal_closure_and_empty_close_are_echoed() {
    let broker = Broker::start(&[]);
    let mut backend = Backend::connect(&broker);
    let mut ws = join(&broker, &mut backend, "a", "room");
    ws.close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    }))
    .unwrap();
    assert_eq!(recv_close(&mut ws).0, 1000);
    expect_ended(&mut ws);
    backend.expect("disconnected");

    let mut raw = raw_join(&broker, &mut backend, "b", "room");
    raw_write(&mut raw, &masked(CLOSE, b""));
    let (opcode, echo) = read_frame(&mut raw);
    assert_eq!(opcode, CLOSE);
    assert!(
        echo.is_empty(),
        "a close without a code is echoed without one: {echo:?}"
    );
    read_to_eof(&mut raw);
}
