//! The scenarios: set up clients on `Net`, drive the measured phase, and
//! turn what was counted into a `Report`. The same code runs against the
//! broker and the limit server; only the backend side differs (wire v1
//! lines versus control lines, or an external backend).

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use crate::net::{BackendCounts, BackendKind, Echo, Net, Stall, State, Stop};
use crate::os::{self, CpuSample};
use crate::report::{fmt_rate, round, Report};
use crate::target::{Kind, Target};
use crate::ws::BROADCAST_TAG;
use crate::{Config, Scenario};

pub(crate) fn cpu_of(pid: Option<u32>) -> Option<CpuSample> {
    pid.and_then(|p| os::cpu(p).ok())
}

pub(crate) fn cpu_between(a: Option<CpuSample>, b: Option<CpuSample>) -> Option<CpuSample> {
    Some(b?.since(&a?))
}

pub(crate) fn rss_of(pid: Option<u32>) -> Option<u64> {
    pid.and_then(|p| os::rss_kb(p).ok())
}

/// The source addresses clients connect from: none (the kernel's choice)
/// or 127.0.0.1..=127.0.0.N. The default is one per 4,000 connections: a
/// source address has ~28,000 ephemeral ports, but the kernel's search for
/// a free one in connect() slows down as they fill (19,000 connections
/// from one address cost the tool 6 s of CPU, from four 0.7 s), which
/// would make the tool, not the server, set the connect rate.
pub(crate) fn sources(cfg: &Config, connections: usize) -> Vec<Ipv4Addr> {
    let n = cfg.sources.unwrap_or(connections.div_ceil(4_000));
    if n <= 1 {
        Vec::new()
    } else {
        (1..=n as u8).map(|k| Ipv4Addr::new(127, 0, 0, k)).collect()
    }
}

pub(crate) fn with_progress(net: &Net, stop: Stop) -> Stop {
    let t = net.tally();
    let detail = format!(
        " (connected {}, failed {}, deliveries {}, unexpected closes {})",
        t.connected, t.failed, t.deliveries, t.unexpected_closes
    );
    match stop {
        Stop::Timeout(m) => Stop::Timeout(m + &detail),
        Stop::Failed(m) => Stop::Failed(m + &detail),
    }
}

/// Runs the configured scenario against `target`.
pub fn run(cfg: &Config, target: &mut Target, deadline: Instant) -> Result<Report, Stop> {
    let connections = match cfg.scenario {
        Scenario::Fanout { subscribers, .. } => subscribers,
        Scenario::Echo { clients, .. } => clients,
        Scenario::Conns { connections, .. } => connections,
    };
    let mut net = Net::new(target.ws, sources(cfg, connections), cfg.size, deadline)
        .map_err(|e| Stop::Failed(format!("cannot create the event loop: {e}")))?;
    let mut r = Report::default();
    r.set("scenario", cfg.scenario.name());
    r.set(
        "target",
        match target.kind {
            Kind::Broker => "broker",
            Kind::Limit => "limit",
        },
    );
    r.set("server_pid", target.pid);
    r.set("size", cfg.size);
    r.set("external_backend", cfg.external_backend);
    if target.kind == Kind::Limit && !cfg.server_args.is_empty() {
        r.notes
            .push("--server-arg is for the broker; the limit server ignores it".into());
    }
    r.line(
        "target",
        format!(
            "{} pid {} websocket {}{}",
            match target.kind {
                Kind::Broker => "broker",
                Kind::Limit => "limit server",
            },
            target.pid.map_or("?".into(), |p| p.to_string()),
            target.ws,
            if cfg.external_backend {
                " (external backend)".to_owned()
            } else {
                target
                    .backend
                    .map_or(String::new(), |b| format!(" backend {b}"))
            }
        ),
    );

    // The backend side: ourselves, the limit server's control port, or
    // someone else's process.
    let rss_start = rss_of(target.pid);
    if !cfg.external_backend {
        let kind = match target.kind {
            Kind::Broker => BackendKind::Broker,
            Kind::Limit => BackendKind::Control,
        };
        let addr = target.backend.ok_or_else(|| {
            Stop::Failed("no backend address: give --backend ADDR, or --external-backend".into())
        })?;
        net.connect_backend(addr, kind)
            .map_err(|e| Stop::Failed(format!("cannot connect to the backend port {addr}: {e}")))?;
        if let Some(b) = net.backend.as_mut() {
            b.echo_reply = matches!(cfg.scenario, Scenario::Echo { .. });
            b.extra_rooms = cfg.rooms_per_client - 1;
        }
    }
    if target.kind == Kind::Broker {
        net.phase = if cfg.external_backend {
            "waiting for the broker to accept a probe connection (is the external backend connected?)".into()
        } else {
            "waiting for the broker to accept a probe connection".into()
        };
        net.probe("/ws/probe/p")
            .map_err(|e| with_progress(&net, e))?;
    }

    let result = match cfg.scenario {
        Scenario::Fanout { .. } => fanout(cfg, target, &mut net, &mut r, rss_start),
        Scenario::Echo { .. } => echo(cfg, target, &mut net, &mut r, rss_start),
        Scenario::Conns { .. } => conns(cfg, target, &mut net, &mut r, rss_start),
    };
    result.map_err(|e| with_progress(&net, e))?;

    net.close_all_and_settle(Duration::from_secs(2));
    if let Some(b) = net.backend.as_ref() {
        backend_checks(&mut r, &b.counts);
    }
    if let Some(status) = target.exit_status() {
        r.problems.push(format!(
            "the server exited during the run ({status}){}",
            target.tail()
        ));
    }
    Ok(r)
}

