//! The event pipeline: sequencing, persistence, retention and fan-out.
//!
//! ```text
//! upstream workers ──ingest (bounded in events and bytes)──► sequencer ──commit (persist lock)──► SQLite
//!                                            │ after commit
//!                                            ▼
//!                                       broadcaster ──offer──► one Mailbox per consumer
//! retention loop ──small batches (persist lock, released between batches)──► SQLite
//! ```
//!
//! Rules this module owns:
//! - an event gets its relay sequence number and is **persisted before it is broadcast**,
//!   together with its host's cursor (one transaction), so a restart resumes every
//!   upstream after the last persisted event and a consumer never sees an event that a
//!   crash could take back;
//! - the *persist lock* serialises writers of the event log (commits and retention) and is
//!   held only for one batch's work; retention releases it between batches so ingest never
//!   waits behind a whole garbage-collection pass (the incident: a GC loop held the lock
//!   for its whole run and stalled the relay every 10 minutes). Probes never take it;
//! - store failures are retried with backoff and reported through readiness, never a panic.

mod broadcast;
mod ingest;
mod retention;
mod sequencer;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, Mutex};

pub use self::broadcast::{Broadcaster, Subscription};
use self::ingest::IngestBytes;
pub use self::ingest::{IngestClosed, IngestSender};
pub use self::sequencer::Ingested;
use crate::atproto::frame;
use crate::config::CpuConfig;
use crate::memory::MemoryGuard;
pub use crate::metrics::EventStats;
use crate::metrics::Metrics;
use crate::rt::stop::StopSignal;
use crate::rt::time::Clock;
use crate::rt::{self, cpu::Cpu};
use crate::store::{AccountRow, Deleted, NewEvent, Page, Store, StoreError};
use crate::vital::Vitals;

/// Event pipeline settings: `[events]` in the configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventsConfig {
    /// Events waiting between the upstream workers and the sequencer; when full, workers
    /// stop reading (backpressure to the upstreams) instead of buffering without bound.
    pub ingest_queue_max: usize,
    /// Content bytes (messages as received) the ingest queue and the batch being committed may
    /// hold in all; past it, workers wait before reading on (the same backpressure).
    /// At most 4294967295.
    pub ingest_queue_bytes: u64,
    /// Most events persisted in one transaction.
    pub commit_batch_max: usize,
    /// First retry delay after a failed commit, milliseconds; doubles per failure.
    pub commit_retry_base_ms: u64,
    /// Retry delay cap after failed commits, milliseconds.
    pub commit_retry_cap_ms: u64,
    /// Events kept in the log; older ones are deleted by the retention loop.
    pub retention_events_max: u64,
    /// Content bytes (kind tags and stored bodies) kept in the log; past it the retention loop deletes
    /// the oldest events, a batch at a time, until the log is back within it (the newest
    /// event always stays).
    pub retention_bytes_max: u64,
    /// How often the retention loop runs, milliseconds.
    pub retention_interval_ms: u64,
    /// Rows deleted per retention batch (the persist lock is released between batches).
    /// `0` deletes everything due in one batch, holding the lock throughout.
    pub retention_batch_rows: usize,
    /// Liveness watchdog: when a batch of events has waited this long for its commit,
    /// `/_healthz` answers 503 (`event log stalled`) so the orchestrator restarts a relay
    /// whose event log stopped moving. `0` turns it off.
    pub stall_healthz_ms: u64,
    /// When a batch of events has waited this long for its commit (a store call hanging:
    /// a full disk, a checkpoint's fsync, a foreign lock), `/_readyz` answers 503 until it
    /// lands: don't send traffic to a relay whose log is not moving. `0` turns it off.
    pub stall_readyz_ms: u64,
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            ingest_queue_max: 4096,
            ingest_queue_bytes: 64 * 1024 * 1024,
            commit_batch_max: 256,
            commit_retry_base_ms: 100,
            commit_retry_cap_ms: 5_000,
            retention_events_max: 1_000_000,
            retention_bytes_max: 16 << 30,
            retention_interval_ms: 10 * 60_000,
            retention_batch_rows: 500,
            stall_healthz_ms: 120_000,
            stall_readyz_ms: 5_000,
        }
    }
}

