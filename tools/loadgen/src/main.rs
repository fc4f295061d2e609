//! Load generator of the PyStrands broker (issue 4): plays the application
//! backend over TCP and N WebSocket clients on one mio loop, checks every
//! delivery, and reports throughput, latency, and the server's CPU and RSS
//! per unit of work; `--limit` runs the same scenario against the simplest
//! possible server, for the machine's floor in the same run.
//!
//! `cargo build --release --workspace`, then
//! `target/release/loadgen <scenario> [options]`; `--help` for all.

mod cluster;
mod limit;
mod net;
mod os;
mod redis;
mod report;
mod scenario;
mod stats;
mod target;
mod ws;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::str::FromStr;
use std::time::{Duration, Instant};

use net::Stop;
use target::{Kind, Target};

const USAGE: &str = "\
loadgen: load generator of the PyStrands broker

usage: loadgen <scenario> [options]
       (cargo build --release --workspace builds target/release/loadgen and,
       beside it, the target/release/pystrands-server it spawns by default)

scenarios:
  fanout      N subscribers over R rooms; the backend sends M messages round-robin
              over the rooms (message_to_room); every delivery is checked
  broadcast   N subscribers; the backend broadcasts M messages
  echo        C clients in a closed loop: client frame -> broker -> backend
              (new_message) -> message_to_connection -> the same client; K in flight
  conns       K idle connections: connect rate, server CPU and RSS per connection

