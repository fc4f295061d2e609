//! Cluster mode on the event loop (`--redis-url`): two Redis connections
//! of the loop's own, the subscriber link and the command link (pipelined
//! commands, a queue of pending replies), and what crosses them.
//!
//! - Interest: a broker subscribes a room's channel when the room gets its
//!   first member here and unsubscribes about a second after its last
//!   member left (so churn does not storm Redis); the same for a client
//!   id's channel; its own node channel and the broadcast channel always.
//!   Subscriptions made in one turn go out as one command.
//! - Sending: a backend's message goes to the local members first, then
//!   once to Redis as the frame already encoded (bus.rs); commands by
//!   client id (join, leave, disconnect, set_metadata) go to the client's
//!   channel, commands and messages for a connection of another broker to
//!   that broker's node channel. Acks wait for the PUBLISH reply, whose
//!   count of receivers gives `nodes`.
//! - Receiving: a message from the bus enters the same fan-out as a local
//!   one; a broker drops its own publications.
//! - Presence lives in Redis: per room a hash (connection id -> client id
//!   and metadata) and a sorted set of expiries, refreshed every third of
//!   `--presence-ttl`; a query removes the expired entries and reads the
//!   hash in one script.
//! - Failure: each link reconnects with capped, jittered backoff, and is
//!   probed every third of `--redis-timeout` (a link that answers nothing
//!   for `--redis-timeout` is taken for stalled and reconnected).
//!   Meanwhile local delivery goes on; cross-broker messages are dropped
//!   and counted; backends get one `error` line per outage and one when the
//!   bus is back; /health reports it. Commands waiting for Redis are
//!   bounded by `--max-redis-buffer`.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::io::Write;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ahash::{AHashMap, AHashSet};
use log::{info, warn};
use mio::net::TcpStream;
use mio::Interest;

use crate::backend::{self, Command, Target};
use crate::cluster::bus::{self, Channel, Kind, Names};
use crate::cluster::resp::{self, Reply};
use crate::config::ClusterConfig;
use crate::hub::{Audience, Change};
use crate::json::push_str;
use crate::outq::Shared;
use crate::socket::{ReadOutcome, Readiness, Signal, SocketResult};

use super::conn::ConnRef;
use super::stats::LogLimit;
use super::{list_once, Endpoint, Server};

/// First pause before reconnecting; doubled up to [`BACKOFF_MAX`].
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How long a room or client channel stays subscribed after its last
/// local member left.
const UNSUBSCRIBE_GRACE: Duration = Duration::from_secs(1);
/// Bytes read from the subscriber link per turn before others get a turn
/// (it carries the whole cluster's traffic for this broker: read it first
/// and generously, or Redis disconnects us for a full output buffer).
const SUB_READ_BUDGET: usize = 16 * 1024 * 1024;

