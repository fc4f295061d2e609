//! Limits on client connections: past --max-connections or
//! --max-pending-requests an upgrade gets HTTP 503 at once; a connection
//! that sends no complete upgrade request within --connect-timeout gets 408.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

#[test]
fn past_max_connections_upgrades_get_503() {
    let broker = Broker::start(&["--max-connections", "2"]);
    let mut backend = Backend::connect(&broker);
    let _a = join(&broker, &mut backend, "a", "room");
    let mut b = join(&broker, &mut backend, "b", "room");
    let upgrade = start_upgrade(&broker, "/ws/room", &[]);
    assert_eq!(upgrade.refused_status(), 503);
    // A place frees up: the next one gets in.
    b.close(None).unwrap();
    let _ = next_message(&mut b);
    backend.expect("disconnected");
    join(&broker, &mut backend, "c", "room");
}

#[test]
fn past_max_pending_requests_upgrades_get_503_at_once() {
    let broker = Broker::start(&["--max-pending-requests", "1", "--connect-timeout", "30"]);
    let mut backend = Backend::connect(&broker);
    let first = start_upgrade(&broker, "/ws/one", &[]);
    let request = backend.expect("connection_request");
    let started = Instant::now();
    let second = start_upgrade(&broker, "/ws/two", &[]);
    assert_eq!(second.refused_status(), 503);
    assert!(started.elapsed() < Duration::from_secs(3));
    // The waiting one is unaffected.
    backend.respond(&request, json!({"accepted": true}));
    first
        .finish()
        .expect("the pending request is still answered");
}

#[test]
fn no_upgrade_request_in_time_gets_408() {
    let broker = Broker::start(&["--connect-timeout", "0.3"]);
    // Half a request head, then nothing.
    let reply = send_head(&broker, "GET /ws/room HTTP/1.1\r\nHost: x\r\n");
    assert_eq!(status_of(&reply), 408, "reply: {reply:?}");
}
