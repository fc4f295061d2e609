//! What the load generator reads from or sets on the OS: the one monotonic
//! clock of every timestamp, CPU time and RSS of a process from /proc, the
//! open-file limit, CPU affinity, and sockets bound to a chosen source
//! address. Linux only, like the broker.

use std::fs;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::FromRawFd;

/// CLOCK_MONOTONIC in nanoseconds. System-wide, so a timestamp written by one
/// process can be compared with a reading taken in another.
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid out-pointer; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// CPU time a process has used so far, seen two ways.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuSample {
    /// utime + stime of /proc/PID/stat, in seconds (10 ms resolution).
    pub stat_s: f64,
    /// Sum of /proc/PID/task/*/schedstat run time, in seconds (ns
    /// resolution); None where the kernel does not provide it.
    pub sched_s: Option<f64>,
    /// Sum of the schedstat run-queue wait: time runnable but not running
    /// because another task had the CPU (a busy shared machine shows here).
    pub wait_s: Option<f64>,
}

impl CpuSample {
    /// CPU used between `earlier` and `self`.
    pub fn since(&self, earlier: &CpuSample) -> CpuSample {
        CpuSample {
            stat_s: self.stat_s - earlier.stat_s,
            sched_s: match (self.sched_s, earlier.sched_s) {
                (Some(a), Some(b)) => Some(a - b),
                _ => None,
            },
            wait_s: match (self.wait_s, earlier.wait_s) {
                (Some(a), Some(b)) => Some(a - b),
                _ => None,
            },
        }
    }
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// CPU time of process `pid` (all its threads).
pub fn cpu(pid: u32) -> io::Result<CpuSample> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) may hold spaces: count fields after its ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| io::Error::other("malformed /proc/PID/stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): utime is field 14, stime field 15.
    let tick = |i: usize| -> io::Result<f64> {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .map(|v| v as f64)
            .ok_or_else(|| io::Error::other("malformed /proc/PID/stat"))
    };
    let stat_s = (tick(11)? + tick(12)?) / clock_ticks();
    let sched = schedstat(&format!("/proc/{pid}/task"));
    Ok(CpuSample {
        stat_s,
        sched_s: sched.map(|s| s.0),
        wait_s: sched.map(|s| s.1),
    })
}

/// Run time and run-queue wait (seconds) summed over the tasks under
/// `tasks` (/proc/PID/task): the first two fields of each schedstat.
fn schedstat(tasks: &str) -> Option<(f64, f64)> {
    let (mut run, mut wait) = (0u64, 0u64);
    for task in fs::read_dir(tasks).ok()? {
        let path = task.ok()?.path().join("schedstat");
        // A thread that ended between read_dir and here just has no file.
        if let Ok(s) = fs::read_to_string(path) {
            let mut f = s.split_whitespace();
            run += f.next()?.parse::<u64>().ok()?;
            wait += f.next()?.parse::<u64>().ok()?;
        }
    }
    Some((run as f64 / 1e9, wait as f64 / 1e9))
}

/// Seconds this process (all threads) has spent runnable but waiting for
/// a CPU; None where the kernel has no schedstat.
pub fn self_wait_s() -> Option<f64> {
    schedstat("/proc/self/task").map(|s| s.1)
}

/// Time one CPU spent, from its line of /proc/stat (clock ticks, so 10 ms
/// resolution), in seconds.
#[derive(Clone, Copy, Debug, Default)]
pub struct CoreTimes {
    /// Running anything: user, nice, system, irq and softirq.
    pub busy_s: f64,
    /// The part of it spent on tasks at a positive nice level (a fuzzer at
    /// nice 19, say): never one of ours.
    pub nice_s: f64,
    /// Taken by the hypervisor for other guests.
    pub steal_s: f64,
}

impl CoreTimes {
    pub fn since(&self, earlier: &CoreTimes) -> CoreTimes {
        CoreTimes {
            busy_s: self.busy_s - earlier.busy_s,
            nice_s: self.nice_s - earlier.nice_s,
            steal_s: self.steal_s - earlier.steal_s,
        }
    }
}

/// What CPU `core` has done since boot (/proc/stat `cpuN` line).
pub fn core_times(core: usize) -> Option<CoreTimes> {
    let stat = fs::read_to_string("/proc/stat").ok()?;
    let name = format!("cpu{core}");
    let line = stat
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name.as_str()))?;
    let f: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse::<f64>().map(|t| t / clock_ticks()))
        .collect::<Result<_, _>>()
        .ok()?;
    // user nice system idle iowait irq softirq steal ...
    let at = |i: usize| f.get(i).copied().unwrap_or(0.0);
    Some(CoreTimes {
        busy_s: at(0) + at(1) + at(2) + at(5) + at(6),
        nice_s: at(1),
        steal_s: at(7),
    })
}

