//! What the broker reports about itself: a [`Snapshot`] of its counters and
//! gauges taken when the admin listener is asked, rendered as Prometheus
//! text (`GET /metrics`, encoded by the `prometheus-client` crate), as JSON
//! (`GET /stats`), and the health verdict (`GET /health`).
//!
//! Nothing here runs on the hot path: the loop keeps plain counters
//! ([`Stats`]) and the turn histogram ([`TurnTimes`]); gauges that need a
//! walk over the connections are computed per request.

use std::time::Instant;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::json::push_str;

use super::conn::Phase;
use super::stats::{Stats, TurnTimes};
use super::Server;

/// Every figure the admin listener reports, at one moment.
#[derive(Debug, Clone)]
pub(super) struct Snapshot {
    pub stats: Stats,
    pub turns: TurnTimes,
    /// Client connections by state.
    pub handshaking: u64,
    pub pending: u64,
    pub open: u64,
    pub closing: u64,
    pub rooms: u64,
    /// Backends by kind.
    pub event_backends: u64,
    pub publishers: u64,
    pub unauthenticated: u64,
    /// Bytes queued for clients, and the memory they stand for.
    pub outbound_bytes: u64,
    pub outbound_memory: u64,
    /// Bytes queued for backends.
    pub backend_buffered: u64,
    /// Clients whose reading waits for their backend to catch up.
    pub paused_clients: u64,
    /// The no-backend queue.
    pub queued_events: u64,
    pub queued_bytes: u64,
    pub rss_bytes: u64,
    pub open_fds: u64,
    pub uptime_seconds: f64,
    /// Cluster mode: bus up, published, received, dropped, reconnections.
    pub cluster: Option<(bool, u64, u64, u64, u64)>,
    /// `None` when healthy, or why not.
    pub unhealthy: Option<String>,
}

impl Server {
    /// The figures as they are now.
    pub(super) fn snapshot(&self) -> Snapshot {
        let (mut handshaking, mut pending, mut open, mut closing) = (0, 0, 0, 0);
        let (mut outbound_bytes, mut outbound_memory, mut paused_clients) = (0, 0, 0);
        for (_, c) in &self.clients {
            match c.phase {
                Phase::Handshake => handshaking += 1,
                Phase::Pending { .. } => pending += 1,
                Phase::Open => open += 1,
                Phase::Closing { .. } => closing += 1,
            }
            outbound_bytes += c.outq.bytes() as u64;
            outbound_memory += c.outq.cost() as u64;
            paused_clients += u64::from(c.paused);
        }
        let (mut event_backends, mut publishers, mut unauthenticated, mut backend_buffered) =
            (0, 0, 0, 0);
        for (_, b) in self.backends.iter().filter(|(_, b)| !b.closing) {
            match (b.authenticated, b.events) {
                (false, _) => unauthenticated += 1,
                (true, true) => event_backends += 1,
                (true, false) => publishers += 1,
            }
            backend_buffered += b.unsent() as u64;
        }
        let (queued_events, queued_bytes) = self.routing.queued();
        let (rss_bytes, open_fds) = process_figures();
        Snapshot {
            stats: self.stats.clone(),
            turns: self.turn_times.clone(),
            handshaking,
            pending,
            open,
            closing,
            rooms: self.hub.room_count() as u64,
            event_backends,
            publishers,
            unauthenticated,
            outbound_bytes,
            outbound_memory,
            backend_buffered,
            paused_clients,
            queued_events: queued_events as u64,
            queued_bytes: queued_bytes as u64,
            rss_bytes,
            open_fds,
            uptime_seconds: self.started.elapsed().as_secs_f64(),
            cluster: self.cluster_figures(),
            unhealthy: self.health(Instant::now()).err(),
        }
    }

    /// Whether the broker is serving as it should, or the one-line reason
    /// it is not: draining, no backend for `--connect-timeout`, or a bound
    /// being enforced right now.
    pub(super) fn health(&self, now: Instant) -> Result<(), String> {
        if self.timers.shutdown.is_some() {
            return Err("draining: the broker is shutting down".into());
        }
        if let Some(since) = self.routing.empty_since() {
            let waited = now.saturating_duration_since(since);
            if waited >= self.config.connect_timeout {
                return Err(format!(
                    "no backend connected for {:.0} s (see --connect-timeout)",
                    waited.as_secs_f64()
                ));
            }
        }
        if self.accept_failing {
            return Err("out of file descriptors: accepting is paused".into());
        }
        if self.cluster_down() {
            return Err(
                "the cluster bus (Redis) is unavailable: messages to other brokers are dropped"
                    .into(),
            );
        }
        if self.clients.len() >= self.max_connections {
            return Err(format!(
                "at the connection limit: {} clients (see --max-connections)",
                self.clients.len()
            ));
        }
        if self.pending.len() >= self.config.max_pending_requests {
            return Err(format!(
                "{} connection requests waiting (see --max-pending-requests)",
                self.pending.len()
            ));
        }
        if self.pending_backends >= self.config.max_pending_backends {
            return Err(format!(
                "{} backends waiting to authenticate (see --max-pending-backends)",
                self.pending_backends
            ));
        }
        let limit = self.config.max_backend_buffer;
        if let Some((_, b)) = self
            .backends
            .iter()
            .find(|(_, b)| !b.closing && b.unsent() > limit)
        {
            return Err(format!(
                "backend {} is {} bytes behind: its clients are paused (see --max-backend-buffer)",
                b.peer,
                b.unsent()
            ));
        }
        Ok(())
    }
}

