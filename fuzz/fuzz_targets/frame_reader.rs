//! Defends the WebSocket frame reader against arbitrary bytes split at arbitrary points.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pystrands::fuzzing::frame_reader(data));
