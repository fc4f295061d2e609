//! A backend that stops reading cannot make the broker buffer without
//! bound: past --max-backend-buffer new upgrades go to another backend or
//! get 503 "every backend is behind", replies to its lines are dropped
//! (counted), and a backend that keeps sending while it does not read is
//! closed with a logged reason. Measured as the broker's peak RSS.

mod common;

use std::io::Write;
use std::time::Duration;

use common::*;

/// --max-backend-buffer in these tests.
const LIMIT_KIB: u64 = 1024;

#[test]
fn upgrades_stop_going_to_a_backend_that_does_not_read() {
    let broker = Broker::start(&[
        "--max-backend-buffer",
        &(LIMIT_KIB * 1024).to_string(),
        "--connect-timeout",
        "30",
        "--log-level",
        "info",
    ]);
    let backend = Backend::connect_gated(&broker, 4096);
    backend.set_reading(false);
    let baseline = broker.rss_kib();
    // Upgrade requests with a 7 KB header: each connection_request line is
    // about 7 KB. 1,500 of them would be 10 MB for the stalled backend.
    let pad = "p".repeat(7000);
    let mut clients = Vec::new();
    let mut refused = 0;
    for i in 0..1500 {
        let mut stream = raw_connect(broker.ws);
        let head = format!(
            "GET /ws/r{i} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             X-Pad: {pad}\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).unwrap();
        clients.push(stream);
        // Every 100th: read what the latest ones got, if anything yet.
        if i % 100 == 99 {
            let last = clients.last_mut().unwrap();
            last.set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            let mut buf = [0u8; 512];
            if let Ok(n) = std::io::Read::read(last, &mut buf) {
                let reply = String::from_utf8_lossy(&buf[..n]);
                if reply.starts_with("HTTP/1.1 503") {
                    assert!(reply.contains("every backend is behind"), "{reply}");
                    refused += 1;
                }
            }
        }
    }
    assert!(
        refused > 0,
        "no upgrade was refused for the stalled backend"
    );
    let peak = broker.peak_rss_kib();
    // The bound on the buffer, twice, plus what 1,500 connections cost.
    let allowed = baseline + 2 * LIMIT_KIB + 1500 * 4;
    assert!(
        peak <= allowed,
        "peak RSS {peak} KiB above {allowed} KiB (baseline {baseline} KiB)"
    );
    drop(clients);
    drop(backend);
}

#[test]
fn a_backend_that_sends_and_never_reads_is_closed() {
    let broker = Broker::start(&[
        "--max-backend-buffer",
        &(LIMIT_KIB * 1024).to_string(),
        "--log-level",
        "info",
    ]);
    let mut backend = Backend::connect_gated(&broker, 4096);
    backend.set_reading(false);
    let baseline = broker.rss_kib();
    // Garbage lines, each answered by an error line the backend never
    // reads: 10 MB of "x\n" would be 5,000,000 error lines.
    let chunk = "x\n".repeat(50_000);
    for _ in 0..100 {
        if backend.try_write(chunk.as_bytes()).is_err() {
            break;
        }
    }
    let line = broker.wait_log(&["WARN", "without reading", "see --max-backend-buffer"]);
    assert!(line.contains(&backend.local.to_string()), "{line}");
    let peak = broker.peak_rss_kib();
    let allowed = baseline + 3 * LIMIT_KIB;
    assert!(
        peak <= allowed,
        "peak RSS {peak} KiB above {allowed} KiB (baseline {baseline} KiB)"
    );
}
