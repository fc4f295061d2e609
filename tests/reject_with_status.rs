//! A rejection with the backend's own status and body (protocol v1.1):
//! `status` 400-499 and `reason` as the plain-text body, before any
//! upgrade; an answer that cannot be used (a status outside 400-499) gets
//! the client HTTP 500 at once and the backend an `error` line naming the
//! field, and the backend stays connected.

mod common;

use common::*;
use serde_json::json;

#[test]
fn a_rejection_carries_the_chosen_status_and_body() {
    let broker = Broker::start(&[]);
    let mut backend = Backend::connect(&broker);
    let mut stream = raw_upgrade_request(&broker, "/ws/r?token=expired");
    let request = backend.expect("connection_request");
    backend.respond(
        &request,
        json!({"accepted": false, "status": 401, "reason": "token expired, sign in again"}),
    );
    let reply = expect_refused_before_upgrade(&mut stream, 401);
    assert!(
        reply.starts_with("HTTP/1.1 401 Unauthorized\r\n"),
        "{reply}"
    );
    assert!(
        reply.ends_with("\r\n\r\ntoken expired, sign in again"),
        "{reply}"
    );

    // Without them: 403 and the default body, as in v1.
    let mut stream = raw_upgrade_request(&broker, "/ws/r");
    let request = backend.expect("connection_request");
    backend.respond(&request, json!({"accepted": false}));
    let reply = expect_refused_before_upgrade(&mut stream, 403);
    assert!(
        reply.contains("connection rejected by the application"),
        "{reply}"
    );
}

#[test]
fn an_unusable_answer_fails_the_client_at_once() {
    let broker = Broker::start(&["--connect-timeout", "30"]);
    let mut backend = Backend::connect(&broker);
    let mut stream = raw_upgrade_request(&broker, "/ws/r");
    let request = backend.expect("connection_request");
    backend.respond(&request, json!({"accepted": false, "status": 302}));
    // Well within the 30 s connect timeout: the answer is refused at once.
    expect_refused_before_upgrade(&mut stream, 500);
    let error = backend.expect("error");
    assert_eq!(error["request_id"], request["request_id"]);
    let text = error["params"]["error"].as_str().unwrap();
    assert!(text.contains("params.status"), "{text}");
    expect_next_request(&broker, &mut backend, "/ws/next");
}

#[test]
fn only_the_backend_that_got_a_request_may_answer_it() {
    let broker = Broker::start(&[]);
    let mut a = Backend::connect(&broker);
    let mut b = Backend::connect(&broker);
    let upgrade = start_upgrade(&broker, "/ws/r", &[]);
    let (who, request) = recv_any(&mut [&mut a, &mut b]);
    let (owner, other) = if who == 0 {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    other.respond(&request, json!({"accepted": false}));
    let error = other.expect("error");
    assert!(
        error["params"]["error"]
            .as_str()
            .unwrap()
            .contains("was not sent to this backend"),
        "{error}"
    );
    // The request still waits for its own backend.
    let client = upgrade.accept(owner, &request, json!({"client_id": "c"}));
    assert_eq!(client.context["client_id"], "c");
}
