//! What a socket said: the readiness bits each connection keeps, and the
//! one place where the results of `read`, `write` and `accept` are sorted
//! into "go on", "try again later" and "this connection is over".
//!
//! Sockets are registered once, edge-triggered, for reading and writing.
//! An edge says only that something changed, so each connection keeps its
//! own [`Readiness`]: a bit is set by an event and cleared only when the
//! socket says `WouldBlock` (or a short read shows the socket drained).
//!
//! Resets and broken pipes are ordinary ends of a connection, not faults:
//! [`SocketResult::Closed`] carries the error for a debug line, and the
//! caller decides what the end means for its kind of connection.

use std::io::{self, Read};

/// The readiness a connection has seen and not yet used up.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Readiness {
    /// Reading may return bytes (or the end of the stream, or an error).
    pub readable: bool,
    /// Writing may make progress.
    pub writable: bool,
    /// The peer closed its side or the socket failed: read to the end
    /// rather than trusting a short read to mean "drained".
    pub hup: bool,
}

/// The parts of a poll event that readiness is made of.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Signal {
    /// Bytes (or an end) arrived.
    pub readable: bool,
    /// Buffer space became free.
    pub writable: bool,
    /// The peer shut down its sending side.
    pub read_closed: bool,
    /// The socket has a pending error.
    pub error: bool,
}

impl From<&mio::event::Event> for Signal {
    fn from(event: &mio::event::Event) -> Signal {
        Signal {
            readable: event.is_readable(),
            writable: event.is_writable(),
            read_closed: event.is_read_closed(),
            error: event.is_error(),
        }
    }
}

impl Readiness {
    /// Records an event. An error or a hang-up makes the socket readable
    /// (the read reports it) and marks it `hup`. Returns whether the
    /// socket became writable.
    pub fn record(&mut self, signal: Signal) -> bool {
        let ended = signal.read_closed || signal.error;
        self.readable |= signal.readable || ended;
        self.hup |= ended;
        self.writable |= signal.writable;
        signal.writable
    }

    /// Reads once from `sock` into `buf` (retrying an interrupted read)
    /// and keeps the readable bit true to what the socket said.
    pub fn read(&mut self, sock: &mut impl Read, buf: &mut [u8]) -> ReadOutcome {
        loop {
            match SocketResult::of_read(sock.read(buf)) {
                SocketResult::Done(n) => {
                    if n < buf.len() {
                        self.short_read();
                    }
                    return ReadOutcome::Bytes(n);
                }
                SocketResult::WouldBlock => {
                    self.readable = false;
                    return ReadOutcome::Drained;
                }
                SocketResult::Retry => {}
                SocketResult::Closed(e) => return ReadOutcome::Ended(e),
            }
        }
    }

    /// A read returned fewer bytes than asked: the socket is drained and
    /// the next bytes bring a new edge, so the read that would only say
    /// `WouldBlock` can be skipped, unless the peer hung up (its end of
    /// stream must still be read).
    pub fn short_read(&mut self) {
        if !self.hup {
            self.readable = false;
        }
    }
}

/// What reading a socket gave.
#[derive(Debug)]
pub enum ReadOutcome {
    /// This many bytes (never 0).
    Bytes(usize),
    /// Nothing more until the next readiness edge.
    Drained,
    /// The connection is over: `None` for an orderly end of stream.
    Ended(Option<io::Error>),
}

/// What one `read` or `write` on a non-blocking socket means.
#[derive(Debug)]
pub enum SocketResult {
    /// This many bytes moved (never 0).
    Done(usize),
    /// Nothing to do until the next readiness edge.
    WouldBlock,
    /// Interrupted by a signal: call again at once.
    Retry,
    /// The connection is over: `None` for an orderly end of stream, or the
    /// error that ended it (a reset and a broken pipe are ordinary ends).
    Closed(Option<io::Error>),
}

impl SocketResult {
    /// Sorts the result of a `read`: 0 bytes is the end of the stream.
    pub fn of_read(result: io::Result<usize>) -> SocketResult {
        match result {
            Ok(0) => SocketResult::Closed(None),
            other => SocketResult::of(other),
        }
    }

    /// Sorts the result of a `write`: 0 bytes written with bytes to write
    /// means the socket can take no more, ever (`WriteZero`).
    pub fn of_write(result: io::Result<usize>) -> SocketResult {
        match result {
            Ok(0) => SocketResult::Closed(Some(io::ErrorKind::WriteZero.into())),
            other => SocketResult::of(other),
        }
    }

