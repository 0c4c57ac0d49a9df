//! Upstream subscriptions: one worker task per host in the host table, the startup ramp
//! that keeps a cold start from starving the HTTP server, reconciliation that respawns
//! missing workers, dormancy for hosts that keep failing, and batched cursor persistence.
//!
//! Cold start is the dangerous moment (seed report: ~2,800 simultaneous DNS+TLS+WebSocket
//! handshakes starved the probe endpoint until the orchestrator killed the pod, in a loop).
//! Three independent brakes apply: workers are spawned in batches with a pause between
//! them; each host's first attempt is delayed by a hostname-hash jitter; and at most
//! `handshake_concurrency_max` handshakes are in flight at once (a FIFO semaphore), so the
//! CPU they need arrives in a bounded trickle.
//!
//! `requestCrawl` is anonymous, so what it may do is bounded (see [`CrawlWindow`]): at most
//! `crawl_new_hosts_max` new hosts per window, none past `hosts_max` hosts, and a dormant
//! host woken (dialled at once) at most once per window. The per-caller limit
//! (`crawl_per_client_max`) is counted by the HTTP layer, which knows the caller.
//!
//! Operators ban names through the admin API ([`Upstreams::ban`]): a banned name covers
//! itself and every name under it, is refused at `requestCrawl`, and the hosts it covers
//! are quarantined with the reason [`QUARANTINE_BANNED`] (their workers end; no one else is
//! touched). Bans are kept in the store and applied again at startup.
//!
//! What the relay may dial is the [`egress`] rule's: loopback, private, link-local,
//! metadata and other internal addresses are refused unless `egress_allow` names them.
//! How it speaks to a host once connected (TLS, the URL, the WebSocket handshake) is the
//! [`transport`]'s: `wss://` unless `insecure_ws_hosts` names the host.
//!
//! State a probe or `/hosts` reads is in atomics on each [`Host`]; the host map itself is
//! behind a read-write lock touched only by `/hosts`, `requestCrawl`, reconciliation and
//! the cursor flusher, never by probes.

pub mod egress;
pub mod hostname;
mod schedule;
pub mod transport;
mod worker;

pub use schedule::EventLimit;

pub use worker::{
    ws_config, MAX_UPSTREAM_SEQ, QUARANTINE_EVENT_UNSTORABLE, QUARANTINE_SEQ_OUT_OF_RANGE,
    SESSION_FRAME_TOO_LARGE, SESSION_MALFORMED_FRAME, SESSION_SEQ_NOT_INCREASING,
    SESSION_UPSTREAM_ERROR,
};

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{
    AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering::SeqCst,
};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use crate::events::IngestSender;
use crate::metrics::{Metrics, UpstreamGauges};
use crate::rt::cpu::{Cpu, CpuConfig};
use crate::rt::probe::{self, Probe};
use crate::rt::stop::StopSignal;
use crate::rt::time::{sleep, Clock};
use crate::rt::{self};
use crate::store::{HostRow, HostStatus, Store, StoreError};
use crate::vital::Vitals;