/// Removes a room's expired presence entries, then returns the hash
/// (connection id, JSON, ...). KEYS: hash, expiry set; ARGV: now (ms).
const PRESENCE_SCRIPT: &str = "\
local expired = redis.call('zrangebyscore', KEYS[2], '-inf', ARGV[1])
for i = 1, #expired, 1000 do
  redis.call('hdel', KEYS[1], unpack(expired, i, math.min(i + 999, #expired)))
end
if #expired > 0 then redis.call('zremrangebyscore', KEYS[2], '-inf', ARGV[1]) end
return redis.call('hgetall', KEYS[1])";

/// Which link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Role {
    /// SUBSCRIBE, and the messages of the channels.
    Sub = 0,
    /// PUBLISH and presence, with replies in order.
    Cmd = 1,
}

#[derive(Debug)]
enum LinkState {
    Down { retry_at: Instant },
    Connecting { since: Instant },
    Up,
}

/// One connection to Redis.
#[derive(Debug)]
struct Link {
    role: Role,
    sock: Option<TcpStream>,
    state: LinkState,
    ready: Readiness,
    inbuf: Vec<u8>,
    out: Vec<u8>,
    out_pos: usize,
    backoff: Duration,
    /// When the link was last heard from, and whether a probe is out.
    heard: Instant,
    probe_out: bool,
    next_probe: Instant,
    read_listed: bool,
}

impl Link {
    fn new(role: Role, now: Instant) -> Link {
        Link {
            role,
            sock: None,
            state: LinkState::Down { retry_at: now },
            ready: Readiness::default(),
            inbuf: Vec::new(),
            out: Vec::new(),
            out_pos: 0,
            backoff: BACKOFF_MIN,
            heard: now,
            probe_out: false,
            next_probe: now,
            read_listed: false,
        }
    }

    fn is_up(&self) -> bool {
        matches!(self.state, LinkState::Up)
    }

    fn unsent(&self) -> usize {
        self.out.len() - self.out_pos
    }

    fn name(&self) -> &'static str {
        match self.role {
            Role::Sub => "subscriber",
            Role::Cmd => "command",
        }
    }
}

/// What a reply on the command link answers.
#[derive(Debug)]
enum Pending {
    /// Nothing waits for it (SELECT, HSET, ...).
    Ignore,
    /// A PUBLISH; an ack may wait for its count.
    Publish {
        /// 1 when this broker is subscribed to the channel itself (its
        /// count includes us).
        ours: u8,
        ack: Option<AckWait>,
    },
    /// A presence query.
    Presence {
        backend: ConnRef,
        request_id: Option<String>,
        room: String,
        stats: bool,
    },
}

/// An ack that waits for a PUBLISH's count.
#[derive(Debug)]
struct AckWait {
    backend: ConnRef,
    request_id: Option<String>,
    local: usize,
}

/// Cluster mode's state.
#[derive(Debug)]
pub(super) struct Cluster {
    config: ClusterConfig,
    names: Names,
    sub: Link,
    cmd: Link,
    pending: VecDeque<Pending>,
    /// Channels subscribed (or asked for), and the ones to subscribe or
    /// unsubscribe at the end of the turn.
    subscribed: AHashSet<String>,
    to_subscribe: Vec<String>,
    to_unsubscribe: Vec<String>,
    /// Channels whose last local member left, with when to unsubscribe.
    leaving: AHashMap<String, Instant>,
    leaving_order: VecDeque<(Instant, String)>,
    /// Connections whose metadata changed this turn.
    metadata_changed: Vec<usize>,
    next_refresh: Instant,
    /// Backends were told the bus is unavailable.
    outage_announced: bool,
    dropped_log: LogLimit,
    /// The buffer links read into.
    chunk: Vec<u8>,
    /// Counters, for the metrics.
    pub published: u64,
    pub received: u64,
    pub dropped: u64,
    pub reconnects: u64,
}

impl Cluster {
    pub fn new(config: ClusterConfig, now: Instant) -> Cluster {
        let names = Names::new(&config.prefix);
        let refresh = config.presence_ttl / 3;
        Cluster {
            names,
            sub: Link::new(Role::Sub, now),
            cmd: Link::new(Role::Cmd, now),
            pending: VecDeque::new(),
            subscribed: AHashSet::new(),
            to_subscribe: Vec::new(),
            to_unsubscribe: Vec::new(),
            leaving: AHashMap::new(),
            leaving_order: VecDeque::new(),
            metadata_changed: Vec::new(),
            next_refresh: now + refresh,
            outage_announced: false,
            dropped_log: LogLimit::default(),
            chunk: Vec::new(),
            published: 0,
            received: 0,
            dropped: 0,
            reconnects: 0,
            config,
        }
    }

    /// Both links are up.
    pub fn is_up(&self) -> bool {
        self.sub.is_up() && self.cmd.is_up()
    }

    /// The earliest moment a cluster timer needs the loop.
    pub fn next_deadline(&self) -> Option<Instant> {
        let mut next = Some(self.next_refresh);
        for link in [&self.sub, &self.cmd] {
            let at = match link.state {
                LinkState::Down { retry_at } => retry_at,
                LinkState::Connecting { since } => since + self.config.redis_timeout,
                LinkState::Up if link.probe_out => link.heard + self.config.redis_timeout,
                LinkState::Up => link.next_probe,
            };
            next = next.min(Some(at)).or(Some(at));
        }
        if let Some(&(at, _)) = self.leaving_order.front() {
            next = next.map(|n| n.min(at));
        }
        next
    }

    fn link(&mut self, role: Role) -> &mut Link {
        match role {
            Role::Sub => &mut self.sub,
            Role::Cmd => &mut self.cmd,
        }
    }

    /// A command on the command link whose reply nobody waits for.
    fn fire(&mut self, args: &[&[u8]]) -> bool {
        self.command(Role::Cmd, args, Pending::Ignore)
    }

    /// Queues a command on a link (dropped when the link is down).
    fn command(&mut self, role: Role, args: &[&[u8]], pending: Pending) -> bool {
        let link = self.link(role);
        if !link.is_up() {
            return false;
        }
        resp::push_command(&mut link.out, args);
        if role == Role::Cmd {
            self.pending.push_back(pending);
        }
        true
    }

    /// Wants `channel` subscribed (cancels a pending unsubscribe).
    fn want(&mut self, channel: String) {
        if self.leaving.remove(&channel).is_some() {
            return;
        }
        if self.subscribed.insert(channel.clone()) {
            self.to_subscribe.push(channel);
        }
    }

    /// No longer needs `channel`: unsubscribed after the grace period.
    fn unwant(&mut self, channel: String, now: Instant) {
        if self.subscribed.contains(&channel) {
            let at = now + UNSUBSCRIBE_GRACE;
            self.leaving.insert(channel.clone(), at);
            self.leaving_order.push_back((at, channel));
        }
    }
}

/// Milliseconds since the epoch (the presence expiry scores: brokers of
/// one cluster must keep their clocks in step, as NTP does).
fn epoch_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A pause of `base` with ±50 % jitter, so brokers that lost Redis
/// together do not come back in step.
fn jittered(base: Duration) -> Duration {
    let r = (uuid::Uuid::new_v4().as_u128() % 1000) as f64 / 1000.0;
    base.mul_f64(0.5 + r)
}

/// Whether a connection id is this broker's (its prefix is ours).
fn prefix_of(connection_id: &str) -> &str {
    connection_id.split_once('-').map_or("", |(p, _)| p)
}

impl Server {
    /// Cluster mode starts: the broker's own channels, and the first
    /// connection attempts (on the next timer check).
    pub(super) fn start_cluster(&mut self) {
        let Some(config) = self.config.cluster.clone() else {
            return;
        };
        info!(
            "cluster mode: node {} through {} (prefix {})",
            config.node_id, config.url, config.prefix
        );
        let mut cluster = Cluster::new(config, Instant::now());
        let node = cluster.names.channel(Channel::Node(self.ids.prefix()));
        let broadcast = cluster.names.channel(Channel::Broadcast);
        cluster.want(node);
        cluster.want(broadcast);
        cluster.to_subscribe.clear();
        self.hub.track_changes();
        self.cluster = Some(cluster);
    }

    /// A poll event on a Redis link.
    pub(super) fn redis_event(&mut self, role: usize, signal: Signal) {
        let role = if role == 0 { Role::Sub } else { Role::Cmd };
        let Some(cluster) = self.cluster.as_mut() else {
            return;
        };
        let link = cluster.link(role);
        link.ready.record(signal);
        if let LinkState::Connecting { .. } = link.state {
            if !link.ready.writable && !link.ready.hup {
                return;
            }
            let failed = match link.sock.as_ref() {
                Some(sock) => match sock.take_error() {
                    Ok(Some(e)) | Err(e) => Some(e.to_string()),
                    Ok(None) => sock.peer_addr().err().map(|e| e.to_string()),
                },
                None => Some("no socket".into()),
            };
            match failed {
                Some(why) => return self.link_down(role, &format!("cannot connect: {why}")),
                None => self.link_up(role),
            }
        }
        self.link_read(role);
        self.link_flush(role);
    }

    /// Reads what a link has, up to its budget, and handles every reply.
    pub(super) fn link_read(&mut self, role: Role) {
        let Some(cluster) = self.cluster.as_mut() else {
            return;
        };
        let link = cluster.link(role);
        if !link.is_up() {
            return;
        }
        let mut budget = SUB_READ_BUDGET;
        let limit = cluster.config.max_redis_buffer + super::READ_CHUNK;
        // The links' own read buffer (the client scratch buffer may be in
        // use further up: never share it).
        let mut chunk = std::mem::take(&mut cluster.chunk);
        if chunk.is_empty() {
            chunk = vec![0; super::READ_CHUNK];
        }
        self.link_read_with(role, &mut budget, limit, &mut chunk);
        if let Some(cluster) = self.cluster.as_mut() {
            cluster.chunk = chunk;
        }
    }

    fn link_read_with(&mut self, role: Role, budget: &mut usize, limit: usize, chunk: &mut [u8]) {
        loop {
            let Some(cluster) = self.cluster.as_mut() else {
                return;
            };
            let link = cluster.link(role);
            if !link.ready.readable || !link.is_up() {
                return;
            }
            if *budget == 0 {
                list_once(
                    &mut link.read_listed,
                    &mut self.turn.redis_read_again,
                    role as usize,
                );
                return;
            }
            let Some(sock) = link.sock.as_mut() else {
                return;
            };
            match link.ready.read(sock, chunk) {
                ReadOutcome::Bytes(n) => {
                    *budget = budget.saturating_sub(n);
                    link.inbuf.extend_from_slice(&chunk[..n]);
                    link.heard = Instant::now();
                    link.probe_out = false;
                }
                ReadOutcome::Drained => return,
                ReadOutcome::Ended(e) => {
                    let why =
                        e.map_or_else(|| "Redis closed the connection".into(), |e| e.to_string());
                    return self.link_down(role, &why);
                }
            }
            if let Err(why) = self.link_replies(role) {
                return self.link_down(role, &why);
            }
            let Some(cluster) = self.cluster.as_ref() else {
                return;
            };
            let link = match role {
                Role::Sub => &cluster.sub,
                Role::Cmd => &cluster.cmd,
            };
            if link.inbuf.len() > limit {
                return self.link_down(role, "a reply longer than --max-redis-buffer");
            }
        }
    }

    /// Handles every complete reply in a link's input.
    fn link_replies(&mut self, role: Role) -> Result<(), String> {
        let Some(cluster) = self.cluster.as_mut() else {
            return Ok(());
        };
        let mut inbuf = std::mem::take(&mut cluster.link(role).inbuf);
        let mut at = 0;
        let result = loop {
            match resp::next_reply(&inbuf, at) {
                Ok(Some((reply, len))) => {
                    at += len;
                    match role {
                        Role::Sub => self.sub_reply(&inbuf, reply),
                        Role::Cmd => self.cmd_reply(&inbuf, reply),
                    }
                }
                Ok(None) => break Ok(()),
                Err(e) => break Err(format!("not RESP2 from Redis: {e}")),
            }
        };
        inbuf.drain(..at);
        if let Some(cluster) = self.cluster.as_mut() {
            let link = cluster.link(role);
            if link.is_up() {
                link.inbuf = inbuf;
            }
        }
        result
    }

    /// A reply on the subscriber link: a channel's message, a
    /// (un)subscription confirmation, or a probe's answer.
    fn sub_reply(&mut self, buf: &[u8], reply: Reply) {
        let Reply::Array(items) = reply else {
            if let Reply::Error(_) = reply {
                warn!(
                    "cluster: Redis refused a subscription: {}",
                    reply.text(buf).unwrap_or("?")
                );
            }
            return;
        };
        if items.first().and_then(|k| k.text(buf)) != Some("message") || items.len() < 3 {
            return;
        }
        let (Some(channel), Some(payload)) = (items[1].text(buf), items[2].bytes(buf)) else {
            return;
        };
        self.bus_message(channel, payload);
    }

    /// A message from another broker.
    fn bus_message(&mut self, channel: &str, payload: &[u8]) {
        let Some(cluster) = self.cluster.as_mut() else {
            return;
        };
        let Some(message) = bus::decode(payload) else {
            return;
        };
        if message.origin == cluster.config.node_id {
            return;
        }
        cluster.received += 1;
        let Some(channel) = cluster.names.parse(channel) else {
            return;
        };
        match message.kind {
            Kind::Frame => {
                let serial;
                let audience = match channel {
                    Channel::Room(room) => Audience::Room(room),
                    Channel::Client(id) => Audience::ClientId(id),
                    Channel::Broadcast => Audience::All,
                    Channel::Node(_) => match self.ids.serial(message.target) {
                        Some(s) => {
                            serial = s;
                            Audience::Connection(serial)
                        }
                        None => return,
                    },
                };
                let skip = self.excluded(&message.exclude);
                let frame: Shared = Rc::from(message.payload);
                self.fan_out_frame(audience, &frame, &skip);
            }
            Kind::Command => {
                let mut line = message.payload.to_vec();
                let mut parser = std::mem::take(&mut self.line_parser);
                parser.parse(&mut line, |line| {
                    if let Ok(line) = line {
                        self.apply_here(line.command);
                    }
                });
                self.line_parser = parser;
            }
        }
    }

    /// A reply on the command link: the answer to the oldest command.
    fn cmd_reply(&mut self, buf: &[u8], reply: Reply) {
        let Some(cluster) = self.cluster.as_mut() else {
            return;
        };
        let Some(pending) = cluster.pending.pop_front() else {
            return;
        };
        if let Reply::Error(_) = &reply {
            warn!(
                "cluster: Redis refused a command: {}",
                reply.text(buf).unwrap_or("?")
            );
        }
        match pending {
            Pending::Ignore => {}
            Pending::Publish { ours, ack } => {
                let count = match reply {
                    Reply::Integer(n) => n.max(0) as u64,
                    _ => 0,
                };
                if let Some(ack) = ack {
                    self.send_ack(ack, count.saturating_sub(u64::from(ours)));
                }
            }
            Pending::Presence {
                backend,
                request_id,
                room,
                stats,
            } => {
                let Reply::Array(items) = reply else {
                    return self.cluster_error_reply(
                        backend,
                        request_id.as_deref(),
                        "presence: Redis could not answer",
                    );
                };
                let pairs: Vec<(&str, &[u8])> = items
                    .chunks(2)
                    .filter_map(|kv| Some((kv.first()?.text(buf)?, kv.get(1)?.bytes(buf)?)))
                    .collect();
                self.presence_reply(backend, request_id.as_deref(), &room, stats, &pairs);
            }
        }
    }

    /// Answers an ack once Redis said how many brokers got the message.
    fn send_ack(&mut self, ack: AckWait, nodes: u64) {
        let Some(b) = self
            .backends
            .get(ack.backend.key)
            .filter(|b| b.is(ack.backend))
        else {
            return;
        };
        let _ = b;
        let local = ack.local;
        let request_id = ack.request_id;
        self.reply_to(ack.backend.key, |out| {
            backend::push_reply(out, "ack", request_id.as_deref(), |out| {
                out.extend_from_slice(
                    format!("\"connections\":{local},\"nodes\":{nodes}").as_bytes(),
                );
            })
        });
    }

    /// An `error` reply to a request the cluster could not answer.
    fn cluster_error_reply(&mut self, backend: ConnRef, request_id: Option<&str>, why: &str) {
        if self
            .backends
            .get(backend.key)
            .is_some_and(|b| b.is(backend))
        {
            self.reply_line_error(backend.key, request_id, why);
        }
    }

    /// The cluster-wide presence of a room, from the entries Redis holds
    /// (connection id -> `{"client_id":..,"metadata":..}`), grouped by
    /// client id.
    fn presence_reply(
        &mut self,
        backend: ConnRef,
        request_id: Option<&str>,
        room: &str,
        stats: bool,
        pairs: &[(&str, &[u8])],
    ) {
        if !self
            .backends
            .get(backend.key)
            .is_some_and(|b| b.is(backend))
        {
            return;
        }
        // Each value: {"client_id":..,"metadata":..}, parsed into owned
        // pieces first (the tape borrows the bytes it parsed).
        let mut parsed: Vec<(&str, String, Vec<u8>)> = Vec::new();
        let mut sorted: Vec<&(&str, &[u8])> = pairs.iter().collect();
        sorted.sort_by(|a, b| a.0.cmp(b.0));
        for (connection_id, value) in sorted {
            let mut value = value.to_vec();
            let Ok(tape) = simd_json::to_tape(&mut value) else {
                continue;
            };
            let v = tape.as_value();
            use simd_json::prelude::*;
            let Some(client_id) = v.get("client_id").and_then(|c| c.into_string()) else {
                continue;
            };
            let mut metadata = Vec::new();
            match v.get("metadata") {
                Some(m) => {
                    let _ = m.write(&mut metadata);
                }
                None => metadata.extend_from_slice(b"{}"),
            }
            parsed.push((connection_id, client_id.to_owned(), metadata));
        }
        let mut entries: Vec<backend::PresenceEntry<'_>> = Vec::new();
        let mut index: AHashMap<&str, usize> = AHashMap::new();
        for (connection_id, client_id, metadata) in &parsed {
            let i = *index.entry(client_id.as_str()).or_insert_with(|| {
                entries.push(backend::PresenceEntry {
                    client_id,
                    metadata,
                    connections: Vec::new(),
                });
                entries.len() - 1
            });
            entries[i].connections.push(Cow::Borrowed(*connection_id));
        }
        let connections = parsed.len();
        let clients = entries.len();
        self.reply_to(backend.key, |out| {
            if stats {
                backend::push_presence_stats(out, request_id, room, clients, connections);
            } else {
                backend::push_presence(out, request_id, room, &entries);
            }
        });
    }

    /// Writes what a link has queued, as far as the socket takes it.
    pub(super) fn link_flush(&mut self, role: Role) {
        let Some(cluster) = self.cluster.as_mut() else {
            return;
        };
        let link = cluster.link(role);
        if !link.is_up() || !link.ready.writable {
            return;
        }
        let Some(sock) = link.sock.as_mut() else {
            return;
        };
        while link.out_pos < link.out.len() {
            match SocketResult::of_write(sock.write(&link.out[link.out_pos..])) {
                SocketResult::Done(n) => link.out_pos += n,
                SocketResult::WouldBlock => {
                    link.ready.writable = false;
                    break;
                }
                SocketResult::Retry => {}
                SocketResult::Closed(e) => {
                    let why = e.map_or_else(|| "closed".into(), |e| e.to_string());
                    return self.link_down(role, &why);
                }
            }
        }
        if link.out_pos == link.out.len() {
            link.out.clear();
            link.out_pos = 0;
            if link.out.capacity() > 4 * 1024 * 1024 {
                link.out = Vec::new();
            }
        } else if link.out_pos > link.out.len() / 2 {
            link.out.drain(..link.out_pos);
            link.out_pos = 0;
        }
    }

    /// A link connected: it says which database, the subscriber link
    /// subscribes everything this broker needs, the command link writes
    /// this broker's presence again (it may have expired meanwhile).
    fn link_up(&mut self, role: Role) {
        let now = Instant::now();
        let Some(cluster) = self.cluster.as_mut() else {
            return;
        };
        let db = cluster.config.db;
        let url = cluster.config.url.clone();
        let probe_every = cluster.config.redis_timeout / 3;
        let link = cluster.link(role);
        link.state = LinkState::Up;
        link.backoff = BACKOFF_MIN;
        link.heard = now;
        link.probe_out = false;
        link.next_probe = now + probe_every;
        info!("cluster: {} link to {url} up", link.name());
        if db != 0 {
            let db = db.to_string();
            cluster.command(role, &[b"SELECT", db.as_bytes()], Pending::Ignore);
        }
        match role {
            Role::Sub => {
                let channels: Vec<String> = cluster.subscribed.iter().cloned().collect();
                cluster.to_subscribe.clear();
                cluster.to_unsubscribe.clear();
                subscribe(cluster, &channels);
            }
            Role::Cmd => cluster.next_refresh = now,
        }
        if cluster.is_up() && cluster.outage_announced {
            cluster.outage_announced = false;
            info!("cluster: the bus is back");
            self.tell_backends("cluster bus restored");
        }
    }

    /// A link failed: it reconnects after a jittered pause. What waited for
    /// the command link is answered as best it can be.
    pub(super) fn link_down(&mut self, role: Role, why: &str) {
        let now = Instant::now();
        let Some(cluster) = self.cluster.as_mut() else {
            return;
        };
        let link = cluster.link(role);
        let was_up = link.is_up();
        if let Some(mut sock) = link.sock.take() {
            let _ = self.poll.registry().deregister(&mut sock);
        }
        let pause = jittered(link.backoff);
        link.backoff = (link.backoff * 2).min(BACKOFF_MAX);
        link.state = LinkState::Down {
            retry_at: now + pause,
        };
        link.ready = Readiness::default();
        link.inbuf = Vec::new();
        link.out = Vec::new();
        link.out_pos = 0;
        if was_up {
            warn!(
                "cluster: {} link to {} down: {why}; reconnecting in {} ms",
                link.name(),
                cluster.config.url,
                pause.as_millis()
            );
        }
        let pending = if role == Role::Cmd {
            std::mem::take(&mut cluster.pending)
        } else {
            VecDeque::new()
        };
        let announce = !cluster.outage_announced;
        cluster.outage_announced = true;
        for p in pending {
            match p {
                Pending::Publish { ack: Some(ack), .. } => self.send_ack(ack, 0),
                Pending::Presence {
                    backend,
                    request_id,
                    ..
                } => self.cluster_error_reply(
                    backend,
                    request_id.as_deref(),
                    "presence: the cluster bus is unavailable",
                ),
                _ => {}
            }
        }
        if announce {
            warn!("cluster: the bus is unavailable; messages to other brokers are dropped until it is back");
            self.tell_backends("cluster bus unavailable");
        }
    }

    /// An `error` line (no request id) to every authenticated backend.
    fn tell_backends(&mut self, what: &str) {
        let keys: Vec<usize> = self
            .backends
            .iter()
            .filter(|(_, b)| b.authenticated && !b.closing)
            .map(|(k, _)| k)
            .collect();
        for key in keys {
            self.reply_to(key, |out| backend::push_line_error(out, None, what));
        }
    }

    /// A backend joins while the bus is down: it is told at once.
    pub(super) fn tell_new_backend(&mut self, key: usize) {
        if self.cluster.as_ref().is_some_and(|c| c.outage_announced) {
            self.reply_to(key, |out| {
                backend::push_line_error(out, None, "cluster bus unavailable")
            });
        }
    }

    /// Connects a link that is down and due.
    fn link_connect(&mut self, role: Role) {
        let Some(cluster) = self.cluster.as_mut() else {
            return;
        };
        let addr = cluster.config.redis;
        cluster.reconnects += 1;
        match TcpStream::connect(addr) {
            Ok(mut sock) => {
                let _ = sock.set_nodelay(true);
                let token = Endpoint::Redis(role as usize).token();
                if let Err(e) = self.poll.registry().register(
                    &mut sock,
                    token,
                    Interest::READABLE | Interest::WRITABLE,
                ) {
                    return self.link_down(role, &format!("cannot register: {e}"));
                }
                let Some(cluster) = self.cluster.as_mut() else {
                    return;
                };
                let link = cluster.link(role);
                link.sock = Some(sock);
                link.state = LinkState::Connecting {
                    since: Instant::now(),
                };
            }
            Err(e) => self.link_down(role, &format!("cannot connect: {e}")),
        }
    }

    /// The cluster's timers: reconnections, connect timeouts, probes,
    /// delayed unsubscriptions, presence refresh.
    pub(super) fn cluster_timers(&mut self, now: Instant) {
        let Some(cluster) = self.cluster.as_ref() else {
            return;
        };
        let timeout = cluster.config.redis_timeout;
        for role in [Role::Sub, Role::Cmd] {
            let Some(cluster) = self.cluster.as_mut() else {
                return;
            };
            let link = cluster.link(role);
            match link.state {
                LinkState::Down { retry_at } if retry_at <= now => self.link_connect(role),
                LinkState::Connecting { since } if since + timeout <= now => {
                    self.link_down(role, "no connection within --redis-timeout")
                }
                LinkState::Up if link.probe_out && link.heard + timeout <= now => self.link_down(
                    role,
                    "no answer to a probe within --redis-timeout (stalled?)",
                ),
                LinkState::Up if !link.probe_out && link.next_probe <= now => {
                    link.probe_out = true;
                    link.next_probe = now + timeout / 3;
                    cluster.command(role, &[b"PING"], Pending::Ignore);
                    self.link_flush(role);
                }
                _ => {}
            }
        }
        let Some(cluster) = self.cluster.as_mut() else {
            return;
        };
        while let Some(&(at, _)) = cluster.leaving_order.front() {
            if at > now {
                break;
            }
            let Some((at, channel)) = cluster.leaving_order.pop_front() else {
                break;
            };
            if cluster.leaving.get(&channel) == Some(&at) {
                cluster.leaving.remove(&channel);
                cluster.subscribed.remove(&channel);
                cluster.to_unsubscribe.push(channel);
            }
        }
        if now >= cluster.next_refresh {
            cluster.next_refresh = now + cluster.config.presence_ttl / 3;
            self.refresh_presence();
        }
    }

    /// At the end of a turn: the membership changes of the turn become
    /// (un)subscriptions and presence writes, and the links are written.
    pub(super) fn cluster_sync(&mut self) {
        if self.cluster.is_none() {
            return;
        }
        let now = Instant::now();
        let changes = self.hub.take_changes();
        let Some(cluster) = self.cluster.as_mut() else {
            return;
        };
        let expiry = (epoch_ms() + cluster.config.presence_ttl.as_millis() as u64).to_string();
        let ttl = cluster.config.presence_ttl.as_secs().max(1).to_string();
        for change in changes {
            match change {
                Change::RoomAppeared(room) => {
                    let ch = cluster.names.channel(Channel::Room(&room));
                    cluster.want(ch);
                }
                Change::RoomGone(room) => {
                    let ch = cluster.names.channel(Channel::Room(&room));
                    cluster.unwant(ch, now);
                }
                Change::ClientAppeared(id) => {
                    let ch = cluster.names.channel(Channel::Client(&id));
                    cluster.want(ch);
                }
                Change::ClientGone(id) => {
                    let ch = cluster.names.channel(Channel::Client(&id));
                    cluster.unwant(ch, now);
                }
                Change::Joined { key, serial, room } => {
                    let value = presence_value(self.clients.get(key), &self.hub, key);
                    let id = self.ids.connection_id(serial);
                    write_presence(cluster, &room, &id, &value, &expiry, &ttl);
                }
                Change::Left { serial, room } => {
                    let id = self.ids.connection_id(serial);
                    let hash = cluster.names.presence(&room);
                    let zset = cluster.names.presence_expiry(&room);
                    cluster.fire(&[b"HDEL", hash.as_bytes(), id.as_bytes()]);
                    cluster.fire(&[b"ZREM", zset.as_bytes(), id.as_bytes()]);
                }
            }
        }
        for key in std::mem::take(&mut cluster.metadata_changed) {
            let Some(serial) = self.hub.serial(key) else {
                continue;
            };
            let value = presence_value(self.clients.get(key), &self.hub, key);
            let id = self.ids.connection_id(serial);
            for room in self.hub.rooms_of(key) {
                write_presence(cluster, room, &id, &value, &expiry, &ttl);
            }
        }
        let subscribe_now = std::mem::take(&mut cluster.to_subscribe);
        subscribe(cluster, &subscribe_now);
        let unsubscribe_now = std::mem::take(&mut cluster.to_unsubscribe);
        if !unsubscribe_now.is_empty() {
            let mut args: Vec<&[u8]> = vec![b"UNSUBSCRIBE"];
            args.extend(unsubscribe_now.iter().map(|c| c.as_bytes()));
            cluster.command(Role::Sub, &args, Pending::Ignore);
        }
        self.link_flush(Role::Sub);
        self.link_flush(Role::Cmd);
    }

    /// Writes this broker's whole presence again, with new expiries (every
    /// third of `--presence-ttl`, and after the command link reconnects).
    fn refresh_presence(&mut self) {
        let Some(cluster) = self.cluster.as_mut() else {
            return;
        };
        if !cluster.cmd.is_up() {
            return;
        }
        let expiry = (epoch_ms() + cluster.config.presence_ttl.as_millis() as u64).to_string();
        let ttl = cluster.config.presence_ttl.as_secs().max(1).to_string();
        for &key in self.hub.all() {
            let Some(serial) = self.hub.serial(key) else {
                continue;
            };
            let value = presence_value(self.clients.get(key), &self.hub, key);
            let id = self.ids.connection_id(serial);
            for room in self.hub.rooms_of(key) {
                write_presence(cluster, room, &id, &value, &expiry, &ttl);
            }
        }
        self.link_flush(Role::Cmd);
    }

    /// Sends `payload` to the other brokers on `channel`; false when it
    /// could not be (bus down, or too much waiting: dropped and counted).
    pub(super) fn publish(
        &mut self,
        channel: Channel<'_>,
        kind: Kind,
        target: &str,
        exclude: &[&str],
        payload: &[u8],
    ) -> bool {
        let Some(cluster) = self.cluster.as_mut() else {
            return false;
        };
        if !cluster.cmd.is_up() || cluster.cmd.unsent() > cluster.config.max_redis_buffer {
            cluster.dropped += 1;
            if let Some(unlogged) = cluster.dropped_log.hit(Instant::now()) {
                warn!(
                    "cluster: a message to other brokers dropped: {} ({unlogged} more since the \
                     last warning, {} in all)",
                    if cluster.cmd.is_up() {
                        "more than --max-redis-buffer waits for Redis"
                    } else {
                        "the bus is unavailable"
                    },
                    cluster.dropped
                );
            }
            return false;
        }
        let name = cluster.names.channel(channel);
        let ours =
            u8::from(cluster.subscribed.contains(&name) && !cluster.leaving.contains_key(&name));
        let mut message = Vec::with_capacity(payload.len() + 64);
        bus::encode(
            &mut message,
            kind,
            &cluster.config.node_id,
            target,
            exclude,
            payload,
        );
        cluster.command(
            Role::Cmd,
            &[b"PUBLISH", name.as_bytes(), &message],
            Pending::Publish { ours, ack: None },
        );
        cluster.published += 1;
        true
    }

    /// The ack of the line just published waits for its PUBLISH count.
    pub(super) fn ack_after_publish(
        &mut self,
        from: usize,
        request_id: Option<&str>,
        local: usize,
    ) {
        let backend = match self.backends.get(from) {
            Some(b) => ConnRef {
                key: from,
                serial: b.serial,
            },
            None => return,
        };
        let Some(cluster) = self.cluster.as_mut() else {
            return;
        };
        if let Some(Pending::Publish { ack, .. }) = cluster.pending.back_mut() {
            *ack = Some(AckWait {
                backend,
                request_id: request_id.map(str::to_owned),
                local,
            });
        }
    }

    /// A presence query for the whole cluster; false when the bus is down.
    pub(super) fn cluster_presence(
        &mut self,
        from: usize,
        request_id: Option<&str>,
        room: &str,
        stats: bool,
    ) -> bool {
        let Some(backend) = self.backends.get(from).map(|b| ConnRef {
            key: from,
            serial: b.serial,
        }) else {
            return true;
        };
        let Some(cluster) = self.cluster.as_mut() else {
            return false;
        };
        let hash = cluster.names.presence(room);
        let zset = cluster.names.presence_expiry(room);
        let now = epoch_ms().to_string();
        let queued = cluster.command(
            Role::Cmd,
            &[
                b"EVAL",
                PRESENCE_SCRIPT.as_bytes(),
                b"2",
                hash.as_bytes(),
                zset.as_bytes(),
                now.as_bytes(),
            ],
            Pending::Presence {
                backend,
                request_id: request_id.map(str::to_owned),
                room: room.to_owned(),
                stats,
            },
        );
        if queued {
            self.link_flush(Role::Cmd);
        }
        queued
    }

    /// Connection `key`'s metadata changed: its presence entries follow.
    pub(super) fn cluster_metadata_changed(&mut self, key: usize) {
        if let Some(cluster) = self.cluster.as_mut() {
            cluster.metadata_changed.push(key);
        }
    }

    /// Whether `connection_id` belongs to another broker of the cluster
    /// (the prefix is not ours): then its node channel.
    pub(super) fn remote_node<'c>(&self, connection_id: &'c str) -> Option<&'c str> {
        self.cluster.as_ref()?;
        let prefix = prefix_of(connection_id);
        (!prefix.is_empty() && prefix != self.ids.prefix()).then_some(prefix)
    }

    /// The keys of excluded connections of this broker, by connection id.
    pub(super) fn excluded(&self, ids: &[&str]) -> Vec<usize> {
        ids.iter()
            .filter_map(|id| self.ids.serial(id))
            .flat_map(|serial| self.hub.audience(Audience::Connection(serial)))
            .copied()
            .collect()
    }

    /// Carries out a command from another broker on this broker's own
    /// connections (never published again).
    fn apply_here(&mut self, command: Command<'_>) {
        self.seal();
        match command {
            Command::JoinRoom { target, room_id } => {
                self.join_room(&target, &room_id);
            }
            Command::LeaveRoom { target, room_id } => {
                self.leave_room(&target, &room_id);
            }
            Command::Disconnect {
                target,
                code,
                reason,
            } => {
                self.disconnect(&target, code, reason);
            }
            Command::SetMetadata { target, metadata } => {
                self.set_metadata(&target, metadata);
            }
            _ => {}
        }
    }

    /// Reads the links listed for another read.
    pub(super) fn redis_read_again(&mut self) {
        for role in std::mem::take(&mut self.turn.redis_read_again) {
            let role = if role == 0 { Role::Sub } else { Role::Cmd };
            if let Some(cluster) = self.cluster.as_mut() {
                cluster.link(role).read_listed = false;
            }
            self.link_read(role);
        }
    }

    /// Cluster figures for the metrics: up, published, received, dropped,
    /// reconnects.
    pub(super) fn cluster_figures(&self) -> Option<(bool, u64, u64, u64, u64)> {
        self.cluster
            .as_ref()
            .map(|c| (c.is_up(), c.published, c.received, c.dropped, c.reconnects))
    }

    /// Whether the bus is down (for /health).
    pub(super) fn cluster_down(&self) -> bool {
        self.cluster.as_ref().is_some_and(|c| !c.is_up())
    }
}