impl EventsConfig {
    /// Cross-field checks.
    pub fn check(&self) -> Result<(), String> {
        if self.ingest_queue_max == 0 || self.commit_batch_max == 0 {
            return Err(
                "events.ingest_queue_max and events.commit_batch_max must be at least 1".into(),
            );
        }
        if self.ingest_queue_bytes == 0 || self.ingest_queue_bytes > u64::from(u32::MAX) {
            return Err(format!(
                "events.ingest_queue_bytes must be between 1 and {}",
                u32::MAX
            ));
        }
        if self.commit_retry_base_ms == 0 || self.commit_retry_base_ms > self.commit_retry_cap_ms {
            return Err(
                "events.commit_retry_base_ms must be at least 1 and at most commit_retry_cap_ms"
                    .into(),
            );
        }
        if self.retention_interval_ms == 0
            || self.retention_events_max == 0
            || self.retention_bytes_max == 0
        {
            return Err(
                "events.retention_interval_ms, retention_events_max and retention_bytes_max must be at least 1"
                    .into(),
            );
        }
        Ok(())
    }
}

/// One persisted event as consumers receive it: its relay sequence number and the binary
/// event-stream frame (DAG-CBOR header `{op: 1, t}` + the stored body, which carries the
/// relay's seq), encoded once and shared by every consumer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// Relay sequence number.
    pub seq: u64,
    /// The frame's bytes.
    pub bytes: Bytes,
}

impl Frame {
    /// The frame of a persisted event (header + stored body).
    pub fn encode(event: &NewEvent) -> Self {
        Self {
            seq: event.seq,
            bytes: Bytes::from(frame::event_frame(event.kind, &event.body)),
        }
    }
}

/// What one queued copy of a frame costs in the memory account: its bytes plus the queue
/// entry. The bytes are shared between mailboxes, so summing this over mailboxes errs high.
const FRAME_ENTRY_BYTES: u64 = std::mem::size_of::<Frame>() as u64;

impl Frame {
    /// Bytes this frame counts for in one mailbox.
    pub fn cost(&self) -> u64 {
        self.bytes.len() as u64 + FRAME_ENTRY_BYTES
    }
}

/// The event log and everything that writes or reads it.
#[derive(Debug)]
pub struct Events {
    config: EventsConfig,
    store: Arc<Store>,
    cpu: Cpu,
    /// Declared CPU cost per row written, deleted or read.
    row_cost: std::time::Duration,
    /// Serialises writers of the event log; held for one batch at a time.
    persist: Mutex<()>,
    broadcaster: Arc<Broadcaster>,
    /// The ingest queue's byte account.
    ingest: Arc<IngestBytes>,
    /// Tells the sequencer and the retention loop to stop.
    shutdown: StopSignal,
    oldest_seq: AtomicU64,
    /// Content bytes of the events in the log (retention's byte bound).
    log_bytes: AtomicU64,
    store_healthy: AtomicBool,
    /// When the batch the sequencer is committing was formed (`clock` ms + 1); 0 when none
    /// is waiting. Read by the liveness watchdog.
    batch_waiting_since_ms: AtomicU64,
    clock: Clock,
    duplicates_total: AtomicU64,
    /// `#commit`/`#sync` events dropped for a revision not newer than their account's last.
    stale_revs_total: AtomicU64,
    /// Every account's latest revision as the store had them at open; the sequencer takes
    /// them when it starts and keeps them from then on.
    revs_at_open: std::sync::Mutex<BTreeMap<String, String>>,
    retention_deleted_total: AtomicU64,
    metrics: Arc<Metrics>,
}

