//! Cluster fan-out (`--cluster N`): a redis-server of the tool's own and N
//! brokers started with `--redis-url`, all pinned to `--server-core`; the
//! subscribers split over the brokers (`--sender-subscribers` on broker 0,
//! the rest evenly over the others); a backend of ours on every broker to
//! accept its clients, and every message sent through broker 0's. Before
//! sending, the run waits until Redis shows each room's channel subscribed
//! by every broker with a member in it (PUBSUB NUMSUB), and the probes'
//! channels gone. Each broker's CPU is then given per delivery to its own
//! subscribers, broker 0's (the sender's: its local deliveries plus
//! publishing) also per message, and Redis's per message.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::net::{BackendCounts, BackendKind, Net, State, Stop};
use crate::os::{self, CpuSample};
use crate::redis::Redis;
use crate::report::{fmt_rate, round, Report};
use crate::scenario::{
    backend_checks, cpu_between, cpu_of, delivery_phase, loss_checks, rss_of, sources, stream,
    tool_cpu, with_progress, Streamed,
};
use crate::target::{Kind, Target};
use crate::ws::BROADCAST_TAG;
use crate::{Config, Scenario};

/// How long the servers' idle CPU is measured before the phase.
const IDLE_WINDOW: Duration = Duration::from_millis(500);

/// The brokers' `--cluster-prefix` (as passed with --server-arg, or theirs
/// by default): the Redis channels are named after it.
fn cluster_prefix(args: &[String]) -> String {
    let mut it = args.iter();
    let mut prefix = "pystrands".to_owned();
    while let Some(a) = it.next() {
        if a == "--cluster-prefix" {
            if let Some(v) = it.next() {
                prefix = v.clone();
            }
        } else if let Some(v) = a.strip_prefix("--cluster-prefix=") {
            prefix = v.to_owned();
        }
    }
    prefix
}

/// Subscribers per broker: `sender` (default: an even share) on broker 0,
/// the rest evenly over the others (the first ones take the remainder).
fn shares(subscribers: usize, brokers: usize, sender: Option<usize>) -> Vec<usize> {
    if brokers == 1 {
        return vec![subscribers];
    }
    let first = sender.unwrap_or(subscribers / brokers + usize::from(subscribers % brokers > 0));
    let rest = subscribers - first;
    let others = brokers - 1;
    let mut out = vec![first];
    out.extend((0..others).map(|k| rest / others + usize::from(k < rest % others)));
    out
}

fn setup_error(e: String) -> Stop {
    if e.starts_with("timeout") {
        Stop::Timeout(e)
    } else {
        Stop::Failed(e)
    }
}

/// Sum of CPU samples (every one needed).
fn sum(samples: impl Iterator<Item = Option<CpuSample>>) -> Option<CpuSample> {
    let mut total = CpuSample {
        stat_s: 0.0,
        sched_s: Some(0.0),
        wait_s: Some(0.0),
    };
    for s in samples {
        let s = s?;
        total.stat_s += s.stat_s;
        total.sched_s = total.sched_s.zip(s.sched_s).map(|(a, b)| a + b);
        total.wait_s = total.wait_s.zip(s.wait_s).map(|(a, b)| a + b);
    }
    Some(total)
}

