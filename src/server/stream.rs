//! The byte stream under a client or backend connection: a TCP socket, or a
//! [`FakeStream`] through which the server-harness fuzz target drives the
//! broker's own state machine (upgrade, frames, lines, queues, closes)
//! without a network.

use std::cell::RefCell;
use std::io::{self, IoSlice, Read, Write};
use std::rc::Rc;

use mio::event::Source;
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};

/// A connection's byte stream.
#[derive(Debug)]
pub(super) enum Stream {
    /// A real socket.
    Tcp(TcpStream),
    /// The fuzz harness's in-memory peer.
    Fake(FakeStream),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Fake(f) => f.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Fake(f) => f.write(buf),
        }
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write_vectored(bufs),
            Stream::Fake(f) => f.write_vectored(bufs),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Source for Stream {
    fn register(
        &mut self,
        registry: &Registry,
        token: Token,
        interests: Interest,
    ) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.register(registry, token, interests),
            Stream::Fake(_) => Ok(()),
        }
    }

    fn reregister(
        &mut self,
        registry: &Registry,
        token: Token,
        interests: Interest,
    ) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.reregister(registry, token, interests),
            Stream::Fake(_) => Ok(()),
        }
    }

    fn deregister(&mut self, registry: &Registry) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.deregister(registry),
            Stream::Fake(_) => Ok(()),
        }
    }
}

/// The peer's side of an in-memory connection, shared between the harness
/// (which feeds input and reads output) and the broker (which reads input
/// and writes output). Only the fuzz harness makes these.
#[derive(Debug, Default)]
pub struct Pipe {
    /// Bytes the peer sent; the broker reads from `read_pos`.
    pub input: Vec<u8>,
    /// How much of `input` the broker has read.
    pub read_pos: usize,
    /// The peer closed its sending side: reads past the input see the end.
    pub eof: bool,
    /// Bytes the broker wrote.
    pub output: Vec<u8>,
    /// How many more bytes the peer takes before a write would block.
    pub room: usize,
    /// The connection was reset: reads and writes fail.
    pub reset: bool,
}

/// A handle on a [`Pipe`]: the broker's end of an in-memory connection.
#[derive(Debug, Clone, Default)]
pub struct FakeStream(pub Rc<RefCell<Pipe>>);

impl Read for FakeStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut p = self.0.borrow_mut();
        if p.reset {
            return Err(io::ErrorKind::ConnectionReset.into());
        }
        let left = p.input.len() - p.read_pos;
        if left == 0 {
            return if p.eof {
                Ok(0)
            } else {
                Err(io::ErrorKind::WouldBlock.into())
            };
        }
        let n = left.min(buf.len());
        let start = p.read_pos;
        buf[..n].copy_from_slice(&p.input[start..start + n]);
        p.read_pos += n;
        Ok(n)
    }
}

impl Write for FakeStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[IoSlice::new(buf)])
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let mut p = self.0.borrow_mut();
        if p.reset {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        let wanted: usize = bufs.iter().map(|b| b.len()).sum();
        if wanted > 0 && p.room == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let mut left = p.room.min(wanted);
        let taken = left;
        for b in bufs {
            let n = b.len().min(left);
            p.output.extend_from_slice(&b[..n]);
            left -= n;
            if left == 0 {
                break;
            }
        }
        p.room -= taken;
        Ok(taken)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
