//! The broadcaster: hands each committed frame to every subscribed consumer's mailbox.
//!
//! The consumer set is a `BTreeMap` behind a short mutex taken by `publish` (the
//! sequencer), `subscribe` and a subscription's drop — never by a probe. Publishing never
//! blocks and never touches a socket: a full mailbox means the consumer is too slow, so the
//! broadcaster *requests* its close through the lifecycle registry (reason `Kicked`) and
//! moves on. Only the consumer's own task closes its socket and removes its entry (when
//! its [`Subscription`] drops), so teardown happens exactly once, on one task.
//!
//! `head` (the highest published sequence number) changes only under the same mutex as the
//! consumer set, which is what makes the catch-up → live cutover exact: a subscriber
//! registered at head `h` receives every frame above `h` through its mailbox and reads
//! everything up to `h` from the store.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use relay_lifecycle::mailbox::{Mailbox, Offer};
use relay_lifecycle::{CloseReason, ConnId, Registry};

use super::Frame;

struct Consumer {
    mailbox: Arc<Mailbox<Frame>>,
    registry: Arc<Registry>,
    conn: ConnId,
}

#[derive(Default)]
struct Consumers {
    by_id: BTreeMap<u64, Consumer>,
    next_id: u64,
}

/// Fan-out counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FanoutStats {
    /// Consumers subscribed now.
    pub consumers: usize,
    /// Consumers asked to close because their mailbox was full.
    pub kicked_total: u64,
    /// Most frames ever waiting in one mailbox.
    pub mailbox_high_water: usize,
}

/// Fans committed frames out to consumer mailboxes.
pub struct Broadcaster {
    consumers: Mutex<Consumers>,
    head: AtomicU64,
    /// Mirrors `consumers.by_id.len()`: lets `publish` skip the lock when nobody listens.
    consumer_count: AtomicUsize,
    kicked_total: AtomicU64,
    mailbox_high_water: AtomicUsize,
}

impl std::fmt::Debug for Broadcaster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broadcaster")
            .field("stats", &self.stats())
            .finish()
    }
}

impl Broadcaster {
    pub(super) fn new(head: u64) -> Self {
        Self {
            consumers: Mutex::new(Consumers::default()),
            head: AtomicU64::new(head),
            consumer_count: AtomicUsize::new(0),
            kicked_total: AtomicU64::new(0),
            mailbox_high_water: AtomicUsize::new(0),
        }
    }

    /// Highest published (hence persisted) sequence number.
    pub fn head(&self) -> u64 {
        self.head.load(SeqCst)
    }

    /// Counters.
    pub fn stats(&self) -> FanoutStats {
        FanoutStats {
            consumers: self.consumer_count.load(SeqCst),
            kicked_total: self.kicked_total.load(SeqCst),
            mailbox_high_water: self.mailbox_high_water.load(SeqCst),
        }
    }

    /// Register a consumer owning connection `conn`. Returns its subscription and the head
    /// at registration: frames above it arrive in the mailbox, the rest come from the store.
    pub fn subscribe(
        self: &Arc<Self>,
        registry: &Arc<Registry>,
        conn: ConnId,
        mailbox_capacity: usize,
    ) -> (Subscription, u64) {
        let mailbox = Arc::new(Mailbox::new(mailbox_capacity));
        let mut consumers = self.lock();
        let id = consumers.next_id;
        consumers.next_id += 1;
        consumers.by_id.insert(
            id,
            Consumer {
                mailbox: Arc::clone(&mailbox),
                registry: Arc::clone(registry),
                conn,
            },
        );
        self.consumer_count.store(consumers.by_id.len(), SeqCst);
        let head = self.head();
        drop(consumers);
        (
            Subscription {
                broadcaster: Arc::clone(self),
                id,
                mailbox,
            },
            head,
        )
    }

    /// Offer committed `frames` (ascending) to every consumer; kick the ones that are full.
    pub(super) fn publish(&self, frames: &[Frame]) {
        let Some(last) = frames.last() else {
            return;
        };
        if self.consumer_count.load(SeqCst) == 0 {
            // Zero-consumer fast path; still under the lock so a concurrent subscribe sees
            // either the old head (and reads these frames from the store) or the new one.
            let _consumers = self.lock();
            self.head.store(last.seq, SeqCst);
            return;
        }
        let consumers = self.lock();
        self.head.store(last.seq, SeqCst);
        for consumer in consumers.by_id.values() {
            for frame in frames {
                match consumer.mailbox.offer(frame.clone()) {
                    Offer::Accepted => {}
                    Offer::Full(_) => {
                        let request = consumer
                            .registry
                            .request_close(consumer.conn, CloseReason::Kicked);
                        if request == relay_lifecycle::CloseRequest::Requested {
                            self.kicked_total.fetch_add(1, SeqCst);
                        }
                        break;
                    }
                    Offer::Closed(_) => break,
                }
            }
            self.mailbox_high_water
                .fetch_max(consumer.mailbox.len(), SeqCst);
        }
    }

    fn remove(&self, id: u64) {
        let mut consumers = self.lock();
        let removed = consumers.by_id.remove(&id);
        assert!(removed.is_some(), "subscription {id} removed twice");
        self.consumer_count.store(consumers.by_id.len(), SeqCst);
    }

    fn lock(&self) -> MutexGuard<'_, Consumers> {
        // Every critical section leaves the map consistent (single insert/remove/offer loop),
        // so a poisoned lock is still safe to use; never let one panic take fan-out down.
        self.consumers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// One consumer's registration. Owned by the consumer's own task; dropping it removes the
/// consumer from the broadcaster, exactly once (it is not `Clone`).
#[derive(Debug)]
pub struct Subscription {
    broadcaster: Arc<Broadcaster>,
    id: u64,
    mailbox: Arc<Mailbox<Frame>>,
}

impl Subscription {
    /// The consumer's mailbox (receive and close are the owner's alone).
    pub fn mailbox(&self) -> &Mailbox<Frame> {
        &self.mailbox
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.mailbox.close();
        self.broadcaster.remove(self.id);
    }
}
