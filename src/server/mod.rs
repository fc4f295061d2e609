//! The broker's one event loop: poll, hand each event to the connection it
//! names, then do the end-of-turn work once.
//!
//! One thread owns everything: the mio `Poll`, the client and backend
//! slabs, the [`Hub`], the routing of client events to backends, and the
//! deadlines. Nothing blocks; a connection request parks its client until a
//! backend answers or the deadline passes.
//!
//! A turn:
//! 1. `poll`, then each event goes to its connection by its token's
//!    [`Endpoint`]: listeners accept (accept.rs), clients read (client_io.rs:
//!    upgrade requests go to upgrade.rs, messages to routing.rs), backends
//!    read (backend_io.rs: each line is a command, commands.rs).
//! 2. Connections left with unread input after their read budget read again.
//! 3. Deadlines fire (timers.rs).
//! 4. The turn's endings are carried out (closes.rs), the queues that grew
//!    are flushed (backends first, then clients, with vectored writes), the
//!    endings the writes produced are carried out, and the connections that
//!    ended are removed from the slabs (so a key is never reused while an
//!    event for its old socket may still be in the batch).
//!
//! Data flows one way: an I/O path, a timer or a command that finds a
//! connection must end records how ([`conn::Ending`], or `closing` on a
//! backend) and returns; only the end of the turn closes connections,
//! updates the hub and tells the backends.
//!
//! Event-loop rules kept here:
//! - Sockets are registered once for READABLE | WRITABLE (edge-triggered);
//!   each connection keeps its own [`Readiness`](crate::socket::Readiness),
//!   cleared only on `WouldBlock` or a short read.
//! - One connection gets a bounded amount of reading per turn; one with
//!   more to read is revisited in step 2.
//! - An error on a connection ends that connection only.

mod accept;
mod admin;
mod backend_io;
mod client_io;
mod closes;
mod cluster;
mod commands;
mod conn;
mod harness;
mod metrics;
mod routing;
mod stats;
mod stream;
mod sys;
mod timers;
mod upgrade;

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ahash::AHashMap;
use log::{info, warn};
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;
use slab::Slab;

use crate::backend::LineParser;
use crate::config::Config;
use crate::hub::Hub;
use crate::outq::Shared;
use crate::socket::Signal;
use crate::ws::encode;

use conn::{Backend, Client, ConnectionIds};
use routing::Routing;
use timers::Timers;

pub use harness::Fake;
pub use stats::Stats;
pub use stream::{FakeStream, Pipe};
pub use sys::raise_fd_limit;

/// Size of one read from a socket.
const READ_CHUNK: usize = 64 * 1024;

/// Start-up failures: each names the flag whose value could not be used.
#[derive(Debug)]
pub struct StartError(pub String);

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StartError {}

/// What a poll token names: the map from tokens to kinds of connection.
///
/// A token carries its kind in the low [`KIND_BITS`] bits and the slab key
/// (or which listener) above them, so a new kind of connection (an admin
/// listener, a link to another service) is one more variant here and one
/// more arm in the dispatch, nothing else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    /// The WebSocket listener.
    WsListener,
    /// The backend listener.
    BackendListener,
    /// The signal pipe (SIGINT, SIGTERM).
    Signals,
    /// The admin listener.
    AdminListener,
    /// A WebSocket client, by slab key.
    Client(usize),
    /// A backend, by slab key.
    Backend(usize),
    /// An admin (monitoring) connection, by slab key.
    Admin(usize),
    /// A link to Redis in cluster mode: 0 the subscriber, 1 the commands.
    Redis(usize),
}

/// Bits of a token that say which kind of endpoint it names.
const KIND_BITS: u32 = 3;
const KIND_MASK: usize = (1 << KIND_BITS) - 1;
const KIND_FIXED: usize = 0;
const KIND_CLIENT: usize = 1;
const KIND_BACKEND: usize = 2;
const KIND_ADMIN: usize = 3;
const KIND_REDIS: usize = 4;