impl Events {
    /// Open the pipeline over `store`: reads the log's bounds so sequencing continues.
    pub fn open(
        config: EventsConfig,
        cpu_costs: &CpuConfig,
        cpu: Cpu,
        store: Arc<Store>,
        metrics: Arc<Metrics>,
        memory: Arc<MemoryGuard>,
        clock: Clock,
    ) -> Result<Self, StoreError> {
        let (oldest, head) = store.event_bounds()?.unwrap_or((0, 0));
        let log_bytes = store.event_bytes()?;
        let revs_at_open = store.account_revs()?.into_iter().collect();
        let ingest_limit = u32::try_from(config.ingest_queue_bytes).unwrap_or(u32::MAX);
        Ok(Self {
            ingest: Arc::new(IngestBytes::new(ingest_limit)),
            config,
            store,
            cpu,
            row_cost: cpu_costs.store_row(),
            persist: Mutex::new(()),
            broadcaster: Arc::new(Broadcaster::new(head, memory)),
            shutdown: StopSignal::new(),
            oldest_seq: AtomicU64::new(oldest),
            log_bytes: AtomicU64::new(log_bytes),
            store_healthy: AtomicBool::new(true),
            batch_waiting_since_ms: AtomicU64::new(0),
            clock,
            duplicates_total: AtomicU64::new(0),
            stale_revs_total: AtomicU64::new(0),
            revs_at_open: std::sync::Mutex::new(revs_at_open),
            retention_deleted_total: AtomicU64::new(0),
            metrics,
        })
    }

