//! The sequencer: the single task that turns ingested upstream events into the relay's
//! ordered, persisted log, then hands them to the broadcaster.
//!
//! Each event's body is re-encoded once, canonically, with the relay's sequence number in
//! place of the upstream's (`frame::sequenced_frame`): the frame consumers are sent and the
//! body the log stores share that one buffer.
//!
//! One task owns sequencing, so relay sequence numbers are dense and assigned in commit
//! order without a lock. It drains the ingest queue in batches (group commit), drops events
//! its host already delivered (a reconnect resumes from the in-memory cursor, a restart
//! from the persisted one, and either may overlap), and retries a failed commit with
//! backoff, holding the batch, until it lands or the relay shuts down. An uncommitted batch
//! lost to a shutdown or crash is not lost for good: its hosts' persisted cursors did not
//! move, so the upstreams resend it.
//!
//! Per account, as trusted relays keep it: a `#commit` or `#sync` whose revision is not
//! newer than the last one the log holds for its DID is dropped (counted); every event's
//! account change is written with it, in its batch's transaction.
//!
//! Only *transient* store errors are retried. A *permanent* one (the batch carries
//! something the log can never hold: [`StoreError::is_permanent`]) would otherwise be
//! retried forever and stop every host's events behind it, so the batch is then committed
//! one event at a time, renumbered densely: each event that still fails permanently on its
//! own is rejected and its host quarantined; every other event lands, in order.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::ingest::Queued;
use super::{Events, Frame};
use crate::atproto::frame::{self, Kind};
use crate::rt::probe::{self, Probe};
use crate::rt::stop::StopSignal;
use crate::rt::time::{sleep, Duration};
use crate::store::{AccountChange, AccountUpdate, NewEvent, StoreError};

/// One event as an upstream worker hands it over: a decoded, checked message.
#[derive(Clone, Debug, PartialEq)]
pub struct Ingested {
    /// The host's store id.
    pub host_id: i64,
    /// The host's own sequence number.
    pub upstream_seq: u64,
    /// The message type.
    pub kind: Kind,
    /// What it changes in its account's state.
    pub account: AccountUpdate,
    /// The body as received, every field kept (the sequencer writes the relay's seq in).
    pub body: frame::Body,
    /// What it costs the ingest byte account: the message's size as received.
    pub content_bytes: usize,
}

pub(super) async fn run(
    events: Arc<Events>,
    mut ingest: mpsc::Receiver<Queued>,
    mut committed: BTreeMap<i64, u64>,
    mut revs: BTreeMap<String, String>,
    shutdown: StopSignal,
    on_rejected: Box<dyn Fn(i64) + Send + Sync>,
) {
    /// However the sequencer ends, workers waiting for ingest room are told at once.
    struct CloseIngestOnExit<'a>(&'a Events);
    impl Drop for CloseIngestOnExit<'_> {
        fn drop(&mut self) {
            self.0.ingest.close();
        }
    }
    let _close_ingest = CloseIngestOnExit(&events);
    let batch_max = events.config.commit_batch_max;
    let mut next_seq = events.broadcaster.head() + 1;
    loop {
        let first = tokio::select! {
            biased;
            () = shutdown.stopped() => return,
            received = ingest.recv() => match received {
                Some(event) => event,
                None => return,
            },
        };
        let mut batch = Vec::with_capacity(batch_max);
        // Each event's frame, built with its stored body in one buffer (the body is a
        // slice of it), so the re-encode is the only copy.
        let mut frames = Vec::with_capacity(batch_max);
        let mut pending = BTreeMap::new();
        // Each account's newest revision in this batch.
        let mut pending_revs: BTreeMap<String, String> = BTreeMap::new();
        // The batch's bytes stay in the ingest account until it is committed or rejected.
        let mut batch_bytes = Vec::with_capacity(batch_max);
        let mut admit = |queued: Queued, batch: &mut Vec<NewEvent>, frames: &mut Vec<Frame>| {
            let (event, bytes) = queued.into_parts();
            let seen = pending
                .get(&event.host_id)
                .or_else(|| committed.get(&event.host_id))
                .copied()
                .unwrap_or(0);
            if event.upstream_seq <= seen {
                events.duplicates_total.fetch_add(1, SeqCst);
                return;
            }
            pending.insert(event.host_id, event.upstream_seq);
            if let AccountChange::Commit { rev, .. } = &event.account.change {
                // As trusted relays do: a commit not newer than the account's last is
                // dropped (a replay, a stale host). TIDs sort as strings.
                let did = &event.account.did;
                let last = pending_revs.get(did).or_else(|| revs.get(did));
                if last.is_some_and(|last| rev <= last) {
                    events.stale_revs_total.fetch_add(1, SeqCst);
                    return;
                }
                pending_revs.insert(did.clone(), rev.clone());
            }
            batch_bytes.push(bytes);
            let seq = next_seq + batch.len() as u64;
            let (encoded, body_at) = frame::sequenced_frame(event.kind, &event.body, seq);
            let encoded = Bytes::from(encoded);
            batch.push(NewEvent {
                seq,
                host_id: event.host_id,
                upstream_seq: event.upstream_seq,
                kind: event.kind,
                body: encoded.slice(body_at..),
                account: Some(event.account),
            });
            frames.push(Frame {
                seq,
                bytes: encoded,
            });
        };
        admit(first, &mut batch, &mut frames);
        while batch.len() < batch_max {
            match ingest.try_recv() {
                Ok(event) => admit(event, &mut batch, &mut frames),
                Err(_) => break,
            }
        }
        if batch.is_empty() {
            continue;
        }
        events.batch_waiting(true);
        let (batch, frames) = match commit_with_retry(&events, &batch, &shutdown).await {
            Landing::Committed => (batch, frames),
            Landing::Stopped => return,
            Landing::Refused(_) => {
                match commit_one_by_one(&events, batch, &shutdown, &*on_rejected).await {
                    // Renumbered: the frames are built again (the rare path).
                    Some(landed) => {
                        let frames = landed.iter().map(Frame::encode).collect();
                        (landed, frames)
                    }
                    None => return,
                }
            }
        };
        events.batch_waiting(false);
        drop(batch_bytes);
        committed.extend(pending);
        if batch.is_empty() {
            continue;
        }
        next_seq += batch.len() as u64;
        for event in &batch {
            if let Some(AccountUpdate {
                did,
                change: AccountChange::Commit { rev, .. },
            }) = &event.account
            {
                revs.insert(did.clone(), rev.clone());
            }
        }
        events.broadcaster.publish(&frames);
        if events.oldest_seq.load(SeqCst) == 0 {
            events.oldest_seq.store(batch[0].seq, SeqCst);
        }
    }
}

