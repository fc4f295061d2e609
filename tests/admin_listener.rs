//! The admin listener: `/health` answers 200 while the broker serves and
//! 503 with a one-line reason when no backend has been connected for
//! --connect-timeout, when a bound is being enforced (a backend behind),
//! and while draining; `/metrics` reports in the Prometheus text format,
//! with figures that follow what happened; `/stats` the same as JSON;
//! other paths and methods are refused, and the listener holds no memory
//! for requests that never end. `--admin-port 0` turns it off.

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// The value of the sample `name` (with its labels, as written) in a
/// Prometheus text exposition.
fn sample(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix(name)
                .and_then(|rest| rest.strip_prefix(' '))
                .map(|v| v.trim().parse::<f64>().unwrap())
        })
        .unwrap_or_else(|| panic!("no sample {name} in:\n{metrics}"))
}

/// Polls `/health` until `pred` holds for its status and body (bounded).
fn wait_health(broker: &Broker, what: &str, pred: impl Fn(u16, &str) -> bool) -> String {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let (status, body) = broker.admin_get("/health");
        if pred(status, &body) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "/health never {what}: last {status} {body:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn health_follows_backends_bounds_and_draining() {
    let mut broker = Broker::start_with_admin(&["--connect-timeout", "1"]);
    // No backend for --connect-timeout: unhealthy, and it says why.
    let why = wait_health(&broker, "reported no backend", |s, b| {
        s == 503 && b.contains("no backend connected")
    });
    assert_eq!(why.lines().count(), 1, "{why:?}");
    let mut backend = Backend::connect(&broker);
    assert_eq!(broker.admin_get("/health"), (200, "ok\n".to_owned()));
    let _ws = join(&broker, &mut backend, "u", "r");
    // Draining: 503 while clients finish their close handshake.
    broker.signal(libc::SIGTERM);
    wait_health(&broker, "reported draining", |s, b| {
        s == 503 && b.contains("shutting down")
    });
    broker.wait_exit(Duration::from_secs(10));
}

#[test]
fn health_reports_a_backend_behind() {
    let broker = Broker::start_with_admin(&["--max-backend-buffer", "65536"]);
    let mut backend = Backend::connect_gated(&broker, 65536);
    let mut ws = join(&broker, &mut backend, "u", "r");
    backend.set_reading(false);
    let payload = "x".repeat(8192);
    let deadline = Instant::now() + TIMEOUT;
    loop {
        send_text(&mut ws, &payload);
        let (status, body) = broker.admin_get("/health");
        if status == 503 {
            assert!(body.contains("--max-backend-buffer"), "{body}");
            break;
        }
        assert!(Instant::now() < deadline, "never unhealthy: {body}");
    }
    // Reading again, the backend catches up (the kernel's buffers drain
    // first, through a small window: allow more than one TIMEOUT).
    backend.set_reading(true);
    let deadline = Instant::now() + 6 * TIMEOUT;
    loop {
        while backend.recv_within(Duration::from_millis(10)).is_some() {}
        if broker.admin_get("/health").0 == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "/health never recovered");
    }
}

#[test]
fn metrics_and_stats_follow_what_happened() {
    let broker = Broker::start_with_admin(&[]);
    let mut backend = Backend::connect(&broker);
    let mut a = join(&broker, &mut backend, "a", "r");
    let mut b = join(&broker, &mut backend, "b", "r");
    send_text(&mut a, "hello");
    backend.expect("new_message");
    backend.send_to_room("r", "to both");
    assert_eq!(recv_text(&mut a), "to both");
    assert_eq!(recv_text(&mut b), "to both");
    let refused = start_upgrade(&broker, "/ws/x", &[]);
    let request = backend.expect("connection_request");
    backend.respond(&request, serde_json::json!({"accepted": false}));
    // The 403 is written in the turn that counts the rejection.
    assert_eq!(refused.refused_status(), 403);

    let (status, metrics) = broker.admin_get("/metrics");
    assert_eq!(status, 200);
    assert_eq!(
        sample(&metrics, "pystrands_connections{state=\"open\"}"),
        2.0
    );
    assert_eq!(sample(&metrics, "pystrands_rooms"), 1.0);
    assert_eq!(sample(&metrics, "pystrands_backends{kind=\"events\"}"), 1.0);
    assert_eq!(
        sample(&metrics, "pystrands_upgrades_total{outcome=\"accepted\"}"),
        2.0
    );
    assert_eq!(
        sample(&metrics, "pystrands_upgrades_total{outcome=\"rejected\"}"),
        1.0
    );
    assert_eq!(
        sample(&metrics, "pystrands_client_messages_received_total"),
        1.0
    );
    assert_eq!(
        sample(&metrics, "pystrands_client_received_bytes_total"),
        5.0
    );
    assert_eq!(sample(&metrics, "pystrands_deliveries_total"), 2.0);
    assert!(sample(&metrics, "pystrands_process_resident_memory_bytes") > 1e6);
    assert!(sample(&metrics, "pystrands_process_open_fds") >= 5.0);
    assert!(sample(&metrics, "pystrands_turn_duration_seconds_count") > 0.0);
    assert_eq!(
        sample(
            &metrics,
            "pystrands_turn_duration_seconds_bucket{le=\"+Inf\"}"
        ),
        sample(&metrics, "pystrands_turn_duration_seconds_count")
    );
    assert!(metrics.contains("# TYPE pystrands_slow_consumers_total counter"));

    let (status, stats) = broker.admin_get("/stats");
    assert_eq!(status, 200);
    let stats: Value = serde_json::from_str(&stats).expect("/stats is JSON");
    assert_eq!(stats["healthy"], true);
    assert_eq!(stats["gauges"]["connections_open"], 2);
    assert_eq!(stats["counters"]["upgrades_rejected"], 1);
    assert!(stats["process"]["open_fds"].as_u64().unwrap() >= 5);
}

#[test]
fn other_requests_are_refused_and_cost_nothing() {
    let broker = Broker::start_with_admin(&["--connect-timeout", "1"]);
    let admin = broker.admin.unwrap();
    assert_eq!(broker.admin_get("/nope").0, 404);
    let mut post = raw_connect(admin);
    post.write_all(b"POST /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let reply = String::from_utf8_lossy(&read_to_eof(&mut post)).into_owned();
    assert_eq!(status_of(&reply), 405, "{reply}");
    // A head that never ends is cut at 8 KiB...
    let mut long = raw_connect(admin);
    let _ = long.write_all(format!("GET /{} HTTP/1.1\r\n", "a".repeat(9000)).as_bytes());
    let reply = String::from_utf8_lossy(&read_to_eof(&mut long)).into_owned();
    assert_eq!(status_of(&reply), 431, "{reply}");
    // ...and a silent connection is closed after --connect-timeout.
    let fds = broker.open_fds();
    let mut silent = raw_connect(admin);
    broker.wait_open_fds(fds + 1);
    assert!(read_to_eof(&mut silent).is_empty());
    broker.wait_open_fds(fds);
}

#[test]
fn admin_port_zero_turns_it_off() {
    let broker = Broker::start(&[]);
    assert!(broker.admin.is_none());
    assert!(!broker.has_log(&["admin="]));
}
