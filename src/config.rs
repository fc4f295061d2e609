//! Command line flags and `PYSTRAND_*` environment variables, validated into a [`Config`].
//!
//! Every limit the broker enforces is here, with its flag, its default and the
//! name that error messages use. Invalid values never reach the server: they
//! become a [`ConfigError`] that names the flag or variable, and `main` exits
//! with status 2.

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use argh::FromArgs;

/// One mebibyte, the unit of the size defaults.
const MIB: usize = 1024 * 1024;

/// PyStrands broker: WebSocket clients on one port, application backends
/// (newline-delimited JSON over TCP) on the other.
///
/// The environment variables PYSTRAND_WS_PORT, PYSTRAND_TCP_PORT and
/// PYSTRAND_QUEUE_SIZE override the matching flags when set.
#[derive(FromArgs, Debug)]
pub struct Args {
    /// port for WebSocket clients (default 8080; 0 picks a free port)
    #[argh(option, default = "8080")]
    pub ws_port: u16,

    /// port for application backends (default 8081; 0 picks a free port)
    #[argh(option, default = "8081")]
    pub tcp_port: u16,

    /// address the WebSocket port listens on (default 0.0.0.0)
    #[argh(option, default = "String::from(\"0.0.0.0\")")]
    pub host: String,

    /// address the backend port listens on (default 127.0.0.1, so backends
    /// are reachable only from this machine unless you ask otherwise)
    #[argh(option, default = "String::from(\"127.0.0.1\")")]
    pub backend_host: String,

    /// events kept while no backend is connected, flushed in order to the
    /// next backend; the oldest is dropped when full (default 1000, 0 = keep none)
    #[argh(option, default = "1000")]
    pub queue_size: usize,

    /// bytes of events kept while no backend is connected (a second bound
    /// beside the count); the oldest are dropped past it (default 67108864)
    #[argh(option, default = "64 * MIB")]
    pub queue_bytes: usize,

    /// seconds a WebSocket upgrade waits for a backend's answer before it
    /// gets HTTP 503; decimals allowed (default 5)
    #[argh(option, default = "String::from(\"5\")")]
    pub connect_timeout: String,

    /// largest WebSocket message a client may send, in bytes, after
    /// reassembling fragments; larger ones close the client with 1009
    /// (default 1048576)
    #[argh(option, default = "MIB")]
    pub max_message_size: usize,

    /// memory a client's unsent messages may take behind the message it is
    /// receiving, in bytes: each message counts its size plus 48 bytes of
    /// bookkeeping (checked after each write); a client further behind is
    /// closed with 1008 (default 4194304)
    #[argh(option, default = "4 * MIB")]
    pub max_outbound_bytes: usize,

    /// bytes of events that may wait for one slow backend; past it the
    /// broker stops reading from the clients whose events go to that
    /// backend until it catches up (default 16777216)
    #[argh(option, default = "16 * MIB")]
    pub max_backend_buffer: usize,

    /// largest line a backend may send, in bytes; a longer line closes that
    /// backend (default 16777216)
    #[argh(option, default = "16 * MIB")]
    pub max_line_size: usize,

    /// largest HTTP upgrade request (request line and headers) in bytes;
    /// larger ones get HTTP 431 (default 8192)
    #[argh(option, default = "8192")]
    pub max_request_size: usize,

    /// most headers an HTTP upgrade request may carry; more get HTTP 431
    /// (default 64)
    #[argh(option, default = "64")]
    pub max_headers: usize,

    /// seconds a closing connection is given to flush its last bytes and
    /// finish the close handshake, and the bound on the drain at shutdown;
    /// decimals allowed (default 3)
    #[argh(option, default = "String::from(\"3\")")]
    pub close_timeout: String,

    /// seconds between heartbeat events to each backend; decimals allowed
    /// (default 15)
    #[argh(option, default = "String::from(\"15\")")]
    pub heartbeat_interval: String,

    /// seconds between pings to each client; a client that sends nothing
    /// (not even a pong) within --ping-timeout after a ping is closed;
    /// decimals allowed (default 25)
    #[argh(option, default = "String::from(\"25\")")]
    pub ping_interval: String,

    /// seconds a client has to answer a ping (default 10)
    #[argh(option, default = "String::from(\"10\")")]
    pub ping_timeout: String,

