//! Accepting: the two listeners, registering new sockets, and what an
//! accept error means (a shortage of descriptors pauses accepting briefly;
//! an error that concerns one connection only does not).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use mio::net::TcpStream;
use mio::Interest;

use crate::backend;
use crate::socket::AcceptError;
use crate::ws::frame::FrameReader;
use crate::ws::handshake;

use super::conn::{Backend, Client, ConnRef};
use super::stream::Stream;
use super::timers::Wait;
use super::{Endpoint, Server};

/// Pause before accepting again after a shortage (such as EMFILE).
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// Which listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Listener {
    WebSocket,
    Backend,
    Admin,
}

impl Server {
    /// Accepts the next connection on a listener: `None` when there is none
    /// (or accepting must pause, in which case a retry is scheduled).
    /// Sockets get TCP_NODELAY: the loop already batches its writes per turn.
    pub(super) fn accept_next(&mut self, which: Listener) -> Option<(TcpStream, SocketAddr)> {
        loop {
            let listener = match which {
                Listener::WebSocket => self.ws_listener.as_ref(),
                Listener::Backend => self.backend_listener.as_ref(),
                Listener::Admin => self.admin_listener.as_ref(),
            }?;
            match listener.accept() {
                Ok((sock, peer)) => {
                    self.accept_succeeded();
                    let _ = sock.set_nodelay(true);
                    return Some((sock, peer));
                }
                Err(e) => match AcceptError::of(&e) {
                    AcceptError::WouldBlock => return None,
                    AcceptError::Skip => {
                        debug!("accept: a connection failed before it was taken: {e}");
                    }
                    kind @ (AcceptError::Shortage | AcceptError::Other) => {
                        self.accept_failed(e, kind == AcceptError::Shortage);
                        return None;
                    }
                },
            }
        }
    }

    /// Accepts every waiting WebSocket client; each must send its upgrade
    /// request within `--connect-timeout`.
    pub(super) fn accept_clients(&mut self) {
        while let Some((mut sock, peer)) = self.accept_next(Listener::WebSocket) {
            if self.clients.len() >= self.max_connections {
                // Counted from accept on, whatever the connection does next;
                // the descriptors above the cap stay for backends.
                self.stats.unavailable += 1;
                debug!("client {peer} refused: at --max-connections");
                refuse(
                    &mut sock,
                    &handshake::http_response(
                        503,
                        "Service Unavailable",
                        "server at its connection limit (see --max-connections)",
                        "",
                    ),
                );
                continue;
            }
            let serial = self.serial();
            let entry = self.clients.vacant_entry();
            let key = entry.key();
            if let Err(e) = self.poll.registry().register(
                &mut sock,
                Endpoint::Client(key).token(),
                Interest::READABLE | Interest::WRITABLE,
            ) {
                warn!("cannot register client {peer}: {e}");
                continue;
            }
            let reader = FrameReader::new(self.config.max_message_size, self.config.max_fragments);
            entry.insert(Client::new(Stream::Tcp(sock), serial, peer, reader));
            self.timers
                .connect
                .arm(Instant::now(), (ConnRef { key, serial }, Wait::Request));
            debug!("client {peer} connected (key {key})");
        }
    }

    /// Accepts every waiting backend; with `--backend-token` each must
    /// authenticate within `--connect-timeout` before it takes part.
    /// Without one it takes part at once (as v1 backends expect), unless
    /// its first line says it is a publisher.
    pub(super) fn accept_backends(&mut self) {
        while let Some((mut sock, peer)) = self.accept_next(Listener::Backend) {
            let authenticated = self.config.backend_token.is_none();
            if !authenticated && self.pending_backends >= self.config.max_pending_backends {
                self.stats.refused_backends += 1;
                warn!(
                    "backend {peer} refused: {} backends are waiting to authenticate \
                     (see --max-pending-backends)",
                    self.pending_backends
                );
                let mut line = Vec::new();
                backend::push_line_error(
                    &mut line,
                    None,
                    "too many backends waiting to authenticate (see --max-pending-backends)",
                );
                refuse(&mut sock, &line);
                continue;
            }
            let serial = self.serial();
            let entry = self.backends.vacant_entry();
            let key = entry.key();
            if let Err(e) = self.poll.registry().register(
                &mut sock,
                Endpoint::Backend(key).token(),
                Interest::READABLE | Interest::WRITABLE,
            ) {
                warn!("cannot register backend {peer}: {e}");
                continue;
            }
            let backend =
                entry.insert(Backend::new(Stream::Tcp(sock), serial, peer, authenticated));
            if authenticated {
                // A publisher's first line is often here already: read it
                // before the backend is given anything.
                backend.ready.readable = true;
                self.backend_read(key);
                if self
                    .backends
                    .get(key)
                    .is_some_and(|b| b.events && !b.closing)
                {
                    self.backend_joins(key);
                }
            } else {
                self.pending_backends += 1;
                info!("backend {peer} connected; waiting for its auth line");
            }
            self.timers
                .auth
                .arm(Instant::now(), ConnRef { key, serial });
        }
    }

    /// Accepting must pause: the pending connections stay in the listen
    /// backlog and accepting is retried shortly, instead of spinning on
    /// the error. Warned once per run of failures.
    fn accept_failed(&mut self, e: std::io::Error, shortage: bool) {
        if !self.accept_failing {
            self.accept_failing = true;
            if shortage {
                let what = match e.raw_os_error() {
                    Some(libc::EMFILE | libc::ENFILE) => "out of file descriptors",
                    _ => "out of kernel memory",
                };
                warn!(
                    "cannot accept: {what} ({e}); {} clients and {} backends open, retrying in {} ms",
                    self.clients.len(),
                    self.backends.len(),
                    ACCEPT_RETRY.as_millis()
                );
            } else {
                warn!("cannot accept a connection: {e}");
            }
        }
        self.timers.accept_retry = Some(Instant::now() + ACCEPT_RETRY);
    }

    /// A connection was accepted: a shortage reported by `accept_failed` is over.
    fn accept_succeeded(&mut self) {
        if self.accept_failing {
            self.accept_failing = false;
            info!("accepting connections again");
        }
    }
}

/// Writes `reply` to a connection that is refused as it is accepted (best
/// effort: a new socket takes a short reply at once) and closes it.
fn refuse(sock: &mut TcpStream, reply: &[u8]) {
    use std::io::Write;
    let _ = sock.write(reply);
}
