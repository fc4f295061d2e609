//! Bad input to every protocol v1.1 action gets an `error` line that names
//! the action and the field, carrying the line's request_id, and the
//! backend stays connected and served.

mod common;

use common::*;
use serde_json::{json, Value};

#[test]
fn each_bad_field_is_named_and_the_backend_stays() {
    let broker = Broker::start(&[]);
    let mut backend = Backend::connect(&broker);
    let mut ws = join(&broker, &mut backend, "u", "r");
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "join_room",
            json!({"client_id": "u"}),
            "join_room: missing params.room_id",
        ),
        (
            "join_room",
            json!({"room_id": "r"}),
            "join_room: missing params.client_id or params.connection_id",
        ),
        (
            "join_room",
            json!({"room_id": "r", "client_id": "u", "connection_id": "x"}),
            "not both",
        ),
        (
            "join_room",
            json!({"room_id": 5, "client_id": "u"}),
            "join_room: params.room_id must be a string",
        ),
        (
            "leave_room",
            json!({"room_id": "r", "connection_id": 7}),
            "leave_room: params.connection_id must be a string",
        ),
        (
            "disconnect",
            json!({}),
            "disconnect: missing params.client_id or params.connection_id",
        ),
        (
            "disconnect",
            json!({"client_id": "u", "code": 1002}),
            "disconnect: params.code",
        ),
        (
            "disconnect",
            json!({"client_id": "u", "reason": 5}),
            "disconnect: params.reason must be a string",
        ),
        (
            "set_metadata",
            json!({"client_id": "u", "metadata": [1]}),
            "set_metadata: params.metadata",
        ),
        (
            "presence",
            json!({"room_id": null}),
            "presence: missing params.room_id",
        ),
        (
            "presence_stats",
            json!({}),
            "presence_stats: missing params.room_id",
        ),
        (
            "message_to_room",
            json!({"room_id": "r", "message": "m", "exclude": "x"}),
            "message_to_room: params.exclude",
        ),
        (
            "message_to_room",
            json!({"room_id": "r", "message": "m", "ack": "yes"}),
            "message_to_room: params.ack must be a boolean",
        ),
        (
            "message_to_connection",
            json!({"message": "m"}),
            "message_to_connection: missing params.conn_id",
        ),
        (
            "message_to_connection",
            json!({"conn_id": "u", "connection_id": "x", "message": "m"}),
            "not both",
        ),
        (
            "broadcast",
            json!({"message": "m", "ack": 1}),
            "broadcast: params.ack must be a boolean",
        ),
    ];
    for (action, params, want) in cases {
        let error = backend.refused(action, params.clone());
        assert!(
            error.contains(want),
            "{action} {params}: got {error:?}, want {want:?}"
        );
    }
    // Nothing reached the client, which is still open and served.
    backend.send_to_room("r", "after");
    assert_eq!(recv_text(&mut ws), "after");
    expect_next_request(&broker, &mut backend, "/ws/next");
}
