//! The harness every integration test shares: the real `pystrands-server`
//! binary on ephemeral loopback ports, raw TCP backends speaking
//! newline-delimited JSON, and WebSocket clients (tungstenite's blocking
//! client, or raw bytes when a test must break the protocol).
//!
//! Every blocking wait here is bounded by [`TIMEOUT`]: a broken broker fails
//! the test with a message (and the broker's log) instead of hanging it.
//! Tests never sleep to assert; they wait for a condition (a line from a
//! socket, a log line) with a deadline.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tungstenite::client::IntoClientRequest;
use tungstenite::handshake::HandshakeError;
use tungstenite::protocol::CloseFrame;
use tungstenite::{Message, WebSocket};

/// The bound on every single wait (a line, a frame, a log line, an exit).
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// The server binary cargo built for these tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_pystrands-server");

/// Environment variables of the broker that must not leak in from the
/// environment the tests run in.
const BROKER_ENV: [&str; 4] = [
    "PYSTRAND_WS_PORT",
    "PYSTRAND_TCP_PORT",
    "PYSTRAND_QUEUE_SIZE",
    "PYSTRANDS_BACKEND_TOKEN",
];

// ------------------------------------------------------------------ broker

/// The broker's stderr, line by line, as it arrives.
#[derive(Default)]
struct Log {
    lines: Mutex<Vec<String>>,
    grew: Condvar,
}

impl Log {
    fn push(&self, line: String) {
        self.lock().push(line);
        self.grew.notify_all();
    }

