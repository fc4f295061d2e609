//! The backend that got a connection request disconnects before answering:
//! the client gets HTTP 503 right away (not after --connect-timeout), and
//! a backend still connected gets the `error` event.

mod common;

use std::time::{Duration, Instant};

use common::*;

#[test]
fn sole_backend_leaving_gives_503() {
    // A long timeout, so a 503 can only come from the disconnect.
    let broker = Broker::start(&["--connect-timeout", "30"]);
    let mut backend = Backend::connect(&broker);
    let mut stream = raw_upgrade_request(&broker, "/ws/room");
    backend.expect("connection_request");
    let started = Instant::now();
    backend.disconnect();
    let head = read_http_head(&mut stream);
    assert_eq!(status_of(&head), 503, "reply: {head:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
    read_to_eof(&mut stream);
}

#[test]
fn the_other_backend_gets_the_error_event() {
    let broker = Broker::start(&["--connect-timeout", "30"]);
    let mut first = Backend::connect(&broker);
    let mut second = Backend::connect(&broker);
    let mut stream = raw_upgrade_request(&broker, "/ws/room");
    let (who, request) = recv_any(&mut [&mut first, &mut second]);
    assert_eq!(request["action"], "connection_request", "got {request}");
    let (gone, mut survivor) = if who == 0 {
        (first, second)
    } else {
        (second, first)
    };
    gone.disconnect();
    let head = read_http_head(&mut stream);
    assert_eq!(status_of(&head), 503, "reply: {head:?}");
    let error = survivor.expect("error");
    assert!(error["params"]["context"].is_object(), "{error}");
    assert!(error["params"]["error"]
        .as_str()
        .is_some_and(|e| !e.is_empty()));
}