/// SUBSCRIBE `channels` (one command), if any.
fn subscribe(cluster: &mut Cluster, channels: &[String]) {
    if channels.is_empty() {
        return;
    }
    let mut args: Vec<&[u8]> = vec![b"SUBSCRIBE"];
    args.extend(channels.iter().map(|c| c.as_bytes()));
    cluster.command(Role::Sub, &args, Pending::Ignore);
}

/// HSET and ZADD one presence entry, and keep the room's keys alive.
fn write_presence(
    cluster: &mut Cluster,
    room: &str,
    id: &str,
    value: &[u8],
    expiry: &str,
    ttl: &str,
) {
    let hash = cluster.names.presence(room);
    let zset = cluster.names.presence_expiry(room);
    cluster.fire(&[b"HSET", hash.as_bytes(), id.as_bytes(), value]);
    cluster.fire(&[b"ZADD", zset.as_bytes(), expiry.as_bytes(), id.as_bytes()]);
    cluster.fire(&[b"EXPIRE", hash.as_bytes(), ttl.as_bytes()]);
    cluster.fire(&[b"EXPIRE", zset.as_bytes(), ttl.as_bytes()]);
}

/// `{"client_id":..,"metadata":..}` of a connection, for its presence.
fn presence_value(
    client: Option<&super::conn::Client>,
    hub: &crate::hub::Hub,
    key: usize,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(b"{\"client_id\":");
    push_str(&mut out, hub.client_id(key).unwrap_or(""));
    out.extend_from_slice(b",\"metadata\":");
    match client.and_then(|c| c.context.as_ref()) {
        Some(context) => out.extend_from_slice(context.metadata()),
        None => out.extend_from_slice(b"{}"),
    }
    out.push(b'}');
    out
}

