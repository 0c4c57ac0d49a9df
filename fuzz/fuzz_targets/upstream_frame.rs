//! Fuzz target: one upstream WebSocket message payload through
//! `relay::atproto::frame::decode` (the lexicon's limits), the function the upstream worker
//! calls on every binary message it reads.
//!
//! Invariants beyond "no panic":
//! - decoding is deterministic: a second decode of the same bytes agrees (a refusal, with
//!   the same reason);
//! - an accepted event's `seq` is in `1..=SEQ_MAX`;
//! - the frame the sequencer builds from it (`sequenced_frame`, relay seq 1) decodes again
//!   to the same event: same kind, DID and revision, the same body but for `seq`, which is
//!   1 (every field kept, known or not); its body is canonical (re-encoding it changes
//!   nothing), is what decoding the received body and re-encoding it with seq 1 gives
//!   (the sequencer splices the seq into a canonical body instead), and is the slice of the
//!   frame after the header.
//!
//! And every accepted event must be storable: it is committed to a real (in-memory) SQLite
//! event log exactly as the sequencer commits it, and read back unchanged. A frame the edge
//! accepts but the store refuses is the historical poison frame's class (a `seq` past
//! SQLite's integers halted every host's events); `fuzz/corpus/upstream_frame/` keeps that
//! frame as `poison_seq_overflow.cbor`.

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use relay::atproto::frame::{self, Incoming, Limits, SEQ_MAX};
use relay::store::{NewEvent, Page, Store};

/// The event log every accepted event is committed to, with its one host.
fn store() -> &'static (Store, i64) {
    static STORE: OnceLock<(Store, i64)> = OnceLock::new();
    STORE.get_or_init(|| {
        let store =
            Store::open(std::path::Path::new(":memory:")).expect("an in-memory store opens");
        let (host_id, _) = store.add_host("fuzz.example").expect("a host is added");
        (store, host_id)
    })
}

fuzz_target!(|payload: &[u8]| {
    let limits = Limits::default();
    let event = match (
        frame::decode(payload, &limits),
        frame::decode(payload, &limits),
    ) {
        (Ok(first), Ok(again)) => {
            assert_eq!(first, again, "decode is not deterministic");
            match first {
                Incoming::Event(event) => event,
                Incoming::Info(_) | Incoming::Error(_) | Incoming::Unknown(_) => return,
            }
        }
        (Err(first), Err(again)) => {
            assert_eq!(first.to_string(), again.to_string(), "refused differently");
            return;
        }
        (first, again) => panic!("decode is not deterministic: {first:?} then {again:?}"),
    };
    assert!(
        (1..=SEQ_MAX).contains(&event.seq),
        "accepted seq {}",
        event.seq
    );

    // What the sequencer builds: the consumers' frame, the stored body a slice of it.
    let (sequenced, body_at) = frame::sequenced_frame(event.kind, &event.body, 1);
    let body = &sequenced[body_at..];
    assert_eq!(
        frame::event_frame(event.kind, body),
        sequenced,
        "the frame is the header and the stored body"
    );
    assert_eq!(
        frame::rewrite_seq(body, 1).as_deref(),
        Some(body),
        "the stored body is not canonical"
    );
    assert_eq!(
        frame::Body::Decoded(event.body.fields()).with_seq(1),
        body,
        "the spliced body differs from the re-encoded one"
    );
    let again = match frame::decode(&sequenced, &limits) {
        Ok(Incoming::Event(again)) => again,
        other => panic!("the relay's frame does not decode as an event: {other:?}"),
    };
    let mut expected = event.body.fields();
    expected.insert("seq".into(), ipld_core::ipld::Ipld::Integer(1));
    assert_eq!(
        (again.seq, again.kind, &again.did, &again.rev, &again.body.fields()),
        (1, event.kind, &event.did, &event.rev, &expected),
        "the relay's frame says something else"
    );

    // Storable, as the sequencer stores it (relay seq 1; removed again after the check).
    let (store, host_id) = store();
    let stored = NewEvent {
        seq: 1,
        host_id: *host_id,
        upstream_seq: event.seq,
        kind: event.kind,
        body: bytes::Bytes::copy_from_slice(body),
        account: None,
    };
    store
        .commit_events(std::slice::from_ref(&stored))
        .unwrap_or_else(|error| panic!("accepted event cannot be stored: {error}"));
    let read_back = store
        .events_after(0, Page::events(2))
        .expect("the log reads");
    assert_eq!(read_back, [stored], "the log gives back another event");
    store
        .delete_events_below(2, 1)
        .expect("the event is removed");
});
