//! Fuzz target: one upstream WebSocket message payload through
//! `relay::upstream::decode_frame`, the function the upstream worker calls on every text
//! or binary message it reads.
//!
//! Invariants beyond "no panic", for every accepted frame:
//! - `kind` is not empty;
//! - the body the worker stores (`stored_body`) is JSON, and it is the upstream's own text:
//!   a slice of the payload byte for byte (or `null` when the frame has none), so no number
//!   is re-rounded and no key dropped;
//! - the frame re-encoded as `{seq, kind, body}` decodes to the same frame, body text
//!   included;
//! - decoding is deterministic: a second decode of the same bytes agrees.
//!
//! A rejected payload must stay rejected on a second decode.
//!
//! And every accepted frame must be storable: it is committed to a real (in-memory) SQLite
//! event log exactly as the sequencer commits it, and read back unchanged. A frame the edge
//! accepts but the store refuses is the historical poison frame's class (a `seq` past
//! SQLite's integers halted every host's events); `fuzz/corpus/upstream_frame/` keeps that
//! frame as `poison_seq_overflow.json`.

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use relay::store::{NewEvent, Page, Store};
use relay::upstream::{decode_frame, BadFrame};
use serde_json::Value;

/// The event log every accepted frame is committed to, with its one host.
fn store() -> &'static (Store, i64) {
    static STORE: OnceLock<(Store, i64)> = OnceLock::new();
    STORE.get_or_init(|| {
        let store = Store::open(std::path::Path::new(":memory:")).expect("an in-memory store opens");
        let (host_id, _) = store.add_host("fuzz.example").expect("a host is added");
        (store, host_id)
    })
}

fuzz_target!(|payload: &[u8]| {
    let first = decode_frame(payload);
    let again = decode_frame(payload);
    let frame = match (first, again) {
        (Ok(frame), Ok(again)) => {
            assert_eq!(
                (frame.seq, &frame.kind, frame.stored_body()),
                (again.seq, &again.kind, again.stored_body())
            );
            frame
        }
        (Err(BadFrame::EmptyKind), Err(BadFrame::EmptyKind))
        | (Err(BadFrame::Json(_)), Err(BadFrame::Json(_))) => return,
        (Err(BadFrame::SeqOutOfRange(first)), Err(BadFrame::SeqOutOfRange(again)))
            if first == again =>
        {
            return
        }
        (first, again) => panic!("decode is not deterministic: {first:?} then {again:?}"),
    };
    assert!(
        !frame.kind.is_empty(),
        "accepted a frame with an empty kind"
    );

    // What the worker hands the sequencer as the stored body.
    let stored = frame.stored_body();
    serde_json::from_str::<Value>(&stored).expect("a stored body is always JSON");
    match &frame.body {
        Some(raw) => assert!(
            contains(payload, raw.get().as_bytes()),
            "stored body {stored} is not the upstream's text"
        ),
        None => assert_eq!(stored, "null"),
    }

    // Storable, as the sequencer stores it (relay seq 1; removed again after the check).
    let (store, host_id) = store();
    let event = NewEvent {
        seq: 1,
        host_id: *host_id,
        upstream_seq: frame.seq,
        kind: frame.kind.clone(),
        body: stored.clone(),
    };
    store
        .commit_events(std::slice::from_ref(&event))
        .unwrap_or_else(|error| panic!("accepted frame cannot be stored: {error}"));
    let read_back = store.events_after(0, Page::events(2)).expect("the log reads");
    assert_eq!(read_back, [event], "the log gives back another event");
    store.delete_events_below(2, 1).expect("the event is removed");

    let encoded = format!(
        "{{\"seq\":{},\"kind\":{},\"body\":{stored}}}",
        frame.seq,
        serde_json::to_string(&frame.kind).expect("a string encodes"),
    );
    let redecoded = decode_frame(encoded.as_bytes())
        .unwrap_or_else(|error| panic!("re-encoded frame {encoded} rejected: {error}"));
    assert_eq!(redecoded.seq, frame.seq);
    assert_eq!(redecoded.kind, frame.kind);
    assert_eq!(
        redecoded.stored_body(),
        stored,
        "re-encoded frame {encoded} decodes to another body"
    );
});

/// Whether `needle` occurs in `haystack` as a contiguous run of bytes.
fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|window| window == needle)
}