/// Starts Redis and the brokers, runs the scenario, stops them all.
pub fn run(cfg: &Config, deadline: Instant) -> Result<Report, Stop> {
    if !cfg.server_bin.is_file() {
        return Err(Stop::Failed(format!(
            "no broker at {}: build it (cargo build --release --workspace) or pass --server-bin PATH",
            cfg.server_bin.display()
        )));
    }
    let mut redis = Redis::start(&cfg.redis_bin, cfg.server_core, deadline).map_err(setup_error)?;
    let mut brokers = Vec::new();
    for k in 0..cfg.cluster {
        let mut cmd = Command::new(&cfg.server_bin);
        cmd.args(["--host", "127.0.0.1", "--ws-port", "0", "--tcp-port", "0"])
            .args(["--log-level", "info", "--admin-port", "0"])
            .args([
                "--redis-url",
                &redis.url(),
                "--node-id",
                &format!("loadgen-{k}"),
            ])
            .args(&cfg.server_args);
        let broker = Target::spawn(Kind::Broker, cmd, cfg.server_core, deadline)
            .map_err(|e| setup_error(format!("broker {k}: {e}")))?;
        brokers.push(broker);
    }
    // The servers are started, so they do not inherit our own pinning.
    if let Some(core) = cfg.core {
        os::pin_self_to_core(core)
            .map_err(|e| Stop::Failed(format!("cannot pin to CPU {core}: {e}")))?;
    }
    let result = measure(cfg, &mut redis, &mut brokers, deadline);
    let result = result.map_err(|stop| {
        let tails: String = brokers
            .iter()
            .enumerate()
            .map(|(k, b)| {
                b.tail()
                    .replace("; its last", &format!("; broker {k}'s last"))
            })
            .collect();
        match stop {
            Stop::Timeout(m) => Stop::Timeout(m + &tails + &redis.log_tail()),
            Stop::Failed(m) => Stop::Failed(m + &tails + &redis.log_tail()),
        }
    });
    for b in brokers.iter_mut() {
        b.stop();
    }
    redis.stop();
    result
}

fn measure(
    cfg: &Config,
    redis: &mut Redis,
    brokers: &mut [Target],
    deadline: Instant,
) -> Result<Report, Stop> {
    let Scenario::Fanout { subscribers, .. } = cfg.scenario else {
        unreachable!("cluster mode is for fanout and broadcast")
    };
    let mut net = Net::new(brokers[0].ws, sources(cfg, subscribers), cfg.size, deadline)
        .map_err(|e| Stop::Failed(format!("cannot create the event loop: {e}")))?;
    for b in &brokers[1..] {
        net.add_server(b.ws);
    }
    let result = cluster_fanout(cfg, redis, brokers, &mut net);
    let mut r = result.map_err(|e| with_progress(&net, e))?;
    net.close_all_and_settle(Duration::from_secs(2));
    let mut counts = BackendCounts::default();
    for b in net.backend.iter().chain(net.others.iter()) {
        counts.add(&b.counts);
    }
    backend_checks(&mut r, &counts);
    for (k, b) in brokers.iter_mut().enumerate() {
        if let Some(status) = b.exit_status() {
            r.problems.push(format!(
                "broker {k} exited during the run ({status}){}",
                b.tail()
            ));
        }
    }
    if let Some(status) = redis.exit_status() {
        r.problems.push(format!(
            "redis-server exited during the run ({status}){}",
            redis.log_tail()
        ));
    }
    Ok(r)
}

