//! A broker whose open-file limit is low (soft and hard, so it cannot raise
//! it): it logs the limit and lowers --max-connections at start to the
//! clients' share, keeping descriptors for backends. Clients past the cap
//! are refused at accept (503) without running out of descriptors, and a
//! backend can still connect. When descriptors do run out (a flood of
//! backend connections), it neither crashes nor spins (they wait in the
//! listen backlog), keeps serving its clients, and once connections close
//! it serves new ones again and its descriptors return to their baseline.

mod common;

use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// The broker's open-file limit, soft and hard.
const NOFILE: libc::rlim_t = 128;
/// Connections opened at once: well past what NOFILE leaves.
const FLOOD: usize = 200;
/// CPU the broker may use in a second while connections wait for
/// descriptors: it retries accepting every 100 ms, which costs next to
/// nothing; an accept loop spinning on EMFILE would use the whole second.
const IDLE_CPU_BOUND: Duration = Duration::from_millis(200);

fn start_with_nofile(flags: &[&str]) -> Broker {
    start_with_limits(flags, NOFILE, NOFILE)
}

/// Starts the broker with the open-file limit at `soft` / `hard`.
fn start_with_limits(flags: &[&str], soft: libc::rlim_t, hard: libc::rlim_t) -> Broker {
    Broker::start_with_command(flags, &[], move |cmd| {
        // SAFETY: the closure runs in the forked child before exec and only
        // calls setrlimit, which is async-signal-safe.
        unsafe {
            cmd.pre_exec(move || {
                let limit = libc::rlimit {
                    rlim_cur: soft,
                    rlim_max: hard,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    })
}

/// [`FLOOD`] TCP connections to `addr` that send nothing.
fn connect_flood(addr: std::net::SocketAddr) -> Vec<TcpStream> {
    (0..FLOOD)
        .map(|i| {
            TcpStream::connect(addr).unwrap_or_else(|e| panic!("connection {i} of the flood: {e}"))
        })
        .collect()
}

/// The value --max-connections was lowered to, from the start-up warning
/// (which names the open-file limit `nofile`).
fn lowered_cap(broker: &Broker, nofile: u64) -> u64 {
    let line = broker.wait_log(&[
        "WARN",
        "--max-connections 100000 lowered to ",
        &format!("the open-file limit is {nofile}"),
    ]);
    let after = line.split("lowered to ").nth(1).unwrap();
    after[..after.find(':').unwrap()].parse().unwrap()
}

#[test]
fn out_of_descriptors_the_broker_waits_without_spinning_and_recovers() {
    let mut broker = start_with_nofile(&[]);
    broker.wait_log(&["open-file limit: soft 128 raised to 128"]);
    let cap = lowered_cap(&broker, 128);
    // Most descriptors are the clients'; an eighth (here 16) and the ones
    // open at start stay for backends and listeners.
    assert!((96..=112).contains(&cap), "lowered to {cap}");
    let mut backend = Backend::connect(&broker);
    let mut a = join(&broker, &mut backend, "a", "r");
    let baseline = broker.open_fds();

    // Backends are not capped like clients: enough of them exhaust the
    // descriptors.
    let flood = connect_flood(broker.backend);
    broker.wait_log(&["WARN", "out of file descriptors"]);
    assert!(broker.is_running(), "the broker died out of descriptors");

    // Not spinning while connections wait in the backlog.
    let before = broker.cpu_time();
    thread::sleep(Duration::from_secs(1));
    let used = broker.cpu_time().saturating_sub(before);
    assert!(
        used < IDLE_CPU_BOUND,
        "the broker used {used:?} of CPU in a second while out of descriptors (spinning?)"
    );

    // Still serving the client it has, both ways.
    send_text(&mut a, "out of fds");
    let event = backend.expect("new_message");
    assert_eq!(event["params"]["message"], "out of fds");
    backend.send_to_room("r", "still here");
    assert_eq!(recv_text(&mut a), "still here");

    // The flood goes away: descriptors come back, new clients are served.
    drop(flood);
    broker.wait_open_fds(baseline);
    let mut b = join_when_room(&broker, &mut backend, "b");
    send_text(&mut b, "served again");
    let event = backend.expect("new_message");
    assert_eq!(event["params"]["message"], "served again");
    b.close(None).unwrap();
    let _ = next_message(&mut b);
    backend.expect("disconnected");
    broker.wait_open_fds(baseline);
    assert!(broker.is_running());
}

/// --max-connections counts every client connection from its accept, even
/// one that never sends a byte: past the cap, connections are refused at
/// once with 503 and the descriptors do not run out, so a backend can
/// still connect and the clients already in are served.
#[test]
fn clients_past_the_cap_are_refused_at_accept_and_backends_still_connect() {
    // A long --connect-timeout: the flood's connections send nothing and
    // must not be closed with 408 while the test looks.
    let broker = start_with_nofile(&["--connect-timeout", "30"]);
    let cap = lowered_cap(&broker, 128) as usize;
    let mut backend = Backend::connect(&broker);
    let mut a = join(&broker, &mut backend, "a", "r");
    let flood = connect_flood(broker.ws);
    // Everything past the cap is answered 503 and closed at once.
    let mut refused = 0;
    for stream in flood.iter().skip(cap) {
        let mut stream = stream.try_clone().unwrap();
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        let reply = String::from_utf8_lossy(&read_to_eof(&mut stream)).into_owned();
        assert_eq!(status_of(&reply), 503, "{reply}");
        assert!(reply.contains("--max-connections"), "{reply}");
        refused += 1;
    }
    assert_eq!(refused, FLOOD - cap);
    assert!(!broker.has_log(&["out of file descriptors"]));
    // A backend connects, and takes part, while clients fill the cap.
    let mut second = Backend::connect(&broker);
    second.send_to_room("r", "from the second backend");
    assert_eq!(recv_text(&mut a), "from the second backend");
    drop(flood);
    let _ = &mut backend;
}

/// Joins `id` into room "r". The flood's last connections may still sit in
/// the listen backlog, ahead of this one, and count against the lowered
/// --max-connections until the broker reads their end: a 503 then is
/// retried, within [`TIMEOUT`].
fn join_when_room(broker: &Broker, backend: &mut Backend, id: &str) -> Ws {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let upgrade = start_upgrade(broker, "/ws/r", &[]);
        if let Some(request) = backend.recv_within(Duration::from_secs(1)) {
            assert_eq!(request["action"], "connection_request", "got {request}");
            return upgrade
                .accept(backend, &request, json!({"client_id": id, "room_id": "r"}))
                .ws;
        }
        assert_eq!(upgrade.refused_status(), 503);
        assert!(
            Instant::now() < deadline,
            "new upgrades still refused {TIMEOUT:?} after the flood closed"
        );
    }
}

/// The warning is for the operator, once per shortage: the broker retries
/// accepting every 100 ms, and a line per retry would be 36,000 warnings an
/// hour from a broker that is merely full.
#[test]
fn running_out_of_descriptors_is_warned_once_not_at_every_retry() {
    let broker = start_with_nofile(&[]);
    let _flood = connect_flood(broker.backend);
    broker.wait_log(&["WARN", "out of file descriptors"]);
    // Ten retries' worth.
    thread::sleep(Duration::from_secs(1));
    let warnings = broker
        .log_lines()
        .iter()
        .filter(|l| l.contains("out of file descriptors"))
        .count();
    assert!(
        warnings <= 2,
        "{warnings} 'out of file descriptors' warnings in about a second of one shortage"
    );
}

/// At start the soft limit is raised to the hard one (many systems start
/// processes at 1,024), both are logged, and --max-connections is lowered
/// to what the raised limit allows.
#[test]
fn the_soft_open_file_limit_is_raised_to_the_hard_one() {
    let broker = start_with_limits(&[], 100, 200);
    broker.wait_log(&["INFO", "open-file limit: soft 100 raised to 200"]);
    let cap = lowered_cap(&broker, 200);
    assert!((150..=175).contains(&cap), "lowered to {cap}");
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", broker.pid())).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a Max open files line");
    let values: Vec<&str> = line.split_whitespace().skip(3).take(2).collect();
    assert_eq!(values, ["200", "200"], "{line}");
}

/// Under `ulimit -n 64` the broker keeps a reserve of descriptors for
/// backends and still serves dozens of clients (with a fixed reserve of 64
/// it served one).
#[test]
fn a_low_open_file_limit_still_serves_dozens_of_clients() {
    let broker = start_with_limits(&[], 64, 64);
    let cap = lowered_cap(&broker, 64);
    assert!(cap >= 40, "lowered to {cap}");
    let mut backend = Backend::connect(&broker);
    let mut clients: Vec<Ws> = (0..40)
        .map(|i| join(&broker, &mut backend, &format!("c{i}"), "r"))
        .collect();
    backend.send_to_room("r", "to all 40");
    for ws in &mut clients {
        assert_eq!(recv_text(ws), "to all 40");
    }
    // A second backend still finds a descriptor.
    let mut second = Backend::connect(&broker);
    second.send_to_room("r", "from the second");
    assert_eq!(recv_text(&mut clients[0]), "from the second");
}
