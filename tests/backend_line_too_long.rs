//! A backend line longer than --max-line-size closes that backend (with a
//! logged reason), whether it comes in one read or across many; the broker
//! and its other backends go on.

mod common;

use common::*;

#[test]
fn an_overlong_line_closes_only_that_backend() {
    overlong_line_closes_only_that_backend(4096, 8000);
}

#[test]
fn an_overlong_line_spanning_many_reads_closes_only_that_backend() {
    overlong_line_closes_only_that_backend(65536, 1 << 20);
}

fn overlong_line_closes_only_that_backend(limit: usize, line_len: usize) {
    let flag = limit.to_string();
    let broker = Broker::start(&["--max-line-size", &flag]);
    let mut bad = Backend::connect(&broker);
    let mut good = Backend::connect(&broker);
    // The client's request goes to one of them; let `good` own the client.
    let (_, client) = accept_any(
        &broker,
        &mut [&mut bad, &mut good],
        "/ws/room",
        serde_json::json!({"client_id": "c", "room_id": "room"}),
    );
    let mut ws = client.ws;

    let huge = to_room("room", &"x".repeat(line_len)).to_string();
    bad.send_raw_unchecked(&huge);
    bad.expect_closed();
    broker.wait_log(&[&format!("backend {}", bad.local), "max-line-size"]);

    // A line just under the limit still works on the other backend.
    let fits = "y".repeat(limit - 200);
    good.send_to_room("room", &fits);
    assert_eq!(
        recv_text(&mut ws),
        fits,
        "the overlong line was carried out"
    );
}
