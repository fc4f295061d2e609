//! With no backend connected, an upgrade gets HTTP 503 at once (the
//! original broker refused too; it must never hang or upgrade).

mod common;

use common::*;

#[test]
fn no_backend_gives_503() {
    let broker = Broker::start(&[]);
    let mut stream = raw_upgrade_request(&broker, "/ws/room");
    expect_refused_before_upgrade(&mut stream, 503);
}

#[test]
fn no_backend_after_the_last_one_left_gives_503() {
    let broker = Broker::start(&[]);
    Backend::connect(&broker).disconnect_and_wait(&broker);
    let upgrade = start_upgrade(&broker, "/ws/room", &[]);
    assert_eq!(upgrade.refused_status(), 503);
}
