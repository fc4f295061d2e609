//! The upgrade: a client's request head, the refusals made before any
//! backend sees it (bad request, origin, limits, shutdown), the parked
//! connection request, and its outcome: 101 and registration in the hub
//! when a backend accepts, 403 when it rejects, 503 when no answer comes.

use std::borrow::Cow;
use std::rc::Rc;
use std::time::Instant;

use log::debug;

use crate::backend::{self, Context, RequestInfo, Response};
use crate::ws::handshake;

use super::conn::{ConnRef, Ending, Parked, Phase};
use super::timers::Wait;
use super::{list_once, Server};

impl Server {
    /// Bytes of a client still sending its request head; returns how many
    /// were used (0 while the head is incomplete).
    pub(super) fn handshake_bytes(&mut self, key: usize, bytes: &mut [u8]) -> usize {
        let max_headers = self.config.max_headers;
        let max_size = self.config.max_request_size;
        // `bytes` holds the whole head received so far (a head spanning
        // reads is accumulated in the client's inbuf and parsed from there).
        match handshake::parse(bytes, max_headers) {
            Ok(None) => {
                if let Err(e) = handshake::check_size(bytes.len(), max_size) {
                    self.refuse_handshake(key, e);
                    return bytes.len();
                }
                0
            }
            Err(e) => {
                self.refuse_handshake(key, e);
                bytes.len()
            }
            Ok(Some((request, head_len))) => {
                if head_len > max_size {
                    self.refuse_handshake(
                        key,
                        handshake::HandshakeError::TooLarge(
                            "request head too large (see --max-request-size)",
                        ),
                    );
                    return bytes.len();
                }
                self.connection_request(key, request);
                head_len
            }
        }
    }

    fn refuse_handshake(&mut self, key: usize, e: handshake::HandshakeError) {
        if let Some(c) = self.clients.get_mut(key) {
            debug!("client {} handshake refused: {e:?}", c.peer);
            c.outq.push(Rc::from(e.response()));
        }
        self.end_client(key, Ending::Flush);
    }

    /// Sends `connection_request` to the next backend and parks the client.
    fn connection_request(&mut self, key: usize, request: handshake::UpgradeRequest) {
        if let (Some(allowed), Some(origin)) =
            (&self.config.allowed_origins, request.origins.first())
        {
            let origin = origin.trim().trim_end_matches('/').to_ascii_lowercase();
            // A browser sends one Origin; several can only be forged.
            if request.origins.len() > 1 || !allowed.contains(&origin) {
                self.stats.rejected += 1;
                debug!("upgrade from origin {origin} refused (see --allowed-origins)");
                self.end_client(
                    key,
                    Ending::Http {
                        status: 403,
                        text: "Forbidden",
                        reason: "origin not allowed (see --allowed-origins)".into(),
                    },
                );
                return;
            }
        }
        let refusal = if self.timers.shutdown.is_some() {
            Some("server shutting down")
        } else if self.pending.len() >= self.config.max_pending_requests {
            Some("too many connection requests waiting (see --max-pending-requests)")
        } else {
            None
        };
        if let Some(why) = refusal {
            self.stats.unavailable += 1;
            debug!("upgrade refused with 503: {why}");
            self.end_client(key, Ending::unavailable(why));
            return;
        }
        let backend = match self.pick_backend_with_room() {
            Ok(backend) => backend,
            Err(none) => {
                self.stats.unavailable += 1;
                debug!("upgrade refused with 503: {}", none.reason());
                self.end_client(key, Ending::unavailable(none.reason()));
                return;
            }
        };
        let (Some(c), Some(b)) = (
            self.clients.get_mut(key),
            self.backends.get_mut(backend.key),
        ) else {
            return;
        };
        let serial = c.serial;
        let connection_id = self.ids.connection_id(serial);
        backend::push_connection_request(
            &mut b.out,
            &serial.to_string(),
            RequestInfo {
                headers_json: &request.headers_json,
                url: &request.url,
                query: &request.query,
                remote_addr: &c.peer.to_string(),
                connection_id: &connection_id,
            },
        );
        list_once(&mut b.dirty, &mut self.turn.dirty_backends, backend.key);
        c.phase = Phase::Pending {
            request: Box::new(Parked {
                url: request.url.into_boxed_str(),
                accept_key: request.accept_key.into_boxed_str(),
                protocols: request.protocols.into_boxed_str(),
            }),
            backend,
        };
        c.backend = Some(backend);
        self.pending.insert(serial, key);
        self.timers
            .connect
            .arm(Instant::now(), (ConnRef { key, serial }, Wait::Answer));
    }

    /// The parked client a backend's answer names, if that backend may
    /// answer it now: the request is known, still waiting, its client is
    /// not ending, and it was sent to this backend. Otherwise the reason
    /// (for the backend's `error` line), or `None` for an answer that came
    /// too late to matter (logged at debug).
    fn answerable(&self, backend_key: usize, request_id: &str) -> Result<usize, Option<String>> {
        let serial = request_id.parse::<u64>().ok();
        let Some(ckey) = serial.and_then(|s| self.pending.get(&s).copied()) else {
            debug!("response for unknown or expired request {request_id}");
            return Err(None);
        };
        let Some(c) = self.clients.get(ckey).filter(|c| c.ending.is_none()) else {
            return Err(None);
        };
        match c.phase {
            Phase::Pending { backend, .. } if backend.key == backend_key => {
                let b = self.backends.get(backend_key);
                if b.is_some_and(|b| b.serial == backend.serial) {
                    Ok(ckey)
                } else {
                    Err(Some(format!(
                        "response: request {request_id} was not sent to this backend"
                    )))
                }
            }
            Phase::Pending { .. } => Err(Some(format!(
                "response: request {request_id} was not sent to this backend"
            ))),
            _ => Err(None),
        }
    }

