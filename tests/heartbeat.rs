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
    for _ in 0..3 {
        expect_heartbeat(&mut a);
    }
    // Three more beats at 0.2 s take about 0.6 s: not a burst, not seconds.
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(500), "too fast: {took:?}");
    assert!(took < Duration::from_secs(3), "too slow: {took:?}");
    for _ in 0..4 {
        expect_heartbeat(&mut b);
    }
}
