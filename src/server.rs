//! The broker's one event loop: accept, read, route, write, time out.
//!
//! One thread owns everything: the mio `Poll`, the client and backend slabs,
//! the [`Hub`], the queue of events waiting for a backend, and the
//! deadlines. Nothing blocks; a connection request parks its client until a
//! backend answers or the deadline passes.
//!
//! Event-loop rules kept here:
//! - Sockets are registered once for READABLE | WRITABLE (edge-triggered);
//!   each connection keeps its own `readable` / `writable` bits, cleared
//!   only on `WouldBlock`.
//! - One connection gets a bounded amount of reading per turn
//!   ([`READ_BUDGET`]); one with more to read is revisited next turn.
//! - Writes happen at the end of a turn: every client or backend whose
//!   queue grew is flushed once, with vectored writes.
//! - An error on a connection closes that connection only. Removal from the
//!   slabs is deferred to the end of the turn, so a key is never reused
//!   while events for its old socket may still be in the batch.
//!
//! Tokens: 0 and 1 are the listeners, 2 the signal pipe; clients are
//! `CLIENT_BASE + key`, backends `BACKEND_BASE + key`.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use ahash::AHashMap;
use log::{debug, info, warn};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;
use slab::Slab;
use subtle::ConstantTimeEq;

use crate::backend::{self, Command, LineError, LineParser, Payload};
use crate::config::Config;
use crate::hub::Hub;
use crate::outq::{Flushed, OutQueue, Shared};
use crate::ws::encode;
use crate::ws::frame::{Event, FrameError, FrameReader};
use crate::ws::handshake;

const WS_LISTENER: Token = Token(0);
const BACKEND_LISTENER: Token = Token(1);
const SIGNALS: Token = Token(2);
const CLIENT_BASE: usize = 16;
const BACKEND_BASE: usize = usize::MAX / 2;

/// Bytes one connection may read per loop turn before others get a turn.
const READ_BUDGET: usize = 256 * 1024;
/// Size of one read from a socket.
const READ_CHUNK: usize = 64 * 1024;
/// Capacity a backend's output buffer keeps once drained.
const BACKEND_BUFFER_KEPT: usize = 4 * 1024 * 1024;
/// Steps of the ping sweep per `--ping-interval`.
const PING_SLICES: u32 = 16;
/// Pause before accepting again after an accept error (such as EMFILE).
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// Counters of what happened, logged at shutdown.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    /// Upgrades accepted by a backend.
    pub accepted: u64,
    /// Upgrades rejected by a backend (403).
    pub rejected: u64,
    /// Upgrades that got 503 (timeout, no backend, backend gone).
    pub unavailable: u64,
    /// Clients closed because their send queue passed `--max-outbound-bytes`.
    pub slow_consumers: u64,
    /// Clients closed for a protocol error (1002, 1007, 1009, ...).
    pub protocol_errors: u64,
    /// Clients closed for not answering a ping.
    pub ping_timeouts: u64,
    /// Events dropped because the no-backend queue was full.
    pub dropped_events: u64,
    /// Backend lines answered with an `error` line.
    pub bad_backend_lines: u64,
}

impl std::fmt::Display for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "accepted {}, rejected {}, unavailable {}, slow consumers {}, protocol errors {}, \
             ping timeouts {}, dropped events {}, refused backend lines {}",
            self.accepted,
            self.rejected,
            self.unavailable,
            self.slow_consumers,
            self.protocol_errors,
            self.ping_timeouts,
            self.dropped_events,
            self.bad_backend_lines
        )
    }
}

/// Start-up failures: each names the flag whose value could not be used.
#[derive(Debug)]
pub struct StartError(pub String);

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StartError {}

/// A (key, serial) pair naming one connection even after its key is reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ConnRef {
    key: usize,
    serial: u64,
}

/// How a client connection stands.
#[derive(Debug)]
enum Phase {
    /// Reading the HTTP upgrade request.
    Handshake,
    /// Waiting for a backend's answer to our `connection_request`.
    Pending {
        url: Box<str>,
        accept_key: Box<str>,
        backend: ConnRef,
    },
    /// Upgraded and registered in the hub.
    Open,
    /// Our last bytes are queued; the socket closes once they are written
    /// (and, when `await_peer`, once the client's close frame or EOF comes),
    /// or when the close timeout passes.
    Closing { await_peer: bool },
}

/// What a client's events carry: its identity, serialised once.
#[derive(Debug)]
struct ClientContext {
    json: Box<[u8]>,
}

/// One WebSocket client connection.
#[derive(Debug)]
struct Client {
    sock: TcpStream,
    serial: u64,
    peer: SocketAddr,
    phase: Phase,
    /// Bytes read but not yet consumed (a partial request head or frame).
    inbuf: Vec<u8>,
    reader: FrameReader,
    outq: OutQueue,
    readable: bool,
    writable: bool,
    /// The peer closed its side or the socket failed: read to the end
    /// rather than trusting a short read to mean "drained".
    hup: bool,
    /// Listed in `Server::dirty_clients` this turn.
    dirty: bool,
    /// Set once the client is accepted.
    context: Option<ClientContext>,
    /// The backend that gets this client's events while it lives.
    backend: Option<ConnRef>,
    /// Reading stopped until the backend's buffer drains.
    paused: bool,
    /// A frame arrived since the last ping was sent.
    alive: bool,
    /// A ping was sent and its deadline has not been checked yet.
    awaiting_pong: bool,
}

/// One application backend connection.
#[derive(Debug)]
struct Backend {
    sock: TcpStream,
    serial: u64,
    peer: SocketAddr,
    inbuf: Vec<u8>,
    out: Vec<u8>,
    out_pos: usize,
    readable: bool,
    writable: bool,
    /// As for clients: the peer closed or the socket failed.
    hup: bool,
    dirty: bool,
    closing: bool,
    /// Clients whose reading stopped because this backend's buffer passed
    /// `--max-backend-buffer`; resumed when it drains to half of that.
    paused: Vec<ConnRef>,
    /// Presented the backend token (always true without one); only then
    /// does it take part in routing.
    authenticated: bool,
}

/// Who a backend message goes to.
#[derive(Debug, Clone, Copy)]
enum Audience<'a> {
    /// Every open client.
    All,
    /// The members of one room.
    Room(&'a str),
    /// Every connection of one client id.
    ClientId(&'a str),
}

/// What a connect-timeout deadline waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    /// The complete upgrade request, counted from the TCP accept.
    Request,
    /// The backend's answer to the connection request.
    Answer,
}

/// How to end a client connection.
#[derive(Debug, Clone, Copy)]
enum Ending {
    /// Send an HTTP error status (before any upgrade) and close.
    Http(u16, &'static str, &'static str),
    /// Close once what is already queued is written.
    Flush,
    /// Send a close frame; wait for the client's close when `await_peer`.
    Close {
        code: u16,
        reason: &'static str,
        await_peer: bool,
    },
    /// Answer the client's close frame (echoing its code) and close.
    Echo(Option<u16>),
    /// The socket is gone (EOF, reset, error): drop it now.
    Drop,
}

