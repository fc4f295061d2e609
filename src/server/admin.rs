//! The admin listener (`--admin-port`, `--admin-host`): a small HTTP/1.1
//! server on the same event loop, for monitoring. `GET /metrics` answers
//! the Prometheus text format, `GET /health` 200 "ok" while the broker
//! serves as it should and 503 with a one-line reason when it does not,
//! `GET /stats` the same figures as JSON.
//!
//! One request per connection (`Connection: close`), a request head of at
//! most [`MAX_REQUEST`] bytes that must arrive within `--connect-timeout`,
//! and at most [`MAX_CONNECTIONS`] admin connections at once: a monitoring
//! port cannot be made to hold memory.

use std::io::Write;
use std::net::SocketAddr;
use std::time::Instant;

use log::debug;
use mio::net::TcpStream;
use mio::Interest;

use crate::socket::{ReadOutcome, Readiness, Signal, SocketResult};

use super::conn::ConnRef;
use super::metrics;
use super::{list_once, Endpoint, Server};

/// Largest admin request head.
const MAX_REQUEST: usize = 8192;
/// Most admin connections at once.
pub(super) const MAX_CONNECTIONS: usize = 64;

/// One connection to the admin listener.
#[derive(Debug)]
pub(super) struct AdminConn {
    sock: TcpStream,
    serial: u64,
    peer: SocketAddr,
    ready: Readiness,
    inbuf: Vec<u8>,
    /// The reply, once the request is complete.
    out: Vec<u8>,
    out_pos: usize,
    answered: bool,
    /// Listed in the turn's dead admin connections.
    dead: bool,
}

impl Server {
    /// Accepts every waiting admin connection.
    pub(super) fn accept_admins(&mut self) {
        while let Some((mut sock, peer)) = self.accept_next(super::accept::Listener::Admin) {
            if self.admins.len() >= MAX_CONNECTIONS {
                debug!("admin connection from {peer} refused: {MAX_CONNECTIONS} already open");
                let _ = sock.write(&reply(503, "text/plain", "too many admin connections\n"));
                continue;
            }
            let serial = self.serial();
            let entry = self.admins.vacant_entry();
            let key = entry.key();
            if let Err(e) = self.poll.registry().register(
                &mut sock,
                Endpoint::Admin(key).token(),
                Interest::READABLE | Interest::WRITABLE,
            ) {
                debug!("cannot register admin connection {peer}: {e}");
                continue;
            }
            entry.insert(AdminConn {
                sock,
                serial,
                peer,
                ready: Readiness::default(),
                inbuf: Vec::new(),
                out: Vec::new(),
                out_pos: 0,
                answered: false,
                dead: false,
            });
            self.timers
                .admin
                .arm(Instant::now(), ConnRef { key, serial });
        }
    }

    /// A poll event for admin connection `key`: read the request, answer
    /// it, write the answer, then close.
    pub(super) fn admin_event(&mut self, key: usize, signal: Signal) {
        let Some(a) = self.admins.get_mut(key) else {
            return;
        };
        a.ready.record(signal);
        if !a.answered {
            let mut chunk = [0u8; 2048];
            loop {
                match a.ready.read(&mut a.sock, &mut chunk) {
                    ReadOutcome::Bytes(n) => a.inbuf.extend_from_slice(&chunk[..n]),
                    ReadOutcome::Drained => break,
                    ReadOutcome::Ended(_) => {
                        self.admin_done(key);
                        return;
                    }
                }
                if a.inbuf.len() > MAX_REQUEST {
                    break;
                }
            }
            let Some(response) = self.admin_response(key) else {
                return;
            };
            let Some(a) = self.admins.get_mut(key) else {
                return;
            };
            a.out = response;
            a.answered = true;
            a.inbuf = Vec::new();
        }
        self.admin_write(key);
    }

    /// The reply to admin connection `key`'s request, once it is complete.
    fn admin_response(&self, key: usize) -> Option<Vec<u8>> {
        let a = self.admins.get(key)?;
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        let method_path = match req.parse(&a.inbuf) {
            Ok(httparse::Status::Complete(_)) => req.method.zip(req.path),
            Ok(httparse::Status::Partial) if a.inbuf.len() <= MAX_REQUEST => return None,
            Ok(httparse::Status::Partial) => {
                return Some(reply(431, "text/plain", "request head too large\n"))
            }
            Err(_) => return Some(reply(400, "text/plain", "malformed HTTP request\n")),
        };
        let Some((method, path)) = method_path else {
            return Some(reply(400, "text/plain", "malformed HTTP request\n"));
        };
        if method != "GET" && method != "HEAD" {
            return Some(reply(405, "text/plain", "only GET is served here\n"));
        }
        let path = path.split('?').next().unwrap_or(path);
        let mut response = match path {
            "/metrics" => reply(
                200,
                "text/plain; version=0.0.4; charset=utf-8",
                &metrics::prometheus_text(&self.snapshot()),
            ),
            "/stats" => reply(200, "application/json", &metrics::json(&self.snapshot())),
            "/health" => match self.health(Instant::now()) {
                Ok(()) => reply(200, "text/plain", "ok\n"),
                Err(why) => reply(503, "text/plain", &format!("{why}\n")),
            },
            _ => reply(
                404,
                "text/plain",
                "not found: try /metrics, /health or /stats\n",
            ),
        };
        if method == "HEAD" {
            if let Some(end) = response.windows(4).position(|w| w == b"\r\n\r\n") {
                response.truncate(end + 4);
            }
        }
        Some(response)
    }

    /// Writes what the socket takes of the reply; closes once it is out.
    fn admin_write(&mut self, key: usize) {
        let Some(a) = self.admins.get_mut(key) else {
            return;
        };
        while a.ready.writable && a.out_pos < a.out.len() {
            match SocketResult::of_write(a.sock.write(&a.out[a.out_pos..])) {
                SocketResult::Done(n) => a.out_pos += n,
                SocketResult::WouldBlock => a.ready.writable = false,
                SocketResult::Retry => {}
                SocketResult::Closed(_) => {
                    self.admin_done(key);
                    return;
                }
            }
        }
        if a.answered && a.out_pos == a.out.len() {
            self.admin_done(key);
        }
    }

    /// Admin connection `key` is finished: removed at the end of the turn.
    fn admin_done(&mut self, key: usize) {
        if let Some(a) = self.admins.get_mut(key) {
            list_once(&mut a.dead, &mut self.turn.dead_admins, key);
        }
    }

    /// An admin connection that has not sent a complete request within
    /// `--connect-timeout` is closed.
    pub(super) fn admin_timed_out(&mut self, r: ConnRef) {
        if let Some(a) = self.admins.get(r.key).filter(|a| a.serial == r.serial) {
            if !a.answered || a.out_pos < a.out.len() {
                debug!("admin connection {} timed out", a.peer);
                self.admin_done(r.key);
            }
        }
    }

    /// Removes the admin connections that finished this turn.
    pub(super) fn reap_admins(&mut self) {
        for key in std::mem::take(&mut self.turn.dead_admins) {
            if let Some(mut a) = self.admins.try_remove(key) {
                let _ = self.poll.registry().deregister(&mut a.sock);
            }
        }
    }
}

/// A complete HTTP/1.1 reply that closes the connection.
fn reply(status: u16, content_type: &str, body: &str) -> Vec<u8> {
    let text = crate::ws::handshake::reason_phrase(status);
    let mut out = format!(
        "HTTP/1.1 {status} {text}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}
