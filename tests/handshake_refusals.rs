//! Upgrade requests the broker refuses by itself, before any backend hears
//! of them: malformed, not GET, no key, a WebSocket version other than 13
//! (400 with `Sec-WebSocket-Version: 13`), a head over --max-request-size or
//! with more than --max-headers headers (431). Also: frames a client sends
//! right behind its upgrade request are kept for after the 101.

mod common;

use std::io::Write;

use common::*;
use serde_json::json;

fn upgrade_head(method: &str, extra: &str, version: &str, key: bool) -> String {
    let key = if key {
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    } else {
        ""
    };
    format!(
        "{method} /ws/x HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         {key}Sec-WebSocket-Version: {version}\r\n{extra}\r\n"
    )
}

#[test]
fn bad_requests_get_400_and_reach_no_backend() {
    let broker = Broker::start(&[]);
    let mut backend = Backend::connect(&broker);
    let cases = [
        ("garbage", "this is not http\r\n\r\n".to_owned()),
        ("POST", upgrade_head("POST", "", "13", true)),
        ("no key", upgrade_head("GET", "", "13", false)),
        (
            "no upgrade",
            "GET /ws/x HTTP/1.1\r\nHost: h\r\nSec-WebSocket-Key: a2V5\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n"
                .to_owned(),
        ),
    ];
    for (what, head) in &cases {
        let reply = send_head(&broker, head);
        assert_eq!(status_of(&reply), 400, "{what}: {reply:?}");
    }
    let reply = send_head(&broker, &upgrade_head("GET", "", "8", true));
    assert_eq!(status_of(&reply), 400, "version 8: {reply:?}");
    assert!(
        reply
            .to_ascii_lowercase()
            .contains("sec-websocket-version: 13"),
        "a version refusal names the version spoken: {reply:?}"
    );
    // None of them reached the backend: the next event is a real request.
    let _ok = accept(&broker, &mut backend, "/ws/ok", json!({}));
    assert_eq!(_ok.request["params"]["url"], "/ws/ok");
}

#[test]
fn oversized_heads_get_431() {
    let broker = Broker::start(&["--max-request-size", "1024", "--max-headers", "16"]);
    let _backend = Backend::connect(&broker);
    let big = format!("X-Big: {}\r\n", "b".repeat(2000));
    let reply = send_head(&broker, &upgrade_head("GET", &big, "13", true));
    assert_eq!(status_of(&reply), 431, "large head: {reply:?}");
    let many: String = (0..20).map(|i| format!("X-H{i}: v\r\n")).collect();
    let reply = send_head(&broker, &upgrade_head("GET", &many, "13", true));
    assert_eq!(status_of(&reply), 431, "many headers: {reply:?}");
}

#[test]
fn frames_sent_right_behind_the_request_arrive_after_acceptance() {
    let broker = Broker::start(&[]);
    let mut backend = Backend::connect(&broker);
    let mut stream = raw_connect(broker.ws);
    let mut bytes = upgrade_head("GET", "", "13", true).into_bytes();
    bytes.extend(masked(TEXT, b"early one"));
    bytes.extend(masked(TEXT, b"early two"));
    stream.write_all(&bytes).unwrap();
    let request = backend.expect("connection_request");
    backend.respond(&request, json!({"accepted": true, "client_id": "eager"}));
    let head = read_http_head(&mut stream);
    assert_eq!(status_of(&head), 101, "{head}");
    assert!(
        head.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        "wrong accept key: {head}"
    );
    backend.expect("new_connection");
    for want in ["early one", "early two"] {
        let event = backend.expect("new_message");
        assert_eq!(event["params"]["message"], want);
        assert_eq!(event["params"]["context"]["client_id"], "eager");
    }
}
