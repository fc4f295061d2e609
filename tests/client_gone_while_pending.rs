//! A client that disconnects while its connection request waits for the
//! backend: an acceptance that comes afterwards gives the backend
//! `new_connection` and then, at once, `disconnected` for it (not after a
//! ping timeout); a rejection gives it nothing more. Either way the request
//! stops counting against --max-pending-requests and the broker's
//! descriptors return to their baseline.

mod common;

use common::*;
use serde_json::json;

/// A request from a client that has already gone; returns the request.
fn abandoned_request(broker: &Broker, backend: &mut Backend) -> serde_json::Value {
    let stream = raw_upgrade_request(broker, "/ws/room");
    let request = backend.expect("connection_request");
    drop(stream);
    request
}

/// With --max-pending-requests 1, the next upgrade reaches the backend:
/// the earlier request no longer holds the one slot.
fn slot_is_free(broker: &Broker, backend: &mut Backend) {
    accept(broker, backend, "/ws/room", json!({"client_id": "next"}));
}

#[test]
fn accepted_after_the_client_left_connects_then_disconnects_at_once() {
    // Default --ping-interval (25 s): a `disconnected` within TIMEOUT can
    // only come from the broker noticing the closed socket.
    let broker = Broker::start(&["--max-pending-requests", "1", "--connect-timeout", "30"]);
    let mut backend = Backend::connect(&broker);
    let fds = broker.open_fds();
    let request = abandoned_request(&broker, &mut backend);
    backend.respond(&request, json!({"accepted": true, "client_id": "gone"}));
    let connected = backend.expect("new_connection");
    assert_eq!(connected["params"]["context"]["client_id"], "gone");
    let left = backend.expect("disconnected");
    assert_eq!(left["params"]["context"]["client_id"], "gone");
    broker.wait_open_fds(fds);
    slot_is_free(&broker, &mut backend);
}

#[test]
fn rejected_after_the_client_left_gives_nothing_more() {
    let broker = Broker::start(&["--max-pending-requests", "1", "--connect-timeout", "30"]);
    let mut backend = Backend::connect(&broker);
    let fds = broker.open_fds();
    let request = abandoned_request(&broker, &mut backend);
    backend.respond(&request, json!({"accepted": false}));
    broker.wait_open_fds(fds);
    slot_is_free(&broker, &mut backend);
}
