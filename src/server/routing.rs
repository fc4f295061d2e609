//! Which backend gets what: round-robin over the backends that take events,
//! per-client stickiness (every event of a client goes to the backend that
//! accepted it while that backend lives, so their order holds), and the
//! queue of events that wait while no backend is connected, bounded by
//! `--queue-size` events and `--queue-bytes` bytes.
//!
//! A backend more than `--max-backend-buffer` behind gets no new
//! connection requests (they go to another backend, or get 503) and no
//! replies or `error` events (dropped and counted); its clients' reading
//! pauses (client_io.rs).

use std::collections::VecDeque;
use std::time::Instant;

use log::{info, warn};

use super::conn::ConnRef;
use super::stats::LogLimit;
use super::{list_once, Server};

/// The routing table and the no-backend queue.
#[derive(Debug)]
pub(super) struct Routing {
    /// Backends that take events, in round-robin order.
    live: Vec<usize>,
    next: usize,
    /// Events waiting for a backend to connect.
    queue: VecDeque<Vec<u8>>,
    /// Bytes in `queue`.
    queue_bytes: usize,
    /// Warnings about dropped events.
    drops: LogLimit,
    /// Warnings about replies dropped for a backend that is behind.
    dropped_replies: LogLimit,
    /// Since when no backend that takes events is connected (`None` while
    /// one is).
    empty_since: Option<Instant>,
}

impl Default for Routing {
    fn default() -> Routing {
        Routing {
            live: Vec::new(),
            next: 0,
            queue: VecDeque::new(),
            queue_bytes: 0,
            drops: LogLimit::default(),
            dropped_replies: LogLimit::default(),
            empty_since: Some(Instant::now()),
        }
    }
}

impl Routing {
    /// Since when no backend that takes events is connected.
    pub fn empty_since(&self) -> Option<Instant> {
        self.empty_since
    }

    /// The next backend in round-robin order.
    pub fn pick(&mut self) -> Option<usize> {
        if self.live.is_empty() {
            return None;
        }
        let i = self.next % self.live.len();
        self.next = self.next.wrapping_add(1);
        Some(self.live[i])
    }

    /// Takes backend `key` out of the rotation.
    pub fn remove(&mut self, key: usize) {
        self.live.retain(|&k| k != key);
        if self.live.is_empty() && self.empty_since.is_none() {
            self.empty_since = Some(Instant::now());
        }
    }

    /// How many backends take events.
    pub fn live_count(&self) -> usize {
        self.live.len()
    }

    /// Events and bytes waiting for a backend.
    pub fn queued(&self) -> (usize, usize) {
        (self.queue.len(), self.queue_bytes)
    }

    fn push_front(&mut self, line: Vec<u8>) {
        self.queue_bytes += line.len();
        self.queue.push_front(line);
    }

    fn pop_front(&mut self) -> Option<Vec<u8>> {
        let line = self.queue.pop_front()?;
        self.queue_bytes -= line.len();
        Some(line)
    }
}

/// Why no backend can take a connection request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum NoBackend {
    /// None that takes events is connected.
    None,
    /// Every one is more than `--max-backend-buffer` behind.
    AllBehind,
}

impl NoBackend {
    /// The reason a client's 503 carries.
    pub fn reason(self) -> &'static str {
        match self {
            NoBackend::None => "no backend connected",
            NoBackend::AllBehind => "every backend is behind (see --max-backend-buffer)",
        }
    }
}

impl Server {
    /// The next backend in round-robin order, as a reference that outlives
    /// key reuse.
    pub(super) fn pick_backend(&mut self) -> Option<ConnRef> {
        let key = self.routing.pick()?;
        let b = self.backends.get(key)?;
        Some(ConnRef {
            key,
            serial: b.serial,
        })
    }

    /// The next backend in round-robin order that is not more than
    /// `--max-backend-buffer` behind.
    pub(super) fn pick_backend_with_room(&mut self) -> Result<ConnRef, NoBackend> {
        for _ in 0..self.routing.live_count() {
            let r = self.pick_backend().ok_or(NoBackend::None)?;
            if self.has_room(r.key) {
                return Ok(r);
            }
        }
        Err(if self.routing.live_count() == 0 {
            NoBackend::None
        } else {
            NoBackend::AllBehind
        })
    }

    /// Whether backend `key` is within `--max-backend-buffer`.
    pub(super) fn has_room(&self, key: usize) -> bool {
        self.backends
            .get(key)
            .is_some_and(|b| b.unsent() <= self.config.max_backend_buffer)
    }

    /// A reply or `error` event for backend `key` is about to be written:
    /// false (and counted, and logged at most once a second) when the
    /// backend is too far behind to be given more.
    pub(super) fn may_reply(&mut self, key: usize) -> bool {
        let Some(b) = self.backends.get(key).filter(|b| !b.closing) else {
            return false;
        };
        if b.unsent() <= self.config.max_backend_buffer {
            return true;
        }
        self.stats.dropped_replies += 1;
        if let Some(unlogged) = self.routing.dropped_replies.hit(Instant::now()) {
            warn!(
                "backend {} is {} bytes behind (see --max-backend-buffer): a reply was dropped \
                 ({unlogged} more since the last warning, {} in all)",
                b.peer,
                b.unsent(),
                self.stats.dropped_replies
            );
        }
        false
    }

