//! A rejected connection request gets HTTP 403 before any upgrade: no 101,
//! the connection closes, and the backend hears nothing more of it.

mod common;

use common::*;
use serde_json::json;

#[test]
fn rejection_is_403_and_never_101() {
    let broker = Broker::start(&[]);
    let mut backend = Backend::connect(&broker);
    let mut stream = raw_upgrade_request(&broker, "/ws/private");
    let request = backend.expect("connection_request");
    backend.respond(&request, json!({"accepted": false}));
    expect_refused_before_upgrade(&mut stream, 403);

    // No new_connection and no disconnected for the rejected client: the
    // next event is the request of the next client.
    expect_next_request(&broker, &mut backend, "/ws/next");
}

#[test]
fn websocket_client_sees_403() {
    let broker = Broker::start(&[]);
    let mut backend = Backend::connect(&broker);
    let upgrade = start_upgrade(&broker, "/ws/private", &[]);
    let request = backend.expect("connection_request");
    // What a 1.0.0 client answers when the application's handler raises.
    backend.respond(&request, json!({"accepted": false}));
    assert_eq!(upgrade.refused_status(), 403);
}
