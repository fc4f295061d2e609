//! The upgrade: a client's request head, the refusals made before any
//! backend sees it (bad request, origin, limits, shutdown), the parked
//! connection request, and its outcome: 101 and registration in the hub
//! when a backend accepts, 403 when it rejects, 503 when no answer comes.

use std::borrow::Cow;
use std::rc::Rc;
use std::time::Instant;

use log::debug;

use crate::backend::{self, Response};
use crate::ws::handshake;

use super::conn::{ClientContext, ConnRef, Ending, Phase};
use super::timers::Wait;
use super::{mark_dirty, Server};

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
        if let (Some(allowed), Some(origin)) = (&self.config.allowed_origins, &request.origin) {
            let origin = origin.trim().trim_end_matches('/').to_ascii_lowercase();
            if !allowed.contains(&origin) {
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
        } else if self.clients.len() > self.max_connections {
            Some("server at its connection limit (see --max-connections)")
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
        let Some(backend) = self.pick_backend() else {
            self.stats.unavailable += 1;
            self.end_client(key, Ending::unavailable("no backend connected"));
            return;
        };
        let (Some(c), Some(b)) = (
            self.clients.get_mut(key),
            self.backends.get_mut(backend.key),
        ) else {
            return;
        };
        let serial = c.serial;
        backend::push_connection_request(
            &mut b.out,
            &serial.to_string(),
            &request.headers_json,
            &request.url,
            &c.peer.to_string(),
        );
        mark_dirty(&mut b.dirty, &mut self.turn.dirty_backends, backend.key);
        c.phase = Phase::Pending {
            url: request.url.into_boxed_str(),
            accept_key: request.accept_key.into_boxed_str(),
            backend,
        };
        c.backend = Some(backend);
        self.pending.insert(serial, key);
        self.timers
            .connect
            .arm(Instant::now(), (ConnRef { key, serial }, Wait::Answer));
    }

    /// A backend's `response`: the parked client is upgraded and joins the
    /// hub, or gets 403. An answer to a request that is unknown, expired or
    /// whose client is ending is ignored.
    pub(super) fn answer_request(&mut self, backend_key: usize, answer: Response<'_>) {
        let serial = answer.request_id.parse::<u64>().ok();
        let Some(ckey) = serial.and_then(|s| self.pending.get(&s).copied()) else {
            debug!(
                "response for unknown or expired request {}",
                answer.request_id
            );
            return;
        };
        let Some(c) = self
            .clients
            .get_mut(ckey)
            .filter(|c| c.ending.is_none() && matches!(c.phase, Phase::Pending { .. }))
        else {
            return;
        };
        self.pending.remove(&c.serial);
        if !answer.accepted {
            self.stats.rejected += 1;
            self.end_client(
                ckey,
                Ending::Http {
                    status: 403,
                    text: "Forbidden",
                    reason: "connection rejected by the application".into(),
                },
            );
            return;
        }
        let Phase::Pending {
            url, accept_key, ..
        } = std::mem::replace(&mut c.phase, Phase::Open)
        else {
            unreachable!("checked above");
        };
        let client_id = answer
            .client_id
            .map(Cow::into_owned)
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let room_id = answer
            .room_id
            .map_or_else(|| url.to_string(), Cow::into_owned);
        let json = backend::context_json(&client_id, &room_id, answer.metadata);
        c.outq
            .push(Rc::from(handshake::switching_protocols(&accept_key)));
        c.context = Some(ClientContext { json });
        c.backend = self.backends.get(backend_key).map(|b| ConnRef {
            key: backend_key,
            serial: b.serial,
        });
        self.stats.accepted += 1;
        debug!("client {} accepted as {client_id} in {room_id}", c.peer);
        mark_dirty(&mut c.dirty, &mut self.turn.dirty_clients, ckey);
        self.hub.join(ckey, &client_id, &room_id);
        self.route_client_event(ckey, backend::push_new_connection);
        // Frames the client sent right behind its request.
        self.consume_client_inbuf(ckey);
        self.turn.read_again.push(ckey);
    }

    /// A connection request that will get no answer: 503 to the client and
    /// an `error` event to a backend, if one is connected.
    pub(super) fn fail_pending(&mut self, key: usize, why: &'static str) {
        let Some(c) = self.clients.get(key) else {
            return;
        };
        let Phase::Pending { url, .. } = &c.phase else {
            return;
        };
        let context = backend::context_json("", url, None);
        let peer = c.peer;
        self.stats.unavailable += 1;
        debug!("connection request from {peer} failed: {why}");
        self.end_client(key, Ending::unavailable(why));
        if let Some(r) = self.pick_backend() {
            if let Some(b) = self.backends.get_mut(r.key) {
                backend::push_client_error(
                    &mut b.out,
                    &context,
                    &format!("connection request from {peer} failed: {why}"),
                );
                mark_dirty(&mut b.dirty, &mut self.turn.dirty_backends, r.key);
            }
        }
    }
}
