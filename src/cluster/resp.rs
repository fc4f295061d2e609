//! RESP2, the Redis wire protocol, through the `redis-protocol` crate:
//! commands encoded into our own output buffer, replies decoded in place
//! from our own input buffer (ranges into it, no copies).

use redis_protocol::resp2::decode::decode_range;
use redis_protocol::resp2::encode::encode_borrowed;
use redis_protocol::resp2::types::{BorrowedFrame, RangeFrame};

/// Appends a command (an array of bulk strings) to `out`.
pub fn push_command(out: &mut Vec<u8>, args: &[&[u8]]) {
    let parts: Vec<BorrowedFrame<'_>> = args.iter().map(|a| BorrowedFrame::BulkString(a)).collect();
    let frame = BorrowedFrame::Array(&parts);
    let start = out.len();
    out.resize(start + frame.encode_len(false), 0);
    // The buffer was sized by encode_len: encoding cannot run out of room.
    let written = encode_borrowed(&mut out[start..], &frame, false).unwrap_or(0);
    out.truncate(start + written);
}

/// A reply, as ranges into the buffer it was decoded from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `+OK` and the like.
    Simple(std::ops::Range<usize>),
    /// `-ERR ...`.
    Error(std::ops::Range<usize>),
    /// `:N`.
    Integer(i64),
    /// A bulk string.
    Bulk(std::ops::Range<usize>),
    /// An array.
    Array(Vec<Reply>),
    /// A null.
    Null,
}

impl Reply {
    fn from_range(frame: RangeFrame, offset: usize) -> Reply {
        let shift = |r: (usize, usize)| r.0 + offset..r.1 + offset;
        match frame {
            RangeFrame::SimpleString(r) => Reply::Simple(shift(r)),
            RangeFrame::Error(r) => Reply::Error(shift(r)),
            RangeFrame::Integer(i) => Reply::Integer(i),
            RangeFrame::BulkString(r) => Reply::Bulk(shift(r)),
            RangeFrame::Array(items) => Reply::Array(
                items
                    .into_iter()
                    .map(|f| Reply::from_range(f, offset))
                    .collect(),
            ),
            RangeFrame::Null => Reply::Null,
        }
    }

    /// The bytes of a simple or bulk string, or of an error.
    pub fn bytes<'b>(&self, buf: &'b [u8]) -> Option<&'b [u8]> {
        match self {
            Reply::Simple(r) | Reply::Bulk(r) | Reply::Error(r) => buf.get(r.clone()),
            _ => None,
        }
    }

    /// The same, as UTF-8.
    pub fn text<'b>(&self, buf: &'b [u8]) -> Option<&'b str> {
        self.bytes(buf).and_then(|b| std::str::from_utf8(b).ok())
    }
}

/// The next complete reply at `buf[offset..]` and its length; `Ok(None)`
/// when more bytes are needed; an error for bytes that are not RESP2.
pub fn next_reply(buf: &[u8], offset: usize) -> Result<Option<(Reply, usize)>, String> {
    match decode_range(&buf[offset..]) {
        Ok(Some((frame, len))) => Ok(Some((Reply::from_range(frame, offset), len))),
        Ok(None) => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_and_replies() {
        let mut out = Vec::new();
        push_command(&mut out, &[b"PUBLISH", b"ch", b"a\r\nb"]);
        assert_eq!(out, b"*3\r\n$7\r\nPUBLISH\r\n$2\r\nch\r\n$4\r\na\r\nb\r\n");
        let buf =
            b"xx:3\r\n*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$3\r\nabc\r\n+OK\r\n-ERR no\r\n$-1\r\n*2";
        let (r, n) = next_reply(buf, 2).unwrap().unwrap();
        assert_eq!((r, n), (Reply::Integer(3), 4));
        let (r, n) = next_reply(buf, 6).unwrap().unwrap();
        let Reply::Array(items) = r else { panic!() };
        assert_eq!(items[0].text(buf), Some("message"));
        assert_eq!(items[2].bytes(buf), Some(&b"abc"[..]));
        let mut at = 6 + n;
        let (r, n) = next_reply(buf, at).unwrap().unwrap();
        assert_eq!(r.text(buf), Some("OK"));
        at += n;
        let (r, n) = next_reply(buf, at).unwrap().unwrap();
        assert!(matches!(r, Reply::Error(_)));
        assert_eq!(r.text(buf), Some("ERR no"));
        at += n;
        let (r, n) = next_reply(buf, at).unwrap().unwrap();
        assert_eq!(r, Reply::Null);
        at += n;
        assert_eq!(next_reply(buf, at).unwrap(), None);
        assert!(next_reply(b"?what\r\n", 0).is_err());
    }
}
