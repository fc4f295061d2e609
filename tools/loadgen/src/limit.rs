//! The limit server: the simplest server that can serve each scenario, run
//! as a separate process (`loadgen __limit-server --mode M`) so it can be
//! pinned and measured through /proc exactly like the broker. Its cost is
//! the machine's floor for the same traffic.
//!
//! - every mode: accept, read the upgrade head, answer a fixed 101 (only the
//!   accept key filled in), keep the socket.
//! - `fanout`: the tool writes one control line per message on the control
//!   port (`ROOM\tPAYLOAD\n`, ROOM a number from the client's path
//!   `/ws/ROOM/...` or `*` for everyone). Each line becomes one frame,
//!   encoded once into the room's batch for the turn; at the end of the
//!   turn each room's batch gets one iovec array, built once, and every
//!   member that is caught up gets one vectored write of it; only what a
//!   socket did not take is queued (a reference to the batch and a
//!   position). Nothing is done per delivery but the write itself. No
//!   JSON, no ids, no hashing: rooms are a Vec indexed by number.
//! - `echo`: every client frame is written straight back, unmasked, to its
//!   sender: one read and one write per round trip.
//! - `echo-hop`: the same round trip through a backend, as the broker
//!   makes it but without JSON: each client frame's payload goes to the
//!   control connection as a record (connection index and length, 4 bytes
//!   each, little-endian, then the payload), all of a turn's records in
//!   one write; the tool sends the bytes back as they came, and each record
//!   read becomes a frame to its connection. The floor of an echo with a
//!   backend hop.
//! - `accept`: nothing after the 101.
//!
//! It exits when the control connection closes, or after --timeout.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Read, Write};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};

use crate::os;
use crate::ws;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Mode {
    Fanout,
    Echo,
    EchoHop,
    Accept,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Fanout => "fanout",
            Mode::Echo => "echo",
            Mode::EchoHop => "echo-hop",
            Mode::Accept => "accept",
        }
    }
}

const WS_LISTENER: Token = Token(usize::MAX - 1);
const CTRL_LISTENER: Token = Token(usize::MAX - 2);
const CTRL: Token = Token(usize::MAX - 3);
const MAX_IOV: usize = 1024;

/// A room's frames of one turn, shared by its members.
type Batch = Rc<[Rc<[u8]>]>;

struct Conn {
    stream: TcpStream,
    upgraded: bool,
    /// Upgrade head, or a partial inbound frame (echo).
    inbuf: Vec<u8>,
    /// Batches not yet fully written (fanout): the batch, the frame and the
    /// byte of it where the socket stopped.
    out: VecDeque<(Batch, usize, usize)>,
    /// Bytes not yet written (101 reply, echoed frames).
    raw: Vec<u8>,
    writable: bool,
    queued: bool,
}

struct Server {
    mode: Mode,
    conns: Vec<Option<Conn>>,
    rooms: Vec<Vec<usize>>,
    everyone: Vec<usize>,
    /// This turn's frames per room (index = room), and for everyone.
    turn_rooms: Vec<Vec<Rc<[u8]>>>,
    turn_everyone: Vec<Rc<[u8]>>,
    dirty: Vec<usize>,
    scratch: Vec<u8>,
    /// echo-hop: this turn's records for the control connection.
    hop_out: Vec<u8>,
}

/// Entry point of the hidden subcommand; returns the exit code.
pub fn main(args: &[String]) -> i32 {
    let mut mode = None;
    let mut timeout = Duration::from_secs(60);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match (a.as_str(), it.next().map(String::as_str)) {
            ("--mode", Some("fanout")) => mode = Some(Mode::Fanout),
            ("--mode", Some("echo")) => mode = Some(Mode::Echo),
            ("--mode", Some("echo-hop")) => mode = Some(Mode::EchoHop),
            ("--mode", Some("accept")) => mode = Some(Mode::Accept),
            ("--timeout", Some(t)) => match t.parse::<f64>() {
                Ok(s) if s > 0.0 => timeout = Duration::from_secs_f64(s),
                _ => return usage(),
            },
            _ => return usage(),
        }
    }
    let Some(mode) = mode else { return usage() };
    match run(mode, timeout) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("loadgen limit server: {e}");
            1
        }
    }
}

fn usage() -> i32 {
    eprintln!("usage: loadgen __limit-server --mode fanout|echo|echo-hop|accept [--timeout SECS]");
    3
}

