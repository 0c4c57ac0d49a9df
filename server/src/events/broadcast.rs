//! The broadcaster: hands each committed frame to every subscribed consumer's mailbox.
//!
//! The consumer set is a `BTreeMap` behind a short mutex taken by `publish` (the
//! sequencer), `subscribe` and a subscription's drop — never by a probe. Publishing never
//! blocks and never touches a socket: a full mailbox means the consumer is too slow, so the
//! broadcaster *requests* its close through the lifecycle registry (reason `Kicked`) and
//! moves on. Only the consumer's own task closes its socket and removes its entry (when
//! its [`Subscription`] drops), so teardown happens exactly once, on one task.
//!
//! Every queued frame is charged to the memory account ([`crate::memory`]) and to its
//! consumer, and discharged when it leaves the mailbox: when the consumer's task takes it
//! (a batch at a time, [`Subscription::recv_batch`]) or its subscription drops. When
//! a frame would take what the consumers hold past the budget, the consumers holding the
//! most are kicked first, largest first; consumers already asked to close are offered
//! nothing more (their session will not read it; they resume by cursor from the store).
//!
//! `head` (the highest published sequence number) changes only under the same mutex as the
//! consumer set, which is what makes the catch-up → live cutover exact: a subscriber
//! registered at head `h` receives every frame above `h` through its mailbox and reads
//! everything up to `h` from the store.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use relay_lifecycle::mailbox::{Mailbox, Offer};
use relay_lifecycle::{CloseReason, ConnId, Phase, Registry};

use super::Frame;
use crate::memory::MemoryGuard;
use crate::rt::probe::{self, Probe};

struct Consumer {
    mailbox: Arc<Mailbox<Frame>>,
    registry: Arc<Registry>,
    conn: ConnId,
    /// Bytes of frames waiting in `mailbox` (its share of the memory account).
    held: Arc<AtomicU64>,
}

