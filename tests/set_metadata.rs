//! `set_metadata` (protocol v1.1): later events of the target's
//! connections carry the new metadata, by client_id (every tab) or by
//! connection_id (one tab); metadata must be a JSON object.

mod common;

use common::*;
use serde_json::json;

#[test]
fn later_events_carry_the_new_metadata() {
    let broker = Broker::start(&[]);
    let mut backend = Backend::connect(&broker);
    let params = json!({"client_id": "u", "room_id": "r", "metadata": {"v": 1}});
    let mut tab1 = accept(&broker, &mut backend, "/ws/r", params.clone());
    let mut tab2 = accept(&broker, &mut backend, "/ws/r", params);
    let big = "1234567890123456789012345678901234567890";
    let n = backend.acked(
        "set_metadata",
        json!({"client_id": "u", "metadata": {"v": 2, "nested": {"list": [1, "two", null]}}}),
    );
    assert_eq!(n, 2);
    send_text(&mut tab1.ws, "a");
    let event = backend.expect("new_message");
    assert_eq!(
        event["params"]["context"]["metadata"],
        json!({"v": 2, "nested": {"list": [1, "two", null]}})
    );
    assert_eq!(event["params"]["context"]["rooms"], json!(["r"]));

    let n = backend.acked(
        "set_metadata",
        json!({"connection_id": tab2.context["connection_id"], "metadata": {"name": big}}),
    );
    assert_eq!(n, 1);
    // One at a time: the order of two sockets' messages is not promised.
    send_text(&mut tab2.ws, "b");
    let e2 = backend.expect("new_message");
    send_text(&mut tab1.ws, "c");
    let e1 = backend.expect("new_message");
    assert_eq!(e2["params"]["context"]["metadata"], json!({"name": big}));
    assert_eq!(e1["params"]["context"]["metadata"]["v"], 2);
    // The context stays whole after the change: the other fields as before.
    assert_eq!(e2["params"]["context"]["client_id"], "u");
    assert_eq!(
        e2["params"]["context"]["connection_id"],
        tab2.context["connection_id"]
    );
    drop(tab2);
    let gone = backend.expect("disconnected");
    assert_eq!(gone["params"]["context"]["metadata"], json!({"name": big}));

    let error = backend.refused("set_metadata", json!({"client_id": "u", "metadata": "x"}));
    assert!(
        error.contains("params.metadata must be a JSON object"),
        "{error}"
    );
    let error = backend.refused("set_metadata", json!({"client_id": "u"}));
    assert!(error.contains("params.metadata"), "{error}");
}
