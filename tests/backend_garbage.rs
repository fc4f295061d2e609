//! Garbage from a backend (not JSON, not an object, a missing field, an
//! unknown action) is answered with an `error` line naming the problem and
//! carrying the line's request_id (null when it has none), logged at warn
//! at most once a second with a running count; the backend stays connected
//! and keeps working.

mod common;

use common::*;
use serde_json::{json, Value};

/// The next line must be an error reply: exactly action, request_id and
/// params.error. Returns the error text.
fn expect_error(backend: &mut Backend, request_id: Value) -> String {
    let line = backend.recv();
    let obj = line.as_object().expect("an object");
    assert_eq!(obj.len(), 3, "unexpected fields in {line}");
    assert_eq!(line["action"], "error", "got {line}");
    assert_eq!(line["request_id"], request_id, "got {line}");
    line["params"]["error"]
        .as_str()
        .unwrap_or_else(|| panic!("params.error is not a string: {line}"))
        .to_owned()
}

#[test]
fn bad_lines_get_error_replies_and_the_backend_keeps_working() {
    let broker = Broker::start(&[]);
    let mut backend = Backend::connect(&broker);
    let mut client = join(&broker, &mut backend, "c1", "lobby");

    // Every bad line in one write: the broker refuses them all in one turn,
    // well within the second in which only the first refusal is logged.
    let bad = [
        "this is not json".to_owned(),
        r#"{"action":"broadcast","request_id":"r1""#.to_owned(),
        r#"["action","broadcast"]"#.to_owned(),
        json!({"request_id": "r2", "params": {"message": "x"}}).to_string(),
        json!({"action": "message_to_room", "request_id": "r3", "params": {"room_id": "lobby"}})
            .to_string(),
        json!({"action": "message_to_connection", "request_id": "r4", "params": {"message": "m"}})
            .to_string(),
        json!({"action": "broadcast", "request_id": "r5", "params": {"message": 42}}).to_string(),
        json!({"action": "fly_to_the_moon", "request_id": "r6", "params": {}}).to_string(),
    ];
    backend.send_raw(&bad.join("\n"));

    let e = expect_error(&mut backend, Value::Null);
    assert!(
        e.to_lowercase().contains("json"),
        "does not name the problem: {e}"
    );

    let e = expect_error(&mut backend, Value::Null);
    assert!(
        e.to_lowercase().contains("json"),
        "does not name the problem: {e}"
    );

    let e = expect_error(&mut backend, Value::Null);
    assert!(e.contains("object"), "does not name the problem: {e}");

    let e = expect_error(&mut backend, json!("r2"));
    assert!(e.contains("action"), "does not name the missing field: {e}");

    let e = expect_error(&mut backend, json!("r3"));
    assert!(
        e.contains("message"),
        "does not name the missing field: {e}"
    );

    let e = expect_error(&mut backend, json!("r4"));
    assert!(
        e.contains("conn_id"),
        "does not name the missing field: {e}"
    );

    let e = expect_error(&mut backend, json!("r5"));
    assert!(e.contains("message"), "does not name the bad field: {e}");

    let e = expect_error(&mut backend, json!("r6"));
    assert!(
        e.contains("fly_to_the_moon"),
        "does not name the action: {e}"
    );

    // The first refusal is logged at once; the next ones in the same
    // second only counted.
    broker.wait_log(&["WARN", "line refused: invalid JSON", "1 in all"]);
    assert!(!broker.has_log(&["fly_to_the_moon"]));

    // Still connected, still obeyed, still told about clients.
    backend.send_to_room("lobby", "still working");
    assert_eq!(recv_text(&mut client), "still working");
    send_text(&mut client, "and listening");
    let event = backend.expect("new_message");
    assert_eq!(event["params"]["message"], "and listening");
}

#[test]
fn garbage_between_good_lines_does_not_disturb_them() {
    let broker = Broker::start(&[]);
    let mut backend = Backend::connect(&broker);
    let mut client = join(&broker, &mut backend, "c1", "lobby");
    // One write: good, bad, good; the bad line must not eat its neighbours.
    let good1 = to_room("lobby", "one").to_string();
    let good2 = to_room("lobby", "two").to_string();
    backend.send_raw(&format!("{good1}\n{{oops\n{good2}"));
    assert_eq!(recv_text(&mut client), "one");
    assert_eq!(recv_text(&mut client), "two");
    let e = expect_error(&mut backend, Value::Null);
    assert!(e.to_lowercase().contains("json"), "{e}");
}

#[test]
fn refused_lines_are_logged_at_most_once_a_second_with_a_count() {
    let broker = Broker::start(&[]);
    let mut backend = Backend::connect(&broker);
    let lines: Vec<Value> = (0..200)
        .map(|i| json!({"action": "nope", "request_id": format!("g{i}")}))
        .collect();
    backend.send_all(lines);
    for i in 0..200 {
        assert_eq!(backend.expect("error")["request_id"], format!("g{i}"));
    }
    let warned = |broker: &Broker| {
        broker
            .log_lines()
            .iter()
            .filter(|l| l.contains("line refused"))
            .count()
    };
    assert!(warned(&broker) <= 2, "{} warnings", warned(&broker));
    // A second later the next refusal is logged with the ones not logged.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    backend.send(&json!({"action": "nope", "request_id": "last"}));
    backend.expect("error");
    let line = broker.wait_log(&["WARN", "line refused", "201 in all"]);
    assert!(
        line.contains("more refused since the last warning"),
        "{line}"
    );
}
