//! Query-string auth and subprotocols (protocol v1.1): the raw query string
//! reaches the backend in `connection_request` (`url` stays the path), and
//! a backend may select one of the subprotocols the client offered, which
//! the 101 answer echoes; any other value gets the client HTTP 500 and the
//! backend an `error` line.

mod common;

use std::io::Write;

use common::*;
use serde_json::json;

#[test]
fn the_raw_query_string_reaches_the_backend() {
    let broker = Broker::start(&[]);
    let mut backend = Backend::connect(&broker);
    let mut stream = raw_upgrade_request(&broker, "/ws/room?token=a%20b&x=1&x=2");
    let request = backend.expect("connection_request");
    assert_eq!(request["params"]["url"], "/ws/room");
    assert_eq!(request["params"]["query"], "token=a%20b&x=1&x=2");
    let connection_id = request["params"]["connection_id"]
        .as_str()
        .unwrap()
        .to_owned();
    backend.respond(&request, json!({"accepted": true}));
    let head = read_http_head(&mut stream);
    assert_eq!(status_of(&head), 101, "{head}");
    let event = backend.expect("new_connection");
    assert_eq!(
        event["params"]["context"]["connection_id"],
        connection_id.as_str()
    );

    let _plain = start_upgrade(&broker, "/ws/room", &[]);
    let request = backend.expect("connection_request");
    assert_eq!(request["params"]["query"], "");
}

#[test]
fn a_selected_subprotocol_is_echoed_in_the_101() {
    let broker = Broker::start(&[]);
    let mut backend = Backend::connect(&broker);
    let upgrade = start_upgrade(
        &broker,
        "/ws/r",
        &[("Sec-WebSocket-Protocol", "chat.v1, chat.v2")],
    );
    let request = backend.expect("connection_request");
    assert_eq!(
        request["params"]["headers"]["Sec-Websocket-Protocol"],
        json!(["chat.v1, chat.v2"])
    );
    backend.respond(
        &request,
        json!({"accepted": true, "subprotocol": "chat.v2"}),
    );
    // tungstenite checks the echoed protocol against its offer.
    let mut ws = upgrade.finish().expect("the upgrade succeeds with chat.v2");
    backend.expect("new_connection");
    backend.send_broadcast("hello");
    assert_eq!(recv_text(&mut ws), "hello");
}

#[test]
fn a_subprotocol_the_client_did_not_offer_is_refused() {
    let broker = Broker::start(&[]);
    let mut backend = Backend::connect(&broker);
    let mut stream = raw_connect(broker.ws);
    stream
        .write_all(
            b"GET /ws/r HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
              Sec-WebSocket-Protocol: chat.v1\r\n\r\n",
        )
        .unwrap();
    let request = backend.expect("connection_request");
    backend.respond(&request, json!({"accepted": true, "subprotocol": "mqtt"}));
    expect_refused_before_upgrade(&mut stream, 500);
    let error = backend.expect("error");
    assert_eq!(error["request_id"], request["request_id"]);
    let text = error["params"]["error"].as_str().unwrap();
    assert!(
        text.contains("subprotocol 'mqtt' was not offered"),
        "{text}"
    );
    // The backend stays connected and serves the next client.
    expect_next_request(&broker, &mut backend, "/ws/next");
}
