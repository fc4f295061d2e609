//! JSON string output shared by the event encoders and the handshake.
//!
//! Strings are escaped with `value-trait`'s generator (the SIMD escaper
//! simd-json itself uses), written straight into the caller's buffer.

use value_trait::generator::{BaseGenerator, WriterGenerator};

/// Appends `s` as a quoted, escaped JSON string.
pub fn push_str(out: &mut Vec<u8>, s: &str) {
    // Every event without a request id writes one: skip the escaper's
    // set-up for it.
    if s.is_empty() {
        out.extend_from_slice(b"\"\"");
        return;
    }
    // Writing into a Vec<u8> cannot fail.
    let _ = WriterGenerator::new(out).write_string(s);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_round_trip() {
        for s in ["plain", "quote\" back\\slash", "ctl\u{1}\n\t", "ünï 🎉", ""] {
            let mut out = Vec::new();
            push_str(&mut out, s);
            let back: String = serde_json::from_slice(&out).unwrap();
            assert_eq!(back, s);
        }
    }
}
