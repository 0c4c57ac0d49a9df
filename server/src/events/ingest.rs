//! The ingest queue: how upstream workers hand events to the sequencer, bounded twice.
//!
//! A length bound alone (`events.ingest_queue_max` events) is not a memory bound: 4,096
//! frames of up to the upstream frame limit each is gigabytes. So every queued event also
//! holds permits for its content bytes (`events.ingest_queue_bytes` in all), from the
//! moment a worker queues it until the sequencer is done with it (committed, rejected or
//! dropped as a duplicate). A worker that cannot get them waits before reading its socket
//! again: backpressure to that upstream, nothing buffered on its behalf. When the sequencer
//! exits, the byte permits are closed so no worker waits for room that will never come.
//!
//! What the queue holds is counted in bytes (`held_bytes`, `high_water_bytes`) for
//! metrics and the wind tunnel's `memory_bounded` oracle.

use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::Arc;

use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use super::Ingested;

/// The byte account shared by the queue's two ends.
#[derive(Debug)]
pub(super) struct IngestBytes {
    permits: Arc<Semaphore>,
    /// Permits (bytes) the whole queue may hold.
    limit: u32,
    held: AtomicU64,
    high_water: AtomicU64,
}

impl IngestBytes {
    pub(super) fn new(limit: u32) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(limit as usize)),
            limit,
            held: AtomicU64::new(0),
            high_water: AtomicU64::new(0),
        }
    }

    /// Content bytes queued or in the sequencer's hands now.
    pub(super) fn held_bytes(&self) -> u64 {
        self.held.load(SeqCst)
    }

    /// Most content bytes ever held at once.
    pub(super) fn high_water_bytes(&self) -> u64 {
        self.high_water.load(SeqCst)
    }

    /// Wake every waiting worker with an error: the sequencer is gone.
    pub(super) fn close(&self) {
        self.permits.close();
    }
}

/// What an event costs the byte account: its content (the message as received). An event
/// larger than the whole account takes all of it (and waits until the queue is otherwise
/// empty).
fn content_bytes(event: &Ingested, limit: u32) -> u32 {
    let bytes = event.content_bytes;
    u32::try_from(bytes).unwrap_or(u32::MAX).clamp(1, limit)
}

/// An event in the queue, holding its bytes until it is dropped.
#[derive(Debug)]
pub(super) struct Queued {
    pub(super) event: Ingested,
    bytes: Held,
}

impl Queued {
    /// The event, and what keeps its bytes held (drop it when done with the event).
    pub(super) fn into_parts(self) -> (Ingested, Held) {
        (self.event, self.bytes)
    }
}

/// Bytes held in the account; released on drop.
#[derive(Debug)]
pub(super) struct Held {
    account: Arc<IngestBytes>,
    _permit: OwnedSemaphorePermit,
    bytes: u64,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.account.held.fetch_sub(self.bytes, SeqCst);
    }
}

/// The sequencer has stopped: the event was not queued.
#[derive(Debug, PartialEq, Eq)]
pub struct IngestClosed;

/// The upstream workers' end of the ingest queue.
#[derive(Clone, Debug)]
pub struct IngestSender {
    events: mpsc::Sender<Queued>,
    account: Arc<IngestBytes>,
}

impl IngestSender {
    pub(super) fn new(events: mpsc::Sender<Queued>, account: Arc<IngestBytes>) -> Self {
        Self { events, account }
    }

    /// Queue `event`, waiting while the queue is full by count or by bytes.
    pub async fn send(&self, event: Ingested) -> Result<(), IngestClosed> {
        let cost = content_bytes(&event, self.account.limit);
        let permit = Arc::clone(&self.account.permits)
            .acquire_many_owned(cost)
            .await
            .map_err(|_| IngestClosed)?;
        let bytes = u64::from(cost);
        let held = self.account.held.fetch_add(bytes, SeqCst) + bytes;
        self.account.high_water.fetch_max(held, SeqCst);
        let queued = Queued {
            event,
            bytes: Held {
                account: Arc::clone(&self.account),
                _permit: permit,
                bytes,
            },
        };
        self.events.send(queued).await.map_err(|_| IngestClosed)
    }
}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt;

    use super::*;

    fn event(body_bytes: usize) -> Ingested {
        Ingested {
            host_id: 1,
            upstream_seq: 1,
            kind: crate::atproto::frame::Kind::Identity,
            did: "did:plc:ewvi7nxzyoun6zhxrhs64oiz".into(),
            rev: None,
            body: Default::default(),
            content_bytes: body_bytes + 1,
        }
    }

    #[test]
    fn a_sender_waits_for_bytes_not_only_for_slots() {
        let account = Arc::new(IngestBytes::new(100));
        let (sender, mut receiver) = mpsc::channel(1_000);
        let sender = IngestSender::new(sender, Arc::clone(&account));
        assert_eq!(sender.send(event(59)).now_or_never(), Some(Ok(())));
        assert_eq!(account.held_bytes(), 60);
        // 60 + 60 > 100: the second waits although the channel has 999 free slots.
        let mut second = Box::pin(sender.send(event(59)));
        assert_eq!((&mut second).now_or_never(), None);
        let (_, held) = receiver.try_recv().unwrap().into_parts();
        assert_eq!(
            (&mut second).now_or_never(),
            None,
            "held until the sequencer is done"
        );
        drop(held);
        assert_eq!(second.now_or_never(), Some(Ok(())));
        assert_eq!(account.held_bytes(), 60);
        assert_eq!(account.high_water_bytes(), 60);
        // Larger than the whole account: takes all of it, so it waits for an empty queue.
        let mut huge = Box::pin(sender.send(event(1_000)));
        assert_eq!((&mut huge).now_or_never(), None);
        drop(receiver.try_recv().unwrap());
        assert_eq!(huge.now_or_never(), Some(Ok(())));
        assert_eq!(account.high_water_bytes(), 100);
        // The sequencer is gone: waiting workers are told, not left waiting.
        let mut waiting = Box::pin(sender.send(event(1)));
        assert_eq!((&mut waiting).now_or_never(), None);
        account.close();
        assert_eq!(waiting.now_or_never(), Some(Err(IngestClosed)));
    }
}
