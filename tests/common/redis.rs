//! A real `redis-server` for the cluster tests: its own free loopback port
//! and temporary directory, no persistence, killed when dropped. Tests
//! never use a shared or default Redis.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pystrands::cluster::resp::{self, Reply};

use super::{Broker, TIMEOUT};

/// A running redis-server.
pub struct Redis {
    child: Option<Child>,
    /// Where it listens.
    pub addr: SocketAddr,
    dir: std::path::PathBuf,
    extra: Vec<String>,
}

impl Redis {
    /// Starts redis-server on a free loopback port (panics with how to
    /// install it when it is not there).
    pub fn start() -> Redis {
        Redis::start_with(&[])
    }

    /// [`Redis::start`] with extra configuration arguments
    /// (`["--client-output-buffer-limit", "pubsub 1mb 256kb 10"]`).
    pub fn start_with(extra: &[&str]) -> Redis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let dir =
            std::env::temp_dir().join(format!("pystrands-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut redis = Redis {
            child: None,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            dir,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        redis.launch();
        redis
    }

    fn launch(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &self.addr.port().to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self.dir.to_str().unwrap(),
            ])
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server (apt-get install redis-server)");
        self.child = Some(child);
        let deadline = Instant::now() + TIMEOUT;
        while TcpStream::connect(self.addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not listen on {}",
                self.addr
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The URL brokers are given.
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Kills the server (SIGKILL) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills it and starts it again on the same port, empty.
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }

    /// Sends a signal (SIGSTOP, SIGCONT) to the server.
    pub fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill on the pid of a child we own.
        unsafe {
            libc::kill(self.pid() as libc::pid_t, signal);
        }
    }

    /// Runs one command and returns its reply as text lines: integers and
    /// strings as they are, arrays flattened.
    pub fn command(&self, args: &[&str]) -> Vec<String> {
        let mut stream = TcpStream::connect(self.addr).expect("connect to redis");
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        let mut out = Vec::new();
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        resp::push_command(&mut out, &args);
        stream.write_all(&out).unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            if let Some((reply, _)) = resp::next_reply(&buf, 0).expect("RESP2 from redis") {
                let mut lines = Vec::new();
                flatten(&buf, &reply, &mut lines);
                return lines;
            }
            let n = stream.read(&mut chunk).expect("a reply from redis");
            assert!(n > 0, "redis closed the connection");
            buf.extend_from_slice(&chunk[..n]);
        }
    }
}

impl Redis {
    /// A broker of the cluster on this Redis, named `node`, with the
    /// admin listener on and `extra` flags; returns once both of its links
    /// to Redis are up.
    pub fn broker(&self, node: &str, extra: &[&str]) -> Broker {
        let url = self.url();
        let mut flags = vec!["--redis-url", url.as_str(), "--node-id", node];
        flags.extend_from_slice(extra);
        let broker = Broker::start_with_admin(&flags);
        broker.wait_log(&["cluster: subscriber link", "up"]);
        broker.wait_log(&["cluster: command link", "up"]);
        broker
    }

    /// Waits (bounded) until PUBSUB NUMSUB says `channel` has `want`
    /// subscribers.
    pub fn wait_subscribers(&self, channel: &str, want: usize) {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let got = self.command(&["PUBSUB", "NUMSUB", channel]);
            if got.get(1).and_then(|n| n.parse::<usize>().ok()) == Some(want) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{channel}: {got:?} subscribers, want {want}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn flatten(buf: &[u8], reply: &Reply, lines: &mut Vec<String>) {
    match reply {
        Reply::Integer(i) => lines.push(i.to_string()),
        Reply::Null => lines.push("(nil)".into()),
        Reply::Array(items) => items.iter().for_each(|r| flatten(buf, r, lines)),
        other => lines.push(other.text(buf).unwrap_or("").to_owned()),
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        // A stopped server cannot die of SIGKILL until continued.
        if self.child.is_some() {
            self.signal(libc::SIGCONT);
        }
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
