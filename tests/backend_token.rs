//! With --backend-token (or PYSTRANDS_BACKEND_TOKEN), a backend's first line
//! must be {"action":"auth","params":{"token":...}} with that token; any
//! other first line gets an `error` line and the connection is closed
//! before the backend sees a single event or can command anything.

mod common;

use common::*;
use serde_json::{json, Value};

const TOKEN: &str = "s3cret-token";

fn expect_refusal(backend: &mut Backend) {
    let line = backend.recv();
    assert_eq!(line["action"], "error", "got {line}");
    assert!(
        line["params"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("auth")),
        "the error does not say what is missing: {line}"
    );
    backend.expect_closed();
}

#[test]
fn the_right_token_makes_a_working_backend() {
    let broker = Broker::start(&["--backend-token", TOKEN]);
    let mut backend = Backend::connect_with_token(&broker, TOKEN);
    let mut ws = join(&broker, &mut backend, "c", "room");
    backend.send_to_room("room", "authenticated");
    assert_eq!(recv_text(&mut ws), "authenticated");
}

#[test]
fn the_token_can_come_from_the_environment() {
    let broker = Broker::start_with_env(&[], &[("PYSTRANDS_BACKEND_TOKEN", TOKEN)]);
    let mut wrong = Backend::connect_only(&broker);
    wrong.send(&json!({"action": "auth", "params": {"token": "nope"}}));
    expect_refusal(&mut wrong);
    let mut backend = Backend::connect_with_token(&broker, TOKEN);
    join(&broker, &mut backend, "c", "room");
}

#[test]
fn a_wrong_token_is_refused_and_closed() {
    let broker = Broker::start(&["--backend-token", TOKEN]);
    for token in [
        json!("s3cret-toke"),
        json!("s3cret-token "),
        json!(""),
        json!(42),
        Value::Null,
    ] {
        let mut backend = Backend::connect_only(&broker);
        backend.send(&json!({"action": "auth", "request_id": "a", "params": {"token": token}}));
        expect_refusal(&mut backend);
    }
    // None of them became a backend: an upgrade finds none.
    let upgrade = start_upgrade(&broker, "/ws/room", &[]);
    assert_eq!(upgrade.refused_status(), 503);
}

#[test]
fn a_command_before_auth_is_refused_and_not_carried_out() {
    let broker = Broker::start(&["--backend-token", TOKEN]);
    let mut good = Backend::connect_with_token(&broker, TOKEN);
    let mut ws = join(&broker, &mut good, "c", "room");
    let mut intruder = Backend::connect_only(&broker);
    intruder.send(&to_room("room", "injected"));
    expect_refusal(&mut intruder);
    good.send_to_room("room", "legit");
    assert_eq!(
        recv_text(&mut ws),
        "legit",
        "the intruder's command was carried out"
    );
}

#[test]
fn a_backend_that_has_not_authenticated_gets_no_events() {
    let broker = Broker::start(&["--backend-token", TOKEN]);
    let mut silent = Backend::connect_only(&broker);
    broker.wait_log(&[&format!("backend {}", silent.local), "auth"]);
    // The only backend has not authenticated: the request is not sent to it.
    let upgrade = start_upgrade(&broker, "/ws/room", &[]);
    assert_eq!(upgrade.refused_status(), 503);
    assert!(
        silent
            .recv_within(std::time::Duration::from_millis(100))
            .is_none(),
        "an unauthenticated backend got an event"
    );
}

/// A backend that connects and says nothing is told why and closed after
/// --connect-timeout, so a missing token shows up on the backend's side
/// instead of a connection that looks healthy while clients get 503.
#[test]
fn a_silent_backend_is_refused_after_the_connect_timeout() {
    let broker = Broker::start(&["--backend-token", TOKEN, "--connect-timeout", "0.3"]);
    let mut silent = Backend::connect_only(&broker);
    expect_refusal(&mut silent);
    broker.wait_log(&["WARN", "no auth line within --connect-timeout"]);
}
