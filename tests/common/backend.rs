//! Raw TCP backends: newline-delimited JSON over a plain socket, each read
//! on a thread of its own so the broker is never blocked by a test that is
//! not reading yet. Every wait is bounded by [`TIMEOUT`] or an explicit
//! limit.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{set_socket_buffer, Broker, TIMEOUT};

/// Whether a gated backend's reader thread may read (see
/// [`Backend::connect_gated`]).
type Gate = Arc<(Mutex<bool>, Condvar)>;

/// A raw TCP backend: newline-delimited JSON, read on its own thread so the
/// broker is never blocked by the test not reading yet.
pub struct Backend {
    writer: TcpStream,
    lines: Receiver<String>,
    /// This backend's own address (as the broker's log names it).
    pub local: SocketAddr,
    reader: Option<JoinHandle<()>>,
    /// Set for a backend made by [`Backend::connect_gated`].
    gate: Option<Gate>,
    /// Events that arrived while [`Backend::request`] waited for a reply,
    /// handed out first by the next reads.
    held: VecDeque<Value>,
    /// The next request id [`Backend::request`] uses.
    next_request: u64,
}

impl Backend {
    /// Connects and waits until the broker has made this backend live (its
    /// "backend <addr> connected (N connected)" log line).
    pub fn connect(broker: &Broker) -> Backend {
        let backend = Backend::connect_only(broker);
        backend.wait_live(broker);
        backend
    }

    /// Connects, presents `token` in an auth line, and waits until live.
    pub fn connect_with_token(broker: &Broker, token: &str) -> Backend {
        let mut backend = Backend::connect_only(broker);
        backend.send(&json!({"action": "auth", "request_id": "auth", "params": {"token": token}}));
        backend.wait_live(broker);
        backend
    }

    /// Connects as a publisher (a first line `auth` with `events: false`,
    /// and `token` when given) and waits for the broker's log line saying
    /// so.
    pub fn connect_publisher(broker: &Broker, token: Option<&str>) -> Backend {
        let mut backend = Backend::connect_only(broker);
        let mut params = json!({"events": false});
        if let Some(token) = token {
            params["token"] = json!(token);
        }
        backend.send(&json!({"action": "auth", "request_id": "auth", "params": params}));
        broker.wait_log(&[&format!("backend {}", backend.local), "publisher"]);
        backend
    }