    /// most client connections at once, in every state; past it new
    /// upgrades get HTTP 503 (default 100000, lowered to what the open-file
    /// limit allows)
    #[argh(option, default = "100_000")]
    pub max_connections: usize,

    /// most connection requests waiting for a backend's answer at once;
    /// past it new upgrades get HTTP 503 at once (default 10000)
    #[argh(option, default = "10_000")]
    pub max_pending_requests: usize,

    /// most frames one fragmented message may arrive in; more close the
    /// client with 1009 (default 1024)
    #[argh(option, default = "1024")]
    pub max_fragments: usize,

    /// most backend connections that have not authenticated yet (with
    /// --backend-token); more are refused at once (default 64)
    #[argh(option, default = "64")]
    pub max_pending_backends: usize,

    /// port of the admin listener: GET /metrics (Prometheus), /health and
    /// /stats (default 8082; 0 turns it off)
    #[argh(option, default = "8082")]
    pub admin_port: u16,

    /// address the admin listener listens on (default 127.0.0.1)
    #[argh(option, default = "String::from(\"127.0.0.1\")")]
    pub admin_host: String,

    /// the Redis to share rooms, private messages, broadcasts, kicks and
    /// presence with other brokers through, as redis://HOST:PORT[/DB];
    /// turns cluster mode on (default: off, one broker on its own)
    #[argh(option)]
    pub redis_url: Option<String>,

    /// this broker's name in the cluster (default: a random UUID)
    #[argh(option)]
    pub node_id: Option<String>,

    /// prefix of the Redis channels and keys the cluster uses, so several
    /// clusters can share one Redis (default pystrands)
    #[argh(option, default = "String::from(\"pystrands\")")]
    pub cluster_prefix: String,

    /// seconds a connection's presence outlives its broker in Redis (a
    /// crashed broker's members vanish within this); refreshed every third
    /// of it (default 60)
    #[argh(option, default = "String::from(\"60\")")]
    pub presence_ttl: String,

    /// seconds Redis may take to answer a probe before the link is taken
    /// for stalled and reconnected; probes go every third of it (default 3)
    #[argh(option, default = "String::from(\"3\")")]
    pub redis_timeout: String,

    /// bytes of commands that may wait for Redis; past it cross-broker
    /// messages are dropped (counted) rather than buffered (default
    /// 16777216)
    #[argh(option, default = "16 * MIB")]
    pub max_redis_buffer: usize,

    /// shared secret backends must present in their first line
    /// ({"action":"auth","params":{"token":"..."}}); also read from
    /// PYSTRANDS_BACKEND_TOKEN (default: none, any local process may connect)
    #[argh(option)]
    pub backend_token: Option<String>,

    /// comma-separated Origin values allowed to upgrade, e.g.
    /// https://app.example.com; others get HTTP 403 (default: any origin)
    #[argh(option)]
    pub allowed_origins: Option<String>,

    /// error, warn, info or debug (default info)
    #[argh(option, default = "String::from(\"info\")")]
    pub log_level: String,
}

