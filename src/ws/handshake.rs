//! The HTTP upgrade: parse a client's request (bounded), build the replies.
//!
//! Parsing uses `httparse` over the bytes read so far; nothing is copied
//! until the request is complete. A complete request is checked against
//! RFC 6455 section 4.2.1 and turned into an [`UpgradeRequest`]: the accept
//! key, the path reported to backends as `url`, and the headers already
//! serialised as the JSON object a `connection_request` carries (names in
//! canonical MIME form, each with the list of its values).

use std::fmt::Write as _;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use tungstenite::handshake::derive_accept_key;

use crate::json;

/// What a complete, valid upgrade request yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpgradeRequest {
    /// `Sec-WebSocket-Accept` value for the 101 reply.
    pub accept_key: String,
    /// Request path without query string, percent-decoded when that gives
    /// UTF-8 (as the original broker reported it).
    pub url: String,
    /// The raw query string, without `?` (empty when absent).
    pub query: String,
    /// The subprotocols offered in `Sec-WebSocket-Protocol`, comma-separated
    /// as sent (several header lines joined with `,`; empty when none).
    pub protocols: String,
    /// `{"Name":["value",...],...}` in request order.
    pub headers_json: Vec<u8>,
    /// The values of the `Origin` headers (a browser sends one).
    pub origins: Vec<String>,
}

/// Why an upgrade request was refused before reaching a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeError {
    /// 400 Bad Request, with the reason sent in the body.
    BadRequest(&'static str),
    /// 400 with `Sec-WebSocket-Version: 13`: the client speaks another version.
    BadVersion,
    /// 431: the request head is larger than `--max-request-size` or carries
    /// more than `--max-headers` headers.
    TooLarge(&'static str),
}

impl HandshakeError {
    /// The HTTP reply for this refusal.
    pub fn response(&self) -> Vec<u8> {
        match *self {
            HandshakeError::BadRequest(why) => http_response(400, "Bad Request", why, ""),
            HandshakeError::BadVersion => http_response(
                400,
                "Bad Request",
                "unsupported Sec-WebSocket-Version (this server speaks 13)",
                "Sec-WebSocket-Version: 13\r\n",
            ),
            HandshakeError::TooLarge(why) => {
                http_response(431, "Request Header Fields Too Large", why, "")
            }
        }
    }
}

/// Parses the request head in `buf`.
///
/// `Ok(None)`: incomplete, read more (the caller enforces the size bound
/// with [`check_size`]). `Ok(Some((req, n)))`: complete; the head was `n`
/// bytes, anything after it is already WebSocket data.
pub fn parse(
    buf: &[u8],
    max_headers: usize,
) -> Result<Option<(UpgradeRequest, usize)>, HandshakeError> {
    let mut headers = vec![httparse::EMPTY_HEADER; max_headers];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(HandshakeError::TooLarge(
                "too many request headers (see --max-headers)",
            ))
        }
        Err(_) => return Err(HandshakeError::BadRequest("malformed HTTP request")),
    };
    if req.method != Some("GET") {
        return Err(HandshakeError::BadRequest(
            "a WebSocket upgrade must use GET",
        ));
    }
    if req.version != Some(1) {
        return Err(HandshakeError::BadRequest("HTTP/1.1 is required"));
    }
    let all_headers: &[httparse::Header<'_>] = req.headers;
    let header = |name: &'static str| {
        all_headers
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value))
    };
    let has_token = |name: &'static str, token: &str| {
        header(name).any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    };
    if !has_token("upgrade", "websocket") {
        return Err(HandshakeError::BadRequest("missing 'Upgrade: websocket'"));
    }
    if !has_token("connection", "upgrade") {
        return Err(HandshakeError::BadRequest("missing 'Connection: Upgrade'"));
    }
    if header("host").next().is_none() {
        return Err(HandshakeError::BadRequest("missing Host header"));
    }
    let mut keys = header("sec-websocket-key");
    let (Some(key), None) = (keys.next(), keys.next()) else {
        return Err(HandshakeError::BadRequest(
            "exactly one Sec-WebSocket-Key header is required",
        ));
    };
    let key = key.trim();
    // RFC 6455 4.2.1: the base64 encoding of 16 bytes.
    if BASE64.decode(key).map(|k| k.len()) != Ok(16) {
        return Err(HandshakeError::BadRequest(
            "Sec-WebSocket-Key must be 16 bytes in base64",
        ));
    }
    if !header("sec-websocket-version").any(|v| v.trim() == "13") {
        return Err(HandshakeError::BadVersion);
    }
    let target = origin_form(req.path.unwrap_or("/"));
    let target = target.split('#').next().unwrap_or(target);
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let url = percent_encoding::percent_decode_str(path)
        .decode_utf8()
        .map_or_else(|_| path.to_owned(), |p| p.into_owned());
    let origins = header("origin").map(|o| o.into_owned()).collect();
    let protocols = header("sec-websocket-protocol")
        .collect::<Vec<_>>()
        .join(",");
    let request = UpgradeRequest {
        accept_key: derive_accept_key(key.as_bytes()),
        url,
        query: query.to_owned(),
        protocols,
        headers_json: headers_json(all_headers),
        origins,
    };
    Ok(Some((request, head_len)))
}