impl Endpoint {
    /// The poll token of this endpoint.
    fn token(self) -> Token {
        let (kind, key) = match self {
            Endpoint::WsListener => (KIND_FIXED, 0),
            Endpoint::BackendListener => (KIND_FIXED, 1),
            Endpoint::Signals => (KIND_FIXED, 2),
            Endpoint::AdminListener => (KIND_FIXED, 3),
            Endpoint::Client(key) => (KIND_CLIENT, key),
            Endpoint::Backend(key) => (KIND_BACKEND, key),
            Endpoint::Admin(key) => (KIND_ADMIN, key),
            Endpoint::Redis(link) => (KIND_REDIS, link),
        };
        Token(key << KIND_BITS | kind)
    }

    /// The endpoint a poll token names.
    fn of(token: Token) -> Option<Endpoint> {
        let key = token.0 >> KIND_BITS;
        match (token.0 & KIND_MASK, key) {
            (KIND_FIXED, 0) => Some(Endpoint::WsListener),
            (KIND_FIXED, 1) => Some(Endpoint::BackendListener),
            (KIND_FIXED, 2) => Some(Endpoint::Signals),
            (KIND_FIXED, 3) => Some(Endpoint::AdminListener),
            (KIND_CLIENT, key) => Some(Endpoint::Client(key)),
            (KIND_BACKEND, key) => Some(Endpoint::Backend(key)),
            (KIND_ADMIN, key) => Some(Endpoint::Admin(key)),
            (KIND_REDIS, link @ 0..=1) => Some(Endpoint::Redis(link)),
            _ => None,
        }
    }
}

/// The lists one turn builds and the end of the turn works through.
#[derive(Debug, Default)]
struct Turn {
    /// Clients whose queue grew or whose socket became writable.
    dirty_clients: Vec<usize>,
    /// Backends whose buffer grew or whose socket became writable.
    dirty_backends: Vec<usize>,
    /// Clients with unread input left after their read budget.
    read_again: Vec<usize>,
    /// Backends with unread input left after their read budget.
    backend_read_again: Vec<usize>,
    /// Clients with an ending recorded this turn.
    ending_clients: Vec<usize>,
    /// Backends marked closing this turn.
    ending_backends: Vec<usize>,
    /// Keys to remove from the slabs at the end of the turn.
    dead_clients: Vec<usize>,
    dead_backends: Vec<usize>,
    dead_admins: Vec<usize>,
    /// Redis links with unread input left after their read budget.
    redis_read_again: Vec<usize>,
}

impl Turn {
    /// Whether the next poll must not wait: work is left for the next turn.
    fn has_work(&self) -> bool {
        !self.read_again.is_empty()
            || !self.backend_read_again.is_empty()
            || !self.dirty_clients.is_empty()
            || !self.dirty_backends.is_empty()
            || !self.redis_read_again.is_empty()
    }
}

/// Lists `key` once (its `flag` says whether it is listed): a connection
/// is flushed, or read again, at most once per list.
fn list_once(flag: &mut bool, list: &mut Vec<usize>, key: usize) {
    if !*flag {
        *flag = true;
        list.push(key);
    }
}

