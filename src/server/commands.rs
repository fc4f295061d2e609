//! What a backend's commands do: one function per [`Command`], and the
//! reply path back to the backend that sent it.
//!
//! Messages resolve their audience through the [`Hub`](crate::hub::Hub)
//! and are encoded once: every member's queue gets the same shared frame.

use log::warn;

use crate::backend::{self, Command, Payload};
use crate::hub::Audience;
use crate::ws::encode;

use super::{mark_dirty, Server};

impl Server {
    /// Carries out one command from backend `from`.
    pub(super) fn apply(&mut self, from: usize, command: Command<'_>) {
        match command {
            // Without a token, or once authenticated, an auth line is a no-op.
            Command::Auth { .. } => {}
            Command::Response(response) => self.answer_request(from, response),
            Command::Broadcast { message } => self.broadcast(&message),
            Command::MessageToRoom { room_id, message } => self.message_to_room(&room_id, &message),
            Command::MessageToConnection { conn_id, message } => {
                self.message_to_connection(&conn_id, &message)
            }
        }
    }

    /// `broadcast`: every open client.
    fn broadcast(&mut self, message: &Payload<'_>) {
        self.fan_out(Audience::All, message);
    }

    /// `message_to_room`: every member of the room.
    fn message_to_room(&mut self, room_id: &str, message: &Payload<'_>) {
        self.fan_out(Audience::Room(room_id), message);
    }

    /// `message_to_connection`: every connection of a client id (all tabs).
    fn message_to_connection(&mut self, client_id: &str, message: &Payload<'_>) {
        self.fan_out(Audience::ClientId(client_id), message);
    }

    /// Encodes `message` once and queues that one buffer on every client
    /// of the audience that takes messages.
    fn fan_out(&mut self, audience: Audience<'_>, message: &Payload<'_>) {
        let members = self.hub.audience(audience);
        if members.is_empty() {
            return;
        }
        let frame = encode::message(message.as_bytes(), message.is_binary());
        for &key in members {
            let Some(c) = self.clients.get_mut(key) else {
                continue;
            };
            if c.ending.is_some() {
                continue;
            }
            c.outq.push(frame.clone());
            mark_dirty(&mut c.dirty, &mut self.turn.dirty_clients, key);
        }
    }

    /// Appends a reply line for backend `key`, written by `write`.
    fn reply(&mut self, key: usize, write: impl FnOnce(&mut Vec<u8>)) {
        if let Some(b) = self.backends.get_mut(key).filter(|b| !b.closing) {
            write(&mut b.out);
            mark_dirty(&mut b.dirty, &mut self.turn.dirty_backends, key);
        }
    }

    /// A line that could not be carried out: counted, logged, and answered
    /// with an `error` line carrying its `request_id`.
    pub(super) fn reply_line_error(&mut self, key: usize, request_id: Option<&str>, error: &str) {
        self.stats.bad_backend_lines += 1;
        if let Some(b) = self.backends.get(key) {
            warn!("backend {}: line refused: {error}", b.peer);
        }
        self.reply(key, |out| backend::push_line_error(out, request_id, error));
    }
}