/// Upstream subscription settings. Defaults follow the production incident's fixes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    /// Port dialled on every upstream host
    /// (`wss://<host>:<port>/xrpc/com.atproto.sync.subscribeRepos?cursor=N`, or `ws://` for
    /// a host `insecure_ws_hosts` names).
    pub port: u16,
    /// TCP connect plus TLS and WebSocket handshakes must finish within this, milliseconds.
    pub connect_timeout_ms: u64,
    /// No frame for this long means a dead peer: reconnect, milliseconds.
    pub read_idle_timeout_ms: u64,
    /// Largest accepted upstream frame, bytes.
    pub max_frame_bytes: usize,
    /// Startup only: each host's first attempt waits `hash(hostname) % startup_jitter_ms`.
    pub startup_jitter_ms: u64,
    /// Startup only: workers spawned per batch.
    pub spawn_batch_size: usize,
    /// Startup only: pause between spawn batches, milliseconds.
    pub spawn_batch_interval_ms: u64,
    /// Most TCP+WebSocket handshakes in flight at once (FIFO beyond that).
    pub handshake_concurrency_max: usize,
    /// First retry delay, milliseconds; doubles per consecutive failure.
    pub backoff_base_ms: u64,
    /// Retry delay cap, milliseconds.
    pub backoff_cap_ms: u64,
    /// Retry delays vary by up to ± this percentage (by hostname hash).
    pub backoff_jitter_pct: u32,
    /// After this many consecutive failures a host turns dormant and its worker exits.
    pub dormant_after_failures: u32,
    /// Reconciliation retries a dormant host after this long since its last attempt.
    pub dormant_retry_interval_ms: u64,
    /// How often reconciliation looks for hosts without a worker.
    pub reconcile_interval_ms: u64,
    /// Most events a second one host may hand to the sequencer, on average (0: no limit).
    /// A host above it waits (its socket is not read), so a flood costs the flooder: the
    /// reference relay keeps per-host event-rate limits the same way.
    pub host_events_per_second: u32,
    /// How many events a host may send at once above its rate (a catch-up after a
    /// reconnect), the token bucket's depth.
    pub host_events_burst: u32,
    /// CIDR blocks the relay may dial although the [`egress`] rule refuses them (loopback,
    /// private, link-local, metadata, …), e.g. `["10.0.0.0/8"]` for upstreams on a private
    /// network. Empty: only public addresses are dialled.
    pub egress_allow: Vec<egress::Cidr>,
    /// Hosts dialled with plain `ws://` instead of TLS, for development and test networks:
    /// exact hostnames (or IP literals), `*.domain` for every name under a domain, or `*`
    /// alone for every host (test networks only; the relay warns at startup). Empty: TLS
    /// for every host.
    pub insecure_ws_hosts: Vec<transport::HostPattern>,
    /// A PEM file of trust anchors added to webpki's (an operator's private CA). Empty:
    /// webpki's roots only. A file that cannot be read or holds no certificate stops the
    /// relay at startup.
    pub tls_ca_file: std::path::PathBuf,
    /// The length of a `requestCrawl` window, seconds: the limits below count per window,
    /// and a refusal's `Retry-After` is what is left of the current one.
    pub crawl_window_s: u64,
    /// `requestCrawl` requests one client address may make per window (an IPv6 address
    /// counts by its /64); past it, `429 crawl_rate_limit`. 0: no limit.
    pub crawl_per_client_max: u32,
    /// New hosts `requestCrawl` may add per window, from all callers together; past it,
    /// `429 new_host_limit`. 0: no limit.
    pub crawl_new_hosts_max: u32,
    /// Hosts in the table past which `requestCrawl` adds no new host (`403 host_table_full`);
    /// hosts already known are still crawled. 0: no limit.
    pub hosts_max: usize,
    /// How long `requestCrawl` waits for a new host's name to resolve before it is stored
    /// (the existence check), milliseconds: a name that does not resolve in time is
    /// `400 host_not_found`, one whose every address the egress rule refuses is
    /// `400 egress_refused`. 0: no check (a relay without DNS of its own).
    pub crawl_resolve_timeout_ms: u64,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            port: 443,
            connect_timeout_ms: 10_000,
            read_idle_timeout_ms: 120_000,
            max_frame_bytes: 1 << 20,
            startup_jitter_ms: 30_000,
            spawn_batch_size: 50,
            spawn_batch_interval_ms: 100,
            handshake_concurrency_max: 32,
            backoff_base_ms: 1_000,
            backoff_cap_ms: 30 * 60_000,
            backoff_jitter_pct: 20,
            dormant_after_failures: 15,
            dormant_retry_interval_ms: 60 * 60_000,
            reconcile_interval_ms: 5 * 60_000,
            host_events_per_second: 50,
            host_events_burst: 500,
            egress_allow: Vec::new(),
            insecure_ws_hosts: Vec::new(),
            tls_ca_file: std::path::PathBuf::new(),
            crawl_window_s: 3_600,
            crawl_per_client_max: 100,
            crawl_new_hosts_max: 1_000,
            hosts_max: 100_000,
            crawl_resolve_timeout_ms: 2_000,
        }
    }
}

impl UpstreamConfig {
    /// Cross-field checks.
    pub fn check(&self) -> Result<(), String> {
        if self.spawn_batch_size == 0 || self.handshake_concurrency_max == 0 {
            return Err("upstream.spawn_batch_size and upstream.handshake_concurrency_max must be at least 1".into());
        }
        if self.backoff_base_ms == 0 || self.backoff_base_ms > self.backoff_cap_ms {
            return Err(
                "upstream.backoff_base_ms must be at least 1 and at most backoff_cap_ms".into(),
            );
        }
        if self.dormant_after_failures == 0 {
            return Err("upstream.dormant_after_failures must be at least 1".into());
        }
        if self.reconcile_interval_ms == 0 {
            return Err("upstream.reconcile_interval_ms must be at least 1".into());
        }
        if self.host_events_per_second > 0 && self.host_events_burst == 0 {
            return Err("upstream.host_events_burst must be at least 1 while host_events_per_second limits hosts".into());
        }
        if self.crawl_window_s == 0 || self.crawl_window_s > CRAWL_WINDOW_LIMIT_S {
            return Err(format!(
                "upstream.crawl_window_s must be between 1 and {CRAWL_WINDOW_LIMIT_S} (a week)"
            ));
        }
        if self.max_frame_bytes < MIN_FRAME_LIMIT_BYTES {
            return Err(format!(
                "upstream.max_frame_bytes must be at least {MIN_FRAME_LIMIT_BYTES} (a control frame's largest payload)"
            ));
        }
        Ok(())
    }
}

/// The quarantine reason of a host under a banned name.
pub const QUARANTINE_BANNED: &str = "banned";

/// The longest `upstream.crawl_window_s`: a week.
pub const CRAWL_WINDOW_LIMIT_S: u64 = 7 * 24 * 3_600;

/// A fixed window of `requestCrawl` limits: which one an instant of the relay clock falls
/// in, and how long is left of it (the `Retry-After` of a refusal). Windows are counted
/// from the relay's start, so every limit begins afresh with a new process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CrawlWindow {
    /// The window's number (0 from the start).
    pub index: u64,
    /// Whole seconds until the next window begins, at least 1.
    pub retry_after_s: u64,
}

