//! Connections to the backend port that have not authenticated (with
//! --backend-token) are bounded: a first line may be 4 KiB at most (a
//! longer one is refused and closed at once, so ten such connections
//! cannot make the broker buffer megabytes), and at most
//! --max-pending-backends wait to authenticate; more are refused with an
//! error line. Measured as the broker's peak RSS and descriptors.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;

use common::*;
use serde_json::Value;

#[test]
fn a_long_first_line_is_refused_at_4_kib() {
    let broker = Broker::start(&["--backend-token", "t", "--log-level", "info"]);
    let baseline = broker.rss_kib();
    let chunk = vec![b'a'; 64 * 1024];
    let mut refused = 0;
    for _ in 0..10 {
        let mut stream = raw_connect(broker.backend);
        // 2 MiB without a newline, unless the broker closes first.
        for _ in 0..32 {
            if stream.write_all(&chunk).is_err() {
                break;
            }
        }
        // The broker answers and closes with our bytes unread: the read
        // may end in a reset after the answer.
        let mut reply = Vec::new();
        let _ = stream.read_to_end(&mut reply);
        let reply = String::from_utf8_lossy(&reply).into_owned();
        let line: Value = serde_json::from_str(reply.lines().next().unwrap_or("{}"))
            .unwrap_or_else(|e| panic!("not a JSON error line ({e}): {reply:?}"));
        assert!(
            line["params"]["error"]
                .as_str()
                .unwrap()
                .contains("auth line is too long"),
            "{line}"
        );
        refused += 1;
    }
    assert_eq!(refused, 10);
    let peak = broker.peak_rss_kib();
    assert!(
        peak <= baseline + 2 * 1024,
        "peak RSS {peak} KiB, baseline {baseline} KiB: more than 2 MiB above"
    );
}

#[test]
fn at_most_max_pending_backends_wait_to_authenticate() {
    let broker = Broker::start(&[
        "--backend-token",
        "t",
        "--max-pending-backends",
        "4",
        "--connect-timeout",
        "30",
    ]);
    let fds = broker.open_fds();
    let waiting: Vec<TcpStream> = (0..4).map(|_| raw_connect(broker.backend)).collect();
    broker.wait_open_fds(fds + 4);
    let mut fifth = raw_connect(broker.backend);
    let mut reply = String::new();
    fifth.read_to_string(&mut reply).unwrap();
    assert!(
        reply.contains("too many backends waiting to authenticate (see --max-pending-backends)"),
        "{reply:?}"
    );
    assert_eq!(broker.open_fds(), fds + 4);
    // One authenticates: a place is free again.
    let mut first = waiting.into_iter().next().unwrap();
    first
        .write_all(b"{\"action\":\"auth\",\"params\":{\"token\":\"t\"}}\n")
        .unwrap();
    broker.wait_log(&["backend", "connected (1 connected)"]);
    let sixth = Backend::connect_with_token(&broker, "t");
    drop(sixth);
}
