//! PyStrands broker: WebSocket clients on one side, application backends
//! (newline-delimited JSON over TCP) on the other.
//!
//! # Layout: where things happen
//! - [`config`]: flags and `PYSTRAND_*` variables -> validated [`config::Config`].
//! - [`server`]: the single-threaded mio loop that owns every connection,
//!   one concern per file:
//!   - `server/mod.rs`: poll, dispatch by connection kind (the token ->
//!     endpoint map), the end of the turn;
//!   - `server/accept.rs`: the listeners, accept errors and shortages;
//!   - `server/upgrade.rs`: upgrade requests, parked connection requests,
//!     the backend's answer (101, 403) or its absence (503);
//!   - `server/client_io.rs`: client reads (frames), writes, slow consumers;
//!   - `server/backend_io.rs`: backend reads (lines), auth, writes, backpressure;
//!   - `server/commands.rs`: one function per backend command, fan-out, replies;
//!   - `server/routing.rs`: which backend gets a client's events, the
//!     no-backend queue;
//!   - `server/closes.rs`: endings recorded during a turn, carried out at its end;
//!   - `server/timers.rs`: deadlines, the ping sweep, heartbeats, the drain;
//!   - `server/conn.rs`: the connection types; `server/stats.rs`: counters;
//!     `server/sys.rs`: descriptor limits.
//! - [`socket`]: readiness bits and the one sorting of socket results.
//! - [`ws`]: the upgrade handshake, the client frame reader, server frame encoding.
//! - [`backend`]: backend line decoding into commands, event and reply encoding.
//! - [`hub`]: who is where (rooms, client ids, open clients); the only place
//!   that walks membership: an [`hub::Audience`] resolves to connections.
//! - [`outq`]: per-socket queues of shared frames flushed with vectored writes.
//! - [`json`]: JSON string escaping shared by the encoders.
//! - [`fuzzing`]: harnesses of the fuzz targets, replayed by `cargo test`.
//!
//! # How a message travels
//! A client's frame: `client_io` reads it -> `routing` appends a
//! `new_message` line (the client's context serialised once at accept) to
//! its backend's buffer -> flushed at the end of the turn. A backend's
//! `message_to_room`: `backend_io` reads the line -> `backend::LineParser`
//! decodes it in place -> `commands` resolves the room through the hub,
//! encodes the frame once and queues the same buffer on every member ->
//! each queue is flushed with one vectored write at the end of the turn.
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
//!   stop the server. A connection ends in one way only: recorded during
//!   the turn, carried out once at its end.
#![deny(missing_docs)]

pub mod backend;
pub mod cluster;
pub mod config;
pub mod fuzzing;
pub mod hub;
pub mod json;
pub mod outq;
pub mod server;
pub mod socket;
pub mod ws;
