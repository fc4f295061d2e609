//! The write side: server frames (never masked), encoded once.
//!
//! A frame is built as one contiguous buffer, header then payload, and
//! returned as a shared [`Shared`] so that room fan-out queues the same
//! allocation on every member's socket.

use std::rc::Rc;

use tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;

use crate::outq::Shared;

/// Largest header of an unmasked server frame.
const MAX_HEADER: usize = 10;

/// Appends a final, unmasked frame with `opcode` and `payload` to `out`.
pub fn write_frame(out: &mut Vec<u8>, opcode: OpCode, payload: &[u8]) {
    out.reserve(MAX_HEADER + payload.len());
    let header = FrameHeader {
        opcode,
        ..FrameHeader::default()
    };
    // Writing into a Vec cannot fail.
    let _ = header.format(payload.len() as u64, out);
    out.extend_from_slice(payload);
}

/// A final, unmasked frame with `opcode` and `payload` as a shared buffer,
/// built in place: one allocation and one copy of the payload (a `Vec`
/// turned into an `Rc<[u8]>` would cost a second of each).
fn shared_frame(opcode: OpCode, payload: &[u8]) -> Shared {
    let mut header = [0u8; MAX_HEADER];
    let header_len = {
        let mut cursor = &mut header[..];
        let frame = FrameHeader {
            opcode,
            ..FrameHeader::default()
        };
        // Ten bytes hold any unmasked header, so this cannot fail.
        let _ = frame.format(payload.len() as u64, &mut cursor);
        MAX_HEADER - cursor.len()
    };
    let mut frame = Rc::<[u8]>::new_uninit_slice(header_len + payload.len());
    let bytes = Rc::get_mut(&mut frame).expect("a new Rc has no other owner");
    let start = bytes.as_mut_ptr().cast::<u8>();
    // SAFETY: the slice is `header_len + payload.len()` bytes long and owned
    // by `frame` alone; the two copies write all of it, without overlap
    // (the sources are other buffers), so every byte is initialised.
    unsafe {
        std::ptr::copy_nonoverlapping(header.as_ptr(), start, header_len);
        std::ptr::copy_nonoverlapping(payload.as_ptr(), start.add(header_len), payload.len());
        frame.assume_init()
    }
}

/// A complete text (or binary) message frame as a shared buffer.
pub fn message(payload: &[u8], binary: bool) -> Shared {
    shared_frame(
        OpCode::Data(if binary { Data::Binary } else { Data::Text }),
        payload,
    )
}

/// A ping (the broker's liveness check).
pub fn ping(payload: &[u8]) -> Shared {
    shared_frame(OpCode::Control(Control::Ping), payload)
}

/// A pong echoing a ping's payload.
pub fn pong(payload: &[u8]) -> Shared {
    shared_frame(OpCode::Control(Control::Pong), payload)
}

/// A close frame with a status code and a reason (cut to fit 125 bytes at a
/// character boundary); `None` sends an empty close payload.
pub fn close(code: Option<u16>, reason: &str) -> Shared {
    let mut payload = Vec::with_capacity(125);
    if let Some(code) = code {
        payload.extend_from_slice(&code.to_be_bytes());
        let mut end = reason.len().min(123);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        payload.extend_from_slice(&reason.as_bytes()[..end]);
    }
    let mut out = Vec::with_capacity(MAX_HEADER + payload.len());
    write_frame(&mut out, OpCode::Control(Control::Close), &payload);
    Rc::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_lengths() {
        assert_eq!(&message(b"hi", false)[..], &[0x81, 2, b'h', b'i']);
        let m = message(&[0u8; 300], true);
        assert_eq!(&m[..4], &[0x82, 126, 1, 44]);
        let m = message(&vec![0u8; 70_000], false);
        assert_eq!(m[1], 127);
        assert_eq!(m.len(), 10 + 70_000);
        assert_eq!(&m[2..10], &70_000u64.to_be_bytes());
        let payload: Vec<u8> = (0..70_000u32).map(|i| i as u8).collect();
        assert_eq!(&message(&payload, true)[10..], &payload[..]);
        assert_eq!(&message(b"", false)[..], &[0x81, 0]);
        assert_eq!(&ping(b"p")[..], &[0x89, 1, b'p']);
        assert_eq!(&pong(b"")[..], &[0x8A, 0]);
    }

    #[test]
    fn close_payload() {
        assert_eq!(
            &close(Some(1001), "bye")[..],
            &[0x88, 5, 0x03, 0xe9, b'b', b'y', b'e']
        );
        assert_eq!(&close(None, "ignored")[..], &[0x88, 0]);
        assert!(close(Some(1000), &"é".repeat(100)).len() <= 2 + 125);
    }
}