impl CrawlWindow {
    /// The window of `window_s` seconds that `now_ms` (relay clock) falls in.
    pub fn at(now_ms: u64, window_s: u64) -> Self {
        let window_ms = window_s.saturating_mul(1_000).max(1);
        let index = now_ms / window_ms;
        let left_ms = (index + 1).saturating_mul(window_ms) - now_ms;
        Self {
            index,
            retry_after_s: left_ms.div_ceil(1_000).max(1),
        }
    }
}

/// The smallest frame limit a config may set: 125 bytes, the largest payload of a WebSocket
/// control frame, so pings, pongs and close frames always fit (a limit of 0 would refuse
/// every message, and the session would end on the first frame).
pub const MIN_FRAME_LIMIT_BYTES: usize = 125;

/// The read buffer every WebSocket the relay holds starts with (tungstenite's default is
/// 128 KiB). tungstenite zero-fills the free part of its read buffer before every socket
/// read, so with 128 KiB a 100-byte event frame cost a 128 KiB memset (a quarter of the
/// cold-start tunnel's CPU), and every idle connection held 128 KiB. Frames larger than
/// the buffer still arrive whole: the codec reserves a frame's full length once its
/// header is read (up to the configured frame limit).
pub const WS_READ_BUFFER_BYTES: usize = 4096;

/// What a host's worker is doing right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
#[repr(u8)]
pub enum HostPhase {
    /// No worker (not yet spawned, or exited on shutdown).
    Idle = 0,
    /// Waiting out the startup jitter.
    Waiting = 1,
    /// Dialling or handshaking.
    Connecting = 2,
    /// Subscribed and reading frames.
    Connected = 3,
    /// Waiting to retry after a failure.
    Backoff = 4,
    /// Failed too often; worker exited; retried slowly by reconciliation.
    Dormant = 5,
    /// Sent something the relay cannot keep (see [`Host::quarantine_reason`]); worker
    /// exited; never dialled again while this relay runs.
    Quarantined = 6,
}

impl HostPhase {
    /// All phases, in order (metric label sets).
    pub const ALL: [HostPhase; 7] = [
        Self::Idle,
        Self::Waiting,
        Self::Connecting,
        Self::Connected,
        Self::Backoff,
        Self::Dormant,
        Self::Quarantined,
    ];

    /// Stable lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Idle => "idle",
            Self::Waiting => "waiting",
            Self::Connecting => "connecting",
            Self::Connected => "connected",
            Self::Backoff => "backoff",
            Self::Dormant => "dormant",
            Self::Quarantined => "quarantined",
        }
    }

    fn from_u8(value: u8) -> Self {
        Self::ALL[usize::from(value).min(Self::ALL.len() - 1)]
    }
}

/// One upstream host: identity plus the atomics its worker updates.
#[derive(Debug)]
pub struct Host {
    /// Store id.
    pub id: i64,
    /// Hostname dialled.
    pub hostname: String,
    phase: AtomicU8,
    /// Highest upstream seq handed to the sequencer (one atomic RMW per frame, no lock).
    /// A reconnect resumes from here; a restart resumes from the persisted cursor, which
    /// the sequencer advances in the same transaction as the events.
    cursor: AtomicU64,
    consecutive_failures: AtomicU32,
    /// Sessions in a row that broke the protocol or closed before any event: the backoff
    /// grows with them as with failed attempts (see [`worker`]).
    consecutive_bad_sessions: AtomicU32,
    /// Why the last attempt or session ended (`None` before the first end).
    last_error: Mutex<Option<&'static str>>,
    /// Events this host's rate limit held back.
    rate_limited_total: AtomicU64,
    /// Set while its worker waits for the rate limit's allowance to refill.
    throttled: AtomicBool,
    events_total: AtomicU64,
    last_attempt_ms: AtomicU64,
    /// Exactly one worker per host: set by whoever spawns it, cleared when it exits.
    worker_running: AtomicBool,
    /// Why the host was quarantined (the first reason wins); see [`Upstreams::quarantine`].
    quarantine_reason: OnceLock<&'static str>,
    /// The last [`CrawlWindow`] in which `requestCrawl` woke this host from dormancy, plus
    /// one (0: never).
    woken_in_window: AtomicU64,
    /// The host's own event limit, set by the admin API (`None`: the configured one). Read
    /// by its worker at every event, so a change applies at once.
    event_limit: Mutex<Option<EventLimit>>,
}

impl Host {
    fn from_row(row: &HostRow) -> Self {
        let phase = match row.status {
            HostStatus::Active => HostPhase::Idle,
            HostStatus::Dormant => HostPhase::Dormant,
        };
        Self {
            id: row.id,
            hostname: row.hostname.clone(),
            phase: AtomicU8::new(phase as u8),
            cursor: AtomicU64::new(row.cursor),
            consecutive_failures: AtomicU32::new(row.consecutive_failures),
            consecutive_bad_sessions: AtomicU32::new(0),
            last_error: Mutex::new(None),
            rate_limited_total: AtomicU64::new(0),
            throttled: AtomicBool::new(false),
            events_total: AtomicU64::new(0),
            last_attempt_ms: AtomicU64::new(0),
            worker_running: AtomicBool::new(false),
            quarantine_reason: OnceLock::new(),
            woken_in_window: AtomicU64::new(0),
            event_limit: Mutex::new(None),
        }
    }

