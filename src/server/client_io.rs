//! Client I/O: reading a WebSocket client's bytes (the upgrade request,
//! then frames through its [`FrameReader`]), what each frame means, and
//! writing its [`OutQueue`](crate::outq::OutQueue) at the end of the turn,
//! where the slow-consumer bound is checked.
//!
//! A client ends here only by recording an [`Ending`]; from then on
//! nothing more is read from it this turn.

use log::{debug, info, warn};

use crate::backend;
use crate::outq::{Flushed, Shared};
use crate::socket::{ReadOutcome, Signal};
use crate::ws::encode;
use crate::ws::frame::{Event, FrameError, FrameReader};

use super::conn::{ConnRef, Ending, Phase};
use super::{list_once, Server};

/// Bytes one client may have read per loop turn before others get a turn.
pub(super) const READ_BUDGET: usize = 256 * 1024;

impl Server {
    /// A poll event for client `key`.
    pub(super) fn client_event(&mut self, key: usize, signal: Signal) {
        let Some(c) = self.clients.get_mut(key) else {
            return;
        };
        if c.ready.record(signal) {
            list_once(&mut c.dirty, &mut self.turn.dirty_clients, key);
        }
        self.client_read(key);
    }

    /// Queues `frame` on client `key`, to be written at the end of the turn
    /// (where the `--max-outbound-bytes` bound is checked).
    pub(super) fn enqueue(&mut self, key: usize, frame: Shared) {
        let Some(c) = self.clients.get_mut(key) else {
            return;
        };
        c.outq.push(frame);
        list_once(&mut c.dirty, &mut self.turn.dirty_clients, key);
    }