fn run(mode: Mode, timeout: Duration) -> io::Result<()> {
    let deadline = Instant::now() + timeout;
    os::raise_nofile_limit()?;
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let mut ws_listener = TcpListener::bind(any)?;
    let mut ctrl_listener = TcpListener::bind(any)?;
    let mut poll = Poll::new()?;
    poll.registry()
        .register(&mut ws_listener, WS_LISTENER, Interest::READABLE)?;
    poll.registry()
        .register(&mut ctrl_listener, CTRL_LISTENER, Interest::READABLE)?;
    eprintln!(
        "loadgen limit server mode={} listening websocket={} backend={}",
        mode.name(),
        ws_listener.local_addr()?,
        ctrl_listener.local_addr()?
    );
    let mut server = Server {
        mode,
        conns: Vec::new(),
        rooms: Vec::new(),
        everyone: Vec::new(),
        turn_rooms: Vec::new(),
        turn_everyone: Vec::new(),
        dirty: Vec::new(),
        scratch: vec![0; 256 * 1024],
        hop_out: Vec::new(),
    };
    let mut ctrl: Option<(TcpStream, Vec<u8>)> = None;
    let mut events = Events::with_capacity(1024);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::other("timeout"));
        }
        match poll.poll(&mut events, Some(left)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        for ev in events.iter() {
            match ev.token() {
                WS_LISTENER => server.accept(&ws_listener, &poll)?,
                CTRL_LISTENER => {
                    if let Ok((mut s, _)) = ctrl_listener.accept() {
                        s.set_nodelay(true)?;
                        poll.registry().register(
                            &mut s,
                            CTRL,
                            Interest::READABLE | Interest::WRITABLE,
                        )?;
                        ctrl = Some((s, Vec::new()));
                    }
                }
                CTRL => {
                    if let Some((s, buf)) = ctrl.as_mut() {
                        if ev.is_readable() && !server.control(s, buf) {
                            return Ok(());
                        }
                    }
                }
                Token(i) => {
                    if ev.is_writable() {
                        if let Some(Some(c)) = server.conns.get_mut(i) {
                            c.writable = true;
                            if !c.queued && (!c.out.is_empty() || !c.raw.is_empty()) {
                                c.queued = true;
                                server.dirty.push(i);
                            }
                        }
                    }
                    if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                        server.readable(i);
                    }
                }
            }
        }
        server.write_batches();
        if let Some((s, _)) = ctrl.as_mut() {
            if !server.flush_hop(s) {
                return Ok(());
            }
        }
        server.flush_dirty();
    }
}

