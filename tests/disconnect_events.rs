//! A client's connection ending gives the backend one `disconnected` event
//! carrying that client's context: after a close handshake, and when the
//! TCP connection just drops.

mod common;

use std::net::Shutdown;

use common::*;
use serde_json::json;

#[test]
fn closing_client_gives_disconnected_with_its_context() {
    let broker = Broker::start(&[]);
    let mut backend = Backend::connect(&broker);
    let mut client = accept(
        &broker,
        &mut backend,
        "/ws/x",
        json!({"client_id": "carol", "room_id": "lobby", "metadata": {"k": "v"}}),
    );
    assert_eq!(client.context["client_id"], "carol");
    assert_eq!(client.context["metadata"], json!({"k": "v"}));
    client.ws.close(None).unwrap();
    let event = backend.expect("disconnected");
    // The same context new_connection carried (v1 fields, connection_id, rooms).
    assert_eq!(event["params"]["context"], client.context);
    // Exactly one: the next event is someone else's.
    let mut other = join(&broker, &mut backend, "dave", "lobby");
    send_text(&mut other, "ping");
    let event = backend.expect("new_message");
    assert_eq!(event["params"]["context"]["client_id"], "dave");
}

#[test]
fn dropped_tcp_connection_gives_disconnected() {
    let broker = Broker::start(&[]);
    let mut backend = Backend::connect(&broker);
    let ws = join(&broker, &mut backend, "erin", "lobby");
    ws.get_ref().shutdown(Shutdown::Both).unwrap();
    drop(ws);
    let event = backend.expect("disconnected");
    assert_eq!(event["params"]["context"]["client_id"], "erin");
    assert_eq!(event["params"]["context"]["room_id"], "lobby");
}
