//! What a backend's commands do: one function per [`Command`], and the
//! reply path back to the backend that sent it (acks, presence, errors).
//!
//! Targets and audiences resolve through the [`Hub`](crate::hub::Hub);
//! only connections that are open (accepted, not ending) are acted on and
//! counted. A message is encoded once: every member's queue gets the same
//! shared frame.

use std::borrow::Cow;
use std::rc::Rc;
use std::time::Instant;

use ahash::AHashMap;
use log::warn;
use simd_json::value::tape::Value;
use slab::Slab;

use crate::backend::{self, Command, Line, Payload, PresenceEntry, Target};
use crate::cluster::bus::{Channel, Kind};
use crate::hub::Audience;
use crate::outq::{Batch, Shared};
use crate::ws::encode;

use super::conn::{Client, Ending};
use super::{list_once, Server, Stats};

/// Room messages (or broadcasts) of this turn in a row, waiting to be
/// queued on their audience as one batch.
#[derive(Debug)]
pub(super) struct Cork {
    to: CorkTo,
    frames: Vec<Shared>,
}

/// Who corked messages go to.
#[derive(Debug)]
enum CorkTo {
    Room(Box<str>),
    All,
}

impl CorkTo {
    /// Whom messages to `audience` would be corked for; `None` for the
    /// audiences that are never corked (one client, one connection).
    fn of(audience: Audience<'_>) -> Option<CorkTo> {
        match audience {
            Audience::Room(room) => Some(CorkTo::Room(room.into())),
            Audience::All => Some(CorkTo::All),
            _ => None,
        }
    }

    /// Whether messages to `audience` join the messages corked for `self`.
    fn is(&self, audience: Audience<'_>) -> bool {
        match (self, audience) {
            (CorkTo::Room(r), Audience::Room(room)) => **r == *room,
            (CorkTo::All, Audience::All) => true,
            _ => false,
        }
    }
}

impl Server {
    /// Carries out one line from backend `from` (the auth gate is behind
    /// it), answering with an `ack` when the line asked for one. In cluster
    /// mode, messages and commands also go to the other brokers (after the
    /// local connections got theirs), and an ack waits for Redis to say how
    /// many brokers received them.
    pub(super) fn apply(&mut self, from: usize, line: Line<'_>) {
        let Line {
            request_id,
            ack,
            command,
        } = line;
        // Room messages and broadcasts in a row are corked (fan_out);
        // anything else first queues what was corked, so every client gets
        // what it is sent in the order the backend sent it.
        let corkable = !ack
            && match &command {
                Command::Broadcast { .. } => true,
                Command::MessageToRoom { exclude, .. } => exclude.is_empty(),
                _ => false,
            };
        if !corkable {
            self.seal();
        }
        let mut published = false;
        let reached = match command {
            // Handled at the auth gate (backend_io.rs).
            Command::Auth { .. } => return,
            Command::Response(response) => return self.answer_request(from, response),
            Command::Presence { room_id } => {
                return self.presence_anywhere(from, request_id, &room_id, false)
            }
            Command::PresenceStats { room_id } => {
                return self.presence_anywhere(from, request_id, &room_id, true)
            }
            Command::Broadcast { message } => {
                let (reached, frame) = self.fan_out(Audience::All, &message, &[]);
                if let Some(frame) = frame {
                    published = self.publish(Channel::Broadcast, Kind::Frame, "", &[], &frame);
                }
                reached
            }
            Command::MessageToRoom {
                room_id,
                message,
                exclude,
            } => {
                let exclude: Vec<&str> = exclude.iter().map(|e| e.as_ref()).collect();
                let skip = if exclude.is_empty() {
                    Vec::new()
                } else {
                    self.excluded(&exclude)
                };
                let (reached, frame) = self.fan_out(Audience::Room(&room_id), &message, &skip);
                if let Some(frame) = frame {
                    published =
                        self.publish(Channel::Room(&room_id), Kind::Frame, "", &exclude, &frame);
                }
                reached
            }
            Command::MessageToConnection { target, message } => match target {
                Target::ClientId(id) => {
                    let (reached, frame) = self.fan_out(Audience::ClientId(&id), &message, &[]);
                    if let Some(frame) = frame {
                        published =
                            self.publish(Channel::Client(&id), Kind::Frame, "", &[], &frame);
                    }
                    reached
                }
                Target::Connection(id) => match self.remote_node(&id) {
                    Some(node) => {
                        let frame = encode::message(message.as_bytes(), message.is_binary());
                        published =
                            self.publish(Channel::Node(node), Kind::Frame, &id, &[], &frame);
                        0
                    }
                    None => match self.ids.serial(&id) {
                        Some(serial) => self.fan_out(Audience::Connection(serial), &message, &[]).0,
                        None => 0,
                    },
                },
            },
            Command::JoinRoom { .. }
            | Command::LeaveRoom { .. }
            | Command::Disconnect { .. }
            | Command::SetMetadata { .. } => {
                published = self.publish_command(&command);
                match command {
                    Command::JoinRoom { target, room_id } => self.join_room(&target, &room_id),
                    Command::LeaveRoom { target, room_id } => self.leave_room(&target, &room_id),
                    Command::Disconnect {
                        target,
                        code,
                        reason,
                    } => self.disconnect(&target, code, reason),
                    Command::SetMetadata { target, metadata } => {
                        self.set_metadata(&target, metadata)
                    }
                    _ => 0,
                }
            }
        };
        if !ack {
            return;
        }
        if published {
            return self.ack_after_publish(from, request_id, reached);
        }
        let cluster = self.cluster_figures().is_some();
        self.reply_to(from, |out| {
            backend::push_reply(out, "ack", request_id, |out| {
                out.extend_from_slice(b"\"connections\":");
                out.extend_from_slice(reached.to_string().as_bytes());
                if cluster {
                    // The bus was down or the target is nowhere else.
                    out.extend_from_slice(b",\"nodes\":0");
                }
            })
        });
    }