/// What became of a commit.
enum Landing {
    /// Committed.
    Committed,
    /// Shutdown came first.
    Stopped,
    /// Failed for what it carries; retrying cannot help.
    Refused(StoreError),
}

/// Commit `batch`, retrying transient errors with capped exponential backoff.
async fn commit_with_retry(events: &Events, batch: &[NewEvent], shutdown: &StopSignal) -> Landing {
    let config = &events.config;
    let mut delay_ms = config.commit_retry_base_ms;
    loop {
        match events.commit(batch).await {
            Ok(()) => {
                if !events.store_healthy.swap(true, SeqCst) {
                    tracing::info!("event log writable again");
                }
                return Landing::Committed;
            }
            Err(error) if error.is_permanent() => {
                events.metrics.store_error("commit");
                return Landing::Refused(error);
            }
            Err(error) => {
                probe::reached(Probe::CommitRetry);
                events.metrics.store_error("commit");
                if events.store_healthy.swap(false, SeqCst) {
                    tracing::warn!(%error, events = batch.len(), "event commit failed; retrying with backoff");
                }
            }
        }
        tokio::select! {
            biased;
            () = shutdown.stopped() => return Landing::Stopped,
            () = sleep(Duration::from_millis(delay_ms)) => {}
        }
        delay_ms = (delay_ms * 2).min(config.commit_retry_cap_ms);
    }
}

/// Commit a batch that failed permanently one event at a time, renumbered densely from the
/// batch's first relay seq; reject each event that fails permanently on its own (counted,
/// logged, its host handed to `on_rejected`). The events that landed, in order; `None` if
/// shutdown came first.
async fn commit_one_by_one(
    events: &Events,
    batch: Vec<NewEvent>,
    shutdown: &StopSignal,
    on_rejected: &(dyn Fn(i64) + Send + Sync),
) -> Option<Vec<NewEvent>> {
    let Some(first_seq) = batch.first().map(|event| event.seq) else {
        return Some(batch);
    };
    let mut landed = Vec::with_capacity(batch.len());
    for mut event in batch {
        let seq = first_seq + landed.len() as u64;
        if event.seq != seq {
            // The body carries its seq: renumbered behind a rejected event, it is written
            // again (it was written by `sequenced_frame`, so it always reads back).
            match frame::rewrite_seq(&event.body, seq) {
                Some(body) => event.body = Bytes::from(body),
                None => {
                    tracing::error!(seq = event.seq, "a sequenced body does not read back");
                    events.metrics.event_rejected();
                    on_rejected(event.host_id);
                    continue;
                }
            }
            event.seq = seq;
        }
        match commit_with_retry(events, std::slice::from_ref(&event), shutdown).await {
            Landing::Committed => landed.push(event),
            Landing::Stopped => return None,
            Landing::Refused(error) => {
                probe::reached(Probe::EventRejected);
                events.metrics.event_rejected();
                tracing::warn!(
                    host_id = event.host_id,
                    upstream_seq = event.upstream_seq,
                    %error,
                    "event rejected: the log cannot hold it; quarantining its host"
                );
                on_rejected(event.host_id);
            }
        }
    }
    Some(landed)
}
