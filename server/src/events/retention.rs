//! Retention: keeps the event log at `retention_events_max` events by deleting the oldest.
//!
//! It works in batches of `retention_batch_rows` and takes the persist lock per batch,
//! releasing it (and yielding) between batches, so the sequencer's commits interleave with
//! a large deletion instead of waiting for all of it. This is the fix for the historical
//! stall where one garbage-collection pass held the persist lock for its whole run.
//! Failures are logged, counted and retried on the next tick.

use std::sync::atomic::Ordering::SeqCst;
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
        if head <= config.retention_events_max {
            continue;
        }
        let below = head - config.retention_events_max + 1;
        let mut deleted_this_pass = 0usize;
        loop {
            match events.delete_below(below, batch_rows).await {
                Ok(deleted) => {
                    deleted_this_pass += deleted;
                    events
                        .retention_deleted_total
                        .fetch_add(deleted as u64, SeqCst);
                    if deleted < batch_rows {
                        events.oldest_seq.fetch_max(below, SeqCst);
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
        if deleted_this_pass > 0 {
            tracing::debug!(deleted = deleted_this_pass, below, "retention pass done");
        }
    }
}
