//! Two backends: connection requests go round-robin; every event of one
//! client (new_connection, new_message, disconnected) goes to one backend,
//! in order; when that backend dies, the client's next events go to the
//! other one, still in order.

mod common;

use common::*;
use serde_json::{json, Value};

const CLIENTS: usize = 4;

#[test]
fn each_client_sticks_to_one_backend_until_it_dies() {
    let broker = Broker::start(&[]);
    let mut a = Backend::connect(&broker);
    let mut b = Backend::connect(&broker);

    // Round robin: with two live backends, consecutive requests alternate.
    let mut owner = Vec::new();
    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        let (who, client) = accept_any(
            &broker,
            &mut [&mut a, &mut b],
            "/ws/room",
            json!({"client_id": format!("c{i}")}),
        );
        assert_eq!(client.context["client_id"], format!("c{i}"));
        clients.push(client.ws);
        owner.push(who);
    }
    for pair in owner.windows(2) {
        assert_ne!(pair[0], pair[1], "requests were not round-robin: {owner:?}");
    }

    // Every message of a client reaches its own backend, in order.
    const ROUNDS: usize = 20;
    for round in 0..ROUNDS {
        for (i, ws) in clients.iter_mut().enumerate() {
            send_text(ws, &format!("c{i} #{round}"));
        }
    }
    let mut seen = vec![Vec::new(); CLIENTS];
    for _ in 0..CLIENTS * ROUNDS {
        let (who, event) = recv_any(&mut [&mut a, &mut b]);
        let i = client_index(&event);
        assert_eq!(
            who, owner[i],
            "c{i}'s event went to the other backend: {event}"
        );
        seen[i].push(event["params"]["message"].as_str().unwrap().to_owned());
    }
    for (i, got) in seen.iter().enumerate() {
        let want: Vec<String> = (0..ROUNDS).map(|r| format!("c{i} #{r}")).collect();
        assert_eq!(got, &want, "c{i}'s messages out of order");
    }

    // Backend a dies: its clients' next events go to b, in order.
    a.disconnect_and_wait(&broker);
    for round in 0..ROUNDS {
        for (i, ws) in clients.iter_mut().enumerate() {
            send_text(ws, &format!("c{i} after #{round}"));
        }
    }
    let mut seen = vec![Vec::new(); CLIENTS];
    for _ in 0..CLIENTS * ROUNDS {
        let event = b.expect("new_message");
        let i = client_index(&event);
        seen[i].push(event["params"]["message"].as_str().unwrap().to_owned());
    }
    for (i, got) in seen.iter().enumerate() {
        let want: Vec<String> = (0..ROUNDS).map(|r| format!("c{i} after #{r}")).collect();
        assert_eq!(
            got, &want,
            "c{i}'s messages out of order after the failover"
        );
    }
    // Disconnects of a's former clients reach b too.
    let first_of_a = owner.iter().position(|&w| w == 0).unwrap();
    clients[first_of_a].close(None).unwrap();
    let event = b.expect("disconnected");
    assert_eq!(client_index(&event), first_of_a);
}

#[test]
fn a_new_backend_takes_its_share_of_requests() {
    let broker = Broker::start(&[]);
    let mut a = Backend::connect(&broker);
    let _first = accept(&broker, &mut a, "/ws/r", json!({}));
    let mut b = Backend::connect(&broker);
    let mut got = [0usize; 2];
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (who, client) = accept_any(&broker, &mut [&mut a, &mut b], "/ws/r", json!({}));
        got[who] += 1;
        clients.push(client.ws);
    }
    assert_eq!(got, [2, 2], "4 requests over 2 backends, round robin");
}

fn client_index(event: &Value) -> usize {
    let id = event["params"]["context"]["client_id"].as_str().unwrap();
    id[1..].parse().unwrap()
}
