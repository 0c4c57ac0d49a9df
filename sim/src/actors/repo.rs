//! What an upstream host publishes, in atproto's terms: its accounts, and its event `n` as a
//! `com.atproto.sync.subscribeRepos` message — mostly `#commit`s carrying a CAR slice of a
//! few KB, now and then an `#identity` or an `#account`.
//!
//! Everything about event `n` of a host is a pure function of (host index, `n`, the host's
//! [`Schedule`]), so a resumed subscription is sent the same events again, and every
//! time in it is simulated time: event `n` is sent at its schedule's offset after the
//! world started (`n · interval`, or in bursts), and its `rev`, record keys and `time` say
//! so, counted from [`TIME_BASE_MICROS`] (2026-06-01T00:00:00Z), never from the wall
//! clock. A consumer reads the send time back from the event ([`sent_at`]) and the host
//! from the DID ([`host_of`]).
//!
//! ## Accounts
//!
//! Each host has [`ACCOUNTS_PER_HOST`] accounts. Account `a` of host `h` is
//! `did:plc:` + 24 characters of `[a-z2-7]` (base32, RFC 4648's lowercase alphabet, as
//! did:plc's identifiers are): four characters of `h` (20 bits), two of `a` (10 bits), then
//! eighteen of a hash of `(h, a)`, so the identifiers look like did:plc's and a consumer
//! maps a DID back to its host without a table (and refuses one whose filler is not the
//! hash: a DID this scheme did not make).
//!
//! ## The size model
//!
//! The public figures: Bluesky's firehose carried ~232 GB/day after the September 2024
//! surge (~24 GB/day before), and Jetstream's JSON events — the records alone, without the
//! commit block and the tree nodes — averaged 482 bytes, "nearly 1/10" of the firehose's
//! (jazco.dev/2024/09/24/jetstream): some 4–5 KB per firehose event. The bulk is the
//! Merkle search tree: a commit carries the nodes on the path from the root to each changed
//! leaf, one per layer, and atproto's MST has a fanout of about four, so a repository of a
//! hundred records has 3–4 layers and one of a few thousand 6. This model stays at the low end of that range
//! ("a few KB"), because every byte is hashed, stored and fanned out for real inside the
//! simulation and the realistic-volume scenarios must stay within their wall-time budget:
//! - the commit object: ~190 bytes (DID, `rev`, tree root, a 64-byte signature);
//! - one op per commit, or 2–8 in one commit of 50 (a batch: a starter pack's follows);
//!   each op on `app.bsky.feed.like` (50%), `app.bsky.graph.follow` (20%),
//!   `app.bsky.feed.post` (15%) or `app.bsky.feed.repost` (15%), a create with its record
//!   block, or one time in twenty a delete (no record). Records as the lexicons shape them:
//!   a like or repost ~180 bytes (a strong ref), a follow ~110, a post 100–700 (20–300
//!   characters of text, a third with an image embed);
//! - the tree path: an account's repository has 3–6 layers (fixed per account: its size,
//!   dozens to thousands of records),
//!   one more per extra op; a node holds 1–8 entries (4.5 on average: the fanout), each a
//!   key suffix, a value CID and, two times in three, a subtree CID: ~120–750 bytes.
//!
//! That gives `#commit` frames of 3.2 KB on average (measured over 31,697 commits of 64
//! hosts: median 3.1 KB, p10 2.3 KB, p90 4.2 KB, p99 6.3 KB, 1.2–10.5 KB; the
//! `frame_sizes_follow_the_model` test prints the figures) — below the ~4–5 KB the public
//! figures suggest, on purpose (above).
//! `#identity` (1 in 200: a handle) and `#account` (1 in 200: `active`, an account back
//! from a migration — an inactive status would have a relay drop the account's later
//! commits, as trusted relays do, and the tunnel's delivery oracles count every event) are
//! ~100 bytes.
//!
//! ## Cheap frames
//!
//! Building a frame costs real CPU in a run of 360,000 events, so the blocks that do not
//! change are built once per host (lazily, on its first event, and kept in the host's plan:
//! one world's state, never a static): [`RECORDS_PER_COLLECTION`] records per collection
//! and [`TREE_NODES`] tree nodes, each already framed as a CAR section with its CID. Per
//! event only the commit object (new `rev`) is encoded and hashed, the CAR assembled from
//! the prebuilt sections, and the message encoded.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use ipld_core::cid::Cid;
use ipld_core::ipld::Ipld;
use relay::atproto::car::{self, block_cid};
use relay::atproto::frame::{self, Kind};
use relay::atproto::message::{Account, Commit, CommitObject, Identity, RepoOp, REPO_VERSION};
use relay::atproto::syntax::{tid, tid_micros};

/// Accounts on every host.
pub const ACCOUNTS_PER_HOST: u32 = 8;

/// The Unix time, microseconds, of every world's start (2026-06-01T00:00:00Z): event
/// times are this plus simulated time.
pub const TIME_BASE_MICROS: u64 = 1_780_272_000_000_000;

