//! The few pieces of RFC 6455 the load generator needs, on raw bytes: the
//! client's upgrade request and the check of the 101 reply, the server side
//! of the upgrade for the limit server, frame headers both ways, and the
//! payload layout that carries sequence number, send timestamp and tag.

use tungstenite::handshake::derive_accept_key;

/// Opcodes used here.
pub const OP_CONT: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// A Sec-WebSocket-Key (base64 of 16 bytes) derived from `seed`.
pub fn client_key(seed: u64) -> [u8; 24] {
    let mut raw = [0u8; 16];
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    for chunk in raw.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    let mut out = [0u8; 24];
    base64(&raw, &mut out);
    out
}

fn base64(input: &[u8; 16], out: &mut [u8; 24]) {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut o = 0;
    for c in input.chunks(3) {
        let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        let chars = [n >> 18, n >> 12, n >> 6, n].map(|v| T[(v & 63) as usize]);
        out[o..o + 4].copy_from_slice(&chars);
        if c.len() < 3 {
            out[o + 3] = b'=';
        }
        if c.len() < 2 {
            out[o + 2] = b'=';
        }
        o += 4;
    }
}

/// The client's HTTP upgrade request.
pub fn upgrade_request(out: &mut Vec<u8>, path: &str, host: &str, key: &[u8; 24]) {
    out.extend_from_slice(b"GET ");
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    out.extend_from_slice(host.as_bytes());
    out.extend_from_slice(
        b"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: ",
    );
    out.extend_from_slice(key);
    out.extend_from_slice(b"\r\nUser-Agent: pystrands-loadgen\r\n\r\n");
}

/// What the bytes received so far say about the upgrade.
#[derive(Debug, PartialEq)]
pub enum UpgradeReply {
    /// No blank line yet.
    Incomplete,
    /// 101 with the right accept key; frames start at this offset.
    Switched(usize),
    /// Any other status code.
    Refused(u16),
    /// 101 without a matching Sec-WebSocket-Accept, or garbage.
    Invalid(&'static str),
}

/// Offset just past the first "\r\n\r\n", if any.
pub fn header_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

fn header_value<'a>(head: &'a [u8], name: &str) -> Option<&'a [u8]> {
    head.split(|&b| b == b'\n').skip(1).find_map(|line| {
        let colon = line.iter().position(|&b| b == b':')?;
        line[..colon]
            .eq_ignore_ascii_case(name.as_bytes())
            .then(|| line[colon + 1..].trim_ascii())
    })
}

/// Checks the server's answer to the upgrade request sent with `key`.
pub fn parse_upgrade_reply(buf: &[u8], key: &[u8; 24]) -> UpgradeReply {
    let Some(end) = header_end(buf) else {
        if buf.len() > 16 * 1024 {
            return UpgradeReply::Invalid("upgrade reply header over 16 KiB");
        }
        return UpgradeReply::Incomplete;
    };
    let head = &buf[..end];
    let status = head
        .strip_prefix(b"HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|s| std::str::from_utf8(s).ok())
        .and_then(|s| s.parse::<u16>().ok());
    match status {
        Some(101) => {
            let want = derive_accept_key(key);
            match header_value(head, "sec-websocket-accept") {
                Some(v) if v == want.as_bytes() => UpgradeReply::Switched(end),
                Some(_) => UpgradeReply::Invalid("wrong Sec-WebSocket-Accept"),
                None => UpgradeReply::Invalid("101 without Sec-WebSocket-Accept"),
            }
        }
        Some(code) => UpgradeReply::Refused(code),
        None => UpgradeReply::Invalid("malformed status line"),
    }
}

/// Server side (limit server): from a complete request head, the request
/// path and the 101 reply to send.
pub fn accept_upgrade(head: &[u8], reply: &mut Vec<u8>) -> Option<Vec<u8>> {
    let path = head
        .strip_prefix(b"GET ")?
        .split(|&b| b == b' ')
        .next()?
        .to_vec();
    let key = header_value(head, "sec-websocket-key")?;
    reply.extend_from_slice(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ",
    );
    reply.extend_from_slice(derive_accept_key(key).as_bytes());
    reply.extend_from_slice(b"\r\n\r\n");
    Some(path)
}

/// A parsed frame header.
#[derive(Clone, Copy, Debug)]
pub struct FrameHead {
    pub fin: bool,
    pub opcode: u8,
    pub mask: Option<[u8; 4]>,
    /// Bytes of header, mask key included.
    pub header_len: usize,
    pub payload_len: usize,
}

/// Parses the frame header at the start of `buf`: None while incomplete.
pub fn parse_head(buf: &[u8]) -> Option<FrameHead> {
    let b0 = *buf.first()?;
    let b1 = *buf.get(1)?;
    let (len, mut at) = match b1 & 0x7f {
        126 => (
            u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?) as u64,
            4,
        ),
        127 => (u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?), 10),
        n => (n as u64, 2),
    };
    let mask = if b1 & 0x80 != 0 {
        let m: [u8; 4] = buf.get(at..at + 4)?.try_into().ok()?;
        at += 4;
        Some(m)
    } else {
        None
    };
    Some(FrameHead {
        fin: b0 & 0x80 != 0,
        opcode: b0 & 0x0f,
        mask,
        header_len: at,
        payload_len: usize::try_from(len).unwrap_or(usize::MAX),
    })
}