/// The broker.
pub struct Server {
    config: Config,
    poll: Poll,
    ws_listener: Option<TcpListener>,
    backend_listener: Option<TcpListener>,
    ws_addr: SocketAddr,
    backend_addr: SocketAddr,
    signals: Signals,
    clients: Slab<Client>,
    backends: Slab<Backend>,
    hub: Hub,
    /// Connection requests waiting for an answer, by request serial.
    pending: AHashMap<u64, usize>,
    /// Backends that take events, in round-robin order.
    live_backends: Vec<usize>,
    next_backend: usize,
    /// Events waiting for a backend to connect (bounded by `--queue-size`).
    queue: VecDeque<Vec<u8>>,
    /// Connect-timeout deadlines, in order (the timeout is constant): for
    /// the upgrade request to arrive, then for the backend's answer.
    connect_deadlines: VecDeque<(Instant, ConnRef, Wait)>,
    /// Backends that must authenticate by then (`--connect-timeout`), in order.
    auth_deadlines: VecDeque<(Instant, ConnRef)>,
    /// Next step of the ping sweep, which walks the open clients a slice at
    /// a time so each is pinged about once per `--ping-interval` (no timer
    /// per connection, so churn leaves nothing behind).
    next_ping_sweep: Instant,
    /// Where the ping sweep resumes in the hub's list of open clients.
    ping_cursor: usize,
    /// When each pinged client must have shown a sign of life, in order.
    pong_due: VecDeque<(Instant, ConnRef)>,
    /// `--max-connections`, lowered to what the open-file limit allows.
    max_connections: usize,
    /// Close-timeout deadlines, in order.
    close_deadlines: VecDeque<(Instant, ConnRef)>,
    next_heartbeat: Instant,
    next_serial: u64,
    scratch: Vec<u8>,
    line_parser: LineParser,
    dirty_clients: Vec<usize>,
    dirty_backends: Vec<usize>,
    /// Clients with unread input left after their turn's budget.
    read_again: Vec<usize>,
    /// Backends with unread input left after their turn's budget.
    backend_read_again: Vec<usize>,
    /// Keys to remove from the slabs at the end of the turn.
    dead_clients: Vec<usize>,
    dead_backends: Vec<usize>,
    shutdown_deadline: Option<Instant>,
    /// When to retry accepting after an accept error.
    accept_retry: Option<Instant>,
    /// Accepting fails (warned once per shortage, not at every retry).
    accept_failing: bool,
    /// When a dropped event was last logged.
    drops_warned_at: Option<Instant>,
    /// Drops since that log line.
    drops_unreported: u64,
    /// The ping frame every client gets, encoded once.
    ping_frame: Shared,
    stats: Stats,
}

fn bind(addr: SocketAddr, flag: &str) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr).map_err(|e| StartError(format!("{flag}: cannot listen on {addr}: {e}")))
}

impl Server {
    /// Binds both ports and prepares the loop; nothing is served until [`run`](Self::run).
    pub fn bind(config: Config) -> Result<Server, StartError> {
        let poll = Poll::new().map_err(|e| StartError(format!("cannot create the poller: {e}")))?;
        let mut ws_listener = bind(
            SocketAddr::new(config.host, config.ws_port),
            config.ws_port_source,
        )?;
        let mut backend_listener = bind(
            SocketAddr::new(config.backend_host, config.tcp_port),
            config.tcp_port_source,
        )?;
        let local = |l: &TcpListener| {
            l.local_addr()
                .map_err(|e| StartError(format!("cannot read a listener's address: {e}")))
        };
        let ws_addr = local(&ws_listener)?;
        let backend_addr = local(&backend_listener)?;
        let mut signals = Signals::new([SIGINT, SIGTERM])
            .map_err(|e| StartError(format!("cannot install signal handlers: {e}")))?;
        let registry = poll.registry();
        let register_err =
            |e: io::Error| StartError(format!("cannot register with the poller: {e}"));
        registry
            .register(&mut ws_listener, WS_LISTENER, Interest::READABLE)
            .map_err(register_err)?;
        registry
            .register(&mut backend_listener, BACKEND_LISTENER, Interest::READABLE)
            .map_err(register_err)?;
        registry
            .register(&mut signals, SIGNALS, Interest::READABLE)
            .map_err(register_err)?;
        let now = Instant::now();
        let max_connections = match fd_limit() {
            // Keep a few descriptors for listeners, backends and logging.
            Some(fds) if fds.saturating_sub(64) < config.max_connections as u64 => {
                let cap = fds.saturating_sub(64).max(1) as usize;
                warn!(
                    "--max-connections {} lowered to {cap}: the open-file limit is {fds}",
                    config.max_connections
                );
                cap
            }
            _ => config.max_connections,
        };
        if config.backend_token.is_none() && !config.backend_host.is_loopback() {
            warn!(
                "the backend port listens on {} without --backend-token: anyone who can reach it can \
                 accept connections and message every client",
                config.backend_host
            );
        }
        let ping_step = config.ping_interval / PING_SLICES;
        Ok(Server {
            max_connections,
            next_heartbeat: now + config.heartbeat_interval,
            config,
            poll,
            ws_listener: Some(ws_listener),
            backend_listener: Some(backend_listener),
            ws_addr,
            backend_addr,
            signals,
            clients: Slab::new(),
            backends: Slab::new(),
            hub: Hub::new(),
            pending: AHashMap::new(),
            live_backends: Vec::new(),
            next_backend: 0,
            queue: VecDeque::new(),
            connect_deadlines: VecDeque::new(),
            auth_deadlines: VecDeque::new(),
            next_ping_sweep: now + ping_step,
            ping_cursor: 0,
            pong_due: VecDeque::new(),
            close_deadlines: VecDeque::new(),
            next_serial: 1,
            scratch: vec![0; READ_CHUNK],
            line_parser: LineParser::new(),
            dirty_clients: Vec::new(),
            dirty_backends: Vec::new(),
            read_again: Vec::new(),
            backend_read_again: Vec::new(),
            dead_clients: Vec::new(),
            dead_backends: Vec::new(),
            shutdown_deadline: None,
            accept_retry: None,
            accept_failing: false,
            drops_warned_at: None,
            drops_unreported: 0,
            ping_frame: encode::ping(b""),
            stats: Stats::default(),
        })
    }

    /// The bound WebSocket address (the real port when `--ws-port 0`).
    pub fn ws_addr(&self) -> SocketAddr {
        self.ws_addr
    }

    /// The bound backend address.
    pub fn backend_addr(&self) -> SocketAddr {
        self.backend_addr
    }