    /// A backend's `response`: the parked client is upgraded and joins the
    /// hub in `room_id` and then `rooms`, or is refused (403, or the status
    /// and body the backend chose).
    pub(super) fn answer_request(&mut self, backend_key: usize, answer: Response<'_>) {
        let ckey = match self.answerable(backend_key, &answer.request_id) {
            Ok(ckey) => ckey,
            Err(None) => return,
            Err(Some(why)) => {
                let request_id = answer.request_id.clone();
                return self.reply_line_error(backend_key, Some(&request_id), &why);
            }
        };
        let Some(c) = self.clients.get_mut(ckey) else {
            return;
        };
        self.pending.remove(&c.serial);
        if !answer.accepted {
            self.stats.rejected += 1;
            let status = answer.status.unwrap_or(403);
            let reply = match answer.reason {
                // The backend's body, exactly.
                Some(reason) => handshake::http_reply(status, reason.as_bytes()),
                None => handshake::http_response(
                    status,
                    handshake::reason_phrase(status),
                    "connection rejected by the application",
                    "",
                ),
            };
            self.end_client(ckey, Ending::Reply(reply.into_boxed_slice()));
            return;
        }
        if let (Phase::Pending { request, .. }, Some(protocol)) =
            (&c.phase, answer.subprotocol.as_deref())
        {
            let protocols = &request.protocols;
            if !handshake::offers_protocol(protocols, protocol) {
                let why = format!(
                    "response: params.subprotocol '{protocol}' was not offered by the client \
                     (offered: '{protocols}')"
                );
                return self.fail_answer(ckey, backend_key, &answer.request_id, &why);
            }
        }
        let Phase::Pending { request, .. } = std::mem::replace(&mut c.phase, Phase::Open) else {
            unreachable!("answerable checked the phase");
        };
        let Parked {
            url, accept_key, ..
        } = *request;
        let client_id = answer
            .client_id
            .map(Cow::into_owned)
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let room_id = answer
            .room_id
            .map_or_else(|| url.to_string(), Cow::into_owned);
        let serial = c.serial;
        self.hub.register(ckey, serial, &client_id);
        for room in std::iter::once(room_id.as_str()).chain(answer.rooms.iter().map(|r| &**r)) {
            self.hub.join(ckey, room);
        }
        let connection_id = self.ids.connection_id(serial);
        let context = Context::new(
            &client_id,
            &room_id,
            answer.metadata,
            &connection_id,
            self.hub.rooms_of(ckey),
        );
        let Some(c) = self.clients.get_mut(ckey) else {
            return;
        };
        c.outq.push(Rc::from(handshake::switching_protocols(
            &accept_key,
            answer.subprotocol.as_deref(),
        )));
        c.outq.pin();
        c.context = Some(context);
        c.backend = self.backends.get(backend_key).map(|b| ConnRef {
            key: backend_key,
            serial: b.serial,
        });
        self.stats.accepted += 1;
        debug!("client {} accepted as {client_id} in {room_id}", c.peer);
        list_once(&mut c.dirty, &mut self.turn.dirty_clients, ckey);
        self.route_client_event(ckey, backend::push_new_connection);
        // Frames the client sent right behind its request.
        self.consume_client_inbuf(ckey);
        self.read_client_again(ckey);
    }

    /// A backend answered a request with something that cannot be used:
    /// HTTP 500 for the client and an `error` line for the backend.
    fn fail_answer(&mut self, ckey: usize, backend_key: usize, request_id: &str, why: &str) {
        self.stats.unavailable += 1;
        self.end_client(
            ckey,
            Ending::Http {
                status: 500,
                text: "Internal Server Error",
                reason: "the application's answer to the connection request could not be used"
                    .into(),
            },
        );
        self.reply_line_error(backend_key, Some(request_id), why);
    }

    /// A `response` line that could not be decoded: when it names a request
    /// this backend may answer, that client gets HTTP 500 at once rather
    /// than waiting for `--connect-timeout`.
    pub(super) fn bad_answer(&mut self, backend_key: usize, request_id: &str, why: &str) {
        match self.answerable(backend_key, request_id) {
            Ok(ckey) => {
                if let Some(c) = self.clients.get(ckey) {
                    self.pending.remove(&c.serial);
                }
                self.fail_answer(ckey, backend_key, request_id, why);
            }
            Err(_) => self.reply_line_error(backend_key, Some(request_id), why),
        }
    }

    /// A connection request that will get no answer: 503 to the client and
    /// an `error` event to a backend, if one is connected.
    pub(super) fn fail_pending(&mut self, key: usize, why: &'static str) {
        let Some(c) = self.clients.get(key) else {
            return;
        };
        let Phase::Pending { request, .. } = &c.phase else {
            return;
        };
        let context = Context::new(
            "",
            &request.url,
            None,
            &self.ids.connection_id(c.serial),
            [],
        );
        let peer = c.peer;
        self.stats.unavailable += 1;
        debug!("connection request from {peer} failed: {why}");
        self.end_client(key, Ending::unavailable(why));
        if let Some(r) = self.pick_backend().filter(|r| self.may_reply(r.key)) {
            if let Some(b) = self.backends.get_mut(r.key) {
                backend::push_client_error(
                    &mut b.out,
                    context.json(),
                    &format!("connection request from {peer} failed: {why}"),
                );
                list_once(&mut b.dirty, &mut self.turn.dirty_backends, r.key);
            }
        }
    }
}