    /// A backend joins the routing: it takes the events that waited for a
    /// backend (first, in order) and its share of new connection requests.
    pub(super) fn backend_joins(&mut self, key: usize) {
        let Some(b) = self.backends.get_mut(key) else {
            return;
        };
        let routing = &mut self.routing;
        let flushed = routing.queue.len();
        // Until its first line, a backend without a token may still turn
        // out to be a publisher: keep what it is handed, to hand it on.
        let keep = self.config.backend_token.is_none() && !b.spoke;
        for line in routing.queue.drain(..) {
            b.out.extend_from_slice(&line);
            if keep {
                b.handed.push(line);
            }
        }
        routing.queue = VecDeque::new();
        routing.queue_bytes = 0;
        let unlogged = routing.drops.end();
        if unlogged > 0 {
            warn!(
                "no backend was connected: {unlogged} more events dropped ({} dropped so far)",
                self.stats.dropped_events
            );
        }
        routing.live.push(key);
        routing.empty_since = None;
        list_once(&mut b.dirty, &mut self.turn.dirty_backends, key);
        info!(
            "backend {} connected ({} connected); {flushed} queued events sent to it",
            b.peer,
            routing.live.len()
        );
        self.tell_new_backend(key);
    }

    /// Events a backend was handed but will not handle go to the next
    /// backend that takes events, or back to the front of the queue.
    pub(super) fn hand_on(&mut self, lines: Vec<Vec<u8>>) {
        if lines.is_empty() {
            return;
        }
        match self.pick_backend() {
            Some(r) => {
                if let Some(b) = self.backends.get_mut(r.key) {
                    for line in &lines {
                        b.out.extend_from_slice(line);
                    }
                    list_once(&mut b.dirty, &mut self.turn.dirty_backends, r.key);
                }
            }
            None => {
                for line in lines.into_iter().rev() {
                    self.routing.push_front(line);
                }
            }
        }
    }

    /// Appends one event of client `key` (built by `write` from the
    /// client's context) to its backend, choosing one if it has none or
    /// its backend is gone; with no backend connected, to the queue.
    pub(super) fn route_client_event(
        &mut self,
        key: usize,
        write: impl FnOnce(&mut Vec<u8>, &[u8]),
    ) {
        let Some(c) = self.clients.get(key) else {
            return;
        };
        if c.context.is_none() {
            return;
        }
        let current = c
            .backend
            .filter(|r| self.backends.get(r.key).is_some_and(|b| b.takes_events(*r)));
        let target = match current {
            Some(r) => Some(r),
            None => self.pick_backend(),
        };
        let Some(c) = self.clients.get_mut(key) else {
            return;
        };
        let Some(context) = c.context.as_ref() else {
            return;
        };
        self.stats.backend_events_out += 1;
        match target {
            Some(r) => {
                c.backend = Some(r);
                if let Some(b) = self.backends.get_mut(r.key) {
                    write(&mut b.out, context.json());
                    list_once(&mut b.dirty, &mut self.turn.dirty_backends, r.key);
                }
            }
            None => {
                c.backend = None;
                if self.config.queue_size == 0 {
                    self.event_dropped("--queue-size is 0, event dropped");
                    return;
                }
                let mut line = Vec::with_capacity(128);
                write(&mut line, context.json());
                self.queue_event(line);
            }
        }
    }

    /// Queues an event while no backend is connected, dropping the oldest
    /// past `--queue-size` events or `--queue-bytes` bytes.
    fn queue_event(&mut self, line: Vec<u8>) {
        if line.len() > self.config.queue_bytes {
            self.event_dropped("an event larger than --queue-bytes dropped");
            return;
        }
        while self.routing.queue.len() >= self.config.queue_size
            || self.routing.queue_bytes + line.len() > self.config.queue_bytes
        {
            if self.routing.pop_front().is_none() {
                break;
            }
            self.event_dropped(
                "event queue full (see --queue-size, --queue-bytes), oldest event dropped",
            );
        }
        self.routing.queue_bytes += line.len();
        self.routing.queue.push_back(line);
    }

    /// Counts a dropped event and says so at warn: at once for the first of
    /// a run, then at most once a second (a long outage must not flood the
    /// log); `backend_joins` reports the rest when the outage ends.
    fn event_dropped(&mut self, what: &str) {
        self.stats.dropped_events += 1;
        if let Some(unlogged) = self.routing.drops.hit(Instant::now()) {
            warn!(
                "no backend connected: {what} ({unlogged} more since the last warning, {} dropped so far)",
                self.stats.dropped_events
            );
        }
    }
}
