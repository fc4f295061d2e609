//! Defends the backend line parser and command decoder against arbitrary lines.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pystrands::fuzzing::backend_lines(data));
