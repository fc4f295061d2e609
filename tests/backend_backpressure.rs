//! A backend that stops reading: once --max-backend-buffer bytes of events
//! wait for it, the broker stops reading from the clients whose events go
//! to it, so their sends block (TCP backpressure end to end) and the
//! broker's memory stays bounded; a client of another backend is served
//! meanwhile; when the backend reads again every event arrives, in order,
//! none lost, and the paused client is still connected.

mod common;

use std::thread;
use std::time::Duration;

use common::*;
use serde_json::json;

const MAX_BACKEND_BUFFER: &str = "65536";
/// Size of each client message.
const SIZE: usize = 1024;
/// Give up if the writer's sends have not blocked after this many messages
/// (64 MiB): with the small socket buffers set here they block after about
/// 5 MiB.
const MAX_MESSAGES: usize = 64 * 1024;
/// The writer counts as blocked when it made no progress for this long.
const STALLED_FOR: Duration = Duration::from_millis(500);
/// The bound on waiting for the writer to block.
const STALL_DEADLINE: Duration = Duration::from_secs(30);
/// The socket buffers of the backends (receive) and of the writer (send):
/// small, so the kernel holds little of what a side that stops reading
/// leaves unread.
const SOCKET_BUFFER: usize = 64 * 1024;
/// What the broker's resident memory may grow by while its backend is
/// stalled: --max-backend-buffer (64 KiB), plus what one client read can
/// add past it (a 64 KiB read becomes about 80 KiB of events), plus read
/// buffers and allocator slack (measured: 200-260 KiB in all). A broker
/// that kept reading would hold what the writer sent before its sends
/// blocked, about 5 MiB here.
const RSS_GROWTH_BOUND_KIB: u64 = 2 * 1024;

/// Joins `client_id` into `room` through `backends[want]`. Requests go
/// round-robin over the backends: one that lands on another backend is
/// rejected and the upgrade tried again.
fn join_via(
    broker: &Broker,
    backends: &mut [&mut Backend],
    want: usize,
    client_id: &str,
    room: &str,
) -> Ws {
    for _ in 0..2 * backends.len() {
        let upgrade = start_upgrade(broker, &format!("/ws/{room}"), &[]);
        let (who, request) = recv_any(backends);
        assert_eq!(request["action"], "connection_request", "got {request}");
        if who != want {
            backends[who].respond(&request, json!({"accepted": false}));
            assert_eq!(upgrade.refused_status(), 403);
            continue;
        }
        return upgrade
            .accept(
                backends[who],
                &request,
                json!({"client_id": client_id, "room_id": room}),
            )
            .ws;
    }
    panic!("the connection request never reached backend {want}");
}

fn payload(i: usize) -> String {
    numbered(i, SIZE)
}

/// The writer's load: numbered messages as fast as its socket takes them,
/// with a small send buffer (once the broker stops reading, the writer
/// blocks soon) and no write timeout (a blocked send is what these tests
/// wait for).
fn start_flood(ws: Ws) -> Flood {
    set_socket_buffer(ws.get_ref(), libc::SO_SNDBUF, SOCKET_BUFFER);
    ws.get_ref().set_write_timeout(None).unwrap();
    Flood::start(ws, MAX_MESSAGES, Duration::ZERO, payload)
}

/// Waits (bounded by [`STALL_DEADLINE`]) until the writer's sends have
/// made no progress for [`STALLED_FOR`]; returns how many went through.
fn wait_blocked(flood: &Flood) -> usize {
    flood.wait_blocked(STALLED_FOR, STALL_DEADLINE)
}

/// The backend must get `new_message` 0..count from `client_id`, in order.
fn expect_all_in_order(backend: &mut Backend, client_id: &str, count: usize) {
    for i in 0..count {
        let event = backend.recv_within(TIMEOUT).unwrap_or_else(|| {
            panic!("the backend got {i} of {count} events, then nothing for {TIMEOUT:?}")
        });
        assert_eq!(
            event["action"], "new_message",
            "event {i} of {count}: {event}"
        );
        assert_eq!(event["params"]["context"]["client_id"], client_id);
        let message = event["params"]["message"].as_str().unwrap();
        assert_eq!(
            &message[..9],
            &payload(i)[..9],
            "event {i} of {count} out of order (or one was lost)"
        );
        assert_eq!(message.len(), SIZE, "event {i} was cut");
    }
}

