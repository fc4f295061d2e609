//! Cluster mode (--redis-url): brokers sharing a real redis-server carry
//! room messages, private messages and broadcasts to members on every
//! broker, exactly once and in order; only the brokers with members of a
//! room subscribe to it.

mod common;

use common::*;
use serde_json::json;

#[test]
fn room_messages_reach_members_on_every_broker_once_and_in_order() {
    let redis = Redis::start();
    let a = redis.broker("a", &[]);
    let b = redis.broker("b", &[]);
    let mut backend_a = Backend::connect(&a);
    let mut backend_b = Backend::connect(&b);
    let mut on_a = join(&a, &mut backend_a, "u1", "lobby");
    let mut on_b = join(&b, &mut backend_b, "u2", "lobby");
    redis.wait_subscribers("pystrands:room:lobby", 2);
    for i in 0..50 {
        backend_a.send_to_room("lobby", &format!("m{i}"));
    }
    for i in 0..50 {
        assert_eq!(recv_text(&mut on_a), format!("m{i}"));
        assert_eq!(recv_text(&mut on_b), format!("m{i}"));
    }
    // Exactly once: the next message is the marker.
    backend_b.send_to_room("lobby", "end");
    assert_eq!(recv_text(&mut on_a), "end");
    assert_eq!(recv_text(&mut on_b), "end");
    // Acks count local connections and the other brokers that got it.
    let reply = backend_a.request(
        "message_to_room",
        json!({"room_id": "lobby", "message": "acked", "ack": true}),
    );
    assert_eq!(reply["params"], json!({"connections": 1, "nodes": 1}));
}

#[test]
fn private_messages_and_broadcasts_cross_brokers() {
    let redis = Redis::start();
    let a = redis.broker("a", &[]);
    let b = redis.broker("b", &[]);
    let mut backend_a = Backend::connect(&a);
    let mut backend_b = Backend::connect(&b);
    let mut tab_a = join(&a, &mut backend_a, "alice", "r1");
    let mut tab_b = join(&b, &mut backend_b, "alice", "r2");
    let mut bob = join(&b, &mut backend_b, "bob", "r2");
    redis.wait_subscribers("pystrands:client:alice", 2);
    backend_b.send_to_connection("alice", "to every tab");
    assert_eq!(recv_text(&mut tab_a), "to every tab");
    assert_eq!(recv_text(&mut tab_b), "to every tab");
    backend_a.send_broadcast("to all");
    for ws in [&mut tab_a, &mut tab_b, &mut bob] {
        assert_eq!(recv_text(ws), "to all");
    }
    // One connection of another broker, by its connection id.
    let tab_b_id = {
        send_text(&mut tab_b, "who");
        let e = backend_b.expect("new_message");
        e["params"]["context"]["connection_id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    backend_a.send(&json!({"action": "message_to_connection",
        "params": {"connection_id": tab_b_id, "message": "just this tab"}}));
    assert_eq!(recv_text(&mut tab_b), "just this tab");
    backend_a.send_to_connection("alice", "next");
    assert_eq!(
        recv_text(&mut tab_a),
        "next",
        "tab_a got nothing in between"
    );
}

#[test]
fn only_brokers_with_members_subscribe_a_room() {
    let redis = Redis::start();
    let a = redis.broker("a", &[]);
    let _b = redis.broker("b", &[]);
    let mut backend_a = Backend::connect(&a);
    let ws = join(&a, &mut backend_a, "u1", "quiet");
    redis.wait_subscribers("pystrands:room:quiet", 1);
    drop(ws);
    backend_a.expect("disconnected");
    // Unsubscribed about a second after the last member left.
    redis.wait_subscribers("pystrands:room:quiet", 0);
}