/// What our backend connection(s) on a broker saw: every figure, and a
/// problem for error events or lines that were not JSON.
pub(crate) fn backend_checks(r: &mut Report, c: &BackendCounts) {
    r.set("backend_connection_requests", c.connection_requests);
    r.set("backend_new_messages", c.new_messages);
    r.set("backend_disconnected", c.disconnected);
    r.set("backend_registered", c.registered);
    r.set("backend_unregistered", c.unregistered);
    r.set("backend_errors", c.errors);
    r.set("backend_unparsable", c.unparsable);
    if c.errors > 0 {
        r.problems.push(format!(
            "the broker sent {} error events, e.g. {:?}",
            c.errors, c.error_samples
        ));
    }
    if c.unparsable > 0 {
        r.problems.push(format!(
            "{} backend lines were not valid JSON",
            c.unparsable
        ));
    }
}

/// Connects clients 0..n and reports connect rate, handshake latency,
/// server CPU and RSS per connection.
fn connect_phase(
    cfg: &Config,
    target: &Target,
    net: &mut Net,
    r: &mut Report,
    rss_start: Option<u64>,
) -> Result<(), Stop> {
    let n = net.clients.len();
    let cpu0 = cpu_of(target.pid);
    let rss0 = rss_of(target.pid).or(rss_start);
    let self0 = os::self_cpu_s();
    let t0 = Instant::now();
    net.phase = format!("connecting {n} clients");
    net.connect_clients(0..n, cfg.concurrency)?;
    let secs = t0.elapsed().as_secs_f64();
    let cpu1 = cpu_of(target.pid);
    let self1 = os::self_cpu_s();
    let rss1 = rss_of(target.pid);
    let t = net.tally();
    let ok = t.connected;
    r.set("connections", n);
    r.set("connected", ok);
    r.set("connect_failed", t.failed);
    r.set("connect_s", round(secs, 4));
    r.set("connects_per_s", round(ok as f64 / secs, 1));
    r.line(
        "connect",
        format!(
            "{ok} of {n} in {secs:.3} s = {} connections/s ({} at a time)",
            fmt_rate(ok as f64 / secs),
            cfg.concurrency
        ),
    );
    if t.failed > 0 {
        r.problems.push(format!(
            "{} of {n} connections failed: {:?}",
            t.failed, t.fail_reasons
        ));
    }
    let hs = net.handshake_latency();
    r.latency("handshake", "handshake latency", hs);
    let busy = (self1 - self0) / secs.max(1e-9);
    r.set("loadgen_connect_cpu_s", round(self1 - self0, 3));
    r.set("loadgen_connect_busy", round(busy, 3));
    r.line(
        "loadgen CPU connect",
        format!(
            "{:.2} s ({:.0}% of the connect phase)",
            self1 - self0,
            busy * 100.0
        ),
    );
    r.cpu(
        "server_connect",
        "server CPU/connection",
        "conn",
        cpu_between(cpu0, cpu1),
        ok,
        secs,
    );
    r.set("rss_before_kb", rss0);
    r.set("rss_connected_kb", rss1);
    match (rss0, rss1) {
        (Some(a), Some(b)) if ok > 0 => {
            let per = (b as f64 - a as f64) * 1024.0 / ok as f64;
            r.set("rss_per_conn_bytes", round(per, 0));
            r.line(
                "server RSS",
                format!("{a} KiB before, {b} KiB connected = {per:.0} bytes/connection"),
            );
        }
        _ => r.set("rss_per_conn_bytes", serde_json::Value::Null),
    }
    Ok(())
}