/// Appends a frame header (FIN set) for a payload of `len` bytes.
pub fn push_head(out: &mut Vec<u8>, opcode: u8, len: usize, mask: Option<[u8; 4]>) {
    let m = if mask.is_some() { 0x80 } else { 0 };
    out.push(0x80 | opcode);
    if len < 126 {
        out.push(m | len as u8);
    } else if len <= u16::MAX as usize {
        out.push(m | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(m | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    if let Some(k) = mask {
        out.extend_from_slice(&k);
    }
}

/// Appends a masked client frame.
pub fn push_client_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8], mask: [u8; 4]) {
    push_head(out, opcode, payload.len(), Some(mask));
    let start = out.len();
    out.extend_from_slice(payload);
    apply_mask(&mut out[start..], mask);
}

/// XORs `data` with the mask key (masking and unmasking are the same).
pub fn apply_mask(data: &mut [u8], mask: [u8; 4]) {
    let word = u32::from_ne_bytes(mask);
    let mut chunks = data.chunks_exact_mut(4);
    for c in &mut chunks {
        let v = u32::from_ne_bytes([c[0], c[1], c[2], c[3]]) ^ word;
        c.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i];
    }
}

/// Payload layout: 16 hex digits of sequence number, 16 of send timestamp
/// (CLOCK_MONOTONIC ns), 8 of tag (room, client index, or BROADCAST_TAG),
/// then 'x' up to the payload size. ASCII only, so it is also a JSON string
/// body needing no escapes.
pub const PAYLOAD_MIN: usize = 40;
/// Tag of broadcast messages.
pub const BROADCAST_TAG: u32 = 0xffff_ffff;

const HEX: &[u8; 16] = b"0123456789abcdef";

fn put_hex(out: &mut [u8], mut v: u64) {
    for b in out.iter_mut().rev() {
        *b = HEX[(v & 15) as usize];
        v >>= 4;
    }
}

fn get_hex(b: &[u8]) -> Option<u64> {
    b.iter().try_fold(0u64, |acc, &c| {
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => return None,
        };
        Some(acc << 4 | d as u64)
    })
}

/// Appends a payload of `size` bytes (size >= PAYLOAD_MIN).
pub fn push_payload(out: &mut Vec<u8>, size: usize, seq: u64, ts: u64, tag: u32) {
    let start = out.len();
    out.resize(start + size, b'x');
    let p = &mut out[start..];
    put_hex(&mut p[0..16], seq);
    put_hex(&mut p[16..32], ts);
    put_hex(&mut p[32..40], tag as u64);
}

/// (seq, timestamp, tag) of a payload, None if it is not one of ours.
pub fn read_payload(p: &[u8]) -> Option<(u64, u64, u32)> {
    if p.len() < PAYLOAD_MIN {
        return None;
    }
    Some((
        get_hex(&p[0..16])?,
        get_hex(&p[16..32])?,
        get_hex(&p[32..40])? as u32,
    ))
}
