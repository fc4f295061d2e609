//! The read side of RFC 6455: frame headers, unmasking, fragments, control
//! frames and UTF-8, for frames sent by clients.
//!
//! [`FrameReader::read`] decodes every complete frame in a buffer, unmasking
//! payloads in place and handing each message to a callback as a borrowed
//! slice: a message that arrives in one frame is never copied. Fragmented
//! messages are reassembled in a buffer owned by the reader, bounded by the
//! message size limit (checked against each frame header before its payload
//! arrives, so an oversized message is refused without buffering it).
//!
//! Errors are small `Copy` values that name the close code to send.

use std::io::Cursor;

use tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;

/// Something a client sent.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// A complete text message.
    Text(&'a str),
    /// A complete binary message.
    Binary(&'a [u8]),
    /// A ping with its payload (to be echoed in a pong).
    Ping(&'a [u8]),
    /// A pong (answers our pings).
    Pong,
    /// A close frame: its status code (if any) and reason.
    Close(Option<u16>, &'a str),
}

/// Why a client's byte stream must be closed, with the close code to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// 1002: a violation of RFC 6455 (the reason says which).
    Protocol(&'static str),
    /// 1007: a text message or close reason that is not UTF-8.
    InvalidUtf8,
    /// 1009: a message larger than `--max-message-size`.
    TooBig,
    /// 1009: a message in more fragments than `--max-fragments`.
    TooManyFragments,
}

impl FrameError {
    /// The close status code for this error.
    pub fn close_code(self) -> u16 {
        match self {
            FrameError::Protocol(_) => 1002,
            FrameError::InvalidUtf8 => 1007,
            FrameError::TooBig | FrameError::TooManyFragments => 1009,
        }
    }

    /// The close reason sent to the client.
    pub fn reason(self) -> &'static str {
        match self {
            FrameError::Protocol(why) => why,
            FrameError::InvalidUtf8 => "invalid UTF-8 in text message",
            FrameError::TooBig => "message too big (see --max-message-size)",
            FrameError::TooManyFragments => "message in too many fragments (see --max-fragments)",
        }
    }
}

/// A fragmented message being reassembled.
#[derive(Debug)]
struct Partial {
    text: bool,
    data: Vec<u8>,
    /// Prefix of `data` already known to be valid UTF-8.
    utf8_checked: usize,
    /// Frames received so far.
    frames: usize,
}

/// Decoder state of one client connection.
#[derive(Debug)]
pub struct FrameReader {
    max_message: usize,
    max_fragments: usize,
    /// Boxed: only a client in the middle of a fragmented message pays for it.
    partial: Option<Box<Partial>>,
}

impl FrameReader {
    /// A reader refusing messages larger than `max_message` bytes or
    /// split into more than `max_fragments` frames.
    pub fn new(max_message: usize, max_fragments: usize) -> Self {
        FrameReader {
            max_message,
            max_fragments,
            partial: None,
        }
    }

    /// Bytes held for a fragmented message in progress.
    pub fn buffered(&self) -> usize {
        self.partial.as_ref().map_or(0, |p| p.data.capacity())
    }

    /// Decodes the complete frames at the start of `buf`, calling `on_event`
    /// for each message and control frame, and returns how many bytes were
    /// consumed (the rest is an incomplete frame). Stops early, after the
    /// frame just delivered, when `on_event` returns `false`.
    pub fn read(
        &mut self,
        buf: &mut [u8],
        mut on_event: impl FnMut(Event<'_>) -> bool,
    ) -> Result<usize, FrameError> {
        let mut pos = 0;
        loop {
            let mut cursor = Cursor::new(&buf[pos..]);
            let (header, len) = match FrameHeader::parse(&mut cursor) {
                Ok(Some(h)) => h,
                Ok(None) => return Ok(pos),
                Err(_) => return Err(FrameError::Protocol("reserved opcode")),
            };
            let header_len = cursor.position() as usize;
            self.check_header(&header, len)?;
            let start = pos + header_len;
            let len = len as usize; // bounded by max_message in check_header
            if buf.len() - start < len {
                return Ok(pos);
            }
            let payload = &mut buf[start..start + len];
            if let Some(mask) = header.mask {
                unmask(payload, mask);
            }
            pos = start + len;
            if !self.dispatch(&header, payload, &mut on_event)? {
                return Ok(pos);
            }
        }
    }

    fn check_header(&self, header: &FrameHeader, len: u64) -> Result<(), FrameError> {
        if len > i64::MAX as u64 {
            return Err(FrameError::Protocol(
                "64-bit payload length with its most significant bit set",
            ));
        }
        if header.rsv1 || header.rsv2 || header.rsv3 {
            return Err(FrameError::Protocol(
                "reserved bits set without an extension",
            ));
        }
        if header.mask.is_none() {
            return Err(FrameError::Protocol("client frames must be masked"));
        }
        match header.opcode {
            OpCode::Control(_) => {
                if !header.is_final {
                    return Err(FrameError::Protocol("fragmented control frame"));
                }
                if len > 125 {
                    return Err(FrameError::Protocol("control frame payload over 125 bytes"));
                }
            }
            OpCode::Data(_) => {
                let held = self.partial.as_ref().map_or(0, |p| p.data.len()) as u64;
                if held.saturating_add(len) > self.max_message as u64 {
                    return Err(FrameError::TooBig);
                }
            }
        }
        Ok(())
    }

    fn dispatch(
        &mut self,
        header: &FrameHeader,
        payload: &[u8],
        on_event: &mut impl FnMut(Event<'_>) -> bool,
    ) -> Result<bool, FrameError> {
        let data_kind = match header.opcode {
            OpCode::Control(Control::Ping) => return Ok(on_event(Event::Ping(payload))),
            OpCode::Control(Control::Pong) => return Ok(on_event(Event::Pong)),
            OpCode::Control(Control::Close) => {
                let (code, reason) = parse_close(payload)?;
                return Ok(on_event(Event::Close(code, reason)));
            }
            OpCode::Control(Control::Reserved(_)) | OpCode::Data(Data::Reserved(_)) => {
                return Err(FrameError::Protocol("reserved opcode"))
            }
            OpCode::Data(kind) => kind,
        };
        match (data_kind, self.partial.as_mut()) {
            (Data::Continue, None) => Err(FrameError::Protocol(
                "continuation frame without a message in progress",
            )),
            (Data::Continue, Some(partial)) => {
                partial.frames += 1;
                if partial.frames > self.max_fragments {
                    return Err(FrameError::TooManyFragments);
                }
                partial.data.extend_from_slice(payload);
                if partial.text {
                    check_utf8_prefix(partial, header.is_final)?;
                }
                if !header.is_final {
                    return Ok(true);
                }
                let Some(done) = self.partial.take() else {
                    return Ok(true);
                };
                Ok(if done.text {
                    // Validated above; the whole buffer is UTF-8.
                    let text =
                        std::str::from_utf8(&done.data).map_err(|_| FrameError::InvalidUtf8)?;
                    on_event(Event::Text(text))
                } else {
                    on_event(Event::Binary(&done.data))
                })
            }
            (_, Some(_)) => Err(FrameError::Protocol(
                "new data frame while a fragmented message is in progress",
            )),
            (kind, None) => {
                let text = kind == Data::Text;
                if header.is_final {
                    return Ok(if text {
                        let text =
                            std::str::from_utf8(payload).map_err(|_| FrameError::InvalidUtf8)?;
                        on_event(Event::Text(text))
                    } else {
                        on_event(Event::Binary(payload))
                    });
                }
                let mut partial = Box::new(Partial {
                    text,
                    data: payload.to_vec(),
                    utf8_checked: 0,
                    frames: 1,
                });
                if text {
                    check_utf8_prefix(&mut partial, false)?;
                }
                self.partial = Some(partial);
                Ok(true)
            }
        }
    }
}

/// Fails as soon as the bytes received so far cannot begin valid UTF-8
/// (a sequence cut at the end of a non-final fragment is fine).
fn check_utf8_prefix(partial: &mut Partial, is_final: bool) -> Result<(), FrameError> {
    let rest = &partial.data[partial.utf8_checked..];
    match std::str::from_utf8(rest) {
        Ok(_) => partial.utf8_checked = partial.data.len(),
        Err(e) if e.error_len().is_none() && !is_final => {
            partial.utf8_checked += e.valid_up_to();
        }
        Err(_) => return Err(FrameError::InvalidUtf8),
    }
    Ok(())
}

/// Whether a peer may send `code` in a close frame: the codes RFC 6455 and
/// the IANA registry define for the wire (1000-1003, 1007-1014), and the
/// ranges for libraries and applications (3000-4999). 1004-1006 and 1015
/// are reserved or for local use only.
pub fn is_valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// Status code and reason of a close frame payload.
fn parse_close(payload: &[u8]) -> Result<(Option<u16>, &str), FrameError> {
    match payload.len() {
        0 => Ok((None, "")),
        1 => Err(FrameError::Protocol("close frame with a 1-byte payload")),
        _ => {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            if !is_valid_close_code(code) {
                return Err(FrameError::Protocol("invalid close code"));
            }
            let reason = std::str::from_utf8(&payload[2..]).map_err(|_| FrameError::InvalidUtf8)?;
            Ok((Some(code), reason))
        }
    }
}

/// XORs `payload` with the 4-byte client mask, eight bytes at a time.
pub fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    let wide = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    let mut chunks = payload.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(word) ^ wide).to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i % 4];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame.
    fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x12, 0x34, 0x56, 0x78];
        let mut out = vec![first];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n < 65536 => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    fn collect(
        reader: &mut FrameReader,
        buf: &mut [u8],
    ) -> (Result<usize, FrameError>, Vec<String>) {
        let mut seen = Vec::new();
        let r = reader.read(buf, |e| {
            seen.push(match e {
                Event::Text(t) => format!("text:{t}"),
                Event::Binary(b) => format!("binary:{}", b.len()),
                Event::Ping(p) => format!("ping:{}", p.len()),
                Event::Pong => "pong".into(),
                Event::Close(c, r) => format!("close:{c:?}:{r}"),
            });
            true
        });
        (r, seen)
    }

    #[test]
    fn reassembles_fragments_around_a_ping() {
        let mut buf = frame(0x01, b"hel");
        buf.extend(frame(0x89, b"p"));
        buf.extend(frame(0x80, "lo ü".as_bytes()));
        let mut r = FrameReader::new(1024, 16);
        let (res, seen) = collect(&mut r, &mut buf);
        assert_eq!(res, Ok(buf.len()));
        assert_eq!(seen, ["ping:1", "text:hello ü"]);
    }

    #[test]
    fn incomplete_frame_is_left_for_later() {
        let whole = frame(0x81, &[b'a'; 300]);
        let mut r = FrameReader::new(1024, 16);
        let mut part = whole[..100].to_vec();
        assert_eq!(collect(&mut r, &mut part), (Ok(0), vec![]));
        let mut all = whole.clone();
        let (res, seen) = collect(&mut r, &mut all);
        assert_eq!(res, Ok(whole.len()));
        assert_eq!(seen[0].len(), 5 + 300);
    }

    #[test]
    fn errors_carry_their_close_codes() {
        let mut r = FrameReader::new(10, 16);
        let mut unmasked = vec![0x81, 0x01, b'a'];
        assert_eq!(
            collect(&mut r, &mut unmasked).0.unwrap_err().close_code(),
            1002
        );
        let mut big = frame(0x81, &[b'a'; 11]);
        assert_eq!(collect(&mut r, &mut big).0, Err(FrameError::TooBig));
        let mut bad = frame(0x81, &[0xff, 0xfe]);
        assert_eq!(collect(&mut r, &mut bad).0, Err(FrameError::InvalidUtf8));
        let mut rsv = frame(0xC1, b"a");
        assert_eq!(collect(&mut r, &mut rsv).0.unwrap_err().close_code(), 1002);
        let mut cont = frame(0x80, b"a");
        assert_eq!(collect(&mut r, &mut cont).0.unwrap_err().close_code(), 1002);
        let mut code = frame(0x88, &[0x03, 0xe7]); // 999
        assert_eq!(collect(&mut r, &mut code).0.unwrap_err().close_code(), 1002);
    }

    #[test]
    fn invalid_utf8_fails_in_the_first_fragment() {
        let mut r = FrameReader::new(1024, 16);
        let mut buf = frame(0x01, &[b'a', 0xff]);
        assert_eq!(collect(&mut r, &mut buf).0, Err(FrameError::InvalidUtf8));
        // A sequence split across fragments is fine.
        let mut r = FrameReader::new(1024, 16);
        let euro = "€".as_bytes();
        let mut buf = frame(0x01, &euro[..1]);
        buf.extend(frame(0x80, &euro[1..]));
        assert_eq!(collect(&mut r, &mut buf).1, ["text:€"]);
    }

    #[test]
    fn fragmented_size_limit_counts_the_whole_message() {
        let mut r = FrameReader::new(8, 16);
        let mut buf = frame(0x01, b"12345");
        buf.extend(frame(0x80, b"6789"));
        assert_eq!(collect(&mut r, &mut buf).0, Err(FrameError::TooBig));
    }

    #[test]
    fn fragment_count_is_bounded() {
        let mut r = FrameReader::new(1024, 3);
        let mut buf = frame(0x01, b"a");
        buf.extend(frame(0x00, b"b"));
        buf.extend(frame(0x00, b"c"));
        buf.extend(frame(0x00, b"d"));
        assert_eq!(
            collect(&mut r, &mut buf).0,
            Err(FrameError::TooManyFragments)
        );
    }

    #[test]
    fn close_frame_parsed() {
        let mut r = FrameReader::new(8, 16);
        let mut buf = frame(0x88, &[0x03, 0xe8, b'o', b'k']);
        assert_eq!(collect(&mut r, &mut buf).1, ["close:Some(1000):ok"]);
    }

    #[test]
    fn close_codes_follow_the_registry() {
        for code in [1000u16, 1003, 1007, 1011, 1014, 3000, 4999] {
            let mut r = FrameReader::new(8, 16);
            let mut buf = frame(0x88, &code.to_be_bytes());
            assert_eq!(
                collect(&mut r, &mut buf).1,
                [format!("close:Some({code}):")],
                "{code}"
            );
        }
        for code in [0u16, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000] {
            let mut r = FrameReader::new(8, 16);
            let mut buf = frame(0x88, &code.to_be_bytes());
            let e = collect(&mut r, &mut buf).0.unwrap_err();
            assert_eq!(e.close_code(), 1002, "{code}");
        }
    }

    #[test]
    fn a_64_bit_length_with_its_top_bit_set_is_a_protocol_error() {
        let mut r = FrameReader::new(1 << 20, 16);
        let mut buf = vec![0x82, 0x80 | 127];
        buf.extend_from_slice(&(1u64 << 63 | 5).to_be_bytes());
        buf.extend_from_slice(&[1, 2, 3, 4]);
        let e = collect(&mut r, &mut buf).0.unwrap_err();
        assert_eq!(e.close_code(), 1002);
    }

    #[test]
    fn unmask_matches_bytewise_xor() {
        let mask = [1, 2, 3, 4];
        let orig: Vec<u8> = (0..37).collect();
        let mut data = orig.clone();
        unmask(&mut data, mask);
        for (i, (a, b)) in data.iter().zip(&orig).enumerate() {
            assert_eq!(*a, b ^ mask[i % 4]);
        }
    }
}