fn cluster_fanout(
    cfg: &Config,
    redis: &mut Redis,
    brokers: &[Target],
    net: &mut Net,
) -> Result<Report, Stop> {
    let Scenario::Fanout {
        subscribers,
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
    let n = brokers.len();
    let mut r = Report::default();
    r.set("scenario", cfg.scenario.name());
    r.set("target", "cluster");
    r.set("cluster", n);
    r.set("size", cfg.size);
    r.set("redis_pid", redis.pid);
    let pids: Vec<String> = brokers
        .iter()
        .map(|b| b.pid.map_or("?".into(), |p| p.to_string()))
        .collect();
    r.line(
        "target",
        format!(
            "{n} brokers (pids {}; broker 0 sends) through redis-server pid {} at {}",
            pids.join(", "),
            redis.pid,
            redis.addr
        ),
    );
    r.line(
        "pinning",
        match (cfg.server_core, cfg.core) {
            (Some(s), Some(t)) => format!(
                "the {n} brokers and redis-server share CPU {s}; the load generator on CPU {t}"
            ),
            (Some(s), None) => format!(
                "the {n} brokers and redis-server share CPU {s}; the load generator not pinned"
            ),
            (None, _) => "servers not pinned (--server-core): they may run on any CPU".into(),
        },
    );

    // A backend of ours on every broker; ready when each upgrades a probe.
    for (k, b) in brokers.iter().enumerate() {
        let addr = b
            .backend
            .ok_or_else(|| Stop::Failed(format!("broker {k} printed no backend address")))?;
        let connected = if k == 0 {
            net.connect_backend(addr, BackendKind::Broker)
        } else {
            net.connect_other_backend(addr)
        };
        connected.map_err(|e| {
            Stop::Failed(format!(
                "cannot connect to the backend port {addr} of broker {k}: {e}"
            ))
        })?;
    }
    let extra_rooms = cfg.rooms_per_client - 1;
    for b in net.backend.iter_mut().chain(net.others.iter_mut()) {
        b.extra_rooms = extra_rooms;
    }
    for k in 0..n {
        net.phase = format!("waiting for broker {k} to accept a probe connection");
        net.probe_server("/ws/probe/p", k)?;
    }

    // The subscribers, in blocks per broker: subscriber i in room i mod R.
    let per_broker = shares(subscribers, n, cfg.sender_subscribers);
    let per_room =
        |room: u32| messages / rooms as u64 + u64::from((room as u64) < messages % rooms as u64);
    let mut i = 0usize;
    for (k, &count) in per_broker.iter().enumerate() {
        for _ in 0..count {
            let room = (i % rooms as usize) as u32;
            let (tag, expect) = if broadcast {
                (BROADCAST_TAG, messages)
            } else {
                (room, per_room(room))
            };
            let c = net.add_client(format!("/ws/{room}/c{i}"), tag, expect);
            net.clients[c].server = k;
            i += 1;
        }
    }
    r.set("subscribers", subscribers);
    r.set("rooms", rooms);
    r.set("rooms_per_client", cfg.rooms_per_client);
    r.set("messages", messages);
    r.set("rate", rate);
    r.set("sender_subscribers", per_broker[0]);
    r.set("remote_subscribers", per_broker[1..].iter().sum::<usize>());
    r.line(
        "scenario",
        format!(
            "{} {subscribers} subscribers ({}), {rooms} rooms ({} per client), {messages} messages of {} bytes sent through broker 0, {}",
            if broadcast { "broadcast" } else { "fanout" },
            per_broker
                .iter()
                .enumerate()
                .map(|(k, c)| format!("{c} on broker {k}"))
                .collect::<Vec<_>>()
                .join(", "),
            cfg.rooms_per_client,
            cfg.size,
            if rate > 0.0 {
                format!("{rate} messages/s")
            } else {
                "as fast as possible".into()
            }
        ),
    );

    // Connect phase: each broker's CPU per connection made to it, and
    // Redis's (subscriptions and presence writes).
    let total = net.clients.len();
    let cpu0: Vec<_> = brokers.iter().map(|b| cpu_of(b.pid)).collect();
    let redis0 = cpu_of(Some(redis.pid));
    let self0 = os::self_cpu_s();
    let t0 = Instant::now();
    net.phase = format!("connecting {total} clients");
    net.connect_clients(0..total, cfg.concurrency)?;
    let secs = t0.elapsed().as_secs_f64();
    let cpu1: Vec<_> = brokers.iter().map(|b| cpu_of(b.pid)).collect();
    let redis1 = cpu_of(Some(redis.pid));
    let self1 = os::self_cpu_s();
    let t = net.tally();
    let ok = t.connected;
    r.set("connections", total);
    r.set("connected", ok);
    r.set("connect_failed", t.failed);
    r.set("connect_s", round(secs, 4));
    r.set("connects_per_s", round(ok as f64 / secs, 1));
    r.set("loadgen_connect_cpu_s", round(self1 - self0, 3));
    r.line(
        "connect",
        format!(
            "{ok} of {total} in {secs:.3} s = {} connections/s ({} at a time)",
            fmt_rate(ok as f64 / secs),
            cfg.concurrency
        ),
    );
    if t.failed > 0 {
        r.problems.push(format!(
            "{} of {total} connections failed: {:?}",
            t.failed, t.fail_reasons
        ));
    }
    r.latency("handshake", "handshake latency", net.handshake_latency());
    // The servers share a core on purpose: each waits for the others, so
    // their run-queue waits are shown on their lines, without the note a
    // lone server's wait gets; other tasks are judged from the core's own
    // times in the measured phase.
    let notes = r.notes.len();
    let open_on = |net: &Net, k: usize| {
        net.clients
            .iter()
            .filter(|c| c.server == k && c.state == State::Open)
            .count() as u64
    };
    for k in 0..n {
        r.cpu(
            &format!("broker{k}_connect"),
            &format!("broker {k} CPU/connection"),
            "conn",
            cpu_between(cpu0[k], cpu1[k]),
            open_on(net, k),
            secs,
        );
    }
    r.cpu(
        "redis_connect",
        "redis-server CPU/connection",
        "conn",
        cpu_between(redis0, redis1),
        ok,
        secs,
    );
    r.notes.truncate(notes);

    // Wait until Redis routes every room to every broker that serves it,
    // and the probes' channels (unsubscribed a second after they left)
    // are gone, so nothing of the setup lands in the measured phase.
    let prefix = cluster_prefix(&cfg.server_args);
    let mut want: Vec<(String, i64)> = Vec::new();
    if broadcast {
        want.push((format!("{prefix}:broadcast"), n as i64));
    } else {
        for room in 0..(rooms as u64).min(messages) as u32 {
            let serving = (0..n)
                .filter(|&k| {
                    net.clients
                        .iter()
                        .any(|c| c.server == k && c.tag == room && c.state == State::Open)
                })
                .count();
            want.push((format!("{prefix}:room:r{room}"), serving as i64));
        }
    }
    let channels: Vec<String> = want.iter().map(|(c, _)| c.clone()).collect();
    let counts: Vec<i64> = want.iter().map(|&(_, n)| n).collect();
    let probes = [
        format!("{prefix}:room:rprobe"),
        format!("{prefix}:client:p*"),
    ];
    let t_bus = Instant::now();
    net.phase = format!(
        "waiting for Redis to show the room channels subscribed ({} of them, e.g. {} by {})",
        channels.len(),
        channels.first().map_or("-", String::as_str),
        counts.first().copied().unwrap_or(0)
    );
    loop {
        let now = redis.numsub(&channels).map_err(Stop::Failed)?;
        let mut left = 0;
        for p in &probes {
            left += redis.channels(p).map_err(Stop::Failed)?.len();
        }
        if now == counts && left == 0 {
            break;
        }
        net.turn(Duration::from_millis(20))?;
    }
    let bus_s = t_bus.elapsed().as_secs_f64();
    r.set("bus_wait_s", round(bus_s, 3));
    r.line(
        "bus",
        format!(
            "{} channel(s) subscribed as expected (e.g. {} by {} broker(s)) after {bus_s:.2} s more",
            channels.len(),
            channels.first().map_or("-", String::as_str),
            counts.first().copied().unwrap_or(0)
        ),
    );

    let expected_on = |net: &Net, k: usize| -> u64 {
        net.clients
            .iter()
            .filter(|c| c.server == k && c.state == State::Open)
            .map(|c| c.expect)
            .sum()
    };
    let expected: u64 = (0..n).map(|k| expected_on(net, k)).sum();

    // Each server's CPU while nothing happens (timers, Redis's cron, the
    // brokers' probes of Redis): a baseline that the measured phase pays
    // for its whole length, given here to be set apart from the work.
    let idle_cpu = |brokers: &[Target]| -> Vec<Option<CpuSample>> {
        brokers
            .iter()
            .map(|b| cpu_of(b.pid))
            .chain([cpu_of(Some(redis.pid))])
            .collect()
    };
    net.phase = "measuring the servers' idle CPU".into();
    let idle_a = idle_cpu(brokers);
    let t_idle = Instant::now();
    while t_idle.elapsed() < IDLE_WINDOW {
        net.turn(IDLE_WINDOW.saturating_sub(t_idle.elapsed()))?;
    }
    let idle_b = idle_cpu(brokers);
    let idle_s = t_idle.elapsed().as_secs_f64();
    let idle_rates: Vec<Option<f64>> = idle_a
        .iter()
        .zip(&idle_b)
        .map(|(a, b)| cpu_between(*a, *b).map(|c| c.sched_s.unwrap_or(c.stat_s) / idle_s))
        .collect();
    let mut idle_parts = Vec::new();
    for (k, rate) in idle_rates.iter().enumerate() {
        let (key, who) = if k < n {
            (format!("broker{k}"), format!("broker {k}"))
        } else {
            ("redis".to_owned(), "redis-server".to_owned())
        };
        r.set(
            &format!("{key}_idle_cpu_us_per_s"),
            rate.map(|v| round(v * 1e6, 1)),
        );
        idle_parts.push(format!(
            "{who} {}",
            rate.map_or("-".into(), |v| format!("{:.0} µs/s", v * 1e6))
        ));
    }
    r.line(
        "idle CPU",
        format!(
            "over {idle_s:.2} s before sending: {}",
            idle_parts.join(", ")
        ),
    );

    let load = os::loadavg();
    let server_core_a = cfg.server_core.and_then(os::core_times);
    let tool_core_a = cfg.core.and_then(os::core_times);
    let io_a: Vec<_> = brokers
        .iter()
        .map(|b| b.pid.and_then(os::write_calls))
        .collect();
    let cpu_a: Vec<_> = brokers.iter().map(|b| cpu_of(b.pid)).collect();
    let redis_a = cpu_of(Some(redis.pid));
    let self_a = os::self_cpu_s();
    let wait_a = os::self_wait_s();
    let streamed = stream(cfg, net, expected, brokers[0].pid)?;
    let cpu_b: Vec<_> = brokers.iter().map(|b| cpu_of(b.pid)).collect();
    let redis_b = cpu_of(Some(redis.pid));
    let io_b: Vec<_> = brokers
        .iter()
        .map(|b| b.pid.and_then(os::write_calls))
        .collect();
    let self_b = os::self_cpu_s();
    let wait_b = os::self_wait_s();
    let server_core_b = cfg.server_core.and_then(os::core_times);
    let tool_core_b = cfg.core.and_then(os::core_times);
    let wall = delivery_phase(&mut r, net, &streamed);
    let Streamed { stalled, .. } = streamed;
    let t = net.tally();
    let delivered: Vec<u64> = (0..n)
        .map(|k| {
            net.clients
                .iter()
                .filter(|c| c.server == k)
                .map(|c| c.seen.unique)
                .sum()
        })
        .collect();
    let mut by_broker = Vec::new();
    for k in 0..n {
        r.set(&format!("broker{k}_subscribers"), per_broker[k]);
        r.set(&format!("broker{k}_deliveries"), delivered[k]);
        r.set(&format!("broker{k}_expected"), expected_on(net, k));
        by_broker.push(format!(
            "broker {k}{}: {} of {} (to {} subscribers)",
            if k == 0 { " (sends)" } else { "" },
            delivered[k],
            expected_on(net, k),
            per_broker[k]
        ));
    }
    r.line("deliveries by broker", by_broker.join("; "));
    r.latency("latency", "latency", net.latency());
    for k in 0..n {
        if let Some(h) = net.server_latency(k) {
            if h.count() > 0 {
                r.latency(
                    &format!("latency_broker{k}"),
                    &format!("latency on broker {k}"),
                    h,
                );
            }
        }
    }

    // CPU: every broker per delivery to its own subscribers; the sender
    // per message too; the receivers together; Redis per message.
    let notes = r.notes.len();
    for k in 0..n {
        r.cpu(
            &format!("broker{k}"),
            &format!(
                "broker {k}{} CPU/delivery",
                if k == 0 { " (sender)" } else { "" }
            ),
            "delivery",
            cpu_between(cpu_a[k], cpu_b[k]),
            delivered[k],
            wall,
        );
    }
    r.cpu(
        "sender",
        "sender (broker 0) CPU/message",
        "message",
        cpu_between(cpu_a[0], cpu_b[0]),
        messages,
        wall,
    );
    // Net of the idle baseline over the phase: the work itself.
    let net_of_idle = |cpu: Option<CpuSample>, idle: Option<f64>| {
        let c = cpu?;
        let secs = c.sched_s.unwrap_or(c.stat_s) - idle? * wall;
        Some(round(secs.max(0.0) * 1e6 / messages.max(1) as f64, 4))
    };
    let sender_net = net_of_idle(cpu_between(cpu_a[0], cpu_b[0]), idle_rates[0]);
    let redis_net = net_of_idle(cpu_between(redis_a, redis_b), idle_rates[n]);
    r.set("sender_net_cpu_per_message_us", sender_net);
    r.set("redis_net_cpu_per_message_us", redis_net);
    r.line(
        "net of idle CPU",
        format!(
            "sender {} µs/message, redis-server {} µs/message (the phase's CPU less {wall:.3} s at the idle rate)",
            sender_net.map_or("-".into(), |v| format!("{v:.4}")),
            redis_net.map_or("-".into(), |v| format!("{v:.4}"))
        ),
    );
    let sender_deliveries = delivered[0];
    r.set(
        "sender_cpu_per_delivery_us",
        serde_json::Value::from(
            cpu_between(cpu_a[0], cpu_b[0])
                .filter(|_| sender_deliveries > 0)
                .map(|c| {
                    round(
                        c.sched_s.unwrap_or(c.stat_s) * 1e6 / sender_deliveries as f64,
                        4,
                    )
                }),
        ),
    );
    if n > 1 {
        r.cpu(
            "receiver",
            "receiving brokers CPU/delivery",
            "delivery",
            sum((1..n).map(|k| cpu_between(cpu_a[k], cpu_b[k]))),
            delivered[1..].iter().sum(),
            wall,
        );
    }
    let redis_cpu = cpu_between(redis_a, redis_b);
    r.cpu(
        "redis",
        "redis-server CPU/message",
        "message",
        redis_cpu,
        messages,
        wall,
    );
    let brokers_cpu = sum((0..n).map(|k| cpu_between(cpu_a[k], cpu_b[k])));
    r.cpu(
        "brokers",
        "all brokers CPU/delivery",
        "delivery",
        brokers_cpu,
        t.deliveries,
        wall,
    );
    r.cpu(
        "cluster",
        "brokers + redis CPU/delivery",
        "delivery",
        sum([brokers_cpu, redis_cpu].into_iter()),
        t.deliveries,
        wall,
    );
    r.notes.truncate(notes);
    // Writes: how well each broker batched its subscribers' frames (one
    // writev per subscriber per turn, plus its Redis and backend writes).
    let mut calls = Vec::new();
    for k in 0..n {
        let Some((w0, w1)) = io_a[k].zip(io_b[k]) else {
            continue;
        };
        let writes = w1 - w0;
        r.set(&format!("broker{k}_writes"), writes);
        calls.push(format!(
            "broker {k}: {writes} ({:.2} per subscriber)",
            writes as f64 / per_broker[k].max(1) as f64
        ));
    }
    if !calls.is_empty() {
        r.line("write calls", calls.join("; "));
    }
    tool_cpu(
        &mut r,
        self_b - self_a,
        wait_b.zip(wait_a).map(|(b, a)| b - a),
        wall,
    );
    let ours = sum([brokers_cpu, redis_cpu].into_iter()).map(|c| c.sched_s.unwrap_or(c.stat_s));
    let cores = [
        (
            cfg.server_core,
            server_core_a,
            server_core_b,
            ours,
            "server",
            "servers",
        ),
        (
            cfg.core,
            tool_core_a,
            tool_core_b,
            Some(self_b - self_a),
            "tool",
            "load generator",
        ),
    ];
    for (core, a, b, ours, key, who) in cores {
        let (Some(core), Some(a), Some(b), Some(ours)) = (core, a, b, ours) else {
            continue;
        };
        let d = b.since(&a);
        if wall < 0.25 {
            // Under 25 ticks the core's own figures say nothing.
            for what in ["busy", "others_share", "nice_share", "steal_share"] {
                r.set(&format!("{key}_core_{what}"), serde_json::Value::Null);
            }
            r.line(
                &format!("CPU {core} ({who})"),
                format!(
                    "not judged: a phase of {wall:.3} s is too short for /proc/stat's 10 ms ticks"
                ),
            );
            continue;
        }
        let share = |s: f64| round(s / wall.max(1e-9), 3);
        let others = (d.busy_s - ours).max(0.0);
        r.set(&format!("{key}_core_busy"), share(d.busy_s));
        r.set(&format!("{key}_core_others_share"), share(others));
        r.set(&format!("{key}_core_nice_share"), share(d.nice_s));
        r.set(&format!("{key}_core_steal_share"), share(d.steal_s));
        r.line(
            &format!("CPU {core} ({who})"),
            format!(
                "busy {:.0}% of the phase, ours {:.0}%, others about {:.0}% (niced tasks {:.0}%), stolen {:.0}% (/proc/stat, 10 ms ticks)",
                share(d.busy_s) * 100.0,
                share(ours) * 100.0,
                share(others) * 100.0,
                share(d.nice_s) * 100.0,
                share(d.steal_s) * 100.0
            ),
        );
        if share(others) > 0.1 || share(d.nice_s) > 0.05 || share(d.steal_s) > 0.05 {
            r.notes.push(format!(
                "other tasks ran on CPU {core} ({who}) during the measured phase (others about {:.0}%, niced {:.0}%, stolen {:.0}%): throughput and latency are disturbed; CPU per delivery much less so",
                share(others) * 100.0,
                share(d.nice_s) * 100.0,
                share(d.steal_s) * 100.0
            ));
        }
    }
    for (k, b) in brokers.iter().enumerate() {
        r.set(&format!("broker{k}_rss_after_kb"), rss_of(b.pid));
    }
    if let Some(l) = load {
        r.set("loadavg_1m", l[0]);
        r.line(
            "machine",
            format!(
                "load average {:.2} {:.2} {:.2} before the measured phase",
                l[0], l[1], l[2]
            ),
        );
    }
    loss_checks(net, &mut r, expected);
    if stalled {
        r.problems.push(format!(
            "deliveries stopped for {:.1} s (--drain) before all arrived",
            cfg.drain.as_secs_f64()
        ));
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_split_the_rest_evenly() {
        assert_eq!(shares(2000, 2, None), vec![1000, 1000]);
        assert_eq!(shares(1001, 2, None), vec![501, 500]);
        assert_eq!(shares(5000, 2, Some(0)), vec![0, 5000]);
        assert_eq!(shares(10, 3, Some(1)), vec![1, 5, 4]);
        assert_eq!(shares(10, 1, None), vec![10]);
    }

    #[test]
    fn prefix_from_server_args() {
        let args = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(cluster_prefix(&args(&[])), "pystrands");
        assert_eq!(cluster_prefix(&args(&["--cluster-prefix", "x"])), "x");
        assert_eq!(cluster_prefix(&args(&["--cluster-prefix=y"])), "y");
    }
}
