//! Which backend gets what: round-robin over the backends that take events,
//! per-client stickiness (every event of a client goes to the backend that
//! accepted it while that backend lives, so their order holds), and the
//! bounded queue of events that wait while no backend is connected.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use log::{info, warn};

use super::conn::ConnRef;
use super::{mark_dirty, Server};

/// The routing table and the no-backend queue.
#[derive(Debug, Default)]
pub(super) struct Routing {
    /// Backends that take events, in round-robin order.
    live: Vec<usize>,
    next: usize,
    /// Events waiting for a backend to connect (bounded by `--queue-size`).
    queue: VecDeque<Vec<u8>>,
    /// When a dropped event was last logged.
    drops_warned_at: Option<Instant>,
    /// Drops since that log line.
    drops_unreported: u64,
}

impl Routing {
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
        if routing.drops_unreported > 0 {
            warn!(
                "no backend was connected: {} more events dropped ({} dropped so far)",
                routing.drops_unreported, self.stats.dropped_events
            );
            routing.drops_unreported = 0;
        }
        routing.drops_warned_at = None;
        routing.live.push(key);
        mark_dirty(&mut b.dirty, &mut self.turn.dirty_backends, key);
        info!(
            "backend {} connected ({} connected); {flushed} queued events sent to it",
            b.peer,
            routing.live.len()
        );
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
                    mark_dirty(&mut b.dirty, &mut self.turn.dirty_backends, r.key);
                }
            }
            None => {
                for line in lines.into_iter().rev() {
                    self.routing.queue.push_front(line);
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
        match target {
            Some(r) => {
                c.backend = Some(r);
                if let Some(b) = self.backends.get_mut(r.key) {
                    write(&mut b.out, context.json());
                    mark_dirty(&mut b.dirty, &mut self.turn.dirty_backends, r.key);
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
                if self.routing.queue.len() >= self.config.queue_size {
                    self.routing.queue.pop_front();
                    self.event_dropped("event queue full (see --queue-size), oldest event dropped");
                }
                self.routing.queue.push_back(line);
            }
        }
    }

    /// Counts a dropped event and says so at warn: at once for the first of
    /// a run, then at most once a second (a long outage must not flood the
    /// log); `backend_joins` reports the rest when the outage ends.
    fn event_dropped(&mut self, what: &str) {
        self.stats.dropped_events += 1;
        let routing = &mut self.routing;
        routing.drops_unreported += 1;
        let now = Instant::now();
        if routing
            .drops_warned_at
            .is_none_or(|at| now.duration_since(at) >= Duration::from_secs(1))
        {
            warn!(
                "no backend connected: {what} ({} dropped so far)",
                self.stats.dropped_events
            );
            routing.drops_warned_at = Some(now);
            routing.drops_unreported = 0;
        }
    }
}
