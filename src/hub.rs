//! Who is where: open connections by key, by connection serial and by
//! client id, and rooms with their members.
//!
//! Connections are named by their slab key. A connection is in any number
//! of rooms (a set, kept in join order); a room exists while it has
//! members; several connections may share one client id (a user with
//! several tabs). Each list is a `Vec` (fan-out walks contiguous memory)
//! with O(1) removal: every member remembers its slot in each list, and a
//! removal moves the last entry into the hole and updates that entry's
//! slot.
//!
//! This is the only place that walks membership: an [`Audience`] or a
//! room resolves here to the connections it names.
//!
//! Invariant: `members[key]` is `Some` exactly when `key` is listed in
//! `all`, in `ids[client_id]`, in `serials[serial]`, and in `rooms[r]` for
//! each room `r` of the member, at the recorded slots.

use std::rc::Rc;

use ahash::AHashMap;

/// Who a message goes to.
#[derive(Debug, Clone, Copy)]
pub enum Audience<'a> {
    /// Every open connection.
    All,
    /// The members of one room.
    Room(&'a str),
    /// Every connection of one client id.
    ClientId(&'a str),
    /// One connection, by its serial.
    Connection(u64),
}

/// A change of membership, recorded for cluster mode (see
/// [`Hub::track_changes`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Connection `key` (broker serial `serial`) joined `room`.
    Joined {
        /// The connection's slab key.
        key: usize,
        /// Its serial.
        serial: u64,
        /// The room.
        room: Rc<str>,
    },
    /// The connection with serial `serial` left `room`.
    Left {
        /// Its serial.
        serial: u64,
        /// The room.
        room: Rc<str>,
    },
    /// A room got its first member here.
    RoomAppeared(Rc<str>),
    /// A room lost its last member here.
    RoomGone(Rc<str>),
    /// A client id got its first connection here.
    ClientAppeared(Rc<str>),
    /// A client id lost its last connection here.
    ClientGone(Rc<str>),
}

/// Where one connection is listed.
#[derive(Debug)]
struct Member {
    client_id: Rc<str>,
    serial: u64,
    /// The rooms it is in, in join order, with its slot in each.
    rooms: Vec<(Rc<str>, usize)>,
    all_slot: usize,
    id_slot: usize,
}

/// The registry of open connections.
#[derive(Debug, Default)]
pub struct Hub {
    members: Vec<Option<Member>>,
    all: Vec<usize>,
    rooms: AHashMap<Rc<str>, Vec<usize>>,
    ids: AHashMap<Rc<str>, Vec<usize>>,
    serials: AHashMap<u64, usize>,
    /// Changes since the last [`Hub::take_changes`], when tracked.
    changes: Option<Vec<Change>>,
}

impl Hub {
    /// An empty hub.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records every change of membership from now on, for
    /// [`Hub::take_changes`].
    pub fn track_changes(&mut self) {
        self.changes.get_or_insert_with(Vec::new);
    }

