//! Time in the loop: the deadline queues (connect and auth timeouts, pong
//! deadlines, close timeouts), the ping sweep, backend heartbeats, the
//! pause after an accept shortage, and the drain at shutdown.
//!
//! There is no timer per connection. Each queue holds deadlines of one
//! constant timeout, so entries are pushed in deadline order and the front
//! is always the next to fire; an entry names its connection by
//! [`ConnRef`], so one whose connection is gone (or moved on) is skipped.
//! Pings go out by a sweep over the open clients, a slice at a time, so
//! churn leaves nothing behind.

use std::collections::VecDeque;
use std::rc::Rc;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use signal_hook::consts::{SIGINT, SIGTERM};

use crate::backend;
use crate::config::Config;

use super::conn::{ConnRef, Ending, Phase};
use super::{list_once, Server};

/// Steps of the ping sweep per `--ping-interval`.
const PING_SLICES: u32 = 16;

/// A queue of deadlines that all lie the same time after their arming, so
/// they fire in the order they were armed.
#[derive(Debug)]
pub(super) struct Deadlines<T> {
    after: Duration,
    queue: VecDeque<(Instant, T)>,
}

impl<T: Copy> Deadlines<T> {
    /// Deadlines `after` their arming.
    pub fn new(after: Duration) -> Self {
        Deadlines {
            after,
            queue: VecDeque::new(),
        }
    }

    /// Arms a deadline for `item`, `after` from `now`.
    pub fn arm(&mut self, now: Instant, item: T) {
        self.queue.push_back((now + self.after, item));
    }

    /// When the next deadline fires.
    pub fn next(&self) -> Option<Instant> {
        self.queue.front().map(|&(at, _)| at)
    }

    /// The next item whose deadline is not after `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<T> {
        match self.queue.front() {
            Some(&(at, item)) if at <= now => {
                self.queue.pop_front();
                Some(item)
            }
            _ => None,
        }
    }

    /// Gives back most of the ring once a burst has passed, so memory
    /// follows the connections open now, not the busiest moment so far.
    pub fn shrink_idle(&mut self) {
        let capacity = self.queue.capacity();
        if capacity > 1024 && self.queue.len() < capacity / 4 {
            self.queue.shrink_to(capacity / 2);
        }
    }
}

/// What a connect-timeout deadline waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Wait {
    /// The complete upgrade request, counted from the TCP accept.
    Request,
    /// The backend's answer to the connection request.
    Answer,
}

/// Every deadline of the loop.
#[derive(Debug)]
pub(super) struct Timers {
    /// For the upgrade request to arrive, then for the backend's answer.
    pub connect: Deadlines<(ConnRef, Wait)>,
    /// For a backend's auth line.
    pub auth: Deadlines<ConnRef>,
    /// For a pinged client to show a sign of life.
    pub pong: Deadlines<ConnRef>,
    /// For a closing client to finish.
    pub close: Deadlines<ConnRef>,
    /// For an admin connection's request (and reply) to be done.
    pub admin: Deadlines<ConnRef>,
    /// Next step of the ping sweep.
    next_ping_sweep: Instant,
    ping_step: Duration,
    /// Where the ping sweep resumes in the hub's list of open clients.
    ping_cursor: usize,
    next_heartbeat: Instant,
    heartbeat_interval: Duration,
    /// When the drain at shutdown gives up (set once shutting down).
    pub shutdown: Option<Instant>,
    /// When to retry accepting after a shortage.
    pub accept_retry: Option<Instant>,
}

impl Timers {
    pub fn new(config: &Config, now: Instant) -> Timers {
        let ping_step = config.ping_interval / PING_SLICES;
        Timers {
            connect: Deadlines::new(config.connect_timeout),
            auth: Deadlines::new(config.connect_timeout),
            pong: Deadlines::new(config.ping_timeout),
            close: Deadlines::new(config.close_timeout),
            admin: Deadlines::new(config.connect_timeout),
            next_ping_sweep: now + ping_step,
            ping_step,
            ping_cursor: 0,
            next_heartbeat: now + config.heartbeat_interval,
            heartbeat_interval: config.heartbeat_interval,
            shutdown: None,
            accept_retry: None,
        }
    }

    /// The earliest deadline of all.
    pub fn next_deadline(&self) -> Instant {
        [
            self.connect.next(),
            self.auth.next(),
            self.pong.next(),
            self.close.next(),
            self.admin.next(),
            Some(self.next_ping_sweep),
            self.shutdown,
            self.accept_retry,
        ]
        .into_iter()
        .flatten()
        .fold(self.next_heartbeat, Instant::min)
    }
}

