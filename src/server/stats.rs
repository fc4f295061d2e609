//! What the broker counts: the counters logged on the stop line.

/// Counters of what happened, logged at shutdown.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    /// Upgrades accepted by a backend.
    pub accepted: u64,
    /// Upgrades rejected by a backend (403).
    pub rejected: u64,
    /// Upgrades that got 503 (timeout, no backend, backend gone).
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
}

impl std::fmt::Display for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "accepted {}, rejected {}, unavailable {}, slow consumers {}, protocol errors {}, \
             ping timeouts {}, dropped events {}, refused backend lines {}",
            self.accepted,
            self.rejected,
            self.unavailable,
            self.slow_consumers,
            self.protocol_errors,
            self.ping_timeouts,
            self.dropped_events,
            self.bad_backend_lines
        )
    }
}
