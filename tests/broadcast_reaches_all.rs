//! `broadcast` reaches every connected client, whatever its room.

mod common;

use common::*;

#[test]
fn broadcast_reaches_every_client_in_every_room() {
    let broker = Broker::start(&[]);
    let mut backend = Backend::connect(&broker);
    let mut clients = vec![
        join(&broker, &mut backend, "a", "red"),
        join(&broker, &mut backend, "b", "red"),
        join(&broker, &mut backend, "c", "blue"),
        join(&broker, &mut backend, "d", "green"),
    ];
    backend.send_broadcast("hello everyone");
    backend.send_broadcast("second");
    for ws in &mut clients {
        assert_eq!(recv_text(ws), "hello everyone");
        assert_eq!(recv_text(ws), "second");
    }
    // A client that left is not counted; the rest still get broadcasts.
    let mut gone = clients.pop().unwrap();
    gone.close(None).unwrap();
    backend.expect("disconnected");
    backend.send_broadcast("third");
    for ws in &mut clients {
        assert_eq!(recv_text(ws), "third");
    }
}
