//! The Redis server of a cluster run: a `redis-server` of its own on a free
//! loopback port, with its own temporary directory, no persistence
//! (`--save '' --appendonly no`), pinned like the brokers, stopped by its
//! pid at the end (and by the kernel if the tool dies first); and the few
//! queries the run makes (PUBSUB NUMSUB / CHANNELS) on one plain TCP
//! connection, in RESP2 through the `redis-protocol` crate the broker uses.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use redis_protocol::resp2::decode::decode;
use redis_protocol::resp2::encode::encode;
use redis_protocol::resp2::types::{OwnedFrame, Resp2Frame};

use crate::os;

pub struct Redis {
    child: Option<Child>,
    pub pid: u32,
    pub addr: SocketAddr,
    dir: PathBuf,
    conn: Option<TcpStream>,
}

/// A free loopback port (free when asked: redis-server binds it just after).
fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("cannot find a free loopback port: {e}"))
}

impl Redis {
    /// Starts `bin` on a free loopback port, pinned to `core` if given, and
    /// waits (until `deadline`) until it answers PING. A port taken between
    /// our check and its bind is retried with another, twice.
    pub fn start(bin: &Path, core: Option<usize>, deadline: Instant) -> Result<Redis, String> {
        let mut last = String::new();
        for _ in 0..3 {
            let port = free_port()?;
            let dir =
                std::env::temp_dir().join(format!("loadgen-redis-{}-{port}", std::process::id()));
            std::fs::create_dir_all(&dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            let log = dir.join("redis.log");
            let mut cmd = Command::new(bin);
            cmd.args(["--bind", "127.0.0.1", "--port", &port.to_string()])
                .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
                .arg("--dir")
                .arg(&dir)
                .arg("--logfile")
                .arg(&log)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            os::child_of_tool(&mut cmd, core);
            let child = match cmd.spawn() {
                Ok(c) => c,
                Err(e) => {
                    let _ = std::fs::remove_dir_all(&dir);
                    return Err(format!(
                        "cannot start {} (apt-get install redis-server, or --redis-bin PATH): {e}",
                        bin.display()
                    ));
                }
            };
            let mut redis = Redis {
                pid: child.id(),
                child: Some(child),
                addr: SocketAddr::from(([127, 0, 0, 1], port)),
                dir,
                conn: None,
            };
            match redis.wait_ready(deadline) {
                Ok(()) => return Ok(redis),
                Err(e) if e.starts_with("timeout") => return Err(e),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn wait_ready(&mut self, deadline: Instant) -> Result<(), String> {
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                return Err(format!(
                    "redis-server exited ({status}) before listening on {}{}",
                    self.addr,
                    self.log_tail()
                ));
            }
            if let Ok(OwnedFrame::SimpleString(s)) = self.query(&["PING"]) {
                if s == b"PONG" {
                    return Ok(());
                }
            }
            self.conn = None;
            if Instant::now() >= deadline {
                return Err(format!(
                    "timeout: redis-server did not answer on {}{}",
                    self.addr,
                    self.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The `--redis-url` of the brokers.
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// Runs one command and returns its reply (blocking, 5 s at most).
    pub fn query(&mut self, args: &[&str]) -> Result<OwnedFrame, String> {
        let fail = |e: std::io::Error| format!("Redis at {}: {e}", self.addr);
        if self.conn.is_none() {
            let s = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1)).map_err(fail)?;
            s.set_read_timeout(Some(Duration::from_secs(5)))
                .map_err(fail)?;
            s.set_nodelay(true).map_err(fail)?;
            self.conn = Some(s);
        }
        let frame = OwnedFrame::Array(
            args.iter()
                .map(|a| OwnedFrame::BulkString(a.as_bytes().to_vec()))
                .collect(),
        );
        let mut out = vec![0; frame.encode_len(false)];
        let n = encode(&mut out, &frame, false).map_err(|e| e.to_string())?;
        let conn = self.conn.as_mut().expect("connected above");
        let mut io = || -> std::io::Result<Result<OwnedFrame, String>> {
            conn.write_all(&out[..n])?;
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            loop {
                match decode(&buf) {
                    Ok(Some((reply, _))) => return Ok(Ok(reply)),
                    Ok(None) => {}
                    Err(e) => return Ok(Err(format!("not RESP2: {e}"))),
                }
                let got = conn.read(&mut chunk)?;
                if got == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                buf.extend_from_slice(&chunk[..got]);
            }
        };
        let reply = io().map_err(|e| format!("Redis at {}: {e}", self.addr));
        if !matches!(reply, Ok(Ok(_))) {
            self.conn = None;
        }
        match reply?? {
            OwnedFrame::Error(e) => Err(format!("Redis refused {args:?}: {e}")),
            reply => Ok(reply),
        }
    }

    /// PUBSUB NUMSUB: subscribers of each channel, in order.
    pub fn numsub(&mut self, channels: &[String]) -> Result<Vec<i64>, String> {
        let mut args = vec!["PUBSUB", "NUMSUB"];
        args.extend(channels.iter().map(String::as_str));
        let OwnedFrame::Array(items) = self.query(&args)? else {
            return Err("PUBSUB NUMSUB: not an array".into());
        };
        let counts: Vec<i64> = items
            .chunks(2)
            .map(|pair| match pair {
                [_, OwnedFrame::Integer(n)] => Ok(*n),
                _ => Err("PUBSUB NUMSUB: not channel, count pairs".to_owned()),
            })
            .collect::<Result<_, _>>()?;
        if counts.len() != channels.len() {
            return Err("PUBSUB NUMSUB: a count missing".into());
        }
        Ok(counts)
    }

    /// PUBSUB CHANNELS: the channels matching `pattern` with a subscriber.
    pub fn channels(&mut self, pattern: &str) -> Result<Vec<String>, String> {
        let OwnedFrame::Array(items) = self.query(&["PUBSUB", "CHANNELS", pattern])? else {
            return Err("PUBSUB CHANNELS: not an array".into());
        };
        Ok(items.iter().filter_map(|f| f.to_string()).collect())
    }

    /// Whether the server has ended, and how.
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    /// The last lines of its log, for error messages.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        if lines.is_empty() {
            return String::new();
        }
        let tail = &lines[lines.len().saturating_sub(5)..];
        format!("; its last log lines:\n  {}", tail.join("\n  "))
    }

    /// Stops the server by its pid (SIGTERM, SIGKILL after 3 s) and
    /// removes its directory.
    pub fn stop(&mut self) {
        self.conn = None;
        if let Some(mut child) = self.child.take() {
            if !matches!(child.try_wait(), Ok(Some(_))) {
                // SAFETY: signalling our own child, whose pid is not yet reaped.
                unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
                let until = Instant::now() + Duration::from_secs(3);
                while Instant::now() < until && !matches!(child.try_wait(), Ok(Some(_))) {
                    std::thread::sleep(Duration::from_millis(10));
                }
                if !matches!(child.try_wait(), Ok(Some(_))) {
                    let _ = child.kill();
                    let _ = child.wait();
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}