/// Prebuilt records per collection, per host (building them is most of a host's start-up
/// cost in a world of thousands of hosts).
pub const RECORDS_PER_COLLECTION: usize = 3;

/// Prebuilt tree nodes per host: prime, and at least a commit's deepest path (13 nodes), so
/// the layers a commit takes (stride 7) are all different blocks.
pub const TREE_NODES: usize = 13;

/// One in this many events is an `#identity`, and as many an `#account`.
const IDENTITY_ONE_IN: u64 = 200;

/// One in this many commits is a batch of several ops.
const BATCH_ONE_IN: u64 = 50;

/// How far back a commit looks for its account's previous commit (`since`).
const SINCE_LOOKBACK: u64 = 64;

/// The collections, with their share of ops in percent.
const COLLECTIONS: [(&str, u64); 4] = [
    ("app.bsky.feed.like", 50),
    ("app.bsky.graph.follow", 20),
    ("app.bsky.feed.post", 15),
    ("app.bsky.feed.repost", 15),
];

/// did:plc's identifier alphabet: RFC 4648 base32, lowercase.
const BASE32: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

/// SplitMix64's finalizer: the model's only source of variety (no RNG, so the world's
/// seeded draws are untouched and event `n` is the same every time it is built).
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn mix2(a: u64, b: u64) -> u64 {
    mix(mix(a) ^ b)
}

/// The DID of account `account` of host `host`.
pub fn did(host: u32, account: u32) -> String {
    let mut id = String::with_capacity(32);
    id.push_str("did:plc:");
    push_base32(&mut id, u64::from(host), 4);
    push_base32(&mut id, u64::from(account), 2);
    let filler = mix2(u64::from(host), u64::from(account));
    push_base32(&mut id, filler >> 4, 12);
    push_base32(&mut id, mix(filler) >> 34, 6);
    id
}

fn push_base32(out: &mut String, value: u64, chars: u32) {
    for digit in (0..chars).rev() {
        out.push(BASE32[((value >> (5 * digit)) & 31) as usize] as char);
    }
}

/// The host and account of a DID [`did`] made; `None` for any other.
pub fn host_of(did_text: &str) -> Option<(u32, u32)> {
    let id = did_text.strip_prefix("did:plc:")?.as_bytes();
    if id.len() != 24 {
        return None;
    }
    let value = |digits: &[u8]| {
        digits.iter().try_fold(0u64, |value, byte| {
            let digit = BASE32.iter().position(|b| b == byte)? as u64;
            Some((value << 5) | digit)
        })
    };
    let host = u32::try_from(value(&id[..4])?).ok()?;
    let account = u32::try_from(value(&id[4..6])?).ok()?;
    (did(host, account) == did_text).then_some((host, account))
}

/// When a host sends its events, after the world's start: event `n` (from 1) at
/// [`Schedule::offset`]. Regular, one every `interval` (`n · interval`), or in bursts: runs
/// of events `gap` apart, the run of `s` events followed `s · interval` after its start by
/// the next run, so the host's long-run rate stays one event per `interval`. A run's size
/// is geometric (each event is followed by one more with probability `1 − 1/mean`), drawn
/// from a hash of (the host's burst seed, the run's number): the schedule is a pure
/// function, and a resumed subscription is sent the same events at the same times.
#[derive(Clone, Debug)]
pub struct Schedule {
    interval: Duration,
    bursts: Option<Arc<Bursts>>,
}

/// The bursts of a [`Schedule`], in whole microseconds, and the runs drawn so far.
#[derive(Debug)]
struct Bursts {
    seed: u64,
    /// The long-run time between events.
    interval_us: u64,
    /// Time between the events of a run (at least 1, at most the interval).
    gap_us: u64,
    /// An event is followed by one more in its run when a draw is below this (`2^64 ·
    /// (1 − 1/mean)`).
    more_below: u64,
    /// `firsts[b]`: how many events come before run `b`, for every run drawn so far and
    /// the next (`firsts[0] = 0`).
    firsts: Mutex<Vec<u64>>,
}

impl Schedule {
    /// One event every `interval`.
    pub fn regular(interval: Duration) -> Self {
        Self {
            interval,
            bursts: None,
        }
    }

    /// Runs of `mean` events on average, `gap` apart, at a long-run rate of one event every
    /// `interval`; `seed` draws the run sizes. Times are whole microseconds (as a TID's),
    /// the gap at least one and at most the interval. A mean of 1 is [`Schedule::regular`].
    pub fn bursts(interval: Duration, mean: f64, gap: Duration, seed: u64) -> Self {
        if mean <= 1.0 {
            return Self::regular(interval);
        }
        let interval_us = (interval.as_micros() as u64).max(1);
        Self {
            interval,
            bursts: Some(Arc::new(Bursts {
                seed,
                interval_us,
                gap_us: (gap.as_micros() as u64).clamp(1, interval_us),
                more_below: ((1.0 - 1.0 / mean) * 2f64.powi(64)) as u64,
                firsts: Mutex::new(vec![0]),
            })),
        }
    }

