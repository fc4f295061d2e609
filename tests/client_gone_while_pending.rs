//! A client that hangs up while its connection request waits for the
//! backend frees its slot and descriptor at once, without waiting for the
//! backend's answer or --connect-timeout: the request stops counting
//! against --max-pending-requests, and an answer that comes afterwards,
//! acceptance or rejection, is ignored (the backend gets no event for a
//! client it never met).

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
/// the earlier request no longer holds the one slot. The backend's next
/// event must be that request: nothing of the gone client came first.
/// Returns the new client, which the caller keeps open for as long as it
/// counts the broker's descriptors.
fn slot_is_free(broker: &Broker, backend: &mut Backend) -> Accepted {
    accept(broker, backend, "/ws/room", json!({"client_id": "next"}))
}

#[test]
fn the_slot_and_descriptor_are_freed_before_any_answer() {
    // A --connect-timeout far beyond the test: only the hang-up frees them.
    let broker = Broker::start(&["--max-pending-requests", "1", "--connect-timeout", "60"]);
    let mut backend = Backend::connect(&broker);
    let fds = broker.open_fds();
    let _request = abandoned_request(&broker, &mut backend);
    broker.wait_open_fds(fds);
    broker.wait_log(&["hung up while its connection request waited"]);
    slot_is_free(&broker, &mut backend);
}

#[test]
fn an_acceptance_after_the_client_left_is_ignored() {
    let broker = Broker::start(&["--max-pending-requests", "1", "--connect-timeout", "60"]);
    let mut backend = Backend::connect(&broker);
    let fds = broker.open_fds();
    let request = abandoned_request(&broker, &mut backend);
    broker.wait_open_fds(fds);
    backend.respond(&request, json!({"accepted": true, "client_id": "gone"}));
    let next = slot_is_free(&broker, &mut backend);
    assert_eq!(broker.open_fds(), fds + 1, "one client, the new one");
    drop(next);
}

#[test]
fn a_rejection_after_the_client_left_is_ignored() {
    let broker = Broker::start(&["--max-pending-requests", "1", "--connect-timeout", "60"]);
    let mut backend = Backend::connect(&broker);
    let fds = broker.open_fds();
    let request = abandoned_request(&broker, &mut backend);
    broker.wait_open_fds(fds);
    backend.respond(&request, json!({"accepted": false}));
    slot_is_free(&broker, &mut backend);
}
