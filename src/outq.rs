//! Per-socket queue of shared frames, flushed with vectored writes.
//!
//! A room message is encoded once into an `Rc<[u8]>`; every member's queue
//! holds a clone of that same buffer (a reference count, not a copy). A flush
//! hands up to [`MAX_IOVECS`] queued buffers to one `writev`, so a client that
//! has many messages waiting gets them in one system call.
//!
//! What a queue holds is measured in memory, not only in frame bytes: each
//! entry costs its bytes plus [`ENTRY_OVERHEAD`] (its slot in the ring and
//! its share of an allocation), so a client that never reads cannot make the
//! broker hold millions of tiny frames under a byte bound. Pongs are
//! bounded apart: at most [`MAX_PONGS`] wait in a queue; a ping beyond that
//! replaces the newest waiting pong (RFC 6455 5.5.3 allows answering only
//! the most recent ping). A ring that a burst grew is given back once it
//! drains.
//!
//! Invariants: `bytes` is always the number of unsent bytes in the queue and
//! `cost` the sum of the costs of its entries; `offset` is how much of the
//! front buffer was already written, and is 0 when the queue is empty;
//! `pongs` counts the queued pongs and `last_pong` is the absolute position
//! (entries popped before it plus its index) of the newest. An empty queue
//! holds no allocation.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};
use std::rc::Rc;

use crate::socket::SocketResult;

/// Most buffers handed to one vectored write (Linux's IOV_MAX).
pub const MAX_IOVECS: usize = 1024;
/// Queues this short are written from a small stack array (the common
/// case of a few messages per turn), longer ones from a full-size one.
const FEW_IOVECS: usize = 16;
/// What an entry costs beside its bytes: a 16-byte slot in the ring plus
/// the header of the allocation it points to (reference counts and the
/// allocator's own header), counted for every entry so that the bound holds
/// even when no frame is shared.
pub const ENTRY_OVERHEAD: usize = 48;
/// Most pongs one queue holds; enough for a burst of pings answered one by
/// one, few enough that a client that pings and never reads costs nothing.
pub const MAX_PONGS: usize = 16;
/// First byte of an unmasked, final pong frame.
const PONG_BYTE: u8 = 0x8A;

/// A frame (or any bytes) ready to be sent, possibly shared by many queues.
pub type Shared = Rc<[u8]>;

/// What a flush achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flushed {
    /// Everything queued was written.
    All,
    /// The socket would block; bytes remain queued.
    Blocked,
}

/// The bytes waiting to be written to one socket.
#[derive(Debug, Default)]
pub struct OutQueue {
    frames: VecDeque<Shared>,
    offset: usize,
    bytes: usize,
    cost: usize,
    /// Entries popped since the queue was made (positions are absolute).
    popped: u64,
    pongs: usize,
    last_pong: u64,
    /// Entries before this absolute position are never discarded (the
    /// handshake reply: a close frame without it would not be WebSocket).
    pinned: u64,
}

/// The memory one entry of `len` bytes stands for.
fn cost_of(len: usize) -> usize {
    len + ENTRY_OVERHEAD
}

impl OutQueue {
    /// An empty queue (no allocation).
    pub fn new() -> Self {
        Self::default()
    }

    /// Unsent bytes in the queue.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The memory the queue stands for: its bytes plus the overhead of
    /// every entry.
    pub fn cost(&self) -> usize {
        self.cost
    }

    /// The memory queued behind the front buffer: how far the reader is
    /// behind, not counting the message it is receiving right now.
    pub fn backlog(&self) -> usize {
        self.cost - self.frames.front().map_or(0, |f| cost_of(f.len()))
    }

    /// Whether nothing waits to be written.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Whether the front buffer was partly written (so it cannot be dropped
    /// without corrupting the stream).
    pub fn front_started(&self) -> bool {
        self.offset > 0
    }

    /// Appends a buffer; empty buffers are ignored.
    pub fn push(&mut self, frame: Shared) {
        if frame.is_empty() {
            return;
        }
        self.bytes += frame.len();
        self.cost += cost_of(frame.len());
        self.frames.push_back(frame);
    }

    /// Appends a pong, or, when [`MAX_PONGS`] already wait, puts it in
    /// the place of the newest waiting one (unless that one started to be
    /// written).
    pub fn push_pong(&mut self, pong: Shared) {
        if self.pongs >= MAX_PONGS {
            if let Some(i) = self.last_pong.checked_sub(self.popped) {
                let i = i as usize;
                let started = i == 0 && self.offset > 0;
                if let Some(old) = self.frames.get_mut(i).filter(|_| !started) {
                    self.bytes = self.bytes - old.len() + pong.len();
                    self.cost = self.cost - cost_of(old.len()) + cost_of(pong.len());
                    *old = pong;
                    return;
                }
            }
        }
        self.pongs += 1;
        self.last_pong = self.popped + self.frames.len() as u64;
        self.push(pong);
    }