    /// When event `n` is sent (event 0: at the start).
    pub fn offset(&self, n: u64) -> Duration {
        let Some(bursts) = &self.bursts else {
            return self.interval * u32::try_from(n).unwrap_or(u32::MAX);
        };
        let Some(before) = n.checked_sub(1) else {
            return Duration::ZERO;
        };
        let firsts = bursts.drawn_until(|last| last > before);
        let run = firsts.partition_point(|&first| first <= before) - 1;
        let into_run = before - firsts[run];
        Duration::from_micros(bursts.run_start_us(firsts[run]) + bursts.gap_us * into_run)
    }

    /// How many events are sent by `offset`: the number of the one sent at `offset`. Draws
    /// the runs up to `offset`, so it is asked about times within a run, not eons.
    pub fn sent_by(&self, offset: Duration) -> u64 {
        let offset_us = offset.as_micros() as u64;
        let Some(bursts) = &self.bursts else {
            return offset_us / (self.interval.as_micros() as u64).max(1);
        };
        let firsts = bursts.drawn_until(|last| bursts.run_start_us(last) > offset_us);
        let started = firsts.partition_point(|&first| bursts.run_start_us(first) <= offset_us);
        let Some(run) = started.checked_sub(1) else {
            return 0;
        };
        let size = firsts[run + 1] - firsts[run];
        let sent_in_run = (offset_us - bursts.run_start_us(firsts[run])) / bursts.gap_us + 1;
        firsts[run] + sent_in_run.min(size)
    }
}

impl Bursts {
    /// When the run that follows `before` events starts.
    fn run_start_us(&self, before: u64) -> u64 {
        self.interval_us.saturating_mul(before + 1)
    }

    /// The runs' first events, drawn on until `enough` holds of the last one.
    fn drawn_until(&self, enough: impl Fn(u64) -> bool) -> MutexGuard<'_, Vec<u64>> {
        let mut firsts = self.firsts.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            let last = *firsts.last().expect("firsts starts with 0");
            if enough(last) {
                return firsts;
            }
            let run = firsts.len() as u64 - 1;
            let more = (0..)
                .take_while(|&more| mix2(mix2(self.seed, run), more) < self.more_below)
                .count() as u64;
            firsts.push(last + 1 + more);
        }
    }
}

/// The Unix time, microseconds, of a send `offset` into the world.
fn micros_at(offset: Duration) -> u64 {
    TIME_BASE_MICROS + u64::try_from(offset.as_micros()).unwrap_or(u64::MAX / 2)
}

/// When a received event was sent, after the world's start: from its `rev` (a TID), or,
/// for messages without one, its `time`.
pub fn sent_at(event: &frame::Event) -> Option<Duration> {
    let micros = match &event.rev {
        Some(rev) => tid_micros(rev)?,
        None => parse_datetime(&event.time)?,
    };
    Some(Duration::from_micros(micros.checked_sub(TIME_BASE_MICROS)?))
}

/// Days since 1970-01-01 to (year, month, day) (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

/// (year, month, day) to days since 1970-01-01 (Howard Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = year - i64::from(month <= 2);
    let era = year.div_euclid(400);
    let yoe = year.rem_euclid(400);
    let mp = i64::from((month + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Unix microseconds as an atproto datetime, with microseconds: `2026-06-01T00:00:00.000000Z`.
pub fn datetime(micros: u64) -> String {
    let secs = micros / 1_000_000;
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let of_day = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        of_day / 3_600,
        of_day / 60 % 60,
        of_day % 60,
        micros % 1_000_000
    )
}

/// The Unix microseconds of a [`datetime`].
pub fn parse_datetime(text: &str) -> Option<u64> {
    let b = text.as_bytes();
    if b.len() != 27 || &b[4..5] != b"-" || &b[10..11] != b"T" || &b[19..20] != b"." {
        return None;
    }
    let num = |range: std::ops::Range<usize>| text.get(range)?.parse::<u64>().ok();
    let days = days_from_civil(num(0..4)? as i64, num(5..7)? as u32, num(8..10)? as u32);
    let secs = u64::try_from(days).ok()? * 86_400
        + num(11..13)? * 3_600
        + num(14..16)? * 60
        + num(17..19)?;
    Some(secs * 1_000_000 + num(20..26)?)
}

/// A block framed as a CAR section (`varint(length) CID bytes`), with its CID.
#[derive(Clone)]
struct Section {
    cid: Cid,
    bytes: Vec<u8>,
}

impl Section {
    fn of(block: &[u8]) -> Self {
        let cid = block_cid(block);
        let cid_bytes = cid.to_bytes();
        let mut bytes = Vec::with_capacity(block.len() + cid_bytes.len() + 3);
        let mut length = (cid_bytes.len() + block.len()) as u64;
        while length >= 0x80 {
            bytes.push((length as u8 & 0x7f) | 0x80);
            length >>= 7;
        }
        bytes.push(length as u8);
        bytes.extend_from_slice(&cid_bytes);
        bytes.extend_from_slice(block);
        Self { cid, bytes }
    }

    fn of_ipld(value: &Ipld) -> Self {
        Self::of(&serde_ipld_dagcbor::to_vec(value).expect("a block always encodes"))
    }
}

/// One host's repositories: what it needs to build any of its events cheaply. Built once
/// per host per world ([`super::upstream::HostPlan::repos`]).
#[derive(Clone)]
pub struct Repos {
    /// The host's index (its DIDs name it).
    host: u32,
    /// When it sends its events.
    schedule: Schedule,
    /// The host's commit signature (not verified by anyone yet; 64 bytes as a real one).
    sig: Vec<u8>,
    /// Prebuilt records, [`RECORDS_PER_COLLECTION`] per collection, in [`COLLECTIONS`] order.
    records: Vec<Section>,
    /// Prebuilt tree nodes.
    nodes: Vec<Section>,
    /// The scenario's `body_pad_bytes`: one more block of that size in every commit.
    pad: Option<Section>,
}

impl std::fmt::Debug for Repos {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repos")
            .field("host", &self.host)
            .field("schedule", &self.schedule)
            .finish_non_exhaustive()
    }
}

