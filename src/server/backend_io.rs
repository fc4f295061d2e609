//! Backend I/O: reading a backend's lines (bounded by `--max-line-size`),
//! the auth gate in front of them, writing its buffer of event lines, and
//! the backpressure that pauses its clients while it is behind.
//!
//! Each complete line is parsed in place and handed to commands.rs. A
//! backend ends here only by being marked closing ([`Server::end_backend`]).

use std::io::Write;

use log::{info, warn};
use subtle::ConstantTimeEq;

use crate::backend::{self, Command, Line, LineError};
use crate::socket::{ReadOutcome, Signal, SocketResult};

use super::client_io::READ_BUDGET;
use super::conn::ConnRef;
use super::{list_once, Server, READ_CHUNK};

/// Longest first line of a backend that must authenticate: an auth line
/// is short, and a connection that has not shown the token may not make
/// the broker buffer more.
pub(super) const AUTH_LINE_MAX: usize = 4096;
/// Capacity a backend's output buffer keeps once drained.
const BACKEND_BUFFER_KEPT: usize = 4 * 1024 * 1024;

impl Server {
    /// A poll event for backend `key`.
    pub(super) fn backend_event(&mut self, key: usize, signal: Signal) {
        let Some(b) = self.backends.get_mut(key) else {
            return;
        };
        if b.ready.record(signal) {
            list_once(&mut b.dirty, &mut self.turn.dirty_backends, key);
        }
        self.backend_read(key);
    }

    /// Reads what backend `key` sent, up to its budget for the turn, and
    /// carries out every complete line.
    pub(super) fn backend_read(&mut self, key: usize) {
        let mut budget = READ_BUDGET * 4;
        loop {
            let Some(b) = self.backends.get_mut(key) else {
                return;
            };
            if !b.ready.readable || b.closing {
                return;
            }
            if budget == 0 {
                list_once(&mut b.read_listed, &mut self.turn.backend_read_again, key);
                return;
            }
            let mut scratch = std::mem::take(&mut self.scratch);
            let n = match b.ready.read(&mut b.sock, &mut scratch) {
                ReadOutcome::Bytes(n) => n,
                ReadOutcome::Drained => {
                    self.scratch = scratch;
                    return;
                }
                ReadOutcome::Ended(e) => {
                    self.scratch = scratch;
                    match e {
                        None => info!("backend {} disconnected", b.peer),
                        Some(e) => info!("backend {} disconnected: {e}", b.peer),
                    }
                    self.end_backend(key);
                    return;
                }
            };
            budget = budget.saturating_sub(n);
            self.stats.backend_bytes_in += n as u64;
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
            let limit = self.line_limit(key);
            if self
                .backends
                .get(key)
                .is_some_and(|b| !b.closing && b.inbuf.len() > limit)
            {
                self.line_too_long(key);
                return;
            }
        }
    }

    /// The longest line backend `key` may send now: a small auth line
    /// before it authenticated, `--max-line-size` after.
    fn line_limit(&self, key: usize) -> usize {
        match self.backends.get(key) {
            Some(b) if !b.authenticated => AUTH_LINE_MAX,
            _ => self.config.max_line_size,
        }
    }

    fn line_too_long(&mut self, key: usize) {
        let Some(b) = self.backends.get(key) else {
            return;
        };
        if !b.authenticated {
            warn!(
                "backend {} refused: a first line longer than {AUTH_LINE_MAX} bytes",
                b.peer
            );
            return self.refuse_backend(key, "the auth line is too long");
        }
        warn!(
            "backend {} closed: a line longer than {} bytes (see --max-line-size)",
            b.peer, self.config.max_line_size
        );
        self.end_backend(key);
    }

    /// Carries out every complete line at the start of `buf`; returns the
    /// bytes consumed (everything up to the last newline).
    fn backend_lines(&mut self, key: usize, buf: &mut [u8]) -> usize {
        let mut parser = std::mem::take(&mut self.line_parser);
        let mut start = 0;
        while let Some(nl) = memchr::memchr(b'\n', &buf[start..]) {
            if self.backends.get(key).is_none_or(|b| b.closing) {
                break;
            }
            if nl > self.line_limit(key) {
                self.line_too_long(key);
                break;
            }
            if self.sends_without_reading(key, nl + 1) {
                break;
            }
            let line = trim_cr(&mut buf[start..start + nl]);
            start += nl + 1;
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            self.stats.backend_lines_in += 1;
            parser.parse(line, |line| self.backend_line(key, line));
        }
        self.line_parser = parser;
        start
    }

    /// Counts `len` bytes of lines from backend `key` against it while it
    /// is more than `--max-backend-buffer` behind; one that sends that much
    /// again without reading is closed (returns true).
    fn sends_without_reading(&mut self, key: usize, len: usize) -> bool {
        let limit = self.config.max_backend_buffer;
        let Some(b) = self.backends.get_mut(key) else {
            return false;
        };
        if b.unsent() <= limit {
            b.sent_while_behind = 0;
            return false;
        }
        b.sent_while_behind += len;
        if b.sent_while_behind <= limit {
            return false;
        }
        warn!(
            "backend {} closed: it sent {} bytes of lines while {} bytes behind, without reading \
             (see --max-backend-buffer)",
            b.peer,
            b.sent_while_behind,
            b.unsent()
        );
        self.end_backend(key);
        true
    }

