//! Publisher backends (protocol v1.1): a backend whose first line is
//! `auth` with `events: false` only sends. It gets no connection requests
//! and no client events, is not counted as a connected backend (upgrades
//! still get 503 with only publishers), and still gets its replies. Events
//! handed to a backend that then declares itself a publisher go on to the
//! next backend.

mod common;

use common::*;
use serde_json::json;

#[test]
fn a_publisher_sends_and_gets_replies_but_no_events() {
    let broker = Broker::start(&[]);
    let mut publisher = Backend::connect_publisher(&broker, None);
    // Only a publisher: no backend takes connection requests.
    assert_eq!(start_upgrade(&broker, "/ws/r", &[]).refused_status(), 503);

    let mut backend = Backend::connect(&broker);
    let mut ws = join(&broker, &mut backend, "u", "r");
    send_text(&mut ws, "to the app");
    assert_eq!(
        backend.expect("new_message")["params"]["message"],
        "to the app"
    );
    assert_eq!(
        publisher.acked(
            "message_to_room",
            json!({"room_id": "r", "message": "news"})
        ),
        1
    );
    assert_eq!(recv_text(&mut ws), "news");
    // The publisher's next line is the answer to its request: no
    // connection request, new_connection or new_message came before.
    publisher
        .send(&json!({"action": "presence_stats", "request_id": "p1", "params": {"room_id": "r"}}));
    let reply = publisher.recv();
    assert_eq!(reply["request_id"], "p1", "{reply}");
    assert_eq!(reply["params"]["connections"], 1);
    // Errors reach it too.
    let error = publisher.refused("join_room", json!({"room_id": "r"}));
    assert!(error.contains("join_room"), "{error}");

    // With the only event-taking backend gone, upgrades get 503 again.
    backend.disconnect_and_wait(&broker);
    assert_eq!(start_upgrade(&broker, "/ws/r", &[]).refused_status(), 503);
}

#[test]
fn with_a_token_a_publisher_authenticates_and_takes_no_requests() {
    let broker = Broker::start(&["--backend-token", "s3cret"]);
    let mut publisher = Backend::connect_publisher(&broker, Some("s3cret"));
    let mut backend = Backend::connect_with_token(&broker, "s3cret");
    // Round-robin would give every other request to the publisher: every
    // one reaches the backend.
    let _clients: Vec<Accepted> = (0..4)
        .map(|i| accept(&broker, &mut backend, &format!("/ws/{i}"), json!({})))
        .collect();
    assert_eq!(publisher.acked("broadcast", json!({"message": "m"})), 4);
    // A publisher with a wrong token is refused like any backend.
    let mut bad = Backend::connect_only(&broker);
    bad.send(&json!({"action": "auth", "params": {"token": "nope", "events": false}}));
    let error = bad.expect("error");
    assert!(error["params"]["error"]
        .as_str()
        .unwrap()
        .contains("authentication failed"));
    bad.expect_closed();
}

#[test]
fn events_queued_for_a_backend_are_not_lost_to_a_publisher() {
    let broker = Broker::start(&[]);
    let mut first = Backend::connect(&broker);
    let mut ws = join(&broker, &mut first, "u", "r");
    first.disconnect_and_wait(&broker);
    // No backend: these wait in the queue.
    send_text(&mut ws, "m1");
    send_text(&mut ws, "m2");
    barrier(&mut ws, BrokerPings::Fail);
    let _publisher = Backend::connect_publisher(&broker, None);
    let mut backend = Backend::connect(&broker);
    assert_eq!(backend.expect("new_message")["params"]["message"], "m1");
    assert_eq!(backend.expect("new_message")["params"]["message"], "m2");
}

#[test]
fn only_the_first_line_may_declare_a_publisher() {
    let broker = Broker::start(&[]);
    let mut backend = Backend::connect(&broker);
    assert_eq!(backend.acked("broadcast", json!({"message": "x"})), 0);
    let error = backend.refused("auth", json!({"events": false}));
    assert!(error.contains("first line"), "{error}");
    // Still a backend that takes requests.
    expect_next_request(&broker, &mut backend, "/ws/r");
}

#[test]
fn events_handed_to_a_backend_that_turns_publisher_go_on() {
    let broker = Broker::start(&[]);
    let mut first = Backend::connect(&broker);
    let mut ws = join(&broker, &mut first, "u", "r");
    first.disconnect_and_wait(&broker);
    send_text(&mut ws, "m1");
    send_text(&mut ws, "m2");
    barrier(&mut ws, BrokerPings::Fail);
    // Connected without a word: taken for a backend, handed the queue...
    let mut late = Backend::connect(&broker);
    assert_eq!(late.expect("new_message")["params"]["message"], "m1");
    assert_eq!(late.expect("new_message")["params"]["message"], "m2");
    // ...then its first line says it only publishes.
    late.send(&json!({"action": "auth", "params": {"events": false}}));
    broker.wait_log(&[&format!("backend {} is a publisher", late.local)]);
    let mut backend = Backend::connect(&broker);
    assert_eq!(backend.expect("new_message")["params"]["message"], "m1");
    assert_eq!(backend.expect("new_message")["params"]["message"], "m2");
    // And the client's next message goes to the backend, not the publisher.
    send_text(&mut ws, "m3");
    assert_eq!(backend.expect("new_message")["params"]["message"], "m3");
}
