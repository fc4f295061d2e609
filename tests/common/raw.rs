//! Raw bytes, for tests that must see or break the protocol: hand-made
//! client frames, server frames read by hand, HTTP heads, socket options.
//! Raw streams made here have read and write timeouts of [`TIMEOUT`], so
//! every read, and so every wait, is bounded.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;

use serde_json::json;

use super::{Backend, Broker, Ws, TIMEOUT};

/// A client frame: FIN bit, opcode, payload, masked with `mask` when given.
pub fn frame(fin: bool, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = vec![(u8::from(fin) << 7) | opcode];
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(mask_bit | n as u8),
        n if n <= 0xFFFF => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(key) => {
            out.extend_from_slice(&key);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

/// A final, masked client frame.
pub fn masked(opcode: u8, payload: &[u8]) -> Vec<u8> {
    frame(true, opcode, payload, Some([0x37, 0xfa, 0x21, 0x3d]))
}

/// One message in fragments, a client frame per part: the first with
/// `opcode`, the others continuations, FIN on the last only, each masked
/// with `mask`. A test writes them one by one or joins them into one write.
pub fn fragments(opcode: u8, parts: &[&[u8]], mask: Option<[u8; 4]>) -> Vec<Vec<u8>> {
    parts
        .iter()
        .enumerate()
        .map(|(i, part)| {
            let opcode = if i == 0 { opcode } else { CONTINUATION };
            frame(i + 1 == parts.len(), opcode, part, mask)
        })
        .collect()
}

/// Opcodes.
pub const CONTINUATION: u8 = 0x0;
pub const TEXT: u8 = 0x1;
pub const CLOSE: u8 = 0x8;
pub const PING: u8 = 0x9;
pub const PONG: u8 = 0xA;

/// Writes raw bytes under a tungstenite client (which never knows).
pub fn send_raw(ws: &mut Ws, bytes: &[u8]) {
    ws.get_mut().write_all(bytes).expect("write raw bytes");
}

/// Writes raw bytes to a raw client stream.
pub fn raw_write(stream: &mut TcpStream, bytes: &[u8]) {
    stream.write_all(bytes).expect("write raw bytes");
}

/// Reads one server frame from a raw stream: (opcode, payload). Server
/// frames must be unmasked and unfragmented here.
pub fn read_frame(stream: &mut TcpStream) -> (u8, Vec<u8>) {
    let mut head = [0u8; 2];
    stream.read_exact(&mut head).expect("a frame header");
    assert_eq!(head[0] & 0x80, 0x80, "server frames here are final");
    assert_eq!(head[1] & 0x80, 0, "server frames must not be masked");
    let len = match head[1] & 0x7f {
        126 => {
            let mut b = [0u8; 2];
            stream.read_exact(&mut b).unwrap();
            u64::from(u16::from_be_bytes(b))
        }
        127 => {
            let mut b = [0u8; 8];
            stream.read_exact(&mut b).unwrap();
            u64::from_be_bytes(b)
        }
        n => u64::from(n),
    };
    let mut payload = vec![0u8; len as usize];
    stream.read_exact(&mut payload).expect("a frame payload");
    (head[0] & 0x0f, payload)
}

/// The close code and reason of a close frame's payload.
pub fn close_payload(payload: &[u8]) -> (u16, String) {
    assert!(
        payload.len() >= 2,
        "close frame without a code: {payload:?}"
    );
    (
        u16::from_be_bytes([payload[0], payload[1]]),
        String::from_utf8_lossy(&payload[2..]).into_owned(),
    )
}

/// What [`expect_close`] checks after the broker's close frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AfterClose {
    /// The broker then ends the connection: read to the end (bounded).
    Eof,
    /// Nothing: the connection may stay open (a client that does not
    /// answer the close keeps it until --close-timeout).
    Unchecked,
}

/// The broker's next frame on a raw client must be a close frame with
/// `code`; then `after`. Returns what came after the close frame before
/// the end of the connection (nothing read with [`AfterClose::Unchecked`]).
/// Bounded by the stream's read timeout.
pub fn expect_close(stream: &mut TcpStream, code: u16, after: AfterClose) -> Vec<u8> {
    let (opcode, payload) = read_frame(stream);
    assert_eq!(opcode, CLOSE, "expected a close frame, got opcode {opcode}");
    assert_eq!(close_payload(&payload).0, code, "close payload {payload:?}");
    match after {
        AfterClose::Eof => read_to_eof(stream),
        AfterClose::Unchecked => Vec::new(),
    }
}

/// Reads until the peer closes the stream (bounded); returns what came.
pub fn read_to_eof(stream: &mut TcpStream) -> Vec<u8> {
    let mut all = Vec::new();
    match stream.read_to_end(&mut all) {
        Ok(_) => all,
        Err(e) => panic!(
            "the connection was not closed within {TIMEOUT:?} ({e}); got {:?}",
            String::from_utf8_lossy(&all)
        ),
    }
}

/// A raw TCP connection to `addr` (the broker's WebSocket port), with read
/// and write timeouts of [`TIMEOUT`].
pub fn raw_connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("connect to the WebSocket port");
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(TIMEOUT)).unwrap();
    stream
}

