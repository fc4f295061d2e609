//! Cluster mode when Redis fails: restarted mid-stream, local delivery
//! never stops and cross-broker delivery resumes within seconds (backends
//! are told once the bus is gone and once it is back, /health says so);
//! stopped (SIGSTOP), the stall is found by the probe; and a broker reads
//! its subscriber link fast enough not to be disconnected by Redis's
//! output-buffer limit in a fan-out burst.

mod common;

use std::time::{Duration, Instant};

use common::*;

/// The next error line on `backend` (events skipped).
fn next_error(backend: &mut Backend) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let e = backend
            .recv_within(left)
            .expect("an error line about the bus");
        if e["action"] == "error" {
            return e["params"]["error"].as_str().unwrap_or("").to_owned();
        }
    }
}

#[test]
fn a_restarted_redis_stops_nothing_local_and_the_bus_comes_back() {
    let mut redis = Redis::start();
    let a = redis.broker("a", &[]);
    let b = redis.broker("b", &[]);
    let mut backend_a = Backend::connect(&a);
    let mut backend_b = Backend::connect(&b);
    let mut on_a = join(&a, &mut backend_a, "u1", "r");
    let mut on_b = join(&b, &mut backend_b, "u2", "r");
    redis.wait_subscribers("pystrands:room:r", 2);
    let baseline = a.rss_kib();

    backend_a.send_to_room("r", "before");
    assert_eq!(recv_text(&mut on_a), "before");
    assert_eq!(recv_text(&mut on_b), "before");

    redis.kill();
    assert_eq!(next_error(&mut backend_a), "cluster bus unavailable");
    assert_eq!(next_error(&mut backend_b), "cluster bus unavailable");
    let (status, body) = a.admin_get("/health");
    assert_eq!(status, 503);
    assert!(body.contains("cluster bus"), "{body}");
    // Local delivery goes on while Redis is away.
    for i in 0..100 {
        backend_a.send_to_room("r", &format!("during {i}"));
    }
    for i in 0..100 {
        assert_eq!(recv_text(&mut on_a), format!("during {i}"));
    }

    redis.restart();
    assert_eq!(next_error(&mut backend_a), "cluster bus restored");
    assert_eq!(next_error(&mut backend_b), "cluster bus restored");
    redis.wait_subscribers("pystrands:room:r", 2);
    backend_a.send_to_room("r", "after");
    assert_eq!(recv_text(&mut on_a), "after");
    // B got nothing while the bus was down (dropped, counted), then this.
    assert_eq!(recv_text(&mut on_b), "after");
    assert_eq!(a.admin_get("/health").0, 200);
    let (_, metrics) = a.admin_get("/metrics");
    assert!(
        metrics.contains("pystrands_cluster_dropped_total 100"),
        "{metrics}"
    );
    assert!(
        a.peak_rss_kib() < baseline + 16 * 1024,
        "memory grew during the outage"
    );
}

#[test]
fn a_stalled_redis_is_found_by_the_probe() {
    let redis = Redis::start();
    let a = redis.broker("a", &["--redis-timeout", "1"]);
    let mut backend = Backend::connect(&a);
    redis.signal(libc::SIGSTOP);
    a.wait_log(&["no answer to a probe within --redis-timeout"]);
    assert_eq!(next_error(&mut backend), "cluster bus unavailable");
    assert_eq!(a.admin_get("/health").0, 503);
    redis.signal(libc::SIGCONT);
    assert_eq!(next_error(&mut backend), "cluster bus restored");
    assert_eq!(a.admin_get("/health").0, 200);
}

#[test]
fn a_fan_out_burst_does_not_overflow_redis_output_buffer() {
    let redis = Redis::start_with(&["--client-output-buffer-limit", "pubsub 512kb 128kb 5"]);
    let a = redis.broker("a", &[]);
    let b = redis.broker("b", &[]);
    let mut backend_a = Backend::connect(&a);
    let mut backend_b = Backend::connect(&b);
    let mut on_b = join(&b, &mut backend_b, "u", "burst");
    redis.wait_subscribers("pystrands:room:burst", 1);
    // 20,000 messages of 100 bytes: 2 MB through B's subscriber link, four
    // times the hard limit Redis keeps for it.
    let text = "x".repeat(100);
    let lines: Vec<serde_json::Value> = (0..20_000).map(|_| to_room("burst", &text)).collect();
    backend_a.send_all(lines);
    for _ in 0..20_000 {
        assert_eq!(recv_text(&mut on_b).len(), 100);
    }
    assert!(
        !b.has_log(&["subscriber link", "down"]),
        "Redis disconnected B's subscriber link"
    );
}
