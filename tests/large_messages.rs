//! 1 MiB messages (the default --max-message-size) arrive intact both ways:
//! client -> backend as `new_message`, backend -> client as a text frame,
//! including multi-byte characters and everything JSON must escape.

mod common;

use common::*;

const MIB: usize = 1024 * 1024;

/// Exactly `len` bytes of text full of things that are easy to get wrong.
fn tricky_text(len: usize) -> String {
    let pattern = "héllo \"wörld\" \\ back\\slash \n\r\t € 😀 \u{1} \u{7f} </script> ";
    let mut s = String::with_capacity(len);
    let mut i = 0u64;
    while s.len() + pattern.len() + 20 <= len {
        s.push_str(&format!("{i}:"));
        s.push_str(pattern);
        i += 1;
    }
    while s.len() < len {
        s.push('.');
    }
    assert_eq!(s.len(), len);
    s
}

fn assert_same(got: &str, want: &str) {
    if got != want {
        let at = got
            .bytes()
            .zip(want.bytes())
            .position(|(a, b)| a != b)
            .unwrap_or(got.len().min(want.len()));
        panic!(
            "message differs: {} bytes vs {} expected, first difference at byte {at}",
            got.len(),
            want.len()
        );
    }
}

#[test]
fn one_mib_from_client_to_backend() {
    let broker = Broker::start(&[]);
    let mut backend = Backend::connect(&broker);
    let mut ws = join(&broker, &mut backend, "big", "room");
    let text = tricky_text(MIB);
    send_text(&mut ws, &text);
    let event = backend.expect("new_message");
    assert_same(event["params"]["message"].as_str().unwrap(), &text);
    assert_eq!(event["params"]["context"]["client_id"], "big");
}

#[test]
fn one_mib_in_fragments_from_client_to_backend() {
    let broker = Broker::start(&[]);
    let mut backend = Backend::connect(&broker);
    let mut ws = join(&broker, &mut backend, "big", "room");
    let text = tricky_text(MIB);
    // 17 fragments of odd sizes, cutting through multi-byte characters.
    let parts: Vec<&[u8]> = text.as_bytes().chunks(65_537).collect();
    send_raw(
        &mut ws,
        &fragments(TEXT, &parts, Some([1, 2, 3, 4])).concat(),
    );
    let event = backend.expect("new_message");
    assert_same(event["params"]["message"].as_str().unwrap(), &text);
}

#[test]
fn one_mib_from_backend_to_clients() {
    let broker = Broker::start(&[]);
    let mut backend = Backend::connect(&broker);
    let mut a = join(&broker, &mut backend, "a", "room");
    let mut b = join(&broker, &mut backend, "b", "room");
    let text = tricky_text(MIB);
    backend.send_to_room("room", &text);
    backend.send_to_connection("a", &text);
    assert_same(&recv_text(&mut a), &text);
    assert_same(&recv_text(&mut b), &text);
    assert_same(&recv_text(&mut a), &text);
}