impl Server {
    fn accept(&mut self, listener: &TcpListener, poll: &Poll) -> io::Result<()> {
        loop {
            match listener.accept() {
                Ok((mut stream, _)) => {
                    let i = self.conns.len();
                    stream.set_nodelay(true)?;
                    poll.registry().register(
                        &mut stream,
                        Token(i),
                        Interest::READABLE | Interest::WRITABLE,
                    )?;
                    self.conns.push(Some(Conn {
                        stream,
                        upgraded: false,
                        inbuf: Vec::new(),
                        out: VecDeque::new(),
                        raw: Vec::new(),
                        writable: true,
                        queued: false,
                    }));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // EMFILE and friends: leave the rest in the backlog.
                Err(_) => return Ok(()),
            }
        }
    }

    /// Reads control lines (echo-hop: records); false once the control
    /// connection is gone.
    fn control(&mut self, s: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
        loop {
            let start = buf.len();
            buf.resize(start + 64 * 1024, 0);
            match s.read(&mut buf[start..]) {
                Ok(0) => return false,
                Ok(n) => {
                    buf.truncate(start + n);
                    if self.mode == Mode::EchoHop {
                        let done = self.hop_records(buf);
                        buf.drain(..done);
                        continue;
                    }
                    let mut done = 0;
                    while let Some(nl) = memchr::memchr(b'\n', &buf[done..]) {
                        let line = &buf[done..done + nl];
                        if let Some(tab) = line.iter().position(|&b| b == b'\t') {
                            self.fan_out(&line[..tab], &line[tab + 1..]);
                        }
                        done += nl + 1;
                    }
                    buf.drain(..done);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    buf.truncate(start);
                    return true;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => buf.truncate(start),
                Err(_) => return false,
            }
        }
    }

    /// echo-hop: each complete record of `buf` becomes a text frame queued
    /// on its connection; returns the bytes used.
    fn hop_records(&mut self, buf: &[u8]) -> usize {
        let mut at = 0;
        while buf.len() - at >= 8 {
            let word = |k: usize| u32::from_le_bytes(buf[k..k + 4].try_into().unwrap()) as usize;
            let (i, len) = (word(at), word(at + 4));
            let end = at + 8 + len;
            if end > buf.len() {
                break;
            }
            if let Some(Some(c)) = self.conns.get_mut(i) {
                ws::push_head(&mut c.raw, ws::OP_TEXT, len, None);
                c.raw.extend_from_slice(&buf[at + 8..end]);
                if !c.queued {
                    c.queued = true;
                    self.dirty.push(i);
                }
            }
            at = end;
        }
        at
    }

    /// echo-hop: writes the turn's records to the control connection (what
    /// it does not take waits for its next writable event); false if it
    /// failed.
    fn flush_hop(&mut self, s: &mut TcpStream) -> bool {
        while !self.hop_out.is_empty() {
            match s.write(&self.hop_out) {
                Ok(n) => {
                    self.hop_out.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        true
    }

    fn fan_out(&mut self, room: &[u8], payload: &[u8]) {
        let mut frame = Vec::with_capacity(payload.len() + 10);
        ws::push_head(&mut frame, ws::OP_TEXT, payload.len(), None);
        frame.extend_from_slice(payload);
        let frame: Rc<[u8]> = frame.into();
        if room == b"*" {
            self.turn_everyone.push(frame);
            return;
        }
        let Some(r) = std::str::from_utf8(room)
            .ok()
            .and_then(|r| r.parse::<usize>().ok())
            .filter(|&r| r < self.rooms.len())
        else {
            return;
        };
        if self.turn_rooms.len() <= r {
            self.turn_rooms.resize_with(r + 1, Vec::new);
        }
        self.turn_rooms[r].push(frame);
    }

    /// The end of a turn: each room's frames of the turn, as one batch with
    /// one iovec array, in one vectored write to every member that is
    /// caught up (its socket writable, nothing older queued); the rest is
    /// queued for `flush`.
    fn write_batches(&mut self) {
        let mut turn_rooms = std::mem::take(&mut self.turn_rooms);
        for (r, frames) in turn_rooms.iter_mut().enumerate() {
            if !frames.is_empty() {
                let batch: Batch = std::mem::take(frames).into();
                let members = std::mem::take(&mut self.rooms[r]);
                self.write_batch(&batch, &members);
                self.rooms[r] = members;
            }
        }
        self.turn_rooms = turn_rooms;
        if !self.turn_everyone.is_empty() {
            let batch: Batch = std::mem::take(&mut self.turn_everyone).into();
            let members = std::mem::take(&mut self.everyone);
            self.write_batch(&batch, &members);
            self.everyone = members;
        }
    }

    fn write_batch(&mut self, batch: &Batch, members: &[usize]) {
        let iov: Vec<IoSlice<'_>> = batch
            .iter()
            .take(MAX_IOV)
            .map(|f| IoSlice::new(f))
            .collect();
        let first: usize = batch.iter().take(MAX_IOV).map(|f| f.len()).sum();
        for &i in members {
            let Some(Some(c)) = self.conns.get_mut(i) else {
                continue;
            };
            if c.writable && c.out.is_empty() && c.raw.is_empty() {
                match c.stream.write_vectored(&iov) {
                    Ok(n) if n == first && batch.len() <= MAX_IOV => continue,
                    Ok(n) => {
                        // Where the socket stopped.
                        let (mut frame, mut left) = (0, n);
                        while left >= batch[frame].len() {
                            left -= batch[frame].len();
                            frame += 1;
                        }
                        c.out.push_back((batch.clone(), frame, left));
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        c.writable = false;
                        c.out.push_back((batch.clone(), 0, 0));
                    }
                    Err(_) => {
                        self.conns[i] = None;
                        continue;
                    }
                }
            } else {
                c.out.push_back((batch.clone(), 0, 0));
            }
            if !c.queued {
                c.queued = true;
                self.dirty.push(i);
            }
        }
    }

    fn readable(&mut self, i: usize) {
        let Some(Some(c)) = self.conns.get_mut(i) else {
            return;
        };
        loop {
            let n = match c.stream.read(&mut self.scratch) {
                Ok(0) => {
                    self.conns[i] = None;
                    return;
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    self.conns[i] = None;
                    return;
                }
            };
            let data = &self.scratch[..n];
            if !c.upgraded {
                c.inbuf.extend_from_slice(data);
                let Some(end) = ws::header_end(&c.inbuf) else {
                    if c.inbuf.len() > 16 * 1024 {
                        self.conns[i] = None;
                        return;
                    }
                    continue;
                };
                let Some(path) = ws::accept_upgrade(&c.inbuf[..end], &mut c.raw) else {
                    self.conns[i] = None;
                    return;
                };
                c.upgraded = true;
                c.inbuf.drain(..end);
                c.inbuf.shrink_to_fit();
                if !c.queued {
                    c.queued = true;
                    self.dirty.push(i);
                }
                if self.mode == Mode::Fanout {
                    let room = path
                        .strip_prefix(b"/ws/")
                        .and_then(|p| p.split(|&b| b == b'/').next())
                        .and_then(|r| std::str::from_utf8(r).ok())
                        .and_then(|r| r.parse::<usize>().ok());
                    if let Some(r) = room.filter(|&r| r < 1 << 20) {
                        if self.rooms.len() <= r {
                            self.rooms.resize_with(r + 1, Vec::new);
                        }
                        self.rooms[r].push(i);
                    }
                    self.everyone.push(i);
                }
            } else if self.mode == Mode::EchoHop {
                if !hop(c, i, data, &mut self.hop_out) {
                    self.conns[i] = None;
                    return;
                }
            } else if self.mode == Mode::Echo {
                if !echo(c, data) {
                    self.conns[i] = None;
                    return;
                }
                if !c.queued {
                    c.queued = true;
                    self.dirty.push(i);
                }
            }
            // A short read drained the socket; epoll (edge-triggered) will
            // report any data that arrives from now on.
            if n < self.scratch.len() {
                return;
            }
        }
    }

    fn flush_dirty(&mut self) {
        let mut dirty = std::mem::take(&mut self.dirty);
        for &i in &dirty {
            let Some(Some(c)) = self.conns.get_mut(i) else {
                continue;
            };
            c.queued = false;
            if c.writable && !flush(c) {
                self.conns[i] = None;
            }
        }
        dirty.clear();
        self.dirty = dirty;
    }
}

/// Echoes every complete frame of `data` (after any partial one kept in
/// the connection) into `raw`, unmasked, as a server frame of the same
/// opcode; false on a close frame or a protocol error.
fn echo(c: &mut Conn, data: &[u8]) -> bool {
    let raw = &mut c.raw;
    frames(&mut c.inbuf, data, |opcode, payload, mask| {
        ws::push_head(raw, opcode, payload.len(), None);
        let start = raw.len();
        raw.extend_from_slice(payload);
        ws::apply_mask(&mut raw[start..], mask);
    })
}

/// echo-hop: appends every complete frame of `data` (after any partial
/// one kept in the connection) to `out` as a record for the control
/// connection, unmasked; false on a close frame or a protocol error.
fn hop(c: &mut Conn, i: usize, data: &[u8], out: &mut Vec<u8>) -> bool {
    frames(&mut c.inbuf, data, |_, payload, mask| {
        out.extend_from_slice(&(i as u32).to_le_bytes());
        out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        let start = out.len();
        out.extend_from_slice(payload);
        ws::apply_mask(&mut out[start..], mask);
    })
}

/// Hands every complete masked frame of `data`, after the partial one kept
/// in `inbuf`, to `each` (opcode, masked payload, mask) and keeps the rest
/// in `inbuf`; false on a close frame or a protocol error.
fn frames(inbuf: &mut Vec<u8>, data: &[u8], each: impl FnMut(u8, &[u8], [u8; 4])) -> bool {
    if inbuf.is_empty() {
        let Some(at) = complete_frames(data, each) else {
            return false;
        };
        inbuf.extend_from_slice(&data[at..]);
    } else {
        inbuf.extend_from_slice(data);
        let Some(at) = complete_frames(inbuf, each) else {
            return false;
        };
        inbuf.drain(..at);
    }
    true
}

/// Bytes of `buf` consumed (complete frames), None to close.
fn complete_frames(buf: &[u8], mut each: impl FnMut(u8, &[u8], [u8; 4])) -> Option<usize> {
    let mut at = 0;
    while let Some(h) = ws::parse_head(&buf[at..]) {
        if h.payload_len > 16 << 20 || h.opcode == ws::OP_CLOSE {
            return None;
        }
        let end = at + h.header_len + h.payload_len;
        if end > buf.len() {
            break;
        }
        each(h.opcode, &buf[at + h.header_len..end], h.mask?);
        at = end;
    }
    Some(at)
}

/// Writes raw bytes then queued frames until done or WouldBlock; false if
/// the connection failed.
fn flush(c: &mut Conn) -> bool {
    while !c.raw.is_empty() {
        match c.stream.write(&c.raw) {
            Ok(n) => {
                c.raw.drain(..n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                c.writable = false;
                return true;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    while !c.out.is_empty() {
        let empty: &[u8] = &[];
        let mut iov = [IoSlice::new(empty); MAX_IOV];
        let mut k = 0;
        'fill: for (b, (batch, frame, off)) in c.out.iter().enumerate() {
            let (frame, off) = if b == 0 { (*frame, *off) } else { (0, 0) };
            for (j, f) in batch[frame..].iter().enumerate() {
                if k == MAX_IOV {
                    break 'fill;
                }
                iov[k] = IoSlice::new(if j == 0 { &f[off..] } else { f });
                k += 1;
            }
        }
        match c.stream.write_vectored(&iov[..k]) {
            Ok(mut n) => {
                while n > 0 {
                    let Some((batch, frame, off)) = c.out.front_mut() else {
                        break;
                    };
                    let left = batch[*frame].len() - *off;
                    if n < left {
                        *off += n;
                        break;
                    }
                    n -= left;
                    *off = 0;
                    *frame += 1;
                    if *frame == batch.len() {
                        c.out.pop_front();
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                c.writable = false;
                return true;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    true
}