    /// A membership or kick command for the other brokers: by client id
    /// on the client's channel, by connection id of another broker on that
    /// broker's channel. False when there is nothing to publish (not in
    /// cluster mode, a connection of this broker) or it was dropped.
    fn publish_command(&mut self, command: &Command<'_>) -> bool {
        if self.cluster_figures().is_none() {
            return false;
        }
        let target = match command {
            Command::JoinRoom { target, .. }
            | Command::LeaveRoom { target, .. }
            | Command::Disconnect { target, .. }
            | Command::SetMetadata { target, .. } => target,
            _ => return false,
        };
        let Some(line) = super::cluster::command_line(command) else {
            return false;
        };
        match target {
            Target::ClientId(id) => {
                self.publish(Channel::Client(id), Kind::Command, "", &[], &line)
            }
            Target::Connection(id) => match self.remote_node(id) {
                Some(node) => self.publish(Channel::Node(node), Kind::Command, id, &[], &line),
                None => false,
            },
        }
    }

    /// `presence` and `presence_stats`: from this broker's hub, or in
    /// cluster mode from Redis for the whole cluster.
    fn presence_anywhere(
        &mut self,
        from: usize,
        request_id: Option<&str>,
        room_id: &str,
        stats: bool,
    ) {
        if self.cluster_figures().is_some() {
            if !self.may_reply(from) {
                return;
            }
            if !self.cluster_presence(from, request_id, room_id, stats) {
                let action = if stats { "presence_stats" } else { "presence" };
                self.reply_line_error(
                    from,
                    request_id,
                    &format!("{action}: the cluster bus is unavailable"),
                );
            }
            return;
        }
        if stats {
            self.presence_stats(from, request_id, room_id)
        } else {
            self.presence(from, request_id, room_id)
        }
    }

    /// The audience a target names (`None`: a connection id that is not
    /// one of this broker's, so nobody here).
    fn audience<'t>(&self, target: &'t Target<'_>) -> Option<Audience<'t>> {
        match target {
            Target::ClientId(id) => Some(Audience::ClientId(id)),
            Target::Connection(id) => self.ids.serial(id).map(Audience::Connection),
        }
    }

    /// The open connections a target names, into `self.targets` (a list
    /// kept for its allocation).
    fn resolve(&mut self, target: &Target<'_>) -> Vec<usize> {
        let mut keys = std::mem::take(&mut self.targets);
        keys.clear();
        if let Some(audience) = self.audience(target) {
            let clients = &self.clients;
            keys.extend(
                self.hub
                    .audience(audience)
                    .iter()
                    .copied()
                    .filter(|&k| clients.get(k).is_some_and(|c| c.is_open())),
            );
        }
        keys
    }

    /// Encodes `message` once and queues that one buffer on every open
    /// connection of the audience but those in `skip`; returns how many
    /// got it, and the frame when it was encoded (it is, when someone here
    /// got it or other brokers may: in cluster mode).
    ///
    /// The audience is looked up once, for the test and the queueing both.
    fn fan_out(
        &mut self,
        audience: Audience<'_>,
        message: &Payload<'_>,
        skip: &[usize],
    ) -> (usize, Option<Shared>) {
        let corked = corks(audience, skip);
        if !corked {
            self.seal();
        }
        let members = self.hub.audience(audience);
        if members.is_empty() && self.cluster.is_none() {
            return (0, None);
        }
        let frame = encode::message(message.as_bytes(), message.is_binary());
        let reached = if corked {
            let n = members.len();
            self.cork(audience, &frame);
            n
        } else {
            queue_each(
                &mut self.clients,
                &mut self.turn.dirty_clients,
                &mut self.stats,
                members,
                &frame,
                skip,
            )
        };
        (reached, Some(frame))
    }