    fn of(result: io::Result<usize>) -> SocketResult {
        match result {
            Ok(n) => SocketResult::Done(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => SocketResult::WouldBlock,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => SocketResult::Retry,
            Err(e) => SocketResult::Closed(Some(e)),
        }
    }
}

/// What a failed `accept` means for the listener.
#[derive(Debug, PartialEq, Eq)]
pub enum AcceptError {
    /// No connection waits: until the next readiness edge.
    WouldBlock,
    /// The failure concerned one connection only (it was aborted or reset
    /// before we took it, or was interrupted): accept the next one at once.
    Skip,
    /// Out of descriptors or kernel memory: the waiting connections stay in
    /// the listen backlog; accepting pauses briefly instead of spinning.
    Shortage,
    /// Anything else: logged, and accepting pauses briefly.
    Other,
}

impl AcceptError {
    /// Sorts an `accept` error. Linux passes errors already pending on the
    /// new connection through `accept` (accept(2), "Error handling"): those
    /// are the connection's, not the listener's.
    pub fn of(e: &io::Error) -> AcceptError {
        match e.kind() {
            io::ErrorKind::WouldBlock => return AcceptError::WouldBlock,
            io::ErrorKind::Interrupted
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset => return AcceptError::Skip,
            _ => {}
        }
        match e.raw_os_error() {
            Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => {
                AcceptError::Shortage
            }
            Some(
                libc::EPROTO
                | libc::ENOPROTOOPT
                | libc::ENETDOWN
                | libc::ENETUNREACH
                | libc::EHOSTDOWN
                | libc::EHOSTUNREACH
                | libc::ENONET
                | libc::EOPNOTSUPP
                | libc::EPERM
                | libc::ETIMEDOUT,
            ) => AcceptError::Skip,
            _ => AcceptError::Other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(code: i32) -> io::Error {
        io::Error::from_raw_os_error(code)
    }

    #[test]
    fn an_error_or_hangup_makes_a_socket_readable() {
        for signal in [
            Signal {
                error: true,
                ..Signal::default()
            },
            Signal {
                read_closed: true,
                ..Signal::default()
            },
        ] {
            let mut r = Readiness::default();
            assert!(!r.record(signal));
            assert!(r.readable && r.hup && !r.writable);
            // A hung-up socket is read to its end, short reads or not.
            r.short_read();
            assert!(r.readable);
        }
        let mut r = Readiness::default();
        assert!(r.record(Signal {
            readable: true,
            writable: true,
            ..Signal::default()
        }));
        r.short_read();
        assert!(!r.readable && r.writable && !r.hup);
    }

    #[test]
    fn results_are_sorted_once() {
        assert!(matches!(
            SocketResult::of_read(Ok(0)),
            SocketResult::Closed(None)
        ));
        assert!(matches!(
            SocketResult::of_read(Ok(7)),
            SocketResult::Done(7)
        ));
        // A write that takes nothing is the end, not a stall.
        match SocketResult::of_write(Ok(0)) {
            SocketResult::Closed(Some(e)) => assert_eq!(e.kind(), io::ErrorKind::WriteZero),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            SocketResult::of_write(Err(io::ErrorKind::WouldBlock.into())),
            SocketResult::WouldBlock
        ));
        assert!(matches!(
            SocketResult::of_write(Err(io::ErrorKind::Interrupted.into())),
            SocketResult::Retry
        ));
        assert!(matches!(
            SocketResult::of_read(Err(os(libc::ECONNRESET))),
            SocketResult::Closed(Some(_))
        ));
    }

    #[test]
    fn only_a_shortage_pauses_accepting() {
        assert_eq!(AcceptError::of(&os(libc::EAGAIN)), AcceptError::WouldBlock);
        for code in [
            libc::ECONNABORTED,
            libc::EPROTO,
            libc::EINTR,
            libc::ENETDOWN,
        ] {
            assert_eq!(AcceptError::of(&os(code)), AcceptError::Skip, "{code}");
        }
        for code in [libc::EMFILE, libc::ENFILE, libc::ENOBUFS, libc::ENOMEM] {
            assert_eq!(AcceptError::of(&os(code)), AcceptError::Shortage, "{code}");
        }
        assert_eq!(AcceptError::of(&os(libc::EBADF)), AcceptError::Other);
    }
}
