//! Defends a client connection's whole byte stream: upgrade head, then frames, in arbitrary chunks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pystrands::fuzzing::connection(data));