pub(crate) fn loss_checks(net: &Net, r: &mut Report, expected: u64) {
    let t = net.tally();
    let duplicates: u64 = net.clients.iter().map(|c| c.seen.duplicates).sum();
    let late: u64 = net.clients.iter().map(|c| c.seen.late).sum();
    let lost = expected.saturating_sub(t.deliveries);
    r.set("expected", expected);
    r.set("delivered", t.deliveries);
    r.set("lost", lost);
    r.set("duplicates", duplicates);
    r.set("out_of_order", late);
    r.set("misrouted", t.misrouted);
    r.set("corrupt", t.corrupt);
    r.set("unsent_seq", t.beyond);
    r.set("unexpected_closes", t.unexpected_closes);
    r.set("pings", t.pings);
    r.line(
        "checked",
        format!(
            "{} of {expected} delivered, lost {lost}, duplicates {duplicates}, out of order {late}, misrouted {}, corrupt {}, closes {}",
            t.deliveries, t.misrouted, t.corrupt, t.unexpected_closes
        ),
    );
    let mut bad = |n: u64, what: &str| {
        if n > 0 {
            r.problems.push(format!("{n} {what}"));
        }
    };
    bad(lost, "deliveries lost");
    bad(duplicates, "duplicate deliveries");
    bad(late, "deliveries out of order");
    bad(t.misrouted, "deliveries to the wrong room or client");
    bad(
        t.corrupt,
        "frames that are not our payload or not of --size bytes",
    );
    bad(
        t.beyond,
        "deliveries of sequence numbers never sent to that client",
    );
    bad(t.unexpected_closes, "connections closed by the server");
    if !t.close_reasons.is_empty() {
        r.notes
            .push(format!("close reasons: {:?}", t.close_reasons));
    }
}

pub(crate) fn tool_cpu(r: &mut Report, cpu_s: f64, wait_s: Option<f64>, wall_s: f64) {
    let busy = if wall_s > 0.0 { cpu_s / wall_s } else { 0.0 };
    let waited = wait_s.map(|w| if wall_s > 0.0 { w / wall_s } else { 0.0 });
    r.set("loadgen_cpu_s", round(cpu_s, 3));
    r.set("loadgen_busy", round(busy, 3));
    r.set("loadgen_runq_wait_s", wait_s.map(|w| round(w, 4)));
    r.set("loadgen_runq_wait_share", waited.map(|w| round(w, 3)));
    r.line(
        "loadgen CPU",
        format!(
            "{cpu_s:.2} s ({:.0}% of the phase{})",
            busy * 100.0,
            waited.map_or(String::new(), |w| format!(
                ", waited for a CPU {:.0}%",
                w * 100.0
            ))
        ),
    );
    if let Some(w) = waited.filter(|&w| w > 0.1) {
        r.notes.push(format!(
            "the load generator waited for a CPU {:.0}% of the measured phase (other tasks on its core): throughput and latency include that wait",
            w * 100.0
        ));
    }
    if busy > 0.9 {
        r.notes.push(format!(
            "the load generator was busy {:.0}% of the measured phase: throughput and latency may be bounded by the tool, not the server",
            busy * 100.0
        ));
    }
}

