//! What the relay's integration tests share: a relay on loopback ([`RunningRelay`]), a fresh
//! database file ([`temp_db`]), waiting for a condition ([`wait_until`]), and the
//! event-stream frames fake upstreams send and consumers check ([`commit_frame`],
//! [`relayed_commit_frame`], [`decode`]), built with the relay's own `atproto` codec and
//! real commit CARs. Each suite
//! (`tests/<suite>/main.rs`) includes it as `#[path = "../support/mod.rs"] mod support;` and
//! uses a subset, hence the `dead_code` allowance.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipld_core::ipld::Ipld;
use relay::atproto::frame::{self, Incoming, Kind, Limits};
use relay::atproto::message::Commit;
use relay::atproto::syntax::tid;
use relay::config::ConfigBuilder;
use relay::http::ShutdownReport;
use relay::{Observer, Relay};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The setting that lets a relay dial upstreams on loopback, where the tests run them (the
/// egress rule refuses loopback addresses otherwise).
pub const ALLOW_LOOPBACK: &str = r#"upstream.egress_allow=["127.0.0.0/8"]"#;

/// The setting that dials the loopback names the tests' upstreams run under with plain
/// `ws://` (every other host gets TLS): [`RunningRelay::start`] applies it first.
pub const PLAIN_WS_LOOPBACK: &str = r#"upstream.insecure_ws_hosts=["127.0.0.1", "localhost"]"#;

/// The setting that turns off `requestCrawl`'s existence check, for tests that crawl names
/// with no DNS record (`*.invalid`) to watch what the relay does with a host that never
/// answers: the check would refuse them at the door (`400 host_not_found`).
pub const NO_CRAWL_DNS: &str = "upstream.crawl_resolve_timeout_ms=0";

/// Upper bound on any single wait; only a broken relay ever reaches it.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// A relay serving on loopback until it is stopped.
pub struct RunningRelay {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Where its admin API listens, when `admin.secret` is set.
    pub admin_addr: Option<SocketAddr>,
    /// Its read-only view.
    pub observer: Observer,
    stop: oneshot::Sender<()>,
    task: JoinHandle<ShutdownReport>,
}

impl RunningRelay {
    /// A relay listening on `127.0.0.1` (an ephemeral port) with `settings`
    /// (`key=value`, applied in order after the listen address). Its shutdown does not
    /// wait out a drain period (`server.shutdown_drain_ms=0`) unless `settings` ask for one:
    /// tests that are not about the drain should not pay for it. It dials the loopback
    /// hosts the tests' plain WebSocket upstreams run on with `ws://`
    /// ([`PLAIN_WS_LOOPBACK`]) unless `settings` set `upstream.insecure_ws_hosts` too.
    pub async fn start<S: AsRef<str>>(settings: &[S]) -> Self {
        let mut builder = ConfigBuilder::new()
            .with_set("server.listen=127.0.0.1:0")
            .unwrap()
            .with_set("server.shutdown_drain_ms=0")
            .unwrap()
            .with_set(PLAIN_WS_LOOPBACK)
            .unwrap();
        for setting in settings {
            builder = builder.with_set(setting.as_ref()).unwrap();
        }
        let relay = Relay::bind(builder.build().unwrap()).await.unwrap();
        let (stop, stopped) = oneshot::channel();
        Self {
            addr: relay.local_addr().unwrap(),
            admin_addr: relay.admin_addr().map(Result::unwrap),
            observer: relay.observer(),
            stop,
            task: tokio::spawn(relay.run(async {
                let _ = stopped.await;
            })),
        }
    }

    /// Shut it down gracefully; what the shutdown reported.
    pub async fn shutdown(self) -> ShutdownReport {
        self.begin_shutdown().await.unwrap()
    }

    /// Send the shutdown signal without waiting: the relay's task, which ends when the
    /// shutdown drain and the connection drain are over.
    pub fn begin_shutdown(self) -> JoinHandle<ShutdownReport> {
        self.stop.send(()).unwrap();
        self.task
    }

    /// Shut it down and require that it left no connection open.
    pub async fn stop(self) {
        assert_eq!(self.shutdown().await.connections_left, 0);
    }
}

/// A database path for test `name` of `suite` in the temporary directory, with any file a
/// previous run left there removed.
pub fn temp_db(suite: &str, name: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!(
        "relay-{suite}-{}-{name}.sqlite",
        std::process::id()
    ));
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    path
}

/// Poll `condition` until it holds; fail naming `what` after [`PATIENCE`].
pub async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let waited = tokio::time::timeout(PATIENCE, async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "timed out waiting until {what}");
}

/// The account every test commit is about.
pub const DID: &str = "did:plc:ewvi7nxzyoun6zhxrhs64oiz";

/// A `#commit` of [`DID`] that an upstream numbers `seq`: a real CAR slice (the version-3
/// commit object and one `app.bsky.feed.post` whose text is padded with `pad` bytes), a
/// revision that grows with `seq`.
pub fn commit(seq: u64, pad: usize) -> Commit {
    commit_of(DID, seq, pad)
}

/// [`commit`] for another account, `did`. Two hosts sending commits of one account with
/// the same revisions would see the second's dropped as not newer (as trusted relays do).
pub fn commit_of(did: &str, seq: u64, pad: usize) -> Commit {
    let rev = tid(1_780_000_000_000_000 + seq, 0);
    let text = format!("post {seq}{}", "x".repeat(pad));
    Commit::with_post(
        i128::from(seq),
        did,
        &rev,
        &text,
        "2026-06-01T00:00:00.000Z",
    )
}

/// `body` as the map the relay decodes it into (every field, known or not).
pub fn body_map<T: serde::Serialize>(body: &T) -> BTreeMap<String, Ipld> {
    serde_ipld_dagcbor::from_slice(&serde_ipld_dagcbor::to_vec(body).unwrap()).unwrap()
}

/// The frame an upstream sends for its event `seq` (see [`commit`]).
pub fn commit_frame(seq: u64, pad: usize) -> Vec<u8> {
    frame::encode("#commit", &commit(seq, pad))
}

/// The exact frame a consumer must receive for the upstream's event `upstream_seq` when the
/// relay numbers it `relay_seq`: the same body, canonical, with the relay's seq.
pub fn relayed_commit_frame(upstream_seq: u64, pad: usize, relay_seq: u64) -> Vec<u8> {
    frame::event_frame(
        Kind::Commit,
        &frame::Body::Decoded(body_map(&commit(upstream_seq, pad))).with_seq(relay_seq),
    )
}

/// What the relay's log counts for that event ([`relayed_commit_frame`]): its kind tag and
/// its stored body.
pub fn stored_commit_bytes(upstream_seq: u64, pad: usize, relay_seq: u64) -> usize {
    Kind::Commit.tag().len()
        + frame::Body::Decoded(body_map(&commit(upstream_seq, pad)))
            .with_seq(relay_seq)
            .len()
}

/// A frame decoded as a consumer would (the lexicon's limits).
pub fn decode(bytes: &[u8]) -> Incoming {
    frame::decode(bytes, &Limits::default()).unwrap_or_else(|error| panic!("{error}"))
}

/// The relay seq of an event frame.
pub fn event_seq(bytes: &[u8]) -> u64 {
    match decode(bytes) {
        Incoming::Event(event) => event.seq,
        other => panic!("not an event: {other:?}"),
    }
}