/// A backend command line for the bus, carrying `command` as this broker
/// understood it (lines are parsed in place, so the original bytes are
/// gone by the time they are carried out).
pub(super) fn command_line(command: &Command<'_>) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(128);
    let target = |out: &mut Vec<u8>, target: &Target<'_>| match target {
        Target::ClientId(id) => {
            out.extend_from_slice(b"\"client_id\":");
            push_str(out, id);
        }
        Target::Connection(id) => {
            out.extend_from_slice(b"\"connection_id\":");
            push_str(out, id);
        }
    };
    match command {
        Command::JoinRoom { target: t, room_id } | Command::LeaveRoom { target: t, room_id } => {
            let action = if matches!(command, Command::JoinRoom { .. }) {
                "join_room"
            } else {
                "leave_room"
            };
            out.extend_from_slice(format!("{{\"action\":\"{action}\",\"params\":{{").as_bytes());
            target(&mut out, t);
            out.extend_from_slice(b",\"room_id\":");
            push_str(&mut out, room_id);
        }
        Command::Disconnect {
            target: t,
            code,
            reason,
        } => {
            out.extend_from_slice(b"{\"action\":\"disconnect\",\"params\":{");
            target(&mut out, t);
            out.extend_from_slice(format!(",\"code\":{code},\"reason\":").as_bytes());
            push_str(&mut out, reason);
        }
        Command::SetMetadata {
            target: t,
            metadata,
        } => {
            out.extend_from_slice(b"{\"action\":\"set_metadata\",\"params\":{");
            target(&mut out, t);
            out.extend_from_slice(b",\"metadata\":");
            use simd_json::prelude::*;
            let _ = metadata.write(&mut out);
        }
        _ => return None,
    }
    out.extend_from_slice(b"}}");
    Some(out)
}