fn fanout(
    cfg: &Config,
    target: &Target,
    net: &mut Net,
    r: &mut Report,
    rss_start: Option<u64>,
) -> Result<(), Stop> {
    let Scenario::Fanout {
        subscribers,
        rooms,
        messages,
        rate,
        broadcast,
        stall,
    } = cfg.scenario
    else {
        unreachable!()
    };
    let rooms = rooms.max(1);
    let per_room =
        |room: u32| messages / rooms as u64 + u64::from((room as u64) < messages % rooms as u64);
    for i in 0..subscribers {
        let room = (i % rooms as usize) as u32;
        let (tag, expect) = if broadcast {
            (BROADCAST_TAG, messages)
        } else {
            (room, per_room(room))
        };
        let k = net.add_client(format!("/ws/{room}/c{i}"), tag, expect);
        if i < stall {
            net.clients[k].stall = Stall::AfterFirst;
        }
    }
    r.set("subscribers", subscribers);
    r.set("rooms", rooms);
    r.set("rooms_per_client", cfg.rooms_per_client);
    r.set("messages", messages);
    r.set("rate", rate);
    r.line(
        "scenario",
        format!(
            "{} {subscribers} subscribers, {rooms} rooms ({} per client), {messages} messages of {} bytes, {}",
            if broadcast { "broadcast" } else { "fanout" },
            cfg.rooms_per_client,
            cfg.size,
            if rate > 0.0 {
                format!("{rate} messages/s")
            } else {
                "as fast as possible".into()
            }
        ),
    );
    connect_phase(cfg, target, net, r, rss_start)?;
    // Clients that failed to connect are reported as such, not as loss;
    // --stall subscribers apart.
    let expected: u64 = net
        .clients
        .iter()
        .filter(|c| c.state == State::Open && c.stall == Stall::No)
        .map(|c| c.expect)
        .sum();

    let cpu_a = cpu_of(target.pid);
    let self_a = os::self_cpu_s();
    let wait_a = os::self_wait_s();
    let streamed = stream(cfg, net, expected, target.pid)?;
    let cpu_b = cpu_of(target.pid);
    let self_b = os::self_cpu_s();
    let wait_b = os::self_wait_s();
    let wall = delivery_phase(r, net, &streamed);
    let Streamed {
        stalled, rss_max, ..
    } = streamed;
    let t = net.tally();
    r.latency("latency", "latency", net.latency());
    let deliveries = t.deliveries;
    r.cpu(
        "server",
        "server CPU/delivery",
        "delivery",
        cpu_between(cpu_a, cpu_b),
        deliveries,
        wall,
    );
    tool_cpu(
        r,
        self_b - self_a,
        wait_b.zip(wait_a).map(|(b, a)| b - a),
        wall,
    );
    let rss_after = rss_of(target.pid);
    r.set("rss_after_kb", rss_after);
    r.set("rss_max_kb", rss_max.max(rss_after));
    if let (Some(max), Some(after)) = (rss_max.max(rss_after), rss_after) {
        r.line(
            "server RSS stream",
            format!("{max} KiB at most (sampled every 100 ms), {after} KiB after"),
        );
    }
    if stall > 0 {
        // Past --close-timeout (3 s by default), the server has let go of
        // every stalled subscriber it closed.
        net.drain_stalled(Duration::from_secs(5))?;
        let t = net.tally();
        let closed_1008: u64 = t
            .stall_closes
            .iter()
            .filter(|(why, _)| why.starts_with("close frame 1008"))
            .map(|(_, n)| n)
            .sum();
        let closed: u64 = t.stall_closes.values().sum();
        r.set("stalled", stall);
        r.set("stalled_closed", closed);
        r.set("stalled_closed_1008", closed_1008);
        r.set("stalled_deliveries", t.stall_deliveries);
        r.line(
            "stalled",
            format!(
                "{stall} subscribers stopped reading after their first message: {closed} closed by the server {:?}, {} deliveries to them in all",
                t.stall_closes, t.stall_deliveries
            ),
        );
        if closed < stall as u64 {
            r.notes.push(format!(
                "{} stalled subscribers were still open at the end: the stream did not fill --max-outbound-bytes plus their socket buffers",
                stall as u64 - closed
            ));
        }
    }
    loss_checks(net, r, expected);
    if stalled {
        r.problems.push(format!(
            "deliveries stopped for {:.1} s (--drain) before all arrived",
            cfg.drain.as_secs_f64()
        ));
    }
    Ok(())
}

