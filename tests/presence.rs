//! `presence` and `presence_stats` (protocol v1.1): who is in a room, one
//! entry per client_id with its metadata and connection ids, exact after
//! joins, leaves and disconnects; a room nobody is in answers empty.

mod common;

use common::*;
use serde_json::{json, Value};

/// The presence of `room` as a sorted list of (client_id, metadata,
/// sorted connection ids).
fn presence(backend: &mut Backend, room: &str) -> Vec<(String, Value, Vec<String>)> {
    let reply = backend.request("presence", json!({"room_id": room}));
    assert_eq!(reply["action"], "presence", "{reply}");
    assert_eq!(reply["params"]["room_id"], room);
    let mut entries: Vec<(String, Value, Vec<String>)> = reply["params"]["clients"]
        .as_array()
        .unwrap_or_else(|| panic!("clients must be a list: {reply}"))
        .iter()
        .map(|c| {
            let mut conns: Vec<String> = c["connections"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().to_owned())
                .collect();
            conns.sort();
            (
                c["client_id"].as_str().unwrap().to_owned(),
                c["metadata"].clone(),
                conns,
            )
        })
        .collect();
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    entries
}

fn stats(backend: &mut Backend, room: &str) -> (u64, u64) {
    let reply = backend.request("presence_stats", json!({"room_id": room}));
    assert_eq!(reply["action"], "presence_stats", "{reply}");
    assert_eq!(reply["params"]["room_id"], room);
    (
        reply["params"]["clients"].as_u64().unwrap(),
        reply["params"]["connections"].as_u64().unwrap(),
    )
}

fn cid(client: &Accepted) -> String {
    client.context["connection_id"].as_str().unwrap().to_owned()
}

#[test]
fn presence_is_exact_after_joins_leaves_and_disconnects() {
    let broker = Broker::start(&[]);
    let mut backend = Backend::connect(&broker);
    assert!(presence(&mut backend, "chat").is_empty());
    assert_eq!(stats(&mut backend, "chat"), (0, 0));

    let ann1 = accept(
        &broker,
        &mut backend,
        "/ws/chat",
        json!({"client_id": "ann", "room_id": "chat", "metadata": {"name": "Ann"}}),
    );
    let ann2 = accept(
        &broker,
        &mut backend,
        "/ws/other",
        json!({"client_id": "ann", "room_id": "other", "metadata": {"name": "Ann"}}),
    );
    let mut bob = accept(
        &broker,
        &mut backend,
        "/ws/chat",
        json!({"client_id": "bob", "room_id": "chat", "rooms": ["other"]}),
    );
    assert_eq!(
        presence(&mut backend, "chat"),
        vec![
            ("ann".into(), json!({"name": "Ann"}), vec![cid(&ann1)]),
            ("bob".into(), json!({}), vec![cid(&bob)]),
        ]
    );
    assert_eq!(stats(&mut backend, "chat"), (2, 2));

    // ann's second tab joins: one entry, two connections.
    backend.acked(
        "join_room",
        json!({"connection_id": cid(&ann2), "room_id": "chat"}),
    );
    let mut both = vec![cid(&ann1), cid(&ann2)];
    both.sort();
    assert_eq!(presence(&mut backend, "chat")[0].2, both);
    assert_eq!(stats(&mut backend, "chat"), (2, 3));

    // bob leaves chat (still in other); ann's first tab disconnects.
    backend.acked("leave_room", json!({"client_id": "bob", "room_id": "chat"}));
    drop(ann1);
    backend.expect("disconnected");
    assert_eq!(
        presence(&mut backend, "chat"),
        vec![("ann".into(), json!({"name": "Ann"}), vec![cid(&ann2)])]
    );
    assert_eq!(stats(&mut backend, "chat"), (1, 1));
    assert_eq!(
        presence(&mut backend, "other"),
        vec![
            ("ann".into(), json!({"name": "Ann"}), vec![cid(&ann2)]),
            ("bob".into(), json!({}), vec![cid(&bob)]),
        ]
    );

    // Metadata set later shows in presence; a kicked client is gone.
    backend.acked(
        "set_metadata",
        json!({"client_id": "bob", "metadata": {"typing": true}}),
    );
    assert_eq!(
        presence(&mut backend, "other")[1].1,
        json!({"typing": true})
    );
    backend.acked("disconnect", json!({"client_id": "bob"}));
    let _ = recv_close(&mut bob.ws);
    assert_eq!(stats(&mut backend, "other"), (1, 1));
    assert!(presence(&mut backend, "nobody-here").is_empty());
}

#[test]
fn presence_needs_a_room_id() {
    let broker = Broker::start(&[]);
    let mut backend = Backend::connect(&broker);
    let error = backend.refused("presence", json!({}));
    assert!(
        error.contains("presence: missing params.room_id"),
        "{error}"
    );
    let error = backend.refused("presence_stats", json!({"room_id": 7}));
    assert!(
        error.contains("presence_stats: params.room_id must be a string"),
        "{error}"
    );
    assert_eq!(stats(&mut backend, "r"), (0, 0));
}
