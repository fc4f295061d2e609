//! Several rooms per connection (protocol v1.1): rooms given at accept and
//! by `join_room` / `leave_room`, by client_id (every tab) or by
//! connection_id (one tab). A connection gets each room message once per
//! room it is in, and nothing from a room it left; a connection in no room
//! stays open for private messages and broadcasts; events carry the rooms
//! as they are now.

mod common;

use common::*;
use serde_json::json;

/// The connection id the broker gave an accepted client.
fn connection_id(client: &Accepted) -> String {
    client.context["connection_id"]
        .as_str()
        .expect("a connection_id in the context")
        .to_owned()
}

#[test]
fn rooms_given_at_accept_each_deliver_once() {
    let broker = Broker::start(&[]);
    let mut backend = Backend::connect(&broker);
    let mut ann = accept(
        &broker,
        &mut backend,
        "/ws/x",
        json!({"client_id": "ann", "room_id": "r1", "rooms": ["r2", "r3", "r2", "r1"]}),
    );
    // Join order, each room once.
    assert_eq!(ann.context["rooms"], json!(["r1", "r2", "r3"]));
    assert_eq!(ann.context["room_id"], "r1");
    assert_eq!(
        ann.request["params"]["connection_id"], ann.context["connection_id"],
        "the connection_id of the request is the connection's"
    );
    let mut bob = join(&broker, &mut backend, "bob", "r2");
    for room in ["r1", "r2", "r3"] {
        backend.send_to_room(room, &format!("to {room}"));
    }
    backend.send_broadcast("to all");
    for want in ["to r1", "to r2", "to r3", "to all"] {
        assert_eq!(recv_text(&mut ann.ws), want);
    }
    assert_eq!(recv_text(&mut bob), "to r2");
    assert_eq!(recv_text(&mut bob), "to all");
    // Nothing more for either: a private message is next.
    backend.send_to_connection("ann", "end");
    backend.send_to_connection("bob", "end");
    assert_eq!(recv_text(&mut ann.ws), "end");
    assert_eq!(recv_text(&mut bob), "end");
}

#[test]
fn join_and_leave_by_client_id_reach_every_tab_and_by_connection_id_one() {
    let broker = Broker::start(&[]);
    let mut backend = Backend::connect(&broker);
    let params = json!({"client_id": "u", "room_id": "lobby"});
    let mut tab1 = accept(&broker, &mut backend, "/ws/a", params.clone());
    let mut tab2 = accept(&broker, &mut backend, "/ws/b", params);
    let (id1, id2) = (connection_id(&tab1), connection_id(&tab2));
    assert_ne!(id1, id2, "each tab has its own connection_id");

    // By client_id: both tabs join.
    let n = backend.acked("join_room", json!({"client_id": "u", "room_id": "extra"}));
    assert_eq!(n, 2);
    backend.send_to_room("extra", "e1");
    assert_eq!(recv_text(&mut tab1.ws), "e1");
    assert_eq!(recv_text(&mut tab2.ws), "e1");

    // By connection_id: only tab1 leaves.
    let n = backend.acked(
        "leave_room",
        json!({"connection_id": id1, "room_id": "extra"}),
    );
    assert_eq!(n, 1);
    backend.send_to_room("extra", "e2");
    backend.send(&json!({"action": "message_to_connection",
        "params": {"connection_id": id1, "message": "only tab1"}}));
    assert_eq!(recv_text(&mut tab1.ws), "only tab1", "tab1 left 'extra'");
    assert_eq!(recv_text(&mut tab2.ws), "e2");

    // Events carry the rooms as they are now.
    send_text(&mut tab1.ws, "from 1");
    let event = backend.expect("new_message");
    assert_eq!(event["params"]["context"]["rooms"], json!(["lobby"]));
    assert_eq!(event["params"]["context"]["connection_id"], id1.as_str());
    send_text(&mut tab2.ws, "from 2");
    let event = backend.expect("new_message");
    assert_eq!(
        event["params"]["context"]["rooms"],
        json!(["lobby", "extra"])
    );

    // Leaving the room assigned at accept: no room at all, still open.
    let n = backend.acked(
        "leave_room",
        json!({"connection_id": id1, "room_id": "lobby"}),
    );
    assert_eq!(n, 1);
    backend.send_to_room("lobby", "lobby only");
    assert_eq!(recv_text(&mut tab2.ws), "lobby only");
    backend.send_to_connection("u", "private");
    backend.send_broadcast("everyone");
    assert_eq!(recv_text(&mut tab1.ws), "private");
    assert_eq!(recv_text(&mut tab1.ws), "everyone");
    assert_eq!(recv_text(&mut tab2.ws), "private");
    assert_eq!(recv_text(&mut tab2.ws), "everyone");
    send_text(&mut tab1.ws, "roomless");
    let event = backend.expect("new_message");
    assert_eq!(event["params"]["context"]["rooms"], json!([]));
    // room_id stays the room assigned at accept, for v1 backends.
    assert_eq!(event["params"]["context"]["room_id"], "lobby");

    // Joining twice is a no-op: one delivery, and the ack counts the tab.
    let n = backend.acked("join_room", json!({"client_id": "u", "room_id": "lobby"}));
    assert_eq!(n, 2);
    backend.send_to_room("lobby", "once");
    backend.send_to_connection("u", "after");
    for ws in [&mut tab1.ws, &mut tab2.ws] {
        assert_eq!(recv_text(ws), "once");
        assert_eq!(recv_text(ws), "after");
    }
}

#[test]
fn a_room_of_a_left_member_and_an_unknown_target_reach_nobody() {
    let broker = Broker::start(&[]);
    let mut backend = Backend::connect(&broker);
    let mut only = accept(
        &broker,
        &mut backend,
        "/ws/a",
        json!({"client_id": "solo", "room_id": "r"}),
    );
    let id = connection_id(&only);
    assert_eq!(
        backend.acked("leave_room", json!({"client_id": "solo", "room_id": "r"})),
        1
    );
    // The room is gone with its last member.
    assert_eq!(
        backend.acked("message_to_room", json!({"room_id": "r", "message": "x"})),
        0
    );
    assert_eq!(
        backend.acked("join_room", json!({"client_id": "nobody", "room_id": "r"})),
        0
    );
    // A connection id of no connection (or of another broker) reaches nobody.
    let gone = format!("{}-999999", id.split('-').next().unwrap());
    for other in [gone.as_str(), "ffffffff-1", "not-an-id"] {
        assert_eq!(
            backend.acked("join_room", json!({"connection_id": other, "room_id": "r"})),
            0
        );
    }
    backend.send_to_connection("solo", "still here");
    assert_eq!(recv_text(&mut only.ws), "still here");
}
