//! A backend process killed with SIGKILL while a client streams to it,
//! then a new backend: the broker keeps serving, its clients stay
//! connected, the events produced while no backend was connected reach
//! the new backend in order (up to --queue-size), and the ones dropped
//! beyond it are counted and logged at warn.
//!
//! The killed backend is this test binary re-executed (see
//! [`child_backend_process`]): a backend inside the test process could not
//! be SIGKILLed.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::thread;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// Set in the environment of the re-executed test binary: the backend
/// address it must connect to.
const CHILD_ENV: &str = "PYSTRANDS_TEST_CHILD_BACKEND";
/// Events the killed backend must have received before it is killed.
const BEFORE_KILL: usize = 50;
/// Messages the stream goes on sending after the broker saw the backend go.
const AFTER_KILL: usize = 50;

/// Not a test of its own: the entry point of the child backend process.
/// Run normally (without [`CHILD_ENV`]) it returns at once. Re-executed
/// with it, it connects to the broker, accepts every connection request
/// (client id = last path segment, room "r") and prints every line it
/// receives to stdout as `event <line>`, until it is killed.
#[test]
fn child_backend_process() {
    let Ok(addr) = std::env::var(CHILD_ENV) else {
        return;
    };
    let stream = TcpStream::connect(&addr).expect("child: connect to the broker");
    let mut writer = stream.try_clone().unwrap();
    let mut out = std::io::stdout().lock();
    // libtest has printed "test child_backend_process ... " without a
    // newline: start a line of our own.
    writeln!(out, "\nlocal {}", stream.local_addr().unwrap()).unwrap();
    out.flush().unwrap();
    for line in BufReader::new(stream).lines() {
        let Ok(line) = line else { return };
        let event: Value = serde_json::from_str(&line).expect("child: a JSON line");
        if event["action"] == "connection_request" {
            let url = event["params"]["url"].as_str().unwrap_or("");
            let id = url.rsplit('/').next().unwrap_or("");
            let answer = json!({
                "action": "response",
                "request_id": event["request_id"],
                "params": {"accepted": true, "client_id": id, "room_id": "r"},
            });
            writeln!(writer, "{answer}").unwrap();
        }
        writeln!(out, "event {line}").unwrap();
        out.flush().unwrap();
    }
}

/// The child backend process and what it printed.
struct ChildBackend {
    child: Child,
    events: Receiver<Value>,
}

impl ChildBackend {
    fn spawn(broker: &Broker) -> ChildBackend {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "child_backend_process",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, broker.backend.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("re-execute the test binary as a backend");
        let stdout = child.stdout.take().unwrap();
        let (local_tx, local_rx) = mpsc::channel();
        let (tx, events) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if let Some(local) = line.strip_prefix("local ") {
                    let _ = local_tx.send(local.to_string());
                } else if let Some(event) = line.strip_prefix("event ") {
                    let _ = tx.send(serde_json::from_str(event).unwrap());
                }
            }
        });
        let local = local_rx
            .recv_timeout(TIMEOUT)
            .expect("the child backend did not connect");
        broker.wait_backend_connected(&local);
        ChildBackend { child, events }
    }

    /// Joins `id` (the child accepts it) and waits for the child to see
    /// the new connection.
    fn join(&self, broker: &Broker, id: &str) -> Ws {
        let ws = start_upgrade(broker, &format!("/ws/{id}"), &[])
            .finish()
            .expect("the child backend accepts");
        loop {
            let event = self
                .events
                .recv_timeout(TIMEOUT)
                .expect("the child saw no new_connection");
            if event["action"] == "new_connection" {
                assert_eq!(event["params"]["context"]["client_id"], id);
                return ws;
            }
        }
    }

    /// Waits until the child has received `count` messages; returns the
    /// index of the last one it saw then.
    fn wait_messages(&self, count: usize) -> usize {
        let mut seen = 0;
        let mut last = 0;
        while seen < count {
            let event = self
                .events
                .recv_timeout(TIMEOUT)
                .expect("the child backend stopped receiving");
            if event["action"] == "new_message" {
                last = index_in(&event, "p1-");
                seen += 1;
            }
        }
        last
    }
}

impl Drop for ChildBackend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `i` from a `new_message` event whose message is `{prefix}{i:06}`.
fn index_in(event: &Value, prefix: &str) -> usize {
    let message = event["params"]["message"].as_str().unwrap_or("");
    message
        .strip_prefix(prefix)
        .and_then(|i| i.parse().ok())
        .unwrap_or_else(|| panic!("expected a {prefix} message, got {event}"))
}

/// Client x's load: `p1-000000`, `p1-000001`, ... about one a millisecond
/// until stopped (bounded: the test stops it well before the last).
fn start_stream(x: Ws) -> Flood {
    Flood::start(x, 100_000, Duration::from_millis(1), |i| {
        format!("p1-{i:06}")
    })
}

