//! PyStrands broker: WebSocket clients on one side, application backends
//! (newline-delimited JSON over TCP) on the other.
//!
//! # Layout
//! - [`config`]: flags and `PYSTRAND_*` variables -> validated [`config::Config`].
//! - [`server`]: the single-threaded mio loop that owns every connection.
//! - [`ws`]: the upgrade handshake, the client frame reader, server frame encoding.
//! - [`backend`]: backend line decoding into commands, event line encoding.
//! - [`hub`]: rooms, client ids and open clients, for fan-out.
//! - [`outq`]: per-socket queues of shared frames flushed with vectored writes.
//! - [`json`]: JSON string escaping shared by the encoders.
//! - [`fuzzing`]: harnesses of the fuzz targets, replayed by `cargo test`.
//!
//! # Invariants
//! - One slow or dead peer never delays delivery to any other: sockets are
//!   non-blocking, each client's queue is bounded by `--max-outbound-bytes`
//!   and a client past it is closed (1008).
//! - Per client, events reach the backend in the order the client sent
//!   them (one backend per client while it lives); per room, clients get
//!   messages in the order the backend sent them.
//! - A room message is encoded once; members' queues share that buffer.
//! - Memory is bounded by configuration: request heads, frames, messages,
//!   backend lines, client queues and the no-backend event queue all have
//!   limits with flags.
//! - Errors stay with their connection; only start-up and poll failures
//!   stop the server.
#![deny(missing_docs)]

pub mod backend;
pub mod config;
pub mod fuzzing;
pub mod hub;
pub mod json;
pub mod outq;
pub mod server;
pub mod ws;
