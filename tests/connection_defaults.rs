//! Defaults of an accepted client and the shape of `connection_request`:
//! no client_id -> a fresh UUID v4, no room_id -> the request path, no
//! metadata -> {}; headers in canonical MIME form with list values, `url`
//! the path without its query string, `remote_addr` the peer's ip:port.

mod common;

use common::*;
use serde_json::{json, Value};

fn is_uuid_v4(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && [8, 13, 18, 23].iter().all(|&i| b[i] == b'-')
        && b.iter()
            .enumerate()
            .filter(|(i, _)| ![8, 13, 18, 23].contains(i))
            .all(|(_, c)| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        && b[14] == b'4'
        && matches!(b[19], b'8' | b'9' | b'a' | b'b')
}

#[test]
fn an_empty_answer_gets_uuid_path_and_empty_metadata() {
    let broker = Broker::start(&[]);
    let mut backend = Backend::connect(&broker);
    let first = accept(&broker, &mut backend, "/ws/room1?token=abc", json!({}));
    let context = first.context.as_object().expect("context is an object");
    assert_eq!(
        context.len(),
        5,
        "context has the three v1 fields, connection_id and rooms: {context:?}"
    );
    assert_eq!(
        context["rooms"],
        json!(["/ws/room1"]),
        "rooms: the assigned room"
    );
    assert!(context["connection_id"].is_string(), "{context:?}");
    let id = context["client_id"]
        .as_str()
        .expect("client_id is a string");
    assert!(is_uuid_v4(id), "client_id {id:?} is not a UUID v4");
    assert_eq!(
        context["room_id"], "/ws/room1",
        "room_id defaults to the path"
    );
    assert_eq!(context["metadata"], json!({}), "metadata defaults to {{}}");

    // null fields are "absent" too, and every client gets its own id.
    let second = accept(
        &broker,
        &mut backend,
        "/ws/room1",
        json!({"client_id": null, "room_id": null, "metadata": null}),
    );
    let id2 = second.context["client_id"].as_str().unwrap();
    assert!(is_uuid_v4(id2), "client_id {id2:?} is not a UUID v4");
    assert_ne!(id, id2, "two clients got the same generated id");
    assert_eq!(second.context["room_id"], "/ws/room1");
    assert_eq!(second.context["metadata"], json!({}));

    // The default room is a real room: both clients are in it.
    let (mut a, mut b) = (first.ws, second.ws);
    backend.send_to_room("/ws/room1", "both");
    assert_eq!(recv_text(&mut a), "both");
    assert_eq!(recv_text(&mut b), "both");
}

#[test]
fn connection_request_carries_canonical_headers_url_and_peer() {
    let broker = Broker::start(&[]);
    let mut backend = Backend::connect(&broker);
    let upgrade = start_upgrade(
        &broker,
        "/ws/chat/general?token=abc&x=1",
        &[
            ("x-USER", "alice"),
            ("x-multi", "one"),
            ("X-MULTI", "two"),
            ("authorization", "Bearer t0k"),
        ],
    );
    let local = upgrade.local;
    let request = backend.expect("connection_request");
    let params = &request["params"];
    assert!(
        request["request_id"]
            .as_str()
            .is_some_and(|s| !s.is_empty()),
        "request_id must be a non-empty string: {request}"
    );
    assert_eq!(
        params["url"], "/ws/chat/general",
        "url is the path without query"
    );
    assert_eq!(params["remote_addr"], local.to_string());
    let headers = params["headers"].as_object().expect("headers is an object");
    let h = |name: &str| headers.get(name).cloned().unwrap_or(Value::Null);
    assert_eq!(h("X-User"), json!(["alice"]), "headers: {headers:?}");
    assert_eq!(h("X-Multi"), json!(["one", "two"]), "headers: {headers:?}");
    assert_eq!(h("Authorization"), json!(["Bearer t0k"]));
    assert_eq!(h("Upgrade"), json!(["websocket"]));
    assert_eq!(h("Sec-Websocket-Version"), json!(["13"]));
    assert_eq!(h("Host"), json!([broker.ws.to_string()]));
    let key = h("Sec-Websocket-Key");
    assert!(
        key.as_array()
            .is_some_and(|v| v.len() == 1 && v[0].is_string()),
        "Sec-Websocket-Key must be a one-value list: {headers:?}"
    );
    for name in headers.keys() {
        let canonical: String = name
            .split('-')
            .map(|part| {
                let mut c = part.chars();
                c.next().map_or_else(String::new, |f| {
                    f.to_ascii_uppercase().to_string() + &c.as_str().to_ascii_lowercase()
                })
            })
            .collect::<Vec<_>>()
            .join("-");
        assert_eq!(name, &canonical, "header name not in canonical MIME form");
        assert!(
            headers[name]
                .as_array()
                .is_some_and(|v| v.iter().all(Value::is_string)),
            "header {name} is not a list of strings"
        );
    }
    let client = upgrade.accept(&mut backend, &request, json!({}));
    assert_eq!(client.context["room_id"], "/ws/chat/general");
}