    /// Keeps everything queued now through [`OutQueue::discard_unstarted`]:
    /// the HTTP reply of an upgrade must reach the client before any frame
    /// (a slow consumer's close frame included).
    pub fn pin(&mut self) {
        self.pinned = self.popped + self.frames.len() as u64;
    }

    /// Drops every buffer that has not started to be written, keeping a
    /// partly written front buffer and the pinned ones so the stream stays
    /// well-formed.
    pub fn discard_unstarted(&mut self) {
        let pinned = self.pinned.saturating_sub(self.popped) as usize;
        let keep = usize::from(self.offset > 0)
            .max(pinned)
            .min(self.frames.len());
        for frame in self.frames.drain(keep..) {
            self.bytes -= frame.len();
            self.cost -= cost_of(frame.len());
            if frame.first() == Some(&PONG_BYTE) {
                self.pongs -= 1;
            }
        }
        if self.frames.is_empty() {
            self.frames = VecDeque::new();
        }
    }

    /// Writes as much as the socket takes: vectored writes until the queue
    /// is empty or the socket would block. Other errors are returned.
    pub fn flush(&mut self, sink: &mut impl Write) -> io::Result<Flushed> {
        while !self.frames.is_empty() {
            let written = if self.frames.len() <= FEW_IOVECS {
                self.write_some::<FEW_IOVECS>(sink)
            } else {
                self.write_some::<MAX_IOVECS>(sink)
            };
            match SocketResult::of_write(written) {
                SocketResult::Done(n) => self.consume(n),
                SocketResult::WouldBlock => return Ok(Flushed::Blocked),
                SocketResult::Retry => {}
                SocketResult::Closed(e) => {
                    return Err(e.unwrap_or_else(|| io::ErrorKind::WriteZero.into()))
                }
            }
        }
        Ok(Flushed::All)
    }

    /// One vectored write of up to `N` queued buffers.
    fn write_some<const N: usize>(&self, sink: &mut impl Write) -> io::Result<usize> {
        let mut slices = [IoSlice::new(&[]); N];
        let mut count = 0;
        for (slot, frame) in slices.iter_mut().zip(&self.frames) {
            let start = if count == 0 { self.offset } else { 0 };
            *slot = IoSlice::new(&frame[start..]);
            count += 1;
        }
        sink.write_vectored(&slices[..count])
    }

    fn consume(&mut self, mut n: usize) {
        self.bytes -= n;
        while n > 0 {
            let Some(front) = self.frames.front() else {
                break;
            };
            let left = front.len() - self.offset;
            if n >= left {
                n -= left;
                self.offset = 0;
                self.cost -= cost_of(front.len());
                if front.first() == Some(&PONG_BYTE) {
                    self.pongs -= 1;
                }
                self.frames.pop_front();
                self.popped += 1;
            } else {
                self.offset += n;
                n = 0;
            }
        }
        let capacity = self.frames.capacity();
        if self.frames.is_empty() && capacity > 16 {
            // Give back the ring a burst grew; an idle client keeps nothing.
            self.frames = VecDeque::new();
        } else if capacity > 1024 && self.frames.len() < capacity / 4 {
            self.frames.shrink_to(capacity / 2);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink that accepts at most `budget` bytes per call, then blocks.
    struct Trickle {
        out: Vec<u8>,
        per_call: usize,
        calls_left: usize,
    }

    impl Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.write_vectored(&[IoSlice::new(buf)])
        }
        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            if self.calls_left == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            self.calls_left -= 1;
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(self.per_call - n);
                self.out.extend_from_slice(&b[..take]);
                n += take;
                if n == self.per_call {
                    break;
                }
            }
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn partial_writes_keep_order_and_count() {
        let mut q = OutQueue::new();
        let a: Shared = Rc::from(&b"hello "[..]);
        let b: Shared = Rc::from(&b"world"[..]);
        q.push(a.clone());
        q.push(b);
        q.push(a);
        assert_eq!(q.bytes(), 17);
        assert_eq!(q.backlog(), 11 + 2 * ENTRY_OVERHEAD);
        let mut sink = Trickle {
            out: Vec::new(),
            per_call: 4,
            calls_left: 2,
        };
        assert_eq!(q.flush(&mut sink).unwrap(), Flushed::Blocked);
        assert_eq!(q.bytes(), 9);
        assert!(q.front_started());
        sink.calls_left = 100;
        assert_eq!(q.flush(&mut sink).unwrap(), Flushed::All);
        assert_eq!(sink.out, b"hello worldhello ");
        assert_eq!(q.bytes(), 0);
        assert!(q.is_empty());
    }

