//! What brokers say to each other on the bus, and where.
//!
//! Channels (under `--cluster-prefix`, `pystrands` by default):
//! - `P:room:ROOM`: messages to a room; a broker subscribes while it has a
//!   member in it;
//! - `P:client:CLIENT_ID`: private messages and commands for a client id,
//!   while it has a connection of it;
//! - `P:node:PREFIX`: messages and commands for one connection, by the
//!   prefix of its connection id (each broker has its own);
//! - `P:broadcast`: broadcasts, always.
//!
//! A bus message is a header and a payload:
//! `'P' 1 KIND ORIGIN TARGET EXCLUDE PAYLOAD`, where KIND is [`Kind`],
//! ORIGIN the sending node id and TARGET a connection id (node channels;
//! empty otherwise), each a length byte and the bytes; EXCLUDE a 16-bit
//! count of connection ids (length byte and bytes each); and PAYLOAD the
//! rest: an encoded WebSocket frame, or a backend command line.

/// What a bus message carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A WebSocket frame to queue, as encoded, on the audience.
    Frame = 1,
    /// A backend command line (join_room, leave_room, disconnect,
    /// set_metadata) to carry out on the broker's own connections.
    Command = 2,
}

/// A decoded bus message, borrowing from the bytes it was read from.
#[derive(Debug, PartialEq, Eq)]
pub struct Message<'a> {
    /// What the payload is.
    pub kind: Kind,
    /// The node that sent it.
    pub origin: &'a str,
    /// A connection id (node channels), or empty.
    pub target: &'a str,
    /// Connection ids that must not get it.
    pub exclude: Vec<&'a str>,
    /// The frame or the command line.
    pub payload: &'a [u8],
}

const MAGIC: [u8; 2] = [b'P', 1];

/// Appends a bus message. Node ids, targets and excluded ids longer than
/// 255 bytes, and more than 65,535 excluded ids, are cut (connection ids
/// are short; `--node-id` is checked at start).
pub fn encode(
    out: &mut Vec<u8>,
    kind: Kind,
    origin: &str,
    target: &str,
    exclude: &[&str],
    payload: &[u8],
) {
    out.reserve(8 + origin.len() + target.len() + payload.len());
    out.extend_from_slice(&MAGIC);
    out.push(kind as u8);
    push_short(out, origin);
    push_short(out, target);
    let count = exclude.len().min(u16::MAX as usize);
    out.extend_from_slice(&(count as u16).to_be_bytes());
    for id in &exclude[..count] {
        push_short(out, id);
    }
    out.extend_from_slice(payload);
}

fn push_short(out: &mut Vec<u8>, s: &str) {
    let mut end = s.len().min(255);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    out.push(end as u8);
    out.extend_from_slice(&s.as_bytes()[..end]);
}

/// Reads a bus message; `None` for bytes that are not one.
pub fn decode(bytes: &[u8]) -> Option<Message<'_>> {
    let rest = bytes.strip_prefix(&MAGIC)?;
    let (&kind, rest) = rest.split_first()?;
    let kind = match kind {
        1 => Kind::Frame,
        2 => Kind::Command,
        _ => return None,
    };
    let (origin, rest) = short(rest)?;
    let (target, rest) = short(rest)?;
    let (count, mut rest) = rest.split_at_checked(2)?;
    let count = u16::from_be_bytes([count[0], count[1]]) as usize;
    let mut exclude = Vec::with_capacity(count.min(64));
    for _ in 0..count {
        let (id, tail) = short(rest)?;
        exclude.push(id);
        rest = tail;
    }
    Some(Message {
        kind,
        origin,
        target,
        exclude,
        payload: rest,
    })
}

fn short(bytes: &[u8]) -> Option<(&str, &[u8])> {
    let (&len, rest) = bytes.split_first()?;
    let (s, rest) = rest.split_at_checked(len as usize)?;
    Some((std::str::from_utf8(s).ok()?, rest))
}

/// What a channel is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel<'a> {
    /// A room.
    Room(&'a str),
    /// A client id.
    Client(&'a str),
    /// A node, by the prefix of its connection ids.
    Node(&'a str),
    /// Every client.
    Broadcast,
}

/// The names of the cluster's channels and keys.
#[derive(Debug, Clone)]
pub struct Names {
    prefix: String,
}

impl Names {
    /// Names under `prefix`.
    pub fn new(prefix: &str) -> Names {
        Names {
            prefix: prefix.to_owned(),
        }
    }

    /// The channel's name.
    pub fn channel(&self, channel: Channel<'_>) -> String {
        let p = &self.prefix;
        match channel {
            Channel::Room(room) => format!("{p}:room:{room}"),
            Channel::Client(id) => format!("{p}:client:{id}"),
            Channel::Node(prefix) => format!("{p}:node:{prefix}"),
            Channel::Broadcast => format!("{p}:broadcast"),
        }
    }

    /// What a channel name is about; `None` for a channel of another
    /// prefix or kind.
    pub fn parse<'c>(&self, name: &'c str) -> Option<Channel<'c>> {
        let rest = name.strip_prefix(self.prefix.as_str())?.strip_prefix(':')?;
        if rest == "broadcast" {
            return Some(Channel::Broadcast);
        }
        let (kind, value) = rest.split_once(':')?;
        match kind {
            "room" => Some(Channel::Room(value)),
            "client" => Some(Channel::Client(value)),
            "node" => Some(Channel::Node(value)),
            _ => None,
        }
    }

    /// The hash of a room's presence: connection id -> JSON of its client
    /// id and metadata.
    pub fn presence(&self, room: &str) -> String {
        format!("{}:presence:{room}", self.prefix)
    }

    /// The sorted set of a room's presence expiries: connection id, scored
    /// by the time (ms since the epoch) after which it no longer counts.
    pub fn presence_expiry(&self, room: &str) -> String {
        format!("{}:presence-expiry:{room}", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        let mut out = Vec::new();
        encode(
            &mut out,
            Kind::Frame,
            "node-a",
            "",
            &["ab12-3", "ab12-9"],
            &[0x81, 2, b'h', b'i'],
        );
        let m = decode(&out).unwrap();
        assert_eq!(m.kind, Kind::Frame);
        assert_eq!((m.origin, m.target), ("node-a", ""));
        assert_eq!(m.exclude, ["ab12-3", "ab12-9"]);
        assert_eq!(m.payload, &[0x81, 2, b'h', b'i']);
        let mut out = Vec::new();
        encode(&mut out, Kind::Command, "n", "ab12-3", &[], b"{}");
        let m = decode(&out).unwrap();
        assert_eq!(
            (m.kind, m.target, m.payload),
            (Kind::Command, "ab12-3", &b"{}"[..])
        );
        assert!(decode(b"nonsense").is_none());
        assert!(decode(&out[..5]).is_none());
    }

    #[test]
    fn channel_names_round_trip() {
        let names = Names::new("px");
        for c in [
            Channel::Room("a:b"),
            Channel::Client("u 1"),
            Channel::Node("ab12cd34"),
            Channel::Broadcast,
        ] {
            assert_eq!(names.parse(&names.channel(c)), Some(c));
        }
        assert_eq!(names.parse("other:room:a"), None);
        assert_eq!(names.parse("px:weird:a"), None);
    }
}
