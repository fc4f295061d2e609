//! 10,000 `message_to_room` lines reach every member of the room, all of
//! them, in the order the backend sent them.

mod common;

use std::thread;

use common::*;

const COUNT: usize = 10_000;

#[test]
fn ten_thousand_room_messages_arrive_in_order() {
    let broker = Broker::start(&[]);
    let mut backend = Backend::connect(&broker);
    let members = join_each(&broker, &mut backend, &["m0", "m1"], "stream");
    let readers: Vec<_> = members
        .into_iter()
        .map(|mut ws| {
            thread::spawn(move || {
                for i in 0..COUNT {
                    let text = recv_text(&mut ws);
                    assert_eq!(text, format!("msg {i}"), "message {i} out of order");
                }
            })
        })
        .collect();
    backend.send_all((0..COUNT).map(|i| to_room("stream", &format!("msg {i}"))));
    for reader in readers {
        reader.join().expect("a member got every message in order");
    }
}
