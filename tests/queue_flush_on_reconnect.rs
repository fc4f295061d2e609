//! Events produced while no backend is connected wait in a queue and reach
//! the next backend that connects, in order; with --queue-size N only the
//! newest N arrive and the drop is logged at warn; --queue-size 0 keeps none.

mod common;

use common::*;
use serde_json::Value;
use tungstenite::Message;

/// Connects a backend, accepts `client_id` into room "q", then takes the
/// backend away (waiting until the broker has seen it go).
fn orphaned_clients(broker: &Broker, ids: &[&str]) -> Vec<Ws> {
    let mut backend = Backend::connect(broker);
    let clients = join_each(broker, &mut backend, ids, "q");
    backend.disconnect_and_wait(broker);
    clients
}

fn describe(event: &Value) -> String {
    let who = event["params"]["context"]["client_id"]
        .as_str()
        .unwrap_or("?");
    match event["action"].as_str() {
        Some("new_message") => format!("{who}: {}", event["params"]["message"].as_str().unwrap()),
        Some(action) => format!("{who}: <{action}>"),
        None => format!("{event}"),
    }
}

#[test]
fn queued_events_reach_the_next_backend_in_order() {
    let broker = Broker::start(&[]);
    let mut clients = orphaned_clients(&broker, &["x", "y"]);
    let mut y = clients.pop().unwrap();
    let mut x = clients.pop().unwrap();
    for i in 0..5 {
        send_text(&mut x, &format!("m{i}"));
    }
    barrier(&mut x, BrokerPings::Fail);
    y.close(None).unwrap();
    // The echo of the close comes after the broker handled it.
    assert!(matches!(next_message(&mut y), Message::Close(_)));
    for i in 5..10 {
        send_text(&mut x, &format!("m{i}"));
    }
    barrier(&mut x, BrokerPings::Fail);

    let mut next = Backend::connect(&broker);
    let mut want: Vec<String> = (0..5).map(|i| format!("x: m{i}")).collect();
    want.push("y: <disconnected>".into());
    want.extend((5..10).map(|i| format!("x: m{i}")));
    let got: Vec<String> = (0..want.len()).map(|_| describe(&next.recv())).collect();
    assert_eq!(got, want);

    // Live events follow the flushed ones on the same backend.
    send_text(&mut x, "live");
    assert_eq!(describe(&next.recv()), "x: live");
}

#[test]
fn a_full_queue_keeps_the_newest_and_logs_the_drop() {
    let broker = Broker::start(&["--queue-size", "3"]);
    let mut x = orphaned_clients(&broker, &["x"]).pop().unwrap();
    for i in 0..5 {
        send_text(&mut x, &format!("m{i}"));
    }
    barrier(&mut x, BrokerPings::Fail);
    broker.wait_log(&["WARN", "dropped"]);

    let mut next = Backend::connect(&broker);
    let got: Vec<String> = (0..3).map(|_| describe(&next.recv())).collect();
    assert_eq!(got, ["x: m2", "x: m3", "x: m4"]);
    send_text(&mut x, "live");
    assert_eq!(
        describe(&next.recv()),
        "x: live",
        "more than --queue-size events were kept"
    );
}

#[test]
fn queue_size_zero_keeps_nothing() {
    let broker = Broker::start(&["--queue-size", "0"]);
    let mut x = orphaned_clients(&broker, &["x"]).pop().unwrap();
    for i in 0..3 {
        send_text(&mut x, &format!("m{i}"));
    }
    barrier(&mut x, BrokerPings::Fail);
    let mut next = Backend::connect(&broker);
    send_text(&mut x, "live");
    assert_eq!(
        describe(&next.recv()),
        "x: live",
        "--queue-size 0 kept events"
    );
}
