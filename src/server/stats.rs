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
    /// Messages (text and binary) clients sent, and their payload bytes.
    pub client_messages_in: u64,
    /// Payload bytes of those messages.
    pub client_bytes_in: u64,
    /// Bytes written to clients (frames, handshake replies).
    pub client_bytes_out: u64,
    /// Messages queued on clients by fan-out (one per delivery).
    pub deliveries: u64,
    /// Frame bytes of those deliveries.
    pub delivered_bytes: u64,
    /// Lines backends sent.
    pub backend_lines_in: u64,
    /// Bytes backends sent.
    pub backend_bytes_in: u64,
    /// Client events written for backends (or queued for one).
    pub backend_events_out: u64,
    /// Bytes written to backends.
    pub backend_bytes_out: u64,
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

/// Upper bounds, in seconds, of the buckets of the turn-duration histogram.
pub(super) const TURN_BUCKETS: [f64; 12] = [
    0.000_01, 0.000_05, 0.000_1, 0.000_5, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0,
];

/// How long the loop's turns took (from the end of `poll` to the end of
/// the turn's work), as a histogram: one increment per turn, nothing else.
#[derive(Debug, Default, Clone)]
pub(super) struct TurnTimes {
    /// Turns that took at most `TURN_BUCKETS[i]` but more than the bound
    /// before (the last slot: longer than every bound).
    pub counts: [u64; TURN_BUCKETS.len() + 1],
    /// Seconds in all.
    pub sum: f64,
}

impl TurnTimes {
    /// Records one turn.
    pub fn record(&mut self, seconds: f64) {
        let i = TURN_BUCKETS.partition_point(|&bound| bound < seconds);
        self.counts[i] += 1;
        self.sum += seconds;
    }

    /// Turns recorded.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The count of each bucket by its upper bound (not cumulative: the
    /// encoder adds them up), the last bound infinite.
    pub fn buckets(&self) -> Vec<(f64, u64)> {
        TURN_BUCKETS
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(self.counts)
            .collect()
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

    #[test]
    fn turn_times_fall_in_their_buckets() {
        let mut t = TurnTimes::default();
        t.record(0.000_005);
        t.record(0.000_01);
        t.record(0.002);
        t.record(9.0);
        assert_eq!(t.count(), 4);
        let b = t.buckets();
        assert_eq!(b.len(), TURN_BUCKETS.len() + 1);
        assert_eq!(b[0], (0.000_01, 2));
        assert_eq!(b[5], (0.005, 1));
        assert_eq!(b.last().copied(), Some((f64::INFINITY, 1)));
        assert_eq!(b.iter().map(|(_, n)| n).sum::<u64>(), 4);
    }
}
