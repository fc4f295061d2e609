//! How connections end: recorded during the turn, carried out once at its
//! end, removed from the slabs last.
//!
//! [`Server::end_client`] and [`Server::end_backend`] only record: an
//! ending on the client (the first one recorded wins, except that a dead
//! socket, [`Ending::Drop`], overrides any other), or `closing` on the
//! backend, which also takes it out of the routing at once. The end of
//! the turn ([`Server::finish_endings`]) queues the last bytes (HTTP reply
//! or close frame), arms the close timeout, takes the client out of the
//! hub and sends its backend the `disconnected` event; for a backend it
//! counts what is lost, lets its paused clients read again and fails the
//! connection requests it was answering. [`Server::reap`] removes what
//! ended from the slabs after the writes.

use std::rc::Rc;
use std::time::Instant;

use log::warn;

use crate::backend;
use crate::ws::{encode, handshake};

use super::conn::{ConnRef, Ending, Phase};
use super::{list_once, Server};

impl Server {
    /// Records how client `key` ends; carried out at the end of the turn.
    pub(super) fn end_client(&mut self, key: usize, ending: Ending) {
        // What was corked for this client comes before its last bytes.
        self.seal();
        let Some(c) = self.clients.get_mut(key) else {
            return;
        };
        match (c.ending.as_deref(), &ending) {
            (None, _) => {
                c.ending = Some(Box::new(ending));
                self.turn.ending_clients.push(key);
            }
            (Some(Ending::Drop), _) => {}
            (Some(_), Ending::Drop) => c.ending = Some(Box::new(Ending::Drop)),
            (Some(_), _) => {}
        }
    }

    /// Marks backend `key` closing: out of the routing now, no more of its
    /// lines carried out, finished at the end of the turn.
    pub(super) fn end_backend(&mut self, key: usize) {
        let Some(b) = self.backends.get_mut(key) else {
            return;
        };
        if b.closing {
            return;
        }
        b.closing = true;
        self.routing.remove(key);
        self.turn.ending_backends.push(key);
    }

    /// Carries out every ending recorded so far: backends first (their
    /// orphaned connection requests become client endings), then clients.
    pub(super) fn finish_endings(&mut self) {
        loop {
            if !self.turn.ending_backends.is_empty() {
                for key in std::mem::take(&mut self.turn.ending_backends) {
                    self.finish_backend(key);
                }
            } else if !self.turn.ending_clients.is_empty() {
                for key in std::mem::take(&mut self.turn.ending_clients) {
                    let ending = self.clients.get_mut(key).and_then(|c| c.ending.take());
                    if let Some(ending) = ending {
                        self.finish_client(key, *ending);
                    }
                }
            } else {
                return;
            }
        }
    }

    /// Ends a client connection in the given way. Leaving the hub and the
    /// `disconnected` event happen here, once; the socket itself is closed
    /// when its last bytes are out (or at once for [`Ending::Drop`]).
    fn finish_client(&mut self, key: usize, ending: Ending) {
        let Some(c) = self.clients.get_mut(key) else {
            return;
        };
        let was_open = matches!(c.phase, Phase::Open);
        if let Phase::Pending { .. } = c.phase {
            self.pending.remove(&c.serial);
        }
        let already_closing = matches!(c.phase, Phase::Closing { .. });
        let await_peer = match ending {
            Ending::Drop => {
                self.turn.dead_clients.push(key);
                c.phase = Phase::Closing { await_peer: false };
                c.ready.readable = false;
                None
            }
            _ if already_closing => None,
            Ending::Http {
                status,
                text,
                reason,
            } => {
                let reply = handshake::http_response(status, text, &reason, "");
                c.outq.push(Rc::from(reply));
                Some(false)
            }
            Ending::Reply(reply) => {
                c.outq.push(Rc::from(reply));
                Some(false)
            }
            Ending::Flush => Some(false),
            Ending::Close {
                code,
                reason,
                await_peer,
            } => {
                c.outq.push(encode::close(Some(code), &reason));
                Some(await_peer)
            }
            Ending::Echo(code) => {
                c.outq.push(encode::close(code, ""));
                Some(false)
            }
        };
        if let Some(await_peer) = await_peer {
            c.phase = Phase::Closing { await_peer };
            let serial = c.serial;
            list_once(&mut c.dirty, &mut self.turn.dirty_clients, key);
            self.timers
                .close
                .arm(Instant::now(), ConnRef { key, serial });
            // Reading stopped when the ending was recorded; what is left in
            // the socket (the client's close frame, or bytes to discard) is
            // read next turn.
            if c.ready.readable {
                list_once(&mut c.read_listed, &mut self.turn.read_again, key);
            }
        }
        if was_open {
            self.hub.unregister(key);
            self.route_client_event(key, backend::push_disconnected);
        }
    }

    /// A backend is gone: what it had not been sent is lost (and counted
    /// in the log), its paused clients read again, requests waiting on it
    /// get 503, and its clients move to another backend with their next
    /// event.
    fn finish_backend(&mut self, key: usize) {
        let Some(b) = self.backends.get_mut(key) else {
            return;
        };
        let gone = ConnRef {
            key,
            serial: b.serial,
        };
        if !b.authenticated {
            self.pending_backends -= 1;
        }
        let unsent = &b.out[b.out_pos..];
        if !unsent.is_empty() {
            let lost = memchr::memchr_iter(b'\n', unsent).count();
            warn!(
                "backend {} gone with {lost} events not yet written to it; they are lost",
                b.peer
            );
        }
        b.out_pos = b.out.len();
        let paused = std::mem::take(&mut b.paused);
        self.resume(paused);
        self.turn.dead_backends.push(key);
        self.fail_requests_of(gone, "the backend handling the request disconnected");
    }

    /// Fails every connection request still waiting on backend `r`.
    pub(super) fn fail_requests_of(&mut self, r: ConnRef, why: &'static str) {
        let orphans: Vec<usize> = self
            .pending
            .values()
            .copied()
            .filter(|&ckey| {
                self.clients.get(ckey).is_some_and(|c| {
                    c.ending.is_none()
                        && matches!(c.phase, Phase::Pending { backend, .. } if backend == r)
                })
            })
            .collect();
        for ckey in orphans {
            self.fail_pending(ckey, why);
        }
    }

    /// Removes the connections that ended this turn.
    pub(super) fn reap(&mut self) {
        for key in std::mem::take(&mut self.turn.dead_clients) {
            if let Some(mut c) = self.clients.try_remove(key) {
                let _ = self.poll.registry().deregister(&mut c.sock);
                self.sys
                    .freed(c.outq.cost() + c.inbuf.capacity() + c.reader.buffered());
            }
        }
        for key in std::mem::take(&mut self.turn.dead_backends) {
            if let Some(mut b) = self.backends.try_remove(key) {
                let _ = self.poll.registry().deregister(&mut b.sock);
                self.sys.freed(b.out.capacity() + b.inbuf.capacity());
            }
        }
    }
}
