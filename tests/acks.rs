//! Acks (protocol v1.1): `"ack": true` on a sending or membership action is
//! answered with `ack` carrying the same request_id and the number of
//! connections reached (0 when nobody is online); without it nothing comes
//! back, as in v1. `exclude` on a room message skips exactly the named
//! connections.

mod common;

use common::*;
use serde_json::json;

#[test]
fn acks_count_the_connections_reached() {
    let broker = Broker::start(&[]);
    let mut backend = Backend::connect(&broker);
    let params = |id: &str| json!({"client_id": id, "room_id": "r"});
    let a1 = accept(&broker, &mut backend, "/ws/r", params("a"));
    let _a2 = accept(&broker, &mut backend, "/ws/r", params("a"));
    let _b = accept(&broker, &mut backend, "/ws/r", params("b"));
    let _c = accept(
        &broker,
        &mut backend,
        "/ws/s",
        json!({"client_id": "c", "room_id": "s"}),
    );
    let a1_id = a1.context["connection_id"].clone();

    let room = json!({"room_id": "r", "message": "m"});
    assert_eq!(backend.acked("message_to_room", room), 3);
    assert_eq!(
        backend.acked(
            "message_to_room",
            json!({"room_id": "empty", "message": "m"})
        ),
        0
    );
    assert_eq!(backend.acked("broadcast", json!({"message": "m"})), 4);
    assert_eq!(
        backend.acked(
            "message_to_connection",
            json!({"conn_id": "a", "message": "m"})
        ),
        2
    );
    assert_eq!(
        backend.acked(
            "message_to_connection",
            json!({"connection_id": a1_id, "message": "m"})
        ),
        1
    );
    assert_eq!(
        backend.acked(
            "message_to_connection",
            json!({"conn_id": "offline", "message": "m"})
        ),
        0
    );
    assert_eq!(
        backend.acked("join_room", json!({"client_id": "a", "room_id": "x"})),
        2
    );
    assert_eq!(
        backend.acked("leave_room", json!({"client_id": "b", "room_id": "r"})),
        1
    );
    assert_eq!(
        backend.acked(
            "set_metadata",
            json!({"client_id": "c", "metadata": {"k": 1}})
        ),
        1
    );
    assert_eq!(
        backend.acked(
            "set_metadata",
            json!({"client_id": "offline", "metadata": {}})
        ),
        0
    );
    assert_eq!(
        backend.acked("disconnect", json!({"client_id": "offline"})),
        0
    );
}

#[test]
fn without_ack_nothing_comes_back() {
    let broker = Broker::start(&[]);
    let mut backend = Backend::connect(&broker);
    let mut ws = join(&broker, &mut backend, "a", "r");
    backend.send_all([
        json!({"action": "message_to_room", "request_id": "1", "params": {"room_id": "r", "message": "one"}}),
        json!({"action": "join_room", "request_id": "2", "params": {"client_id": "a", "room_id": "x"}}),
        json!({"action": "message_to_room", "request_id": "3", "params": {"room_id": "x", "message": "two", "ack": false}}),
    ]);
    assert_eq!(recv_text(&mut ws), "one");
    assert_eq!(recv_text(&mut ws), "two");
    // The very next line is the answer to this request: nothing came before.
    backend
        .send(&json!({"action": "presence_stats", "request_id": "4", "params": {"room_id": "x"}}));
    let reply = backend.recv();
    assert_eq!(reply["request_id"], "4", "{reply}");
}

#[test]
fn exclude_skips_exactly_the_named_tabs() {
    let broker = Broker::start(&[]);
    let mut backend = Backend::connect(&broker);
    let mut tabs: Vec<Accepted> = (0..3)
        .map(|_| {
            accept(
                &broker,
                &mut backend,
                "/ws/r",
                json!({"client_id": "u", "room_id": "r"}),
            )
        })
        .collect();
    let mut other = join(&broker, &mut backend, "v", "r");
    let sender = tabs[1].context["connection_id"].clone();
    let n = backend.acked(
        "message_to_room",
        json!({"room_id": "r", "message": "hi", "exclude": [sender, "ffffffff-1"]}),
    );
    assert_eq!(n, 3, "four members, one excluded");
    backend.send_to_connection("u", "next");
    backend.send_to_connection("v", "next");
    assert_eq!(recv_text(&mut tabs[0].ws), "hi");
    assert_eq!(recv_text(&mut tabs[0].ws), "next");
    assert_eq!(recv_text(&mut tabs[1].ws), "next", "the excluded tab");
    assert_eq!(recv_text(&mut tabs[2].ws), "hi");
    assert_eq!(recv_text(&mut tabs[2].ws), "next");
    assert_eq!(recv_text(&mut other), "hi");
    assert_eq!(recv_text(&mut other), "next");
}