/// The validated settings the server runs with.
#[derive(Debug, Clone)]
pub struct Config {
    /// WebSocket listen address.
    pub host: IpAddr,
    /// WebSocket listen port (0: ephemeral).
    pub ws_port: u16,
    /// Backend listen address.
    pub backend_host: IpAddr,
    /// Backend listen port (0: ephemeral).
    pub tcp_port: u16,
    /// Where `ws_port` came from (`--ws-port` or `PYSTRAND_WS_PORT`), for errors.
    pub ws_port_source: &'static str,
    /// Where `tcp_port` came from (`--tcp-port` or `PYSTRAND_TCP_PORT`).
    pub tcp_port_source: &'static str,
    /// Events kept while no backend is connected.
    pub queue_size: usize,
    /// How long a connection request waits for its answer.
    pub connect_timeout: Duration,
    /// Largest reassembled client message.
    pub max_message_size: usize,
    /// Bound of one client's send queue.
    pub max_outbound_bytes: usize,
    /// Events waiting for one backend before its clients are paused.
    pub max_backend_buffer: usize,
    /// Largest backend line.
    pub max_line_size: usize,
    /// Largest upgrade request head.
    pub max_request_size: usize,
    /// Most headers in an upgrade request.
    pub max_headers: usize,
    /// Time a closing connection (and the shutdown drain) is given.
    pub close_timeout: Duration,
    /// Interval of heartbeat events to backends.
    pub heartbeat_interval: Duration,
    /// Interval of pings to clients.
    pub ping_interval: Duration,
    /// Time a client has to answer a ping.
    pub ping_timeout: Duration,
    /// Most client connections at once.
    pub max_connections: usize,
    /// Most connection requests waiting for an answer.
    pub max_pending_requests: usize,
    /// Most frames in one fragmented message.
    pub max_fragments: usize,
    /// Token backends must present (none: no authentication).
    pub backend_token: Option<String>,
    /// Origins allowed to upgrade (none: any).
    pub allowed_origins: Option<Vec<String>>,
    /// Most verbose level that is logged.
    pub log_level: log::LevelFilter,
    /// Bytes of events kept while no backend is connected.
    pub queue_bytes: usize,
    /// Most backend connections not yet authenticated.
    pub max_pending_backends: usize,
    /// The admin listener's address; `None` when it is off.
    pub admin: Option<std::net::SocketAddr>,
    /// Cluster mode, when `--redis-url` is given.
    pub cluster: Option<ClusterConfig>,
}

/// Cluster mode: how this broker shares its rooms through Redis.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// Where Redis listens.
    pub redis: std::net::SocketAddr,
    /// The Redis database number (`SELECT`).
    pub db: u32,
    /// The URL as given, for log lines.
    pub url: String,
    /// This broker's name in the cluster.
    pub node_id: String,
    /// Prefix of channels and keys.
    pub prefix: String,
    /// How long presence outlives a broker.
    pub presence_ttl: Duration,
    /// How long a probe may wait for its answer.
    pub redis_timeout: Duration,
    /// Bytes of commands that may wait for Redis.
    pub max_redis_buffer: usize,
}

impl Default for Config {
    /// The defaults of the flags, with both ports ephemeral on loopback:
    /// what the library's own tests and benches start from.
    fn default() -> Self {
        Config {
            host: IpAddr::from([127, 0, 0, 1]),
            ws_port: 0,
            backend_host: IpAddr::from([127, 0, 0, 1]),
            tcp_port: 0,
            ws_port_source: "--ws-port",
            tcp_port_source: "--tcp-port",
            queue_size: 1000,
            connect_timeout: Duration::from_secs(5),
            max_message_size: MIB,
            max_outbound_bytes: 4 * MIB,
            max_backend_buffer: 16 * MIB,
            max_line_size: 16 * MIB,
            max_request_size: 8192,
            max_headers: 64,
            close_timeout: Duration::from_secs(3),
            heartbeat_interval: Duration::from_secs(15),
            ping_interval: Duration::from_secs(25),
            ping_timeout: Duration::from_secs(10),
            max_connections: 100_000,
            max_pending_requests: 10_000,
            max_fragments: 1024,
            backend_token: None,
            allowed_origins: None,
            log_level: log::LevelFilter::Info,
            queue_bytes: 64 * MIB,
            max_pending_backends: 64,
            admin: None,
            cluster: None,
        }
    }
}

/// A flag or environment variable with a value the broker cannot use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The flag (`--ws-port`) or variable (`PYSTRAND_WS_PORT`) at fault.
    pub source: String,
    /// What is wrong with its value.
    pub problem: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.source, self.problem)
    }
}

impl std::error::Error for ConfigError {}

fn err(source: &str, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        source: source.to_owned(),
        problem: problem.into(),
    }
}

