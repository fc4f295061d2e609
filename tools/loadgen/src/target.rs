//! The server under measurement: the broker spawned from a binary, a broker
//! already running (attached by pid and addresses), or the tool's own limit
//! server re-executed as a child. Either way the tool knows its WebSocket
//! address, its backend (or control) address, and a pid to read /proc from.
//! A spawned child is pinned if asked, its stderr is read until the
//! `listening websocket=IP:PORT backend=IP:PORT` line and then drained in a
//! thread (warnings and errors forwarded), and it is stopped on drop.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use crate::os;

/// Which kind of server answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Broker,
    Limit,
}

pub struct Target {
    pub kind: Kind,
    pub pid: Option<u32>,
    pub ws: SocketAddr,
    /// Backend port of the broker, control port of the limit server; None
    /// for an attached broker given without --backend.
    pub backend: Option<SocketAddr>,
    child: Option<Child>,
    log_tail: Arc<Mutex<VecDeque<String>>>,
}

/// Refuses anything that is not a loopback address.
pub fn loopback(addr: SocketAddr, what: &str) -> Result<SocketAddr, String> {
    if addr.ip().is_loopback() {
        Ok(addr)
    } else {
        Err(format!(
            "{what} address {addr} is not a loopback address; the load generator only talks to 127.0.0.0/8 or ::1"
        ))
    }
}

fn parse_listening(line: &str) -> Option<(String, String)> {
    let field = |name: &str| {
        let at = line.find(name)? + name.len();
        line[at..].split_whitespace().next().map(str::to_owned)
    };
    Some((field("websocket=")?, field("backend=")?))
}

impl Target {
    /// Measures a broker started by someone else.
    pub fn attach(pid: Option<u32>, ws: SocketAddr, backend: Option<SocketAddr>) -> Self {
        Target {
            kind: Kind::Broker,
            pid,
            ws,
            backend,
            child: None,
            log_tail: Default::default(),
        }
    }

    /// Spawns `cmd`, pinned to `core` if given, and waits (until `deadline`)
    /// for its `listening` line on stderr.
    pub fn spawn(
        kind: Kind,
        mut cmd: Command,
        core: Option<usize>,
        deadline: Instant,
    ) -> Result<Self, String> {
        let shown = format!("{cmd:?}");
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        os::child_of_tool(&mut cmd, core);
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {shown}: {e}"))?;
        let stderr = child.stderr.take().expect("stderr is piped");
        let log_tail: Arc<Mutex<VecDeque<String>>> = Default::default();
        let (tx, rx) = mpsc::channel();
        let tail = log_tail.clone();
        let label = match kind {
            Kind::Broker => "server",
            Kind::Limit => "limit server",
        };
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            let mut forwarded = 0;
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(t) = tx.as_ref() {
                    if let Some(addrs) = parse_listening(&line) {
                        let _ = t.send(addrs);
                        tx = None;
                    }
                }
                let loud = ["WARN", "ERROR", "panicked"]
                    .iter()
                    .any(|w| line.contains(w));
                if loud && forwarded < 50 {
                    eprintln!("[{label}] {line}");
                    forwarded += 1;
                }
                let mut t = tail.lock().unwrap();
                if t.len() == 20 {
                    t.pop_front();
                }
                t.push_back(line);
            }
        });
        let pid = child.id();
        let wait = deadline.saturating_duration_since(Instant::now());
        let mut target = Target {
            kind,
            pid: Some(pid),
            ws: "127.0.0.1:0".parse().unwrap(),
            backend: None,
            child: Some(child),
            log_tail,
        };
        let (ws, backend) = match rx.recv_timeout(wait) {
            Ok(a) => a,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                return Err(format!(
                    "timeout: {shown} printed no `listening websocket=.. backend=..` line{}",
                    target.tail()
                ))
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                std::thread::sleep(Duration::from_millis(50));
                return Err(format!(
                    "{shown} exited ({}) before listening{}",
                    target.exit_status().map_or("?".into(), |s| s.to_string()),
                    target.tail()
                ));
            }
        };
        let addr = |s: &str, what| {
            s.parse::<SocketAddr>()
                .map_err(|e| format!("cannot parse {what} address {s:?}: {e}"))
                .and_then(|a| loopback(a, what))
        };
        target.ws = addr(&ws, "websocket")?;
        target.backend = Some(addr(&backend, "backend")?);
        Ok(target)
    }

    /// The last lines the child wrote on stderr, for error messages.
    pub fn tail(&self) -> String {
        let t = self.log_tail.lock().unwrap();
        if t.is_empty() {
            String::new()
        } else {
            let lines: Vec<&str> = t.iter().map(String::as_str).collect();
            format!("; its last stderr lines:\n  {}", lines.join("\n  "))
        }
    }

    /// Exit status if the spawned child has ended.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    /// Stops a spawned child: SIGTERM, then SIGKILL after 3 s.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        // SAFETY: signalling our own child, whose pid is not yet reaped.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let until = Instant::now() + Duration::from_secs(3);
        while Instant::now() < until {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        self.stop();
    }
}
