//! The event-stream framing of `com.atproto.sync.subscribeRepos`
//! (<https://atproto.com/specs/event-stream>): every WebSocket binary message is a DAG-CBOR
//! header `{op, t}` followed by a DAG-CBOR body. `op: 1` is a message of type `t` (`#commit`,
//! `#sync`, `#identity`, `#account`, `#info`); `op: -1` an error `{error, message}` after
//! which the stream ends.
//!
//! [`decode`] is what the relay does with every upstream message: it checks the framing,
//! the body's shape for its type, the identifiers' syntax, the size limits and, for
//! `#commit` and `#sync`, that the CAR's root is the commit object the message names. A
//! message type it does not know is reported as [`Incoming::Unknown`] (the spec: skip it).
//! The relay rewrites `seq` with its own ([`Body::write_with_seq`]) and keeps every other
//! field, known or not: a canonical body (what hosts send) is kept as received and its `seq`
//! spliced in place ([`canonical`]); any other is decoded and re-encoded canonically.

use std::collections::BTreeMap;
use std::convert::Infallible;

use ipld_core::ipld::Ipld;
use serde::{Deserialize, Serialize};

use super::canonical;
use super::car::{self, BadCar};
use super::message::{
    Account, Commit, CommitObject, ErrorBody, Identity, Info, Sync, REPO_VERSION,
};
use super::syntax::{is_did, is_tid};

/// The firehose's XRPC path, on upstream hosts and on the relay.
pub const SUBSCRIBE_REPOS_PATH: &str = "/xrpc/com.atproto.sync.subscribeRepos";

/// The sequenced message types the relay stores and forwards.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// `#commit`
    Commit,
    /// `#sync`
    Sync,
    /// `#identity`
    Identity,
    /// `#account`
    Account,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 4] = [Kind::Commit, Kind::Sync, Kind::Identity, Kind::Account];

    /// The header's `t`.
    pub fn tag(self) -> &'static str {
        match self {
            Kind::Commit => "#commit",
            Kind::Sync => "#sync",
            Kind::Identity => "#identity",
            Kind::Account => "#account",
        }
    }

    /// The kind whose tag is `t`.
    pub fn from_tag(t: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|kind| kind.tag() == t)
    }
}

/// The `#info` message's tag.
pub const INFO_TAG: &str = "#info";

/// Limits on what one message may carry (the lexicon's).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Bytes in a `blocks` CAR slice.
    pub blocks_bytes_max: usize,
    /// Operations in one `#commit`.
    pub ops_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            blocks_bytes_max: 2_000_000,
            ops_max: 200,
        }
    }
}

/// A sequenced message, checked.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// Its type.
    pub kind: Kind,
    /// The sender's sequence number, in `1..=`[`SEQ_MAX`].
    pub seq: u64,
    /// The account it is about (`repo` of a `#commit`, `did` of the others).
    pub did: String,
    /// The commit revision (`#commit`, `#sync`).
    pub rev: Option<String>,
    /// The commit object's CID (`#commit`'s `commit`, `#sync`'s CAR root); `None` for the
    /// others and for a `#sync` from [`decode_forwarded`].
    pub commit: Option<ipld_core::cid::Cid>,
    /// The `#account` message's status: `None` when active, else the status given
    /// (`inactive` when none is).
    pub inactive_status: Option<String>,
    /// When the message says it was emitted (its `time`).
    pub time: String,
    /// The body, every field kept (empty from [`decode_forwarded`]).
    pub body: Body,
}

/// A sequenced message's body as the relay keeps it until it writes its own `seq` in.
#[derive(Clone, Debug, PartialEq)]
pub enum Body {
    /// Canonical DAG-CBOR as received, and where its `seq` value lies.
    Canonical {
        /// The body's bytes.
        bytes: Vec<u8>,
        /// Where `seq`'s value is in `bytes`.
        seq_value: std::ops::Range<usize>,
    },
    /// Decoded, to be encoded canonically (a body that was not, or is empty).
    Decoded(BTreeMap<String, Ipld>),
}

impl Default for Body {
    fn default() -> Self {
        Self::Decoded(BTreeMap::new())
    }
}

