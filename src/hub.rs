//! Who is where: rooms, client ids and the set of open clients.
//!
//! Clients are named by their slab key. A room exists while it has members;
//! several connections may share one client id (a user with several tabs).
//! Each membership list is a `Vec` (fan-out walks contiguous memory) with
//! O(1) removal: every member remembers its slot, and a removal moves the
//! last member into the hole and updates that member's slot.
//!
//! Invariant: `members[key]` is `Some` exactly when `key` is listed in
//! `all`, in `rooms[room]` and in `ids[client_id]` at the recorded slots.

use std::rc::Rc;

use ahash::AHashMap;

/// Where one client is listed.
#[derive(Debug)]
struct Member {
    client_id: Rc<str>,
    room_id: Rc<str>,
    all_slot: usize,
    room_slot: usize,
    id_slot: usize,
}

/// Who a message goes to.
#[derive(Debug, Clone, Copy)]
pub enum Audience<'a> {
    /// Every open client.
    All,
    /// The members of one room.
    Room(&'a str),
    /// Every connection of one client id.
    ClientId(&'a str),
}

/// The registry of open clients.
#[derive(Debug, Default)]
pub struct Hub {
    members: Vec<Option<Member>>,
    all: Vec<usize>,
    rooms: AHashMap<Rc<str>, Vec<usize>>,
    ids: AHashMap<Rc<str>, Vec<usize>>,
}

impl Hub {
    /// An empty hub.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers client `key` under `client_id` in `room_id`.
    /// A key already registered is moved (left first).
    pub fn join(&mut self, key: usize, client_id: &str, room_id: &str) {
        self.leave(key);
        if self.members.len() <= key {
            self.members.resize_with(key + 1, || None);
        }
        let (room_id, room_members) = key_and_list(&mut self.rooms, room_id);
        let room_slot = room_members.len();
        room_members.push(key);
        let (client_id, id_members) = key_and_list(&mut self.ids, client_id);
        let id_slot = id_members.len();
        id_members.push(key);
        let all_slot = self.all.len();
        self.all.push(key);
        self.members[key] = Some(Member {
            client_id,
            room_id,
            all_slot,
            room_slot,
            id_slot,
        });
    }

    /// Removes client `key` from every list; no-op if it is not registered.
    pub fn leave(&mut self, key: usize) {
        let Some(member) = self.members.get_mut(key).and_then(Option::take) else {
            return;
        };
        if let Some(moved) = remove_slot(&mut self.all, member.all_slot) {
            if let Some(m) = self.members[moved].as_mut() {
                m.all_slot = member.all_slot;
            }
        }
        if let Some(list) = self.rooms.get_mut(&member.room_id) {
            if let Some(moved) = remove_slot(list, member.room_slot) {
                if let Some(m) = self.members[moved].as_mut() {
                    m.room_slot = member.room_slot;
                }
            }
            if list.is_empty() {
                self.rooms.remove(&member.room_id);
            }
        }
        if let Some(list) = self.ids.get_mut(&member.client_id) {
            if let Some(moved) = remove_slot(list, member.id_slot) {
                if let Some(m) = self.members[moved].as_mut() {
                    m.id_slot = member.id_slot;
                }
            }
            if list.is_empty() {
                self.ids.remove(&member.client_id);
            }
        }
    }

    /// The connections an audience resolves to, each once.
    pub fn audience(&self, audience: Audience<'_>) -> &[usize] {
        match audience {
            Audience::All => self.all(),
            Audience::Room(room) => self.room(room),
            Audience::ClientId(id) => self.connections(id),
        }
    }

    /// The members of a room (empty if the room does not exist).
    pub fn room(&self, room_id: &str) -> &[usize] {
        self.rooms.get(room_id).map_or(&[], Vec::as_slice)
    }

    /// Every connection of a client id.
    pub fn connections(&self, client_id: &str) -> &[usize] {
        self.ids.get(client_id).map_or(&[], Vec::as_slice)
    }

    /// Every registered client.
    pub fn all(&self) -> &[usize] {
        &self.all
    }

    /// Number of rooms that have members.
    pub fn room_count(&self) -> usize {
        self.rooms.len()
    }
}

/// The map's shared key for `name` and its list, creating both if absent.
fn key_and_list<'m>(
    map: &'m mut AHashMap<Rc<str>, Vec<usize>>,
    name: &str,
) -> (Rc<str>, &'m mut Vec<usize>) {
    let key = map
        .get_key_value(name)
        .map_or_else(|| Rc::from(name), |(k, _)| k.clone());
    let list = map.entry(key.clone()).or_default();
    (key, list)
}

/// Swap-removes `slot`; returns the key that moved into it, if any.
fn remove_slot(list: &mut Vec<usize>, slot: usize) -> Option<usize> {
    list.swap_remove(slot);
    list.get(slot).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_and_leave_keep_lists_consistent() {
        let mut hub = Hub::new();
        hub.join(0, "alice", "r1");
        hub.join(1, "bob", "r1");
        hub.join(2, "alice", "r2");
        hub.join(3, "carol", "r1");
        assert_eq!(hub.connections("alice"), &[0, 2]);
        hub.leave(0);
        let mut r1 = hub.room("r1").to_vec();
        r1.sort();
        assert_eq!(r1, [1, 3]);
        assert_eq!(hub.connections("alice"), &[2]);
        hub.leave(3);
        hub.leave(1);
        assert!(hub.room("r1").is_empty());
        assert_eq!(hub.room_count(), 1);
        assert_eq!(hub.all(), &[2]);
        hub.leave(2);
        hub.leave(2);
        assert!(hub.all().is_empty());
        assert_eq!(hub.room_count(), 0);
    }

    #[test]
    fn rejoin_moves_a_client() {
        let mut hub = Hub::new();
        hub.join(5, "a", "x");
        hub.join(5, "a", "y");
        assert!(hub.room("x").is_empty());
        assert_eq!(hub.room("y"), &[5]);
        assert_eq!(hub.all(), &[5]);
    }
}