impl Server {
    /// Fires every deadline that is due.
    pub(super) fn fire_deadlines(&mut self, now: Instant) {
        if self.timers.accept_retry.is_some_and(|d| d <= now) {
            self.timers.accept_retry = None;
            self.accept_clients();
            self.accept_backends();
            self.accept_admins();
        }
        while let Some(r) = self.timers.admin.pop_due(now) {
            self.admin_timed_out(r);
        }
        self.cluster_timers(now);
        while let Some((r, wait)) = self.timers.connect.pop_due(now) {
            let Some(c) = self
                .clients
                .get(r.key)
                .filter(|c| c.serial == r.serial && c.ending.is_none())
            else {
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
                        Ending::Http {
                            status: 408,
                            text: "Request Timeout",
                            reason: "no complete upgrade request within --connect-timeout".into(),
                        },
                    );
                }
                _ => {}
            }
        }
        while let Some(r) = self.timers.auth.pop_due(now) {
            let Some(b) = self.backends.get_mut(r.key).filter(|b| b.is(r)) else {
                continue;
            };
            if b.authenticated {
                // No first line saying "publisher" came: what it was
                // handed is its own.
                b.handed = Vec::new();
                continue;
            }
            warn!(
                "backend {} refused: no auth line within --connect-timeout",
                b.peer
            );
            self.refuse_backend(r.key, "no auth line within --connect-timeout");
        }
        if now >= self.timers.next_ping_sweep {
            self.timers.next_ping_sweep = now + self.timers.ping_step;
            self.ping_sweep(now);
        }
        while let Some(r) = self.timers.pong.pop_due(now) {
            let Some(c) = self.clients.get_mut(r.key).filter(|c| c.serial == r.serial) else {
                continue;
            };
            if !c.is_open() {
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
                    Ending::close(1001, "no answer to ping (see --ping-timeout)"),
                );
            }
        }
        while let Some(r) = self.timers.close.pop_due(now) {
            if self
                .clients
                .get(r.key)
                .is_some_and(|c| c.serial == r.serial)
            {
                self.end_client(r.key, Ending::Drop);
            }
        }
        if now >= self.timers.next_heartbeat {
            self.timers.next_heartbeat = now + self.timers.heartbeat_interval;
            // Publishers too: a heartbeat is how a backend notices a
            // broker that stopped answering.
            for (key, b) in self.backends.iter_mut() {
                if b.authenticated && !b.closing {
                    backend::push_heartbeat(&mut b.out);
                    list_once(&mut b.dirty, &mut self.turn.dirty_backends, key);
                }
            }
        }
    }

    /// One step of the ping sweep: the next slice of open clients, sized so
    /// the whole list is covered in `PING_SLICES` steps, gets a ping each.
    fn ping_sweep(&mut self, now: Instant) {
        let open = self.hub.all().len();
        if open > 0 {
            let slice = open.div_ceil(PING_SLICES as usize);
            for _ in 0..slice {
                let all = self.hub.all();
                if all.is_empty() {
                    break;
                }
                self.timers.ping_cursor %= all.len();
                let key = all[self.timers.ping_cursor];
                self.timers.ping_cursor += 1;
                let Some(c) = self.clients.get_mut(key) else {
                    continue;
                };
                if c.awaiting_pong || !c.is_open() {
                    continue;
                }
                c.alive = false;
                c.awaiting_pong = true;
                let r = ConnRef {
                    key,
                    serial: c.serial,
                };
                self.timers.pong.arm(now, r);
                self.enqueue(key, Rc::clone(&self.ping_frame));
            }
        }
        self.timers.pong.shrink_idle();
        self.timers.connect.shrink_idle();
        self.timers.close.shrink_idle();
        self.timers.auth.shrink_idle();
        self.timers.admin.shrink_idle();
    }

    /// SIGINT or SIGTERM: stop accepting, close every client (1001 to the
    /// open ones, 503 to those still upgrading) and drain, bounded by
    /// `--close-timeout`.
    pub(super) fn on_signal(&mut self) {
        let mut stop = false;
        for signal in self.signals.iter_mut().flat_map(|s| s.pending()) {
            stop |= signal == SIGINT || signal == SIGTERM;
        }
        if !stop || self.timers.shutdown.is_some() {
            return;
        }
        info!(
            "shutting down: closing {} clients (bounded by --close-timeout)",
            self.clients.len()
        );
        self.timers.shutdown = Some(Instant::now() + self.config.close_timeout);
        for mut listener in [self.ws_listener.take(), self.backend_listener.take()]
            .into_iter()
            .flatten()
        {
            let _ = self.poll.registry().deregister(&mut listener);
        }
        let keys: Vec<usize> = self.clients.iter().map(|(k, _)| k).collect();
        for key in keys {
            let ending = match self.clients[key].phase {
                Phase::Open => Ending::Close {
                    code: 1001,
                    reason: "server shutting down".into(),
                    await_peer: true,
                },
                Phase::Handshake | Phase::Pending { .. } => {
                    Ending::unavailable("server shutting down")
                }
                Phase::Closing { .. } => continue,
            };
            self.end_client(key, ending);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_fire_in_order_and_only_when_due() {
        let t0 = Instant::now();
        let mut d = Deadlines::new(Duration::from_secs(2));
        d.arm(t0, 1);
        d.arm(t0 + Duration::from_secs(1), 2);
        assert_eq!(d.next(), Some(t0 + Duration::from_secs(2)));
        assert_eq!(d.pop_due(t0 + Duration::from_millis(1999)), None);
        assert_eq!(d.pop_due(t0 + Duration::from_secs(2)), Some(1));
        assert_eq!(d.pop_due(t0 + Duration::from_secs(2)), None);
        assert_eq!(d.pop_due(t0 + Duration::from_secs(5)), Some(2));
        assert_eq!(d.next(), None);
    }
}