impl Config {
    /// Validates parsed flags, applying the `PYSTRAND_*` overrides that
    /// `env` returns (`std::env::var` in the binary; a map in tests).
    pub fn from_args(
        args: Args,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let env_set = |name: &str| env(name).filter(|v| !v.trim().is_empty());
        let (ws_port, ws_port_source) = match env_set("PYSTRAND_WS_PORT") {
            Some(v) => (parse_port("PYSTRAND_WS_PORT", &v)?, "PYSTRAND_WS_PORT"),
            None => (args.ws_port, "--ws-port"),
        };
        let (tcp_port, tcp_port_source) = match env_set("PYSTRAND_TCP_PORT") {
            Some(v) => (parse_port("PYSTRAND_TCP_PORT", &v)?, "PYSTRAND_TCP_PORT"),
            None => (args.tcp_port, "--tcp-port"),
        };
        let queue_size = match env_set("PYSTRAND_QUEUE_SIZE") {
            Some(v) => v.trim().parse::<usize>().map_err(|_| {
                err(
                    "PYSTRAND_QUEUE_SIZE",
                    format!("'{v}' is not a whole number of events"),
                )
            })?,
            None => args.queue_size,
        };
        let config = Config {
            host: parse_ip("--host", &args.host)?,
            ws_port,
            backend_host: parse_ip("--backend-host", &args.backend_host)?,
            tcp_port,
            ws_port_source,
            tcp_port_source,
            queue_size,
            connect_timeout: parse_seconds("--connect-timeout", &args.connect_timeout)?,
            max_message_size: at_least("--max-message-size", args.max_message_size, 1)?,
            max_outbound_bytes: at_least("--max-outbound-bytes", args.max_outbound_bytes, 1024)?,
            max_backend_buffer: at_least("--max-backend-buffer", args.max_backend_buffer, 1024)?,
            max_line_size: at_least("--max-line-size", args.max_line_size, 1024)?,
            max_request_size: at_least("--max-request-size", args.max_request_size, 256)?,
            max_headers: at_least("--max-headers", args.max_headers, 8)?,
            close_timeout: parse_seconds("--close-timeout", &args.close_timeout)?,
            heartbeat_interval: parse_seconds("--heartbeat-interval", &args.heartbeat_interval)?,
            ping_interval: parse_seconds("--ping-interval", &args.ping_interval)?,
            ping_timeout: parse_seconds("--ping-timeout", &args.ping_timeout)?,
            max_connections: at_least("--max-connections", args.max_connections, 1)?,
            max_pending_requests: at_least("--max-pending-requests", args.max_pending_requests, 1)?,
            max_fragments: at_least("--max-fragments", args.max_fragments, 1)?,
            backend_token: match env_set("PYSTRANDS_BACKEND_TOKEN") {
                Some(token) => Some(token),
                None => args.backend_token,
            }
            .map(|t| {
                if t.is_empty() {
                    Err(err("--backend-token", "the token must not be empty"))
                } else {
                    Ok(t)
                }
            })
            .transpose()?,
            allowed_origins: args
                .allowed_origins
                .map(|list| parse_origins(&list))
                .transpose()?,
            log_level: parse_level(&args.log_level)?,
            queue_bytes: args.queue_bytes,
            max_pending_backends: at_least("--max-pending-backends", args.max_pending_backends, 1)?,
            cluster: match args.redis_url {
                None => None,
                Some(url) => Some(ClusterConfig {
                    redis: parse_redis_url(&url)?.0,
                    db: parse_redis_url(&url)?.1,
                    url,
                    node_id: match args.node_id {
                        Some(id) if id.is_empty() || id.contains(char::is_whitespace) => {
                            return Err(err("--node-id", "must be a word: not empty, no spaces"))
                        }
                        Some(id) => id,
                        None => uuid::Uuid::new_v4().to_string(),
                    },
                    prefix: if args.cluster_prefix.is_empty() {
                        return Err(err("--cluster-prefix", "must not be empty"));
                    } else {
                        args.cluster_prefix
                    },
                    presence_ttl: parse_seconds("--presence-ttl", &args.presence_ttl)?,
                    redis_timeout: parse_seconds("--redis-timeout", &args.redis_timeout)?,
                    max_redis_buffer: at_least("--max-redis-buffer", args.max_redis_buffer, 1024)?,
                }),
            },
            admin: match args.admin_port {
                0 => None,
                port => Some(std::net::SocketAddr::new(
                    parse_ip("--admin-host", &args.admin_host)?,
                    port,
                )),
            },
        };
        Ok(config)
    }
}

fn parse_port(source: &str, value: &str) -> Result<u16, ConfigError> {
    value.trim().parse::<u16>().map_err(|_| {
        err(
            source,
            format!("'{value}' is not a port number (0 to 65535)"),
        )
    })
}

