//! Accept with assignment: the client_id, room_id and metadata of the
//! backend's `response` become the client's context, exactly, in
//! `new_connection` and in every later event of that client, beside the
//! connection's id and its rooms (protocol v1.1).

mod common;

use common::*;
use serde_json::json;

#[test]
fn assigned_context_reaches_every_event() {
    let broker = Broker::start(&[]);
    let mut backend = Backend::connect(&broker);
    let metadata =
        json!({"role": "admin", "n": [1, 2.5, null], "nested": {"ok": true}, "s": "é\"\n"});
    let mut client = accept(
        &broker,
        &mut backend,
        "/ws/anything",
        json!({"client_id": "user-42", "room_id": "lobby", "metadata": metadata}),
    );
    let connection_id = client.context["connection_id"]
        .as_str()
        .expect("a connection_id string in the context")
        .to_owned();
    let expected = json!({"client_id": "user-42", "room_id": "lobby", "metadata": metadata,
        "connection_id": connection_id, "rooms": ["lobby"]});
    // Exactly what the backend sent: not the whole response wrapped in it.
    assert_eq!(client.context, expected, "new_connection context");

    send_text(&mut client.ws, "hello");
    let event = backend.expect("new_message");
    assert_eq!(event["params"]["message"], "hello");
    assert_eq!(event["params"]["context"], expected, "new_message context");

    // The assigned room is the one messages reach.
    backend.send_to_room("lobby", "to lobby");
    assert_eq!(recv_text(&mut client.ws), "to lobby");
    // The assigned client id is the one private messages reach.
    backend.send_to_connection("user-42", "to user-42");
    assert_eq!(recv_text(&mut client.ws), "to user-42");

    client.ws.close(None).unwrap();
    let event = backend.expect("disconnected");
    assert_eq!(event["params"]["context"], expected, "disconnected context");
}
