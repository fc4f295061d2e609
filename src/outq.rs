//! Per-socket queue of shared frames, flushed with vectored writes.
//!
//! A room message is encoded once into an `Rc<[u8]>`; every member's queue
//! holds a clone of that same buffer (a reference count, not a copy). A flush
//! hands up to [`MAX_IOVECS`] queued buffers to one `writev`, so a client that
//! has many messages waiting gets them in one system call.
//!
//! Invariants: `bytes` is always the number of unsent bytes in the queue;
//! `offset` is how much of the front buffer was already written, and is 0
//! when the queue is empty. An empty queue holds no allocation.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};
use std::rc::Rc;

use crate::socket::SocketResult;

/// Most buffers handed to one vectored write (Linux's IOV_MAX).
pub const MAX_IOVECS: usize = 1024;
/// Queues this short are written from a small stack array (the common
/// case of a few messages per turn), longer ones from a full-size one.
const FEW_IOVECS: usize = 16;

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

    /// Unsent bytes queued behind the front buffer: how far the reader is
    /// behind, not counting the message it is receiving right now.
    pub fn backlog(&self) -> usize {
        self.bytes - self.frames.front().map_or(0, |f| f.len() - self.offset)
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
        self.frames.push_back(frame);
    }

    /// Drops every buffer that has not started to be written, keeping a
    /// partly written front buffer so the stream stays well-formed.
    pub fn discard_unstarted(&mut self) {
        let keep = usize::from(self.offset > 0);
        self.frames.truncate(keep);
        self.bytes = self.frames.front().map_or(0, |f| f.len() - self.offset);
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
                self.frames.pop_front();
            } else {
                self.offset += n;
                n = 0;
            }
        }
        if self.frames.is_empty() && self.frames.capacity() > 16 {
            // Give back the ring a burst grew; an idle client keeps nothing.
            self.frames = VecDeque::new();
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
        assert_eq!(q.backlog(), 11);
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
}