/// What the fan-out's stream saw.
/// Ends the measured phase of a stream: stops recording latencies and
/// reports how long the deliveries took (`phase_s`: first message queued to
/// last delivery), how long sending took (`send_s`) and the delivery rate.
/// Returns the wall time since the first message was queued.
pub fn delivery_phase(r: &mut Report, net: &mut Net, streamed: &Streamed) -> f64 {
    let wall = streamed.start.elapsed().as_secs_f64();
    net.set_recording(false);
    let t = net.tally();
    let span = if t.deliveries > 0 {
        (t.last_delivery_ns - streamed.start_ns) as f64 / 1e9
    } else {
        wall
    };
    let send_s = streamed
        .all_sent
        .map_or(wall, |a| a.duration_since(streamed.start).as_secs_f64());
    r.set("phase_s", round(span, 4));
    r.set("send_s", round(send_s, 4));
    r.set("deliveries_per_s", round(t.deliveries as f64 / span, 1));
    r.line(
        "deliveries",
        format!(
            "{} in {span:.3} s = {} deliveries/s (messages sent in {send_s:.3} s)",
            t.deliveries,
            fmt_rate(t.deliveries as f64 / span)
        ),
    );
    wall
}

pub struct Streamed {
    /// When the first message was queued.
    pub start: Instant,
    pub start_ns: u64,
    /// When the last message was written to the backend connection.
    pub all_sent: Option<Instant>,
    /// Deliveries stopped for --drain before all arrived.
    pub stalled: bool,
    /// Highest RSS of `rss_pid` sampled every 100 ms.
    pub rss_max: Option<u64>,
}

/// The fan-out's measured phase: sends the messages through the backend
/// (at --rate, or as fast as its connection takes them) and handles
/// deliveries until `expected` have arrived or none came for --drain
/// after the last send. Recording is on when it returns.
pub fn stream(
    cfg: &Config,
    net: &mut Net,
    expected: u64,
    rss_pid: Option<u32>,
) -> Result<Streamed, Stop> {
    let Scenario::Fanout {
        rooms,
        messages,
        rate,
        broadcast,
        ..
    } = cfg.scenario
    else {
        unreachable!()
    };
    let rooms = rooms.max(1);
    net.phase = format!("sending {messages} messages, {expected} deliveries expected");
    net.set_recording(true);
    let start = Instant::now();
    let start_ns = os::now_ns();
    let mut sent = 0u64;
    let mut all_sent = None;
    let mut last_progress = (0u64, Instant::now());
    let mut stalled = false;
    let mut rss_max = rss_of(rss_pid);
    let mut rss_sampled = Instant::now();
    loop {
        let now = Instant::now();
        if now.duration_since(rss_sampled) >= Duration::from_millis(100) {
            rss_sampled = now;
            rss_max = rss_max.max(rss_of(rss_pid));
        }
        if sent < messages {
            let b = net.backend.as_mut().expect("fan-out needs a backend");
            if rate > 0.0 {
                while sent < messages && start + Duration::from_secs_f64(sent as f64 / rate) <= now
                {
                    let room = (sent % rooms as u64) as u32;
                    queue(b, broadcast, room, sent, rooms, cfg.size);
                    sent += 1;
                }
            } else {
                while sent < messages && b.pending() < 64 * 1024 {
                    let room = (sent % rooms as u64) as u32;
                    queue(b, broadcast, room, sent, rooms, cfg.size);
                    sent += 1;
                }
            }
            net.flush_backend()?;
            if sent == messages {
                all_sent = Some(Instant::now());
            }
        }
        let delivered = net.tally().deliveries;
        if delivered != last_progress.0 {
            last_progress = (delivered, now);
        }
        if sent == messages && delivered >= expected {
            break;
        }
        if let Some(t) = all_sent {
            if now.duration_since(last_progress.1.max(t)) > cfg.drain {
                stalled = true;
                break;
            }
        }
        let backend_has_room = net.backend.as_ref().is_some_and(|b| b.writable());
        let wait = if rate > 0.0 && sent < messages {
            (start + Duration::from_secs_f64(sent as f64 / rate)).saturating_duration_since(now)
        } else if sent < messages && backend_has_room {
            // A write that did not block brings no EPOLLOUT edge: go on
            // sending without waiting for one.
            Duration::ZERO
        } else {
            Duration::from_millis(50)
        };
        net.turn(wait)?;
    }
    Ok(Streamed {
        start,
        start_ns,
        all_sent,
        stalled,
        rss_max,
    })
}