    /// Reads what client `key` sent, up to its budget for the turn.
    pub(super) fn client_read(&mut self, key: usize) {
        let mut budget = READ_BUDGET;
        loop {
            let Some(c) = self.clients.get_mut(key) else {
                return;
            };
            if !c.ready.readable || c.paused || c.ending.is_some() {
                return;
            }
            if let Phase::Pending { .. } = c.phase {
                // Nothing is read while the backend decides, but a client
                // that hangs up frees its slot at once.
                if c.ready.hup {
                    debug!(
                        "client {} hung up while its connection request waited",
                        c.peer
                    );
                    self.end_client(key, Ending::Drop);
                }
                return;
            }
            if budget == 0 {
                self.read_client_again(key);
                return;
            }
            if let (Phase::Open, Some(r)) = (&c.phase, c.backend) {
                let limit = self.config.max_backend_buffer;
                if let Some(b) = self.backends.get_mut(r.key) {
                    if b.is(r) && b.unsent() > limit {
                        // TCP backpressure: leave the client's bytes in its
                        // socket until the backend catches up.
                        if b.paused.is_empty() {
                            warn!(
                                "backend {} is {} bytes behind (see --max-backend-buffer): \
                                 reading from its clients paused until it catches up",
                                b.peer,
                                b.unsent()
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
            let n = match c.ready.read(&mut c.sock, &mut scratch) {
                ReadOutcome::Bytes(n) => n,
                ReadOutcome::Drained => {
                    self.scratch = scratch;
                    return;
                }
                ReadOutcome::Ended(e) => {
                    self.scratch = scratch;
                    match e {
                        None => debug!("client {} closed its connection", c.peer),
                        Some(e) => debug!("client {} read error: {e}", c.peer),
                    }
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
        }
    }

    /// Processes the bytes a client has buffered (for example frames sent
    /// right behind the upgrade request, while it waited for the backend).
    pub(super) fn consume_client_inbuf(&mut self, key: usize) {
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
        if c.ending.is_some() {
            return 0;
        }
        match c.phase {
            Phase::Handshake => self.handshake_bytes(key, bytes),
            Phase::Pending { .. } => 0,
            Phase::Open | Phase::Closing { await_peer: true } => {
                let mut reader = std::mem::replace(
                    &mut c.reader,
                    FrameReader::new(self.config.max_message_size, self.config.max_fragments),
                );
                let result = reader.read(bytes, |event| self.client_frame(key, event));
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
        self.end_client(key, Ending::close(e.close_code(), e.reason()));
    }

    /// One frame-level event from an open (or closing) client; returns
    /// whether to keep reading.
    fn client_frame(&mut self, key: usize, event: Event<'_>) -> bool {
        let Some(c) = self.clients.get_mut(key) else {
            return false;
        };
        if c.ending.is_some() {
            return false;
        }
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
                self.stats.client_messages_in += 1;
                self.stats.client_bytes_in += text.len() as u64;
                self.route_client_event(key, |out, ctx| backend::push_new_message(out, text, ctx));
                true
            }
            Event::Binary(bytes) => {
                self.stats.client_messages_in += 1;
                self.stats.client_bytes_in += bytes.len() as u64;
                self.route_client_event(key, |out, ctx| {
                    backend::push_new_binary_message(out, bytes, ctx)
                });
                true
            }
            Event::Ping(payload) => {
                c.outq.push_pong(encode::pong(payload));
                list_once(&mut c.dirty, &mut self.turn.dirty_clients, key);
                true
            }
            Event::Pong => true,
            Event::Close(code, _) => {
                self.end_client(key, Ending::Echo(code));
                false
            }
        }
    }

    /// Writes every client queue that grew this turn.
    ///
    /// The slow-consumer bound is checked here, after the write: what
    /// counts is what a client leaves unread behind the message it is
    /// receiving, not how much one turn added (memory per client stays
    /// under `--max-outbound-bytes` plus one message plus one turn's input).
    pub(super) fn flush_clients(&mut self) {
        let limit = self.config.max_outbound_bytes;
        let mut dirty = std::mem::take(&mut self.turn.dirty_clients);
        for &key in &dirty {
            let Some(c) = self.clients.get_mut(key) else {
                continue;
            };
            c.dirty = false;
            if c.ready.writable {
                let queued = c.outq.bytes();
                let flushed = c.outq.flush(&mut c.sock);
                self.stats.client_bytes_out += (queued - c.outq.bytes()) as u64;
                match flushed {
                    Ok(Flushed::All) => {
                        if let Phase::Closing { await_peer: false } = c.phase {
                            self.turn.dead_clients.push(key);
                        }
                        continue;
                    }
                    Ok(Flushed::Blocked) => c.ready.writable = false,
                    Err(e) => {
                        debug!("client {} write error: {e}", c.peer);
                        // The client is gone, but what it sent before it
                        // went still counts: read what the socket holds
                        // (up to the turn's budget) before dropping it.
                        c.ready.readable = true;
                        c.ready.writable = false;
                        self.client_read(key);
                        self.end_client(key, Ending::Drop);
                        continue;
                    }
                }
            }
            if c.outq.backlog() > limit && c.is_open() {
                self.slow_consumer(key);
            }
        }
        // Keep the list's allocation unless new entries arrived meanwhile.
        dirty.clear();
        if self.turn.dirty_clients.is_empty() {
            self.turn.dirty_clients = dirty;
        }
    }

    /// A client left more than `--max-outbound-bytes` unread: its unsent
    /// messages are dropped (the memory freed at once) and it is closed 1008.
    fn slow_consumer(&mut self, key: usize) {
        self.stats.slow_consumers += 1;
        if let Some(c) = self.clients.get_mut(key) {
            info!(
                "client {} closed: slow consumer, {} bytes queued (see --max-outbound-bytes)",
                c.peer,
                c.outq.bytes()
            );
            let cost = c.outq.cost();
            c.outq.discard_unstarted();
            self.sys.discarded(cost - c.outq.cost());
        }
        self.end_client(key, Ending::close(1008, "slow consumer"));
    }
}