/// The path-and-query part of a request target: an absolute-form target
/// (`http://host:port/path?q`, RFC 9112 3.2.2) yields `/path?q`.
fn origin_form(target: &str) -> &str {
    let scheme_len = ["http://", "https://", "ws://", "wss://"]
        .iter()
        .find(|s| {
            target
                .get(..s.len())
                .is_some_and(|t| t.eq_ignore_ascii_case(s))
        })
        .map(|s| s.len());
    let Some(scheme_len) = scheme_len else {
        return target;
    };
    let rest = &target[scheme_len..];
    match rest.find(['/', '?']) {
        Some(i) if rest.as_bytes()[i] == b'/' => &rest[i..],
        // No path: the path is "/", and any query follows it.
        Some(_) | None => "/",
    }
}

/// The refusal for a request head still incomplete after `len` bytes.
pub fn check_size(len: usize, max_request_size: usize) -> Result<(), HandshakeError> {
    if len > max_request_size {
        Err(HandshakeError::TooLarge(
            "request head too large (see --max-request-size)",
        ))
    } else {
        Ok(())
    }
}

/// Header names in canonical MIME form, values grouped per name in order.
fn headers_json(headers: &[httparse::Header<'_>]) -> Vec<u8> {
    let mut grouped: Vec<(String, Vec<String>)> = Vec::with_capacity(headers.len());
    for h in headers {
        let name = canonical_header_name(h.name);
        let value = String::from_utf8_lossy(h.value).into_owned();
        match grouped.iter_mut().find(|(n, _)| *n == name) {
            Some((_, values)) => values.push(value),
            None => grouped.push((name, vec![value])),
        }
    }
    let mut out = Vec::with_capacity(256);
    out.push(b'{');
    for (i, (name, values)) in grouped.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        json::push_str(&mut out, name);
        out.extend_from_slice(b":[");
        for (j, v) in values.iter().enumerate() {
            if j > 0 {
                out.push(b',');
            }
            json::push_str(&mut out, v);
        }
        out.push(b']');
    }
    out.push(b'}');
    out
}

/// `sec-websocket-key` -> `Sec-Websocket-Key`: the first letter and each
/// letter after `-` upper-case, the rest lower-case. A name holding a byte
/// that is not an HTTP token character is returned unchanged, as the
/// original broker's HTTP stack did.
pub fn canonical_header_name(name: &str) -> String {
    let is_token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if !name.bytes().all(is_token) {
        return name.to_owned();
    }
    let mut upper = true;
    name.bytes()
        .map(|b| {
            let c = if upper {
                b.to_ascii_uppercase()
            } else {
                b.to_ascii_lowercase()
            };
            upper = b == b'-';
            c as char
        })
        .collect()
}

/// Whether `protocol` is one of the comma-separated `offered` subprotocols.
pub fn offers_protocol(offered: &str, protocol: &str) -> bool {
    offered.split(',').any(|p| p.trim() == protocol)
}

/// `101 Switching Protocols` for an accepted upgrade, with the selected
/// subprotocol if any.
pub fn switching_protocols(accept_key: &str, protocol: Option<&str>) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept_key}\r\n"
    );
    if let Some(protocol) = protocol {
        let _ = write!(out, "Sec-WebSocket-Protocol: {protocol}\r\n");
    }
    out.push_str("\r\n");
    out.into_bytes()
}

/// The standard reason phrase of an HTTP status ("Unknown" for none).
pub fn reason_phrase(status: u16) -> &'static str {
    http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Unknown")
}

