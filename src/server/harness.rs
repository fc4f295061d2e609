//! The broker driven by hand, for the server fuzz target
//! ([`crate::fuzzing::server`]): connections over in-memory pipes
//! ([`FakeStream`]) instead of sockets, readiness given by the harness
//! instead of the poller, turns ended on request, and a check of the
//! invariants the loop must keep whatever its peers send.
//!
//! Nothing here is used by the running broker.

use std::net::SocketAddr;

use mio::Poll;

use crate::config::Config;
use crate::socket::Signal;
use crate::ws::frame::FrameReader;

use super::conn::{Backend, Client, ConnRef, Phase};
use super::stream::{FakeStream, Stream};
use super::timers::Wait;
use super::{Server, StartError};

/// A connection of the harness, by kind and slab key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fake {
    /// A WebSocket client.
    Client(usize),
    /// A backend.
    Backend(usize),
}

impl Server {
    /// A broker with no listeners, ports or signal handler, for the fuzz
    /// harness; `--max-connections` is taken as given.
    pub fn for_harness(config: Config) -> Result<Server, StartError> {
        let poll = Poll::new().map_err(|e| StartError(format!("cannot create the poller: {e}")))?;
        let max_connections = config.max_connections;
        Ok(Server::with(config, poll, max_connections))
    }

    /// A client connects through `pipe`, as if just accepted.
    pub fn harness_client(&mut self, pipe: FakeStream) -> Fake {
        let serial = self.serial();
        let reader = FrameReader::new(self.config.max_message_size, self.config.max_fragments);
        let peer = SocketAddr::from(([127, 0, 0, 1], 40_000));
        let key = self
            .clients
            .insert(Client::new(Stream::Fake(pipe), serial, peer, reader));
        self.timers.connect.arm(
            std::time::Instant::now(),
            (ConnRef { key, serial }, Wait::Request),
        );
        Fake::Client(key)
    }

    /// A backend connects through `pipe`, as if just accepted (and, without
    /// a token, made live at once).
    pub fn harness_backend(&mut self, pipe: FakeStream) -> Fake {
        let serial = self.serial();
        let authenticated = self.config.backend_token.is_none();
        let peer = SocketAddr::from(([127, 0, 0, 1], 50_000));
        let key = self.backends.insert(Backend::new(
            Stream::Fake(pipe),
            serial,
            peer,
            authenticated,
        ));
        if authenticated {
            self.backend_joins(key);
        } else {
            self.pending_backends += 1;
        }
        Fake::Backend(key)
    }

    /// Readiness for connection `which`, as the poller would report it.
    pub fn harness_event(&mut self, which: Fake, signal: Signal) {
        match which {
            Fake::Client(key) => self.client_event(key, signal),
            Fake::Backend(key) => self.backend_event(key, signal),
        }
    }

    /// Whether connection `which` is still in the broker's slabs.
    pub fn harness_alive(&self, which: Fake) -> bool {
        match which {
            Fake::Client(key) => self.clients.contains(key),
            Fake::Backend(key) => self.backends.contains(key),
        }
    }

    /// Ends the turn: leftover reads, deadlines, endings, writes, removals.
    pub fn harness_end_turn(&mut self) {
        self.end_turn();
    }

    /// Panics if an invariant of the loop is broken after a turn.
    pub fn harness_check(&self) {
        let limit = self.config.max_outbound_bytes;
        for (key, c) in &self.clients {
            let open = matches!(c.phase, Phase::Open);
            assert_eq!(
                open,
                self.hub.serial(key) == Some(c.serial),
                "client {key}: open exactly when in the hub"
            );
            assert!(
                c.ending.is_none(),
                "client {key}: an ending left unfinished"
            );
            if open {
                assert!(
                    c.outq.backlog() <= limit,
                    "client {key}: {} queued behind the front past --max-outbound-bytes",
                    c.outq.backlog()
                );
                assert!(c.context.is_some(), "client {key}: open without a context");
            }
            if let Phase::Pending { backend, .. } = c.phase {
                assert_eq!(self.pending.get(&c.serial), Some(&key));
                assert!(
                    self.backends
                        .get(backend.key)
                        .is_some_and(|b| b.serial == backend.serial),
                    "client {key}: pending on a backend that is gone"
                );
            }
            let bound = self
                .config
                .max_request_size
                .max(self.config.max_message_size + 14)
                + super::READ_CHUNK;
            assert!(
                c.inbuf.len() <= bound,
                "client {key}: {} bytes buffered",
                c.inbuf.len()
            );
        }
        for (serial, &key) in &self.pending {
            let c = self
                .clients
                .get(key)
                .expect("a pending request's client exists");
            assert_eq!(c.serial, *serial);
            assert!(matches!(c.phase, Phase::Pending { .. }));
        }
        assert!(self.pending.len() <= self.config.max_pending_requests);
        for (key, b) in &self.backends {
            assert!(!b.closing, "backend {key}: closing after the turn ended");
            assert!(
                b.inbuf.len()
                    <= self
                        .config
                        .max_line_size
                        .max(super::backend_io::AUTH_LINE_MAX),
                "backend {key}: a partial line past the line limit"
            );
        }
        let (events, bytes) = self.routing.queued();
        assert!(events <= self.config.queue_size);
        assert!(bytes <= self.config.queue_bytes);
        assert!(self.turn.ending_clients.is_empty() && self.turn.ending_backends.is_empty());
        assert!(self.cork.is_none(), "messages left corked after the turn");
        assert!(self.turn.dead_clients.is_empty() && self.turn.dead_backends.is_empty());
    }
}