/// Resident memory (bytes) and open descriptors of this process, from /proc
/// (0 where it cannot be read).
fn process_figures() -> (u64, u64) {
    let rss = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kib| kib * 1024);
    let fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64);
    (rss, fds)
}

/// A counter or gauge of the snapshot: name (without `pystrands_`), help,
/// labels, value.
type Figure = (
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
    u64,
);

impl Snapshot {
    /// The counters, as (name, help, labels, value); Prometheus adds
    /// `_total` to each name.
    fn counters(&self) -> Vec<Figure> {
        let s = &self.stats;
        let mut figures: Vec<Figure> = vec![
            ("upgrades", "WebSocket upgrades by outcome: accepted by a backend, rejected by it (403 or its own status), or refused by the broker (503, 500).", &[("outcome", "accepted")], s.accepted),
            ("upgrades", "", &[("outcome", "rejected")], s.rejected),
            ("upgrades", "", &[("outcome", "unavailable")], s.unavailable),
            ("slow_consumers", "Clients closed (1008) for leaving more than --max-outbound-bytes unread.", &[], s.slow_consumers),
            ("protocol_errors", "Clients closed for a WebSocket protocol error (1002, 1007, 1009).", &[], s.protocol_errors),
            ("ping_timeouts", "Clients closed (1001) for not answering a ping within --ping-timeout.", &[], s.ping_timeouts),
            ("dropped_events", "Client events dropped because no backend was connected and the queue was full (--queue-size, --queue-bytes).", &[], s.dropped_events),
            ("refused_backend_lines", "Backend lines answered with an error line.", &[], s.bad_backend_lines),
            ("dropped_replies", "Replies and error events not written to a backend more than --max-backend-buffer behind.", &[], s.dropped_replies),
            ("refused_backends", "Backend connections refused: failed authentication, too many waiting to authenticate, an auth line too long.", &[], s.refused_backends),
            ("client_messages_received", "Messages clients sent.", &[], s.client_messages_in),
            ("client_received_bytes", "Payload bytes of the messages clients sent.", &[], s.client_bytes_in),
            ("client_sent_bytes", "Bytes written to clients.", &[], s.client_bytes_out),
            ("deliveries", "Messages queued on clients by room messages, private messages and broadcasts (one per client reached).", &[], s.deliveries),
            ("delivered_bytes", "Frame bytes of those deliveries.", &[], s.delivered_bytes),
            ("backend_lines_received", "Lines backends sent.", &[], s.backend_lines_in),
            ("backend_received_bytes", "Bytes backends sent.", &[], s.backend_bytes_in),
            ("backend_events_sent", "Client events written for backends (or queued while none was connected).", &[], s.backend_events_out),
            ("backend_sent_bytes", "Bytes written to backends.", &[], s.backend_bytes_out),
        ];
        if let Some((_, published, received, dropped, reconnects)) = self.cluster {
            figures.extend([
                ("cluster_published", "Messages and commands published to the other brokers.", &[][..], published),
                ("cluster_received", "Messages and commands received from the other brokers.", &[], received),
                ("cluster_dropped", "Messages and commands for the other brokers dropped (bus unavailable, or more than --max-redis-buffer waiting).", &[], dropped),
                ("cluster_reconnects", "Connection attempts to Redis.", &[], reconnects),
            ]);
        }
        figures
    }

