//! The harness every integration test shares: the real `pystrands-server`
//! binary on ephemeral loopback ports, raw TCP backends speaking
//! newline-delimited JSON, and WebSocket clients (tungstenite's blocking
//! client, or raw bytes when a test must break the protocol).
//!
//! Every blocking wait here is bounded by [`TIMEOUT`]: a broken broker fails
//! the test with a message (and the broker's log) instead of hanging it.
//! Tests never sleep to assert; they wait for a condition (a line from a
//! socket, a log line) with a deadline.
//!
//! This file runs the broker; `backend.rs` holds the raw TCP backends,
//! `client.rs` the WebSocket clients (and [`Flood`], a client sending on a
//! thread of its own), `raw.rs` hand-made frames, HTTP heads and socket
//! options. Everything is re-exported here: a test file says `mod common;`
//! and `use common::*;`.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

mod backend;
mod client;
mod raw;
mod redis;

pub use backend::*;
pub use client::*;
pub use raw::*;
#[allow(unused_imports)]
pub use redis::*;

/// The bound on every single wait (a line, a frame, a log line, an exit).
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// The server binary cargo built for these tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_pystrands-server");

/// Environment variables of the broker that must not leak in from the
/// environment the tests run in.
const BROKER_ENV: [&str; 4] = [
    "PYSTRAND_WS_PORT",
    "PYSTRAND_TCP_PORT",
    "PYSTRAND_QUEUE_SIZE",
    "PYSTRANDS_BACKEND_TOKEN",
];

// ------------------------------------------------------------------ broker

/// The broker's stderr, line by line, as it arrives.
#[derive(Default)]
struct Log {
    lines: Mutex<Vec<String>>,
    grew: Condvar,
}

impl Log {
    fn push(&self, line: String) {
        self.lock().push(line);
        self.grew.notify_all();
    }