    /// Queues `frame` on every open connection of the audience but those
    /// in `skip` (a local message, or one from another broker); returns
    /// how many got it (for a corked message: the audience's size).
    ///
    /// A message to a room, or to everyone, with nobody excluded is corked:
    /// kept with the messages to the same audience that follow it in the
    /// turn, and queued on the members as one batch when something else
    /// comes (another audience, any other command, a client's ending) or
    /// the turn ends ([`Server::seal`]). Each member then costs one queue
    /// entry per batch instead of one per message.
    pub(super) fn fan_out_frame(
        &mut self,
        audience: Audience<'_>,
        frame: &Shared,
        skip: &[usize],
    ) -> usize {
        if corks(audience, skip) {
            self.cork(audience, frame);
            return self.hub.audience(audience).len();
        }
        self.seal();
        queue_each(
            &mut self.clients,
            &mut self.turn.dirty_clients,
            &mut self.stats,
            self.hub.audience(audience),
            frame,
            skip,
        )
    }

    /// Adds `frame` to the cork of its audience, sealing another
    /// audience's cork first.
    fn cork(&mut self, audience: Audience<'_>, frame: &Shared) {
        match self.cork.as_mut() {
            Some(cork) if cork.to.is(audience) => cork.frames.push(frame.clone()),
            _ => {
                self.seal();
                self.cork = CorkTo::of(audience).map(|to| Cork {
                    to,
                    frames: vec![frame.clone()],
                });
            }
        }
    }

    /// Queues the corked messages, as one shared batch, on every open
    /// connection of their audience (as it is now: membership does not
    /// change while messages are corked).
    pub(super) fn seal(&mut self) {
        let Some(cork) = self.cork.take() else {
            return;
        };
        let batch = Rc::new(Batch::new(cork.frames));
        let audience = match &cork.to {
            CorkTo::Room(room) => Audience::Room(room),
            CorkTo::All => Audience::All,
        };
        let mut reached = 0;
        for &key in self.hub.audience(audience) {
            let Some(c) = self.clients.get_mut(key) else {
                continue;
            };
            if c.ending.is_some() {
                continue;
            }
            c.outq.push_batch(&batch);
            list_once(&mut c.dirty, &mut self.turn.dirty_clients, key);
            reached += 1;
        }
        self.stats.deliveries += (reached * batch.len()) as u64;
        self.stats.delivered_bytes += (reached * batch.bytes()) as u64;
    }

    /// `join_room`: the target's open connections join; joining twice is a
    /// no-op. Returns how many connections the target has open.
    pub(super) fn join_room(&mut self, target: &Target<'_>, room_id: &str) -> usize {
        let keys = self.resolve(target);
        for &key in &keys {
            if self.hub.join(key, room_id) {
                self.rooms_changed(key);
            }
        }
        self.done_with(keys)
    }

    /// `leave_room`: the target's open connections leave the room (the
    /// room assigned at accept included); a connection in no room stays
    /// open.
    pub(super) fn leave_room(&mut self, target: &Target<'_>, room_id: &str) -> usize {
        let keys = self.resolve(target);
        for &key in &keys {
            if self.hub.leave(key, room_id) {
                self.rooms_changed(key);
            }
        }
        self.done_with(keys)
    }

    /// Later events of connection `key` carry its rooms as they are now.
    fn rooms_changed(&mut self, key: usize) {
        if let Some(context) = self.clients.get_mut(key).and_then(|c| c.context.as_mut()) {
            context.set_rooms(self.hub.rooms_of(key));
        }
    }

    /// `disconnect`: each open connection of the target gets the close
    /// frame (then the usual `disconnected` event goes to its backend).
    pub(super) fn disconnect(
        &mut self,
        target: &Target<'_>,
        code: u16,
        reason: Cow<'_, str>,
    ) -> usize {
        let keys = self.resolve(target);
        let reason: Cow<'static, str> = reason.into_owned().into();
        for &key in &keys {
            self.end_client(
                key,
                Ending::Close {
                    code,
                    reason: reason.clone(),
                    await_peer: true,
                },
            );
        }
        self.done_with(keys)
    }

    /// `set_metadata`: later events of the target's open connections carry
    /// the new metadata.
    pub(super) fn set_metadata(&mut self, target: &Target<'_>, metadata: Value<'_, '_>) -> usize {
        let keys = self.resolve(target);
        for &key in &keys {
            if let Some(context) = self.clients.get_mut(key).and_then(|c| c.context.as_mut()) {
                context.set_metadata(metadata);
            }
            self.cluster_metadata_changed(key);
        }
        self.done_with(keys)
    }