    /// Current phase.
    pub fn phase(&self) -> HostPhase {
        HostPhase::from_u8(self.phase.load(SeqCst))
    }

    /// Move to `phase`, unless the host is quarantined (that is final while the relay runs).
    fn set_phase(&self, phase: HostPhase) {
        let _ = self.phase.fetch_update(SeqCst, SeqCst, |current| {
            (current != HostPhase::Quarantined as u8).then_some(phase as u8)
        });
    }

    /// Why the host was quarantined, if it was.
    pub fn quarantine_reason(&self) -> Option<&'static str> {
        self.quarantine_reason.get().copied()
    }

    /// The host's own event limit, if the admin API set one.
    pub fn own_event_limit(&self) -> Option<EventLimit> {
        *self
            .event_limit
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn set_own_event_limit(&self, limit: Option<EventLimit>) {
        *self
            .event_limit
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = limit;
    }

    /// Why the last attempt or session ended, if one has.
    pub fn last_error(&self) -> Option<&'static str> {
        *self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn set_last_error(&self, reason: &'static str) {
        *self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(reason);
    }

    /// A JSON-ready snapshot for `/hosts`.
    pub fn view(&self) -> HostView {
        HostView {
            id: self.id,
            hostname: self.hostname.clone(),
            phase: self.phase(),
            cursor: self.cursor.load(SeqCst),
            consecutive_failures: self.consecutive_failures.load(SeqCst),
            consecutive_bad_sessions: self.consecutive_bad_sessions.load(SeqCst),
            last_error: self.last_error(),
            events: self.events_total.load(SeqCst),
            rate_limited: self.rate_limited_total.load(SeqCst),
            throttled: self.throttled.load(SeqCst),
            worker_running: self.worker_running.load(SeqCst),
            quarantined: self.quarantine_reason(),
            event_limit: self.own_event_limit(),
        }
    }
}

/// What `/hosts` shows per host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HostView {
    /// Store id.
    pub id: i64,
    /// Hostname.
    pub hostname: String,
    /// Current phase.
    pub phase: HostPhase,
    /// Highest upstream seq seen.
    pub cursor: u64,
    /// Consecutive failed attempts.
    pub consecutive_failures: u32,
    /// Consecutive sessions that broke the protocol or closed before any event.
    pub consecutive_bad_sessions: u32,
    /// Why the last attempt or session ended (`timeout`, `closed`, `seq_not_increasing`, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<&'static str>,
    /// Frames received since the relay started.
    pub events: u64,
    /// Events its rate limit held back since the relay started.
    pub rate_limited: u64,
    /// Whether its rate limit is holding its next event back right now.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub throttled: bool,
    /// Whether a worker task exists for it.
    pub worker_running: bool,
    /// Why it is quarantined, if it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quarantined: Option<&'static str>,
    /// Its own event limit, if the admin API set one (otherwise the configured one applies).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_limit: Option<EventLimit>,
}

/// Aggregate counts for metrics and the wind tunnel's monitor.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UpstreamStats {
    /// Hosts in the table.
    pub hosts: usize,
    /// Hosts per phase, indexed by `HostPhase as usize`.
    pub by_phase: [usize; HostPhase::ALL.len()],
    /// Worker tasks alive now.
    pub workers_running: usize,
    /// Most worker tasks ever alive at once.
    pub workers_high_water: usize,
    /// Handshakes in flight now.
    pub handshakes_in_flight: usize,
    /// Most handshakes ever in flight at once.
    pub handshakes_high_water: usize,
    /// Frames received from all upstreams.
    pub events_total: u64,
}

impl UpstreamStats {
    /// Hosts currently in `phase`.
    pub fn in_phase(&self, phase: HostPhase) -> usize {
        self.by_phase[phase as usize]
    }

    /// The values `/metrics` shows of this snapshot.
    pub fn gauges(&self) -> UpstreamGauges {
        UpstreamGauges {
            hosts_by_phase: HostPhase::ALL
                .iter()
                .map(|&phase| (phase.as_str(), self.in_phase(phase)))
                .collect(),
            workers_running: self.workers_running,
            workers_high_water: self.workers_high_water,
            handshakes_in_flight: self.handshakes_in_flight,
            handshakes_high_water: self.handshakes_high_water,
            events_total: self.events_total,
        }
    }
}