    /// Waits until a line satisfies `pred`; returns it.
    fn wait(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + TIMEOUT;
        let mut lines = self.lock();
        loop {
            if let Some(line) = lines.iter().find(|l| pred(l)) {
                return line.clone();
            }
            let now = Instant::now();
            if now >= deadline {
                let log = lines.join("\n");
                // Release the lock before panicking, so it is not poisoned.
                drop(lines);
                panic!("no broker log line {what} within {TIMEOUT:?}; log so far:\n{log}");
            }
            lines = self
                .grew
                .wait_timeout(lines, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<String>> {
        self.lines.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A running `pystrands-server`, killed when dropped.
pub struct Broker {
    child: Child,
    /// Where WebSocket clients connect.
    pub ws: SocketAddr,
    /// Where backends connect.
    pub backend: SocketAddr,
    /// The admin listener, when it is on (see [`Broker::start_with_admin`]).
    pub admin: Option<SocketAddr>,
    log: Arc<Log>,
    exit: Option<ExitStatus>,
}

impl Broker {
    /// Starts the broker with `flags`, on ephemeral loopback ports and at
    /// log level debug unless `flags` say otherwise.
    pub fn start(flags: &[&str]) -> Broker {
        Broker::start_with_env(flags, &[])
    }

    /// [`Broker::start`] with environment variables set (after the
    /// `PYSTRAND_*` ones of the test environment are removed).
    pub fn start_with_env(flags: &[&str], env: &[(&str, &str)]) -> Broker {
        Broker::start_with_command(flags, env, |_| {})
    }

    /// [`Broker::start_with_env`], with `configure` given the last word on
    /// the command before it is spawned (e.g. a `pre_exec` that lowers a
    /// resource limit of the child).
    pub fn start_with_command(
        flags: &[&str],
        env: &[(&str, &str)],
        configure: impl FnOnce(&mut Command),
    ) -> Broker {
        let mut cmd = broker_command(env, Stdio::null());
        for (flag, value) in [
            ("--host", "127.0.0.1"),
            ("--ws-port", "0"),
            ("--tcp-port", "0"),
            ("--admin-port", "0"),
            ("--log-level", "debug"),
        ] {
            if !flags.contains(&flag) {
                cmd.args([flag, value]);
            }
        }
        cmd.args(flags);
        configure(&mut cmd);
        let mut child = cmd.spawn().expect("start pystrands-server");
        let stderr = child.stderr.take().expect("stderr is piped");
        let log = Arc::new(Log::default());
        let sink = Arc::clone(&log);
        // Keeps draining stderr for the whole life of the process, so the
        // pipe never fills, and keeps every line for assertions.
        thread::spawn(move || {
            for line in BufReader::new(stderr).split(b'\n') {
                let Ok(line) = line else { break };
                sink.push(String::from_utf8_lossy(&line).into_owned());
            }
        });
        let mut broker = Broker {
            child,
            ws: "0.0.0.0:0".parse().unwrap(),
            backend: "0.0.0.0:0".parse().unwrap(),
            admin: None,
            log,
            exit: None,
        };
        let line = broker.log.wait("containing 'listening websocket='", |l| {
            l.contains("listening websocket=")
        });
        broker.ws = addr_after(&line, "websocket=");
        broker.backend = addr_after(&line, "backend=");
        if line.contains("admin=") {
            broker.admin = Some(addr_after(&line, "admin="));
        }
        broker
    }

    /// [`Broker::start`] with the admin listener on a free loopback port
    /// (`--admin-port 0` turns it off, so a port is picked here: bound by
    /// the test, released, and given to the broker).
    pub fn start_with_admin(flags: &[&str]) -> Broker {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port()
            .to_string();
        let mut all = vec!["--admin-port", port.as_str()];
        all.extend_from_slice(flags);
        let broker = Broker::start(&all);
        assert!(broker.admin.is_some(), "the admin listener is not on");
        broker
    }

    /// `GET path` on the admin listener: the status and the body.
    pub fn admin_get(&self, path: &str) -> (u16, String) {
        let admin = self.admin.expect("the admin listener is on");
        let mut stream = raw_connect(admin);
        let request = format!("GET {path} HTTP/1.1\r\nHost: {admin}\r\n\r\n");
        std::io::Write::write_all(&mut stream, request.as_bytes()).unwrap();
        let reply = String::from_utf8(read_to_eof(&mut stream)).expect("a UTF-8 reply");
        let (head, body) = reply
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("not an HTTP reply: {reply:?}"));
        (status_of(head), body.to_owned())
    }

    /// The WebSocket URL of `path` (which starts with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{}", self.ws, path)
    }

    /// Every stderr line so far.
    pub fn log_lines(&self) -> Vec<String> {
        self.log.lock().clone()
    }

    /// Waits (bounded) for a log line containing every one of `parts`.
    pub fn wait_log(&self, parts: &[&str]) -> String {
        self.log.wait(&format!("containing {parts:?}"), |l| {
            parts.iter().all(|p| l.contains(p))
        })
    }

    /// Waits (bounded) for the log line saying the backend whose own
    /// address is `local` is live ("backend <addr> connected (N connected)").
    pub fn wait_backend_connected(&self, local: &str) {
        self.wait_log(&[&format!("backend {local} connected (")]);
    }

    /// Whether a log line containing every one of `parts` was written.
    pub fn has_log(&self, parts: &[&str]) -> bool {
        self.log_lines()
            .iter()
            .any(|l| parts.iter().all(|p| l.contains(p)))
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory (VmRSS of /proc/PID/status), in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("read the broker's /proc/PID/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no VmRSS in the broker's status:\n{status}"))
    }

    /// Peak resident memory since start (VmHWM of /proc/PID/status), in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("read the broker's /proc/PID/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no VmHWM in the broker's status:\n{status}"))
    }

    /// Waits (bounded by `limit`) until the broker's resident memory is at
    /// most `kib`; panics with the last reading otherwise.
    pub fn wait_rss_at_most(&self, kib: u64, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let rss = self.rss_kib();
            if rss <= kib {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the broker's RSS is {rss} KiB, still above {kib} KiB after {limit:?}"
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Open file descriptors (entries of /proc/PID/fd).
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .expect("list the broker's /proc/PID/fd")
            .count()
    }

    /// Waits (bounded) until the broker has `want` descriptors open: a
    /// closed peer's socket is released only once the broker has read its
    /// end, which can come after the last event a test waits for.
    pub fn wait_open_fds(&self, want: usize) {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let now = self.open_fds();
            if now == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the broker has {now} descriptors open, {want} expected (a leak?)"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// CPU time used so far, user plus system (/proc/PID/stat, clock ticks
    /// converted at the kernel's USER_HZ).
    pub fn cpu_time(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()))
            .expect("read the broker's /proc/PID/stat");
        // Fields after the command name, which is in parentheses and may
        // hold spaces: utime and stime are the 12th and 13th of them.
        let rest = &stat[stat.rfind(')').expect("a stat line") + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        // SAFETY: sysconf reads a constant of the system.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        Duration::from_millis(ticks * 1000 / hz)
    }

    /// Whether the process is still running (it has not exited).
    pub fn is_running(&mut self) -> bool {
        match self.child.try_wait().expect("poll the broker") {
            Some(status) => {
                self.exit = Some(status);
                false
            }
            None => true,
        }
    }

    /// Sends a signal to the broker.
    pub fn signal(&self, signal: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits pid_t");
        // SAFETY: kill(2) on our own child's pid has no memory-safety concerns.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(rc, 0, "kill({pid}, {signal}) failed");
    }

    /// Waits (bounded by `limit`) for the process to exit.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for the broker") {
                self.exit = Some(status);
                return status;
            }
            if Instant::now() >= deadline {
                panic!(
                    "the broker did not exit within {limit:?}; log:\n{}",
                    self.log_lines().join("\n")
                );
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if self.exit.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if thread::panicking() {
            eprintln!("---- broker log ----\n{}", self.log_lines().join("\n"));
        }
    }
}

fn addr_after(line: &str, key: &str) -> SocketAddr {
    let start = line
        .find(key)
        .unwrap_or_else(|| panic!("no {key} in {line:?}"))
        + key.len();
    let rest = &line[start..];
    let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
    rest[..end]
        .parse()
        .unwrap_or_else(|e| panic!("bad address after {key} in {line:?}: {e}"))
}

/// The binary with no arguments yet: stdin empty, stdout to `stdout`,
/// stderr piped, the `PYSTRAND_*` variables of the test environment
/// removed and `env` set.
fn broker_command(env: &[(&str, &str)], stdout: Stdio) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.stdin(Stdio::null())
        .stdout(stdout)
        .stderr(Stdio::piped());
    for name in BROKER_ENV {
        cmd.env_remove(name);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// The outcome of running the binary to completion (for CLI tests).
pub struct Finished {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs the binary with exactly `args` and `env` (the `PYSTRAND_*`
/// variables of the test environment removed first) and waits, bounded,
/// for it to exit.
pub fn run_to_exit(args: &[&str], env: &[(&str, &str)]) -> Finished {
    let mut cmd = broker_command(env, Stdio::piped());
    cmd.args(args);
    let child = cmd.spawn().expect("start pystrands-server");
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(TIMEOUT) {
        Ok(out) => {
            let out = out.expect("collect the output");
            Finished {
                code: out.status.code(),
                stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            }
        }
        Err(_) => {
            // SAFETY: kill(2) on the pid of the child we spawned.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            panic!("pystrands-server {args:?} did not exit within {TIMEOUT:?}");
        }
    }
}