#[test]
fn a_stalled_backend_pauses_its_clients_and_loses_nothing() {
    let broker = Broker::start(&["--max-backend-buffer", MAX_BACKEND_BUFFER]);
    let mut stalled = Backend::connect_gated(&broker, SOCKET_BUFFER);
    let writer = join_via(&broker, &mut [&mut stalled], 0, "writer", "w");
    let mut other = Backend::connect_gated(&broker, SOCKET_BUFFER);
    let mut bystander = join_via(
        &broker,
        &mut [&mut stalled, &mut other],
        1,
        "bystander",
        "b",
    );
    let rss_before = broker.rss_kib();

    stalled.set_reading(false);
    let flood = start_flood(writer);
    let blocked_at = wait_blocked(&flood);

    // Bounded memory: what the writer pushed sits in its own socket (and
    // the kernel's), not in the broker.
    let growth = broker.rss_kib().saturating_sub(rss_before);
    assert!(
        growth < RSS_GROWTH_BOUND_KIB,
        "the broker's RSS grew by {growth} KiB (bound {RSS_GROWTH_BOUND_KIB} KiB) \
         while {blocked_at} messages were sent to a stalled backend"
    );

    // The other backend's client is served meanwhile, both ways.
    send_text(&mut bystander, "hello");
    let event = other.expect("new_message");
    assert_eq!(event["params"]["message"], "hello");
    assert_eq!(event["params"]["context"]["client_id"], "bystander");
    other.send(&to_room("b", "hi there"));
    assert_eq!(recv_text(&mut bystander), "hi there");

    // The backend reads again: the writer moves on, and every event it
    // sent arrives in order.
    stalled.set_reading(true);
    let (mut writer, sent) = flood.stop();
    assert!(sent >= blocked_at);
    expect_all_in_order(&mut stalled, "writer", sent);
    // Still open, and everything it sent was handled.
    barrier(&mut writer, BrokerPings::Skip);
    send_text(&mut writer, "after");
    let event = stalled.expect("new_message");
    assert_eq!(event["params"]["message"], "after");
}

/// While its backend is stalled a paused client's pongs sit unread in its
/// socket: the broker stopped reading, so it must not take the silence
/// for a dead client and close it at --ping-timeout.
#[test]
fn a_paused_client_is_not_closed_for_pongs_the_broker_did_not_read() {
    let broker = Broker::start(&[
        "--max-backend-buffer",
        MAX_BACKEND_BUFFER,
        "--ping-interval",
        "0.2",
        "--ping-timeout",
        "0.5",
    ]);
    let mut stalled = Backend::connect_gated(&broker, SOCKET_BUFFER);
    let writer = join_via(&broker, &mut [&mut stalled], 0, "writer", "w");
    stalled.set_reading(false);
    let flood = start_flood(writer);
    wait_blocked(&flood);
    // Over two ping timeouts pass while the client is paused.
    thread::sleep(Duration::from_millis(1200));
    stalled.set_reading(true);
    let (mut writer, sent) = flood.stop();
    // At once, before the client has been silent for a ping timeout (the
    // flood thread never reads, so nothing answered the broker's pings):
    // still open, with everything it sent before read by the broker.
    barrier(&mut writer, BrokerPings::Skip);
    assert!(
        !broker.has_log(&["no answer to a ping"]),
        "the paused client was closed for not answering pings"
    );
    // And everything it sent was handled.
    expect_all_in_order(&mut stalled, "writer", sent);
}

/// README ("Running in production"): slow backends are logged at warn.
#[test]
fn a_stalled_backend_is_logged_at_warn() {
    let broker = Broker::start(&["--max-backend-buffer", MAX_BACKEND_BUFFER]);
    let mut stalled = Backend::connect_gated(&broker, SOCKET_BUFFER);
    let writer = join_via(&broker, &mut [&mut stalled], 0, "writer", "w");
    stalled.set_reading(false);
    let flood = start_flood(writer);
    wait_blocked(&flood);
    let local = stalled.local.to_string();
    broker.wait_log(&["WARN", &local]);
    stalled.set_reading(true);
    let (_writer, sent) = flood.stop();
    expect_all_in_order(&mut stalled, "writer", sent);
}
