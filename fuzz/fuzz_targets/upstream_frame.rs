//! Fuzz target: one upstream WebSocket message payload through
//! `relay::upstream::decode_frame`, the function the upstream worker calls on every text
//! or binary message it reads.
//!
//! Invariants beyond "no panic", for every accepted frame:
//! - `kind` is not empty;
//! - the body the worker stores (`body.to_string()`) is JSON that parses back to the same
//!   value, and storing that again changes nothing;
//! - the frame re-encoded as `{seq, kind, body}` decodes to the same frame;
//! - decoding is deterministic: a second decode of the same bytes agrees.
//!
//! A rejected payload must stay rejected on a second decode.
//!
//! "The same" is exact for everything but floats, which may differ in their last few bits:
//! `serde_json` without its `float_roundtrip` feature (the relay's build) parses floats
//! with best-effort rounding, so `-5e-72` is stored as `-5.000000000000001e-72`, and that
//! reads back as `-5.000000000000002e-72`. With the feature enabled the tolerance can go.

#![no_main]

use libfuzzer_sys::fuzz_target;
use relay::upstream::{decode_frame, BadFrame};
use serde_json::Value;

fuzz_target!(|payload: &[u8]| {
    let first = decode_frame(payload);
    let again = decode_frame(payload);
    let frame = match (first, again) {
        (Ok(frame), Ok(again)) => {
            assert_eq!(
                (frame.seq, &frame.kind, &frame.body),
                (again.seq, &again.kind, &again.body)
            );
            frame
        }
        (Err(BadFrame::EmptyKind), Err(BadFrame::EmptyKind))
        | (Err(BadFrame::Json(_)), Err(BadFrame::Json(_))) => return,
        (first, again) => panic!("decode is not deterministic: {first:?} then {again:?}"),
    };
    assert!(
        !frame.kind.is_empty(),
        "accepted a frame with an empty kind"
    );

    // What the worker hands the sequencer as the stored body.
    let stored = frame.body.to_string();
    let reparsed: Value = serde_json::from_str(&stored).expect("a stored body is always JSON");
    assert!(
        same(&reparsed, &frame.body),
        "stored body {stored} changed its value: {reparsed:?} != {:?}",
        frame.body
    );
    let restored = reparsed.to_string();
    let reread: Value = serde_json::from_str(&restored).expect("a stored body is always JSON");
    assert!(
        same(&reread, &reparsed),
        "storing {stored} again changed it to {restored}"
    );

    let encoded = serde_json::json!({
        "seq": frame.seq,
        "kind": frame.kind,
        "body": frame.body,
    })
    .to_string();
    let redecoded = decode_frame(encoded.as_bytes())
        .unwrap_or_else(|error| panic!("re-encoded frame {encoded} rejected: {error}"));
    assert_eq!(redecoded.seq, frame.seq);
    assert_eq!(redecoded.kind, frame.kind);
    assert!(
        same(&redecoded.body, &frame.body),
        "re-encoded frame {encoded} decodes to another body"
    );
});

/// Equal JSON values, floats within a few units in the last place (see the module docs).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(a), Value::Number(b)) if a.is_f64() && b.is_f64() => {
            match (a.as_f64(), b.as_f64()) {
                (Some(a), Some(b)) => ulps(a).abs_diff(ulps(b)) <= 4,
                _ => false,
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(a, b)| same(a, b))
        }
        (Value::Object(a), Value::Object(b)) => {
            a.len() == b.len()
                && a.iter()
                    .zip(b)
                    .all(|((ka, va), (kb, vb))| ka == kb && same(va, vb))
        }
        _ => a == b,
    }
}

/// A float's position on the number line in units of the last place (monotonic in `x`).
fn ulps(x: f64) -> i64 {
    let bits = x.to_bits() as i64;
    if bits < 0 {
        i64::MIN - bits
    } else {
        bits
    }
}
