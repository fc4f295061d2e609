//! `message_to_room` reaches the members of that room and nobody else.

mod common;

use common::*;
use tungstenite::Message;

#[test]
fn room_messages_stay_in_their_room() {
    let broker = Broker::start(&[]);
    let mut backend = Backend::connect(&broker);
    let mut red1 = join(&broker, &mut backend, "r1", "red");
    let mut red2 = join(&broker, &mut backend, "r2", "red");
    let mut blue = join(&broker, &mut backend, "b1", "blue");

    backend.send_to_room("red", "for red");
    backend.send_to_room("blue", "for blue");
    // Backend lines are carried out in order, so had "for red" reached the
    // blue client it would come before "for blue".
    assert_eq!(recv_text(&mut blue), "for blue");
    assert_eq!(recv_text(&mut red1), "for red");
    assert_eq!(recv_text(&mut red2), "for red");

    // A room nobody is in, and a room whose name only resembles one.
    backend.send_to_room("green", "for green");
    backend.send_to_room("re", "for re");
    backend.send_to_room("red ", "for red-space");
    backend.send_to_room("red", "red again");
    assert_eq!(recv_text(&mut red1), "red again");
    assert_eq!(recv_text(&mut red2), "red again");
    backend.send_to_room("blue", "blue again");
    assert_eq!(recv_text(&mut blue), "blue again");
}

#[test]
fn the_room_goes_on_after_a_member_leaves() {
    let broker = Broker::start(&[]);
    let mut backend = Backend::connect(&broker);
    let mut stay = join(&broker, &mut backend, "stay", "red");
    let mut leave = join(&broker, &mut backend, "leave", "red");
    leave.close(None).unwrap();
    assert!(matches!(next_message(&mut leave), Message::Close(_)));
    let gone = backend.expect("disconnected");
    assert_eq!(gone["params"]["context"]["client_id"], "leave");
    backend.send_to_room("red", "after");
    assert_eq!(recv_text(&mut stay), "after");
}