fn queue(
    b: &mut crate::net::Backend,
    broadcast: bool,
    room: u32,
    seq: u64,
    rooms: u32,
    size: usize,
) {
    if broadcast {
        b.queue_message(None, size, seq, BROADCAST_TAG);
    } else {
        b.queue_message(Some(room), size, seq / rooms as u64, room);
    }
}

fn echo(
    cfg: &Config,
    target: &Target,
    net: &mut Net,
    r: &mut Report,
    rss_start: Option<u64>,
) -> Result<(), Stop> {
    let Scenario::Echo {
        clients,
        inflight,
        duration,
        warmup,
    } = cfg.scenario
    else {
        unreachable!()
    };
    for i in 0..clients {
        net.add_client(format!("/ws/0/c{i}"), i as u32, 0);
    }
    r.set("clients", clients);
    r.set("inflight", inflight);
    r.set("duration_s", duration.as_secs_f64());
    r.set("warmup_s", warmup.as_secs_f64());
    r.line(
        "scenario",
        format!(
            "echo {clients} clients, {inflight} in flight each, {} bytes, {:.1} s measured after {:.1} s warm-up",
            cfg.size,
            duration.as_secs_f64(),
            warmup.as_secs_f64()
        ),
    );
    connect_phase(cfg, target, net, r, rss_start)?;

    net.phase = "echo round trips".into();
    net.set_echo(Some(Echo { sending: true }));
    for i in 0..clients {
        if net.clients[i].state == State::Open {
            for _ in 0..inflight {
                net.send_echo(i);
            }
        }
    }
    let start = Instant::now();
    let window_start = start + warmup;
    let window_end = window_start + duration;
    let mut in_window = false;
    let (mut cpu_a, mut bcpu_a, mut self_a, mut wait_a) = (None, None, 0.0, None);
    loop {
        let now = Instant::now();
        if !in_window && now >= window_start {
            net.set_recording(true);
            cpu_a = cpu_of(target.pid);
            bcpu_a = cpu_of(cfg.backend_pid);
            self_a = os::self_cpu_s();
            wait_a = os::self_wait_s();
            in_window = true;
        }
        if now >= window_end {
            break;
        }
        let next = if in_window { window_end } else { window_start };
        net.turn(
            next.saturating_duration_since(now)
                .min(Duration::from_millis(100)),
        )?;
    }
    let cpu_b = cpu_of(target.pid);
    let bcpu_b = cpu_of(cfg.backend_pid);
    let self_b = os::self_cpu_s();
    let wait_b = os::self_wait_s();
    let wall = window_end
        .duration_since(window_start)
        .as_secs_f64()
        .max(1e-9);
    net.set_recording(false);
    let round_trips = net.tally().window_deliveries;

    // Stop sending; wait for what is in flight.
    net.set_echo(Some(Echo { sending: false }));
    net.phase = "echo drain".into();
    let mut last = (net.tally().deliveries, Instant::now());
    let mut stalled = false;
    loop {
        let inflight_now: u64 = net
            .clients
            .iter()
            .filter(|c| c.state == State::Open)
            .map(|c| c.inflight)
            .sum();
        if inflight_now == 0 {
            break;
        }
        let d = net.tally().deliveries;
        if d != last.0 {
            last = (d, Instant::now());
        } else if last.1.elapsed() > cfg.drain {
            stalled = true;
            break;
        }
        net.turn(Duration::from_millis(50))?;
    }

    r.set("round_trips", round_trips);
    r.set("round_trips_per_s", round(round_trips as f64 / wall, 1));
    r.line(
        "round trips",
        format!(
            "{round_trips} in {wall:.3} s = {} round trips/s",
            fmt_rate(round_trips as f64 / wall)
        ),
    );
    r.latency("latency", "latency", net.latency());
    r.cpu(
        "server",
        "server CPU/round trip",
        "round_trip",
        cpu_between(cpu_a, cpu_b),
        round_trips,
        wall,
    );
    if cfg.backend_pid.is_some() {
        r.cpu(
            "backend",
            "backend CPU/round trip",
            "round_trip",
            cpu_between(bcpu_a, bcpu_b),
            round_trips,
            wall,
        );
    }
    tool_cpu(
        r,
        self_b - self_a,
        wait_b.zip(wait_a).map(|(b, a)| b - a),
        wall,
    );
    let sent: u64 = net.clients.iter().map(|c| c.sent).sum();
    loss_checks(net, r, sent);
    if stalled {
        r.problems.push(format!(
            "echoes stopped for {:.1} s (--drain) with frames still in flight",
            cfg.drain.as_secs_f64()
        ));
    }
    Ok(())
}

