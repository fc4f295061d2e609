//! Every connected backend gets `{"action":"heartbeat","request_id":
//! "heartbeat","params":{}}` every --heartbeat-interval (15 s by default).

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

fn expect_heartbeat(backend: &mut Backend) {
    let line = backend.recv_line();
    let v: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(
        v,
        json!({"action": "heartbeat", "request_id": "heartbeat", "params": {}})
    );
}

#[test]
fn backends_get_heartbeats_at_the_interval() {
    let broker = Broker::start(&["--heartbeat-interval", "0.2"]);
    let mut a = Backend::connect(&broker);
    let mut b = Backend::connect(&broker);
    expect_heartbeat(&mut a);
    let started = Instant::now();
    for _ in 0..5 {
        expect_heartbeat(&mut a);
    }
    // Five more beats at 0.2 s take about 1 s: not a burst, not seconds.
    // The clock starts when the test reads the first beat, which a busy
    // machine may delay while later beats already wait unread: the lower
    // bound leaves 0.4 s for that.
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(600), "too fast: {took:?}");
    assert!(took < Duration::from_secs(4), "too slow: {took:?}");
    for _ in 0..4 {
        expect_heartbeat(&mut b);
    }
}
