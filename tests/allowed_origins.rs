//! With --allowed-origins, an upgrade whose Origin is not in the list gets
//! HTTP 403 before any backend hears of it; a listed origin goes through.

mod common;

use common::*;
use serde_json::json;

#[test]
fn only_listed_origins_reach_the_backend() {
    let broker = Broker::start(&[
        "--allowed-origins",
        "https://app.example.com,http://localhost:3000",
    ]);
    let mut backend = Backend::connect(&broker);
    let mut clients = Vec::new();
    for origin in [
        "https://evil.example.com",
        "https://app.example.com.evil.net",
        "null",
    ] {
        let upgrade = start_upgrade(&broker, "/ws/room", &[("Origin", origin)]);
        assert_eq!(upgrade.refused_status(), 403, "origin {origin}");
    }
    for origin in ["https://app.example.com", "http://localhost:3000"] {
        let upgrade = start_upgrade(&broker, "/ws/room", &[("Origin", origin)]);
        // The first event the backend sees is this allowed request.
        let request = backend.expect("connection_request");
        assert_eq!(request["params"]["headers"]["Origin"], json!([origin]));
        clients.push(upgrade.accept(&mut backend, &request, json!({})).ws);
    }
}
