//! WebSocket clients (tungstenite's blocking client over a plain TCP
//! stream): upgrades, accepted clients, messages, close expectations, and
//! [`Flood`], a client sending numbered messages on its own thread. Every
//! read and write is bounded by the socket's timeouts ([`TIMEOUT`], set by
//! [`start_upgrade`]) and every wait by [`TIMEOUT`] or an explicit limit.

use std::io::ErrorKind;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tungstenite::client::IntoClientRequest;
use tungstenite::handshake::HandshakeError;
use tungstenite::protocol::CloseFrame;
use tungstenite::{Message, WebSocket};

use super::{recv_any, Backend, Broker, TIMEOUT};

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

    /// `backend` answers `request` (this upgrade's `connection_request`)
    /// with `accepted: true` plus the fields of `params`; the upgrade must
    /// then succeed and `backend`'s next event be `new_connection`.
    pub fn accept(self, backend: &mut Backend, request: &Value, params: Value) -> Accepted {
        let local = self.local;
        let mut answer = json!({"accepted": true});
        if let (Some(answer), Some(extra)) = (answer.as_object_mut(), params.as_object()) {
            for (k, v) in extra {
                answer.insert(k.clone(), v.clone());
            }
        }
        backend.respond(request, answer);
        let ws = self.finish().expect("the upgrade succeeds");
        let event = backend.expect("new_connection");
        Accepted {
            ws,
            request: request.clone(),
            context: event["params"]["context"].clone(),
            local,
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
    let request = backend.expect("connection_request");
    upgrade.accept(backend, &request, params)
}

/// [`accept`] with several backends: whichever of `backends` gets the
/// request (the broker deals them out round-robin) accepts it. Returns that
/// backend's index and the client.
pub fn accept_any(
    broker: &Broker,
    backends: &mut [&mut Backend],
    path: &str,
    params: Value,
) -> (usize, Accepted) {
    let upgrade = start_upgrade(broker, path, &[]);
    let (who, request) = recv_any(backends);
    (who, upgrade.accept(backends[who], &request, params))
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

/// One client in `room` per id of `client_ids`, joined one after another.
pub fn join_each(
    broker: &Broker,
    backend: &mut Backend,
    client_ids: &[&str],
    room: &str,
) -> Vec<Ws> {
    client_ids
        .iter()
        .map(|id| join(broker, backend, id, room))
        .collect()
}

/// Starts a new client's upgrade to `path`: `backend`'s next event
/// (heartbeats skipped) must be that client's `connection_request`, which
/// it accepts; returns once the upgrade succeeded. Shows that nothing of
/// an earlier client reached the backend in between.
pub fn expect_next_request(broker: &Broker, backend: &mut Backend, path: &str) {
    let next = start_upgrade(broker, path, &[]);
    let event = backend.recv();
    assert_eq!(event["action"], "connection_request", "got {event}");
    assert_eq!(event["params"]["url"], path);
    backend.respond(&event, json!({"accepted": true}));
    next.finish().expect("the next client is accepted");
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

/// After the close handshake (tungstenite answers the broker's close
/// frame), the broker must end the connection: the next read finds it
/// closed. Bounded by the socket's read timeout.
pub fn expect_ended(ws: &mut Ws) {
    match ws.read() {
        Err(tungstenite::Error::ConnectionClosed) => {}
        other => panic!("expected the end of the connection, got {other:?}"),
    }
}

/// Sends a text message.
pub fn send_text(ws: &mut Ws, text: &str) {
    ws.send(Message::text(text)).expect("send a text message");
}

/// Sends a ping and waits (bounded by the socket's read timeout) for its
/// pong: every frame the client sent before has then been processed by the
/// broker (frames are handled in order), and the client is still open.
/// Other pongs are skipped, and so are the broker's own pings when
/// `broker_pings` is [`BrokerPings::Skip`] (tungstenite answers them);
/// anything else fails the test.
pub fn barrier(ws: &mut Ws, broker_pings: BrokerPings) {
    ws.send(Message::Ping(b"barrier".to_vec().into()))
        .expect("send a ping");
    loop {
        match ws.read() {
            Ok(Message::Pong(p)) if p.as_ref() == b"barrier" => return,
            Ok(Message::Pong(_)) => continue,
            Ok(Message::Ping(_)) if broker_pings == BrokerPings::Skip => continue,
            Ok(other) => panic!("expected the barrier pong, got {other:?}"),
            Err(e) => panic!("no barrier pong (the client was closed?): {e}"),
        }
    }
}

/// What [`barrier`] makes of a ping from the broker before its pong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BrokerPings {
    /// A ping fails the test: the broker was not asked to ping.
    Fail,
    /// Pings are expected (a short --ping-interval) and skipped.
    Skip,
}

/// Message `i` of a numbered stream: `i` in eight digits, a colon, then
/// padding up to exactly `size` bytes.
pub fn numbered(i: usize, size: usize) -> String {
    let head = format!("{i:08}:");
    let pad = "x".repeat(size - head.len());
    head + &pad
}

/// The number of a [`numbered`] message, which must be `size` bytes long.
pub fn number_of(text: &str, size: usize) -> usize {
    assert_eq!(text.len(), size, "a message was cut or merged");
    text[..8].parse().expect("an indexed message")
}

/// A client sending `message(0)`, `message(1)`, ... as text on a thread of
/// its own until stopped: a load a test watches (how many went through,
/// whether the sends block) while it checks the broker.
///
/// Bounded: at most `max` messages, and each send by the socket's write
/// timeout (a test waiting for the sends to block removes it first; then
/// [`Flood::stop`] bounds the wait for the blocked send). The first send
/// that fails ends the flood.
pub struct Flood {
    sent: Arc<AtomicUsize>,
    bytes: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    failed: Arc<Mutex<Option<String>>>,
    done: Receiver<(Ws, usize)>,
    max: usize,
}

impl Flood {
    /// Starts sending on `ws`, with `pause` after each send
    /// ([`Duration::ZERO`]: as fast as the socket takes them).
    pub fn start(
        mut ws: Ws,
        max: usize,
        pause: Duration,
        message: impl Fn(usize) -> String + Send + 'static,
    ) -> Flood {
        let sent = Arc::new(AtomicUsize::new(0));
        let bytes = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let failed = Arc::new(Mutex::new(None));
        let (tx, done) = mpsc::channel();
        let (thread_sent, thread_bytes, thread_stop, thread_failed) = (
            Arc::clone(&sent),
            Arc::clone(&bytes),
            Arc::clone(&stop),
            Arc::clone(&failed),
        );
        thread::spawn(move || {
            let mut i = 0;
            while i < max && !thread_stop.load(Ordering::SeqCst) {
                let text = message(i);
                let len = text.len();
                if let Err(e) = ws.send(Message::text(text)) {
                    *thread_failed.lock().unwrap_or_else(|e| e.into_inner()) =
                        Some(format!("send {i} failed: {e}"));
                    break;
                }
                i += 1;
                thread_bytes.fetch_add(len, Ordering::SeqCst);
                thread_sent.store(i, Ordering::SeqCst);
                if !pause.is_zero() {
                    thread::sleep(pause);
                }
            }
            let _ = tx.send((ws, i));
        });
        Flood {
            sent,
            bytes,
            stop,
            failed,
            done,
            max,
        }
    }

    /// How many messages went through so far.
    pub fn sent(&self) -> usize {
        self.sent.load(Ordering::SeqCst)
    }

    /// Waits (bounded by [`TIMEOUT`]) until at least `count` messages went
    /// through; panics if the flood stalls or ended before.
    pub fn wait_sent(&self, count: usize) {
        let deadline = Instant::now() + TIMEOUT;
        while self.sent() < count {
            if let Some(e) = &*self.failed.lock().unwrap_or_else(|e| e.into_inner()) {
                panic!("the flood ended before {count} messages: {e}");
            }
            assert!(
                Instant::now() < deadline,
                "the flood stalled at {} messages, {count} awaited",
                self.sent()
            );
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits (bounded by `limit`) until the sends have made no progress for
    /// `stalled_for`; returns how many went through. Panics if all `max`
    /// went through without blocking. (A failed send stops the count too:
    /// the caller checks the client afterwards.)
    pub fn wait_blocked(&self, stalled_for: Duration, limit: Duration) -> usize {
        let started = Instant::now();
        let mut last = self.sent();
        let mut since = Instant::now();
        loop {
            thread::sleep(Duration::from_millis(50));
            let now = self.sent();
            assert!(
                now < self.max,
                "{now} messages ({} MiB) went through and the sends never blocked: \
                 the broker kept reading from this client",
                self.bytes.load(Ordering::SeqCst) >> 20
            );
            if now != last {
                last = now;
                since = Instant::now();
            } else if since.elapsed() >= stalled_for {
                return now;
            }
            assert!(
                started.elapsed() < limit,
                "the client was still sending after {limit:?} ({now} messages)"
            );
        }
    }

    /// Stops the flood; returns the client and how many messages it sent.
    /// Waits (bounded by [`TIMEOUT`]) for a send in progress to go through:
    /// one still blocked then fails the test.
    pub fn stop(self) -> (Ws, usize) {
        self.stop.store(true, Ordering::SeqCst);
        self.done.recv_timeout(TIMEOUT).unwrap_or_else(|_| {
            panic!("the flood's last send was still blocked {TIMEOUT:?} after it was stopped")
        })
    }
}