    /// Gives the target list back for reuse; returns its length.
    fn done_with(&mut self, keys: Vec<usize>) -> usize {
        let n = keys.len();
        self.targets = keys;
        n
    }

    /// `presence`: who is in a room, one entry per client id (in the order
    /// their first connection is listed), with the metadata of that first
    /// connection and every connection id of the client in the room.
    fn presence(&mut self, from: usize, request_id: Option<&str>, room_id: &str) {
        if !self.may_reply(from) {
            return;
        }
        let mut entries: Vec<PresenceEntry<'_>> = Vec::new();
        let mut index: AHashMap<&str, usize> = AHashMap::new();
        for &key in self.hub.room(room_id) {
            let Some(c) = self.clients.get(key).filter(|c| c.is_open()) else {
                continue;
            };
            let (Some(client_id), Some(context)) = (self.hub.client_id(key), c.context.as_ref())
            else {
                continue;
            };
            let i = *index.entry(client_id).or_insert_with(|| {
                entries.push(PresenceEntry {
                    client_id,
                    metadata: context.metadata(),
                    connections: Vec::new(),
                });
                entries.len() - 1
            });
            entries[i]
                .connections
                .push(Cow::Owned(self.ids.connection_id(c.serial)));
        }
        let Some(b) = self.backends.get_mut(from).filter(|b| !b.closing) else {
            return;
        };
        backend::push_presence(&mut b.out, request_id, room_id, &entries);
        list_once(&mut b.dirty, &mut self.turn.dirty_backends, from);
    }

    /// `presence_stats`: how many distinct client ids and connections are
    /// in a room.
    fn presence_stats(&mut self, from: usize, request_id: Option<&str>, room_id: &str) {
        if !self.may_reply(from) {
            return;
        }
        let mut clients: ahash::AHashSet<&str> = ahash::AHashSet::new();
        let mut connections = 0usize;
        for &key in self.hub.room(room_id) {
            if self.clients.get(key).is_some_and(|c| c.is_open()) {
                connections += 1;
                if let Some(id) = self.hub.client_id(key) {
                    clients.insert(id);
                }
            }
        }
        let clients = clients.len();
        let Some(b) = self.backends.get_mut(from).filter(|b| !b.closing) else {
            return;
        };
        backend::push_presence_stats(&mut b.out, request_id, room_id, clients, connections);
        list_once(&mut b.dirty, &mut self.turn.dirty_backends, from);
    }

    /// Appends a reply line for backend `key`, written by `write`, unless
    /// the backend is too far behind to be given more (routing.rs).
    pub(super) fn reply_to(&mut self, key: usize, write: impl FnOnce(&mut Vec<u8>)) {
        if !self.may_reply(key) {
            return;
        }
        if let Some(b) = self.backends.get_mut(key) {
            write(&mut b.out);
            list_once(&mut b.dirty, &mut self.turn.dirty_backends, key);
        }
    }

    /// A line that could not be carried out: counted, logged, and answered
    /// with an `error` line carrying its `request_id`.
    pub(super) fn reply_line_error(&mut self, key: usize, request_id: Option<&str>, error: &str) {
        self.stats.bad_backend_lines += 1;
        if let Some(b) = self.backends.get(key) {
            if let Some(unlogged) = self.refused_lines.hit(Instant::now()) {
                warn!(
                    "backend {}: line refused: {error} ({unlogged} more refused since the last \
                     warning, {} in all)",
                    b.peer, self.stats.bad_backend_lines
                );
            }
        }
        self.reply_to(key, |out| backend::push_line_error(out, request_id, error));
    }
}

/// Whether a message to `audience` is corked: one to a room or to everyone
/// with nobody excluded.
fn corks(audience: Audience<'_>, skip: &[usize]) -> bool {
    skip.is_empty() && matches!(audience, Audience::Room(_) | Audience::All)
}

/// Queues `frame` on every open connection in `members` but those in
/// `skip`; returns how many got it. A function of the fields it uses, so
/// the caller can hold `members` borrowed from the hub meanwhile.
fn queue_each(
    clients: &mut Slab<Client>,
    dirty_clients: &mut Vec<usize>,
    stats: &mut Stats,
    members: &[usize],
    frame: &Shared,
    skip: &[usize],
) -> usize {
    let mut reached = 0;
    for &key in members {
        let Some(c) = clients.get_mut(key) else {
            continue;
        };
        if c.ending.is_some() || (!skip.is_empty() && skip.contains(&key)) {
            continue;
        }
        c.outq.push(frame.clone());
        list_once(&mut c.dirty, dirty_clients, key);
        reached += 1;
    }
    stats.deliveries += reached as u64;
    stats.delivered_bytes += (reached * frame.len()) as u64;
    reached
}
