//! `disconnect` (protocol v1.1): the backend closes a client's tabs (by
//! client_id) or one tab (by connection_id) with a close code and reason
//! the WebSocket client receives, followed by the usual `disconnected`
//! event; other clients are untouched.

mod common;

use common::*;
use serde_json::json;

#[test]
fn a_kick_by_connection_id_closes_one_tab_with_its_code_and_reason() {
    let broker = Broker::start(&[]);
    let mut backend = Backend::connect(&broker);
    let params = json!({"client_id": "mallory", "room_id": "lobby"});
    let mut tab1 = accept(&broker, &mut backend, "/ws/a", params.clone());
    let mut tab2 = accept(&broker, &mut backend, "/ws/b", params);
    let n = backend.acked(
        "disconnect",
        json!({"connection_id": tab1.context["connection_id"], "code": 4001, "reason": "spam, kicked"}),
    );
    assert_eq!(n, 1);
    assert_eq!(recv_close(&mut tab1.ws), (4001, "spam, kicked".to_owned()));
    let event = backend.expect("disconnected");
    assert_eq!(event["params"]["context"], tab1.context);
    // The other tab is still in the room.
    backend.send_to_room("lobby", "still here");
    assert_eq!(recv_text(&mut tab2.ws), "still here");
}

#[test]
fn a_kick_by_client_id_closes_every_tab() {
    let broker = Broker::start(&[]);
    let mut backend = Backend::connect(&broker);
    let mut tabs: Vec<Accepted> = (0..3)
        .map(|i| {
            accept(
                &broker,
                &mut backend,
                &format!("/ws/{i}"),
                json!({"client_id": "eve"}),
            )
        })
        .collect();
    let mut bystander = join(&broker, &mut backend, "bob", "/ws/0");
    let n = backend.acked(
        "disconnect",
        json!({"client_id": "eve", "code": 3000, "reason": "ünïcode bye"}),
    );
    assert_eq!(n, 3);
    for tab in &mut tabs {
        assert_eq!(recv_close(&mut tab.ws), (3000, "ünïcode bye".to_owned()));
    }
    let mut gone: Vec<String> = (0..3)
        .map(|_| {
            let e = backend.expect("disconnected");
            assert_eq!(e["params"]["context"]["client_id"], "eve");
            e["params"]["context"]["connection_id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    gone.sort();
    gone.dedup();
    assert_eq!(gone.len(), 3, "one disconnected event per tab");
    // Kicking again reaches nobody.
    assert_eq!(backend.acked("disconnect", json!({"client_id": "eve"})), 0);
    backend.send_broadcast("after");
    assert_eq!(recv_text(&mut bystander), "after");
}

#[test]
fn a_kick_defaults_to_1000_and_an_empty_reason() {
    let broker = Broker::start(&[]);
    let mut backend = Backend::connect(&broker);
    let mut ws = join(&broker, &mut backend, "x", "r");
    backend.send(&json!({"action": "disconnect", "params": {"client_id": "x"}}));
    assert_eq!(recv_close(&mut ws), (1000, String::new()));
    backend.expect("disconnected");
}

#[test]
fn bad_codes_and_reasons_are_refused_and_the_client_stays() {
    let broker = Broker::start(&[]);
    let mut backend = Backend::connect(&broker);
    let mut ws = join(&broker, &mut backend, "x", "r");
    for code in [999, 1001, 1006, 2999, 5000] {
        let error = backend.refused("disconnect", json!({"client_id": "x", "code": code}));
        assert!(error.contains("params.code"), "{code}: {error}");
    }
    let error = backend.refused(
        "disconnect",
        json!({"client_id": "x", "reason": "x".repeat(124)}),
    );
    assert!(
        error.contains("params.reason") && error.contains("123"),
        "{error}"
    );
    // 123 bytes is allowed.
    let n = backend.acked(
        "disconnect",
        json!({"client_id": "x", "code": 4999, "reason": "y".repeat(123)}),
    );
    assert_eq!(n, 1);
    assert_eq!(recv_close(&mut ws), (4999, "y".repeat(123)));
}