fn conns(
    cfg: &Config,
    target: &Target,
    net: &mut Net,
    r: &mut Report,
    rss_start: Option<u64>,
) -> Result<(), Stop> {
    let Scenario::Conns { connections, hold } = cfg.scenario else {
        unreachable!()
    };
    for i in 0..connections {
        net.add_client(format!("/ws/0/c{i}"), 0, 0);
    }
    r.set("hold_s", hold.as_secs_f64());
    r.set("sources", sources(cfg, connections).len().max(1));
    r.line(
        "scenario",
        format!(
            "conns {connections} idle connections from {} source address(es), held {:.1} s",
            sources(cfg, connections).len().max(1),
            hold.as_secs_f64()
        ),
    );
    connect_phase(cfg, target, net, r, rss_start)?;

    net.phase = "holding idle connections".into();
    let cpu_a = cpu_of(target.pid);
    let until = Instant::now() + hold;
    while Instant::now() < until {
        net.turn(until.saturating_duration_since(Instant::now()))?;
    }
    let cpu_b = cpu_of(target.pid);
    let idle = cpu_between(cpu_a, cpu_b);
    r.set(
        "idle_cpu_s",
        idle.map(|c| round(c.sched_s.unwrap_or(c.stat_s), 6)),
    );
    r.set("rss_after_hold_kb", rss_of(target.pid));
    if let Some(c) = idle {
        r.line(
            "server CPU idle",
            format!(
                "{:.4} s over {:.1} s held",
                c.sched_s.unwrap_or(c.stat_s),
                hold.as_secs_f64()
            ),
        );
    }
    let t = net.tally();
    r.set("unexpected_closes", t.unexpected_closes);
    if t.unexpected_closes > 0 {
        r.problems.push(format!(
            "{} idle connections closed by the server: {:?}",
            t.unexpected_closes, t.close_reasons
        ));
    }
    Ok(())
}