    /// One parsed line: the auth line of a backend that must present the
    /// token, a publisher's declaration, or a command.
    fn backend_line(&mut self, key: usize, line: Result<Line<'_>, LineError<'_>>) {
        let Some(b) = self.backends.get_mut(key) else {
            return;
        };
        let first = !b.spoke;
        b.spoke = true;
        let handed = std::mem::take(&mut b.handed);
        if !b.authenticated {
            return self.authenticate(key, line.ok().map(|l| l.command));
        }
        match line {
            Ok(Line {
                command: Command::Auth { events, .. },
                request_id,
                ..
            }) => {
                if first && !events {
                    self.becomes_publisher(key, handed);
                } else if !events {
                    self.reply_line_error(
                        key,
                        request_id,
                        "auth: params.events=false must be a backend's first line",
                    );
                }
                // Otherwise: without a token, or once authenticated, an
                // auth line is a no-op.
            }
            Ok(line) => self.apply(key, line),
            Err(e) => match (e.action, e.request_id) {
                (Some("response"), Some(request_id)) => {
                    self.bad_answer(key, request_id, &e.message)
                }
                _ => self.reply_line_error(key, e.request_id, &e.message),
            },
        }
    }

    /// The first line of a backend when `--backend-token` is set.
    fn authenticate(&mut self, key: usize, command: Option<Command<'_>>) {
        let Some(token) = self.config.backend_token.as_deref() else {
            return;
        };
        let (presented, events) = match command {
            Some(Command::Auth { token, events }) => (token, events),
            _ => (None, true),
        };
        let good = presented.is_some_and(|p| bool::from(p.as_bytes().ct_eq(token.as_bytes())));
        let Some(b) = self.backends.get_mut(key) else {
            return;
        };
        if !good {
            warn!(
                "backend {} refused: its first line was not a valid auth line",
                b.peer
            );
            return self.refuse_backend(key, "authentication failed");
        }
        b.authenticated = true;
        self.pending_backends -= 1;
        if events {
            self.backend_joins(key);
        } else {
            b.events = false;
            info!("backend {} connected as a publisher (send-only)", b.peer);
        }
    }

    /// A backend without a token declared itself a publisher in its first
    /// line: it leaves the routing, and what it was handed as a backend
    /// that takes events goes on: the queued events to the next backend
    /// (or back to the queue), the connection requests sent to it fail
    /// with 503 (a race of a few microseconds at its connect).
    fn becomes_publisher(&mut self, key: usize, handed: Vec<Vec<u8>>) {
        let Some(b) = self.backends.get_mut(key) else {
            return;
        };
        b.events = false;
        let me = ConnRef {
            key,
            serial: b.serial,
        };
        info!("backend {} is a publisher (send-only)", b.peer);
        self.routing.remove(key);
        self.hand_on(handed);
        self.fail_requests_of(me, "the backend that got the request is send-only");
    }

    /// Tells an unauthenticated backend why it is refused, then ends it.
    pub(super) fn refuse_backend(&mut self, key: usize, why: &str) {
        let Some(b) = self.backends.get_mut(key) else {
            return;
        };
        self.stats.refused_backends += 1;
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

    /// Writes every backend buffer that grew this turn, and lets paused
    /// clients read again once their backend has caught up.
    pub(super) fn flush_backends(&mut self) {
        let mut dirty = std::mem::take(&mut self.turn.dirty_backends);
        for &key in &dirty {
            let Some(b) = self.backends.get_mut(key) else {
                continue;
            };
            b.dirty = false;
            if !b.ready.writable || b.closing {
                continue;
            }
            while b.out_pos < b.out.len() {
                match SocketResult::of_write(b.sock.write(&b.out[b.out_pos..])) {
                    SocketResult::Done(n) => {
                        b.out_pos += n;
                        self.stats.backend_bytes_out += n as u64;
                    }
                    SocketResult::WouldBlock => {
                        b.ready.writable = false;
                        break;
                    }
                    SocketResult::Retry => {}
                    SocketResult::Closed(e) => {
                        match e {
                            Some(e) => info!("backend {} disconnected: {e}", b.peer),
                            None => info!("backend {} disconnected", b.peer),
                        }
                        self.end_backend(key);
                        break;
                    }
                }
            }
            let Some(b) = self.backends.get_mut(key).filter(|b| !b.closing) else {
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
            if !b.paused.is_empty() && b.unsent() <= self.config.max_backend_buffer / 2 {
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
        if self.turn.dirty_backends.is_empty() {
            self.turn.dirty_backends = dirty;
        }
    }

    /// Lets paused clients read again (next turn).
    pub(super) fn resume(&mut self, paused: Vec<ConnRef>) {
        for r in paused {
            if let Some(c) = self.clients.get_mut(r.key) {
                if c.serial == r.serial && c.paused {
                    c.paused = false;
                    list_once(&mut c.read_listed, &mut self.turn.read_again, r.key);
                }
            }
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