    /// Connects without waiting for anything.
    pub fn connect_only(broker: &Broker) -> Backend {
        let stream = TcpStream::connect(broker.backend).expect("connect a backend");
        let local = stream.local_addr().unwrap();
        let read_half = stream.try_clone().unwrap();
        let (tx, rx) = mpsc::channel();
        let reader = thread::spawn(move || {
            for line in BufReader::new(read_half).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Backend {
            writer: stream,
            lines: rx,
            local,
            reader: Some(reader),
            gate: None,
            held: VecDeque::new(),
            next_request: 0,
        }
    }

    /// Connects a backend whose reading can be switched off with
    /// [`Backend::set_reading`], and waits until live. While reading is off
    /// nothing reads its socket, so what the broker writes to it piles up
    /// in the kernel (a receive buffer of `receive_buffer` bytes) and then
    /// in the broker. Reading starts on.
    ///
    /// The reader thread notices a change within its 20 ms read timeout; it
    /// ends when the connection does (reading is switched back on first
    /// when the backend is dropped or disconnected).
    pub fn connect_gated(broker: &Broker, receive_buffer: usize) -> Backend {
        let stream = TcpStream::connect(broker.backend).expect("connect a backend");
        set_socket_buffer(&stream, libc::SO_RCVBUF, receive_buffer);
        let local = stream.local_addr().unwrap();
        let read_half = stream.try_clone().unwrap();
        read_half
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let gate: Gate = Arc::new((Mutex::new(true), Condvar::new()));
        let (tx, rx) = mpsc::channel();
        let thread_gate = Arc::clone(&gate);
        let reader = thread::spawn(move || {
            let mut reader = BufReader::new(read_half);
            let mut line = Vec::new();
            loop {
                {
                    let (open, changed) = &*thread_gate;
                    let mut open = open.lock().unwrap_or_else(|e| e.into_inner());
                    while !*open {
                        open = changed.wait(open).unwrap_or_else(|e| e.into_inner());
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
        let backend = Backend {
            writer: stream,
            lines: rx,
            local,
            reader: Some(reader),
            gate: Some(gate),
            held: VecDeque::new(),
            next_request: 0,
        };
        backend.wait_live(broker);
        backend
    }

    /// Switches reading on or off (a backend made by
    /// [`Backend::connect_gated`] only).
    pub fn set_reading(&self, reading: bool) {
        let (open, changed) = &**self
            .gate
            .as_ref()
            .expect("only a gated backend can stop reading");
        *open.lock().unwrap_or_else(|e| e.into_inner()) = reading;
        changed.notify_all();
    }

    /// Waits for the broker's log line saying this backend is live.
    pub fn wait_live(&self, broker: &Broker) {
        broker.wait_backend_connected(&self.local.to_string());
    }

    /// Next line within `limit`, parsed; heartbeats skipped. `None` on
    /// timeout; panics if the broker closed the connection.
    pub fn recv_within(&mut self, limit: Duration) -> Option<Value> {
        if let Some(v) = self.held.pop_front() {
            return Some(v);
        }
        self.recv_fresh_within(limit)
    }

    /// [`Backend::recv_within`] without the held events.
    fn recv_fresh_within(&mut self, limit: Duration) -> Option<Value> {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| {
                        panic!("the broker sent a line that is not JSON ({e}): {line:?}")
                    });
                    if v["action"] == "heartbeat" {
                        continue;
                    }
                    return Some(v);
                }
                Err(RecvTimeoutError::Timeout) => return None,
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("the broker closed the backend connection")
                }
            }
        }
    }

    /// Sends `action` with `params` and a fresh `request_id`, and returns
    /// the broker's reply: the next line carrying that `request_id`.
    /// Events that arrive meanwhile are kept, in order, for later reads.
    pub fn request(&mut self, action: &str, params: Value) -> Value {
        self.request_within(action, params, TIMEOUT)
    }

    /// [`Backend::request`], waiting at most `limit` for the reply (for a
    /// request behind a long stream of lines).
    pub fn request_within(&mut self, action: &str, params: Value, limit: Duration) -> Value {
        self.next_request += 1;
        let id = format!("req-{}", self.next_request);
        self.send(&json!({"action": action, "request_id": id, "params": params}));
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(v) = self.recv_fresh_within(left) else {
                panic!(
                    "backend {}: no reply to {action} within {limit:?}",
                    self.local
                );
            };
            if v["request_id"] == id.as_str() {
                return v;
            }
            self.held.push_back(v);
        }
    }

    /// Sends `action` with `params` and `"ack": true`; returns the number
    /// of connections the broker's `ack` says it reached.
    pub fn acked(&mut self, action: &str, mut params: Value) -> u64 {
        params["ack"] = json!(true);
        let reply = self.request(action, params);
        assert_eq!(reply["action"], "ack", "expected an ack, got {reply}");
        reply["params"]["connections"]
            .as_u64()
            .unwrap_or_else(|| panic!("an ack without a count: {reply}"))
    }

    /// Sends `action` with `params`; the broker must answer with an `error`
    /// line for it, whose text is returned. The backend stays connected.
    pub fn refused(&mut self, action: &str, params: Value) -> String {
        let reply = self.request(action, params);
        assert_eq!(reply["action"], "error", "expected an error, got {reply}");
        reply["params"]["error"]
            .as_str()
            .unwrap_or_else(|| panic!("an error without text: {reply}"))
            .to_owned()
    }

    /// Next raw line, heartbeats included, waiting at most [`TIMEOUT`].
    pub fn recv_line(&mut self) -> String {
        match self.lines.recv_timeout(TIMEOUT) {
            Ok(line) => line,
            Err(RecvTimeoutError::Timeout) => panic!("no line within {TIMEOUT:?}"),
            Err(RecvTimeoutError::Disconnected) => {
                panic!("the broker closed the backend connection")
            }
        }
    }

    /// Next event (heartbeats skipped), waiting at most [`TIMEOUT`].
    pub fn recv(&mut self) -> Value {
        self.recv_within(TIMEOUT)
            .unwrap_or_else(|| panic!("backend {}: no line within {TIMEOUT:?}", self.local))
    }

    /// Next event, which must have `action`.
    pub fn expect(&mut self, action: &str) -> Value {
        let v = self.recv();
        assert_eq!(v["action"], action, "expected a {action} event, got {v}");
        v
    }

    /// Waits (bounded) until the broker closes this backend's connection;
    /// panics if a non-heartbeat line arrives first.
    pub fn expect_closed(&mut self) {
        match self.lines.recv_timeout(TIMEOUT) {
            Err(RecvTimeoutError::Disconnected) => {}
            Err(RecvTimeoutError::Timeout) => panic!("the backend connection stayed open"),
            Ok(line) => panic!("expected the connection to close, got {line:?}"),
        }
    }

    /// Sends one raw line (a `\n` is appended).
    pub fn send_raw(&mut self, line: &str) {
        let mut bytes = Vec::with_capacity(line.len() + 1);
        bytes.extend_from_slice(line.as_bytes());
        bytes.push(b'\n');
        self.writer.write_all(&bytes).expect("write to the broker");
    }

    /// Sends one raw line (in one write), ignoring write errors: for a line
    /// the broker may close the connection in the middle of.
    pub fn send_raw_unchecked(&mut self, line: &str) {
        let mut bytes = Vec::with_capacity(line.len() + 1);
        bytes.extend_from_slice(line.as_bytes());
        bytes.push(b'\n');
        let _ = self.writer.write_all(&bytes);
    }

    /// Writes `bytes` as they are; the error, if the broker closed the
    /// connection (bounded by the socket's write timeout, if one is set).
    pub fn try_write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.writer.write_all(bytes)
    }