    /// The changes recorded since the last call (none when not tracked).
    pub fn take_changes(&mut self) -> Vec<Change> {
        self.changes
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    fn record(&mut self, change: Change) {
        if let Some(changes) = self.changes.as_mut() {
            changes.push(change);
        }
    }

    /// Registers connection `key` (broker serial `serial`) under
    /// `client_id`, in no room yet. A key already registered is removed
    /// first.
    pub fn register(&mut self, key: usize, serial: u64, client_id: &str) {
        self.unregister(key);
        if self.members.len() <= key {
            self.members.resize_with(key + 1, || None);
        }
        let (client_id, id_members) = key_and_list(&mut self.ids, client_id);
        let id_slot = id_members.len();
        id_members.push(key);
        if id_slot == 0 {
            self.record(Change::ClientAppeared(client_id.clone()));
        }
        let all_slot = self.all.len();
        self.all.push(key);
        self.serials.insert(serial, key);
        self.members[key] = Some(Member {
            client_id,
            serial,
            rooms: Vec::new(),
            all_slot,
            id_slot,
        });
    }

    /// Removes connection `key` from every list and room; no-op if it is
    /// not registered.
    pub fn unregister(&mut self, key: usize) {
        let Some(member) = self.members.get_mut(key).and_then(Option::take) else {
            return;
        };
        for (room, slot) in &member.rooms {
            self.record(Change::Left {
                serial: member.serial,
                room: room.clone(),
            });
            self.remove_from_room(room, *slot);
        }
        if let Some(moved) = remove_slot(&mut self.all, member.all_slot) {
            if let Some(m) = self.members[moved].as_mut() {
                m.all_slot = member.all_slot;
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
                self.record(Change::ClientGone(member.client_id.clone()));
            }
        }
        self.serials.remove(&member.serial);
    }

    /// Connection `key` joins `room`; returns false when it is not
    /// registered or already a member (joining twice is a no-op).
    pub fn join(&mut self, key: usize, room: &str) -> bool {
        let Some(member) = self.members.get_mut(key).and_then(Option::as_mut) else {
            return false;
        };
        if member.rooms.iter().any(|(r, _)| &**r == room) {
            return false;
        }
        let (room, list) = key_and_list(&mut self.rooms, room);
        let first = list.is_empty();
        member.rooms.push((room.clone(), list.len()));
        list.push(key);
        let serial = member.serial;
        if first {
            self.record(Change::RoomAppeared(room.clone()));
        }
        self.record(Change::Joined { key, serial, room });
        true
    }

    /// Connection `key` leaves `room`; returns false when it was not in it.
    pub fn leave(&mut self, key: usize, room: &str) -> bool {
        let Some(member) = self.members.get_mut(key).and_then(Option::as_mut) else {
            return false;
        };
        let Some(i) = member.rooms.iter().position(|(r, _)| &**r == room) else {
            return false;
        };
        let (room, slot) = member.rooms.remove(i);
        if member.rooms.is_empty() {
            member.rooms = Vec::new();
        }
        let serial = member.serial;
        self.record(Change::Left {
            serial,
            room: room.clone(),
        });
        self.remove_from_room(&room, slot);
        true
    }

    /// Takes the entry at `slot` out of `room`'s list, keeping the slot of
    /// the member moved into the hole, and drops the room once empty.
    fn remove_from_room(&mut self, room: &Rc<str>, slot: usize) {
        let Some(list) = self.rooms.get_mut(room) else {
            return;
        };
        if let Some(moved) = remove_slot(list, slot) {
            if let Some(m) = self.members[moved].as_mut() {
                if let Some(entry) = m.rooms.iter_mut().find(|(r, _)| Rc::ptr_eq(r, room)) {
                    entry.1 = slot;
                }
            }
        }
        if list.is_empty() {
            self.rooms.remove(room);
            self.record(Change::RoomGone(room.clone()));
        }
    }

    /// The connections an audience resolves to, each once.
    pub fn audience(&self, audience: Audience<'_>) -> &[usize] {
        match audience {
            Audience::All => self.all(),
            Audience::Room(room) => self.room(room),
            Audience::ClientId(id) => self.connections(id),
            Audience::Connection(serial) => match self.serials.get(&serial) {
                Some(key) => std::slice::from_ref(key),
                None => &[],
            },
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

    /// Every registered connection.
    pub fn all(&self) -> &[usize] {
        &self.all
    }

    /// The rooms of connection `key`, in join order.
    pub fn rooms_of(&self, key: usize) -> impl Iterator<Item = &str> + '_ {
        self.member(key)
            .into_iter()
            .flat_map(|m| m.rooms.iter().map(|(r, _)| &**r))
    }

    /// The client id of connection `key`.
    pub fn client_id(&self, key: usize) -> Option<&str> {
        self.member(key).map(|m| &*m.client_id)
    }

    /// The serial of connection `key`.
    pub fn serial(&self, key: usize) -> Option<u64> {
        self.member(key).map(|m| m.serial)
    }

    /// Number of rooms that have members.
    pub fn room_count(&self) -> usize {
        self.rooms.len()
    }

    fn member(&self, key: usize) -> Option<&Member> {
        self.members.get(key).and_then(Option::as_ref)
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

    fn sorted(keys: &[usize]) -> Vec<usize> {
        let mut v = keys.to_vec();
        v.sort();
        v
    }

    /// Checks the invariant: every slot a member records holds its key.
    fn check(hub: &Hub) {
        for (key, m) in hub.members.iter().enumerate() {
            let Some(m) = m else { continue };
            assert_eq!(hub.all[m.all_slot], key);
            assert_eq!(hub.ids[&m.client_id][m.id_slot], key);
            assert_eq!(hub.serials[&m.serial], key);
            for (room, slot) in &m.rooms {
                assert_eq!(hub.rooms[room][*slot], key, "room {room}");
            }
        }
        let listed: usize = hub.rooms.values().map(Vec::len).sum();
        let held: usize = hub.members.iter().flatten().map(|m| m.rooms.len()).sum();
        assert_eq!(listed, held);
    }

    #[test]
    fn register_join_leave_keep_lists_consistent() {
        let mut hub = Hub::new();
        hub.register(0, 10, "alice");
        hub.register(1, 11, "bob");
        hub.register(2, 12, "alice");
        hub.register(3, 13, "carol");
        for key in [0, 1, 3] {
            assert!(hub.join(key, "r1"));
        }
        assert!(hub.join(2, "r2"));
        assert!(hub.join(0, "r2"));
        assert!(!hub.join(0, "r2"), "joining twice is a no-op");
        check(&hub);
        assert_eq!(hub.connections("alice"), &[0, 2]);
        assert_eq!(hub.rooms_of(0).collect::<Vec<_>>(), ["r1", "r2"]);
        assert_eq!(hub.audience(Audience::Connection(12)), &[2]);
        hub.unregister(0);
        check(&hub);
        assert_eq!(sorted(hub.room("r1")), [1, 3]);
        assert_eq!(hub.room("r2"), &[2]);
        assert_eq!(hub.connections("alice"), &[2]);
        assert!(hub.audience(Audience::Connection(10)).is_empty());
        assert!(hub.leave(3, "r1"));
        assert!(!hub.leave(3, "r1"));
        check(&hub);
        hub.unregister(1);
        assert!(hub.room("r1").is_empty());
        assert_eq!(hub.room_count(), 1);
        // A connection in no room stays registered.
        assert_eq!(sorted(hub.all()), [2, 3]);
        hub.unregister(2);
        hub.unregister(2);
        hub.unregister(3);
        assert!(hub.all().is_empty());
        assert_eq!(hub.room_count(), 0);
        check(&hub);
    }

    #[test]
    fn changes_are_recorded_when_tracked() {
        let mut hub = Hub::new();
        hub.register(0, 10, "a");
        hub.join(0, "r");
        assert!(hub.take_changes().is_empty(), "not tracked yet");
        hub.track_changes();
        hub.register(1, 11, "a");
        hub.join(1, "r");
        hub.join(1, "s");
        hub.unregister(0);
        hub.unregister(1);
        let r: Rc<str> = Rc::from("r");
        let s: Rc<str> = Rc::from("s");
        let a: Rc<str> = Rc::from("a");
        assert_eq!(
            hub.take_changes(),
            [
                Change::Joined {
                    key: 1,
                    serial: 11,
                    room: r.clone()
                },
                Change::RoomAppeared(s.clone()),
                Change::Joined {
                    key: 1,
                    serial: 11,
                    room: s.clone()
                },
                Change::Left {
                    serial: 10,
                    room: r.clone()
                },
                Change::Left {
                    serial: 11,
                    room: r.clone()
                },
                Change::RoomGone(r),
                Change::Left {
                    serial: 11,
                    room: s.clone()
                },
                Change::RoomGone(s),
                Change::ClientGone(a),
            ]
        );
        assert!(hub.take_changes().is_empty());
    }

    #[test]
    fn many_rooms_many_members_stay_consistent() {
        let mut hub = Hub::new();
        for key in 0..40 {
            hub.register(key, 100 + key as u64, &format!("u{}", key % 7));
            for r in 0..5 {
                hub.join(key, &format!("room{}", (key + r) % 9));
            }
        }
        check(&hub);
        for key in (0..40).step_by(3) {
            hub.leave(key, &format!("room{}", (key + 2) % 9));
        }
        check(&hub);
        for key in (0..40).step_by(2) {
            hub.unregister(key);
        }
        check(&hub);
        for room in 0..9 {
            let name = format!("room{room}");
            for &key in hub.room(&name) {
                assert!(hub.rooms_of(key).any(|r| r == name));
            }
        }
    }
}