impl Body {
    /// `body` as the relay keeps it: as received when it is canonical, else decoded.
    pub fn read(body: &[u8]) -> Result<Self, serde_ipld_dagcbor::DecodeError<Infallible>> {
        Ok(match canonical::seq_value(body) {
            Some(seq_value) => Self::Canonical {
                bytes: body.to_vec(),
                seq_value,
            },
            None => Self::Decoded(serde_ipld_dagcbor::from_slice(body)?),
        })
    }

    /// Append the body with `seq` in place of the sender's to `out`, canonically.
    pub fn write_with_seq(&self, out: &mut Vec<u8>, seq: u64) {
        match self {
            Self::Canonical { bytes, seq_value } => {
                out.extend_from_slice(&bytes[..seq_value.start]);
                serde_ipld_dagcbor::to_writer(&mut *out, &seq).expect("an integer always encodes");
                out.extend_from_slice(&bytes[seq_value.end..]);
            }
            Self::Decoded(map) => {
                let mut map = map.clone();
                map.insert("seq".to_owned(), Ipld::Integer(i128::from(seq)));
                serde_ipld_dagcbor::to_writer(&mut *out, &map)
                    .expect("a decoded body always re-encodes");
            }
        }
    }

    /// The body with `seq` in place of the sender's, encoded canonically.
    pub fn with_seq(&self, seq: u64) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_with_seq(&mut out, seq);
        out
    }

    /// The body's fields.
    pub fn fields(&self) -> BTreeMap<String, Ipld> {
        match self {
            Self::Canonical { bytes, .. } => {
                serde_ipld_dagcbor::from_slice(bytes).expect("a canonical body decodes")
            }
            Self::Decoded(map) => map.clone(),
        }
    }
}

/// What one message is.
#[derive(Clone, Debug, PartialEq)]
pub enum Incoming {
    /// A sequenced message.
    Event(Event),
    /// `#info` (not sequenced).
    Info(Info),
    /// An error frame: the sender ends the stream.
    Error(ErrorBody),
    /// A message type this relay does not know (its `t`): skipped, as the spec says.
    Unknown(String),
}

/// The largest sequence number accepted: what SQLite's INTEGER holds.
pub const SEQ_MAX: u64 = i64::MAX as u64;

