//! Defends the broker's own state machine: clients and backends over
//! in-memory connections, driven by arbitrary operations, must keep every
//! bound and invariant of the loop and only ever write well-formed bytes.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| pystrands::fuzzing::server(data));
