//! Defends the HTTP upgrade parser against malformed, oversized and hostile request heads.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pystrands::fuzzing::handshake(data));
