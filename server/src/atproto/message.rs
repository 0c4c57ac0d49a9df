//! The bodies of `com.atproto.sync.subscribeRepos` messages (the lexicon's `#commit`,
//! `#sync`, `#identity`, `#account`, `#info`), the error body, and the repo commit object a
//! `#commit`'s or `#sync`'s CAR carries as its root. Field names and optionality follow the
//! lexicon; unknown fields are accepted (the lexicon grows), and the relay forwards them.
//! A `seq` is read as any CBOR integer, so that `frame::decode` refuses one outside what the
//! log can hold by name (`SeqOutOfRange`) rather than as a malformed body.

use std::collections::BTreeMap;

use ipld_core::cid::Cid;
use serde::{Deserialize, Serialize};

use super::car;

/// `#commit`: an update to a repository.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Commit {
    /// The stream's sequence number.
    pub seq: i128,
    /// Deprecated, always false.
    #[serde(default)]
    pub rebase: bool,
    /// Deprecated, always false.
    #[serde(default)]
    pub too_big: bool,
    /// The repository's DID.
    pub repo: String,
    /// The commit object's CID (the CAR's root).
    pub commit: Cid,
    /// The commit's revision (a TID).
    pub rev: String,
    /// The revision of the previous commit, if any.
    pub since: Option<String>,
    /// A CAR slice: the commit block and the changed records and tree nodes.
    #[serde(with = "serde_bytes")]
    pub blocks: Vec<u8>,
    /// What changed.
    pub ops: Vec<RepoOp>,
    /// Blobs the commit references (deprecated; empty).
    #[serde(default)]
    pub blobs: Vec<Cid>,
    /// The previous commit's data (tree root) CID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev_data: Option<Cid>,
    /// When the message was emitted (an ISO 8601 datetime).
    pub time: String,
}

impl Commit {
    /// A `#commit` of `did` at `rev` creating one `app.bsky.feed.post` whose text is
    /// `text`: the version-3 commit object and the record in a real CAR slice. What the
    /// tests, the benchmarks and the tunnel's hosts send; the signature is a placeholder
    /// (signatures are not verified yet).
    pub fn with_post(seq: i128, did: &str, rev: &str, text: &str, time: &str) -> Commit {
        let record = serde_ipld_dagcbor::to_vec(&BTreeMap::from([
            ("$type", "app.bsky.feed.post"),
            ("text", text),
            ("createdAt", time),
        ]))
        .expect("a record always encodes");
        let object = serde_ipld_dagcbor::to_vec(&CommitObject {
            did: did.to_owned(),
            version: REPO_VERSION,
            data: car::block_cid(&record),
            rev: rev.to_owned(),
            prev: None,
            sig: vec![7; 64],
        })
        .expect("a commit object always encodes");
        let root = car::block_cid(&object);
        Commit {
            seq,
            rebase: false,
            too_big: false,
            repo: did.to_owned(),
            commit: root,
            rev: rev.to_owned(),
            since: None,
            blocks: car::write(root, [object.as_slice(), record.as_slice()]),
            ops: vec![RepoOp {
                action: "create".to_owned(),
                path: format!("app.bsky.feed.post/{rev}"),
                cid: Some(car::block_cid(&record)),
                prev: None,
            }],
            blobs: vec![],
            prev_data: None,
            time: time.to_owned(),
        }
    }
}

/// One record operation of a `#commit`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RepoOp {
    /// `create`, `update` or `delete`.
    pub action: String,
    /// `<collection>/<record key>`.
    pub path: String,
    /// The new record's CID; null for deletes.
    pub cid: Option<Cid>,
    /// The previous record's CID, for updates and deletes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev: Option<Cid>,
}

/// `#sync`: the repository's current commit, with no diff (a reset).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sync {
    /// The stream's sequence number.
    pub seq: i128,
    /// The account's DID.
    pub did: String,
    /// A CAR with the commit block as its root.
    #[serde(with = "serde_bytes")]
    pub blocks: Vec<u8>,
    /// The commit's revision.
    pub rev: String,
    /// When the message was emitted.
    pub time: String,
}

/// `#identity`: the account's identity (handle, DID document) may have changed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Identity {
    /// The stream's sequence number.
    pub seq: i128,
    /// The account's DID.
    pub did: String,
    /// When the message was emitted.
    pub time: String,
    /// The current handle, if the host includes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handle: Option<String>,
}

/// `#account`: the account's hosting status changed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Account {
    /// The stream's sequence number.
    pub seq: i128,
    /// The account's DID.
    pub did: String,
    /// When the message was emitted.
    pub time: String,
    /// Whether the account's repository is served.
    pub active: bool,
    /// Why not, when it is not: `takendown`, `suspended`, `deleted`, `deactivated`,
    /// `desynchronized`, `throttled` (or a value the lexicon adds later).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
}

/// `#info`: an informational message (not sequenced), e.g. `OutdatedCursor`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Info {
    /// The lexicon's name for it.
    pub name: String,
    /// Human-readable detail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// The body of an error frame (`op: -1`); the stream ends after it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The lexicon's error name (`FutureCursor`, `ConsumerTooSlow`, ...).
    pub error: String,
    /// Human-readable detail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// The signed commit object at the root of a repository (version 3).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CommitObject {
    /// The repository's DID.
    pub did: String,
    /// Repository format version: 3.
    pub version: i64,
    /// The tree (MST) root.
    pub data: Cid,
    /// The revision (a TID).
    pub rev: String,
    /// The previous commit (null since version 3, but present).
    pub prev: Option<Cid>,
    /// The signature over the unsigned commit (not verified yet: see the README).
    #[serde(with = "serde_bytes")]
    pub sig: Vec<u8>,
}

/// The repository format version a commit object must carry.
pub const REPO_VERSION: i64 = 3;