/// Why `requestCrawl` was refused.
#[derive(Debug, thiserror::Error)]
pub enum CrawlError {
    /// Not a hostname we will dial.
    #[error(transparent)]
    InvalidHostname(#[from] hostname::HostnameError),
    /// A name under a domain that only names internal hosts (see [`egress::refuse_name`]),
    /// or a new host's name whose every address the egress rule refuses.
    #[error("{0}")]
    InternalName(String),
    /// A new host's name that does not resolve (see [`egress::resolve_dialable`]).
    #[error("{0}")]
    HostNotFound(String),
    /// The name is under a name an operator banned.
    #[error("{hostname} is banned (under the banned name {ban})")]
    Banned {
        /// The normalised hostname asked for.
        hostname: String,
        /// The ban that covers it.
        ban: String,
    },
    /// The table holds `upstream.hosts_max` hosts: no new host is added.
    #[error("the host table is full ({hosts_max} hosts): no new host is added")]
    HostTableFull {
        /// The configured cap.
        hosts_max: usize,
    },
    /// This window's `upstream.crawl_new_hosts_max` new hosts have been added.
    #[error("{new_hosts_max} new hosts were added in this window; retry in {} s", .window.retry_after_s)]
    NewHostLimit {
        /// The configured limit.
        new_hosts_max: u32,
        /// The window that is full.
        window: CrawlWindow,
    },
    /// The host is dormant and was woken by a request in this window already.
    #[error("this dormant host was already woken in this window; retry in {} s", .window.retry_after_s)]
    ReactivationLimit {
        /// The window in which it was woken.
        window: CrawlWindow,
    },
    /// The store could not record it; the caller should retry.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl CrawlError {
    /// The error code a caller is answered with, and the `reason` it is counted under in
    /// `relay_crawl_refused_total`.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidHostname(_) => "invalid_hostname",
            Self::InternalName(_) => "egress_refused",
            Self::HostNotFound(_) => "host_not_found",
            Self::Banned { .. } => "banned",
            Self::HostTableFull { .. } => "host_table_full",
            Self::NewHostLimit { .. } => "new_host_limit",
            Self::ReactivationLimit { .. } => "reactivation_limit",
            Self::Store(_) => "store_unavailable",
        }
    }
}

/// Outcome of an accepted `requestCrawl`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CrawlAccepted {
    /// The normalised hostname.
    pub hostname: String,
    /// Store id.
    pub id: i64,
    /// Whether the host was new.
    pub created: bool,
    /// Whether a worker was started by this request.
    pub worker_started: bool,
}

/// All upstream subscriptions of one relay.
#[derive(Debug)]
pub struct Upstreams {
    config: UpstreamConfig,
    cpu_costs: CpuConfig,
    cpu: Cpu,
    clock: Clock,
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    /// TLS, the URL and the WebSocket handshake every worker's session starts with.
    transport: transport::Transport,
    hosts: RwLock<BTreeMap<i64, Arc<Host>>>,
    handshake_permits: Arc<Semaphore>,
    handshakes_in_flight: AtomicUsize,
    handshakes_high_water: AtomicUsize,
    workers_running: AtomicUsize,
    workers_high_water: AtomicUsize,
    ramp_started: AtomicBool,
    shutdown: StopSignal,
    /// Where workers hand events to the sequencer; set once by [`Upstreams::start`].
    ingest: OnceLock<IngestSender>,
    /// New hosts `requestCrawl` added per window: (window index, hosts added in it).
    crawl_new_hosts: Mutex<(u64, u32)>,
    /// Banned names (each covers itself and every name under it), as in the store.
    bans: RwLock<BTreeSet<String>>,
}

/// What an accepted ban did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BanOutcome {
    /// The normalised name banned.
    pub name: String,
    /// Whether it was not banned before.
    pub created: bool,
    /// Hosts in the table this ban quarantined now.
    pub hosts_stopped: usize,
}

impl Upstreams {
    /// Load the host table from `store`; `transport` is how workers speak to hosts.
    pub fn load(
        config: UpstreamConfig,
        cpu_costs: CpuConfig,
        cpu: Cpu,
        clock: Clock,
        store: Arc<Store>,
        metrics: Arc<Metrics>,
        transport: transport::Transport,
    ) -> Result<Self, StoreError> {
        let hosts = store
            .hosts()?
            .iter()
            .map(|row| (row.id, Arc::new(Host::from_row(row))))
            .collect();
        let bans = store.bans()?.into_iter().collect();
        let event_limits = store.host_limits()?;
        let upstreams = Self {
            handshake_permits: Arc::new(Semaphore::new(config.handshake_concurrency_max)),
            config,
            cpu_costs,
            cpu,
            clock,
            store,
            metrics,
            transport,
            hosts: RwLock::new(hosts),
            handshakes_in_flight: AtomicUsize::new(0),
            handshakes_high_water: AtomicUsize::new(0),
            workers_running: AtomicUsize::new(0),
            workers_high_water: AtomicUsize::new(0),
            ramp_started: AtomicBool::new(false),
            shutdown: StopSignal::new(),
            ingest: OnceLock::new(),
            crawl_new_hosts: Mutex::new((0, 0)),
            bans: RwLock::new(bans),
        };
        for host in upstreams.snapshot() {
            if upstreams.ban_covering(&host.hostname).is_some() {
                upstreams.quarantine(host.id, QUARANTINE_BANNED);
            }
        }
        {
            let hosts = upstreams
                .hosts
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            for (host_id, events_per_second, events_burst) in event_limits {
                if let Some(host) = hosts.get(&host_id) {
                    host.set_own_event_limit(Some(EventLimit {
                        events_per_second,
                        events_burst,
                    }));
                }
            }
        }
        Ok(upstreams)
    }