    /// The gauges, as (name, help, labels, value).
    fn gauges(&self) -> Vec<Figure> {
        let mut figures: Vec<Figure> = vec![
            ("connections", "Client connections by state: reading the upgrade request, waiting for a backend's answer, open, closing.", &[("state", "handshaking")], self.handshaking),
            ("connections", "", &[("state", "pending")], self.pending),
            ("connections", "", &[("state", "open")], self.open),
            ("connections", "", &[("state", "closing")], self.closing),
            ("rooms", "Rooms with at least one member.", &[], self.rooms),
            ("backends", "Backend connections by kind: taking events, publishers (send-only), not yet authenticated.", &[("kind", "events")], self.event_backends),
            ("backends", "", &[("kind", "publisher")], self.publishers),
            ("backends", "", &[("kind", "unauthenticated")], self.unauthenticated),
            ("outbound_queued_bytes", "Bytes queued for clients and not yet written.", &[], self.outbound_bytes),
            ("outbound_queued_memory_bytes", "Memory those queues stand for (bytes plus 48 per queued message), what --max-outbound-bytes bounds.", &[], self.outbound_memory),
            ("backend_buffered_bytes", "Bytes queued for backends and not yet written.", &[], self.backend_buffered),
            ("paused_clients", "Clients not read because their backend is more than --max-backend-buffer behind.", &[], self.paused_clients),
            ("no_backend_queue_events", "Client events waiting for a backend to connect.", &[], self.queued_events),
            ("no_backend_queue_bytes", "Bytes of those events.", &[], self.queued_bytes),
            ("healthy", "1 while /health answers 200, 0 while it answers 503.", &[], u64::from(self.unhealthy.is_none())),
        ];
        if let Some((up, ..)) = self.cluster {
            figures.push((
                "cluster_up",
                "1 while both links to Redis are up (cluster mode).",
                &[],
                u64::from(up),
            ));
        }
        figures
    }
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for (kind, figures) in [
            (MetricType::Counter, self.counters()),
            (MetricType::Gauge, self.gauges()),
        ] {
            let mut i = 0;
            while i < figures.len() {
                // Consecutive figures of one name are one family.
                let name = figures[i].0;
                let family: Vec<&Figure> =
                    figures[i..].iter().take_while(|f| f.0 == name).collect();
                i += family.len();
                let mut metric = encoder.encode_descriptor(name, family[0].1, None, kind)?;
                for &&(_, _, labels, value) in &family {
                    if labels.is_empty() {
                        encode_value(&mut metric, kind, value)?;
                    } else {
                        let labels: Vec<(&str, &str)> = labels.to_vec();
                        let mut labelled = metric.encode_family(&labels)?;
                        encode_value(&mut labelled, kind, value)?;
                    }
                }
            }
        }
        let buckets = self.turns.buckets();
        encoder
            .encode_descriptor(
                "turn_duration_seconds",
                "How long each turn of the event loop took, from the end of poll to the end of its work.",
                None,
                MetricType::Histogram,
            )?
            .encode_histogram::<NoLabelSet>(self.turns.sum, self.turns.count(), &buckets, None)?;
        for (name, help, value) in [
            (
                "process_resident_memory_bytes",
                "Resident memory of the broker process.",
                self.rss_bytes,
            ),
            (
                "process_open_fds",
                "Open file descriptors of the broker process.",
                self.open_fds,
            ),
        ] {
            ConstGauge::new(value as i64).encode(encoder.encode_descriptor(
                name,
                help,
                None,
                MetricType::Gauge,
            )?)?;
        }
        ConstGauge::new(self.uptime_seconds).encode(encoder.encode_descriptor(
            "uptime_seconds",
            "Seconds since the broker started.",
            None,
            MetricType::Gauge,
        )?)?;
        Ok(())
    }
}

fn encode_value(
    metric: &mut prometheus_client::encoding::MetricEncoder<'_>,
    kind: MetricType,
    value: u64,
) -> Result<(), std::fmt::Error> {
    match kind {
        MetricType::Counter => metric.encode_counter::<NoLabelSet, _, u64>(&value, None),
        _ => metric.encode_gauge(&(value as i64)),
    }
}

/// The Prometheus text exposition (format 0.0.4) of a snapshot; names are
/// prefixed `pystrands_`.
pub(super) fn prometheus_text(snapshot: &Snapshot) -> String {
    let mut registry = Registry::with_prefix("pystrands");
    registry.register_collector(Box::new(snapshot.clone()));
    let mut out = String::with_capacity(8192);
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry);
    out
}

/// The same figures as a JSON object, for humans and scripts.
pub(super) fn json(snapshot: &Snapshot) -> String {
    let mut out = Vec::with_capacity(2048);
    out.extend_from_slice(b"{\"healthy\":");
    out.extend_from_slice(if snapshot.unhealthy.is_none() {
        b"true"
    } else {
        b"false"
    });
    out.extend_from_slice(b",\"unhealthy_reason\":");
    match &snapshot.unhealthy {
        Some(why) => push_str(&mut out, why),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(format!(",\"uptime_seconds\":{:.3}", snapshot.uptime_seconds).as_bytes());
    for (section, figures) in [
        ("counters", snapshot.counters()),
        ("gauges", snapshot.gauges()),
    ] {
        out.extend_from_slice(b",\"");
        out.extend_from_slice(section.as_bytes());
        out.extend_from_slice(b"\":{");
        for (i, (name, _, labels, value)) in figures.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            let key = match labels.first() {
                Some((_, label)) => format!("{name}_{label}"),
                None => (*name).to_owned(),
            };
            push_str(&mut out, &key);
            out.extend_from_slice(format!(":{value}").as_bytes());
        }
        out.push(b'}');
    }
    out.extend_from_slice(
        format!(
            ",\"process\":{{\"resident_memory_bytes\":{},\"open_fds\":{}}},\"turns\":{{\"count\":{},\"seconds\":{:.6}}}}}",
            snapshot.rss_bytes,
            snapshot.open_fds,
            snapshot.turns.count(),
            snapshot.turns.sum
        )
        .as_bytes(),
    );
    out.push(b'\n');
    String::from_utf8(out).unwrap_or_default()
}
