//! The load generator's single event loop: N WebSocket clients (raw frames,
//! masked, one mio registration each, edge-triggered) and at most one
//! backend connection that sends (the broker's TCP backend port, speaking
//! wire v1, or the limit server's control port), all on one thread so the
//! tool can be pinned to one core. In cluster mode the clients are spread
//! over several brokers (`add_server`), and every other broker gets a
//! backend connection of its own that only accepts clients.
//!
//! Every received data frame is checked: our payload layout, the right size,
//! the receiver's tag (room or client index), a sequence number in range,
//! first delivery or duplicate, in order or late. Counts go to `Tally`,
//! latency of first deliveries (receive time minus the send timestamp in
//! the payload, both CLOCK_MONOTONIC) to a histogram while `recording`.
//! Output is written once per loop turn per socket.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use simd_json::prelude::*;
use simd_json::value::tape::{Tape, Value};

use crate::os::{self, now_ns};
use crate::stats::{Arrival, Histogram, Seen};
use crate::ws;

const BACKEND: Token = Token(usize::MAX - 1);

/// Token of `Net::others[k]`, below `BACKEND`.
fn other_token(k: usize) -> Token {
    Token(usize::MAX - 2 - k)
}

/// Why a loop stopped early.
#[derive(Debug)]
pub enum Stop {
    /// The global --timeout ran out.
    Timeout(String),
    /// Anything else (lost backend connection, poll failure, setup).
    Failed(String),
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum State {
    Idle,
    Connecting,
    Upgrading,
    Open,
    Failed,
    Closed,
}

/// `--stall`: a subscriber that stops reading its socket after its first
/// delivery (a slow consumer), until the run drains it at the end.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Stall {
    No,
    AfterFirst,
    Stalled,
    Draining,
}

pub struct Client {
    stream: Option<TcpStream>,
    pub state: State,
    pub stall: Stall,
    /// Which server (`Net::add_server`) it connects to; 0 unless set.
    pub server: usize,
    path: String,
    /// Tag every delivery to this client must carry.
    pub tag: u32,
    /// Deliveries must have seq < expect (fan-out); echo uses `sent`.
    pub expect: u64,
    key: [u8; 24],
    started_ns: u64,
    rbuf: Vec<u8>,
    frag: Vec<u8>,
    wbuf: Vec<u8>,
    wpos: usize,
    writable: bool,
    queued: bool,
    mask: u32,
    pub seen: Seen,
    /// Why the connection failed, if it did.
    pub fail_reason: Option<String>,
    /// Echo: frames sent so far (also the next sequence number).
    pub sent: u64,
    pub inflight: u64,
}

impl Client {
    fn next_mask(&mut self) -> [u8; 4] {
        self.mask ^= self.mask << 13;
        self.mask ^= self.mask >> 17;
        self.mask ^= self.mask << 5;
        self.mask.to_ne_bytes()
    }

    fn pending(&self) -> bool {
        self.wpos < self.wbuf.len()
    }
}

/// What happened, counted; nothing here is ever reset except the window
/// figures.
#[derive(Default)]
pub struct Tally {
    pub connected: u64,
    pub failed: u64,
    pub fail_reasons: BTreeMap<String, u64>,
    pub unexpected_closes: u64,
    pub close_reasons: BTreeMap<String, u64>,
    /// Frames that are not our payload, or not of the configured size.
    pub corrupt: u64,
    /// Payloads whose tag is not the receiver's (wrong room or client).
    pub misrouted: u64,
    /// Sequence numbers never sent to this receiver.
    pub beyond: u64,
    /// First deliveries, all time.
    pub deliveries: u64,
    /// First deliveries while recording.
    pub window_deliveries: u64,
    pub first_delivery_ns: u64,
    pub last_delivery_ns: u64,
    pub pings: u64,
    /// Deliveries to `--stall` subscribers (not in `deliveries`).
    pub stall_deliveries: u64,
    /// How the server ended `--stall` subscribers (not unexpected).
    pub stall_closes: BTreeMap<String, u64>,
}

/// Echo behaviour of the clients.
#[derive(Clone, Copy)]
pub struct Echo {
    /// Send the next frame when one comes back.
    pub sending: bool,
}

/// Everything a frame handler may touch besides its own client.
struct Ctx {
    tally: Tally,
    lat: Histogram,
    recording: bool,
    echo: Option<Echo>,
    size: usize,
    dirty: Vec<usize>,
    inflight_connects: usize,
    handshake_lat: Histogram,
    /// Latency by server while recording; empty with one server.
    server_lat: Vec<Histogram>,
}