    /// Sends one JSON value as a line.
    pub fn send(&mut self, v: &Value) {
        self.send_raw(&v.to_string());
    }

    /// Sends many JSON values in one write.
    pub fn send_all(&mut self, values: impl IntoIterator<Item = Value>) {
        let mut bytes = Vec::new();
        for v in values {
            serde_json::to_writer(&mut bytes, &v).unwrap();
            bytes.push(b'\n');
        }
        self.writer.write_all(&bytes).expect("write to the broker");
    }

    /// Answers `request` (a `connection_request`) with `params`.
    pub fn respond(&mut self, request: &Value, params: Value) {
        assert_eq!(
            request["action"], "connection_request",
            "not a request: {request}"
        );
        self.send(&json!({
            "action": "response",
            "request_id": request["request_id"],
            "params": params,
        }));
    }

    /// `message_to_room`.
    pub fn send_to_room(&mut self, room: &str, message: &str) {
        self.send(&to_room(room, message));
    }

    /// `broadcast`.
    pub fn send_broadcast(&mut self, message: &str) {
        self.send(
            &json!({"action": "broadcast", "request_id": "b", "params": {"message": message}}),
        );
    }

    /// `message_to_connection`.
    pub fn send_to_connection(&mut self, conn_id: &str, message: &str) {
        self.send(&json!({
            "action": "message_to_connection",
            "request_id": "p",
            "params": {"conn_id": conn_id, "message": message},
        }));
    }

    /// Closes the connection (both directions) and waits for the reader
    /// thread to see the end.
    pub fn disconnect(mut self) {
        self.open_gate();
        let _ = self.writer.shutdown(Shutdown::Both);
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }

    /// [`Backend::disconnect`], then waits (bounded) for the broker's log
    /// line saying it saw this backend go.
    pub fn disconnect_and_wait(self, broker: &Broker) {
        let local = self.local;
        self.disconnect();
        broker.wait_log(&[&format!("backend {local} disconnected")]);
    }

    /// Lets a gated reader thread run, so it can see the connection end.
    fn open_gate(&self) {
        if self.gate.is_some() {
            self.set_reading(true);
        }
    }
}

impl Drop for Backend {
    /// The reader thread holds a clone of the socket: shut it down so the
    /// broker sees the backend go even though that clone lives on.
    fn drop(&mut self) {
        self.open_gate();
        let _ = self.writer.shutdown(Shutdown::Both);
    }
}

/// A `message_to_room` line.
pub fn to_room(room: &str, message: &str) -> Value {
    json!({
        "action": "message_to_room",
        "request_id": "r",
        "params": {"room_id": room, "message": message},
    })
}

/// Waits (bounded) for the next event on any of `backends`; returns the
/// index of the backend it came from and the event.
pub fn recv_any(backends: &mut [&mut Backend]) -> (usize, Value) {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        for (i, b) in backends.iter_mut().enumerate() {
            if let Some(v) = b.recv_within(Duration::from_millis(5)) {
                return (i, v);
            }
        }
        assert!(
            Instant::now() < deadline,
            "no event on any backend within {TIMEOUT:?}"
        );
    }
}
