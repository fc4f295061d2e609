//! `message_to_connection` (param `conn_id`) reaches every connection
//! ("tab") that shares the client_id, and no other client; each tab has its
//! own new_connection and disconnected events.

mod common;

use common::*;
use serde_json::json;

#[test]
fn private_messages_reach_every_tab_of_the_client_id() {
    let broker = Broker::start(&[]);
    let mut backend = Backend::connect(&broker);
    // Two tabs of alice, in different rooms; bob in alice's first room.
    let tab1 = accept(
        &broker,
        &mut backend,
        "/ws/a",
        json!({"client_id": "alice", "room_id": "one"}),
    );
    let tab2 = accept(
        &broker,
        &mut backend,
        "/ws/b",
        json!({"client_id": "alice", "room_id": "two"}),
    );
    assert_eq!(tab1.context["client_id"], "alice");
    assert_eq!(tab2.context["client_id"], "alice");
    let (mut tab1, mut tab2) = (tab1.ws, tab2.ws);
    let mut bob = join(&broker, &mut backend, "bob", "one");

    backend.send_to_connection("alice", "psst alice");
    backend.send_to_connection("bob", "psst bob");
    assert_eq!(recv_text(&mut tab1), "psst alice");
    assert_eq!(recv_text(&mut tab2), "psst alice");
    // Had alice's message reached bob, it would come first.
    assert_eq!(recv_text(&mut bob), "psst bob");

    // A prefix or unknown id reaches nobody.
    backend.send_to_connection("ali", "nobody");
    backend.send_to_connection("nobody", "nobody");

    // One tab closes: one disconnected event, the other tab still receives.
    tab1.close(None).unwrap();
    let gone = backend.expect("disconnected");
    assert_eq!(gone["params"]["context"]["client_id"], "alice");
    assert_eq!(gone["params"]["context"]["room_id"], "one");
    backend.send_to_connection("alice", "still here");
    assert_eq!(recv_text(&mut tab2), "still here");
    tab2.close(None).unwrap();
    let gone = backend.expect("disconnected");
    assert_eq!(gone["params"]["context"]["room_id"], "two");
}
