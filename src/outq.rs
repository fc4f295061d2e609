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

/// A room's messages of one turn, in order, shared by every member's queue
/// (a member queues the batch once, not each of its frames: uWebSockets
/// calls this corking).
#[derive(Debug)]
pub struct Batch {
    frames: Box<[Shared]>,
    bytes: usize,
}

impl Batch {
    /// A batch of `frames` (empty frames left out).
    pub fn new(frames: Vec<Shared>) -> Batch {
        let frames: Box<[Shared]> = frames.into_iter().filter(|f| !f.is_empty()).collect();
        let bytes = frames.iter().map(|f| f.len()).sum();
        Batch { frames, bytes }
    }

    /// Frames in the batch.
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    /// Whether it holds no frame.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Bytes of all its frames.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

/// One entry of a queue: a frame, or a room's batch of frames.
#[derive(Debug)]
enum Entry {
    One(Shared),
    Run(Rc<Batch>),
}

impl Entry {
    fn frames(&self) -> &[Shared] {
        match self {
            Entry::One(frame) => std::slice::from_ref(frame),
            Entry::Run(batch) => &batch.frames,
        }
    }

    fn is_pong(&self) -> bool {
        matches!(self, Entry::One(f) if f.first() == Some(&PONG_BYTE))
    }
}

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
    entries: VecDeque<Entry>,
    /// The frame of the front entry being written, and how much of it was.
    frame: usize,
    offset: usize,
    /// Frames queued (a batch counts its frames).
    frames: usize,
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

/// The memory one frame of `len` bytes stands for.
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
    /// every frame.
    pub fn cost(&self) -> usize {
        self.cost
    }

    /// The memory queued behind the frame being written: how far the
    /// reader is behind, not counting the message it is receiving now.
    pub fn backlog(&self) -> usize {
        let front = self
            .entries
            .front()
            .and_then(|e| e.frames().get(self.frame))
            .map_or(0, |f| cost_of(f.len()));
        self.cost - front
    }

    /// Whether nothing waits to be written.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether the frame being written was partly written (so it cannot be
    /// dropped without corrupting the stream).
    pub fn front_started(&self) -> bool {
        self.offset > 0
    }

    /// Appends a buffer; empty buffers are ignored.
    pub fn push(&mut self, frame: Shared) {
        if frame.is_empty() {
            return;
        }
        self.frames += 1;
        self.bytes += frame.len();
        self.cost += cost_of(frame.len());
        self.entries.push_back(Entry::One(frame));
    }

    /// Appends a room's batch: one entry for all its frames.
    pub fn push_batch(&mut self, batch: &Rc<Batch>) {
        if batch.is_empty() {
            return;
        }
        self.frames += batch.len();
        self.bytes += batch.bytes;
        self.cost += batch.bytes + batch.len() * ENTRY_OVERHEAD;
        self.entries.push_back(Entry::Run(Rc::clone(batch)));
    }

    /// Appends a pong, or, when [`MAX_PONGS`] already wait, puts it in
    /// the place of the newest waiting one (unless that one started to be
    /// written).
    pub fn push_pong(&mut self, pong: Shared) {
        if self.pongs >= MAX_PONGS {
            if let Some(i) = self.last_pong.checked_sub(self.popped) {
                let i = i as usize;
                let started = i == 0 && self.offset > 0;
                if let Some(Entry::One(old)) = self.entries.get_mut(i).filter(|_| !started) {
                    self.bytes = self.bytes - old.len() + pong.len();
                    self.cost = self.cost - cost_of(old.len()) + cost_of(pong.len());
                    *old = pong;
                    return;
                }
            }
        }
        self.pongs += 1;
        self.last_pong = self.popped + self.entries.len() as u64;
        self.push(pong);
    }

    /// Keeps everything queued now through [`OutQueue::discard_unstarted`]:
    /// the HTTP reply of an upgrade must reach the client before any frame
    /// (a slow consumer's close frame included).
    pub fn pin(&mut self) {
        self.pinned = self.popped + self.entries.len() as u64;
    }

    /// Drops every frame that has not started to be written, keeping a
    /// partly written one and the pinned entries so the stream stays
    /// well-formed.
    pub fn discard_unstarted(&mut self) {
        let pinned = (self.pinned.saturating_sub(self.popped) as usize).min(self.entries.len());
        if pinned > 0 {
            // The pinned entries are at the front, the one being written
            // among them: everything behind them goes.
            for entry in self.entries.drain(pinned..) {
                for frame in entry.frames() {
                    self.frames -= 1;
                    self.bytes -= frame.len();
                    self.cost -= cost_of(frame.len());
                }
                if entry.is_pong() {
                    self.pongs -= 1;
                }
            }
            return;
        }
        let kept = if self.offset > 0 {
            self.entries
                .front()
                .and_then(|e| e.frames().get(self.frame))
                .cloned()
        } else {
            None
        };
        for entry in self.entries.drain(..) {
            if entry.is_pong() {
                self.pongs -= 1;
            }
        }
        self.entries = VecDeque::new();
        self.frame = 0;
        self.frames = 0;
        self.bytes = 0;
        self.cost = 0;
        match kept {
            Some(frame) => {
                let offset = self.offset;
                let pong = frame.first() == Some(&PONG_BYTE);
                self.push(frame);
                if pong {
                    self.pongs += 1;
                }
                self.bytes -= offset;
                self.offset = offset;
            }
            None => self.offset = 0,
        }
    }