    /// Waits until a line satisfies `pred`; returns it.
    fn wait(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + TIMEOUT;
        let mut lines = self.lock();
        loop {
            if let Some(line) = lines.iter().find(|l| pred(l)) {
                return line.clone();
            }
            let now = Instant::now();
            if now >= deadline {
                let log = lines.join("\n");
                // Release the lock before panicking, so it is not poisoned.
                drop(lines);
                panic!("no broker log line {what} within {TIMEOUT:?}; log so far:\n{log}");
            }
            lines = self
                .grew
                .wait_timeout(lines, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<String>> {
        self.lines.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A running `pystrands-server`, killed when dropped.
pub struct Broker {
    child: Child,
    /// Where WebSocket clients connect.
    pub ws: SocketAddr,
    /// Where backends connect.
    pub backend: SocketAddr,
    log: Arc<Log>,
    exit: Option<ExitStatus>,
}

impl Broker {
    /// Starts the broker with `flags`, on ephemeral loopback ports and at
    /// log level debug unless `flags` say otherwise.
    pub fn start(flags: &[&str]) -> Broker {
        Broker::start_with_env(flags, &[])
    }

    /// [`Broker::start`] with environment variables set (after the
    /// `PYSTRAND_*` ones of the test environment are removed).
    pub fn start_with_env(flags: &[&str], env: &[(&str, &str)]) -> Broker {
        Broker::start_with_command(flags, env, |_| {})
    }

    /// [`Broker::start_with_env`], with `configure` given the last word on
    /// the command before it is spawned (e.g. a `pre_exec` that lowers a
    /// resource limit of the child).
    pub fn start_with_command(
        flags: &[&str],
        env: &[(&str, &str)],
        configure: impl FnOnce(&mut Command),
    ) -> Broker {
        let mut cmd = Command::new(BIN);
        for (flag, value) in [
            ("--host", "127.0.0.1"),
            ("--ws-port", "0"),
            ("--tcp-port", "0"),
            ("--log-level", "debug"),
        ] {
            if !flags.contains(&flag) {
                cmd.args([flag, value]);
            }
        }
        cmd.args(flags)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for name in BROKER_ENV {
            cmd.env_remove(name);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        configure(&mut cmd);
        let mut child = cmd.spawn().expect("start pystrands-server");
        let stderr = child.stderr.take().expect("stderr is piped");
        let log = Arc::new(Log::default());
        let sink = Arc::clone(&log);
        // Keeps draining stderr for the whole life of the process, so the
        // pipe never fills, and keeps every line for assertions.
        thread::spawn(move || {
            for line in BufReader::new(stderr).split(b'\n') {
                let Ok(line) = line else { break };
                sink.push(String::from_utf8_lossy(&line).into_owned());
            }
        });
        let mut broker = Broker {
            child,
            ws: "0.0.0.0:0".parse().unwrap(),
            backend: "0.0.0.0:0".parse().unwrap(),
            log,
            exit: None,
        };
        let line = broker.log.wait("containing 'listening websocket='", |l| {
            l.contains("listening websocket=")
        });
        broker.ws = addr_after(&line, "websocket=");
        broker.backend = addr_after(&line, "backend=");
        broker
    }

    /// The WebSocket URL of `path` (which starts with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{}", self.ws, path)
    }

    /// Every stderr line so far.
    pub fn log_lines(&self) -> Vec<String> {
        self.log.lock().clone()
    }

    /// Waits (bounded) for a log line containing every one of `parts`.
    pub fn wait_log(&self, parts: &[&str]) -> String {
        self.log.wait(&format!("containing {parts:?}"), |l| {
            parts.iter().all(|p| l.contains(p))
        })
    }

    /// Whether a log line containing every one of `parts` was written.
    pub fn has_log(&self, parts: &[&str]) -> bool {
        self.log_lines()
            .iter()
            .any(|l| parts.iter().all(|p| l.contains(p)))
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory (VmRSS of /proc/PID/status), in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("read the broker's /proc/PID/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no VmRSS in the broker's status:\n{status}"))
    }

    /// Open file descriptors (entries of /proc/PID/fd).
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .expect("list the broker's /proc/PID/fd")
            .count()
    }

    /// Waits (bounded) until the broker has `want` descriptors open: a
    /// closed peer's socket is released only once the broker has read its
    /// end, which can come after the last event a test waits for.
    pub fn wait_open_fds(&self, want: usize) {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let now = self.open_fds();
            if now == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the broker has {now} descriptors open, {want} expected (a leak?)"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// CPU time used so far, user plus system (/proc/PID/stat, clock ticks
    /// converted at the kernel's USER_HZ).
    pub fn cpu_time(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()))
            .expect("read the broker's /proc/PID/stat");
        // Fields after the command name, which is in parentheses and may
        // hold spaces: utime and stime are the 12th and 13th of them.
        let rest = &stat[stat.rfind(')').expect("a stat line") + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        // SAFETY: sysconf reads a constant of the system.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        Duration::from_millis(ticks * 1000 / hz)
    }

    /// Whether the process is still running (it has not exited).
    pub fn is_running(&mut self) -> bool {
        match self.child.try_wait().expect("poll the broker") {
            Some(status) => {
                self.exit = Some(status);
                false
            }
            None => true,
        }
    }

    /// Sends a signal to the broker.
    pub fn signal(&self, signal: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits pid_t");
        // SAFETY: kill(2) on our own child's pid has no memory-safety concerns.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(rc, 0, "kill({pid}, {signal}) failed");
    }

    /// Waits (bounded by `limit`) for the process to exit.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for the broker") {
                self.exit = Some(status);
                return status;
            }
            if Instant::now() >= deadline {
                panic!(
                    "the broker did not exit within {limit:?}; log:\n{}",
                    self.log_lines().join("\n")
                );
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if self.exit.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if thread::panicking() {
            eprintln!("---- broker log ----\n{}", self.log_lines().join("\n"));
        }
    }
}

fn addr_after(line: &str, key: &str) -> SocketAddr {
    let start = line
        .find(key)
        .unwrap_or_else(|| panic!("no {key} in {line:?}"))
        + key.len();
    let rest = &line[start..];
    let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
    rest[..end]
        .parse()
        .unwrap_or_else(|e| panic!("bad address after {key} in {line:?}: {e}"))
}

/// The outcome of running the binary to completion (for CLI tests).
pub struct Finished {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs the binary with exactly `args` and `env` (the `PYSTRAND_*`
/// variables of the test environment removed first) and waits, bounded,
/// for it to exit.
pub fn run_to_exit(args: &[&str], env: &[(&str, &str)]) -> Finished {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for name in BROKER_ENV {
        cmd.env_remove(name);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().expect("start pystrands-server");
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(TIMEOUT) {
        Ok(out) => {
            let out = out.expect("collect the output");
            Finished {
                code: out.status.code(),
                stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            }
        }
        Err(_) => {
            // SAFETY: kill(2) on the pid of the child we spawned.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            panic!("pystrands-server {args:?} did not exit within {TIMEOUT:?}");
        }
    }
}

// ------------------------------------------------------------------ backend

/// A raw TCP backend: newline-delimited JSON, read on its own thread so the
/// broker is never blocked by the test not reading yet.
pub struct Backend {
    writer: TcpStream,
    lines: Receiver<String>,
    /// This backend's own address (as the broker's log names it).
    pub local: SocketAddr,
    reader: Option<JoinHandle<()>>,
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
        }
    }

    /// Waits for the broker's log line saying this backend is live.
    pub fn wait_live(&self, broker: &Broker) {
        broker.wait_log(&[&format!("backend {} connected (", self.local)]);
    }

    /// Next line within `limit`, parsed; heartbeats skipped. `None` on
    /// timeout; panics if the broker closed the connection.
    pub fn recv_within(&mut self, limit: Duration) -> Option<Value> {
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
        let _ = self.writer.shutdown(Shutdown::Both);
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

impl Drop for Backend {
    /// The reader thread holds a clone of the socket: shut it down so the
    /// broker sees the backend go even though that clone lives on.
    fn drop(&mut self) {
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

// ------------------------------------------------------------------ clients

/// A WebSocket client over a plain TCP stream.
pub type Ws = WebSocket<TcpStream>;

/// A connection request in flight: the upgrade runs on its own thread,
/// because it blocks until a backend answers.
pub struct Upgrade {
    /// The client's own address (what `remote_addr` must say).
    pub local: SocketAddr,
    handle: JoinHandle<Result<Ws, tungstenite::Error>>,
}

/// Starts an upgrade to `path` with extra request headers.
pub fn start_upgrade(broker: &Broker, path: &str, headers: &[(&str, &str)]) -> Upgrade {
    let mut request = broker.url(path).into_client_request().expect("a valid URL");
    for (name, value) in headers {
        request.headers_mut().append(
            tungstenite::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    let stream = TcpStream::connect(broker.ws).expect("connect to the WebSocket port");
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(TIMEOUT)).unwrap();
    let local = stream.local_addr().unwrap();
    let handle = thread::spawn(move || match tungstenite::client::client(request, stream) {
        Ok((ws, _response)) => Ok(ws),
        Err(HandshakeError::Failure(e)) => Err(e),
        Err(HandshakeError::Interrupted(_)) => Err(tungstenite::Error::Io(std::io::Error::new(
            ErrorKind::TimedOut,
            "no upgrade answer in time",
        ))),
    });
    Upgrade { local, handle }
}

impl Upgrade {
    /// The handshake's outcome (bounded: the socket has a read timeout).
    pub fn finish(self) -> Result<Ws, tungstenite::Error> {
        self.handle.join().expect("the upgrade thread panicked")
    }

    /// The HTTP status the broker refused the upgrade with; panics if the
    /// upgrade succeeded or failed some other way.
    pub fn refused_status(self) -> u16 {
        match self.finish() {
            Err(tungstenite::Error::Http(response)) => response.status().as_u16(),
            Err(e) => panic!("expected an HTTP refusal, got error {e}"),
            Ok(_) => panic!("expected an HTTP refusal, the upgrade succeeded"),
        }
    }
}

/// An accepted client, with the events its acceptance produced.
pub struct Accepted {
    pub ws: Ws,
    /// The `connection_request` the backend got.
    pub request: Value,
    /// `params.context` of the `new_connection` event.
    pub context: Value,
    /// The client's own address.
    pub local: SocketAddr,
}

/// Connects a client to `path`; `backend` answers its request with
/// `accepted: true` plus `params` and must then get `new_connection`.
pub fn accept(broker: &Broker, backend: &mut Backend, path: &str, params: Value) -> Accepted {
    let upgrade = start_upgrade(broker, path, &[]);
    let local = upgrade.local;
    let request = backend.expect("connection_request");
    let mut answer = json!({"accepted": true});
    if let (Some(answer), Some(extra)) = (answer.as_object_mut(), params.as_object()) {
        for (k, v) in extra {
            answer.insert(k.clone(), v.clone());
        }
    }
    backend.respond(&request, answer);
    let ws = upgrade.finish().expect("the upgrade succeeds");
    let event = backend.expect("new_connection");
    Accepted {
        ws,
        request,
        context: event["params"]["context"].clone(),
        local,
    }
}

/// A client in `room` with the given client id.
pub fn join(broker: &Broker, backend: &mut Backend, client_id: &str, room: &str) -> Ws {
    accept(
        broker,
        backend,
        &format!("/ws/{room}"),
        json!({"client_id": client_id, "room_id": room}),
    )
    .ws
}

/// Next data or close message (pings and pongs skipped); panics on timeout
/// or error.
pub fn next_message(ws: &mut Ws) -> Message {
    loop {
        match ws.read() {
            Ok(Message::Ping(_)) | Ok(Message::Pong(_)) => continue,
            Ok(m) => return m,
            Err(tungstenite::Error::Io(e))
                if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
            {
                panic!("no WebSocket message within {TIMEOUT:?}")
            }
            Err(e) => panic!("WebSocket read failed: {e}"),
        }
    }
}

/// Next text message.
pub fn recv_text(ws: &mut Ws) -> String {
    match next_message(ws) {
        Message::Text(t) => t.to_string(),
        other => panic!("expected a text message, got {other:?}"),
    }
}

/// Next message must be a close frame: its code and reason.
pub fn recv_close(ws: &mut Ws) -> (u16, String) {
    match next_message(ws) {
        Message::Close(Some(CloseFrame { code, reason })) => (u16::from(code), reason.to_string()),
        other => panic!("expected a close frame with a code, got {other:?}"),
    }
}

/// Sends a text message.
pub fn send_text(ws: &mut Ws, text: &str) {
    ws.send(Message::text(text)).expect("send a text message");
}

/// Sends a ping and waits for its pong: every frame the client sent before
/// has then been processed by the broker (frames are handled in order).
pub fn barrier(ws: &mut Ws) {
    ws.send(Message::Ping(b"barrier".to_vec().into()))
        .expect("send a ping");
    loop {
        match ws.read() {
            Ok(Message::Pong(p)) if p.as_ref() == b"barrier" => return,
            Ok(Message::Pong(_)) => continue,
            Ok(other) => panic!("expected the barrier pong, got {other:?}"),
            Err(e) => panic!("no barrier pong: {e}"),
        }
    }
}

// ------------------------------------------------------------------ raw frames

/// A client frame: FIN bit, opcode, payload, masked with `mask` when given.
pub fn frame(fin: bool, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = vec![(u8::from(fin) << 7) | opcode];
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(mask_bit | n as u8),
        n if n <= 0xFFFF => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(key) => {
            out.extend_from_slice(&key);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

/// A final, masked client frame.
pub fn masked(opcode: u8, payload: &[u8]) -> Vec<u8> {
    frame(true, opcode, payload, Some([0x37, 0xfa, 0x21, 0x3d]))
}

/// Opcodes.
pub const CONTINUATION: u8 = 0x0;
pub const TEXT: u8 = 0x1;
pub const CLOSE: u8 = 0x8;
pub const PING: u8 = 0x9;

/// Writes raw bytes under a tungstenite client (which never knows).
pub fn send_raw(ws: &mut Ws, bytes: &[u8]) {
    ws.get_mut().write_all(bytes).expect("write raw bytes");
}

/// Writes raw bytes to a raw client stream.
pub fn raw_write(stream: &mut TcpStream, bytes: &[u8]) {
    stream.write_all(bytes).expect("write raw bytes");
}

/// Reads one server frame from a raw stream: (opcode, payload). Server
/// frames must be unmasked and unfragmented here.
pub fn read_frame(stream: &mut TcpStream) -> (u8, Vec<u8>) {
    let mut head = [0u8; 2];
    stream.read_exact(&mut head).expect("a frame header");
    assert_eq!(head[0] & 0x80, 0x80, "server frames here are final");
    assert_eq!(head[1] & 0x80, 0, "server frames must not be masked");
    let len = match head[1] & 0x7f {
        126 => {
            let mut b = [0u8; 2];
            stream.read_exact(&mut b).unwrap();
            u64::from(u16::from_be_bytes(b))
        }
        127 => {
            let mut b = [0u8; 8];
            stream.read_exact(&mut b).unwrap();
            u64::from_be_bytes(b)
        }
        n => u64::from(n),
    };
    let mut payload = vec![0u8; len as usize];
    stream.read_exact(&mut payload).expect("a frame payload");
    (head[0] & 0x0f, payload)
}

/// Reads until the peer closes the stream (bounded); returns what came.
pub fn read_to_eof(stream: &mut TcpStream) -> Vec<u8> {
    let mut all = Vec::new();
    match stream.read_to_end(&mut all) {
        Ok(_) => all,
        Err(e) => panic!(
            "the connection was not closed within {TIMEOUT:?} ({e}); got {:?}",
            String::from_utf8_lossy(&all)
        ),
    }
}

/// Opens a raw TCP connection to the WebSocket port and sends an upgrade
/// request for `path` by hand.
pub fn raw_upgrade_request(broker: &Broker, path: &str) -> TcpStream {
    let mut stream = TcpStream::connect(broker.ws).expect("connect to the WebSocket port");
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(TIMEOUT)).unwrap();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        broker.ws
    );
    stream.write_all(request.as_bytes()).unwrap();
    stream
}

/// Reads an HTTP response head (up to the blank line) byte by byte, so
/// nothing after it is consumed.
pub fn read_http_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(0) => panic!(
                "connection closed inside the response head: {:?}",
                String::from_utf8_lossy(&head)
            ),
            Ok(_) => head.push(byte[0]),
            Err(e) => panic!("no complete response head within {TIMEOUT:?}: {e}"),
        }
    }
    String::from_utf8(head).expect("an ASCII response head")
}

/// The status code of an HTTP response head.
pub fn status_of(head: &str) -> u16 {
    head.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {head:?}"))
}

/// A raw client accepted by `backend` into `room` (as `client_id`), ready
/// for hand-made frames. Returns the stream after the 101 head.
pub fn raw_join(broker: &Broker, backend: &mut Backend, client_id: &str, room: &str) -> TcpStream {
    let mut stream = raw_upgrade_request(broker, &format!("/ws/{room}"));
    let request = backend.expect("connection_request");
    backend.respond(
        &request,
        json!({"accepted": true, "client_id": client_id, "room_id": room}),
    );
    let head = read_http_head(&mut stream);
    assert_eq!(status_of(&head), 101, "upgrade refused: {head}");
    backend.expect("new_connection");
    stream
}

/// The close code and reason of a close frame's payload.
pub fn close_payload(payload: &[u8]) -> (u16, String) {
    assert!(
        payload.len() >= 2,
        "close frame without a code: {payload:?}"
    );
    (
        u16::from_be_bytes([payload[0], payload[1]]),
        String::from_utf8_lossy(&payload[2..]).into_owned(),
    )
}
