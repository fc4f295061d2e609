//! A backend that stops reading: once --max-backend-buffer bytes of events
//! wait for it, the broker stops reading from the clients whose events go
//! to it, so their sends block (TCP backpressure end to end) and the
//! broker's memory stays bounded; a client of another backend is served
//! meanwhile; when the backend reads again every event arrives, in order,
//! none lost, and the paused client is still connected.

mod common;

use std::io::{BufRead, BufReader, ErrorKind};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use tungstenite::Message;

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
/// What the broker's resident memory may grow by while its backend is
/// stalled: --max-backend-buffer (64 KiB), plus what one client read can
/// add past it (a 64 KiB read becomes about 80 KiB of events), plus read
/// buffers and allocator slack (measured: 200-260 KiB in all). A broker
/// that kept reading would hold what the writer sent before its sends
/// blocked, about 5 MiB here.
const RSS_GROWTH_BOUND_KIB: u64 = 2 * 1024;

/// A backend whose reading can be switched off: while the gate is closed
/// nothing reads its socket, so the broker's writes to it pile up in the
/// kernel and then in the broker.
struct GatedBackend {
    writer: TcpStream,
    lines: Receiver<String>,
    gate: Arc<(Mutex<bool>, Condvar)>,
    local: SocketAddr,
}

impl GatedBackend {
    fn connect(broker: &Broker) -> GatedBackend {
        let stream = TcpStream::connect(broker.backend).expect("connect a backend");
        // A small receive buffer, so the kernel holds little of what the
        // broker writes while we do not read.
        set_buffer(&stream, libc::SO_RCVBUF, 64 * 1024);
        let local = stream.local_addr().unwrap();
        let read_half = stream.try_clone().unwrap();
        read_half
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let gate = Arc::new((Mutex::new(true), Condvar::new()));
        let (tx, rx) = mpsc::channel();
        let thread_gate = Arc::clone(&gate);
        thread::spawn(move || {
            let mut reader = BufReader::new(read_half);
            let mut line = Vec::new();
            loop {
                {
                    let (open, changed) = &*thread_gate;
                    let mut open = open.lock().unwrap();
                    while !*open {
                        open = changed.wait(open).unwrap();
                    }
                }
                // Bytes read before a timeout stay in `line` (read_until
                // keeps them), so a line split over two reads is whole.
                match reader.read_until(b'\n', &mut line) {
                    Ok(0) => return,
                    Ok(_) if line.ends_with(b"\n") => {
                        line.pop();
                        let text = String::from_utf8(std::mem::take(&mut line))
                            .expect("the broker writes UTF-8");
                        if tx.send(text).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                    Err(_) => return,
                }
            }
        });
        let backend = GatedBackend {
            writer: stream,
            lines: rx,
            gate,
            local,
        };
        broker.wait_log(&[&format!("backend {local} connected (")]);
        backend
    }

    fn set_reading(&self, reading: bool) {
        let (open, changed) = &*self.gate;
        *open.lock().unwrap() = reading;
        changed.notify_all();
    }

    /// Next event within `limit`, heartbeats skipped.
    fn recv_within(&mut self, limit: Duration) -> Option<Value> {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let v: Value = serde_json::from_str(&line)
                        .unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"));
                    if v["action"] != "heartbeat" {
                        return Some(v);
                    }
                }
                Err(RecvTimeoutError::Timeout) => return None,
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("the broker closed backend {}", self.local)
                }
            }
        }
    }

    fn expect(&mut self, action: &str) -> Value {
        let v = self
            .recv_within(TIMEOUT)
            .unwrap_or_else(|| panic!("backend {}: no {action} within {TIMEOUT:?}", self.local));
        assert_eq!(v["action"], action, "expected {action}, got {v}");
        v
    }

    fn send(&mut self, v: &Value) {
        use std::io::Write;
        let mut bytes = serde_json::to_vec(v).unwrap();
        bytes.push(b'\n');
        self.writer.write_all(&bytes).expect("write to the broker");
    }

    fn respond(&mut self, request: &Value, params: Value) {
        self.send(&json!({
            "action": "response",
            "request_id": request["request_id"],
            "params": params,
        }));
    }
}

fn set_buffer(stream: &TcpStream, option: libc::c_int, bytes: libc::c_int) {
    // SAFETY: setsockopt on a socket we own, with a c_int option value.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            (&bytes as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "setsockopt failed");
}

/// Joins `client_id` into `room` through `backends[want]`. Requests go
/// round-robin over the backends: one that lands on another backend is
/// rejected and the upgrade tried again.
fn join_via(
    broker: &Broker,
    backends: &mut [&mut GatedBackend],
    want: usize,
    client_id: &str,
    room: &str,
) -> Ws {
    for _ in 0..2 * backends.len() {
        let upgrade = start_upgrade(broker, &format!("/ws/{room}"), &[]);
        let deadline = Instant::now() + TIMEOUT;
        let (who, request) = 'found: loop {
            for (i, b) in backends.iter_mut().enumerate() {
                if let Some(v) = b.recv_within(Duration::from_millis(5)) {
                    break 'found (i, v);
                }
            }
            assert!(Instant::now() < deadline, "no connection_request");
        };
        assert_eq!(request["action"], "connection_request", "got {request}");
        if who != want {
            backends[who].respond(&request, json!({"accepted": false}));
            assert_eq!(upgrade.refused_status(), 403);
            continue;
        }
        backends[who].respond(
            &request,
            json!({"accepted": true, "client_id": client_id, "room_id": room}),
        );
        let ws = upgrade.finish().expect("the upgrade succeeds");
        backends[who].expect("new_connection");
        return ws;
    }
    panic!("the connection request never reached backend {want}");
}