    /// The banned name that covers `hostname` (itself or a name it is under), if any.
    fn ban_covering(&self, hostname: &str) -> Option<String> {
        let bans = self.bans.read().unwrap_or_else(PoisonError::into_inner);
        let mut name = hostname;
        loop {
            if bans.contains(name) {
                return Some(name.to_owned());
            }
            name = name.split_once('.')?.1;
        }
    }

    /// Ban `raw_name` (a hostname or a domain of two labels or more): it is stored, refused
    /// at `requestCrawl` from now on, and every host it covers is quarantined.
    pub async fn ban(&self, raw_name: &str) -> Result<BanOutcome, CrawlError> {
        let name = hostname::validate(raw_name)?;
        let created = {
            let name = name.clone();
            self.store.call(move |store| store.add_ban(&name)).await?
        };
        self.bans
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name.clone());
        let mut hosts_stopped = 0;
        for host in self.snapshot() {
            if host.quarantine_reason().is_none()
                && self.ban_covering(&host.hostname).is_some()
                && self.quarantine(host.id, QUARANTINE_BANNED)
            {
                hosts_stopped += 1;
            }
        }
        Ok(BanOutcome {
            name,
            created,
            hosts_stopped,
        })
    }

    /// Lift the ban of `raw_name`: `requestCrawl` accepts names under it again. Hosts it
    /// quarantined stay stopped until the relay restarts (a quarantine is final while the
    /// relay runs). Returns whether there was such a ban.
    pub async fn unban(&self, raw_name: &str) -> Result<bool, CrawlError> {
        let name = hostname::validate(raw_name)?;
        let lifted = {
            let name = name.clone();
            self.store
                .call(move |store| store.remove_ban(&name))
                .await?
        };
        self.bans
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&name);
        Ok(lifted)
    }

    /// Give host `hostname` its own event limit (`None`: back to the configured one), kept in
    /// the store; its worker applies it at its next event. Returns the host as it is now,
    /// or `None` when no such host is in the table.
    pub async fn set_event_limit(
        &self,
        hostname: &str,
        limit: Option<EventLimit>,
    ) -> Result<Option<HostView>, StoreError> {
        let Some(host) = self.find(hostname) else {
            return Ok(None);
        };
        let stored = limit.map(|limit| (limit.events_per_second, limit.events_burst));
        self.store
            .call(|store| store.set_host_limit(host.id, stored))
            .await?;
        host.set_own_event_limit(limit);
        Ok(Some(host.view()))
    }

    /// The host named `hostname` (normalised), if it is in the table.
    fn find(&self, hostname: &str) -> Option<Arc<Host>> {
        self.snapshot()
            .into_iter()
            .find(|host| host.hostname == hostname)
    }

    /// What `/hosts` shows of the host named `hostname` (normalised), if it is in the table.
    pub fn view_of(&self, hostname: &str) -> Option<HostView> {
        self.find(hostname).map(|host| host.view())
    }

    /// Every banned name, sorted.
    pub fn bans(&self) -> Vec<String> {
        self.bans
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .cloned()
            .collect()
    }

    /// Up to `limit` hosts whose names sort after `after` (all from the first without it),
    /// in hostname order: one page of the admin host listing.
    pub fn views_after(&self, after: Option<&str>, limit: usize) -> Vec<HostView> {
        let mut hosts: Vec<Arc<Host>> = self
            .snapshot()
            .into_iter()
            .filter(|host| after.is_none_or(|after| host.hostname.as_str() > after))
            .collect();
        hosts.sort_by(|a, b| a.hostname.cmp(&b.hostname));
        hosts.iter().take(limit).map(|host| host.view()).collect()
    }

    /// Whether the startup ramp has begun (part of readiness).
    pub fn ramp_started(&self) -> bool {
        self.ramp_started.load(SeqCst)
    }

    /// Start the ramp and reconciliation (watched as vital tasks); workers hand events to
    /// `ingest`. Returns at once.
    pub fn start(self: &Arc<Self>, ingest: IngestSender, vitals: &Arc<Vitals>) {
        if self.ingest.set(ingest).is_err() {
            tracing::warn!("upstreams started twice; ignoring the second start");
            return;
        }
        rt::spawn(vitals.watch("upstream_ramp", Arc::clone(self).ramp()));
        rt::spawn(vitals.watch("upstream_reconcile", Arc::clone(self).reconcile_loop()));
    }

    /// Quarantine host `host_id` for `reason`: its worker ends at its next step and no one
    /// dials it again while this relay runs, so whatever it sent costs only itself. Nothing
    /// it sent before is touched. Returns whether the host was found.
    pub fn quarantine(&self, host_id: i64, reason: &'static str) -> bool {
        let Some(host) = self.snapshot().into_iter().find(|host| host.id == host_id) else {
            return false;
        };
        if host.quarantine_reason.set(reason).is_ok() {
            probe::reached(Probe::HostQuarantined);
            host.phase.store(HostPhase::Quarantined as u8, SeqCst);
            self.metrics.upstream_quarantined(reason);
            tracing::warn!(host = %host.hostname, reason, "host quarantined");
        }
        true
    }

    /// Stop every worker and loop.
    pub fn stop(&self) {
        self.shutdown.stop();
    }

    /// Every host's cursor as loaded from the store (call before [`Upstreams::start`]).
    pub fn cursors(&self) -> Vec<(i64, u64)> {
        self.snapshot()
            .iter()
            .map(|host| (host.id, host.cursor.load(SeqCst)))
            .collect()
    }

    /// Snapshot of every host, by id.
    pub fn views(&self) -> Vec<HostView> {
        self.snapshot().iter().map(|host| host.view()).collect()
    }

    /// Aggregate counts.
    pub fn stats(&self) -> UpstreamStats {
        let mut stats = UpstreamStats {
            workers_running: self.workers_running.load(SeqCst),
            workers_high_water: self.workers_high_water.load(SeqCst),
            handshakes_in_flight: self.handshakes_in_flight.load(SeqCst),
            handshakes_high_water: self.handshakes_high_water.load(SeqCst),
            ..UpstreamStats::default()
        };
        for host in self.snapshot() {
            stats.hosts += 1;
            stats.by_phase[host.phase() as usize] += 1;
            stats.events_total += host.events_total.load(SeqCst);
        }
        stats
    }

    /// The `requestCrawl` window the relay clock is in now.
    pub fn crawl_window(&self) -> CrawlWindow {
        CrawlWindow::at(self.clock.now_ms(), self.config.crawl_window_s)
    }

    /// The hostname `requestCrawl` takes: a DNS name of two labels or more, not under a
    /// domain that only names internal hosts — or a name the operator listed exactly in
    /// `insecure_ws_hosts`, with or without a port of its own (a development host such as
    /// `localhost` or `localhost:2583`: listing it by name is the operator's consent; its
    /// addresses still pass the egress rule).
    fn crawlable_name(&self, raw_hostname: &str) -> Result<String, CrawlError> {
        if let Ok((entry, name)) = hostname::validate_name_with_port(raw_hostname) {
            let listed = transport::HostPattern::Exact(name);
            if self.config.insecure_ws_hosts.contains(&listed) {
                return Ok(entry);
            }
        }
        let hostname = hostname::validate(raw_hostname)?;
        match egress::refuse_name(&hostname) {
            Some(refusal) => Err(CrawlError::InternalName(refusal)),
            None => Ok(hostname),
        }
    }

    /// Add (or re-activate) a host on request and make sure it has a worker, within the
    /// limits on new hosts (per window and in all) and on waking dormant hosts.
    pub async fn request_crawl(
        self: &Arc<Self>,
        raw_hostname: &str,
    ) -> Result<CrawlAccepted, CrawlError> {
        let hostname = self.crawlable_name(raw_hostname)?;
        if let Some(ban) = self.ban_covering(&hostname) {
            return Err(CrawlError::Banned { hostname, ban });
        }
        let window = self.crawl_window();
        if !self.knows(&hostname) {
            self.check_exists(&hostname).await?;
            self.admit_new_host(window)?;
        }
        let (id, created) = self.store.call(|store| store.add_host(&hostname)).await?;
        let host = {
            let mut hosts = self.hosts.write().unwrap_or_else(PoisonError::into_inner);
            let row = HostRow {
                id,
                hostname: hostname.clone(),
                status: HostStatus::Active,
                cursor: 0,
                consecutive_failures: 0,
            };
            Arc::clone(
                hosts
                    .entry(id)
                    .or_insert_with(|| Arc::new(Host::from_row(&row))),
            )
        };
        if host.phase() == HostPhase::Dormant {
            let woken_mark = window.index + 1;
            if host.woken_in_window.swap(woken_mark, SeqCst) == woken_mark {
                return Err(CrawlError::ReactivationLimit { window });
            }
            self.store
                .call(|store| store.set_status(id, HostStatus::Active, 0))
                .await?;
            host.consecutive_failures.swap(0, SeqCst);
            host.set_phase(HostPhase::Idle);
        }
        // One-at-a-time spawns need no jitter (seed report: jitter is for the startup herd).
        let worker_started = self.spawn_worker(&host, Duration::ZERO);
        Ok(CrawlAccepted {
            hostname,
            id,
            created,
            worker_started,
        })
    }

    /// The existence check of a new host (unless `crawl_resolve_timeout_ms` is 0): its name
    /// resolves within the timeout to at least one address the egress rule allows. Before
    /// the host takes a new-host place, so junk names cost no place.
    async fn check_exists(&self, hostname: &str) -> Result<(), CrawlError> {
        if self.config.crawl_resolve_timeout_ms == 0 {
            return Ok(());
        }
        let (name, port) = hostname::split_port(hostname);
        egress::resolve_dialable(
            name,
            port.unwrap_or(self.config.port),
            &self.config.egress_allow,
            Duration::from_millis(self.config.crawl_resolve_timeout_ms),
        )
        .await
        .map_err(|problem| match &problem {
            egress::NameProblem::NotFound(_) => CrawlError::HostNotFound(problem.to_string()),
            egress::NameProblem::Refused(..) => CrawlError::InternalName(problem.to_string()),
        })
    }

    /// Whether `hostname` is in the host table.
    fn knows(&self, hostname: &str) -> bool {
        self.hosts
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .any(|host| host.hostname == hostname)
    }

    /// Take one of `window`'s new-host places, unless the table is full or the window's
    /// places are taken. Checked before the host is stored, so concurrent requests for new
    /// hosts may pass the `hosts_max` check together (by at most the requests in flight).
    fn admit_new_host(&self, window: CrawlWindow) -> Result<(), CrawlError> {
        let hosts_max = self.config.hosts_max;
        if hosts_max > 0
            && self
                .hosts
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .len()
                >= hosts_max
        {
            return Err(CrawlError::HostTableFull { hosts_max });
        }
        let new_hosts_max = self.config.crawl_new_hosts_max;
        let mut added = self
            .crawl_new_hosts
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if window.index > added.0 {
            *added = (window.index, 0);
        }
        if new_hosts_max > 0 && added.1 >= new_hosts_max {
            return Err(CrawlError::NewHostLimit {
                new_hosts_max,
                window,
            });
        }
        added.1 += 1;
        Ok(())
    }

    fn snapshot(&self) -> Vec<Arc<Host>> {
        self.hosts
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }

    /// Spawn `host`'s worker unless one is running. Returns whether it spawned one.
    fn spawn_worker(self: &Arc<Self>, host: &Arc<Host>, initial_delay: Duration) -> bool {
        if host
            .worker_running
            .compare_exchange(false, true, SeqCst, SeqCst)
            .is_err()
        {
            return false;
        }
        let running = self.workers_running.fetch_add(1, SeqCst) + 1;
        self.workers_high_water.fetch_max(running, SeqCst);
        rt::spawn(worker::run(
            Arc::clone(self),
            Arc::clone(host),
            initial_delay,
        ));
        true
    }

    /// Startup: spawn every non-dormant host's worker, in batches, each with its jitter.
    async fn ramp(self: Arc<Self>) {
        self.ramp_started.swap(true, SeqCst);
        let hosts: Vec<Arc<Host>> = self
            .snapshot()
            .into_iter()
            .filter(|host| host.phase() != HostPhase::Dormant)
            .collect();
        tracing::info!(hosts = hosts.len(), "upstream ramp starting");
        let pause = Duration::from_millis(self.config.spawn_batch_interval_ms);
        for batch in hosts.chunks(self.config.spawn_batch_size) {
            if self.shutdown.is_stopped() {
                return;
            }
            for host in batch {
                self.spawn_worker(host, schedule::startup_delay(&self.config, &host.hostname));
            }
            if !pause.is_zero() {
                sleep(pause).await;
            }
        }
        tracing::info!(hosts = hosts.len(), "upstream ramp finished spawning");
    }

    /// Respawn workers for active hosts that lack one, and retry dormant hosts slowly.
    async fn reconcile_loop(self: Arc<Self>) {
        let interval = Duration::from_millis(self.config.reconcile_interval_ms);
        loop {
            tokio::select! {
                biased;
                () = self.shutdown.stopped() => return,
                () = sleep(interval) => {}
            }
            let now_ms = self.clock.now_ms();
            let mut respawned = 0;
            for host in self.snapshot() {
                let phase = host.phase();
                let due = match phase {
                    HostPhase::Quarantined => false,
                    HostPhase::Dormant => {
                        now_ms.saturating_sub(host.last_attempt_ms.load(SeqCst))
                            >= self.config.dormant_retry_interval_ms
                    }
                    _ => true,
                };
                if due && self.spawn_worker(&host, Duration::ZERO) {
                    probe::reached(if phase == HostPhase::Dormant {
                        Probe::DormantRetry
                    } else {
                        Probe::ReconcileRespawn
                    });
                    respawned += 1;
                }
            }
            if respawned > 0 {
                tracing::info!(respawned, "reconciliation started missing workers");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crawl_window_names_its_number_and_the_whole_seconds_left() {
        assert_eq!(
            CrawlWindow::at(0, 60),
            CrawlWindow {
                index: 0,
                retry_after_s: 60
            }
        );
        assert_eq!(
            CrawlWindow::at(59_001, 60),
            CrawlWindow {
                index: 0,
                retry_after_s: 1
            },
            "a part of a second left is a whole second"
        );
        assert_eq!(
            CrawlWindow::at(60_000, 60),
            CrawlWindow {
                index: 1,
                retry_after_s: 60
            }
        );
        assert_eq!(CrawlWindow::at(7_250_500, 3_600).index, 2);
        assert_eq!(CrawlWindow::at(7_250_500, 3_600).retry_after_s, 3_550);
    }

    #[test]
    fn crawl_window_bounds_are_checked() {
        for window_s in [0, CRAWL_WINDOW_LIMIT_S + 1] {
            let config = UpstreamConfig {
                crawl_window_s: window_s,
                ..UpstreamConfig::default()
            };
            assert_eq!(
                config.check().unwrap_err(),
                "upstream.crawl_window_s must be between 1 and 604800 (a week)"
            );
        }
    }
}
