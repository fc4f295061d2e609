//! The queue of events that wait while no backend is connected is bounded
//! in bytes (--queue-bytes) as well as in events (--queue-size): large
//! messages that escape to lines several times their size (control
//! characters become \u00XX) cannot take the broker's memory past the
//! bound; the oldest are dropped (counted, warned) and the next backend
//! gets the newest that fit. Measured as the broker's peak RSS.

mod common;

use std::time::Duration;

use common::*;

const QUEUE_KIB: u64 = 8 * 1024;

#[test]
fn queued_events_stay_within_queue_bytes() {
    let broker = Broker::start(&[
        "--queue-bytes",
        &(QUEUE_KIB * 1024).to_string(),
        "--max-message-size",
        "2097152",
        "--log-level",
        "info",
    ]);
    let mut first = Backend::connect(&broker);
    let mut ws = join(&broker, &mut first, "u", "r");
    first.disconnect_and_wait(&broker);
    let baseline = broker.rss_kib();
    // 12 messages of 1 MiB of \x01: each queued line is about 6 MB, 72 MB
    // for the twelve under --queue-size alone.
    let message = "\u{1}".repeat(1 << 20);
    for _ in 0..11 {
        send_text(&mut ws, &message);
    }
    send_text(&mut ws, &format!("last{message}"));
    barrier(&mut ws, BrokerPings::Skip);
    let peak = broker.peak_rss_kib();
    // The bound twice, plus the client's message being read and escaped.
    let allowed = baseline + 2 * QUEUE_KIB + 4 * 1024;
    assert!(
        peak <= allowed,
        "peak RSS {peak} KiB above {allowed} KiB (baseline {baseline} KiB)"
    );
    broker.wait_log(&["WARN", "--queue-bytes"]);
    // The next backend gets what fit: the newest event.
    let mut backend = Backend::connect(&broker);
    let event = backend.expect("new_message");
    let text = event["params"]["message"].as_str().unwrap();
    assert!(
        text.starts_with("last"),
        "the newest event, got {}",
        &text[..8]
    );
    assert!(backend.recv_within(Duration::from_millis(200)).is_none());
}