fn payload(i: usize) -> String {
    let head = format!("{i:08}:");
    head.clone() + &"x".repeat(SIZE - head.len())
}

/// A client sending numbered messages as fast as its socket takes them, on
/// its own thread, until told to stop.
struct Flood {
    sent: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    done: Receiver<(Ws, usize)>,
}

impl Flood {
    fn start(mut ws: Ws) -> Flood {
        // A small send buffer: the kernel holds little once the broker
        // stops reading, so the writer blocks soon.
        set_buffer(ws.get_ref(), libc::SO_SNDBUF, 64 * 1024);
        // No write timeout: a blocked send is what this test waits for.
        ws.get_ref().set_write_timeout(None).unwrap();
        let sent = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, done) = mpsc::channel();
        let (thread_sent, thread_stop) = (Arc::clone(&sent), Arc::clone(&stop));
        thread::spawn(move || {
            let mut i = 0;
            while i < MAX_MESSAGES && !thread_stop.load(Ordering::SeqCst) {
                if ws.send(Message::text(payload(i))).is_err() {
                    break;
                }
                i += 1;
                thread_sent.store(i, Ordering::SeqCst);
            }
            let _ = tx.send((ws, i));
        });
        Flood { sent, stop, done }
    }

    /// Waits (bounded) until the sends have made no progress for
    /// [`STALLED_FOR`]; returns how many went through.
    fn wait_blocked(&self) -> usize {
        let started = Instant::now();
        let mut last = self.sent.load(Ordering::SeqCst);
        let mut since = Instant::now();
        loop {
            thread::sleep(Duration::from_millis(50));
            let now = self.sent.load(Ordering::SeqCst);
            assert!(
                now < MAX_MESSAGES,
                "{now} messages ({} MiB) went through and the sends never blocked: \
                 the broker kept reading for a backend that does not",
                (now * SIZE) >> 20
            );
            if now != last {
                last = now;
                since = Instant::now();
            } else if since.elapsed() >= STALLED_FOR {
                return now;
            }
            assert!(
                started.elapsed() < STALL_DEADLINE,
                "the writer was still sending after {STALL_DEADLINE:?} ({now} messages)"
            );
        }
    }

    /// Stops the flood (it must be moving again) and returns the client
    /// and how many messages it sent.
    fn stop(self) -> (Ws, usize) {
        self.stop.store(true, Ordering::SeqCst);
        self.done
            .recv_timeout(TIMEOUT)
            .expect("the writer's sends stayed blocked after the backend read again")
    }
}

/// The backend must get `new_message` 0..count from `client_id`, in order.
fn expect_all_in_order(backend: &mut GatedBackend, client_id: &str, count: usize) {
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

/// Ping/pong round trip on a client that may also get the broker's own
/// pings: everything it sent before was processed, and it is open.
fn still_open(ws: &mut Ws) {
    ws.get_ref().set_read_timeout(Some(TIMEOUT)).unwrap();
    ws.send(Message::Ping(b"still open?".to_vec().into()))
        .expect("send a ping");
    loop {
        match ws.read() {
            Ok(Message::Pong(p)) if p.as_ref() == b"still open?" => return,
            Ok(Message::Ping(_)) | Ok(Message::Pong(_)) => continue,
            Ok(other) => panic!("the client got {other:?} instead of its pong"),
            Err(e) => panic!("the client was closed: {e}"),
        }
    }
}

#[test]
fn a_stalled_backend_pauses_its_clients_and_loses_nothing() {
    let broker = Broker::start(&["--max-backend-buffer", MAX_BACKEND_BUFFER]);
    let mut stalled = GatedBackend::connect(&broker);
    let writer = join_via(&broker, &mut [&mut stalled], 0, "writer", "w");
    let mut other = GatedBackend::connect(&broker);
    let mut bystander = join_via(
        &broker,
        &mut [&mut stalled, &mut other],
        1,
        "bystander",
        "b",
    );
    let rss_before = broker.rss_kib();

    stalled.set_reading(false);
    let flood = Flood::start(writer);
    let blocked_at = flood.wait_blocked();

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
    still_open(&mut writer);
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
        "0.2",
    ]);
    let mut stalled = GatedBackend::connect(&broker);
    let writer = join_via(&broker, &mut [&mut stalled], 0, "writer", "w");
    stalled.set_reading(false);
    let flood = Flood::start(writer);
    flood.wait_blocked();
    // Several ping periods pass while the client is paused (the flood has
    // already been blocked for STALLED_FOR, over two periods).
    thread::sleep(Duration::from_millis(600));
    stalled.set_reading(true);
    let (mut writer, sent) = flood.stop();
    assert!(
        !broker.has_log(&["no answer to a ping"]),
        "the paused client was closed for not answering pings"
    );
    expect_all_in_order(&mut stalled, "writer", sent);
    still_open(&mut writer);
}

/// README ("Running in production"): slow backends are logged at warn.
#[test]
fn a_stalled_backend_is_logged_at_warn() {
    let broker = Broker::start(&["--max-backend-buffer", MAX_BACKEND_BUFFER]);
    let mut stalled = GatedBackend::connect(&broker);
    let writer = join_via(&broker, &mut [&mut stalled], 0, "writer", "w");
    stalled.set_reading(false);
    let flood = Flood::start(writer);
    flood.wait_blocked();
    let local = stalled.local.to_string();
    broker.wait_log(&["WARN", &local]);
    stalled.set_reading(true);
    let (_writer, sent) = flood.stop();
    expect_all_in_order(&mut stalled, "writer", sent);
}
