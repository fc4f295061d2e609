//! What the broker counts: the counters on the stop line (and, through the
//! admin listener, in its metrics), and the rule that keeps repeated
//! warnings to one log line a second.

use std::time::{Duration, Instant};

/// Counters of what happened.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    /// Upgrades accepted by a backend.
    pub accepted: u64,
    /// Upgrades rejected by a backend (403 or the backend's own status).
    pub rejected: u64,
    /// Upgrades refused with 503 or 500 (timeout, no backend, backend gone,
    /// limits, an answer that could not be used).
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
    /// Replies and `error` events not written to a backend because it was
    /// more than `--max-backend-buffer` behind.
    pub dropped_replies: u64,
    /// Backends refused: bad or missing auth, too many waiting to
    /// authenticate, an auth line too long.
    pub refused_backends: u64,
}

impl std::fmt::Display for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "accepted {}, rejected {}, unavailable {}, slow consumers {}, protocol errors {}, \
             ping timeouts {}, dropped events {}, refused backend lines {}, dropped replies {}, \
             refused backends {}",
            self.accepted,
            self.rejected,
            self.unavailable,
            self.slow_consumers,
            self.protocol_errors,
            self.ping_timeouts,
            self.dropped_events,
            self.bad_backend_lines,
            self.dropped_replies,
            self.refused_backends,
        )
    }
}

/// At most one log line a second for a repeated event: the first of a run
/// at once, then one a second saying how many were not logged.
#[derive(Debug, Default)]
pub(super) struct LogLimit {
    logged_at: Option<Instant>,
    unlogged: u64,
}

impl LogLimit {
    /// One more occurrence: `Some(n)` when it should be logged now, `n`
    /// being how many occurrences since the last line were not.
    pub fn hit(&mut self, now: Instant) -> Option<u64> {
        let due = self
            .logged_at
            .is_none_or(|at| now.duration_since(at) >= Duration::from_secs(1));
        if due {
            self.logged_at = Some(now);
            Some(std::mem::take(&mut self.unlogged))
        } else {
            self.unlogged += 1;
            None
        }
    }

    /// Ends a run: returns how many occurrences were never logged, and lets
    /// the next one be logged at once.
    pub fn end(&mut self) -> u64 {
        self.logged_at = None;
        std::mem::take(&mut self.unlogged)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_a_second() {
        let t0 = Instant::now();
        let mut limit = LogLimit::default();
        assert_eq!(limit.hit(t0), Some(0));
        for i in 1..100 {
            assert_eq!(limit.hit(t0 + Duration::from_millis(i)), None);
        }
        assert_eq!(limit.hit(t0 + Duration::from_secs(1)), Some(99));
        assert_eq!(limit.hit(t0 + Duration::from_millis(1100)), None);
        assert_eq!(limit.end(), 1);
        assert_eq!(limit.hit(t0 + Duration::from_millis(1200)), Some(0));
    }
}
