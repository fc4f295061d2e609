//! The WebSocket side (RFC 6455): the upgrade handshake, the frame reader
//! for client frames and the encoder for server frames.

pub mod encode;
pub mod frame;
pub mod handshake;