/// A TCP connection to `addr` whose receive buffer is `rcvbuf` bytes from
/// the start (set before connecting, so the window it advertises is small
/// from the first segment), with read and write timeouts of [`TIMEOUT`].
pub fn connect_with_rcvbuf(addr: SocketAddr, rcvbuf: usize) -> TcpStream {
    use std::os::fd::FromRawFd;
    let family = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: a new socket we own; closed by the TcpStream made from it.
    let fd = unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` is a socket we just made and now own.
    let stream = unsafe { TcpStream::from_raw_fd(fd) };
    set_socket_buffer(&stream, libc::SO_RCVBUF, rcvbuf);
    let std::net::SocketAddr::V4(v4) = addr else {
        panic!("IPv4 only: {addr}");
    };
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: v4.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*v4.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: connect on our socket with a valid sockaddr_in of its size.
    let rc = unsafe {
        libc::connect(
            fd,
            (&sin as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "connect: {}", std::io::Error::last_os_error());
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(TIMEOUT)).unwrap();
    stream
}

/// [`raw_join`] for a client whose receive buffer is `rcvbuf` bytes from
/// its first segment: one that reads little or nothing fills quickly.
pub fn raw_join_small(
    broker: &Broker,
    backend: &mut Backend,
    client_id: &str,
    room: &str,
    rcvbuf: usize,
) -> TcpStream {
    let mut stream = connect_with_rcvbuf(broker.ws, rcvbuf);
    stream
        .write_all(upgrade_head(broker, &format!("/ws/{room}")).as_bytes())
        .unwrap();
    accepted(stream, backend, client_id, room)
}

/// A hand-made upgrade request for `path`.
fn upgrade_head(broker: &Broker, path: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        broker.ws
    )
}

/// `backend` accepts the request `stream` sent, into `room` as
/// `client_id`; returns the stream after the 101 head.
fn accepted(
    mut stream: TcpStream,
    backend: &mut Backend,
    client_id: &str,
    room: &str,
) -> TcpStream {
    let request = backend.expect("connection_request");
    backend.respond(
        &request,
        json!({"accepted": true, "client_id": client_id, "room_id": room}),
    );
    let head = read_http_head(&mut stream);
    assert_eq!(status_of(&head), 101, "upgrade refused: {head}");
    backend.expect("new_connection");
    stream
}

/// Opens a raw TCP connection to the WebSocket port and sends an upgrade
/// request for `path` by hand.
pub fn raw_upgrade_request(broker: &Broker, path: &str) -> TcpStream {
    let mut stream = raw_connect(broker.ws);
    stream
        .write_all(upgrade_head(broker, path).as_bytes())
        .unwrap();
    stream
}

/// Sends `head` (all or part of a request head) on a new raw connection to
/// the WebSocket port; returns everything the broker answers, up to the
/// end of the connection (bounded), as text.
pub fn send_head(broker: &Broker, head: &str) -> String {
    let mut stream = raw_connect(broker.ws);
    stream.write_all(head.as_bytes()).unwrap();
    String::from_utf8_lossy(&read_to_eof(&mut stream)).into_owned()
}

/// The broker must refuse the upgrade on `stream` with HTTP `status`:
/// everything it sends up to the end of the connection (bounded) is one
/// refusal, without a 101 anywhere. Returns the reply.
pub fn expect_refused_before_upgrade(stream: &mut TcpStream, status: u16) -> String {
    let reply = String::from_utf8_lossy(&read_to_eof(stream)).into_owned();
    assert_eq!(status_of(&reply), status, "reply: {reply:?}");
    assert!(!reply.contains("101"), "a 101 was sent: {reply:?}");
    reply
}

/// Reads an HTTP response head (up to the blank line) byte by byte, so
/// nothing after it is consumed.
pub fn read_http_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(0) => panic!(
                "connection closed inside the response head: {:?}",
                String::from_utf8_lossy(&head)
            ),
            Ok(_) => head.push(byte[0]),
            Err(e) => panic!("no complete response head within {TIMEOUT:?}: {e}"),
        }
    }
    String::from_utf8(head).expect("an ASCII response head")
}

/// The status code of an HTTP response head.
pub fn status_of(head: &str) -> u16 {
    head.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {head:?}"))
}

/// A raw client accepted by `backend` into `room` (as `client_id`), ready
/// for hand-made frames. Returns the stream after the 101 head.
pub fn raw_join(broker: &Broker, backend: &mut Backend, client_id: &str, room: &str) -> TcpStream {
    let stream = raw_upgrade_request(broker, &format!("/ws/{room}"));
    accepted(stream, backend, client_id, room)
}

/// Sets a socket's buffer size (`option` is `SO_SNDBUF` or `SO_RCVBUF`):
/// a small buffer makes the kernel hold little, so a peer that stops
/// reading blocks its writer soon.
pub fn set_socket_buffer(stream: &TcpStream, option: libc::c_int, bytes: usize) {
    let bytes = libc::c_int::try_from(bytes).expect("a buffer size that fits a c_int");
    // SAFETY: setsockopt on a socket we own, with a c_int option value.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            (&bytes as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "setsockopt failed");
}