    /// Serves until SIGINT or SIGTERM, then drains and returns the counters.
    /// Only a failure of the poller itself is an error.
    pub fn run(mut self) -> io::Result<Stats> {
        info!(
            "listening websocket={} backend={}",
            self.ws_addr, self.backend_addr
        );
        let mut events = Events::with_capacity(1024);
        loop {
            let timeout = self.poll_timeout();
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            for event in events.iter() {
                match event.token() {
                    WS_LISTENER => self.accept_clients(),
                    BACKEND_LISTENER => self.accept_backends(),
                    SIGNALS => self.on_signal(),
                    Token(t) if t >= BACKEND_BASE => {
                        let key = t - BACKEND_BASE;
                        if let Some(b) = self.backends.get_mut(key) {
                            b.readable |= event.is_readable() || event.is_read_closed();
                            b.hup |= event.is_read_closed() || event.is_error();
                            if event.is_writable() {
                                b.writable = true;
                                self.mark_backend_dirty(key);
                            }
                            self.backend_read(key);
                        }
                    }
                    Token(t) => {
                        let Some(key) = t.checked_sub(CLIENT_BASE) else {
                            continue;
                        };
                        if let Some(c) = self.clients.get_mut(key) {
                            c.readable |=
                                event.is_readable() || event.is_read_closed() || event.is_error();
                            c.hup |= event.is_read_closed() || event.is_error();
                            if event.is_writable() {
                                c.writable = true;
                                self.mark_client_dirty(key);
                            }
                            self.client_read(key);
                        }
                    }
                }
            }
            for key in std::mem::take(&mut self.backend_read_again) {
                self.backend_read(key);
            }
            for key in std::mem::take(&mut self.read_again) {
                self.client_read(key);
            }
            self.fire_deadlines(Instant::now());
            self.flush_all();
            self.reap();
            if let Some(deadline) = self.shutdown_deadline {
                let drained = self.clients.is_empty()
                    && self.backends.iter().all(|(_, b)| b.out_pos == b.out.len());
                if drained || Instant::now() >= deadline {
                    info!(
                        "stopped: {} clients still open at exit; {}",
                        self.clients.len(),
                        self.stats
                    );
                    return Ok(self.stats);
                }
            }
        }
    }

    fn poll_timeout(&self) -> Option<Duration> {
        if !self.read_again.is_empty()
            || !self.backend_read_again.is_empty()
            || !self.dirty_clients.is_empty()
            || !self.dirty_backends.is_empty()
        {
            return Some(Duration::ZERO);
        }
        let mut next = self.next_heartbeat;
        for d in [
            self.connect_deadlines.front().map(|e| e.0),
            self.auth_deadlines.front().map(|e| e.0),
            Some(self.next_ping_sweep),
            self.pong_due.front().map(|e| e.0),
        ]
        .into_iter()
        .flatten()
        {
            next = next.min(d);
        }
        if let Some((d, _)) = self.close_deadlines.front() {
            next = next.min(*d);
        }
        if let Some(d) = self.shutdown_deadline {
            next = next.min(d);
        }
        if let Some(d) = self.accept_retry {
            next = next.min(d);
        }
        // Round up so a deadline is past when we wake.
        Some(next.saturating_duration_since(Instant::now()) + Duration::from_millis(1))
    }

    fn serial(&mut self) -> u64 {
        self.next_serial += 1;
        self.next_serial
    }

    // ---------------------------------------------------------------- accept

    /// Accepts the next connection on the WebSocket (`backend == false`) or
    /// backend listener: `None` when there is none (or accepting failed, in
    /// which case a retry is scheduled). Sockets get TCP_NODELAY: the loop
    /// already batches its writes per turn.
    fn accept_next(&mut self, backend: bool) -> Option<(TcpStream, SocketAddr)> {
        loop {
            let listener = if backend {
                self.backend_listener.as_ref()
            } else {
                self.ws_listener.as_ref()
            }?;
            match listener.accept() {
                Ok((sock, peer)) => {
                    self.accept_succeeded();
                    let _ = sock.set_nodelay(true);
                    return Some((sock, peer));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.accept_failed(e);
                    return None;
                }
            }
        }
    }

    fn accept_clients(&mut self) {
        while let Some((mut sock, peer)) = self.accept_next(false) {
            let serial = self.serial();
            let entry = self.clients.vacant_entry();
            let key = entry.key();
            let token = Token(CLIENT_BASE + key);
            if let Err(e) = self.poll.registry().register(
                &mut sock,
                token,
                Interest::READABLE | Interest::WRITABLE,
            ) {
                warn!("cannot register client {peer}: {e}");
                continue;
            }
            entry.insert(Client {
                sock,
                serial,
                peer,
                phase: Phase::Handshake,
                inbuf: Vec::new(),
                reader: FrameReader::new(self.config.max_message_size, self.config.max_fragments),
                outq: OutQueue::new(),
                readable: false,
                writable: false,
                hup: false,
                dirty: false,
                context: None,
                backend: None,
                paused: false,
                alive: true,
                awaiting_pong: false,
            });
            self.connect_deadlines.push_back((
                Instant::now() + self.config.connect_timeout,
                ConnRef { key, serial },
                Wait::Request,
            ));
            debug!("client {peer} connected (key {key})");
        }
    }

