//! SIGTERM (and SIGINT): the broker stops accepting, every open client gets
//! close 1001, the backend hears of each disconnect, and the process exits
//! with status 0, within --close-timeout even if a client never answers.

mod common;

use std::net::TcpStream;
use std::time::Duration;

use common::*;

fn shutdown_with(signal: libc::c_int) {
    let mut broker = Broker::start(&[]);
    let mut backend = Backend::connect(&broker);
    let mut clients = join_each(&broker, &mut backend, &["c0", "c1", "c2"], "room");
    backend.send_to_room("room", "before");
    for ws in &mut clients {
        assert_eq!(recv_text(ws), "before");
    }
    broker.signal(signal);
    for ws in &mut clients {
        let (code, _reason) = recv_close(ws);
        assert_eq!(code, 1001, "close code at shutdown");
        // tungstenite answers the close; then the broker closes the socket.
        expect_ended(ws);
    }
    let mut gone: Vec<String> = (0..clients.len())
        .map(|_| {
            let e = backend.expect("disconnected");
            e["params"]["context"]["client_id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    gone.sort();
    assert_eq!(gone, ["c0", "c1", "c2"]);
    let status = broker.wait_exit(Duration::from_secs(5));
    assert_eq!(status.code(), Some(0), "exit status {status:?}");
}

#[test]
fn sigterm_closes_clients_with_1001_and_exits_0() {
    shutdown_with(libc::SIGTERM);
}

#[test]
fn sigint_closes_clients_with_1001_and_exits_0() {
    shutdown_with(libc::SIGINT);
}

#[test]
fn sigterm_with_a_client_that_never_answers_still_exits_0_in_bounded_time() {
    let mut broker = Broker::start(&["--close-timeout", "0.5"]);
    let mut backend = Backend::connect(&broker);
    // A raw client that will not answer the close frame.
    let mut raw = raw_join(&broker, &mut backend, "mute", "room");
    broker.signal(libc::SIGTERM);
    expect_close(&mut raw, 1001, AfterClose::Unchecked);
    // It stopped accepting before it sent the close frames.
    assert!(
        TcpStream::connect(broker.ws).is_err(),
        "the WebSocket port still accepts connections during shutdown"
    );
    let status = broker.wait_exit(Duration::from_secs(4));
    assert_eq!(status.code(), Some(0), "exit status {status:?}");
}