/// A complete HTTP reply that closes the connection, with `body` exactly as
/// its plain-text body.
pub fn http_reply(status: u16, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        reason_phrase(status),
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

/// A complete HTTP reply that closes the connection, `reason` and a newline
/// as plain text body.
pub fn http_response(status: u16, text: &str, reason: &str, extra_headers: &str) -> Vec<u8> {
    let mut out = String::with_capacity(160 + reason.len());
    let _ = write!(
        out,
        "HTTP/1.1 {status} {text}\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n{extra_headers}\r\n{reason}\n",
        reason.len() + 1
    );
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "GET /ws/room%201?token=x HTTP/1.1\r\nHost: a\r\nupgrade: WebSocket\r\n\
        Connection: keep-alive, Upgrade\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Sec-WebSocket-Version: 13\r\nX-Tag: a\r\nx-tag: b\r\n\r\nrest";

    #[test]
    fn parses_a_valid_upgrade() {
        let (req, n) = parse(GOOD.as_bytes(), 64).unwrap().unwrap();
        assert_eq!(&GOOD[n..], "rest");
        assert_eq!(req.accept_key, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(req.url, "/ws/room 1");
        assert_eq!(req.query, "token=x");
        assert_eq!(req.protocols, "");
        let headers: serde_json::Value = serde_json::from_slice(&req.headers_json).unwrap();
        assert_eq!(headers["X-Tag"], serde_json::json!(["a", "b"]));
        assert_eq!(headers["Sec-Websocket-Key"][0], "dGhlIHNhbXBsZSBub25jZQ==");
        assert_eq!(headers["Upgrade"][0], "WebSocket");
    }

    #[test]
    fn query_and_subprotocols_are_kept_raw() {
        let req = GOOD.replace("?token=x", "?t=a%20b&x=1&x=2#frag").replace(
            "X-Tag: a",
            "Sec-WebSocket-Protocol: chat, v2.chat\r\nsec-websocket-protocol: json",
        );
        let (req, _) = parse(req.as_bytes(), 64).unwrap().unwrap();
        assert_eq!(req.query, "t=a%20b&x=1&x=2");
        assert_eq!(req.url, "/ws/room 1");
        assert!(offers_protocol(&req.protocols, "v2.chat"));
        assert!(offers_protocol(&req.protocols, "json"));
        assert!(!offers_protocol(&req.protocols, "chat, v2.chat"));
        let plain = GOOD.replace("?token=x", "");
        assert_eq!(parse(plain.as_bytes(), 64).unwrap().unwrap().0.query, "");
        let reply = String::from_utf8(switching_protocols("k", Some("json"))).unwrap();
        assert!(reply.contains("\r\nSec-WebSocket-Protocol: json\r\n\r\n"));
        assert_eq!(reason_phrase(401), "Unauthorized");
        assert_eq!(reason_phrase(499), "Unknown");
    }

    #[test]
    fn strict_upgrade_requests() {
        let refused = |req: &str| {
            matches!(
                parse(req.as_bytes(), 64),
                Err(HandshakeError::BadRequest(_))
            )
        };
        assert!(
            refused(&GOOD.replace("Host: a\r\n", "")),
            "Host is required"
        );
        assert!(refused(&GOOD.replace(
            "sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
            "sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\n"
        )), "one key");
        for bad in [
            "abc",
            "dGhlIHNhbXBsZSBub25jZQ",
            "dGhlIHNhbXBsZSBub25jZXg=",
            "!!!!!!!!!!!!!!!!!!!!!!==",
        ] {
            assert!(
                refused(&GOOD.replace("dGhlIHNhbXBsZSBub25jZQ==", bad)),
                "{bad}"
            );
        }
        let two_origins = GOOD.replace(
            "X-Tag: a",
            "Origin: https://a.example\r\nOrigin: https://b.example",
        );
        let (req, _) = parse(two_origins.as_bytes(), 64).unwrap().unwrap();
        assert_eq!(req.origins, ["https://a.example", "https://b.example"]);
        for (target, url, query) in [
            ("http://example.com/ws/r?x=1", "/ws/r", "x=1"),
            ("HTTP://example.com:8080/a%20b", "/a b", ""),
            ("ws://h?q=2", "/", ""),
            ("https://h", "/", ""),
        ] {
            let req = GOOD.replace("/ws/room%201?token=x", target);
            let (req, _) = parse(req.as_bytes(), 64).unwrap().unwrap();
            assert_eq!(
                (req.url.as_str(), req.query.as_str()),
                (url, query),
                "{target}"
            );
        }
    }

    #[test]
    fn incomplete_request_asks_for_more() {
        assert_eq!(parse(&GOOD.as_bytes()[..40], 64), Ok(None));
    }

    #[test]
    fn refusals() {
        let post = GOOD.replacen("GET", "POST", 1);
        assert!(matches!(
            parse(post.as_bytes(), 64),
            Err(HandshakeError::BadRequest(_))
        ));
        let v8 = GOOD.replace("Version: 13", "Version: 8");
        assert_eq!(parse(v8.as_bytes(), 64), Err(HandshakeError::BadVersion));
        let nokey = GOOD.replace("sec-websocket-key", "x-nothing");
        assert!(matches!(
            parse(nokey.as_bytes(), 64),
            Err(HandshakeError::BadRequest(_))
        ));
        assert!(matches!(
            parse(GOOD.as_bytes(), 3),
            Err(HandshakeError::TooLarge(_))
        ));
        assert!(matches!(
            parse(b"\x01\x02garbage\r\n\r\n", 64),
            Err(HandshakeError::BadRequest(_))
        ));
    }

    #[test]
    fn canonical_names() {
        assert_eq!(
            canonical_header_name("sec-websocket-key"),
            "Sec-Websocket-Key"
        );
        assert_eq!(canonical_header_name("X-USER"), "X-User");
        assert_eq!(canonical_header_name("user agent"), "user agent");
    }
}
