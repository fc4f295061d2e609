//! Cluster mode: presence and presence_stats answer for the whole cluster,
//! the same on every broker, and the members of a broker that dies without
//! a word (SIGKILL) vanish within --presence-ttl.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// The presence of `room` as sorted (client_id, metadata, connection count).
fn presence(backend: &mut Backend, room: &str) -> Vec<(String, Value, usize)> {
    let reply = backend.request("presence", json!({"room_id": room}));
    assert_eq!(reply["action"], "presence", "{reply}");
    let mut out: Vec<(String, Value, usize)> = reply["params"]["clients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["client_id"].as_str().unwrap().to_owned(),
                c["metadata"].clone(),
                c["connections"].as_array().unwrap().len(),
            )
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Polls `pred` on the presence of `room` (bounded by `limit`).
fn wait_presence(
    backend: &mut Backend,
    room: &str,
    limit: Duration,
    pred: impl Fn(&[(String, Value, usize)]) -> bool,
) -> Vec<(String, Value, usize)> {
    let deadline = Instant::now() + limit;
    loop {
        let p = presence(backend, room);
        if pred(&p) {
            return p;
        }
        assert!(
            Instant::now() < deadline,
            "presence of {room} never as expected: {p:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn presence_is_cluster_wide_and_a_dead_brokers_members_vanish() {
    let redis = Redis::start();
    let a = redis.broker("a", &["--presence-ttl", "2"]);
    let mut b = redis.broker("b", &["--presence-ttl", "2"]);
    let mut backend_a = Backend::connect(&a);
    let mut backend_b = Backend::connect(&b);
    let _ann = accept(
        &a,
        &mut backend_a,
        "/ws/chat",
        json!({"client_id": "ann", "room_id": "chat", "metadata": {"n": 1}}),
    );
    let _ann2 = accept(
        &b,
        &mut backend_b,
        "/ws/chat",
        json!({"client_id": "ann", "room_id": "chat", "metadata": {"n": 1}}),
    );
    let _bob = accept(
        &b,
        &mut backend_b,
        "/ws/chat",
        json!({"client_id": "bob", "room_id": "chat"}),
    );
    let want = vec![
        ("ann".to_owned(), json!({"n": 1}), 2),
        ("bob".to_owned(), json!({}), 1),
    ];
    let on_a = wait_presence(&mut backend_a, "chat", TIMEOUT, |p| {
        p.len() == 2 && p[0].2 == 2
    });
    assert_eq!(on_a, want);
    assert_eq!(
        presence(&mut backend_b, "chat"),
        want,
        "the same on every broker"
    );
    let stats = backend_a.request("presence_stats", json!({"room_id": "chat"}));
    assert_eq!(
        stats["params"],
        json!({"room_id": "chat", "clients": 2, "connections": 3})
    );

    // B dies without a word: its members vanish within the TTL (2 s).
    b.signal(libc::SIGKILL);
    b.wait_exit(TIMEOUT);
    let left = wait_presence(&mut backend_a, "chat", Duration::from_secs(10), |p| {
        p == [("ann".to_owned(), json!({"n": 1}), 1)]
    });
    assert_eq!(left.len(), 1);
}