    /// Start the sequencer and the retention loop, watched as vital tasks. `cursors` are the hosts' persisted
    /// cursors (the sequencer drops anything at or below them); the accounts' latest
    /// revisions were read at open (a commit not newer is dropped); `on_rejected` hears of each
    /// host whose event the log refused for what it carries. Returns the ingest sender the
    /// upstream workers use.
    pub fn start(
        self: &Arc<Self>,
        cursors: Vec<(i64, u64)>,
        vitals: &Arc<Vitals>,
        on_rejected: Box<dyn Fn(i64) + Send + Sync>,
    ) -> IngestSender {
        let revs = std::mem::take(
            &mut *self
                .revs_at_open
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        let (sender, receiver) = mpsc::channel(self.config.ingest_queue_max);
        rt::spawn(vitals.watch(
            "sequencer",
            sequencer::run(
                Arc::clone(self),
                receiver,
                cursors.into_iter().collect(),
                revs,
                self.shutdown.clone(),
                on_rejected,
            ),
        ));
        rt::spawn(vitals.watch(
            "retention",
            retention::run(Arc::clone(self), self.shutdown.clone()),
        ));
        IngestSender::new(sender, Arc::clone(&self.ingest))
    }

    /// Stop the sequencer (an uncommitted batch is resent by its upstreams after a
    /// restart, because their persisted cursors did not move) and the retention loop.
    pub fn stop(&self) {
        self.shutdown.stop();
    }

    /// The fan-out side.
    pub fn broadcaster(&self) -> &Arc<Broadcaster> {
        &self.broadcaster
    }

    /// How long the batch being committed has waited, if longer than
    /// `stall_healthz_ms` (the liveness watchdog; `None` when off or moving).
    pub fn stalled_for_ms(&self) -> Option<u64> {
        self.waited_longer_than(self.config.stall_healthz_ms)
    }

    /// Readiness: the store accepted the last commit and no batch has waited longer than
    /// `stall_readyz_ms` for its commit.
    pub fn store_ready(&self) -> bool {
        self.store_healthy.load(SeqCst)
            && self
                .waited_longer_than(self.config.stall_readyz_ms)
                .is_none()
    }

    /// How long the batch being committed has waited, if longer than `limit_ms` (never
    /// when `limit_ms` is 0 or no batch is waiting).
    fn waited_longer_than(&self, limit_ms: u64) -> Option<u64> {
        let since = self.batch_waiting_since_ms.load(SeqCst);
        if since == 0 || limit_ms == 0 {
            return None;
        }
        let waited = (self.clock.now_ms() + 1).saturating_sub(since);
        (waited > limit_ms).then_some(waited)
    }

    /// The sequencer formed a batch (`true`) or it landed, every event committed or
    /// rejected (`false`).
    fn batch_waiting(&self, waiting: bool) {
        let since = if waiting { self.clock.now_ms() + 1 } else { 0 };
        self.batch_waiting_since_ms.store(since, SeqCst);
    }

    /// Lowest sequence number still in the log.
    pub fn oldest_seq(&self) -> u64 {
        self.oldest_seq.load(SeqCst)
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> EventStats {
        let fanout = self.broadcaster.stats();
        EventStats {
            head_seq: self.broadcaster.head(),
            oldest_seq: self.oldest_seq(),
            log_bytes: self.log_bytes(),
            store_healthy: self.store_ready(),
            commits_durable: self.store.commits_durable(),
            duplicates_total: self.duplicates_total.load(SeqCst),
            stale_revs_total: self.stale_revs_total.load(SeqCst),
            retention_deleted_total: self.retention_deleted_total.load(SeqCst),
            consumers: fanout.consumers,
            consumers_kicked_total: fanout.kicked_total,
            mailbox_high_water: fanout.mailbox_high_water,
            ingest_held_bytes: self.ingest.held_bytes(),
            ingest_high_water_bytes: self.ingest.high_water_bytes(),
        }
    }

    /// Persisted events after `after`, within `page` (catch-up). Reads do not take the
    /// persist lock (SQLite WAL readers do not block the writer).
    pub async fn read_after(&self, after: u64, page: Page) -> Result<Vec<Frame>, StoreError> {
        let events = self
            .store
            .call(|store| store.events_after(after, page))
            .await?;
        self.spend_rows(events.len()).await;
        Ok(events.iter().map(Frame::encode).collect())
    }

    /// One account's state (`getRepoStatus`, `getLatestCommit`). Reads do not take the
    /// persist lock.
    pub async fn account(&self, did: &str) -> Result<Option<AccountRow>, StoreError> {
        let account = self.store.call(|store| store.account(did)).await?;
        self.spend_rows(1).await;
        Ok(account)
    }

    /// Up to `limit` accounts with a commit after `after`, in DID order (`listRepos`).
    pub async fn accounts_after(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<AccountRow>, StoreError> {
        let accounts = self
            .store
            .call(|store| store.accounts_after(after, limit))
            .await?;
        self.spend_rows(accounts.len()).await;
        Ok(accounts)
    }

    /// Persist one batch under the persist lock.
    async fn commit(&self, events: &[NewEvent]) -> Result<(), StoreError> {
        let _persist = self.persist.lock().await;
        self.store.call(|store| store.commit_events(events)).await?;
        let bytes: usize = events.iter().map(NewEvent::content_bytes).sum();
        self.log_bytes.fetch_add(bytes as u64, SeqCst);
        self.spend_rows(events.len()).await;
        Ok(())
    }

    /// Delete up to `limit` events below `below` under the persist lock.
    async fn delete_below(&self, below: u64, limit: usize) -> Result<Deleted, StoreError> {
        let _persist = self.persist.lock().await;
        let deleted = self
            .store
            .call(|store| store.delete_events_below(below, limit))
            .await?;
        let _ = self.log_bytes.fetch_update(SeqCst, SeqCst, |bytes| {
            Some(bytes.saturating_sub(deleted.bytes))
        });
        self.retention_deleted_total
            .fetch_add(deleted.rows as u64, SeqCst);
        if deleted.rows > 0 {
            self.oldest_seq.fetch_max(deleted.last_seq + 1, SeqCst);
        }
        self.spend_rows(deleted.rows).await;
        Ok(deleted)
    }

    /// Content bytes of the events in the log now.
    pub fn log_bytes(&self) -> u64 {
        self.log_bytes.load(SeqCst)
    }

    async fn spend_rows(&self, rows: usize) {
        if rows > 0 {
            self.cpu
                .spend(self.row_cost * u32::try_from(rows).unwrap_or(u32::MAX))
                .await;
        }
    }
}
