//! Retention: keeps the event log within `retention_events_max` events and
//! `retention_bytes_max` content bytes by deleting the oldest — never the newest: the log's
//! highest sequence number is what a restarted relay sequences on from, so a log emptied
//! by retention would make it hand out sequence numbers consumers already hold.
//!
//! It works in batches of `retention_batch_rows` and takes the persist lock per batch,
//! releasing it (and yielding) between batches, so the sequencer's commits interleave with
//! a large deletion instead of waiting for all of it. This is the fix for the historical
//! stall where one garbage-collection pass held the persist lock for its whole run.
//! Failures are logged, counted and retried on the next tick.

use std::sync::Arc;

use super::Events;
use crate::rt::probe::{self, Probe};
use crate::rt::stop::StopSignal;
use crate::rt::time::{sleep, Duration};

pub(super) async fn run(events: Arc<Events>, shutdown: StopSignal) {
    let config = events.config.clone();
    let interval = Duration::from_millis(config.retention_interval_ms);
    let batch_rows = match config.retention_batch_rows {
        0 => usize::MAX,
        rows => rows,
    };
    loop {
        tokio::select! {
            biased;
            () = shutdown.stopped() => return,
            () = sleep(interval) => {}
        }
        let head = events.broadcaster.head();
        let mut deleted_this_pass = 0usize;
        // By count: everything below the newest `retention_events_max` events.
        if head > config.retention_events_max {
            let below = head - config.retention_events_max + 1;
            deleted_this_pass += delete_while(&events, batch_rows, || Some(below)).await;
        }
        // By bytes: the oldest events below the head, a batch at a time, until the log fits
        // (or only the head is left: one event larger than the budget stays).
        deleted_this_pass += delete_while(&events, batch_rows, || {
            (events.log_bytes() > config.retention_bytes_max).then_some(head)
        })
        .await;
        if deleted_this_pass > 0 {
            tracing::debug!(deleted = deleted_this_pass, "retention pass done");
        }
    }
}

/// Delete batches of the oldest events below `below()` while it says there is more to
/// delete and the last batch was full; returns how many went. Between batches the persist
/// lock is released and the task yields, so the sequencer's commits go first.
async fn delete_while(
    events: &Events,
    batch_rows: usize,
    below: impl Fn() -> Option<u64>,
) -> usize {
    let mut deleted_total = 0;
    while let Some(below) = below() {
        match events.delete_below(below, batch_rows).await {
            Ok(deleted) => {
                deleted_total += deleted.rows;
                if deleted.rows < batch_rows {
                    break;
                }
                // Let the sequencer (queued on the persist lock) in between batches.
                probe::reached(Probe::RetentionBatchBoundary);
                tokio::task::yield_now().await;
            }
            Err(error) => {
                events.metrics.store_error("retention");
                tracing::warn!(%error, "retention batch failed; retrying next interval");
                break;
            }
        }
    }
    deleted_total
}