/// A message a host sends, before encoding.
#[derive(Clone, Debug)]
pub enum Message {
    /// `#commit` (boxed: it is the large one)
    Commit(Box<Commit>),
    /// `#identity`
    Identity(Identity),
    /// `#account`
    Account(Account),
}

impl Message {
    /// Its frame: header and body.
    pub fn frame(self) -> Vec<u8> {
        match self {
            Self::Commit(body) => commit_frame(*body),
            Self::Identity(body) => frame::encode(Kind::Identity.tag(), &body),
            Self::Account(body) => frame::encode(Kind::Account.tag(), &body),
        }
    }

    /// Its type's tag.
    pub fn tag(&self) -> &'static str {
        match self {
            Self::Commit(_) => Kind::Commit.tag(),
            Self::Identity(_) => Kind::Identity.tag(),
            Self::Account(_) => Kind::Account.tag(),
        }
    }

    /// Its body as a DAG-CBOR map, for a hostile host to tamper with.
    pub fn body_map(&self) -> std::collections::BTreeMap<String, Ipld> {
        let bytes = match self {
            Self::Commit(body) => serde_ipld_dagcbor::to_vec(&**body),
            Self::Identity(body) => serde_ipld_dagcbor::to_vec(body),
            Self::Account(body) => serde_ipld_dagcbor::to_vec(body),
        }
        .expect("a message always encodes");
        serde_ipld_dagcbor::from_slice(&bytes).expect("a message always decodes")
    }
}

/// The DAG-CBOR of the `blocks` key followed by an empty byte string.
const EMPTY_BLOCKS: &[u8] = b"\x66blocks\x40";

/// A `#commit`'s frame, with its blocks copied once: `serde_ipld_dagcbor` buffers every
/// map entry before it sorts them, which would copy the CAR three times more. The commit is
/// encoded without its blocks, and the CAR goes in place of the empty byte string: the
/// same bytes as `frame::encode` of the whole commit (a test checks), for less CPU.
fn commit_frame(mut commit: Commit) -> Vec<u8> {
    let blocks = std::mem::take(&mut commit.blocks);
    let skeleton = frame::encode(Kind::Commit.tag(), &commit);
    let at = skeleton
        .windows(EMPTY_BLOCKS.len())
        .position(|window| window == EMPTY_BLOCKS)
        .expect("a commit encodes its blocks key")
        + EMPTY_BLOCKS.len()
        - 1;
    let mut out = Vec::with_capacity(skeleton.len() + blocks.len() + 8);
    out.extend_from_slice(&skeleton[..at]);
    let length = blocks.len() as u64;
    match length {
        0..=23 => out.push(0x40 | length as u8),
        24..=0xff => out.extend_from_slice(&[0x58, length as u8]),
        0x100..=0xffff => {
            out.push(0x59);
            out.extend_from_slice(&(length as u16).to_be_bytes());
        }
        0x1_0000..=0xffff_ffff => {
            out.push(0x5a);
            out.extend_from_slice(&(length as u32).to_be_bytes());
        }
        _ => {
            out.push(0x5b);
            out.extend_from_slice(&length.to_be_bytes());
        }
    }
    out.extend_from_slice(&blocks);
    out.extend_from_slice(&skeleton[at + 1..]);
    out
}

/// A post's words.
const WORDS: [&str; 24] = [
    "the", "relay", "firehose", "just", "shipped", "today", "anyone", "else", "seeing", "this",
    "sky", "blue", "coffee", "morning", "thread", "lol", "honestly", "new", "release", "photo",
    "from", "my", "walk", "🦋",
];