    /// Writes as much as the socket takes: vectored writes until the queue
    /// is empty or the socket would block. Other errors are returned.
    pub fn flush(&mut self, sink: &mut impl Write) -> io::Result<Flushed> {
        while !self.entries.is_empty() {
            let written = if self.frames <= FEW_IOVECS {
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

    /// One vectored write of up to `N` queued frames.
    fn write_some<const N: usize>(&self, sink: &mut impl Write) -> io::Result<usize> {
        let mut slices = [IoSlice::new(&[]); N];
        let mut count = 0;
        'fill: for (i, entry) in self.entries.iter().enumerate() {
            let frames = entry.frames();
            let (first, offset) = if i == 0 {
                (self.frame, self.offset)
            } else {
                (0, 0)
            };
            for (j, frame) in frames[first..].iter().enumerate() {
                if count == N {
                    break 'fill;
                }
                let start = if j == 0 { offset } else { 0 };
                slices[count] = IoSlice::new(&frame[start..]);
                count += 1;
            }
        }
        sink.write_vectored(&slices[..count])
    }

    fn consume(&mut self, mut n: usize) {
        self.bytes -= n;
        while n > 0 {
            let Some(front) = self.entries.front() else {
                break;
            };
            let frames = front.frames();
            // A whole batch written at once: one step, not one per frame.
            if self.frame == 0 && self.offset == 0 {
                if let Entry::Run(batch) = front {
                    if n >= batch.bytes {
                        n -= batch.bytes;
                        self.cost -= batch.bytes + batch.len() * ENTRY_OVERHEAD;
                        self.frames -= batch.len();
                        self.entries.pop_front();
                        self.popped += 1;
                        continue;
                    }
                }
            }
            let len = frames[self.frame].len();
            let left = len - self.offset;
            if n < left {
                self.offset += n;
                break;
            }
            n -= left;
            self.offset = 0;
            self.cost -= cost_of(len);
            self.frames -= 1;
            self.frame += 1;
            if self.frame == frames.len() {
                if front.is_pong() {
                    self.pongs -= 1;
                }
                self.frame = 0;
                self.entries.pop_front();
                self.popped += 1;
            }
        }
        let capacity = self.entries.capacity();
        if self.entries.is_empty() && capacity > 16 {
            // Give back the ring a burst grew; an idle client keeps nothing.
            self.entries = VecDeque::new();
        } else if capacity > 1024 && self.entries.len() < capacity / 4 {
            self.entries.shrink_to(capacity / 2);
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
        assert_eq!(q.entries.len(), 1 + MAX_PONGS);
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
        assert_eq!(q.entries.len(), 10_000 - 9 * 1024);
        assert!(q.entries.capacity() <= 2048, "{}", q.entries.capacity());
    }

    #[test]
    fn batches_and_frames_interleave_in_order_through_partial_writes() {
        // Deterministic variety: several write sizes, batches of several
        // lengths, single frames between them.
        for per_call in [1usize, 3, 7, 64, 1 << 20] {
            let mut q = OutQueue::new();
            let mut want = Vec::new();
            let mut n = 0u8;
            let mut frame = |len: usize| -> Shared {
                n = n.wrapping_add(1);
                let f: Shared = Rc::from(vec![n; len]);
                f
            };
            for round in 0..20 {
                if round % 3 == 0 {
                    let f = frame(round % 5 + 1);
                    want.extend_from_slice(&f);
                    q.push(f);
                } else {
                    let frames: Vec<Shared> = (0..round % 4 + 1).map(|k| frame(k + 2)).collect();
                    for f in &frames {
                        want.extend_from_slice(f);
                    }
                    q.push_batch(&Rc::new(Batch::new(frames)));
                }
            }
            assert_eq!(q.bytes(), want.len());
            let mut sink = Trickle {
                out: Vec::new(),
                per_call,
                calls_left: usize::MAX,
            };
            assert_eq!(q.flush(&mut sink).unwrap(), Flushed::All);
            assert_eq!(sink.out, want, "per_call {per_call}");
            assert_eq!((q.bytes(), q.cost(), q.frames), (0, 0, 0));
        }
    }

    #[test]
    fn a_batch_counts_each_frame_and_discard_keeps_a_started_one() {
        let batch = Rc::new(Batch::new(vec![
            Rc::from(&b"abc"[..]),
            Rc::from(&b"de"[..]),
            Rc::from(&b"f"[..]),
        ]));
        let mut q = OutQueue::new();
        q.push_batch(&batch);
        q.push_batch(&batch);
        assert_eq!(q.bytes(), 12);
        assert_eq!(q.cost(), 12 + 6 * ENTRY_OVERHEAD);
        assert_eq!(q.backlog(), q.cost() - (3 + ENTRY_OVERHEAD));
        let mut sink = Trickle {
            out: Vec::new(),
            per_call: 4,
            calls_left: 1,
        };
        q.flush(&mut sink).unwrap();
        // "abc" and "d" written: "de" is started.
        assert!(q.front_started());
        q.discard_unstarted();
        assert_eq!(q.bytes(), 1);
        sink.calls_left = 10;
        q.flush(&mut sink).unwrap();
        assert_eq!(sink.out, b"abcde");
        assert!(q.is_empty());
        assert_eq!(Rc::strong_count(&batch), 1, "the queue let go of the batch");
    }
}
