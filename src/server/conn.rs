//! The connections the loop owns, as data: a WebSocket [`Client`] through
//! its phases, an application [`Backend`], the [`ConnRef`] that names one
//! of them across key reuse, and the [`Ending`] a client is given.
//!
//! Nothing here does I/O or touches another connection; the files beside
//! this one do, each for its own concern.

use std::borrow::Cow;
use std::net::SocketAddr;

use crate::backend::Context;
use crate::outq::OutQueue;
use crate::socket::Readiness;
use crate::ws::frame::FrameReader;

use super::stream::Stream;

/// A (key, serial) pair naming one connection even after its slab key is
/// reused: serials are never reused while the broker runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ConnRef {
    pub key: usize,
    pub serial: u64,
}

/// Connection ids: `<prefix>-<serial>`, where the prefix is drawn at
/// random when the broker starts, so ids are unique for the broker's
/// lifetime and, with high probability, across brokers.
#[derive(Debug)]
pub(super) struct ConnectionIds {
    prefix: Box<str>,
}

impl ConnectionIds {
    /// Ids with a fresh random prefix.
    pub fn new() -> ConnectionIds {
        let random = uuid::Uuid::new_v4().simple().to_string();
        ConnectionIds {
            prefix: random[..8].into(),
        }
    }

    /// This broker's prefix of connection ids.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The id of the connection with broker serial `serial`.
    pub fn connection_id(&self, serial: u64) -> String {
        format!("{}-{serial}", self.prefix)
    }

    /// The serial an id of this broker names (`None` for a malformed id or
    /// one of another broker).
    pub fn serial(&self, id: &str) -> Option<u64> {
        let (prefix, serial) = id.split_once('-')?;
        if prefix != &*self.prefix || serial.starts_with('+') {
            return None;
        }
        serial.parse().ok()
    }
}

/// What a parked connection request keeps for the backend's answer.
#[derive(Debug)]
pub(super) struct Parked {
    pub url: Box<str>,
    pub accept_key: Box<str>,
    /// The subprotocols the client offered (`Sec-WebSocket-Protocol`,
    /// comma-separated; empty when none).
    pub protocols: Box<str>,
}

/// How a client connection stands.
#[derive(Debug)]
pub(super) enum Phase {
    /// Reading the HTTP upgrade request.
    Handshake,
    /// Waiting for a backend's answer to our `connection_request`.
    Pending {
        /// What the answer needs of the request (boxed: only parked
        /// clients pay for it).
        request: Box<Parked>,
        /// The backend the request was sent to: the only one that may answer.
        backend: ConnRef,
    },
    /// Upgraded and registered in the hub.
    Open,
    /// Our last bytes are queued; the socket closes once they are written
    /// (and, when `await_peer`, once the client's close frame or EOF comes),
    /// or when the close timeout passes.
    Closing { await_peer: bool },
}

/// How a client connection ends. I/O paths, timers and commands record an
/// ending on the client ([`Client::ending`]); the end of the turn carries
/// it out once (closes.rs).
#[derive(Debug, Clone)]
pub(super) enum Ending {
    /// Send an HTTP error status (before any upgrade) and close.
    Http {
        status: u16,
        text: &'static str,
        reason: Cow<'static, str>,
    },
    /// Send this complete HTTP reply (before any upgrade) and close.
    Reply(Box<[u8]>),
    /// Close once what is already queued is written.
    Flush,
    /// Send a close frame; wait for the client's close when `await_peer`.
    Close {
        code: u16,
        reason: Cow<'static, str>,
        await_peer: bool,
    },
    /// Answer the client's close frame (echoing its code) and close.
    Echo(Option<u16>),
    /// The socket is gone (EOF, reset, error): drop it now.
    Drop,
}

impl Ending {
    /// HTTP 503 with `reason` in the body.
    pub fn unavailable(reason: impl Into<Cow<'static, str>>) -> Ending {
        Ending::Http {
            status: 503,
            text: "Service Unavailable",
            reason: reason.into(),
        }
    }

    /// A close frame, without waiting for the client's.
    pub fn close(code: u16, reason: impl Into<Cow<'static, str>>) -> Ending {
        Ending::Close {
            code,
            reason: reason.into(),
            await_peer: false,
        }
    }
}