impl Repos {
    /// Build host `host`'s blocks; its events fall due on `schedule`, each commit padded
    /// with a block of `pad_bytes` (0: none).
    pub fn new(host: u32, schedule: Schedule, pad_bytes: u32) -> Self {
        let seed = mix(u64::from(host) ^ 0x7265_706f);
        let sig = (0..64).map(|i| (mix2(seed, i) & 0xff) as u8).collect();
        let created = datetime(TIME_BASE_MICROS - 86_400_000_000);
        let subject_did = |i: u64| did((mix2(seed, i) % 4096) as u32, (i % 8) as u32);
        let strong_ref = |i: u64| {
            let post = tid(TIME_BASE_MICROS - mix2(seed, i) % 10_000_000_000_000, 0);
            Ipld::Map(
                [
                    (
                        "uri".to_owned(),
                        Ipld::String(format!("at://{}/app.bsky.feed.post/{post}", subject_did(i))),
                    ),
                    (
                        "cid".to_owned(),
                        Ipld::String(block_cid(post.as_bytes()).to_string()),
                    ),
                ]
                .into(),
            )
        };
        let mut records = Vec::with_capacity(COLLECTIONS.len() * RECORDS_PER_COLLECTION);
        for (collection, _) in COLLECTIONS {
            for i in 0..RECORDS_PER_COLLECTION as u64 {
                let r = mix2(seed, (collection.len() as u64) << 32 | i);
                let mut fields = vec![
                    ("$type".to_owned(), Ipld::String(collection.to_owned())),
                    ("createdAt".to_owned(), Ipld::String(created.clone())),
                ];
                match collection {
                    "app.bsky.graph.follow" => {
                        fields.push(("subject".to_owned(), Ipld::String(subject_did(r))));
                    }
                    "app.bsky.feed.post" => {
                        let chars = 20 + (r % 281) as usize;
                        let mut text = String::with_capacity(chars + 8);
                        let mut w = r;
                        while text.len() < chars {
                            w = mix(w);
                            text.push_str(WORDS[(w % WORDS.len() as u64) as usize]);
                            text.push(' ');
                        }
                        fields.push(("text".to_owned(), Ipld::String(text)));
                        fields.push((
                            "langs".to_owned(),
                            Ipld::List(vec![Ipld::String("en".to_owned())]),
                        ));
                        if r.is_multiple_of(3) {
                            fields.push(("embed".to_owned(), image_embed(r)));
                        }
                    }
                    _ => fields.push(("subject".to_owned(), strong_ref(r))),
                }
                records.push(Section::of_ipld(&Ipld::Map(fields.into_iter().collect())));
            }
        }
        let nodes = (0..TREE_NODES as u64)
            .map(|i| Section::of_ipld(&tree_node(mix2(seed, 1_000 + i))))
            .collect();
        let pad =
            (pad_bytes > 0).then(|| Section::of_ipld(&Ipld::Bytes(vec![b'x'; pad_bytes as usize])));
        Self {
            host,
            schedule,
            sig,
            records,
            nodes,
            pad,
        }
    }

    fn draw(&self, n: u64) -> u64 {
        mix2(u64::from(self.host), n)
    }

    fn account_of(&self, n: u64) -> u32 {
        ((self.draw(n) >> 16) % u64::from(ACCOUNTS_PER_HOST)) as u32
    }

    fn kind_of(&self, n: u64) -> Kind {
        match self.draw(n) % IDENTITY_ONE_IN {
            0 => Kind::Identity,
            1 => Kind::Account,
            _ => Kind::Commit,
        }
    }

    /// The revision of the event sent at Unix time `micros`.
    fn rev_at(&self, micros: u64) -> String {
        tid(micros, (self.host & 0x3ff) as u16)
    }

    /// The Unix time, microseconds, event `n` is sent at.
    fn micros_of(&self, n: u64) -> u64 {
        micros_at(self.schedule.offset(n))
    }

    /// Event `n`, under sequence number `seq`.
    pub fn message(&self, seq: u64, n: u64) -> Message {
        let seq = i128::from(seq);
        let account = self.account_of(n);
        let did = did(self.host, account);
        let micros = self.micros_of(n);
        let time = datetime(micros);
        match self.kind_of(n) {
            Kind::Identity => Message::Identity(Identity {
                seq,
                did,
                time,
                handle: Some(format!("user{account}-{}.bsky.social", self.host)),
            }),
            Kind::Account | Kind::Sync => Message::Account(Account {
                seq,
                did,
                time,
                active: true,
                status: None,
            }),
            Kind::Commit => {
                Message::Commit(Box::new(self.commit(seq, n, account, did, micros, time)))
            }
        }
    }

    /// Event `n`'s frame under sequence number `seq`.
    pub fn frame(&self, seq: u64, n: u64) -> Vec<u8> {
        self.message(seq, n).frame()
    }