impl Consumer {
    /// Whether a close was requested: it will not read its mailbox again.
    fn leaving(&self) -> bool {
        !matches!(
            self.registry.phase(self.conn),
            Some(Phase::Active | Phase::Accepted)
        )
    }
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
    memory: Arc<MemoryGuard>,
    head: AtomicU64,
    /// Mirrors `consumers.by_id.len()`, for the counters (read without the lock).
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
    pub(super) fn new(head: u64, memory: Arc<MemoryGuard>) -> Self {
        Self {
            consumers: Mutex::new(Consumers::default()),
            memory,
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
        let held = Arc::new(AtomicU64::new(0));
        let mut consumers = self.lock();
        let id = consumers.next_id;
        consumers.next_id += 1;
        consumers.by_id.insert(
            id,
            Consumer {
                mailbox: Arc::clone(&mailbox),
                registry: Arc::clone(registry),
                conn,
                held: Arc::clone(&held),
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
                held,
            },
            head,
        )
    }

    /// Offer committed `frames` (ascending) to every consumer; kick the ones that are full.
    pub(super) fn publish(&self, frames: &[Frame]) {
        let Some(last) = frames.last() else {
            return;
        };
        // The head moves and the consumer set is read under one lock hold, so a subscribe
        // either comes first (registered at the old head, it is offered these frames) or
        // after (it reads them from the store). Asking whether anyone listens before the lock
        // lost a frame for a consumer that subscribed in between.
        let consumers = self.lock();
        self.head.store(last.seq, SeqCst);
        if consumers.by_id.is_empty() {
            return;
        }
        // What the consumers that will read their mailboxes hold; kicked ones are on their
        // way out and discard theirs.
        let mut kept: u64 = consumers
            .by_id
            .values()
            .filter(|consumer| !consumer.leaving())
            .map(|consumer| consumer.held.load(SeqCst))
            .sum();
        for consumer in consumers.by_id.values() {
            for frame in frames {
                let cost = frame.cost();
                if kept + cost > self.memory.budget() {
                    kept = self.make_room(&consumers, kept, cost);
                }
                if consumer.leaving() {
                    // Kicked (now or earlier) or closing: its session will not read this;
                    // it resumes by cursor from the store.
                    break;
                }
                self.memory.reserve(cost);
                match consumer.mailbox.offer(frame.clone()) {
                    Offer::Accepted => {
                        consumer.held.fetch_add(cost, SeqCst);
                        kept += cost;
                    }
                    Offer::Full(_) => {
                        self.memory.release(cost);
                        self.kick(consumer);
                        kept = kept.saturating_sub(consumer.held.load(SeqCst));
                        break;
                    }
                    Offer::Closed(_) => {
                        self.memory.release(cost);
                        break;
                    }
                }
            }
            self.mailbox_high_water
                .fetch_max(consumer.mailbox.len(), SeqCst);
        }
    }

    /// The memory budget cannot take `cost` more on top of `kept`: kick the consumers
    /// holding the most (ties: the oldest subscription) until it can. A kicked session
    /// drops its mailbox as soon as it sees the request, which is when the account goes
    /// down; until then the account may exceed the budget by the frames of this publish.
    /// Returns what the remaining consumers hold.
    fn make_room(&self, consumers: &Consumers, mut kept: u64, cost: u64) -> u64 {
        // Each consumer's holding is read once, before sorting: consumer tasks release bytes
        // concurrently, and a key that changes mid-sort is not a total order (the standard
        // sort panics on that, and this runs on the sequencer: found by `fanout_bench` at
        // 1,000 consumers on the multi-threaded runtime; the test
        // `make_room_sorts_a_snapshot_while_consumers_drain_concurrently` reproduces it).
        let mut staying: Vec<(u64, &Consumer)> = consumers
            .by_id
            .values()
            .filter(|consumer| !consumer.leaving())
            .map(|consumer| (consumer.held.load(SeqCst), consumer))
            .collect();
        // Largest first; the sort is stable, so subscription order breaks ties.
        staying.sort_by_key(|&(held, _)| std::cmp::Reverse(held));
        for (_, consumer) in staying {
            if kept + cost <= self.memory.budget() {
                break;
            }
            kept = kept.saturating_sub(consumer.held.load(SeqCst));
            if self.kick(consumer) {
                probe::reached(Probe::MemoryKick);
                self.memory.kicked();
            }
        }
        kept
    }

    /// Ask `consumer`'s task to close it as too slow; whether this request was the first.
    fn kick(&self, consumer: &Consumer) -> bool {
        let request = consumer
            .registry
            .request_close(consumer.conn, CloseReason::Kicked);
        let first = request == relay_lifecycle::CloseRequest::Requested;
        if first {
            probe::reached(Probe::ConsumerKick);
            self.kicked_total.fetch_add(1, SeqCst);
        }
        first
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
    held: Arc<AtomicU64>,
}

impl Subscription {
    /// Wait for the next frame, then take the frames already waiting behind it, oldest
    /// first, while their bytes total at most `max_bytes` (the first frame comes whatever
    /// its size), appending them to `batch`. The taken frames' bytes leave the memory
    /// account together, in the same poll that takes them, so the account holds exactly
    /// what is still in the mailbox. `false` (nothing appended) once the mailbox is closed.
    /// Receive and close are the owner's alone.
    pub async fn recv_batch(&self, batch: &mut Vec<Frame>, max_bytes: usize) -> bool {
        let Some(first) = self.mailbox.recv().await else {
            return false;
        };
        let mut bytes = first.bytes.len();
        let mut cost = first.cost();
        batch.push(first);
        self.mailbox.try_recv_while(batch, |frame| {
            bytes += frame.bytes.len();
            let fits = bytes <= max_bytes;
            if fits {
                cost += frame.cost();
            }
            fits
        });
        self.forget(cost);
        true
    }

    fn forget(&self, bytes: u64) {
        self.held.fetch_sub(bytes, SeqCst);
        self.broadcaster.memory.release(bytes);
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let undelivered: u64 = self.mailbox.close().iter().map(Frame::cost).sum();
        self.forget(undelivered);
        self.broadcaster.remove(self.id);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use bytes::Bytes;
    use futures_util::FutureExt;
    use relay_lifecycle::ConnOwner;

    use super::*;
    use crate::memory::MemoryConfig;

    fn frame(seq: u64) -> Frame {
        Frame {
            seq,
            bytes: Bytes::from(format!(
                "{{\"seq\":{seq:04},\"body\":\"{}\"}}",
                "x".repeat(60)
            )),
        }
    }

    fn consumer(registry: &Arc<Registry>) -> ConnOwner {
        let owner = registry.try_admit(0).unwrap();
        assert!(owner.activate());
        owner
    }

    /// Sets its flag when dropped, so a helper thread looping until the flag is set stops
    /// however the test's own thread ends: a failed assertion must fail the test, not leave
    /// `thread::scope` waiting for a thread that never stops.
    struct StopOnDrop<'a>(&'a AtomicBool);

    impl Drop for StopOnDrop<'_> {
        fn drop(&mut self) {
            self.0.store(true, SeqCst);
        }
    }

    /// One batch of what `subscription` holds now, up to `max_bytes` of text (at least one
    /// frame when any is waiting), without waiting.
    fn take(subscription: &Subscription, max_bytes: usize) -> Vec<Frame> {
        let mut batch = Vec::new();
        let _ = subscription
            .recv_batch(&mut batch, max_bytes)
            .now_or_never();
        batch
    }

    #[test]
    fn a_batch_comes_in_order_within_its_bytes_and_leaves_the_account_exact() {
        let (cost, text) = (frame(1).cost(), frame(1).bytes.len());
        let memory = Arc::new(MemoryGuard::new(&MemoryConfig::default()));
        let broadcaster = Arc::new(Broadcaster::new(0, Arc::clone(&memory)));
        let registry = Registry::new(4);
        let owner = consumer(&registry);
        let (subscription, _) = broadcaster.subscribe(&registry, owner.id(), 100);
        broadcaster.publish(&(1..=50).map(frame).collect::<Vec<_>>());
        assert_eq!(memory.stats().held_bytes, 50 * cost);

        // Ten frames' text and a little more: ten frames, the eleventh stays.
        let batch = take(&subscription, 10 * text + text / 2);
        assert_eq!(batch, (1..=10).map(frame).collect::<Vec<_>>());
        assert_eq!(
            memory.stats().held_bytes,
            40 * cost,
            "released on the way out"
        );
        assert_eq!(subscription.held.load(SeqCst), 40 * cost);
        // A bound below one frame still takes one: a large frame is never stuck.
        assert_eq!(take(&subscription, 1), [frame(11)]);
        // Frames published behind a partly drained mailbox queue up behind the rest.
        broadcaster.publish(&(51..=60).map(frame).collect::<Vec<_>>());
        let mut seqs: Vec<u64> = (1..=11).collect();
        loop {
            let batch = take(&subscription, 7 * text);
            if batch.is_empty() {
                break;
            }
            assert!(
                batch.len() <= 7,
                "{} frames past the byte bound",
                batch.len()
            );
            seqs.extend(batch.iter().map(|frame| frame.seq));
        }
        assert_eq!(seqs, (1..=60).collect::<Vec<_>>(), "in order, none twice");
        let stats = memory.stats();
        assert_eq!(
            stats.held_bytes, 0,
            "a batched drain leaves nothing accounted"
        );
        assert_eq!(subscription.held.load(SeqCst), 0);
        drop(subscription);
        assert_eq!(memory.stats().held_bytes, 0);
    }

    #[test]
    fn past_the_budget_the_largest_holder_is_kicked_and_its_bytes_come_back() {
        let cost = frame(1).cost();
        let memory = Arc::new(MemoryGuard::new(&MemoryConfig {
            budget_bytes: cost * 25,
            shed_at_pct: 80,
            resume_at_pct: 60,
        }));
        let broadcaster = Arc::new(Broadcaster::new(0, Arc::clone(&memory)));
        let registry = Registry::new(8);
        let (reader, hog, newcomer) = (
            consumer(&registry),
            consumer(&registry),
            consumer(&registry),
        );
        let (reading, _) = broadcaster.subscribe(&registry, reader.id(), 1000);
        let (hogging, _) = broadcaster.subscribe(&registry, hog.id(), 1000);
        // Ten frames reach everyone; the reader reads its share.
        broadcaster.publish(&(1..=10).map(frame).collect::<Vec<_>>());
        assert_eq!(take(&reading, usize::MAX).len(), 10);
        assert_eq!(
            memory.stats().held_bytes,
            10 * cost,
            "only the hog's share is left"
        );
        let (arriving, _) = broadcaster.subscribe(&registry, newcomer.id(), 1000);
        // Ten more: hog 20 + newcomer 10 would be 30 > 25: the hog, holding most, goes.
        broadcaster.publish(&(11..=20).map(frame).collect::<Vec<_>>());
        assert_eq!(hog.close_requested(), Some(CloseReason::Kicked));
        assert_eq!(newcomer.close_requested(), None);
        assert_eq!(reader.close_requested(), None);
        assert_eq!(
            arriving.mailbox.len(),
            10,
            "nothing withheld from the others"
        );
        let stats = memory.stats();
        assert_eq!(stats.kicked_total, 1);
        assert!(stats.shedding, "past 80% of the budget the breaker is open");
        // The hog's task drops its subscription: its bytes leave the account.
        let before = memory.stats().held_bytes;
        let hog_bytes = hogging.held.load(SeqCst);
        drop(hogging);
        assert_eq!(memory.stats().held_bytes, before - hog_bytes);
        // Kicked consumers are offered nothing more; the others still are.
        broadcaster.publish(&[frame(21)]);
        assert_eq!(arriving.mailbox.len(), 11);
        drop((reading, arriving));
        assert_eq!(memory.stats().held_bytes, 0, "every byte accounted for");
    }

    /// Real parallelism, which the tunnel's single simulated thread never gives: consumer
    /// tasks change what each consumer holds (here a thread rewriting every holding as fast
    /// as it can, standing in for hundreds of draining tasks) while the sequencer's
    /// `make_room` sorts the consumers by holding. A sort keyed on the live atomics is not a
    /// total order and std's sort panics on it (found once by `fanout_bench` at 1,000
    /// consumers); sorting a snapshot cannot. With room to spare `make_room` sorts and then
    /// kicks no one, so every one of the thousands of rounds is a full sort of 400 keys.
    #[test]
    fn make_room_sorts_a_snapshot_while_consumers_drain_concurrently() {
        const CONSUMERS: usize = 400;
        const SORTS: usize = 5_000;
        let memory = Arc::new(MemoryGuard::new(&MemoryConfig {
            budget_bytes: 1 << 30,
            shed_at_pct: 80,
            resume_at_pct: 60,
        }));
        let broadcaster = Arc::new(Broadcaster::new(0, Arc::clone(&memory)));
        let registry = Registry::new(CONSUMERS);
        let subscribed: Vec<(ConnOwner, Subscription)> = (0..CONSUMERS)
            .map(|_| {
                let owner = consumer(&registry);
                let (subscription, _) = broadcaster.subscribe(&registry, owner.id(), 64);
                (owner, subscription)
            })
            .collect();
        let done = AtomicBool::new(false);
        std::thread::scope(|scope| {
            scope.spawn(|| {
                // A linear congruential sequence: every pass gives every consumer a new,
                // unrelated holding (its memory account is not touched; nothing is queued).
                let mut state = 1u64;
                while !done.load(SeqCst) {
                    for (_, subscription) in &subscribed {
                        state = state
                            .wrapping_mul(6_364_136_223_846_793_005)
                            .wrapping_add(1_442_695_040_888_963_407);
                        subscription.held.store(state >> 44, SeqCst);
                    }
                }
            });
            // However the sorting ends: a panicking sort must fail the test.
            let _stop_rewriter = StopOnDrop(&done);
            for _ in 0..SORTS {
                let consumers = broadcaster.lock();
                assert_eq!(broadcaster.make_room(&consumers, 0, 0), 0);
            }
        });
        assert_eq!(memory.stats().kicked_total, 0, "room enough: no one kicked");
    }

    /// Real parallelism again: the sequencer publishes while consumers subscribe. A
    /// subscriber registered at head `h` must find `h + 1` in its mailbox, whatever instant
    /// it registered at. Found by real mode's black box (a consumer saw seq 17 after 15): a
    /// publish that read "no consumers" before taking the lock stored the new head without
    /// offering the frame to a consumer that subscribed in between, which then waited for
    /// it in its mailbox and never read it from the store. Here a thread subscribes, takes
    /// its first frame and unsubscribes, round after round, while another publishes frames
    /// one at a time until the rounds are done, so every subscribe lands next to a publish
    /// that may have seen no consumer. The rounds are counted, not timed, so a loaded machine
    /// makes the test slower, never red on correct code (it does lower the share of rounds
    /// the two threads truly overlap, hence 30,000 of them: museum exhibit
    /// `publish_skips_new_subscriber` gives the kill rates).
    #[test]
    fn a_subscriber_receives_every_frame_above_the_head_it_registered_at() {
        const ROUNDS: u64 = 30_000;
        const HELD_MAX: u64 = 1 << 20;
        let memory = Arc::new(MemoryGuard::new(&MemoryConfig::default()));
        let broadcaster = Arc::new(Broadcaster::new(0, Arc::clone(&memory)));
        let registry = Registry::new(1);
        let owner = consumer(&registry);
        let done = AtomicBool::new(false);
        std::thread::scope(|scope| {
            scope.spawn(|| {
                let mut seq = 0;
                while !done.load(SeqCst) {
                    if memory.stats().held_bytes > HELD_MAX {
                        // The subscriber is descheduled: wait for it rather than pile up
                        // frames (or reach the budget and kick it).
                        std::thread::yield_now();
                        continue;
                    }
                    seq += 1;
                    broadcaster.publish(&[frame(seq)]);
                    if seq % 64 == 0 {
                        // On a busy or single core, lets the subscriber have its turn (every
                        // publish would make the racing window a sliver of this loop).
                        std::thread::yield_now();
                    }
                }
            });
            let _stop_publisher = StopOnDrop(&done);
            for round in 0..ROUNDS {
                // A capacity above anything the publisher lets pile up (`HELD_MAX`), so it
                // is never kicked; what it still holds leaves the account as it unsubscribes.
                let (subscription, head) = broadcaster.subscribe(&registry, owner.id(), 1 << 20);
                // The publisher runs until every round is done: a frame comes.
                let first = loop {
                    if let Some(first) = take(&subscription, 1).pop() {
                        break first.seq;
                    }
                    std::thread::yield_now();
                };
                assert_eq!(
                    first,
                    head + 1,
                    "subscribed at head {head} (round {round}), the mailbox began at {first}"
                );
            }
        });
        assert_eq!(memory.stats().held_bytes, 0, "every byte accounted for");
    }
}
