//! Cluster mode: several brokers share rooms, private messages,
//! broadcasts, kicks and presence through Redis pub/sub (`--redis-url`).
//!
//! This module holds what has no I/O: the bus message format
//! ([`bus`]), the channel and key names, and the RESP commands and replies
//! ([`resp`], with the `redis-protocol` crate's codec working on our own
//! buffers). The links to Redis are connections of the broker's one event
//! loop (src/server/cluster.rs): one subscriber connection, one command
//! connection with pipelined commands and a queue of pending replies.
//!
//! What travels on the bus is the WebSocket frame the sending broker
//! already encoded, behind a small header (kind, origin node, target,
//! exclude list): a receiving broker queues it on its members as it does a
//! local message, without re-encoding, and the sender's cost per message
//! does not depend on how many remote members there are.

pub mod bus;
pub mod resp;