    /// Event `n`'s commit, sent at Unix time `micros` (`time` as a datetime).
    fn commit(
        &self,
        seq: i128,
        n: u64,
        account: u32,
        did: String,
        micros: u64,
        time: String,
    ) -> Commit {
        let draw = self.draw(n);
        let rev = self.rev_at(micros);
        let since = (n.saturating_sub(SINCE_LOOKBACK).max(1)..n)
            .rev()
            .find(|&k| self.kind_of(k) == Kind::Commit && self.account_of(k) == account)
            .map(|k| self.rev_at(self.micros_of(k)));
        let ops_count = if (draw >> 24).is_multiple_of(BATCH_ONE_IN) {
            2 + (draw >> 32) % 7
        } else {
            1
        };
        let depth = 3 + mix2(u64::from(self.host), u64::from(account)) % 4 + (ops_count - 1);
        let mut sections: Vec<&Section> =
            Vec::with_capacity(depth as usize + ops_count as usize + 1);
        let mut ops = Vec::with_capacity(ops_count as usize);
        for op in 0..ops_count {
            let r = mix2(draw, op);
            let mut pick = r % 100;
            let collection = COLLECTIONS
                .iter()
                .position(|(_, share)| {
                    let hit = pick < *share;
                    pick = pick.saturating_sub(*share);
                    hit
                })
                .unwrap_or(0);
            let record = &self.records[collection * RECORDS_PER_COLLECTION
                + ((r >> 8) as usize % RECORDS_PER_COLLECTION)];
            let path = format!(
                "{}/{}",
                COLLECTIONS[collection].0,
                tid(micros - op, (self.host & 0x3ff) as u16)
            );
            if (r >> 20).is_multiple_of(20) {
                ops.push(RepoOp {
                    action: "delete".to_owned(),
                    path,
                    cid: None,
                    prev: Some(record.cid),
                });
            } else {
                sections.push(record);
                ops.push(RepoOp {
                    action: "create".to_owned(),
                    path,
                    cid: Some(record.cid),
                    prev: None,
                });
            }
        }
        let first_node = (draw >> 40) as usize;
        let nodes =
            (0..depth as usize).map(|layer| &self.nodes[(first_node + layer * 7) % TREE_NODES]);
        let root = &self.nodes[first_node % TREE_NODES];
        sections.extend(nodes);
        sections.extend(self.pad.as_ref());
        let object = serde_ipld_dagcbor::to_vec(&CommitObject {
            did: did.clone(),
            version: REPO_VERSION,
            data: root.cid,
            rev: rev.clone(),
            prev: None,
            sig: self.sig.clone(),
        })
        .expect("a commit object always encodes");
        let object = Section::of(&object);
        let commit = object.cid;
        let header = car::write(commit, std::iter::empty::<&[u8]>());
        let size: usize = sections.iter().map(|section| section.bytes.len()).sum();
        let mut blocks = Vec::with_capacity(header.len() + object.bytes.len() + size);
        blocks.extend_from_slice(&header);
        blocks.extend_from_slice(&object.bytes);
        for section in sections {
            blocks.extend_from_slice(&section.bytes);
        }
        Commit {
            seq,
            rebase: false,
            too_big: false,
            repo: did,
            commit,
            rev,
            since,
            blocks,
            ops,
            blobs: vec![],
            prev_data: Some(self.nodes[(first_node + 1) % TREE_NODES].cid),
            time,
        }
    }

    /// `commit` with one more block of `bytes` bytes in its CAR (an oversized commit).
    pub fn pad_commit(commit: &mut Commit, bytes: usize) {
        let block = Section::of_ipld(&Ipld::Bytes(vec![b'x'; bytes]));
        commit.blocks.extend_from_slice(&block.bytes);
    }
}

/// An `app.bsky.embed.images` embed with one image, as a post carries it.
fn image_embed(r: u64) -> Ipld {
    let image = Ipld::Map(
        [
            ("$type".to_owned(), Ipld::String("blob".to_owned())),
            ("ref".to_owned(), Ipld::Link(block_cid(&r.to_le_bytes()))),
            ("mimeType".to_owned(), Ipld::String("image/jpeg".to_owned())),
            (
                "size".to_owned(),
                Ipld::Integer(i128::from(200_000 + (r % 800_000) as i64)),
            ),
        ]
        .into(),
    );
    Ipld::Map(
        [
            (
                "$type".to_owned(),
                Ipld::String("app.bsky.embed.images".to_owned()),
            ),
            (
                "images".to_owned(),
                Ipld::List(vec![Ipld::Map(
                    [
                        ("alt".to_owned(), Ipld::String(String::new())),
                        ("image".to_owned(), image),
                        (
                            "aspectRatio".to_owned(),
                            Ipld::Map(
                                [
                                    ("width".to_owned(), Ipld::Integer(2_000)),
                                    ("height".to_owned(), Ipld::Integer(1_500)),
                                ]
                                .into(),
                            ),
                        ),
                    ]
                    .into(),
                )]),
            ),
        ]
        .into(),
    )
}

