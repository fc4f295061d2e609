//! Replays every input kept under fuzz/corpus/ through the fuzz harnesses
//! (no fuzzer needed), so a regression on any of them fails `cargo test`.

use std::fs;
use std::path::Path;

fn replay(target: &str, harness: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let entries = fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let mut count = 0;
    for entry in entries {
        let path = entry.expect("corpus entry").path();
        let data = fs::read(&path).expect("corpus file");
        let outcome = std::panic::catch_unwind(|| harness(&data));
        assert!(outcome.is_ok(), "{target}: {} fails", path.display());
        count += 1;
    }
    assert!(count > 0, "{target}: empty corpus in {}", dir.display());
}

#[test]
fn handshake_corpus() {
    replay("handshake", pystrands::fuzzing::handshake);
}

#[test]
fn frame_reader_corpus() {
    replay("frame_reader", pystrands::fuzzing::frame_reader);
}

#[test]
fn backend_lines_corpus() {
    replay("backend_lines", pystrands::fuzzing::backend_lines);
}

#[test]
fn connection_corpus() {
    replay("connection", pystrands::fuzzing::connection);
}

#[test]
fn server_corpus() {
    replay("server", pystrands::fuzzing::server);
}