    /// An accept error other than WouldBlock. Out of descriptors (EMFILE,
    /// ENFILE) the pending connections stay in the listen backlog and
    /// accepting is retried shortly, instead of spinning on the error.
    fn accept_failed(&mut self, e: io::Error) {
        let now = Instant::now();
        let out_of_fds = matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE));
        if !self.accept_failing {
            self.accept_failing = true;
            if out_of_fds {
                warn!(
                    "cannot accept: out of file descriptors ({e}); {} clients and {} backends open, retrying in {} ms",
                    self.clients.len(),
                    self.backends.len(),
                    ACCEPT_RETRY.as_millis()
                );
            } else {
                warn!("cannot accept a connection: {e}");
            }
        }
        self.accept_retry = Some(now + ACCEPT_RETRY);
    }

    /// A connection was accepted: a shortage reported by `accept_failed` is over.
    fn accept_succeeded(&mut self) {
        if self.accept_failing {
            self.accept_failing = false;
            info!("accepting connections again");
        }
    }

    fn accept_backends(&mut self) {
        while let Some((mut sock, peer)) = self.accept_next(true) {
            let serial = self.serial();
            let entry = self.backends.vacant_entry();
            let key = entry.key();
            if let Err(e) = self.poll.registry().register(
                &mut sock,
                Token(BACKEND_BASE + key),
                Interest::READABLE | Interest::WRITABLE,
            ) {
                warn!("cannot register backend {peer}: {e}");
                continue;
            }
            let authenticated = self.config.backend_token.is_none();
            entry.insert(Backend {
                sock,
                serial,
                peer,
                inbuf: Vec::new(),
                out: Vec::new(),
                out_pos: 0,
                readable: false,
                writable: false,
                hup: false,
                dirty: false,
                closing: false,
                paused: Vec::new(),
                authenticated,
            });
            if authenticated {
                self.backend_ready(key);
            } else {
                info!("backend {peer} connected; waiting for its auth line");
                self.auth_deadlines.push_back((
                    Instant::now() + self.config.connect_timeout,
                    ConnRef { key, serial },
                ));
            }
        }
    }

    /// A backend joins the routing: it takes the events that waited for a
    /// backend (first, in order) and its share of new connection requests.
    fn backend_ready(&mut self, key: usize) {
        let Some(b) = self.backends.get_mut(key) else {
            return;
        };
        let flushed = self.queue.len();
        for line in self.queue.drain(..) {
            b.out.extend_from_slice(&line);
        }
        self.queue = VecDeque::new();
        if self.drops_unreported > 0 {
            warn!(
                "no backend was connected: {} more events dropped ({} dropped so far)",
                self.drops_unreported, self.stats.dropped_events
            );
            self.drops_unreported = 0;
        }
        self.drops_warned_at = None;
        let peer = b.peer;
        self.live_backends.push(key);
        self.mark_backend_dirty(key);
        info!(
            "backend {peer} connected ({} connected); {flushed} queued events sent to it",
            self.live_backends.len()
        );
    }

    /// The first line of a backend when `--backend-token` is set.
    fn authenticate(&mut self, key: usize, command: Option<Command<'_>>) {
        let Some(token) = self.config.backend_token.as_deref() else {
            return;
        };
        let presented = match command {
            Some(Command::Auth { token }) => Some(token),
            _ => None,
        };
        let good = presented.is_some_and(|p| bool::from(p.as_bytes().ct_eq(token.as_bytes())));
        let Some(b) = self.backends.get_mut(key) else {
            return;
        };
        if good {
            b.authenticated = true;
            self.backend_ready(key);
            return;
        }
        warn!(
            "backend {} refused: its first line was not a valid auth line",
            b.peer
        );
        self.refuse_backend(key, "authentication failed");
    }

    /// Tells an unauthenticated backend why it is refused, then closes it.
    fn refuse_backend(&mut self, key: usize, why: &str) {
        let Some(b) = self.backends.get_mut(key) else {
            return;
        };
        let mut line = Vec::new();
        backend::push_line_error(
            &mut line,
            None,
            &format!(
                "{why}: the first line must be \
                 {{\"action\":\"auth\",\"params\":{{\"token\":\"<the broker's --backend-token>\"}}}}"
            ),
        );
        // Best effort: nothing else was ever written to this socket.
        let _ = b.sock.write(&line);
        self.end_backend(key);
    }

    // ---------------------------------------------------------------- clients

    fn mark_client_dirty(&mut self, key: usize) {
        if let Some(c) = self.clients.get_mut(key) {
            if !c.dirty {
                c.dirty = true;
                self.dirty_clients.push(key);
            }
        }
    }

    /// Queues `frame` on client `key`, to be written at the end of the turn
    /// (where the `--max-outbound-bytes` bound is checked).
    fn enqueue(&mut self, key: usize, frame: Shared) {
        let Some(c) = self.clients.get_mut(key) else {
            return;
        };
        c.outq.push(frame);
        if !c.dirty {
            c.dirty = true;
            self.dirty_clients.push(key);
        }
    }

    fn slow_consumer(&mut self, key: usize) {
        self.stats.slow_consumers += 1;
        if let Some(c) = self.clients.get_mut(key) {
            info!(
                "client {} closed: slow consumer, {} bytes queued (see --max-outbound-bytes)",
                c.peer,
                c.outq.bytes()
            );
            c.outq.discard_unstarted();
        }
        self.end_client(
            key,
            Ending::Close {
                code: 1008,
                reason: "slow consumer",
                await_peer: false,
            },
        );
    }

    fn client_read(&mut self, key: usize) {
        let mut budget = READ_BUDGET;
        loop {
            let Some(c) = self.clients.get_mut(key) else {
                return;
            };
            if !c.readable || c.paused || matches!(c.phase, Phase::Pending { .. }) {
                return;
            }
            if budget == 0 {
                self.read_again.push(key);
                return;
            }
            if let (Phase::Open, Some(r)) = (&c.phase, c.backend) {
                let limit = self.config.max_backend_buffer;
                if let Some(b) = self.backends.get_mut(r.key) {
                    if b.serial == r.serial && !b.closing && b.out.len() - b.out_pos > limit {
                        // TCP backpressure: leave the client's bytes in its
                        // socket until the backend catches up.
                        if b.paused.is_empty() {
                            warn!(
                                "backend {} is {} bytes behind (see --max-backend-buffer): \
                                 reading from its clients paused until it catches up",
                                b.peer,
                                b.out.len() - b.out_pos
                            );
                        }
                        c.paused = true;
                        b.paused.push(ConnRef {
                            key,
                            serial: c.serial,
                        });
                        return;
                    }
                }
            }
            let mut scratch = std::mem::take(&mut self.scratch);
            let result = c.sock.read(&mut scratch);
            let n = match result {
                Ok(0) => {
                    self.scratch = scratch;
                    self.client_eof(key);
                    return;
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.scratch = scratch;
                    c.readable = false;
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                    self.scratch = scratch;
                    continue;
                }
                Err(e) => {
                    self.scratch = scratch;
                    debug!("client {} read error: {e}", c.peer);
                    self.end_client(key, Ending::Drop);
                    return;
                }
            };
            budget = budget.saturating_sub(n);
            if c.inbuf.is_empty() {
                let used = self.consume_client_bytes(key, &mut scratch[..n]);
                if used < n {
                    if let Some(c) = self.clients.get_mut(key) {
                        c.inbuf.extend_from_slice(&scratch[used..n]);
                    }
                }
            } else {
                c.inbuf.extend_from_slice(&scratch[..n]);
                self.consume_client_inbuf(key);
            }
            self.scratch = scratch;
            if n < READ_CHUNK {
                // A short read emptied the socket: the next bytes bring a
                // new edge, so skip the read that would only say WouldBlock
                // (unless the peer hung up, whose EOF must still be read).
                if let Some(c) = self.clients.get_mut(key).filter(|c| !c.hup) {
                    c.readable = false;
                }
            }
        }
    }

    /// Processes the bytes a client has buffered (for example frames sent
    /// right behind the upgrade request, while it waited for the backend).
    fn consume_client_inbuf(&mut self, key: usize) {
        let Some(c) = self.clients.get_mut(key) else {
            return;
        };
        if c.inbuf.is_empty() {
            return;
        }
        let mut inbuf = std::mem::take(&mut c.inbuf);
        let used = self.consume_client_bytes(key, &mut inbuf);
        inbuf.drain(..used);
        if let Some(c) = self.clients.get_mut(key) {
            if inbuf.is_empty() {
                inbuf = Vec::new();
            }
            c.inbuf = inbuf;
        }
    }

    /// Feeds bytes to the client's state machine; returns how many were used.
    fn consume_client_bytes(&mut self, key: usize, bytes: &mut [u8]) -> usize {
        let Some(c) = self.clients.get_mut(key) else {
            return bytes.len();
        };
        match c.phase {
            Phase::Handshake => self.handshake_bytes(key, bytes),
            Phase::Pending { .. } => 0,
            Phase::Open | Phase::Closing { await_peer: true } => {
                let mut reader = std::mem::replace(
                    &mut c.reader,
                    FrameReader::new(self.config.max_message_size, self.config.max_fragments),
                );
                let result = reader.read(bytes, |event| self.client_event(key, event));
                if let Some(c) = self.clients.get_mut(key) {
                    c.reader = reader;
                }
                match result {
                    Ok(used) => used,
                    Err(e) => {
                        self.protocol_error(key, e);
                        bytes.len()
                    }
                }
            }
            Phase::Closing { await_peer: false } => bytes.len(),
        }
    }

    fn protocol_error(&mut self, key: usize, e: FrameError) {
        let Some(c) = self.clients.get(key) else {
            return;
        };
        if let Phase::Closing { .. } = c.phase {
            self.end_client(key, Ending::Drop);
            return;
        }
        self.stats.protocol_errors += 1;
        debug!("client {} protocol error: {}", c.peer, e.reason());
        self.end_client(
            key,
            Ending::Close {
                code: e.close_code(),
                reason: e.reason(),
                await_peer: false,
            },
        );
    }

    /// One frame-level event from an open (or closing) client; returns
    /// whether to keep reading.
    fn client_event(&mut self, key: usize, event: Event<'_>) -> bool {
        let Some(c) = self.clients.get_mut(key) else {
            return false;
        };
        c.alive = true;
        if let Phase::Closing { .. } = c.phase {
            // After our close frame only the client's close matters.
            if let Event::Close(..) = event {
                self.end_client(key, Ending::Drop);
                return false;
            }
            return true;
        }
        match event {
            Event::Text(text) => {
                self.route_client_event(key, |out, ctx| backend::push_new_message(out, text, ctx));
                true
            }
            Event::Binary(bytes) => {
                self.route_client_event(key, |out, ctx| {
                    backend::push_new_binary_message(out, bytes, ctx)
                });
                true
            }
            Event::Ping(payload) => {
                let pong = encode::pong(payload);
                self.enqueue(key, pong);
                true
            }
            Event::Pong => true,
            Event::Close(code, _) => {
                self.end_client(key, Ending::Echo(code));
                false
            }
        }
    }

    fn client_eof(&mut self, key: usize) {
        if let Some(c) = self.clients.get(key) {
            debug!("client {} closed its connection", c.peer);
        }
        self.end_client(key, Ending::Drop);
    }

    fn handshake_bytes(&mut self, key: usize, bytes: &mut [u8]) -> usize {
        let max_headers = self.config.max_headers;
        let max_size = self.config.max_request_size;
        // `bytes` holds the whole head received so far (a head spanning
        // reads is accumulated in the client's inbuf and parsed from there).
        match handshake::parse(bytes, max_headers) {
            Ok(None) => {
                if let Err(e) = handshake::check_size(bytes.len(), max_size) {
                    self.refuse_handshake(key, e);
                    return bytes.len();
                }
                0
            }
            Err(e) => {
                self.refuse_handshake(key, e);
                bytes.len()
            }
            Ok(Some((request, head_len))) => {
                if head_len > max_size {
                    self.refuse_handshake(
                        key,
                        handshake::HandshakeError::TooLarge(
                            "request head too large (see --max-request-size)",
                        ),
                    );
                    return bytes.len();
                }
                self.connection_request(key, request);
                head_len
            }
        }
    }

    fn refuse_handshake(&mut self, key: usize, e: handshake::HandshakeError) {
        if let Some(c) = self.clients.get(key) {
            debug!("client {} handshake refused: {e:?}", c.peer);
        }
        if let Some(c) = self.clients.get_mut(key) {
            c.outq.push(Rc::from(e.response()));
        }
        self.end_client(key, Ending::Flush);
    }

    /// Sends `connection_request` to the next backend and parks the client.
    fn connection_request(&mut self, key: usize, request: handshake::UpgradeRequest) {
        if let (Some(allowed), Some(origin)) = (&self.config.allowed_origins, &request.origin) {
            let origin = origin.trim().trim_end_matches('/').to_ascii_lowercase();
            if !allowed.contains(&origin) {
                self.stats.rejected += 1;
                debug!("upgrade from origin {origin} refused (see --allowed-origins)");
                self.end_client(
                    key,
                    Ending::Http(
                        403,
                        "Forbidden",
                        "origin not allowed (see --allowed-origins)",
                    ),
                );
                return;
            }
        }
        let refusal = if self.shutdown_deadline.is_some() {
            Some("server shutting down")
        } else if self.clients.len() > self.max_connections {
            Some("server at its connection limit (see --max-connections)")
        } else if self.pending.len() >= self.config.max_pending_requests {
            Some("too many connection requests waiting (see --max-pending-requests)")
        } else {
            None
        };
        if let Some(why) = refusal {
            self.stats.unavailable += 1;
            debug!("upgrade refused with 503: {why}");
            self.end_client(key, Ending::Http(503, "Service Unavailable", why));
            return;
        }
        let Some(bkey) = self.pick_backend() else {
            self.stats.unavailable += 1;
            self.end_client(
                key,
                Ending::Http(503, "Service Unavailable", "no backend connected"),
            );
            return;
        };
        let Some(c) = self.clients.get_mut(key) else {
            return;
        };
        let serial = c.serial;
        let remote = c.peer.to_string();
        let Some(b) = self.backends.get_mut(bkey) else {
            return;
        };
        let backend = ConnRef {
            key: bkey,
            serial: b.serial,
        };
        backend::push_connection_request(
            &mut b.out,
            &serial.to_string(),
            &request.headers_json,
            &request.url,
            &remote,
        );
        c.phase = Phase::Pending {
            url: request.url.into_boxed_str(),
            accept_key: request.accept_key.into_boxed_str(),
            backend,
        };
        c.backend = Some(backend);
        self.pending.insert(serial, key);
        self.connect_deadlines.push_back((
            Instant::now() + self.config.connect_timeout,
            ConnRef { key, serial },
            Wait::Answer,
        ));
        self.mark_backend_dirty(bkey);
    }

    /// Ends a client connection in the given way. Leaving the hub and the
    /// `disconnected` event happen here, once; the socket itself is closed
    /// when its last bytes are out (or at once for [`Ending::Drop`]).
    fn end_client(&mut self, key: usize, ending: Ending) {
        let Some(c) = self.clients.get_mut(key) else {
            return;
        };
        let was_open = matches!(c.phase, Phase::Open);
        if let Phase::Pending { .. } = c.phase {
            self.pending.remove(&c.serial);
        }
        let already_closing = matches!(c.phase, Phase::Closing { .. });
        let await_peer = match ending {
            Ending::Drop => {
                self.dead_clients.push(key);
                c.phase = Phase::Closing { await_peer: false };
                c.readable = false;
                None
            }
            _ if already_closing => None,
            Ending::Http(status, text, reason) => {
                let reply = handshake::http_response(status, text, reason, "");
                c.outq.push(Rc::from(reply));
                Some(false)
            }
            Ending::Flush => Some(false),
            Ending::Close {
                code,
                reason,
                await_peer,
            } => {
                c.outq.push(encode::close(Some(code), reason));
                Some(await_peer)
            }
            Ending::Echo(code) => {
                c.outq.push(encode::close(code, ""));
                Some(false)
            }
        };
        if let Some(await_peer) = await_peer {
            c.phase = Phase::Closing { await_peer };
            let serial = c.serial;
            if !c.dirty {
                c.dirty = true;
                self.dirty_clients.push(key);
            }
            self.close_deadlines.push_back((
                Instant::now() + self.config.close_timeout,
                ConnRef { key, serial },
            ));
        }
        if was_open {
            self.hub.leave(key);
            self.route_client_event(key, backend::push_disconnected);
        }
    }

    // ---------------------------------------------------------------- routing

    fn pick_backend(&mut self) -> Option<usize> {
        if self.live_backends.is_empty() {
            return None;
        }
        let i = self.next_backend % self.live_backends.len();
        self.next_backend = self.next_backend.wrapping_add(1);
        Some(self.live_backends[i])
    }

    fn backend_alive(&self, r: ConnRef) -> bool {
        self.backends
            .get(r.key)
            .is_some_and(|b| b.serial == r.serial && !b.closing)
    }

    /// Appends one event of client `key` (built by `write` from the
    /// client's context) to its backend, choosing one if it has none or
    /// its backend is gone; with no backend connected, to the queue.
    fn route_client_event(&mut self, key: usize, write: impl FnOnce(&mut Vec<u8>, &[u8])) {
        let Some(c) = self.clients.get(key) else {
            return;
        };
        if c.context.is_none() {
            return;
        }
        let current = c.backend.filter(|r| self.backend_alive(*r));
        let target = match current {
            Some(r) => Some(r),
            None => self.pick_backend().map(|bkey| ConnRef {
                key: bkey,
                serial: self.backends[bkey].serial,
            }),
        };
        let Some(c) = self.clients.get_mut(key) else {
            return;
        };
        let Some(context) = c.context.as_ref() else {
            return;
        };
        match target {
            Some(r) => {
                c.backend = Some(r);
                if let Some(b) = self.backends.get_mut(r.key) {
                    write(&mut b.out, &context.json);
                    if !b.dirty {
                        b.dirty = true;
                        self.dirty_backends.push(r.key);
                    }
                }
            }
            None => {
                c.backend = None;
                if self.config.queue_size == 0 {
                    self.event_dropped("--queue-size is 0, event dropped");
                    return;
                }
                let mut line = Vec::with_capacity(128);
                write(&mut line, &context.json);
                if self.queue.len() >= self.config.queue_size {
                    self.queue.pop_front();
                    self.event_dropped("event queue full (see --queue-size), oldest event dropped");
                }
                self.queue.push_back(line);
            }
        }
    }

    /// Counts a dropped event and says so at warn: at once for the first of
    /// a run, then at most once a second (a long outage must not flood the
    /// log); `backend_ready` reports the rest when the outage ends.
    fn event_dropped(&mut self, what: &str) {
        self.stats.dropped_events += 1;
        self.drops_unreported += 1;
        let now = Instant::now();
        if self
            .drops_warned_at
            .is_none_or(|at| now.duration_since(at) >= Duration::from_secs(1))
        {
            warn!(
                "no backend connected: {what} ({} dropped so far)",
                self.stats.dropped_events
            );
            self.drops_warned_at = Some(now);
            self.drops_unreported = 0;
        }
    }

    // ---------------------------------------------------------------- backends

    fn mark_backend_dirty(&mut self, key: usize) {
        if let Some(b) = self.backends.get_mut(key) {
            if !b.dirty {
                b.dirty = true;
                self.dirty_backends.push(key);
            }
        }
    }

    fn backend_read(&mut self, key: usize) {
        let mut budget = READ_BUDGET * 4;
        loop {
            let Some(b) = self.backends.get_mut(key) else {
                return;
            };
            if !b.readable || b.closing {
                return;
            }
            if budget == 0 {
                self.backend_read_again.push(key);
                return;
            }
            let mut scratch = std::mem::take(&mut self.scratch);
            let n = match b.sock.read(&mut scratch) {
                Ok(0) => {
                    info!("backend {} disconnected", b.peer);
                    self.scratch = scratch;
                    self.end_backend(key);
                    return;
                }
                Ok(n) => n,
                Err(e) => {
                    match e.kind() {
                        io::ErrorKind::WouldBlock => b.readable = false,
                        io::ErrorKind::Interrupted => {}
                        _ => {
                            info!("backend {} disconnected: {e}", b.peer);
                            self.end_backend(key);
                        }
                    }
                    self.scratch = scratch;
                    continue;
                }
            };
            budget = budget.saturating_sub(n);
            if b.inbuf.is_empty() {
                // Common case: whole lines in this read; only a partial
                // last line is copied into the backend's own buffer.
                let used = self.backend_lines(key, &mut scratch[..n]);
                if let Some(b) = self.backends.get_mut(key) {
                    b.inbuf.extend_from_slice(&scratch[used..n]);
                }
            } else {
                b.inbuf.extend_from_slice(&scratch[..n]);
                let mut inbuf = std::mem::take(&mut b.inbuf);
                let used = self.backend_lines(key, &mut inbuf);
                inbuf.drain(..used);
                if let Some(b) = self.backends.get_mut(key) {
                    b.inbuf = if inbuf.is_empty() { Vec::new() } else { inbuf };
                }
            }
            self.scratch = scratch;
            if n < READ_CHUNK {
                // Drained, as for clients.
                if let Some(b) = self.backends.get_mut(key).filter(|b| !b.hup) {
                    b.readable = false;
                }
            }
            if self
                .backends
                .get(key)
                .is_some_and(|b| b.inbuf.len() > self.config.max_line_size)
            {
                self.line_too_long(key);
                return;
            }
        }
    }

    fn line_too_long(&mut self, key: usize) {
        if let Some(b) = self.backends.get(key) {
            warn!(
                "backend {} closed: a line longer than {} bytes (see --max-line-size)",
                b.peer, self.config.max_line_size
            );
        }
        self.end_backend(key);
    }

    /// Carries out every complete line at the start of `buf`; returns the
    /// bytes consumed (everything up to the last newline).
    fn backend_lines(&mut self, key: usize, buf: &mut [u8]) -> usize {
        let mut parser = std::mem::take(&mut self.line_parser);
        let mut start = 0;
        let max_line = self.config.max_line_size;
        while let Some(nl) = memchr::memchr(b'\n', &buf[start..]) {
            if nl > max_line {
                self.line_too_long(key);
                break;
            }
            let line = trim_cr(&mut buf[start..start + nl]);
            start += nl + 1;
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            if self.backends.get(key).is_none_or(|b| b.closing) {
                break;
            }
            parser.parse(line, |line| self.backend_line(key, line));
        }
        self.line_parser = parser;
        start
    }

    fn backend_line(&mut self, key: usize, line: Result<Command<'_>, LineError<'_>>) {
        let authenticated = self.backends.get(key).is_some_and(|b| b.authenticated);
        if !authenticated {
            return self.authenticate(key, line.ok());
        }
        let command = match line {
            Ok(c) => c,
            Err(e) => return self.reply_line_error(key, e.request_id, &e.message),
        };
        match command {
            // Without a token, or once authenticated, an auth line is a no-op.
            Command::Auth { .. } => {}
            Command::Broadcast { message } => self.fan_out(Audience::All, &message),
            Command::MessageToRoom { room_id, message } => {
                self.fan_out(Audience::Room(&room_id), &message)
            }
            Command::MessageToConnection { conn_id, message } => {
                self.fan_out(Audience::ClientId(&conn_id), &message)
            }
            Command::Response {
                request_id,
                accepted,
                client_id,
                room_id,
                metadata,
            } => {
                let serial = request_id.parse::<u64>().ok();
                let Some(ckey) = serial.and_then(|s| self.pending.remove(&s)) else {
                    debug!("response for unknown or expired request {request_id}");
                    return;
                };
                if !accepted {
                    self.stats.rejected += 1;
                    self.end_client(
                        ckey,
                        Ending::Http(403, "Forbidden", "connection rejected by the application"),
                    );
                    return;
                }
                let Some(c) = self.clients.get_mut(ckey) else {
                    return;
                };
                let Phase::Pending {
                    url, accept_key, ..
                } = std::mem::replace(&mut c.phase, Phase::Open)
                else {
                    return;
                };
                let client_id = client_id
                    .map(|s| s.into_owned())
                    .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
                let room_id = room_id.map_or_else(|| url.to_string(), |s| s.into_owned());
                let json = backend::context_json(&client_id, &room_id, metadata);
                c.outq
                    .push(Rc::from(handshake::switching_protocols(&accept_key)));
                c.context = Some(ClientContext { json });

                c.backend = self.backends.get(key).map(|b| ConnRef {
                    key,
                    serial: b.serial,
                });
                self.stats.accepted += 1;
                debug!("client {} accepted as {client_id} in {room_id}", c.peer);
                self.hub.join(ckey, &client_id, &room_id);
                self.mark_client_dirty(ckey);
                self.route_client_event(ckey, backend::push_new_connection);
                // Frames the client sent right behind its request.
                self.consume_client_inbuf(ckey);
                self.read_again.push(ckey);
            }
        }
    }

    /// Encodes `message` once and queues that one buffer on every client
    /// of the audience.
    fn fan_out(&mut self, audience: Audience<'_>, message: &Payload<'_>) {
        let members = match audience {
            Audience::All => self.hub.all(),
            Audience::Room(room) => self.hub.room(room),
            Audience::ClientId(id) => self.hub.connections(id),
        };
        if members.is_empty() {
            return;
        }
        let frame = encode::message(message.as_bytes(), message.is_binary());
        for &key in members {
            let Some(c) = self.clients.get_mut(key) else {
                continue;
            };
            c.outq.push(frame.clone());
            if !c.dirty {
                c.dirty = true;
                self.dirty_clients.push(key);
            }
        }
    }

    fn reply_line_error(&mut self, key: usize, request_id: Option<&str>, error: &str) {
        self.stats.bad_backend_lines += 1;
        if let Some(b) = self.backends.get_mut(key) {
            warn!("backend {}: line refused: {error}", b.peer);
            backend::push_line_error(&mut b.out, request_id, error);
        }
        self.mark_backend_dirty(key);
    }

    /// A backend is gone (or must go): requests waiting on it get 503, its
    /// clients move to another backend with their next event.
    fn end_backend(&mut self, key: usize) {
        let Some(b) = self.backends.get_mut(key) else {
            return;
        };
        if b.closing {
            return;
        }
        b.closing = true;
        let gone = ConnRef {
            key,
            serial: b.serial,
        };
        let unsent = &b.out[b.out_pos..];
        if !unsent.is_empty() {
            let lost = memchr::memchr_iter(b'\n', unsent).count();
            warn!(
                "backend {} gone with {lost} events not yet written to it; they are lost",
                b.peer
            );
        }
        b.out_pos = b.out.len();
        let paused = std::mem::take(&mut b.paused);
        self.resume(paused);
        self.live_backends.retain(|&k| k != key);
        self.dead_backends.push(key);
        let orphans: Vec<usize> = self
            .pending
            .values()
            .copied()
            .filter(|&ckey| {
                self.clients.get(ckey).is_some_and(
                    |c| matches!(c.phase, Phase::Pending { backend, .. } if backend == gone),
                )
            })
            .collect();
        for ckey in orphans {
            self.fail_pending(ckey, "the backend handling the request disconnected");
        }
    }

    /// A connection request that will get no answer: 503 to the client and
    /// an `error` event to a backend, if one is connected.
    fn fail_pending(&mut self, key: usize, why: &'static str) {
        let Some(c) = self.clients.get(key) else {
            return;
        };
        let Phase::Pending { url, .. } = &c.phase else {
            return;
        };
        let context = backend::context_json("", url, None);
        let peer = c.peer;
        self.stats.unavailable += 1;
        debug!("connection request from {peer} failed: {why}");
        self.end_client(key, Ending::Http(503, "Service Unavailable", why));
        if let Some(bkey) = self.pick_backend() {
            if let Some(b) = self.backends.get_mut(bkey) {
                backend::push_client_error(
                    &mut b.out,
                    &context,
                    &format!("connection request from {peer} failed: {why}"),
                );
            }
            self.mark_backend_dirty(bkey);
        }
    }

    // ---------------------------------------------------------------- timers

    fn fire_deadlines(&mut self, now: Instant) {
        if self.accept_retry.is_some_and(|d| d <= now) {
            self.accept_retry = None;
            self.accept_clients();
            self.accept_backends();
        }
        while let Some(&(deadline, r, wait)) = self.connect_deadlines.front() {
            if deadline > now {
                break;
            }
            self.connect_deadlines.pop_front();
            let Some(c) = self.clients.get(r.key).filter(|c| c.serial == r.serial) else {
                continue;
            };
            match (wait, &c.phase) {
                (Wait::Answer, Phase::Pending { .. }) => {
                    self.fail_pending(r.key, "no answer from the backend within --connect-timeout")
                }
                (Wait::Request, Phase::Handshake) => {
                    debug!("client {} sent no complete upgrade request in time", c.peer);
                    self.end_client(
                        r.key,
                        Ending::Http(
                            408,
                            "Request Timeout",
                            "no complete upgrade request within --connect-timeout",
                        ),
                    );
                }
                _ => {}
            }
        }
        while let Some(&(deadline, r)) = self.auth_deadlines.front() {
            if deadline > now {
                break;
            }
            self.auth_deadlines.pop_front();
            let waiting = self
                .backends
                .get(r.key)
                .filter(|b| b.serial == r.serial && !b.authenticated);
            if let Some(b) = waiting {
                warn!(
                    "backend {} refused: no auth line within --connect-timeout",
                    b.peer
                );
                self.refuse_backend(r.key, "no auth line within --connect-timeout");
            }
        }
        if now >= self.next_ping_sweep {
            self.next_ping_sweep = now + self.config.ping_interval / PING_SLICES;
            self.ping_sweep(now);
        }
        while let Some(&(due, r)) = self.pong_due.front() {
            if due > now {
                break;
            }
            self.pong_due.pop_front();
            let Some(c) = self.clients.get_mut(r.key).filter(|c| c.serial == r.serial) else {
                continue;
            };
            if !matches!(c.phase, Phase::Open) {
                continue;
            }
            // A paused client's pong may sit unread in its socket: not its fault.
            if c.alive || c.paused {
                c.awaiting_pong = false;
            } else {
                debug!(
                    "client {} closed: no answer to a ping within --ping-timeout",
                    c.peer
                );
                self.stats.ping_timeouts += 1;
                self.end_client(
                    r.key,
                    Ending::Close {
                        code: 1001,
                        reason: "no answer to ping (see --ping-timeout)",
                        await_peer: false,
                    },
                );
            }
        }
        while let Some(&(deadline, r)) = self.close_deadlines.front() {
            if deadline > now {
                break;
            }
            self.close_deadlines.pop_front();
            if self
                .clients
                .get(r.key)
                .is_some_and(|c| c.serial == r.serial)
            {
                self.end_client(r.key, Ending::Drop);
            }
        }
        if now >= self.next_heartbeat {
            self.next_heartbeat = now + self.config.heartbeat_interval;
            for i in 0..self.live_backends.len() {
                let key = self.live_backends[i];
                if let Some(b) = self.backends.get_mut(key) {
                    backend::push_heartbeat(&mut b.out);
                }
                self.mark_backend_dirty(key);
            }
        }
    }

    /// One step of the ping sweep: the next slice of open clients, sized so
    /// the whole list is covered in `PING_SLICES` steps, gets a ping each.
    fn ping_sweep(&mut self, now: Instant) {
        let open = self.hub.all().len();
        if open == 0 {
            return;
        }
        let slice = open.div_ceil(PING_SLICES as usize);
        for _ in 0..slice {
            let all = self.hub.all();
            if all.is_empty() {
                break;
            }
            self.ping_cursor %= all.len();
            let key = all[self.ping_cursor];
            self.ping_cursor += 1;
            let Some(c) = self.clients.get_mut(key) else {
                continue;
            };
            if c.awaiting_pong || !matches!(c.phase, Phase::Open) {
                continue;
            }
            c.alive = false;
            c.awaiting_pong = true;
            let r = ConnRef {
                key,
                serial: c.serial,
            };
            self.pong_due.push_back((now + self.config.ping_timeout, r));
            self.enqueue(key, Rc::clone(&self.ping_frame));
        }
        shrink_idle(&mut self.pong_due);
        shrink_idle(&mut self.connect_deadlines);
        shrink_idle(&mut self.close_deadlines);
        shrink_idle(&mut self.auth_deadlines);
    }

    fn on_signal(&mut self) {
        let mut stop = false;
        for signal in self.signals.pending() {
            stop |= signal == SIGINT || signal == SIGTERM;
        }
        if !stop || self.shutdown_deadline.is_some() {
            return;
        }
        info!(
            "shutting down: closing {} clients (bounded by --close-timeout)",
            self.clients.len()
        );
        self.shutdown_deadline = Some(Instant::now() + self.config.close_timeout);
        for mut listener in [self.ws_listener.take(), self.backend_listener.take()]
            .into_iter()
            .flatten()
        {
            let _ = self.poll.registry().deregister(&mut listener);
        }
        let keys: Vec<usize> = self.clients.iter().map(|(k, _)| k).collect();
        for key in keys {
            match self.clients[key].phase {
                Phase::Open => self.end_client(
                    key,
                    Ending::Close {
                        code: 1001,
                        reason: "server shutting down",
                        await_peer: true,
                    },
                ),
                Phase::Handshake | Phase::Pending { .. } => self.end_client(
                    key,
                    Ending::Http(503, "Service Unavailable", "server shutting down"),
                ),
                Phase::Closing { .. } => {}
            }
        }
    }

    // ---------------------------------------------------------------- writes

    /// Writes every queue that grew this turn: backends first (a reply
    /// they are waiting for is often what brings the next burst), then
    /// clients.
    fn flush_all(&mut self) {
        self.flush_backends();
        self.flush_clients();
    }

    /// The slow-consumer bound is checked here, after the write: what
    /// counts is what a client leaves unread behind the message it is
    /// receiving, not how much one turn added (memory per client stays
    /// under `--max-outbound-bytes` plus one message plus one turn's input).
    fn flush_clients(&mut self) {
        let limit = self.config.max_outbound_bytes;
        let mut dirty = std::mem::take(&mut self.dirty_clients);
        for &key in &dirty {
            let Some(c) = self.clients.get_mut(key) else {
                continue;
            };
            c.dirty = false;
            if c.writable {
                match c.outq.flush(&mut c.sock) {
                    Ok(Flushed::All) => {
                        if let Phase::Closing { await_peer: false } = c.phase {
                            self.dead_clients.push(key);
                        }
                        continue;
                    }
                    Ok(Flushed::Blocked) => c.writable = false,
                    Err(e) => {
                        debug!("client {} write error: {e}", c.peer);
                        self.end_client(key, Ending::Drop);
                        continue;
                    }
                }
            }
            if c.outq.backlog() > limit && matches!(c.phase, Phase::Open) {
                self.slow_consumer(key);
            }
        }
        // Keep the list's allocation unless new entries arrived meanwhile.
        dirty.clear();
        if self.dirty_clients.is_empty() {
            self.dirty_clients = dirty;
        }
    }

    fn flush_backends(&mut self) {
        let mut dirty = std::mem::take(&mut self.dirty_backends);
        for &key in &dirty {
            let Some(b) = self.backends.get_mut(key) else {
                continue;
            };
            b.dirty = false;
            if !b.writable {
                continue;
            }
            while b.out_pos < b.out.len() {
                match b.sock.write(&b.out[b.out_pos..]) {
                    Ok(0) => break,
                    Ok(n) => b.out_pos += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        b.writable = false;
                        break;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        if !b.closing {
                            info!("backend {} disconnected: {e}", b.peer);
                        }
                        self.end_backend(key);
                        break;
                    }
                }
            }
            let Some(b) = self.backends.get_mut(key) else {
                continue;
            };
            if b.out_pos == b.out.len() {
                b.out.clear();
                b.out_pos = 0;
                // Keep a working buffer between bursts; give back a big one.
                if b.out.capacity() > BACKEND_BUFFER_KEPT {
                    b.out = Vec::new();
                }
            } else if b.out_pos >= READ_CHUNK && b.out_pos > b.out.len() / 2 {
                // Move the unsent tail to the front (each byte moves at most
                // once on average) so a backend that keeps up only partly
                // does not make the buffer grow.
                b.out.drain(..b.out_pos);
                b.out_pos = 0;
            }
            if !b.paused.is_empty() && b.out.len() - b.out_pos <= self.config.max_backend_buffer / 2
            {
                let paused = std::mem::take(&mut b.paused);
                info!(
                    "backend {} caught up: reading from {} paused clients again",
                    b.peer,
                    paused.len()
                );
                self.resume(paused);
            }
        }
        dirty.clear();
        if self.dirty_backends.is_empty() {
            self.dirty_backends = dirty;
        }
    }

    /// Lets paused clients read again (next turn).
    fn resume(&mut self, paused: Vec<ConnRef>) {
        for r in paused {
            if let Some(c) = self.clients.get_mut(r.key) {
                if c.serial == r.serial && c.paused {
                    c.paused = false;
                    self.read_again.push(r.key);
                }
            }
        }
    }

    /// Removes the connections that ended this turn.
    fn reap(&mut self) {
        for key in std::mem::take(&mut self.dead_clients) {
            let Some(c) = self.clients.try_remove(key) else {
                continue;
            };
            let mut c = c;
            let _ = self.poll.registry().deregister(&mut c.sock);
        }
        for key in std::mem::take(&mut self.dead_backends) {
            if !self.backends.contains(key) {
                continue;
            }
            let mut b = self.backends.remove(key);
            let _ = self.poll.registry().deregister(&mut b.sock);
        }
    }
}

fn trim_cr(line: &mut [u8]) -> &mut [u8] {
    match line.last() {
        Some(b'\r') => {
            let n = line.len() - 1;
            &mut line[..n]
        }
        _ => line,
    }
}

/// Raises the open-file soft limit to the hard limit (every connection is
/// a descriptor, and many systems start processes with a soft limit of
/// 1024). Returns the limits before and after.
pub fn raise_fd_limit() -> io::Result<(libc::rlim_t, libc::rlim_t)> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass and nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let before = limit.rlim_cur;
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: setrlimit only reads the struct we pass.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok((before, limit.rlim_cur))
}

/// The open-file soft limit, if it can be read.
fn fd_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass and nothing else.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0;
    (ok && limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur)
}

/// Gives back most of a deadline queue's ring once a burst has passed, so
/// memory follows the connections open now, not the busiest moment so far.
fn shrink_idle<T>(queue: &mut VecDeque<T>) {
    let capacity = queue.capacity();
    if capacity > 1024 && queue.len() < capacity / 4 {
        queue.shrink_to(capacity / 2);
    }
}
