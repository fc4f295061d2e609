//! A backend that never answers a connection request: the client gets HTTP
//! 503 once --connect-timeout passes (not before, not much after), and the
//! backend gets an `error` event about it. A late answer changes nothing.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

#[test]
fn no_answer_gives_503_after_the_connect_timeout() {
    // One second: the backend's late answer and the next client below must
    // each go through within it, on a machine that may be busy.
    let broker = Broker::start(&["--connect-timeout", "1"]);
    let mut backend = Backend::connect(&broker);
    let started = Instant::now();
    let mut stream = raw_upgrade_request(&broker, "/ws/slow");
    let request = backend.expect("connection_request");
    let head = read_http_head(&mut stream);
    let waited = started.elapsed();
    assert_eq!(status_of(&head), 503, "reply: {head:?}");
    assert!(
        waited >= Duration::from_millis(1000),
        "503 came before --connect-timeout: {waited:?}"
    );
    assert!(
        waited < Duration::from_millis(3000),
        "503 came long after --connect-timeout 1: {waited:?}"
    );
    read_to_eof(&mut stream);

    let error = backend.expect("error");
    let params = &error["params"];
    assert!(
        params["context"].is_object(),
        "error without context: {error}"
    );
    assert!(
        params["error"].as_str().is_some_and(|e| !e.is_empty()),
        "error without a reason: {error}"
    );

    // Answering too late neither upgrades anything nor reaches a client:
    // the next event is the request of the next client.
    backend.respond(&request, json!({"accepted": true}));
    expect_next_request(&broker, &mut backend, "/ws/next");
}