/// write(2) and writev(2) calls process `pid` has made (syscw of
/// /proc/PID/io; recv and send, which std's sockets read with, are not
/// counted there).
pub fn write_calls(pid: u32) -> Option<u64> {
    let io = fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    io.lines()
        .find_map(|l| l.strip_prefix("syscw:"))
        .and_then(|v| v.trim().parse().ok())
}

/// The load averages over 1, 5 and 15 minutes (/proc/loadavg).
pub fn loadavg() -> Option<[f64; 3]> {
    let s = fs::read_to_string("/proc/loadavg").ok()?;
    let mut f = s.split_whitespace().map(|v| v.parse::<f64>().ok());
    Some([f.next()??, f.next()??, f.next()??])
}

/// Resident set size of `pid` in KiB (VmRSS of /proc/PID/status).
pub fn rss_kb(pid: u32) -> io::Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| io::Error::other("no VmRSS in /proc/PID/status"))
}

/// CPU seconds (user + system) this process has used, all threads.
pub fn self_cpu_s() -> f64 {
    // SAFETY: ru is a valid out-pointer.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Raises the soft open-file limit to the hard one; returns the new soft limit.
pub fn raise_nofile_limit() -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: lim is a valid in/out pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(lim.rlim_cur)
}

/// Makes the process `cmd` starts die with the tool (even when the tool is
/// SIGKILLed) and, with `core`, run pinned to that CPU.
pub fn child_of_tool(cmd: &mut std::process::Command, core: Option<usize>) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the hook only makes async-signal-safe syscalls.
    unsafe {
        cmd.pre_exec(move || {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            match core {
                Some(core) => pin_to_core(core),
                None => Ok(()),
            }
        });
    }
}

/// Pins the calling thread (or, in a pre_exec hook, the child) to one CPU,
/// as `taskset -c core` would.
pub fn pin_to_core(core: usize) -> io::Result<()> {
    // SAFETY: set is plain data; CPU_ZERO/CPU_SET only touch it; the
    // affinity call reads it. Async-signal-safe, so usable in pre_exec.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_ZERO(&mut set);
        libc::CPU_SET(core, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Pins every thread of this process to one CPU (affinity is per thread,
/// and the server's stderr reader runs in its own).
pub fn pin_self_to_core(core: usize) -> io::Result<()> {
    for task in fs::read_dir("/proc/self/task")? {
        let tid: libc::pid_t = task?
            .file_name()
            .to_str()
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| io::Error::other("bad /proc/self/task entry"))?;
        // SAFETY: as in pin_to_core, for thread `tid` of this process.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_ZERO(&mut set);
            libc::CPU_SET(core, &mut set);
            if libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
    }
    Ok(())
}

/// Starts a non-blocking connect to `dest` from source address `src`
/// (port chosen by the kernel at connect time, so each source address has
/// its own ephemeral port range for this destination).
pub fn connect_from(src: Ipv4Addr, dest: SocketAddr) -> io::Result<mio::net::TcpStream> {
    let SocketAddr::V4(dest) = dest else {
        return Err(io::Error::other("source binding needs an IPv4 destination"));
    };
    let sockaddr = |a: SocketAddrV4| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*a.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: plain socket syscalls on a descriptor this function owns; the
    // descriptor is closed on every error path and handed to TcpStream
    // (which owns it from then on) on success.
    unsafe {
        let fd = libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        );
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let fail = |fd| {
            let e = io::Error::last_os_error();
            libc::close(fd);
            Err(e)
        };
        let one: libc::c_int = 1;
        if libc::setsockopt(
            fd,
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            &one as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        ) != 0
        {
            return fail(fd);
        }
        let s = sockaddr(SocketAddrV4::new(src, 0));
        if libc::bind(fd, &s as *const _ as *const libc::sockaddr, len) != 0 {
            return fail(fd);
        }
        let d = sockaddr(dest);
        if libc::connect(fd, &d as *const _ as *const libc::sockaddr, len) != 0
            && io::Error::last_os_error().raw_os_error() != Some(libc::EINPROGRESS)
        {
            return fail(fd);
        }
        Ok(mio::net::TcpStream::from_std(
            std::net::TcpStream::from_raw_fd(fd),
        ))
    }
}
