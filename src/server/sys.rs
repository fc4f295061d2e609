//! The process's resources: descriptor limits (every connection is a file
//! descriptor), and giving memory back to the system after a burst.

use std::io;
use std::time::{Duration, Instant};

use log::warn;

/// Most descriptors kept back for backends beside the ones open at start.
const BACKEND_RESERVE_MAX: u64 = 64;

/// Raises the open-file soft limit to the hard limit (every connection is
/// a descriptor, and many systems start processes with a soft limit of
/// 1024). Returns the limits before and after.
pub fn raise_fd_limit() -> io::Result<(libc::rlim_t, libc::rlim_t)> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass and nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let before = limit.rlim_cur;
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: setrlimit only reads the struct we pass.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok((before, limit.rlim_cur))
}

/// The open-file soft limit, if it can be read.
fn fd_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass and nothing else.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0;
    (ok && limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur)
}

/// Descriptors this process has open now (listeners, the poller, the
/// signal pipe, standard streams), if /proc says.
fn open_fds() -> Option<u64> {
    std::fs::read_dir("/proc/self/fd")
        .ok()
        .map(|dir| dir.count() as u64)
}

/// How many of `limit` descriptors clients may take: the ones open now and
/// a reserve for backends (an eighth of the limit, between 4 and 64) stay
/// out, so a backend can connect while clients exhaust the rest.
pub(super) fn client_share(limit: u64, open_now: u64) -> u64 {
    let reserve = (limit / 8).clamp(4, BACKEND_RESERVE_MAX);
    limit.saturating_sub(open_now + reserve).max(1)
}

/// `--max-connections`, lowered (with a warning) to the clients' share of
/// the open-file limit.
pub(super) fn connection_cap(max_connections: usize) -> usize {
    let Some(fds) = fd_limit() else {
        return max_connections;
    };
    let cap = client_share(fds, open_fds().unwrap_or(16));
    if cap < max_connections as u64 {
        warn!(
            "--max-connections {max_connections} lowered to {cap}: the open-file limit is {fds}, \
             with descriptors kept for the listeners and backends"
        );
        cap as usize
    } else {
        max_connections
    }
}

/// Freed memory worth asking the allocator to give back.
const GIVE_BACK_AFTER: usize = 1 << 20;
/// Most often it is asked.
const GIVE_BACK_EVERY: Duration = Duration::from_secs(1);

/// Returns freed memory to the system. glibc's allocator keeps memory it
/// was given back in its arenas, so a burst (a client that queued
/// megabytes, thousands of closed connections) would stay resident after
/// it passed. After connections closed, or once a megabyte of buffers was
/// freed, the broker asks it, at most once a second, to return what it
/// holds unused (`malloc_trim`: it walks the allocator's free lists, well
/// under a millisecond for a heap of tens of megabytes).
#[derive(Debug, Default)]
pub(super) struct MemoryReturn {
    freed: usize,
    closed: bool,
    last: Option<Instant>,
}

impl MemoryReturn {
    /// `bytes` of buffers were freed with a connection that closed.
    pub fn freed(&mut self, bytes: usize) {
        self.freed += bytes;
        self.closed = true;
    }

    /// `bytes` of buffers were freed, the connection open.
    pub fn discarded(&mut self, bytes: usize) {
        self.freed += bytes;
    }

    /// At the end of a turn: gives memory back if there is some to give.
    pub fn give_back(&mut self, now: Instant) {
        let due = self.closed || self.freed >= GIVE_BACK_AFTER;
        if !due
            || self
                .last
                .is_some_and(|at| now.duration_since(at) < GIVE_BACK_EVERY)
        {
            return;
        }
        self.freed = 0;
        self.closed = false;
        self.last = Some(now);
        trim();
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_get_most_descriptors_and_backends_keep_some() {
        assert_eq!(client_share(64, 10), 64 - 10 - 8);
        assert_eq!(client_share(20_000, 10), 20_000 - 10 - 64);
        assert_eq!(client_share(16, 10), 2);
        assert_eq!(client_share(8, 10), 1);
    }
}