/// Events the backend connection saw.
#[derive(Default, Debug)]
pub struct BackendCounts {
    pub connection_requests: u64,
    /// new_connection events for our own clients (client_id "c...").
    pub registered: u64,
    pub disconnected: u64,
    /// disconnected events for our own clients.
    pub unregistered: u64,
    pub new_messages: u64,
    pub errors: u64,
    pub error_samples: Vec<String>,
    pub unparsable: u64,
    pub other: u64,
}

impl BackendCounts {
    /// Adds what another backend connection saw (a cluster's backends).
    pub fn add(&mut self, o: &BackendCounts) {
        self.connection_requests += o.connection_requests;
        self.registered += o.registered;
        self.disconnected += o.disconnected;
        self.unregistered += o.unregistered;
        self.new_messages += o.new_messages;
        self.errors += o.errors;
        let room = 5usize.saturating_sub(self.error_samples.len());
        self.error_samples
            .extend(o.error_samples.iter().take(room).cloned());
        self.unparsable += o.unparsable;
        self.other += o.other;
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// The broker's backend port: we play the application backend.
    Broker,
    /// The limit server's control port.
    Control,
}

pub struct Backend {
    stream: TcpStream,
    pub kind: BackendKind,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    wpos: usize,
    writable: bool,
    json: simd_json::Buffers,
    /// The parsed event's tape, kept between lines for its allocation only
    /// (always empty here): an application backend's parse without
    /// building a tree of maps per event, as the broker parses its lines.
    tape: Option<Tape<'static>>,
    /// Answer new_message with message_to_connection to the sender.
    pub echo_reply: bool,
    /// Rooms each accepted client joins besides its own (`x1` ..), to
    /// measure fan-out with several rooms per connection.
    pub extra_rooms: u32,
    pub counts: BackendCounts,
    pub closed: bool,
}

/// The string at `key` of an object on an event's tape.
fn text<'v>(object: Value<'v, 'v>, key: &str) -> Option<&'v str> {
    object.get(key).and_then(Value::into_string)
}

fn push_json_str(out: &mut Vec<u8>, s: &[u8]) {
    const CHUNK: usize = 32;
    // Bitwise over a fixed-size chunk with no early exit, so the compiler
    // vectorises it: a 70 KB message is scanned in a few µs, where a
    // byte-by-byte scan made the tool, not the broker, the bottleneck.
    fn clean(chunk: &[u8; CHUNK]) -> bool {
        let mut m = 0u8;
        for &b in chunk {
            m |= ((b == b'"') | (b == b'\\') | (b < 0x20)) as u8;
        }
        m == 0
    }
    out.push(b'"');
    let mut start = 0;
    let mut i = 0;
    while i < s.len() {
        if let Some(chunk) = s.get(i..i + CHUNK) {
            if clean(chunk.try_into().expect("a CHUNK-byte slice")) {
                i += CHUNK;
                continue;
            }
        }
        let b = s[i];
        if b == b'"' || b == b'\\' || b < 0x20 {
            out.extend_from_slice(&s[start..i]);
            match b {
                b'"' => out.extend_from_slice(b"\\\""),
                b'\\' => out.extend_from_slice(b"\\\\"),
                _ => out.extend_from_slice(format!("\\u{b:04x}").as_bytes()),
            }
            start = i + 1;
        }
        i += 1;
    }
    out.extend_from_slice(&s[start..]);
    out.push(b'"');
}

impl Backend {
    /// False after a write hit WouldBlock, until epoll reports space again.
    pub fn writable(&self) -> bool {
        self.writable
    }

    /// Unsent bytes.
    pub fn pending(&self) -> usize {
        self.wbuf.len() - self.wpos
    }

