//! The process's descriptor limits: every connection is a file descriptor.

use std::io;

use log::warn;

/// Descriptors kept back from `--max-connections` for the listeners,
/// backends and logging.
const RESERVED_FDS: u64 = 64;

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

/// `--max-connections`, lowered (with a warning) to what the open-file
/// limit allows after the reserve.
pub(super) fn connection_cap(max_connections: usize) -> usize {
    match fd_limit() {
        Some(fds) if fds.saturating_sub(RESERVED_FDS) < max_connections as u64 => {
            let cap = fds.saturating_sub(RESERVED_FDS).max(1) as usize;
            warn!("--max-connections {max_connections} lowered to {cap}: the open-file limit is {fds}");
            cap
        }
        _ => max_connections,
    }
}