/// The broker.
pub struct Server {
    config: Config,
    poll: Poll,
    ws_listener: Option<TcpListener>,
    backend_listener: Option<TcpListener>,
    ws_addr: SocketAddr,
    backend_addr: SocketAddr,
    admin_listener: Option<TcpListener>,
    admin_addr: Option<SocketAddr>,
    admins: Slab<admin::AdminConn>,
    signals: Option<Signals>,
    clients: Slab<Client>,
    backends: Slab<Backend>,
    hub: Hub,
    /// Connection requests waiting for an answer, by request serial.
    pending: AHashMap<u64, usize>,
    /// How connection ids are made and read.
    ids: ConnectionIds,
    routing: Routing,
    timers: Timers,
    turn: Turn,
    /// `--max-connections`, lowered to what the open-file limit allows.
    max_connections: usize,
    /// Accepting fails (warned once per shortage, not at every retry).
    accept_failing: bool,
    /// Backends connected and not yet authenticated.
    pending_backends: usize,
    /// Warnings about refused backend lines.
    refused_lines: stats::LogLimit,
    next_serial: u64,
    scratch: Vec<u8>,
    /// The connections a command targets (kept for its allocation).
    targets: Vec<usize>,
    line_parser: LineParser,
    /// The ping frame every client gets, encoded once.
    ping_frame: Shared,
    stats: Stats,
    turn_times: stats::TurnTimes,
    started: Instant,
    sys: sys::MemoryReturn,
    /// Cluster mode, with `--redis-url`.
    cluster: Option<cluster::Cluster>,
    /// Room messages of this turn waiting to be queued as one batch.
    cork: Option<commands::Cork>,
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
        let mut admin_listener = config
            .admin
            .map(|addr| bind(addr, "--admin-port"))
            .transpose()?;
        let admin_addr = admin_listener.as_ref().map(local).transpose()?;
        let mut signals = Signals::new([SIGINT, SIGTERM])
            .map_err(|e| StartError(format!("cannot install signal handlers: {e}")))?;
        let registry = poll.registry();
        let register_err =
            |e: io::Error| StartError(format!("cannot register with the poller: {e}"));
        registry
            .register(
                &mut ws_listener,
                Endpoint::WsListener.token(),
                Interest::READABLE,
            )
            .map_err(register_err)?;
        registry
            .register(
                &mut backend_listener,
                Endpoint::BackendListener.token(),
                Interest::READABLE,
            )
            .map_err(register_err)?;
        registry
            .register(&mut signals, Endpoint::Signals.token(), Interest::READABLE)
            .map_err(register_err)?;
        if let Some(listener) = admin_listener.as_mut() {
            registry
                .register(
                    listener,
                    Endpoint::AdminListener.token(),
                    Interest::READABLE,
                )
                .map_err(register_err)?;
        }
        if config.backend_token.is_none() && !config.backend_host.is_loopback() {
            warn!(
                "the backend port listens on {} without --backend-token: anyone who can reach it can \
                 accept connections and message every client",
                config.backend_host
            );
        }
        let max_connections = sys::connection_cap(config.max_connections);
        let mut server = Server::with(config, poll, max_connections);
        server.ws_listener = Some(ws_listener);
        server.backend_listener = Some(backend_listener);
        server.ws_addr = ws_addr;
        server.backend_addr = backend_addr;
        server.admin_listener = admin_listener;
        server.admin_addr = admin_addr;
        server.signals = Some(signals);
        server.start_cluster();
        Ok(server)
    }

    /// A server with no listeners and no signal handler yet.
    fn with(config: Config, poll: Poll, max_connections: usize) -> Server {
        let unbound = SocketAddr::from(([0, 0, 0, 0], 0));
        Server {
            max_connections,
            accept_failing: false,
            pending_backends: 0,
            refused_lines: stats::LogLimit::default(),
            timers: Timers::new(&config, Instant::now()),
            config,
            poll,
            ws_listener: None,
            backend_listener: None,
            ws_addr: unbound,
            backend_addr: unbound,
            admin_listener: None,
            admin_addr: None,
            admins: Slab::new(),
            signals: None,
            clients: Slab::new(),
            backends: Slab::new(),
            hub: Hub::new(),
            pending: AHashMap::new(),
            ids: ConnectionIds::new(),
            routing: Routing::default(),
            turn: Turn::default(),
            next_serial: 1,
            scratch: vec![0; READ_CHUNK],
            targets: Vec::new(),
            line_parser: LineParser::new(),
            ping_frame: encode::ping(b""),
            stats: Stats::default(),
            turn_times: stats::TurnTimes::default(),
            started: Instant::now(),
            sys: sys::MemoryReturn::default(),
            cluster: None,
            cork: None,
        }
    }

    /// The bound WebSocket address (the real port when `--ws-port 0`).
    pub fn ws_addr(&self) -> SocketAddr {
        self.ws_addr
    }

    /// The bound backend address.
    pub fn backend_addr(&self) -> SocketAddr {
        self.backend_addr
    }

    /// The bound admin address, when the admin listener is on.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// Serves until SIGINT or SIGTERM, then drains and returns the counters.
    /// Only a failure of the poller itself is an error.
    pub fn run(mut self) -> io::Result<Stats> {
        match self.admin_addr {
            Some(admin) => info!(
                "listening websocket={} backend={} admin={admin}",
                self.ws_addr, self.backend_addr
            ),
            None => info!(
                "listening websocket={} backend={}",
                self.ws_addr, self.backend_addr
            ),
        }
        let mut events = Events::with_capacity(1024);
        loop {
            let timeout = self.poll_timeout();
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let turn_start = Instant::now();
            for event in events.iter() {
                let signal = Signal::from(event);
                match Endpoint::of(event.token()) {
                    Some(Endpoint::WsListener) => self.accept_clients(),
                    Some(Endpoint::BackendListener) => self.accept_backends(),
                    Some(Endpoint::Signals) => self.on_signal(),
                    Some(Endpoint::AdminListener) => self.accept_admins(),
                    Some(Endpoint::Client(key)) => self.client_event(key, signal),
                    Some(Endpoint::Backend(key)) => self.backend_event(key, signal),
                    Some(Endpoint::Admin(key)) => self.admin_event(key, signal),
                    Some(Endpoint::Redis(link)) => self.redis_event(link, signal),
                    None => {}
                }
            }
            self.end_turn();
            self.turn_times.record(turn_start.elapsed().as_secs_f64());
            if let Some(deadline) = self.timers.shutdown {
                let drained =
                    self.clients.is_empty() && self.backends.iter().all(|(_, b)| b.unsent() == 0);
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

    /// Everything a turn does after its events: reads left over from the
    /// budget, deadlines, the endings recorded so far, the writes, the
    /// endings the writes produced, and the removal of ended connections.
    fn end_turn(&mut self) {
        self.redis_read_again();
        for key in std::mem::take(&mut self.turn.backend_read_again) {
            if let Some(b) = self.backends.get_mut(key) {
                b.read_listed = false;
            }
            self.backend_read(key);
        }
        for key in std::mem::take(&mut self.turn.read_again) {
            if let Some(c) = self.clients.get_mut(key) {
                c.read_listed = false;
            }
            self.client_read(key);
        }
        self.fire_deadlines(Instant::now());
        self.seal();
        self.finish_endings();
        self.cluster_sync();
        self.flush_backends();
        self.flush_clients();
        self.finish_endings();
        self.reap();
        self.reap_admins();
        self.sys.give_back(Instant::now());
    }

    fn poll_timeout(&self) -> Option<Duration> {
        if self.turn.has_work() {
            return Some(Duration::ZERO);
        }
        let mut next = self.timers.next_deadline();
        if let Some(at) = self.cluster.as_ref().and_then(|c| c.next_deadline()) {
            next = next.min(at);
        }
        // Round up so a deadline is past when we wake.
        Some(next.saturating_duration_since(Instant::now()) + Duration::from_millis(1))
    }

    /// Lists client `key` to read again at the end of the turn (once).
    fn read_client_again(&mut self, key: usize) {
        if let Some(c) = self.clients.get_mut(key) {
            list_once(&mut c.read_listed, &mut self.turn.read_again, key);
        }
    }

    fn serial(&mut self) -> u64 {
        self.next_serial += 1;
        self.next_serial
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_name_their_endpoint() {
        let endpoints = [
            Endpoint::WsListener,
            Endpoint::BackendListener,
            Endpoint::Signals,
            Endpoint::AdminListener,
            Endpoint::Admin(9),
            Endpoint::Redis(0),
            Endpoint::Redis(1),
            Endpoint::Client(0),
            Endpoint::Client(12345),
            Endpoint::Backend(0),
            Endpoint::Backend(7),
        ];
        for e in endpoints {
            assert_eq!(Endpoint::of(e.token()), Some(e), "{e:?}");
        }
        let tokens: std::collections::HashSet<usize> =
            endpoints.iter().map(|e| e.token().0).collect();
        assert_eq!(tokens.len(), endpoints.len());
        assert_eq!(Endpoint::of(Token(4 << KIND_BITS)), None);
        assert_eq!(Endpoint::of(Token(2 << KIND_BITS | KIND_REDIS)), None);
        assert_eq!(Endpoint::of(Token(KIND_MASK)), None);
    }
}