/// One WebSocket client connection.
#[derive(Debug)]
pub(super) struct Client {
    pub sock: Stream,
    pub serial: u64,
    pub peer: SocketAddr,
    pub phase: Phase,
    /// Bytes read but not yet consumed (a partial request head or frame).
    pub inbuf: Vec<u8>,
    pub reader: FrameReader,
    pub outq: OutQueue,
    pub ready: Readiness,
    /// Listed in the turn's dirty clients.
    pub dirty: bool,
    /// Listed to read again at the end of the turn.
    pub read_listed: bool,
    /// What its events carry; set once the client is accepted.
    pub context: Option<Context>,
    /// The backend that gets this client's events while it lives.
    pub backend: Option<ConnRef>,
    /// Reading stopped until the backend's buffer drains.
    pub paused: bool,
    /// A frame arrived since the last ping was sent.
    pub alive: bool,
    /// A ping was sent and its deadline has not been checked yet.
    pub awaiting_pong: bool,
    /// How this connection ends, recorded this turn and carried out at its
    /// end; from then on nothing more is read from it or queued on it.
    pub ending: Option<Box<Ending>>,
}

impl Client {
    /// A client just accepted, reading its upgrade request.
    pub fn new(sock: Stream, serial: u64, peer: SocketAddr, reader: FrameReader) -> Client {
        Client {
            sock,
            serial,
            peer,
            phase: Phase::Handshake,
            inbuf: Vec::new(),
            reader,
            outq: OutQueue::new(),
            ready: Readiness::default(),
            dirty: false,
            read_listed: false,
            context: None,
            backend: None,
            paused: false,
            alive: true,
            awaiting_pong: false,
            ending: None,
        }
    }

    /// Open and not ending this turn: it takes messages.
    pub fn is_open(&self) -> bool {
        matches!(self.phase, Phase::Open) && self.ending.is_none()
    }
}

/// One application backend connection.
#[derive(Debug)]
pub(super) struct Backend {
    pub sock: Stream,
    pub serial: u64,
    pub peer: SocketAddr,
    pub inbuf: Vec<u8>,
    pub out: Vec<u8>,
    pub out_pos: usize,
    pub ready: Readiness,
    /// Listed in the turn's dirty backends.
    pub dirty: bool,
    /// Listed to read again at the end of the turn.
    pub read_listed: bool,
    /// Bytes of lines received while more than `--max-backend-buffer`
    /// behind: a backend that sends that much without reading is closed.
    pub sent_while_behind: usize,
    /// Ending: out of the routing, no more lines carried out; removed at
    /// the end of the turn.
    pub closing: bool,
    /// Clients whose reading stopped because this backend's buffer passed
    /// `--max-backend-buffer`; resumed when it drains to half of that.
    pub paused: Vec<ConnRef>,
    /// Presented the backend token (always true without one); only then
    /// does it take part.
    pub authenticated: bool,
    /// Takes connection requests and client events (false: a publisher,
    /// which only sends and gets replies).
    pub events: bool,
    /// Whether a line from it was carried out yet: only its first line may
    /// declare it a publisher.
    pub spoke: bool,
    /// Without a backend token a backend takes events from its accept on,
    /// before its first line can say it is a publisher: the events that
    /// waited for a backend and were handed to it are kept here until that
    /// line (or `--connect-timeout`), to be handed on if it is one.
    pub handed: Vec<Vec<u8>>,
}

impl Backend {
    /// A backend just accepted.
    pub fn new(sock: Stream, serial: u64, peer: SocketAddr, authenticated: bool) -> Backend {
        Backend {
            sock,
            serial,
            peer,
            inbuf: Vec::new(),
            out: Vec::new(),
            out_pos: 0,
            ready: Readiness::default(),
            dirty: false,
            read_listed: false,
            sent_while_behind: 0,
            closing: false,
            paused: Vec::new(),
            authenticated,
            events: true,
            spoke: false,
            handed: Vec::new(),
        }
    }

    /// Bytes queued for this backend and not yet written.
    pub fn unsent(&self) -> usize {
        self.out.len() - self.out_pos
    }

    /// Whether `r` names this backend and it is not closing.
    pub fn is(&self, r: ConnRef) -> bool {
        self.serial == r.serial && !self.closing
    }

    /// Whether `r` names this backend and it takes client events.
    pub fn takes_events(&self, r: ConnRef) -> bool {
        self.is(r) && self.events && self.authenticated
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_ids_round_trip_and_stay_local() {
        let ids = ConnectionIds::new();
        let id = ids.connection_id(42);
        assert_eq!(ids.serial(&id), Some(42));
        let other = ConnectionIds::new();
        assert_eq!(other.serial(&id), None);
        for bad in [
            "",
            "42",
            "-42",
            &format!("{}-", ids.prefix),
            &format!("{}-+4", ids.prefix),
        ] {
            assert_eq!(ids.serial(bad), None, "{bad}");
        }
    }
}