/// The scenario up to the new backend: clients x (streaming) and y (idle)
/// on a child backend, which is SIGKILLed once it got [`BEFORE_KILL`]
/// messages; the stream goes on for [`AFTER_KILL`] messages after the
/// broker noticed, then stops. Returns the clients, the last message index
/// the killed backend saw, and how many messages the stream sent.
fn kill_midstream(broker: &Broker) -> (Ws, Ws, usize, usize) {
    let mut doomed = ChildBackend::spawn(broker);
    let x = doomed.join(broker, "x");
    let y = doomed.join(broker, "y");
    let stream = start_stream(x);
    let seen_last = doomed.wait_messages(BEFORE_KILL);
    doomed.child.kill().expect("SIGKILL the backend");
    doomed.child.wait().unwrap();
    broker.wait_log(&["INFO", "backend", "disconnected"]);
    stream.wait_sent(stream.sent() + AFTER_KILL);
    let (mut x, sent) = stream.stop();
    // What x sent has been handled, and x is still open.
    barrier(&mut x, BrokerPings::Fail);
    let mut y = y;
    barrier(&mut y, BrokerPings::Fail);
    // The killed backend's last events were still in flight: they are
    // lost with it, at most what was sent between its last event and the
    // broker noticing.
    (x, y, seen_last, sent)
}

/// The new backend gets the queued events, then live ones; it can reach
/// the clients the killed backend had accepted.
fn still_served(broker: &Broker, next: &mut Backend, x: &mut Ws, y: &mut Ws) {
    send_text(x, "live");
    let event = next.expect("new_message");
    assert_eq!(
        event["params"]["message"], "live",
        "more events than expected were kept"
    );
    assert_eq!(event["params"]["context"]["client_id"], "x");
    next.send_to_room("r", "from the new backend");
    assert_eq!(recv_text(x), "from the new backend");
    assert_eq!(recv_text(y), "from the new backend");
    // And it accepts newcomers.
    join(broker, next, "z", "r");
}

#[test]
fn events_while_no_backend_reach_the_next_one_in_order() {
    let broker = Broker::start(&["--queue-size", "1000"]);
    let (mut x, mut y, seen_last, sent) = kill_midstream(&broker);
    // Exact phase two: no backend connected, 30 more.
    for i in 0..30 {
        send_text(&mut x, &format!("p2-{i:06}"));
    }
    barrier(&mut x, BrokerPings::Fail);

    let mut next = Backend::connect(&broker);
    // The queue: the tail of the stream, from where the broker noticed the
    // backend was gone to its end, without a gap, then all of phase two.
    let first = next.expect("new_message");
    let from = index_in(&first, "p1-");
    assert!(
        from > seen_last,
        "the new backend got p1-{from}, which the killed one already had"
    );
    assert!(
        from + AFTER_KILL <= sent,
        "only {} of the stream's events were queued, at least {AFTER_KILL} were \
         sent after the broker saw the backend go",
        sent - from
    );
    for i in from + 1..sent {
        let event = next.expect("new_message");
        assert_eq!(index_in(&event, "p1-"), i, "queued events out of order");
    }
    for i in 0..30 {
        let event = next.expect("new_message");
        assert_eq!(index_in(&event, "p2-"), i, "queued events out of order");
    }
    still_served(&broker, &mut next, &mut x, &mut y);
    assert!(!broker.has_log(&["dropped"]), "events were dropped");
}

#[test]
fn beyond_queue_size_the_oldest_are_dropped_counted_and_logged() {
    const QUEUE: usize = 20;
    // A short --close-timeout: at shutdown the clients here do not answer
    // the broker's close.
    let broker = Broker::start(&["--queue-size", &QUEUE.to_string(), "--close-timeout", "0.3"]);
    let (mut x, mut y, _, _) = kill_midstream(&broker);
    // Phase two alone overflows the queue: it keeps the last 20 of it.
    for i in 0..100 {
        send_text(&mut x, &format!("p2-{i:06}"));
    }
    barrier(&mut x, BrokerPings::Fail);

    // The new backend's "connected" log line comes after every drop
    // warning: once it is read, they all are.
    let mut next = Backend::connect(&broker);
    let warned: Vec<String> = broker
        .log_lines()
        .into_iter()
        .filter(|l| l.contains("WARN") && l.contains("dropped so far"))
        .collect();
    // Drops are logged at once, then at most once a second, and the rest
    // when a backend is back: a few lines, never one per event.
    assert!(
        !warned.is_empty() && warned.len() <= 4,
        "{} drop warnings for one outage: {warned:?}",
        warned.len()
    );
    assert!(warned[0].contains("oldest event dropped"), "{}", warned[0]);
    // The last warning carries the total.
    let last = warned.last().unwrap();
    let dropped: usize = last
        .rsplit_once('(')
        .and_then(|(_, tail)| tail.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in {last}"));
    assert!(
        dropped >= 100 - QUEUE,
        "{dropped} drops reported, at least {} happened",
        100 - QUEUE
    );

    for i in 100 - QUEUE..100 {
        let event = next.expect("new_message");
        assert_eq!(
            index_in(&event, "p2-"),
            i,
            "the queue kept the wrong events"
        );
    }
    still_served(&broker, &mut next, &mut x, &mut y);

    // The counter at shutdown agrees.
    let mut broker = broker;
    broker.signal(libc::SIGTERM);
    broker.wait_exit(TIMEOUT);
    let stop = broker.wait_log(&["stopped:"]);
    assert!(
        stop.contains(&format!("dropped events {dropped}")),
        "{dropped} drops logged, the stop line says: {stop}"
    );
}