    #[test]
    fn discard_keeps_a_started_frame() {
        let mut q = OutQueue::new();
        q.push(Rc::from(&b"abcdef"[..]));
        q.push(Rc::from(&b"ghi"[..]));
        let mut sink = Trickle {
            out: Vec::new(),
            per_call: 2,
            calls_left: 1,
        };
        q.flush(&mut sink).unwrap();
        q.discard_unstarted();
        assert_eq!(q.bytes(), 4);
        sink.calls_left = 10;
        q.flush(&mut sink).unwrap();
        assert_eq!(sink.out, b"abcdef");
    }

    #[test]
    fn discard_keeps_the_pinned_reply() {
        let mut q = OutQueue::new();
        q.push(Rc::from(&b"HTTP/1.1 101\r\n\r\n"[..]));
        q.pin();
        q.push(Rc::from(&b"frame"[..]));
        q.discard_unstarted();
        assert_eq!(q.bytes(), 16);
        q.push(Rc::from(&b"close"[..]));
        let mut sink = Trickle {
            out: Vec::new(),
            per_call: 100,
            calls_left: 10,
        };
        q.flush(&mut sink).unwrap();
        assert_eq!(sink.out, b"HTTP/1.1 101\r\n\r\nclose");
        // Once written, the pin is spent: later frames may all go.
        q.push(Rc::from(&b"more"[..]));
        q.discard_unstarted();
        assert!(q.is_empty());
    }

    #[test]
    fn every_entry_costs_its_slot() {
        let mut q = OutQueue::new();
        for _ in 0..1000 {
            q.push(Rc::from(&b"ab"[..]));
        }
        assert_eq!(q.bytes(), 2000);
        assert_eq!(q.cost(), 1000 * (2 + ENTRY_OVERHEAD));
        assert_eq!(q.backlog(), 999 * (2 + ENTRY_OVERHEAD));
        let mut sink = Trickle {
            out: Vec::new(),
            per_call: 1001,
            calls_left: 1,
        };
        q.flush(&mut sink).unwrap();
        assert_eq!(q.bytes(), 999);
        // 500 entries left, the front one started: it costs in full.
        assert_eq!(q.cost(), 500 * (2 + ENTRY_OVERHEAD));
        q.discard_unstarted();
        assert_eq!((q.bytes(), q.cost()), (1, 2 + ENTRY_OVERHEAD));
    }

    #[test]
    fn pongs_are_bounded_and_the_newest_wins() {
        let pong = |n: u8| -> Shared { Rc::from(&[PONG_BYTE, 1, n][..]) };
        let mut q = OutQueue::new();
        q.push(Rc::from(&b"data"[..]));
        for n in 0..100u8 {
            q.push_pong(pong(n));
        }
        assert_eq!(q.frames.len(), 1 + MAX_PONGS);
        let mut sink = Trickle {
            out: Vec::new(),
            per_call: 1 << 20,
            calls_left: 10,
        };
        q.flush(&mut sink).unwrap();
        let mut want = b"data".to_vec();
        for n in 0..(MAX_PONGS as u8 - 1) {
            want.extend_from_slice(&[PONG_BYTE, 1, n]);
        }
        want.extend_from_slice(&[PONG_BYTE, 1, 99]);
        assert_eq!(sink.out, want);
        assert_eq!((q.pongs, q.cost(), q.bytes()), (0, 0, 0));
        // Once written, pongs can be queued again.
        for n in 0..3 {
            q.push_pong(pong(n));
        }
        assert_eq!(q.pongs, 3);
    }

    #[test]
    fn a_drained_ring_is_given_back() {
        let mut q = OutQueue::new();
        for _ in 0..10_000 {
            q.push(Rc::from(&b"x"[..]));
        }
        let mut sink = Trickle {
            out: Vec::new(),
            per_call: 1024,
            calls_left: 9,
        };
        q.flush(&mut sink).unwrap();
        assert_eq!(q.frames.len(), 10_000 - 9 * 1024);
        assert!(q.frames.capacity() <= 2048, "{}", q.frames.capacity());
    }
}