/// Why a message was refused.
#[derive(Debug, thiserror::Error)]
pub enum BadFrame {
    /// The header is not DAG-CBOR `{op, t}`.
    #[error("bad header: {0}")]
    Header(String),
    /// `op` is neither 1 nor -1, or a message has no `t`.
    #[error("bad header: op {op}, t {t:?}")]
    Op {
        /// The header's `op`.
        op: i64,
        /// The header's `t`.
        t: Option<String>,
    },
    /// The body is not DAG-CBOR, has bytes after it, or lacks what its type requires.
    #[error("bad {kind} body: {error}")]
    Body {
        /// The message type.
        kind: &'static str,
        /// What is wrong.
        error: String,
    },
    /// `seq` outside `1..=`[`SEQ_MAX`]. Such a sequence number once reached the store and
    /// failed every commit for every host.
    #[error("message with seq {0} outside 1..={SEQ_MAX}")]
    SeqOutOfRange(i128),
    /// Not a DID.
    #[error("not a DID: {0:?}")]
    Did(String),
    /// Not a TID.
    #[error("not a TID: {0:?}")]
    Rev(String),
    /// Too many bytes of blocks or too many ops.
    #[error("{what} {got} over the limit {max}")]
    OverLimit {
        /// `blocks bytes` or `ops`.
        what: &'static str,
        /// How many the message has.
        got: usize,
        /// The limit.
        max: usize,
    },
    /// The CAR slice could not be read.
    #[error("{0}")]
    Car(#[from] BadCar),
    /// The CAR's root is not the commit object the message names.
    #[error("commit mismatch: {0}")]
    CommitMismatch(&'static str),
}

#[derive(Serialize, Deserialize)]
struct Header {
    op: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    t: Option<String>,
}

/// Decode and check one message payload.
pub fn decode(payload: &[u8], limits: &Limits) -> Result<Incoming, BadFrame> {
    decode_checking(payload, limits, Read::Everything)
}

/// [`decode`] as a relay's subscriber needs it: every check but the CAR slice's (its
/// hashes, its root, the commit object's did and rev), and the body not kept
/// ([`Event::body`] is empty). The relay read every CAR on the way in and forwards the
/// bytes; a subscriber that reads each one again pays most of a relay's decoding cost.
pub fn decode_forwarded(payload: &[u8], limits: &Limits) -> Result<Incoming, BadFrame> {
    decode_checking(payload, limits, Read::Forwarded)
}

/// How much of a message [`decode_checking`] reads.
#[derive(Clone, Copy, PartialEq)]
enum Read {
    /// Everything, the body kept: what the relay does with its upstreams' messages.
    Everything,
    /// Everything but the CAR slice, the body not kept: [`decode_forwarded`].
    Forwarded,
}

fn decode_checking(payload: &[u8], limits: &Limits, read: Read) -> Result<Incoming, BadFrame> {
    let mut reader = std::io::Cursor::new(payload);
    let header: Header = serde_ipld_dagcbor::de::from_reader_once(&mut reader)
        .map_err(|error| BadFrame::Header(error.to_string()))?;
    let body = &payload[reader.position() as usize..];
    match (header.op, header.t) {
        (-1, _) => Ok(Incoming::Error(typed("error", body)?)),
        (1, Some(t)) if t == INFO_TAG => Ok(Incoming::Info(typed("#info", body)?)),
        (1, Some(t)) => match Kind::from_tag(&t) {
            Some(kind) => decode_event(kind, body, limits, read).map(Incoming::Event),
            None => Ok(Incoming::Unknown(t)),
        },
        (op, t) => Err(BadFrame::Op { op, t }),
    }
}

fn typed<T: for<'de> Deserialize<'de>>(kind: &'static str, body: &[u8]) -> Result<T, BadFrame> {
    serde_ipld_dagcbor::from_slice(body).map_err(bad_body(kind))
}

/// A `kind` body the decoder refused, as [`BadFrame::Body`].
fn bad_body(
    kind: &'static str,
) -> impl FnOnce(serde_ipld_dagcbor::DecodeError<Infallible>) -> BadFrame {
    move |error| BadFrame::Body {
        kind,
        error: error.to_string(),
    }
}

fn decode_event(kind: Kind, body: &[u8], limits: &Limits, read: Read) -> Result<Event, BadFrame> {
    let kept = match read {
        Read::Everything => Body::read(body).map_err(bad_body(kind.tag()))?,
        Read::Forwarded => Body::default(),
    };
    let (seq, did, rev, commit, inactive_status, time) = match kind {
        Kind::Commit => {
            let commit: Commit = typed(kind.tag(), body)?;
            check_commit(&commit, limits, read)?;
            let Commit {
                seq,
                repo,
                rev,
                commit,
                time,
                ..
            } = commit;
            (seq, repo, Some(rev), Some(commit), None, time)
        }
        Kind::Sync => {
            let sync: Sync = typed(kind.tag(), body)?;
            let root = match read {
                Read::Everything => Some(check_blocks(
                    &sync.did,
                    &sync.rev,
                    &sync.blocks,
                    None,
                    limits,
                )?),
                Read::Forwarded => {
                    check_rev(&sync.rev)?;
                    check_blocks_size(&sync.blocks, limits)?;
                    None
                }
            };
            (sync.seq, sync.did, Some(sync.rev), root, None, sync.time)
        }
        Kind::Identity => {
            let identity: Identity = typed(kind.tag(), body)?;
            (identity.seq, identity.did, None, None, None, identity.time)
        }
        Kind::Account => {
            let account: Account = typed(kind.tag(), body)?;
            let status =
                (!account.active).then(|| account.status.unwrap_or_else(|| "inactive".to_owned()));
            (account.seq, account.did, None, None, status, account.time)
        }
    };
    check_seq(seq)?;
    if !is_did(&did) {
        return Err(BadFrame::Did(did));
    }
    Ok(Event {
        kind,
        seq: seq as u64,
        did,
        rev,
        commit,
        inactive_status,
        time,
        body: kept,
    })
}

fn check_seq(seq: i128) -> Result<(), BadFrame> {
    if (1..=i128::from(SEQ_MAX)).contains(&seq) {
        Ok(())
    } else {
        Err(BadFrame::SeqOutOfRange(seq))
    }
}

fn check_commit(commit: &Commit, limits: &Limits, read: Read) -> Result<(), BadFrame> {
    if let Some(since) = commit.since.as_ref().filter(|since| !is_tid(since)) {
        return Err(BadFrame::Rev(since.clone()));
    }
    if commit.ops.len() > limits.ops_max {
        return Err(BadFrame::OverLimit {
            what: "ops",
            got: commit.ops.len(),
            max: limits.ops_max,
        });
    }
    if commit.too_big && commit.blocks.is_empty() {
        // A deprecated form (the blocks left out for size): nothing to check.
        return check_rev(&commit.rev);
    }
    if read == Read::Forwarded {
        check_rev(&commit.rev)?;
        return check_blocks_size(&commit.blocks, limits);
    }
    check_blocks(
        &commit.repo,
        &commit.rev,
        &commit.blocks,
        Some(&commit.commit),
        limits,
    )
    .map(|_| ())
}

fn check_rev(rev: &str) -> Result<(), BadFrame> {
    if is_tid(rev) {
        Ok(())
    } else {
        Err(BadFrame::Rev(rev.to_owned()))
    }
}

/// The CAR slice's size, its blocks' hashes, and its root: a version-3 commit object of
/// `did` at `rev` (and, for a `#commit`, the CID the message names). The root's CID.
fn check_blocks(
    did: &str,
    rev: &str,
    blocks: &[u8],
    named: Option<&ipld_core::cid::Cid>,
    limits: &Limits,
) -> Result<ipld_core::cid::Cid, BadFrame> {
    check_rev(rev)?;
    check_blocks_size(blocks, limits)?;
    let car = car::read(blocks)?;
    if named.is_some_and(|named| *named != car.root) {
        return Err(BadFrame::CommitMismatch("the CAR's root is not the commit"));
    }
    let block = car
        .block(&car.root)
        .ok_or(BadFrame::CommitMismatch("the commit block is missing"))?;
    let object: CommitObject = serde_ipld_dagcbor::from_slice(block)
        .map_err(|_| BadFrame::CommitMismatch("the root is not a commit object"))?;
    if object.version != REPO_VERSION {
        return Err(BadFrame::CommitMismatch("the commit is not version 3"));
    }
    if object.did != did || object.rev != rev {
        return Err(BadFrame::CommitMismatch(
            "the commit object's did or rev differs from the message's",
        ));
    }
    Ok(car.root)
}

fn check_blocks_size(blocks: &[u8], limits: &Limits) -> Result<(), BadFrame> {
    if blocks.len() > limits.blocks_bytes_max {
        return Err(BadFrame::OverLimit {
            what: "blocks bytes",
            got: blocks.len(),
            max: limits.blocks_bytes_max,
        });
    }
    Ok(())
}

fn header_bytes(op: i64, t: Option<&str>) -> Vec<u8> {
    serde_ipld_dagcbor::to_vec(&Header {
        op,
        t: t.map(str::to_owned),
    })
    .expect("a header always encodes")
}

/// A sequenced message's frame: its header, then `body` (already DAG-CBOR).
pub fn event_frame(kind: Kind, body: &[u8]) -> Vec<u8> {
    let mut frame = header_bytes(1, Some(kind.tag()));
    frame.extend_from_slice(body);
    frame
}

/// A message's frame: header and `body` encoded.
pub fn encode<T: Serialize>(t: &str, body: &T) -> Vec<u8> {
    let mut frame = header_bytes(1, Some(t));
    serde_ipld_dagcbor::to_writer(&mut frame, body).expect("a message body always encodes");
    frame
}

/// An error frame.
pub fn error_frame(error: &str, message: &str) -> Vec<u8> {
    let mut frame = header_bytes(-1, None);
    serde_ipld_dagcbor::to_writer(
        &mut frame,
        &ErrorBody {
            error: error.to_owned(),
            message: Some(message.to_owned()),
        },
    )
    .expect("an error body always encodes");
    frame
}

/// The frame of a sequenced message numbered `seq`: its header, then `body` with `seq` in
/// place of the sender's ([`Body::write_with_seq`]) in the same buffer; and where the body
/// starts in it. What the sequencer does with every event: the body is what the log stores,
/// the whole frame what every consumer is sent.
pub fn sequenced_frame(kind: Kind, body: &Body, seq: u64) -> (Vec<u8>, usize) {
    let mut frame = header_bytes(1, Some(kind.tag()));
    let body_at = frame.len();
    body.write_with_seq(&mut frame, seq);
    (frame, body_at)
}

/// A stored body (canonical DAG-CBOR, as [`sequenced_frame`] wrote it) renumbered to `seq`:
/// the sequencer's rare path, when a batch the log refused is committed event by event and
/// the events behind a rejected one move down. `None` if `body` is not a DAG-CBOR map.
pub fn rewrite_seq(body: &[u8], seq: u64) -> Option<Vec<u8>> {
    Some(Body::read(body).ok()?.with_seq(seq))
}

/// An `#info` frame.
pub fn info_frame(name: &str, message: &str) -> Vec<u8> {
    encode(
        INFO_TAG,
        &Info {
            name: name.to_owned(),
            message: Some(message.to_owned()),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::super::car::{block_cid, write};
    use super::super::message::RepoOp;
    use super::super::syntax::tid;
    use super::*;

    const DID: &str = "did:plc:ewvi7nxzyoun6zhxrhs64oiz";

    fn commit(seq: i128) -> Commit {
        let rev = tid(1_780_000_000_000_000, 3);
        let record = serde_ipld_dagcbor::to_vec(&BTreeMap::from([
            ("$type", "app.bsky.feed.post"),
            ("text", "hello"),
        ]))
        .unwrap();
        let object = serde_ipld_dagcbor::to_vec(&CommitObject {
            did: DID.into(),
            version: 3,
            data: block_cid(&record),
            rev: rev.clone(),
            prev: None,
            sig: vec![1; 64],
        })
        .unwrap();
        let root = block_cid(&object);
        Commit {
            seq,
            rebase: false,
            too_big: false,
            repo: DID.into(),
            commit: root,
            rev: rev.clone(),
            since: None,
            blocks: write(root, [object.as_slice(), record.as_slice()]),
            ops: vec![RepoOp {
                action: "create".into(),
                path: format!("app.bsky.feed.post/{rev}"),
                cid: Some(block_cid(&record)),
                prev: None,
            }],
            blobs: vec![],
            prev_data: None,
            time: "2026-06-01T00:00:00.000Z".into(),
        }
    }

    fn decoded(payload: &[u8]) -> Result<Incoming, BadFrame> {
        decode(payload, &Limits::default())
    }

    #[test]
    fn the_header_is_canonical_dag_cbor() {
        // {"t": "#commit", "op": 1}: keys sorted by length.
        assert_eq!(
            header_bytes(1, Some("#commit")),
            b"\xa2\x61t\x67#commit\x62op\x01".to_vec()
        );
        assert_eq!(header_bytes(-1, None), b"\xa1\x62op\x20".to_vec());
    }

    #[test]
    fn a_commit_round_trips_and_its_seq_is_rewritten() {
        let sent = commit(41);
        let Incoming::Event(event) = decoded(&encode("#commit", &sent)).unwrap() else {
            panic!("not an event")
        };
        assert_eq!(
            (event.kind, event.seq, event.did.as_str()),
            (Kind::Commit, 41, DID)
        );
        assert_eq!(event.rev.as_deref(), Some(sent.rev.as_str()));
        assert!(
            matches!(event.body, Body::Canonical { .. }),
            "a canonical body is kept as received"
        );
        let stored = event.body.with_seq(9000);
        assert_eq!(
            stored,
            Body::Decoded(event.body.fields()).with_seq(9000),
            "the splice writes what re-encoding the decoded body writes"
        );
        assert_eq!(
            rewrite_seq(&stored, 9000).as_deref(),
            Some(stored.as_slice()),
            "canonical: re-encoding is stable"
        );
        let (sequenced, body_at) = sequenced_frame(event.kind, &event.body, 9000);
        assert_eq!(&sequenced[body_at..], stored.as_slice());
        let frame = event_frame(event.kind, &stored);
        assert_eq!(frame, sequenced);
        let Incoming::Event(again) = decoded(&frame).unwrap() else {
            panic!("not an event")
        };
        assert_eq!(again.seq, 9000);
        let resent: Commit = serde_ipld_dagcbor::from_slice(
            &serde_ipld_dagcbor::to_vec(&again.body.fields()).unwrap(),
        )
        .unwrap();
        assert_eq!(resent, Commit { seq: 9000, ..sent });
    }

    #[test]
    fn unknown_fields_are_kept_and_unknown_types_skipped() {
        let mut body: BTreeMap<String, Ipld> = serde_ipld_dagcbor::from_slice(
            &serde_ipld_dagcbor::to_vec(&Identity {
                seq: 5,
                did: DID.into(),
                time: "2026-06-01T00:00:00.000Z".into(),
                handle: Some("alice.test".into()),
            })
            .unwrap(),
        )
        .unwrap();
        body.insert("futureField".into(), Ipld::Bool(true));
        let Incoming::Event(event) = decoded(&encode("#identity", &body)).unwrap() else {
            panic!("not an event")
        };
        assert_eq!(
            event.body.fields().get("futureField"),
            Some(&Ipld::Bool(true))
        );
        assert_eq!(
            decoded(&encode("#labels", &body)).unwrap(),
            Incoming::Unknown("#labels".into())
        );
    }

    #[test]
    fn a_body_too_deep_for_the_splice_is_decoded_and_re_encoded() {
        let mut body: BTreeMap<String, Ipld> = serde_ipld_dagcbor::from_slice(
            &serde_ipld_dagcbor::to_vec(&Identity {
                seq: 5,
                did: DID.into(),
                time: "2026-06-01T00:00:00.000Z".into(),
                handle: None,
            })
            .unwrap(),
        )
        .unwrap();
        let mut deep = Ipld::Integer(1);
        for _ in 0..40 {
            deep = Ipld::List(vec![deep]);
        }
        body.insert("deep".into(), deep);
        let sent = serde_ipld_dagcbor::to_vec(&body).unwrap();
        let Incoming::Event(event) = decoded(&event_frame(Kind::Identity, &sent)).unwrap() else {
            panic!("not an event")
        };
        assert!(matches!(event.body, Body::Decoded(_)));
        assert_eq!(event.body.with_seq(5), sent);
    }

    #[test]
    fn info_and_error_frames_decode() {
        let info = Info {
            name: "OutdatedCursor".into(),
            message: None,
        };
        assert_eq!(
            decoded(&encode(INFO_TAG, &info)).unwrap(),
            Incoming::Info(info)
        );
        assert_eq!(
            decoded(&error_frame("FutureCursor", "cursor 9 is ahead of 3")).unwrap(),
            Incoming::Error(ErrorBody {
                error: "FutureCursor".into(),
                message: Some("cursor 9 is ahead of 3".into()),
            })
        );
    }

    #[test]
    fn account_status_is_read() {
        let account = |active, status: Option<&str>| Account {
            seq: 1,
            did: DID.into(),
            time: "2026-06-01T00:00:00.000Z".into(),
            active,
            status: status.map(str::to_owned),
        };
        let status = |account: &Account| match decoded(&encode("#account", account)).unwrap() {
            Incoming::Event(event) => event.inactive_status,
            other => panic!("{other:?}"),
        };
        assert_eq!(status(&account(true, None)), None);
        assert_eq!(
            status(&account(false, Some("takendown"))).as_deref(),
            Some("takendown")
        );
        assert_eq!(status(&account(false, None)).as_deref(), Some("inactive"));
    }

    #[test]
    fn sequence_numbers_the_log_cannot_hold_are_refused() {
        let mut body: BTreeMap<String, Ipld> =
            serde_ipld_dagcbor::from_slice(&serde_ipld_dagcbor::to_vec(&commit(1)).unwrap())
                .unwrap();
        // The historical poison frame: i64::MAX + 6.
        body.insert("seq".into(), Ipld::Integer(9_223_372_036_854_775_813));
        let refused = decoded(&encode("#commit", &body)).unwrap_err();
        assert!(matches!(
            refused,
            BadFrame::SeqOutOfRange(9_223_372_036_854_775_813)
        ));
        assert_eq!(
            refused.to_string(),
            "message with seq 9223372036854775813 outside 1..=9223372036854775807"
        );
        for seq in [0, -1] {
            body.insert("seq".into(), Ipld::Integer(seq));
            assert!(matches!(
                decoded(&encode("#commit", &body)),
                Err(BadFrame::SeqOutOfRange(_))
            ));
        }
        body.insert("seq".into(), Ipld::Integer(i128::from(SEQ_MAX)));
        assert!(decoded(&encode("#commit", &body)).is_ok());
    }

    #[test]
    fn malformed_messages_are_refused() {
        let good = commit(1);
        let refused = |commit: Commit| decoded(&encode("#commit", &commit)).unwrap_err();
        assert!(matches!(
            refused(Commit {
                repo: "alice".into(),
                ..good.clone()
            }),
            BadFrame::CommitMismatch(_) | BadFrame::Did(_)
        ));
        assert!(matches!(
            refused(Commit {
                rev: "yesterday".into(),
                ..good.clone()
            }),
            BadFrame::Rev(_)
        ));
        assert!(matches!(
            refused(Commit {
                blocks: b"not a car".to_vec(),
                ..good.clone()
            }),
            BadFrame::Car(_)
        ));
        assert!(matches!(
            refused(Commit {
                commit: block_cid(b"\xa0"),
                ..good.clone()
            }),
            BadFrame::CommitMismatch(_)
        ));
        assert!(matches!(
            refused(Commit {
                ops: vec![good.ops[0].clone(); 201],
                ..good.clone()
            }),
            BadFrame::OverLimit { what: "ops", .. }
        ));
        let small = Limits {
            blocks_bytes_max: 10,
            ..Limits::default()
        };
        assert!(matches!(
            decode(&encode("#commit", &good), &small),
            Err(BadFrame::OverLimit {
                what: "blocks bytes",
                ..
            })
        ));
        let mut trailing = encode("#commit", &good);
        trailing.push(0);
        assert!(matches!(decoded(&trailing), Err(BadFrame::Body { .. })));
        assert!(matches!(decoded(b""), Err(BadFrame::Header(_))));
        assert!(matches!(
            decoded(b"{\"seq\":1,\"kind\":\"commit\"}"),
            Err(BadFrame::Header(_))
        ));
        assert!(matches!(
            decoded(&header_bytes(2, Some("#commit"))),
            Err(BadFrame::Op { op: 2, .. })
        ));
        assert!(matches!(
            decoded(&header_bytes(1, None)),
            Err(BadFrame::Op { op: 1, t: None })
        ));
    }

    #[test]
    fn a_forwarded_message_is_checked_but_for_its_car() {
        let good = commit(7);
        let forwarded =
            |commit: &Commit, limits: &Limits| decode_forwarded(&encode("#commit", commit), limits);
        let Incoming::Event(event) = forwarded(&good, &Limits::default()).unwrap() else {
            panic!("not an event")
        };
        assert_eq!((event.seq, event.did.as_str()), (7, DID));
        assert_eq!(event.rev.as_deref(), Some(good.rev.as_str()));
        assert_eq!(event.time, good.time);
        assert_eq!(event.body, Body::default(), "the body is not kept");
        // A CAR that is not one: the relay refuses it, a subscriber does not read it.
        let no_car = Commit {
            blocks: b"not a car".to_vec(),
            ..good.clone()
        };
        assert!(matches!(
            decoded(&encode("#commit", &no_car)),
            Err(BadFrame::Car(_))
        ));
        assert!(forwarded(&no_car, &Limits::default()).is_ok());
        // Everything else is still checked.
        let bad_did = Commit {
            repo: "alice".into(),
            ..good.clone()
        };
        assert!(matches!(
            forwarded(&bad_did, &Limits::default()),
            Err(BadFrame::Did(_))
        ));
        let bad_rev = Commit {
            rev: "yesterday".into(),
            ..good.clone()
        };
        assert!(matches!(
            forwarded(&bad_rev, &Limits::default()),
            Err(BadFrame::Rev(_))
        ));
        let small = Limits {
            blocks_bytes_max: 10,
            ..Limits::default()
        };
        assert!(matches!(
            forwarded(&good, &small),
            Err(BadFrame::OverLimit {
                what: "blocks bytes",
                ..
            })
        ));
        assert!(matches!(
            forwarded(&Commit { seq: 0, ..good }, &Limits::default()),
            Err(BadFrame::SeqOutOfRange(0))
        ));
    }
}
