//! What a client's send queue may cost is bounded in memory, not only in
//! frame bytes (--max-outbound-bytes counts each queued message's bytes
//! plus its bookkeeping): clients that send pings and never read, or room
//! members that never read while tiny messages stream, cannot take the
//! broker's memory past about twice (clients x --max-outbound-bytes)
//! above its baseline, and the memory goes back once they are gone.
//! Measured as the broker's peak and current RSS from /proc.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::thread;
use std::time::Duration;

use common::*;
use serde_json::json;

/// --max-outbound-bytes in these tests.
const LIMIT_KIB: u64 = 1024;

/// Members that never read would also never answer a ping: the ping
/// interval is out of the way, so only the queue bound can close them.
fn start() -> Broker {
    Broker::start(&[
        "--ping-interval",
        "3600",
        "--max-outbound-bytes",
        &(LIMIT_KIB * 1024).to_string(),
        "--log-level",
        "info",
    ])
}

/// `n` raw clients in room "r" that will never read (small receive
/// buffers, so the kernel holds little for them).
fn silent_members(broker: &Broker, backend: &mut Backend, n: usize) -> Vec<TcpStream> {
    (0..n)
        .map(|i| raw_join_small(broker, backend, &format!("m{i}"), "r", 4096))
        .collect()
}

#[test]
fn pings_from_clients_that_never_read_cost_nothing() {
    let broker = start();
    let mut backend = Backend::connect(&broker);
    let clients = silent_members(&broker, &mut backend, 10);
    let baseline = broker.rss_kib();
    // 1 MB of empty pings each: answered one by one, 170,000 pongs a
    // client would be 8 MB of queue entries.
    let burst: Vec<u8> = masked(PING, b"").repeat(170_000);
    let senders: Vec<_> = clients
        .iter()
        .map(|c| {
            let mut c = c.try_clone().unwrap();
            let burst = burst.clone();
            thread::spawn(move || {
                c.write_all(&burst).expect("the broker reads the pings");
                c.write_all(&masked(TEXT, b"done")).unwrap();
            })
        })
        .collect();
    for s in senders {
        s.join().unwrap();
    }
    // Every ping was read once each client's "done" reached the backend.
    for _ in 0..10 {
        assert_eq!(backend.expect("new_message")["params"]["message"], "done");
    }
    let peak = broker.peak_rss_kib();
    assert!(
        peak <= baseline + 2 * 10 * LIMIT_KIB,
        "peak RSS {peak} KiB, baseline {baseline} KiB: more than 2 x 10 x {LIMIT_KIB} KiB above"
    );
    drop(clients);
    broker.wait_rss_at_most(baseline + baseline / 10, Duration::from_secs(5));
}

#[test]
fn tiny_room_messages_to_members_that_never_read_stay_bounded() {
    let broker = start();
    let mut backend = Backend::connect(&broker);
    let members = silent_members(&broker, &mut backend, 2);
    let baseline = broker.rss_kib();
    // 1,800,000 one-byte messages. The kernel holds about 4 MB for each
    // member (the broker's socket send buffer on loopback); behind that,
    // with a byte bound alone, each member's queue could hold 350,000
    // three-byte frames at 16 bytes of queue slot apiece (and the frames).
    let line = to_room("r", "x").to_string();
    let batch = format!("{line}\n").repeat(100_000);
    for _ in 0..18 {
        backend.send_raw(batch.trim_end());
    }
    // The ack comes after every line before it was carried out.
    let reached = backend.acked("message_to_room", json!({"room_id": "r", "message": "end"}));
    assert_eq!(
        reached, 0,
        "every silent member was closed as a slow consumer"
    );
    broker.wait_log(&["slow consumer"]);
    let peak = broker.peak_rss_kib();
    assert!(
        peak <= baseline + 2 * 2 * LIMIT_KIB,
        "peak RSS {peak} KiB, baseline {baseline} KiB: more than 2 x 2 x {LIMIT_KIB} KiB above"
    );
    drop(members);
    broker.wait_rss_at_most(baseline + baseline / 10, Duration::from_secs(5));
}
