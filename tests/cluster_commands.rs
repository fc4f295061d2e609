//! Cluster mode: join_room, leave_room, disconnect and set_metadata by
//! client_id reach the client's connections on every broker, and by
//! connection_id the one connection, wherever it is.

mod common;

use std::time::Instant;

use common::*;
use serde_json::json;

/// The connection id of the client's next message event.
fn connection_id_of(ws: &mut Ws, backend: &mut Backend) -> String {
    send_text(ws, "id?");
    let e = backend.expect("new_message");
    e["params"]["context"]["connection_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[test]
fn membership_and_kicks_by_client_id_reach_every_broker() {
    let redis = Redis::start();
    let a = redis.broker("a", &[]);
    let b = redis.broker("b", &[]);
    let mut backend_a = Backend::connect(&a);
    let mut backend_b = Backend::connect(&b);
    let mut tab_a = join(&a, &mut backend_a, "u", "home");
    let mut tab_b = join(&b, &mut backend_b, "u", "home");
    redis.wait_subscribers("pystrands:client:u", 2);

    // Join by client id on A: both tabs, on both brokers.
    let reply = backend_a.request(
        "join_room",
        json!({"client_id": "u", "room_id": "news", "ack": true}),
    );
    assert_eq!(reply["params"], json!({"connections": 1, "nodes": 1}));
    redis.wait_subscribers("pystrands:room:news", 2);
    backend_b.send_to_room("news", "n1");
    assert_eq!(recv_text(&mut tab_a), "n1");
    assert_eq!(recv_text(&mut tab_b), "n1");

    // Metadata by client id: later events on B carry it.
    backend_a.send(&json!({"action": "set_metadata",
        "params": {"client_id": "u", "metadata": {"mood": "fine"}}}));
    let deadline = Instant::now() + TIMEOUT;
    loop {
        send_text(&mut tab_b, "m");
        let e = backend_b.expect("new_message");
        if e["params"]["context"]["metadata"] == json!({"mood": "fine"}) {
            break;
        }
        assert!(Instant::now() < deadline, "metadata never arrived on B");
    }

    // Leave by connection id of a tab on the other broker.
    let id_b = connection_id_of(&mut tab_b, &mut backend_b);
    let reply = backend_a.request(
        "leave_room",
        json!({"connection_id": id_b, "room_id": "news", "ack": true}),
    );
    assert_eq!(reply["params"]["nodes"], 1);
    redis.wait_subscribers("pystrands:room:news", 1);
    backend_a.send_to_room("news", "n2");
    backend_a.send_to_connection("u", "after");
    assert_eq!(recv_text(&mut tab_a), "n2");
    assert_eq!(recv_text(&mut tab_a), "after");
    assert_eq!(recv_text(&mut tab_b), "after", "tab_b left news");

    // A kick by client id closes the tabs on both brokers.
    backend_b.send(&json!({"action": "disconnect",
        "params": {"client_id": "u", "code": 4003, "reason": "banned"}}));
    assert_eq!(recv_close(&mut tab_a), (4003, "banned".to_owned()));
    assert_eq!(recv_close(&mut tab_b), (4003, "banned".to_owned()));
    backend_a.expect("disconnected");
}