    /// Queues one fan-out message: `message_to_room` (room Some) or
    /// `broadcast` (None) for the broker, a control line for the limit
    /// server. The payload is stamped now.
    pub fn queue_message(&mut self, room: Option<u32>, size: usize, seq: u64, tag: u32) {
        let w = &mut self.wbuf;
        match (self.kind, room) {
            (BackendKind::Broker, Some(r)) => {
                w.extend_from_slice(
                    br#"{"action":"message_to_room","request_id":"","params":{"room_id":"r"#,
                );
                w.extend_from_slice(r.to_string().as_bytes());
                w.extend_from_slice(br#"","message":""#);
            }
            (BackendKind::Broker, None) => {
                w.extend_from_slice(
                    br#"{"action":"broadcast","request_id":"","params":{"message":""#,
                );
            }
            (BackendKind::Control, Some(r)) => {
                w.extend_from_slice(r.to_string().as_bytes());
                w.push(b'\t');
            }
            (BackendKind::Control, None) => w.extend_from_slice(b"*\t"),
        }
        ws::push_payload(w, size, seq, now_ns(), tag);
        match self.kind {
            BackendKind::Broker => w.extend_from_slice(b"\"}}\n"),
            BackendKind::Control => w.push(b'\n'),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        while self.writable && self.wpos < self.wbuf.len() {
            match self.stream.write(&self.wbuf[self.wpos..]) {
                Ok(n) => self.wpos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.writable = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if self.wpos == self.wbuf.len() {
            self.wbuf.clear();
            self.wpos = 0;
        } else if self.wpos > 1 << 20 {
            self.wbuf.drain(..self.wpos);
            self.wpos = 0;
        }
        Ok(())
    }

    fn read(&mut self, scratch: &mut [u8]) -> io::Result<()> {
        loop {
            match self.stream.read(scratch) {
                Ok(0) => {
                    self.closed = true;
                    return Ok(());
                }
                Ok(n) => {
                    self.rbuf.extend_from_slice(&scratch[..n]);
                    self.lines();
                    if n < scratch.len() {
                        return Ok(());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    fn lines(&mut self) {
        if self.kind == BackendKind::Control && self.echo_reply {
            // The limit server's echo with a hop (--hop): its records go
            // straight back, unread: the least a backend can do.
            self.wbuf.extend_from_slice(&self.rbuf);
            self.rbuf.clear();
            return;
        }
        let mut rbuf = std::mem::take(&mut self.rbuf);
        let mut done = 0;
        while let Some(nl) = memchr::memchr(b'\n', &rbuf[done..]) {
            if self.kind == BackendKind::Broker {
                self.event(&mut rbuf[done..done + nl]);
            }
            done += nl + 1;
        }
        rbuf.drain(..done);
        self.rbuf = rbuf;
    }

    /// Plays the application backend for one broker event line.
    fn event(&mut self, line: &mut [u8]) {
        if line.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        let mut tape = self.tape.take().map_or_else(Tape::null, Tape::reset);
        if simd_json::fill_tape(line, &mut self.json, &mut tape).is_ok() {
            self.answer(tape.as_value());
        } else {
            self.counts.unparsable += 1;
        }
        self.tape = Some(tape.reset());
    }

    fn answer<'v>(&mut self, v: Value<'v, 'v>) {
        let params = v.get("params");
        let context_id = || {
            params
                .and_then(|p| p.get("context"))
                .and_then(|c| text(c, "client_id"))
        };
        let w = &mut self.wbuf;
        match text(v, "action") {
            Some("connection_request") => {
                self.counts.connection_requests += 1;
                let url = params.and_then(|p| text(p, "url")).unwrap_or("");
                // Our clients ask for /ws/ROOM/ID: room "rROOM", client_id ID.
                let mut parts = url.strip_prefix("/ws/").unwrap_or("").split('/');
                let (room, id) = match (parts.next(), parts.next()) {
                    (Some(r), Some(id)) if !r.is_empty() && !id.is_empty() => {
                        (format!("r{r}"), id.to_owned())
                    }
                    _ => (
                        url.to_owned(),
                        format!("x{}", self.counts.connection_requests),
                    ),
                };
                w.extend_from_slice(br#"{"action":"response","request_id":"#);
                push_json_str(w, text(v, "request_id").unwrap_or("").as_bytes());
                w.extend_from_slice(br#","params":{"accepted":true,"client_id":"#);
                push_json_str(w, id.as_bytes());
                w.extend_from_slice(br#","room_id":"#);
                push_json_str(w, room.as_bytes());
                if self.extra_rooms > 0 {
                    w.extend_from_slice(br#","rooms":["#);
                    for k in 1..=self.extra_rooms {
                        if k > 1 {
                            w.push(b',');
                        }
                        w.extend_from_slice(format!("\"x{k}\"").as_bytes());
                    }
                    w.push(b']');
                }
                w.extend_from_slice(b",\"metadata\":{}}}\n");
            }
            Some("new_connection") => {
                if context_id().is_some_and(|id| id.starts_with('c')) {
                    self.counts.registered += 1;
                }
            }
            Some("new_message") => {
                self.counts.new_messages += 1;
                if self.echo_reply {
                    let msg = params.and_then(|p| text(p, "message"));
                    if let (Some(id), Some(msg)) = (context_id(), msg) {
                        w.extend_from_slice(
                            br#"{"action":"message_to_connection","request_id":"","params":{"conn_id":"#,
                        );
                        push_json_str(w, id.as_bytes());
                        w.extend_from_slice(br#","message":"#);
                        push_json_str(w, msg.as_bytes());
                        w.extend_from_slice(b"}}\n");
                    }
                }
            }
            Some("disconnected") => {
                self.counts.disconnected += 1;
                if context_id().is_some_and(|id| id.starts_with('c')) {
                    self.counts.unregistered += 1;
                }
            }
            Some("error") => {
                self.counts.errors += 1;
                if self.counts.error_samples.len() < 5 {
                    let e = params.and_then(|p| text(p, "error")).unwrap_or("?");
                    self.counts.error_samples.push(e.to_owned());
                }
            }
            Some("heartbeat") => {}
            _ => self.counts.other += 1,
        }
    }
}

pub struct Net {
    poll: Poll,
    events: Events,
    ready: Vec<(Token, bool, bool)>,
    pub clients: Vec<Client>,
    /// The backend that sends (fan-out) or answers (echo).
    pub backend: Option<Backend>,
    /// Cluster mode: a backend connection on each other broker, which
    /// only accepts its clients.
    pub others: Vec<Backend>,
    scratch: Vec<u8>,
    ctx: Ctx,
    /// WebSocket address of each server, and the Host header for it.
    servers: Vec<(SocketAddr, String)>,
    sources: Vec<Ipv4Addr>,
    deadline: Instant,
    /// What the caller is doing, for the timeout message.
    pub phase: String,
}

impl Net {
    pub fn new(
        ws_addr: SocketAddr,
        sources: Vec<Ipv4Addr>,
        size: usize,
        deadline: Instant,
    ) -> io::Result<Self> {
        Ok(Net {
            poll: Poll::new()?,
            events: Events::with_capacity(4096),
            ready: Vec::with_capacity(4096),
            clients: Vec::new(),
            backend: None,
            others: Vec::new(),
            scratch: vec![0; 256 * 1024],
            ctx: Ctx {
                tally: Tally::default(),
                lat: Histogram::new(),
                recording: false,
                echo: None,
                size,
                dirty: Vec::new(),
                inflight_connects: 0,
                handshake_lat: Histogram::new(),
                server_lat: Vec::new(),
            },
            servers: vec![(ws_addr, ws_addr.to_string())],
            sources,
            deadline,
            phase: "starting".into(),
        })
    }

    pub fn tally(&self) -> &Tally {
        &self.ctx.tally
    }

    pub fn latency(&self) -> &Histogram {
        &self.ctx.lat
    }

    pub fn handshake_latency(&self) -> &Histogram {
        &self.ctx.handshake_lat
    }

    /// Adds a server clients can be sent to (`Client::server`); returns
    /// its index. From the second one on, latency is also kept by server.
    pub fn add_server(&mut self, ws_addr: SocketAddr) -> usize {
        self.servers.push((ws_addr, ws_addr.to_string()));
        self.ctx.server_lat = self.servers.iter().map(|_| Histogram::new()).collect();
        self.servers.len() - 1
    }

    /// Latency of the deliveries to clients of server `k` (several servers
    /// only).
    pub fn server_latency(&self, k: usize) -> Option<&Histogram> {
        self.ctx.server_lat.get(k)
    }

    /// Starts (true) or stops recording latencies and window deliveries;
    /// starting clears both.
    pub fn set_recording(&mut self, on: bool) {
        if on {
            self.ctx.lat.clear();
            self.ctx.server_lat.iter_mut().for_each(Histogram::clear);
            self.ctx.tally.window_deliveries = 0;
        }
        self.ctx.recording = on;
    }

    pub fn set_echo(&mut self, echo: Option<Echo>) {
        self.ctx.echo = echo;
    }

    pub fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// Connects the backend (or control) connection; blocks until connected.
    pub fn connect_backend(&mut self, addr: SocketAddr, kind: BackendKind) -> io::Result<()> {
        self.backend = Some(self.open_backend(addr, kind, BACKEND)?);
        Ok(())
    }

    /// Cluster mode: connects a backend to another broker, to accept the
    /// clients sent there (it sends nothing else).
    pub fn connect_other_backend(&mut self, addr: SocketAddr) -> io::Result<()> {
        let token = other_token(self.others.len());
        let b = self.open_backend(addr, BackendKind::Broker, token)?;
        self.others.push(b);
        Ok(())
    }

    fn open_backend(
        &mut self,
        addr: SocketAddr,
        kind: BackendKind,
        token: Token,
    ) -> io::Result<Backend> {
        let std = std::net::TcpStream::connect_timeout(
            &addr,
            self.remaining().max(Duration::from_millis(1)),
        )?;
        std.set_nonblocking(true)?;
        std.set_nodelay(true)?;
        let mut stream = TcpStream::from_std(std);
        self.poll.registry().register(
            &mut stream,
            token,
            Interest::READABLE | Interest::WRITABLE,
        )?;
        Ok(Backend {
            stream,
            kind,
            rbuf: Vec::new(),
            wbuf: Vec::new(),
            wpos: 0,
            writable: true,
            json: simd_json::Buffers::new(1024),
            tape: None,
            echo_reply: false,
            extra_rooms: 0,
            counts: BackendCounts::default(),
            closed: false,
        })
    }

    /// Adds a client (not connected yet) asking for `path`; returns its index.
    pub fn add_client(&mut self, path: String, tag: u32, expect: u64) -> usize {
        let i = self.clients.len();
        self.clients.push(Client {
            stream: None,
            state: State::Idle,
            stall: Stall::No,
            server: 0,
            path,
            tag,
            expect,
            key: ws::client_key(i as u64 + 1),
            started_ns: 0,
            rbuf: Vec::new(),
            frag: Vec::new(),
            wbuf: Vec::new(),
            wpos: 0,
            writable: false,
            queued: false,
            mask: (i as u32).wrapping_mul(2_654_435_761) | 1,
            seen: Seen::default(),
            fail_reason: None,
            sent: 0,
            inflight: 0,
        });
        i
    }

    fn start_connect(&mut self, i: usize) {
        let src = (!self.sources.is_empty()).then(|| self.sources[i % self.sources.len()]);
        let ws_addr = self.servers[self.clients[i].server].0;
        let made = match src {
            None => TcpStream::connect(ws_addr),
            Some(ip) => os::connect_from(ip, ws_addr),
        };
        let c = &mut self.clients[i];
        c.started_ns = now_ns();
        let mut stream = match made {
            Ok(s) => s,
            Err(e) => {
                fail(&mut self.ctx.tally, c, format!("connect: {}", e.kind()));
                return;
            }
        };
        let _ = stream.set_nodelay(true);
        if let Err(e) = self.poll.registry().register(
            &mut stream,
            Token(i),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            fail(&mut self.ctx.tally, c, format!("register: {}", e.kind()));
            return;
        }
        c.stream = Some(stream);
        c.state = State::Connecting;
        self.ctx.inflight_connects += 1;
    }

    /// Connects clients `range`, at most `concurrency` handshakes at a time,
    /// until each is open or failed and, with our own backend on a broker,
    /// the broker has announced every open one with new_connection (each
    /// broker of a cluster to its own backend).
    pub fn connect_clients(
        &mut self,
        range: std::ops::Range<usize>,
        concurrency: usize,
    ) -> Result<(), Stop> {
        let mut next = range.start;
        loop {
            while next < range.end && self.ctx.inflight_connects < concurrency {
                self.start_connect(next);
                next += 1;
            }
            let settled = next == range.end && self.ctx.inflight_connects == 0;
            let registered = self.registered(range.clone());
            if settled && registered {
                return Ok(());
            }
            self.turn(Duration::from_millis(100))?;
        }
    }

    /// Whether each backend of ours on a broker has been told of every open
    /// client of `range` that connected to its broker (the clients outside
    /// `range` were connected, and announced, before).
    fn registered(&self, range: std::ops::Range<usize>) -> bool {
        let backends = std::iter::once(self.backend.as_ref())
            .chain(self.others.iter().map(Some))
            .enumerate();
        for (server, b) in backends {
            let Some(b) = b.filter(|b| b.kind == BackendKind::Broker) else {
                continue;
            };
            let open = self.clients[range.clone()]
                .iter()
                .filter(|c| c.state == State::Open && c.server == server)
                .count() as u64;
            if b.counts.registered < open {
                return false;
            }
        }
        true
    }

    /// Connects one extra client to `path` until the server upgrades it
    /// (retrying refusals every 100 ms until the deadline), then closes it.
    /// Tells that the server and, for a broker, some backend are ready.
    pub fn probe(&mut self, path: &str) -> Result<(), Stop> {
        self.probe_server(path, 0)
    }

    /// [`Net::probe`] on server `server`.
    pub fn probe_server(&mut self, path: &str, server: usize) -> Result<(), Stop> {
        let mut tries = 0u32;
        let phase = self.phase.clone();
        loop {
            let i = self.add_client(format!("{path}{tries}"), 0, 0);
            self.clients[i].server = server;
            let failed_before = self.ctx.tally.failed;
            let reasons_before = self.ctx.tally.fail_reasons.clone();
            self.start_connect(i);
            while matches!(self.clients[i].state, State::Connecting | State::Upgrading) {
                self.turn(Duration::from_millis(100))?;
            }
            let ok = self.clients[i].state == State::Open;
            if ok {
                self.ctx.tally.connected -= 1;
                self.ctx.handshake_lat.clear();
            } else {
                // A probe's failure is not a client failure.
                self.ctx.tally.failed = failed_before;
                self.ctx.tally.fail_reasons = reasons_before;
                let why = self.clients[i].fail_reason.take().unwrap_or_default();
                self.phase = format!("{phase}; {} attempts, the last: {why}", tries + 1);
            }
            self.drop_client(i);
            self.clients.pop();
            if ok {
                self.phase = phase;
                return Ok(());
            }
            tries += 1;
            let until = Instant::now() + Duration::from_millis(100);
            while Instant::now() < until {
                self.turn(Duration::from_millis(20))?;
            }
        }
    }

    fn drop_client(&mut self, i: usize) {
        let c = &mut self.clients[i];
        if let Some(mut s) = c.stream.take() {
            let _ = self.poll.registry().deregister(&mut s);
        }
        c.rbuf = Vec::new();
        c.wbuf = Vec::new();
        c.wpos = 0;
        if c.state != State::Failed {
            c.state = State::Closed;
        }
    }

    /// Closes every client (end of a scenario: not counted as unexpected).
    pub fn close_all(&mut self) {
        for i in 0..self.clients.len() {
            self.drop_client(i);
        }
    }

    /// Closes every client, then (with our own backend on a broker) waits
    /// up to `wait` for the broker's `disconnected` event of each one it
    /// announced, so the backend connection is not dropped mid-stream.
    pub fn close_all_and_settle(&mut self, wait: Duration) {
        self.close_all();
        let until = Instant::now() + wait;
        while Instant::now() < until {
            let settled = self.backend.iter().chain(self.others.iter()).all(|b| {
                b.kind != BackendKind::Broker || b.counts.unregistered >= b.counts.registered
            });
            if settled || self.turn(Duration::from_millis(20)).is_err() {
                break;
            }
        }
    }

    /// Queues the next echo frame of client `i`.
    pub fn send_echo(&mut self, i: usize) {
        send_echo(&mut self.clients[i], i, &mut self.ctx);
    }

    /// Writes the backends' queued bytes now.
    pub fn flush_backend(&mut self) -> Result<(), Stop> {
        if let Some(b) = self.backend.as_mut() {
            b.flush()
                .map_err(|e| Stop::Failed(format!("backend connection failed: {e}")))?;
        }
        for (k, b) in self.others.iter_mut().enumerate() {
            b.flush().map_err(|e| {
                Stop::Failed(format!(
                    "backend connection to broker {} failed: {e}",
                    k + 1
                ))
            })?;
        }
        Ok(())
    }

    /// One loop turn: wait up to `wait` for events, handle them, write
    /// what is queued. Err on timeout (deadline) or a lost backend.
    pub fn turn(&mut self, wait: Duration) -> Result<(), Stop> {
        let left = self.remaining();
        if left.is_zero() {
            return Err(Stop::Timeout(format!("timeout during {}", self.phase)));
        }
        match self.poll.poll(&mut self.events, Some(wait.min(left))) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Stop::Failed(format!("poll failed: {e}"))),
        }
        self.ready.clear();
        for ev in self.events.iter() {
            let readable = ev.is_readable() || ev.is_read_closed() || ev.is_error();
            let writable = ev.is_writable() || ev.is_write_closed() || ev.is_error();
            self.ready.push((ev.token(), readable, writable));
        }
        for k in 0..self.ready.len() {
            let (token, readable, writable) = self.ready[k];
            if token == BACKEND {
                if let Some(b) = self.backend.as_mut() {
                    backend_event(b, &mut self.scratch, readable, writable, "")?;
                }
            } else if token.0 > other_token(self.others.len()).0 {
                let k = usize::MAX - 2 - token.0;
                let what = format!(" to broker {}", k + 1);
                backend_event(
                    &mut self.others[k],
                    &mut self.scratch,
                    readable,
                    writable,
                    &what,
                )?;
            } else {
                self.client_event(token.0, readable, writable);
            }
        }
        self.flush_backend()?;
        let mut dirty = std::mem::take(&mut self.ctx.dirty);
        for &i in &dirty {
            self.flush_client(i);
        }
        dirty.clear();
        self.ctx.dirty = dirty;
        Ok(())
    }

    fn client_event(&mut self, i: usize, readable: bool, writable: bool) {
        let Some(c) = self.clients.get_mut(i) else {
            return;
        };
        if c.stream.is_none() {
            return;
        }
        if c.state == State::Connecting {
            let s = c.stream.as_ref().unwrap();
            match s.take_error() {
                Ok(Some(e)) | Err(e) => {
                    self.ctx.inflight_connects -= 1;
                    fail(&mut self.ctx.tally, c, format!("connect: {}", e.kind()));
                    self.drop_client(i);
                    return;
                }
                Ok(None) => {}
            }
            match s.peer_addr() {
                Ok(_) => {
                    c.state = State::Upgrading;
                    let key = c.key;
                    let host = &self.servers[c.server].1;
                    ws::upgrade_request(&mut c.wbuf, &c.path, host, &key);
                    self.ctx.dirty.push(i);
                    c.queued = true;
                }
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
                Err(e) => {
                    self.ctx.inflight_connects -= 1;
                    fail(&mut self.ctx.tally, c, format!("connect: {}", e.kind()));
                    self.drop_client(i);
                    return;
                }
            }
        }
        if writable {
            c.writable = true;
            if c.pending() && !c.queued {
                c.queued = true;
                self.ctx.dirty.push(i);
            }
        }
        if readable {
            self.client_read(i);
        }
    }

    fn client_read(&mut self, i: usize) {
        let Net {
            clients,
            scratch,
            ctx,
            ..
        } = self;
        let c = &mut clients[i];
        let outcome: Result<(), String> = loop {
            if c.stall == Stall::Stalled {
                break Ok(());
            }
            let Some(s) = c.stream.as_mut() else {
                return;
            };
            let n = match s.read(scratch) {
                Ok(0) => break Err("closed by server".into()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => break Err(format!("read: {}", e.kind())),
            };
            let now = now_ns();
            let data = &scratch[..n];
            if c.state == State::Upgrading {
                c.rbuf.extend_from_slice(data);
                match ws::parse_upgrade_reply(&c.rbuf, &c.key) {
                    ws::UpgradeReply::Incomplete => {}
                    ws::UpgradeReply::Switched(end) => {
                        c.state = State::Open;
                        ctx.inflight_connects -= 1;
                        ctx.tally.connected += 1;
                        ctx.handshake_lat.record(now - c.started_ns);
                        c.rbuf.drain(..end);
                        let buf = std::mem::take(&mut c.rbuf);
                        match frames(c, i, &buf, now, ctx) {
                            Ok(used) => c.rbuf.extend_from_slice(&buf[used..]),
                            Err(e) => break Err(e),
                        }
                    }
                    ws::UpgradeReply::Refused(code) => break Err(format!("HTTP {code}")),
                    ws::UpgradeReply::Invalid(why) => break Err(why.into()),
                }
            } else if c.rbuf.is_empty() {
                match frames(c, i, data, now, ctx) {
                    Ok(used) => c.rbuf.extend_from_slice(&data[used..]),
                    Err(e) => break Err(e),
                }
            } else {
                c.rbuf.extend_from_slice(data);
                let buf = std::mem::take(&mut c.rbuf);
                match frames(c, i, &buf, now, ctx) {
                    Ok(used) => {
                        c.rbuf = buf;
                        c.rbuf.drain(..used);
                    }
                    Err(e) => break Err(e),
                }
            }
            if n < scratch.len() {
                break Ok(());
            }
        };
        if let Err(why) = outcome {
            let c = &mut self.clients[i];
            match c.state {
                State::Upgrading => {
                    self.ctx.inflight_connects -= 1;
                    fail(&mut self.ctx.tally, c, why);
                }
                State::Open if c.stall != Stall::No => {
                    *self.ctx.tally.stall_closes.entry(why).or_default() += 1;
                }
                State::Open => {
                    self.ctx.tally.unexpected_closes += 1;
                    *self.ctx.tally.close_reasons.entry(why).or_default() += 1;
                }
                _ => {}
            }
            self.drop_client(i);
        }
    }

    /// `--stall`: reads what the stalled subscribers left unread (and how
    /// the server ended them) until each is closed or `wait` has passed.
    pub fn drain_stalled(&mut self, wait: Duration) -> Result<(), Stop> {
        let stalled: Vec<usize> = (0..self.clients.len())
            .filter(|&i| self.clients[i].stall != Stall::No)
            .collect();
        for &i in &stalled {
            self.clients[i].stall = Stall::Draining;
            self.client_read(i);
        }
        let until = Instant::now() + wait;
        while Instant::now() < until && stalled.iter().any(|&i| self.clients[i].stream.is_some()) {
            self.turn(Duration::from_millis(20))?;
        }
        Ok(())
    }

    fn flush_client(&mut self, i: usize) {
        let c = &mut self.clients[i];
        c.queued = false;
        let Some(s) = c.stream.as_mut() else { return };
        let mut failed = None;
        while c.writable && c.wpos < c.wbuf.len() {
            match s.write(&c.wbuf[c.wpos..]) {
                Ok(n) => c.wpos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => c.writable = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        if c.wpos == c.wbuf.len() {
            c.wbuf.clear();
            c.wpos = 0;
        }
        if let Some(e) = failed {
            let why = format!("write: {}", e.kind());
            if c.state == State::Open {
                self.ctx.tally.unexpected_closes += 1;
                *self.ctx.tally.close_reasons.entry(why).or_default() += 1;
            } else if c.state == State::Upgrading {
                self.ctx.inflight_connects -= 1;
                fail(&mut self.ctx.tally, c, why);
            }
            self.drop_client(i);
        }
    }
}

/// A poll event on one of our backend connections (`what` names which in
/// errors: empty for the one that sends).
fn backend_event(
    b: &mut Backend,
    scratch: &mut [u8],
    readable: bool,
    writable: bool,
    what: &str,
) -> Result<(), Stop> {
    if writable {
        b.writable = true;
    }
    if readable {
        b.read(scratch)
            .map_err(|e| Stop::Failed(format!("backend connection{what} failed: {e}")))?;
        if b.closed {
            return Err(Stop::Failed(format!(
                "the server closed the backend connection{what}"
            )));
        }
    }
    Ok(())
}

fn fail(tally: &mut Tally, c: &mut Client, why: String) {
    c.state = State::Failed;
    tally.failed += 1;
    *tally.fail_reasons.entry(why.clone()).or_default() += 1;
    c.fail_reason = Some(why);
}

fn send_echo(c: &mut Client, i: usize, ctx: &mut Ctx) {
    let mask = c.next_mask();
    ws::push_head(&mut c.wbuf, ws::OP_TEXT, ctx.size, Some(mask));
    let start = c.wbuf.len();
    ws::push_payload(&mut c.wbuf, ctx.size, c.sent, now_ns(), i as u32);
    ws::apply_mask(&mut c.wbuf[start..], mask);
    c.sent += 1;
    c.inflight += 1;
    if !c.queued {
        c.queued = true;
        ctx.dirty.push(i);
    }
}

/// Handles the complete frames at the start of `buf`; returns the bytes
/// used, or why the connection must close.
fn frames(c: &mut Client, i: usize, buf: &[u8], now: u64, ctx: &mut Ctx) -> Result<usize, String> {
    let mut at = 0;
    while let Some(h) = ws::parse_head(&buf[at..]) {
        if h.mask.is_some() {
            return Err("masked frame from server".into());
        }
        if h.payload_len > 16 << 20 {
            return Err("frame over 16 MiB".into());
        }
        let end = at + h.header_len + h.payload_len;
        if end > buf.len() {
            break;
        }
        let p = &buf[at + h.header_len..end];
        at = end;
        match h.opcode {
            ws::OP_TEXT | ws::OP_BINARY if h.fin && c.frag.is_empty() => message(c, i, p, now, ctx),
            ws::OP_TEXT | ws::OP_BINARY if c.frag.is_empty() => c.frag.extend_from_slice(p),
            ws::OP_CONT if !c.frag.is_empty() => {
                c.frag.extend_from_slice(p);
                if h.fin {
                    let whole = std::mem::take(&mut c.frag);
                    message(c, i, &whole, now, ctx);
                }
            }
            ws::OP_CLOSE => {
                let code = p
                    .get(..2)
                    .map_or(1005, |b| u16::from_be_bytes([b[0], b[1]]));
                let reason = String::from_utf8_lossy(p.get(2..).unwrap_or(&[]));
                return Err(format!("close frame {code} {reason}").trim_end().to_owned());
            }
            ws::OP_PING => {
                ctx.tally.pings += 1;
                let mask = c.next_mask();
                ws::push_client_frame(&mut c.wbuf, ws::OP_PONG, p, mask);
                if !c.queued {
                    c.queued = true;
                    ctx.dirty.push(i);
                }
            }
            ws::OP_PONG => {}
            op => return Err(format!("unexpected frame opcode {op}")),
        }
    }
    Ok(at)
}

/// Checks one delivered payload.
fn message(c: &mut Client, i: usize, p: &[u8], now: u64, ctx: &mut Ctx) {
    let t = &mut ctx.tally;
    let Some((seq, ts, tag)) = ws::read_payload(p).filter(|_| p.len() == ctx.size) else {
        t.corrupt += 1;
        return;
    };
    if tag != c.tag {
        t.misrouted += 1;
        return;
    }
    let limit = if ctx.echo.is_some() { c.sent } else { c.expect };
    if seq >= limit {
        t.beyond += 1;
        return;
    }
    if c.stall != Stall::No {
        // Order and duplicates are still checked (c.seen); latency and
        // the delivery count are the other subscribers'.
        if let Arrival::New { .. } = c.seen.record(seq) {
            t.stall_deliveries += 1;
        }
        if c.stall == Stall::AfterFirst {
            c.stall = Stall::Stalled;
        }
        return;
    }
    if let Arrival::New { .. } = c.seen.record(seq) {
        if t.deliveries == 0 {
            t.first_delivery_ns = now;
        }
        t.deliveries += 1;
        t.last_delivery_ns = now;
        if ctx.recording {
            t.window_deliveries += 1;
            ctx.lat.record(now.saturating_sub(ts));
            if let Some(h) = ctx.server_lat.get_mut(c.server) {
                h.record(now.saturating_sub(ts));
            }
        }
        if let Some(echo) = ctx.echo {
            c.inflight = c.inflight.saturating_sub(1);
            if echo.sending {
                send_echo(c, i, ctx);
            }
        }
    }
}