fn parse_ip(source: &str, value: &str) -> Result<IpAddr, ConfigError> {
    if value == "localhost" {
        return Ok(IpAddr::from([127, 0, 0, 1]));
    }
    value
        .parse::<IpAddr>()
        .map_err(|_| err(source, format!("'{value}' is not an IP address")))
}

fn parse_seconds(source: &str, value: &str) -> Result<Duration, ConfigError> {
    let secs: f64 = value
        .trim()
        .parse()
        .map_err(|_| err(source, format!("'{value}' is not a number of seconds")))?;
    if !(secs.is_finite() && secs > 0.0 && secs <= 86_400.0) {
        return Err(err(
            source,
            format!("'{value}' must be more than 0 and at most 86400 seconds"),
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn at_least(source: &str, value: usize, min: usize) -> Result<usize, ConfigError> {
    if value < min {
        return Err(err(
            source,
            format!("{value} is below the minimum of {min}"),
        ));
    }
    Ok(value)
}

/// `redis://HOST:PORT[/DB]` (port 6379 when left out): where Redis listens
/// (the host resolved once, at start) and the database number.
fn parse_redis_url(url: &str) -> Result<(std::net::SocketAddr, u32), ConfigError> {
    use std::net::ToSocketAddrs;
    let bad = |why: &str| {
        err(
            "--redis-url",
            format!("'{url}': {why} (want redis://HOST:PORT[/DB])"),
        )
    };
    let rest = url
        .strip_prefix("redis://")
        .ok_or_else(|| bad("not a redis:// URL"))?;
    let (authority, db) = match rest.split_once('/') {
        Some((a, "")) => (a, 0),
        Some((a, db)) => (
            a,
            db.parse::<u32>()
                .map_err(|_| bad("the database must be a number"))?,
        ),
        None => (rest, 0),
    };
    if authority.contains('@') {
        return Err(bad("user names and passwords are not supported"));
    }
    let with_port = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        authority.to_owned()
    } else {
        format!("{authority}:6379")
    };
    let addr = with_port
        .to_socket_addrs()
        .map_err(|e| bad(&format!("cannot resolve the host: {e}")))?
        .next()
        .ok_or_else(|| bad("the host has no address"))?;
    Ok((addr, db))
}

fn parse_origins(list: &str) -> Result<Vec<String>, ConfigError> {
    let origins: Vec<String> = list
        .split(',')
        .map(|o| o.trim().trim_end_matches('/').to_ascii_lowercase())
        .filter(|o| !o.is_empty())
        .collect();
    if origins.is_empty() {
        return Err(err(
            "--allowed-origins",
            "the list is empty (leave the flag out to allow any origin)",
        ));
    }
    Ok(origins)
}

fn parse_level(value: &str) -> Result<log::LevelFilter, ConfigError> {
    match value.to_ascii_lowercase().as_str() {
        "error" => Ok(log::LevelFilter::Error),
        "warn" | "warning" => Ok(log::LevelFilter::Warn),
        "info" => Ok(log::LevelFilter::Info),
        "debug" => Ok(log::LevelFilter::Debug),
        _ => Err(err(
            "--log-level",
            format!("'{value}' is not one of error, warn, info, debug"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Args {
        Args::from_args(&["pystrands-server"], list).expect("flags parse")
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn defaults_match_the_documented_ones() {
        let c = Config::from_args(args(&[]), no_env).unwrap();
        assert_eq!((c.ws_port, c.tcp_port, c.queue_size), (8080, 8081, 1000));
        assert_eq!(c.host, IpAddr::from([0, 0, 0, 0]));
        assert_eq!(c.backend_host, IpAddr::from([127, 0, 0, 1]));
        assert_eq!(c.connect_timeout, Duration::from_secs(5));
        assert_eq!(c.max_message_size, MIB);
        assert_eq!(c.max_outbound_bytes, 4 * MIB);
        assert_eq!(c.max_line_size, 16 * MIB);
        assert_eq!(c.log_level, log::LevelFilter::Info);
        assert_eq!(c.queue_bytes, 64 * MIB);
        assert_eq!(c.max_pending_backends, 64);
        assert_eq!(c.admin, Some("127.0.0.1:8082".parse().unwrap()));
        let c = Config::from_args(args(&["--admin-port", "0"]), no_env).unwrap();
        assert_eq!(c.admin, None);
    }

    #[test]
    fn environment_overrides_flags() {
        let env = |name: &str| match name {
            "PYSTRAND_WS_PORT" => Some("9000".to_owned()),
            "PYSTRAND_TCP_PORT" => Some("9001".to_owned()),
            "PYSTRAND_QUEUE_SIZE" => Some("0".to_owned()),
            _ => None,
        };
        let c = Config::from_args(args(&["--ws-port", "1", "--tcp-port", "2"]), env).unwrap();
        assert_eq!((c.ws_port, c.tcp_port, c.queue_size), (9000, 9001, 0));
    }

    #[test]
    fn bad_environment_value_names_the_variable() {
        let env = |name: &str| (name == "PYSTRAND_TCP_PORT").then(|| "70000".to_owned());
        let e = Config::from_args(args(&[]), env).unwrap_err();
        assert_eq!(e.source, "PYSTRAND_TCP_PORT");
        let env = |name: &str| (name == "PYSTRAND_QUEUE_SIZE").then(|| "abc".to_owned());
        assert_eq!(
            Config::from_args(args(&[]), env).unwrap_err().source,
            "PYSTRAND_QUEUE_SIZE"
        );
    }

    #[test]
    fn bad_flag_values_name_the_flag() {
        let cases: &[(&[&str], &str)] = &[
            (&["--connect-timeout", "abc"], "--connect-timeout"),
            (&["--connect-timeout", "0"], "--connect-timeout"),
            (&["--host", "nowhere"], "--host"),
            (&["--log-level", "loud"], "--log-level"),
            (&["--max-outbound-bytes", "10"], "--max-outbound-bytes"),
            (&["--max-pending-backends", "0"], "--max-pending-backends"),
            (&["--admin-host", "somewhere"], "--admin-host"),
        ];
        for (flags, source) in cases {
            let e = Config::from_args(args(flags), no_env).unwrap_err();
            assert_eq!(&e.source, source, "{flags:?}");
        }
    }

    #[test]
    fn token_from_environment_and_origins_list() {
        let env = |name: &str| (name == "PYSTRANDS_BACKEND_TOKEN").then(|| "s3cret".to_owned());
        let c = Config::from_args(
            args(&["--allowed-origins", "https://A.example/, http://b.example"]),
            env,
        )
        .unwrap();
        assert_eq!(c.backend_token.as_deref(), Some("s3cret"));
        assert_eq!(
            c.allowed_origins.unwrap(),
            ["https://a.example", "http://b.example"]
        );
        let e = Config::from_args(args(&["--allowed-origins", " , "]), no_env).unwrap_err();
        assert_eq!(e.source, "--allowed-origins");
    }

    #[test]
    fn cluster_flags() {
        let c = Config::from_args(args(&[]), no_env).unwrap();
        assert!(c.cluster.is_none());
        let c = Config::from_args(
            args(&["--redis-url", "redis://127.0.0.1:7000/2", "--node-id", "a"]),
            no_env,
        )
        .unwrap();
        let cluster = c.cluster.unwrap();
        assert_eq!(cluster.redis, "127.0.0.1:7000".parse().unwrap());
        assert_eq!((cluster.db, cluster.node_id.as_str()), (2, "a"));
        assert_eq!(cluster.prefix, "pystrands");
        assert_eq!(cluster.presence_ttl, Duration::from_secs(60));
        let c = Config::from_args(args(&["--redis-url", "redis://localhost"]), no_env).unwrap();
        assert_eq!(c.cluster.unwrap().redis.port(), 6379);
        for bad in ["http://x", "redis://h:1/db", "redis://u:p@h:1"] {
            let e = Config::from_args(args(&["--redis-url", bad]), no_env).unwrap_err();
            assert_eq!(e.source, "--redis-url", "{bad}");
        }
        let e = Config::from_args(
            args(&["--redis-url", "redis://127.0.0.1:1", "--node-id", "a b"]),
            no_env,
        )
        .unwrap_err();
        assert_eq!(e.source, "--node-id");
    }

    #[test]
    fn decimal_timeouts_are_accepted() {
        let c = Config::from_args(args(&["--connect-timeout", "0.25"]), no_env).unwrap();
        assert_eq!(c.connect_timeout, Duration::from_millis(250));
    }
}