/// A Merkle search tree node (`{l, e: [{p, k, v, t}]}`) of 1–8 entries drawn from `r`
/// (4.5 on average: the tree's fanout is about four).
fn tree_node(r: u64) -> Ipld {
    let entries = 1 + (r % 8);
    let link = |i: u64| Ipld::Link(block_cid(&mix2(r, i).to_le_bytes()));
    let entry = |i: u64| {
        let e = mix2(r, 100 + i);
        let key = if i == 0 {
            format!(
                "{}/{}",
                COLLECTIONS[(e % 4) as usize].0,
                tid(TIME_BASE_MICROS - e % 10_000_000_000_000, 0)
            )
        } else {
            tid(TIME_BASE_MICROS - e % 10_000_000_000_000, 0)[(e % 6) as usize..].to_owned()
        };
        Ipld::Map(
            [
                (
                    "p".to_owned(),
                    Ipld::Integer(if i == 0 { 0 } else { 19 + (e % 6) as i128 }),
                ),
                ("k".to_owned(), Ipld::Bytes(key.into_bytes())),
                ("v".to_owned(), link(200 + i)),
                (
                    "t".to_owned(),
                    if e.is_multiple_of(3) {
                        Ipld::Null
                    } else {
                        link(300 + i)
                    },
                ),
            ]
            .into(),
        )
    };
    Ipld::Map(
        [
            (
                "l".to_owned(),
                if r.is_multiple_of(2) {
                    link(1)
                } else {
                    Ipld::Null
                },
            ),
            (
                "e".to_owned(),
                Ipld::List((0..entries).map(entry).collect()),
            ),
        ]
        .into(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use relay::atproto::frame::{decode, Incoming, Limits};

    fn decoded(frame: &[u8]) -> frame::Event {
        match decode(frame, &Limits::default()) {
            Ok(Incoming::Event(event)) => event,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn dids_name_their_host_and_look_like_plc() {
        for host in [0, 1, 249, 3_207, 62_499] {
            for account in 0..ACCOUNTS_PER_HOST {
                let made = did(host, account);
                assert_eq!(made.len(), "did:plc:".len() + 24, "{made}");
                assert!(relay::atproto::syntax::is_did(&made), "{made}");
                assert!(made[8..].bytes().all(|b| BASE32.contains(&b)), "{made}");
                assert_eq!(host_of(&made), Some((host, account)), "{made}");
            }
        }
        assert_ne!(did(1, 0), did(0, 1));
        assert_eq!(host_of("did:plc:ewvi7nxzyoun6zhxrhs64oiz"), None);
        assert_eq!(host_of("did:web:example.com"), None);
        let mut forged = did(7, 3);
        forged.pop();
        forged.push('q');
        assert_eq!(host_of(&forged), None, "the filler is checked");
    }

    #[test]
    fn datetimes_round_trip() {
        assert_eq!(datetime(TIME_BASE_MICROS), "2026-06-01T00:00:00.000000Z");
        assert_eq!(datetime(951_782_400_000_001), "2000-02-29T00:00:00.000001Z");
        for micros in [
            TIME_BASE_MICROS,
            TIME_BASE_MICROS + 86_399_999_999,
            1_000_000_000_123_456,
        ] {
            assert_eq!(parse_datetime(&datetime(micros)), Some(micros));
        }
        assert_eq!(parse_datetime("2026-06-01T00:00:00Z"), None);
    }

    #[test]
    fn a_bursty_schedule_keeps_the_rate_and_every_send_time_names_its_event() {
        let interval = Duration::from_micros(151_515);
        let bursty = Schedule::bursts(interval, 4.0, Duration::from_millis(20), 7);
        let again = Schedule::bursts(interval, 4.0, Duration::from_millis(20), 7);
        let mut gaps = std::collections::BTreeMap::new();
        let mut last = Duration::ZERO;
        for n in 1..=20_000 {
            let at = bursty.offset(n);
            assert!(at > last, "event {n} is sent after event {}", n - 1);
            assert_eq!(bursty.sent_by(at), n, "the send time of event {n} names it");
            assert_eq!(bursty.sent_by(at - Duration::from_micros(1)), n - 1);
            *gaps.entry((at - last).as_millis()).or_insert(0) += 1;
            last = at;
        }
        assert_eq!(
            again.offset(20_000),
            last,
            "the same seed draws the same runs"
        );
        // 20,000 events at a mean of 4 a run: ~5,000 runs, so ~15,000 gaps of 20 ms.
        let in_runs = gaps[&20];
        assert!(
            (14_000..16_000).contains(&in_runs),
            "{in_runs} gaps within runs"
        );
        let rate = last.as_secs_f64() / 20_000.0 / interval.as_secs_f64();
        assert!(
            (0.97..1.03).contains(&rate),
            "long-run interval off by {rate}"
        );
        let regular = Schedule::regular(interval);
        assert_eq!(regular.offset(3), interval * 3);
        assert_eq!(regular.sent_by(interval * 3), 3);
        assert_eq!(
            Schedule::bursts(interval, 1.0, Duration::from_millis(20), 7).offset(3),
            interval * 3,
            "a mean of one is the regular schedule"
        );
    }

    #[test]
    fn every_event_decodes_and_tells_its_host_and_send_time() {
        for schedule in [
            Schedule::regular(Duration::from_millis(150)),
            Schedule::bursts(Duration::from_millis(150), 3.0, Duration::from_millis(5), 1),
        ] {
            every_event_of_decodes_and_tells_its_host_and_send_time(schedule);
        }
    }

    fn every_event_of_decodes_and_tells_its_host_and_send_time(schedule: Schedule) {
        let repos = Repos::new(42, schedule.clone(), 0);
        let mut kinds = std::collections::BTreeMap::new();
        let mut last_rev = std::collections::BTreeMap::new();
        for n in 1..=2_000 {
            let frame = repos.frame(n, n);
            let event = decoded(&frame);
            assert_eq!(event.seq, n);
            *kinds.entry(event.kind).or_insert(0) += 1;
            assert_eq!(host_of(&event.did).map(|(host, _)| host), Some(42));
            assert_eq!(sent_at(&event), Some(schedule.offset(n)));
            if let Some(rev) = &event.rev {
                if let Some(previous) = last_rev.insert(event.did.clone(), rev.clone()) {
                    assert!(*rev > previous, "revs grow per account");
                }
            }
            assert_eq!(frame, repos.frame(n, n), "event {n} is the same every time");
        }
        assert!(kinds[&Kind::Commit] > 1_900, "{kinds:?}");
        assert!(
            kinds.get(&Kind::Identity).is_some_and(|&count| count > 0),
            "{kinds:?}"
        );
        assert!(
            kinds.get(&Kind::Account).is_some_and(|&count| count > 0),
            "{kinds:?}"
        );
    }

    #[test]
    fn frame_sizes_follow_the_model() {
        let mut sizes: Vec<usize> = (0..64)
            .flat_map(|host| {
                let repos = Repos::new(host, Schedule::regular(Duration::from_millis(10)), 0);
                (1..=500).filter_map(move |n| match repos.message(n, n) {
                    commit @ Message::Commit(_) => Some(commit.frame().len()),
                    _ => None,
                })
            })
            .collect();
        sizes.sort_unstable();
        let mean = sizes.iter().sum::<usize>() / sizes.len();
        let at = |q: f64| sizes[((sizes.len() - 1) as f64 * q) as usize];
        println!(
            "#commit frames: {} sampled, mean {mean} B, min {}, p10 {}, median {}, p90 {}, p99 {}, max {}",
            sizes.len(),
            sizes[0],
            at(0.1),
            at(0.5),
            at(0.9),
            at(0.99),
            sizes[sizes.len() - 1]
        );
        assert!((2_000..=4_000).contains(&mean), "mean {mean}");
        assert!(sizes[0] >= 700, "min {}", sizes[0]);
        assert!(at(0.99) <= 12_000, "p99 {}", at(0.99));
        assert!(sizes[sizes.len() - 1] <= 20_000);
    }

    #[test]
    fn a_commit_frame_is_the_codec_s_encoding() {
        let repos = Repos::new(9, Schedule::regular(Duration::from_millis(5)), 0);
        let mut commits = 0;
        for n in 1..=300 {
            if let Message::Commit(commit) = repos.message(n, n) {
                let plain = frame::encode(Kind::Commit.tag(), &*commit);
                assert_eq!(Message::Commit(commit).frame(), plain, "event {n}");
                commits += 1;
            }
        }
        assert!(commits > 250);
        let mut tiny = match repos.message(1, 1) {
            Message::Commit(commit) => *commit,
            other => panic!("{other:?}"),
        };
        for len in [0, 23, 24, 255, 256, 65_535, 65_536] {
            tiny.blocks = vec![7; len];
            let plain = frame::encode(Kind::Commit.tag(), &tiny);
            assert_eq!(commit_frame(tiny.clone()), plain, "blocks of {len} bytes");
        }
    }

    #[test]
    fn a_padded_commit_carries_its_pad() {
        let plain = Repos::new(3, Schedule::regular(Duration::from_secs(1)), 0);
        let padded = Repos::new(3, Schedule::regular(Duration::from_secs(1)), 8_192);
        let n = (1..).find(|&n| plain.kind_of(n) == Kind::Commit).unwrap();
        let grown = padded.frame(n, n).len() - plain.frame(n, n).len();
        assert!((8_192..8_300).contains(&grown), "{grown}");
        decoded(&padded.frame(n, n));
    }
}