target (default: spawn the pystrands-server in this executable's directory):
  --server-bin PATH      spawn this broker (--host 127.0.0.1 --ws-port 0 --tcp-port 0
                         --log-level info) and read its `listening websocket=.. backend=..`
  --server-arg ARG       extra argument for the spawned broker (repeatable), e.g.
                         --server-arg=--max-outbound-bytes --server-arg=67108864
  --server-pid PID       measure a broker that is already running (with --ws, --backend)
  --ws ADDR              its WebSocket address (loopback only)
  --backend ADDR         its backend TCP address (loopback only)
  --limit                serve the scenario with the tool's own minimal server instead
                         (fanout|broadcast: preencoded shared frames, one writev per socket
                         per turn; echo: frames written straight back; conns: 101 only)
  --hop                  echo with --limit: the limit server sends each frame's payload
                         through the backend connection and back (raw bytes, no JSON)
                         before answering: the floor of a round trip with a backend hop
  --server-core N        pin the spawned server to CPU N (like taskset -c N)
  --core N               pin the load generator itself to CPU N

fanout / broadcast:
  --subscribers N        default 1000
  --rooms R              default 1 (subscriber i joins room i mod R)
  --rooms-per-client K   default 1: each client is also in K-1 rooms that get no
                         messages (x1 .. x{K-1}, shared by all clients; protocol
                         v1.1 `rooms` in the broker's response; no effect in --limit)
  --messages M           default 1000
  --rate X               messages per second; default 0 = as fast as possible
  --stall N              the first N subscribers stop reading after their first message
                         (slow consumers; the broker must close them, the others must not
                         notice); they are drained at the end to see how they were closed.
                         Their deliveries are kept out of the latency and loss figures
cluster mode (fanout / broadcast):
  --cluster N            start a redis-server of our own (free loopback port, no persistence)
                         and N brokers with --redis-url, all pinned to --server-core; the
                         subscribers are split over the brokers, a backend of ours accepts
                         them on each, and every message is sent through broker 0's. Reports
                         each broker's CPU per delivery to its own subscribers, broker 0's
                         per message, and Redis's per message
  --sender-subscribers K subscribers on broker 0 (the sender); the rest are split evenly over
                         the other brokers (default: an even share for every broker)
  --redis-bin PATH       the redis-server to start (default: redis-server on the PATH)
echo:
  --clients C            default 100
  --inflight K           frames in flight per client, default 1
  --duration SECS        measured window, default 5
  --warmup SECS          before the window, default 1
  --external-backend     do not play the backend: another process (e.g.
                         python examples/echo_backend.py --port P) connects to the broker
  --backend-port P       with a spawned broker and --external-backend: its --tcp-port
  --backend-pid PID      also report that backend process's CPU per round trip
conns:
  --connections K        default 1000 (the open-file limit bounds it, ~19,900 here)
  --hold SECS            keep them open this long, default 1
any scenario:
  --size S               payload bytes, default 64 (at least 40)
  --concurrency N        handshakes in flight while connecting, default 128
  --sources N            connect from 127.0.0.1..127.0.0.N (default: one per 4,000
                         connections; each source address has its own port range,
                         and the kernel's port search slows down as a range fills)
  --drain SECS           give up waiting for missing deliveries after SECS without
                         progress, default 5
  --timeout SECS         bound of the whole run, default 60; exit 2 when reached
  --json                 also print one JSON line with every figure (last line)

exit status: 0 all checks passed, 1 a check failed (loss, duplicates, order,
failed connections, ...), 2 timeout, 3 usage or setup error.
";

#[derive(Clone, Copy, Debug)]
pub enum Scenario {
    Fanout {
        subscribers: usize,
        rooms: u32,
        messages: u64,
        rate: f64,
        broadcast: bool,
        stall: usize,
    },
    Echo {
        clients: usize,
        inflight: u64,
        duration: Duration,
        warmup: Duration,
    },
    Conns {
        connections: usize,
        hold: Duration,
    },
}

impl Scenario {
    pub fn name(&self) -> &'static str {
        match self {
            Scenario::Fanout {
                broadcast: false, ..
            } => "fanout",
            Scenario::Fanout {
                broadcast: true, ..
            } => "broadcast",
            Scenario::Echo { .. } => "echo",
            Scenario::Conns { .. } => "conns",
        }
    }

    /// The limit server's mode for this scenario (`hop`: echo through
    /// the backend connection).
    fn limit_mode(&self, hop: bool) -> limit::Mode {
        match self {
            Scenario::Fanout { .. } => limit::Mode::Fanout,
            Scenario::Echo { .. } if hop => limit::Mode::EchoHop,
            Scenario::Echo { .. } => limit::Mode::Echo,
            Scenario::Conns { .. } => limit::Mode::Accept,
        }
    }
}

pub struct Config {
    pub scenario: Scenario,
    pub limit: bool,
    /// Echo with --limit: the limit server's round trip includes a hop
    /// through the backend connection.
    pub hop: bool,
    pub server_bin: PathBuf,
    pub server_args: Vec<String>,
    pub server_pid: Option<u32>,
    pub ws: Option<SocketAddr>,
    pub backend: Option<SocketAddr>,
    pub server_core: Option<usize>,
    pub core: Option<usize>,
    pub timeout: Duration,
    pub drain: Duration,
    pub concurrency: usize,
    pub size: usize,
    pub sources: Option<usize>,
    pub json: bool,
    pub external_backend: bool,
    pub backend_pid: Option<u32>,
    pub backend_port: u16,
    pub rooms_per_client: u32,
    /// Brokers of a cluster run (0: one broker, no Redis).
    pub cluster: usize,
    pub sender_subscribers: Option<usize>,
    pub redis_bin: PathBuf,
}

/// `--name value` / `--name=value` / boolean `--name`, in any order.
struct Args {
    items: Vec<(String, Option<String>)>,
}

const BOOLEAN: &[&str] = &["--json", "--limit", "--hop", "--external-backend", "--help"];

impl Args {
    fn parse(raw: Vec<String>) -> Result<(Option<String>, Args), String> {
        let mut scenario = None;
        let mut items = Vec::new();
        let mut it = raw.into_iter();
        while let Some(a) = it.next() {
            if let Some(flag) = a.strip_prefix("--").map(|_| a.clone()) {
                if let Some((k, v)) = flag.split_once('=') {
                    items.push((k.to_owned(), Some(v.to_owned())));
                } else if BOOLEAN.contains(&flag.as_str()) {
                    items.push((flag, None));
                } else {
                    let v = it.next().ok_or(format!("{flag} needs a value"))?;
                    items.push((flag, Some(v)));
                }
            } else if scenario.is_none() {
                scenario = Some(a);
            } else {
                return Err(format!("unexpected argument {a:?}"));
            }
        }
        Ok((scenario, Args { items }))
    }

    fn take_all(&mut self, name: &str) -> Vec<String> {
        let mut out = Vec::new();
        self.items.retain(|(k, v)| {
            if k == name {
                out.push(v.clone().unwrap_or_default());
                false
            } else {
                true
            }
        });
        out
    }

    fn flag(&mut self, name: &str) -> bool {
        !self.take_all(name).is_empty()
    }

    fn value<T: FromStr>(&mut self, name: &str) -> Result<Option<T>, String> {
        match self.take_all(name).pop() {
            None => Ok(None),
            Some(v) => v
                .parse()
                .map(Some)
                .map_err(|_| format!("{name}: cannot parse {v:?}")),
        }
    }

    fn or<T: FromStr>(&mut self, name: &str, default: T) -> Result<T, String> {
        Ok(self.value(name)?.unwrap_or(default))
    }

    fn secs(&mut self, name: &str, default: f64) -> Result<Duration, String> {
        let s: f64 = self.or(name, default)?;
        if !(s.is_finite() && s >= 0.0) {
            return Err(format!("{name} must be a number of seconds"));
        }
        Ok(Duration::from_secs_f64(s))
    }
}

fn config(scenario: &str, mut a: Args) -> Result<Config, String> {
    let scenario = match scenario {
        "fanout" | "broadcast" => Scenario::Fanout {
            subscribers: a.or("--subscribers", 1000)?,
            rooms: a.or("--rooms", 1)?,
            messages: a.or("--messages", 1000)?,
            rate: a.or("--rate", 0.0)?,
            broadcast: scenario == "broadcast",
            stall: a.or("--stall", 0)?,
        },
        "echo" => Scenario::Echo {
            clients: a.or("--clients", 100)?,
            inflight: a.or("--inflight", 1)?,
            duration: a.secs("--duration", 5.0)?,
            warmup: a.secs("--warmup", 1.0)?,
        },
        "conns" => Scenario::Conns {
            connections: a.or("--connections", 1000)?,
            hold: a.secs("--hold", 1.0)?,
        },
        other => return Err(format!("unknown scenario {other:?}")),
    };
    let loopback = |v: Option<SocketAddr>, what: &str| -> Result<Option<SocketAddr>, String> {
        v.map(|a| target::loopback(a, what)).transpose()
    };
    let cfg = Config {
        scenario,
        limit: a.flag("--limit"),
        hop: a.flag("--hop"),
        server_bin: match a.value("--server-bin")? {
            Some(path) => path,
            None => sibling_broker()?,
        },
        server_args: a.take_all("--server-arg"),
        server_pid: a.value("--server-pid")?,
        ws: loopback(a.value("--ws")?, "--ws")?,
        backend: loopback(a.value("--backend")?, "--backend")?,
        server_core: a.value("--server-core")?,
        core: a.value("--core")?,
        timeout: a.secs("--timeout", 60.0)?,
        drain: a.secs("--drain", 5.0)?,
        concurrency: a.or("--concurrency", 128)?,
        size: a.or("--size", 64)?,
        sources: a.value("--sources")?,
        json: a.flag("--json"),
        external_backend: a.flag("--external-backend"),
        backend_pid: a.value("--backend-pid")?,
        backend_port: a.or("--backend-port", 0)?,
        rooms_per_client: a.or("--rooms-per-client", 1)?,
        cluster: a.or("--cluster", 0)?,
        sender_subscribers: a.value("--sender-subscribers")?,
        redis_bin: a.or("--redis-bin", PathBuf::from("redis-server"))?,
    };
    if let Some((k, _)) = a.items.first() {
        return Err(format!("unknown option {k} for {}", cfg.scenario.name()));
    }
    if cfg.size < ws::PAYLOAD_MIN {
        return Err(format!("--size must be at least {}", ws::PAYLOAD_MIN));
    }
    if cfg.rooms_per_client == 0 {
        return Err("--rooms-per-client must be at least 1".into());
    }
    if cfg.concurrency == 0 {
        return Err("--concurrency must be at least 1".into());
    }
    if cfg.sources.is_some_and(|n| !(1..=254).contains(&n)) {
        return Err("--sources must be 1..=254".into());
    }
    if cfg.external_backend {
        if matches!(cfg.scenario, Scenario::Fanout { .. }) {
            return Err(
                "--external-backend is for echo and conns (fan-out needs our own backend to send)"
                    .into(),
            );
        }
        if cfg.limit {
            return Err("--external-backend measures the broker, not --limit".into());
        }
    }
    if cfg.hop && !(cfg.limit && matches!(cfg.scenario, Scenario::Echo { .. })) {
        return Err("--hop is for echo with --limit".into());
    }
    if cfg.limit && (cfg.server_pid.is_some() || cfg.ws.is_some()) {
        return Err("--limit spawns its own server: no --server-pid / --ws".into());
    }
    if cfg.server_pid.is_some() && cfg.ws.is_none() {
        return Err(
            "--server-pid needs --ws ADDR (and --backend ADDR unless --external-backend)".into(),
        );
    }
    if cfg.cluster > 0 {
        let Scenario::Fanout {
            subscribers, stall, ..
        } = cfg.scenario
        else {
            return Err("--cluster is for fanout and broadcast".into());
        };
        if cfg.cluster > 16 {
            return Err("--cluster: at most 16 brokers".into());
        }
        if cfg.limit || cfg.server_pid.is_some() || cfg.ws.is_some() || cfg.backend.is_some() {
            return Err(
                "--cluster starts its own brokers and Redis: no --limit, --server-pid, --ws or --backend"
                    .into(),
            );
        }
        if stall > 0 {
            return Err("--stall is not available with --cluster".into());
        }
        match cfg.sender_subscribers {
            Some(k) if k > subscribers => {
                return Err("--sender-subscribers must be at most --subscribers".into())
            }
            Some(k) if cfg.cluster == 1 && k != subscribers => {
                return Err(
                    "--sender-subscribers: with --cluster 1 every subscriber is on broker 0".into(),
                )
            }
            _ => {}
        }
    } else if cfg.sender_subscribers.is_some() {
        return Err("--sender-subscribers is for --cluster".into());
    }
    if let Scenario::Echo { inflight: 0, .. } = cfg.scenario {
        return Err("--inflight must be at least 1".into());
    }
    if let Scenario::Fanout { rooms: 0, .. } = cfg.scenario {
        return Err("--rooms must be at least 1".into());
    }
    if let Scenario::Fanout {
        stall, subscribers, ..
    } = cfg.scenario
    {
        if stall >= subscribers && stall > 0 {
            return Err("--stall must be less than --subscribers".into());
        }
        if stall > 0 && cfg.limit {
            return Err(
                "--stall is for the broker: the limit server has no slow-consumer bound".into(),
            );
        }
    }
    Ok(cfg)
}

/// The default broker: `pystrands-server` in the directory of this
/// executable, where `cargo build --release --workspace` puts both.
fn sibling_broker() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find own executable: {e}"))?;
    Ok(exe.with_file_name("pystrands-server"))
}

fn start_target(cfg: &Config, deadline: Instant) -> Result<Target, String> {
    if cfg.limit {
        let exe =
            std::env::current_exe().map_err(|e| format!("cannot find own executable: {e}"))?;
        let mut cmd = Command::new(exe);
        cmd.args([
            "__limit-server",
            "--mode",
            cfg.scenario.limit_mode(cfg.hop).name(),
            "--timeout",
            &cfg.timeout.as_secs_f64().to_string(),
        ]);
        return Target::spawn(Kind::Limit, cmd, cfg.server_core, deadline);
    }
    if let Some(ws) = cfg.ws {
        return Ok(Target::attach(cfg.server_pid, ws, cfg.backend));
    }
    if !cfg.server_bin.is_file() {
        return Err(format!(
            "no broker at {}: build it (cargo build --release --workspace) or pass --server-bin PATH",
            cfg.server_bin.display()
        ));
    }
    let mut cmd = Command::new(&cfg.server_bin);
    cmd.args([
        "--host",
        "127.0.0.1",
        "--ws-port",
        "0",
        "--tcp-port",
        &cfg.backend_port.to_string(),
        "--log-level",
        "info",
    ]);
    cmd.args(&cfg.server_args);
    let t = Target::spawn(Kind::Broker, cmd, cfg.server_core, deadline)?;
    if cfg.external_backend {
        eprintln!(
            "loadgen: broker listening websocket={} backend={}; waiting for an external backend to connect to the backend port",
            t.ws,
            t.backend.map_or("?".into(), |b| b.to_string())
        );
    }
    Ok(t)
}

fn main() -> ExitCode {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    if raw.first().map(String::as_str) == Some("__limit-server") {
        return ExitCode::from(limit::main(&raw[1..]) as u8);
    }
    let (scenario, mut args) = match Args::parse(raw) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("loadgen: {e}\n\n{USAGE}");
            return ExitCode::from(3);
        }
    };
    let Some(scenario) = scenario.filter(|_| !args.flag("--help")) else {
        print!("{USAGE}");
        return ExitCode::SUCCESS;
    };
    let cfg = match config(&scenario, args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("loadgen: {e} (see --help)");
            return ExitCode::from(3);
        }
    };
    let started = Instant::now();
    let deadline = started + cfg.timeout;
    let nofile = match os::raise_nofile_limit() {
        Ok(n) => n,
        Err(e) => {
            eprintln!("loadgen: cannot raise the open-file limit: {e}");
            return ExitCode::from(3);
        }
    };
    let needed = match cfg.scenario {
        Scenario::Fanout { subscribers, .. } => subscribers,
        Scenario::Echo { clients, .. } => clients,
        Scenario::Conns { connections, .. } => connections,
    } as u64
        + 64;
    if needed > nofile {
        eprintln!(
            "loadgen: the open-file limit is {nofile}: at most {} connections",
            nofile.saturating_sub(64)
        );
        return ExitCode::from(3);
    }
    if cfg.cluster > 0 {
        let result = cluster::run(&cfg, deadline);
        return finish(&cfg, started, result, "");
    }
    // The server starts first, so it does not inherit our own pinning.
    let mut target = match start_target(&cfg, deadline) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("loadgen: {e}");
            return ExitCode::from(if e.starts_with("timeout") { 2 } else { 3 });
        }
    };
    if let Some(core) = cfg.core {
        if let Err(e) = os::pin_self_to_core(core) {
            eprintln!("loadgen: cannot pin to CPU {core}: {e}");
            return ExitCode::from(3);
        }
    }
    let result = scenario::run(&cfg, &mut target, deadline);
    target.stop();
    finish(&cfg, started, result, &target.tail())
}

/// Prints the report (or why there is none); the exit status.
fn finish(
    cfg: &Config,
    started: Instant,
    result: Result<report::Report, Stop>,
    tail: &str,
) -> ExitCode {
    match result {
        Ok(mut report) => {
            report.set(
                "elapsed_s",
                report::round(started.elapsed().as_secs_f64(), 3),
            );
            println!("loadgen {}:", cfg.scenario.name());
            print!("{}", report.human());
            if cfg.json {
                println!("{}", report.json());
            }
            if report.is_ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(Stop::Timeout(m)) => {
            eprintln!(
                "loadgen: {m}: --timeout {} s reached{tail}",
                cfg.timeout.as_secs_f64(),
            );
            ExitCode::from(2)
        }
        Err(Stop::Failed(m)) => {
            eprintln!("loadgen: {m}{tail}");
            ExitCode::from(3)
        }
    }
}
