//! With no backend connected, an upgrade gets HTTP 503 at once (the
//! original broker refused too; it must never hang or upgrade).

mod common;

use common::*;

#[test]
fn no_backend_gives_503() {
    let broker = Broker::start(&[]);
    let mut stream = raw_upgrade_request(&broker, "/ws/room");
    let reply = read_to_eof(&mut stream);
    let reply = String::from_utf8_lossy(&reply);
    assert_eq!(status_of(&reply), 503, "reply: {reply:?}");
    assert!(!reply.contains("101"), "a 101 was sent: {reply:?}");
}

#[test]
fn no_backend_after_the_last_one_left_gives_503() {
    let broker = Broker::start(&[]);
    let backend = Backend::connect(&broker);
    let local = backend.local;
    backend.disconnect();
    broker.wait_log(&[&format!("backend {local} disconnected")]);
    let upgrade = start_upgrade(&broker, "/ws/room", &[]);
    assert_eq!(upgrade.refused_status(), 503);
}
