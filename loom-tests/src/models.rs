//! The lifecycle models: each function is one concurrent scenario over the real
//! `relay-lifecycle` code, ending in the assertions that must hold in *every* interleaving.
//! The checkers call them with different sizes: loom with 2–3 threads (exhaustive), shuttle
//! with more (randomized).
//!
//! Each model names the production failure it guards against. Every thread a model spawns
//! is joined before its assertions, so a check never races the threads it judges.

use std::sync::Arc;

use relay_lifecycle::mailbox::{Mailbox, Offer};
use relay_lifecycle::{AdmitError, CloseReason, CloseRequest, ConnId, ConnOwner, Phase, Registry};

use crate::engine::{block_on, thread, AtomicUsize, Mutex, Ordering::SeqCst};

/// The registry holds nothing and every slot can be taken again: `open` is 0, every
/// admission was released exactly once, and `max` fresh admissions succeed on distinct
/// slots, each starting `Accepted`.
pub fn assert_capacity_returned(registry: &Arc<Registry>) {
    let stats = registry.stats();
    assert_eq!(stats.open, 0, "connections still counted open: {stats:?}");
    assert_eq!(
        stats.admitted_total, stats.released_total,
        "admissions and releases do not balance: {stats:?}"
    );
    let owners: Vec<ConnOwner> = (0..registry.max())
        .map(|n| {
            registry
                .try_admit(0)
                .unwrap_or_else(|err| panic!("admission {n} of {} refused: {err}", registry.max()))
        })
        .collect();
    let mut indices: Vec<u32> = owners.iter().map(|owner| owner.id().index()).collect();
    indices.sort_unstable();
    indices.dedup();
    assert_eq!(indices.len(), owners.len(), "two owners share a slot");
    for owner in &owners {
        assert_eq!(owner.phase(), Phase::Accepted, "fresh slot {}", owner.id());
    }
    assert_eq!(registry.try_admit(0).unwrap_err(), AdmitError::AtCapacity);
    drop(owners);
    assert_eq!(registry.open(), 0);
}

/// An admitted, active connection on a fresh registry of `max` slots.
fn active_connection(max: usize) -> (Arc<Registry>, ConnOwner) {
    let registry = Registry::new(max);
    let owner = registry.try_admit(0).expect("empty registry admits");
    assert!(owner.activate());
    (registry, owner)
}

/// Spawn `count` threads; thread `n` runs `body(n, registry)`. Join handles in order.
fn spawn_each<T: Send + 'static>(
    registry: &Arc<Registry>,
    count: usize,
    body: impl Fn(usize, &Arc<Registry>) -> T + Send + Sync + 'static,
) -> Vec<thread::JoinHandle<T>> {
    let body = Arc::new(body);
    (0..count)
        .map(|n| {
            let registry = Arc::clone(registry);
            let body = Arc::clone(&body);
            thread::spawn(move || body(n, &registry))
        })
        .collect()
}

/// The reason requester `n` of a model asks for, so several requesters differ.
fn reason_of(n: usize) -> CloseReason {
    CloseReason::ALL[n % CloseReason::ALL.len()]
}

/// Use-after-free on a recycled connection (the epoll server report): a kick or eviction
/// aimed at a connection that has since finished must never touch the slot's next
/// occupant. The owner finishes and a new connection takes the slot while `requesters`
/// threads send close requests through the old id.
pub fn stale_id_never_reaches_next_occupant(requesters: usize) {
    let (registry, first) = active_connection(1);
    let stale = first.id();
    let handles = spawn_each(&registry, requesters, move |n, registry| {
        registry.request_close(stale, reason_of(n))
    });
    drop(first);
    let second = registry.try_admit(0).expect("the only slot was released");
    let activated = second.activate();
    let outcomes: Vec<CloseRequest> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(
        activated && second.phase() == Phase::Active,
        "a request through stale id {stale} reached the next occupant {} (phase {:?}, requests {outcomes:?})",
        second.id(),
        second.phase()
    );
    assert_eq!(
        registry.phase(stale),
        None,
        "stale id {stale} still resolves"
    );
    drop(second);
    assert_capacity_returned(&registry);
}

/// The slow-consumer kick that closed a socket another task was using, and the double
/// free/double decrement of a consumer removed by both broadcaster and handler: the owner
/// hits EOF and finishes on its own while kickers and the idle reaper (`requesters` threads,
/// alternating) ask it to close. At most one request takes effect, the owner sees exactly
/// that one if it saw any, the count drops once and capacity is fully returned.
pub fn one_close_among_eof_kick_and_reaper(requesters: usize) {
    let (registry, owner) = active_connection(1);
    let id = owner.id();
    let handles = spawn_each(&registry, requesters, move |n, registry| {
        if n % 2 == 0 {
            let took = registry.request_close(id, CloseReason::Kicked);
            (CloseReason::Kicked, took == CloseRequest::Requested)
        } else {
            // Last activity was at 0 ms: at 10 s with a 5 s timeout it is idle.
            (CloseReason::Idle, registry.reap_idle(10_000, 5_000) == 1)
        }
    });
    // Owner EOF: the read loop ends; the owner looks at its state once and finishes.
    let seen_by_owner = owner.close_requested();
    drop(owner);
    let initiated: Vec<CloseReason> = handles
        .into_iter()
        .filter_map(|h| {
            let (reason, took) = h.join().unwrap();
            took.then_some(reason)
        })
        .collect();
    assert!(
        initiated.len() <= 1,
        "more than one close initiated: {initiated:?}"
    );
    if let Some(reason) = seen_by_owner {
        assert_eq!(
            initiated,
            vec![reason],
            "the owner drained for a request nobody made"
        );
    }
    assert_eq!(registry.stats().released_total, 1, "count dropped twice");
    assert_capacity_returned(&registry);
}

/// max_connections enforced under concurrent accepts: `threads` acceptors each admit once
/// and hold the permit while counting themselves; never more than `max` hold at once.
pub fn concurrent_admits_never_exceed_max(max: usize, threads: usize) {
    let registry = Registry::new(max);
    let holding = AtomicUsize::new(0);
    let handles = spawn_each(&registry, threads, move |_, registry| {
        match registry.try_admit(0) {
            Ok(owner) => {
                let now_holding = holding.fetch_add(1, SeqCst) + 1;
                assert!(
                    now_holding <= max,
                    "{now_holding} connections hold {max} permits"
                );
                holding.fetch_sub(1, SeqCst);
                drop(owner);
                true
            }
            Err(AdmitError::AtCapacity) => false,
            Err(err) => panic!("unexpected refusal: {err}"),
        }
    });
    let admitted = handles
        .into_iter()
        .map(|h| h.join().unwrap())
        .filter(|admitted| *admitted)
        .count();
    let stats = registry.stats();
    assert!(stats.high_water <= max, "high water above max: {stats:?}");
    assert_eq!(stats.admitted_total, admitted as u64);
    assert_eq!(
        stats.admitted_total + stats.refused_at_capacity_total,
        threads as u64,
        "every attempt is either admitted or counted as refused: {stats:?}"
    );
    assert_capacity_returned(&registry);
}

/// Graceful shutdown racing accepts: `admitters` threads admit while shutdown begins. Each
/// admission is either refused as shutting down or comes back already draining for
/// shutdown; connections open before are asked to close; every later admission is refused.
pub fn admit_during_shutdown_is_refused_or_draining(admitters: usize) {
    let (registry, existing) = active_connection(admitters + 1);
    let handles = spawn_each(&registry, admitters, |_, registry| registry.try_admit(0));
    let shutdown = {
        let registry = Arc::clone(&registry);
        thread::spawn(move || registry.begin_shutdown())
    };
    let admissions: Vec<Result<ConnOwner, AdmitError>> =
        handles.into_iter().map(|h| h.join().unwrap()).collect();
    shutdown.join().unwrap();
    assert_eq!(existing.close_requested(), Some(CloseReason::Shutdown));
    for admission in &admissions {
        match admission {
            Ok(owner) => assert_eq!(
                owner.close_requested(),
                Some(CloseReason::Shutdown),
                "{} was admitted past shutdown and is not draining",
                owner.id()
            ),
            Err(err) => assert_eq!(*err, AdmitError::ShuttingDown),
        }
    }
    assert_eq!(registry.try_admit(0).unwrap_err(), AdmitError::ShuttingDown);
    drop(admissions);
    drop(existing);
    let stats = registry.stats();
    assert_eq!(stats.open, 0, "{stats:?}");
    assert_eq!(stats.admitted_total, stats.released_total, "{stats:?}");
}

/// Capacity eviction racing the handshake's activation: an accepted connection is evicted
/// (by `evictors` threads) while its owner activates it. Activation never resurrects a
/// closing connection: it ends draining for eviction either way.
pub fn eviction_never_resurrected_by_activation(evictors: usize) {
    let registry = Registry::new(1);
    let owner = registry.try_admit(0).expect("empty registry admits");
    let id = owner.id();
    let handles = spawn_each(&registry, evictors, move |_, registry| {
        registry.request_close(id, CloseReason::Evicted)
    });
    let activated = owner.activate();
    let outcomes: Vec<CloseRequest> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let requested = outcomes
        .iter()
        .filter(|outcome| **outcome == CloseRequest::Requested)
        .count();
    assert_eq!(
        requested, 1,
        "exactly one eviction takes effect: {outcomes:?}"
    );
    assert_eq!(
        owner.phase(),
        Phase::Draining(CloseReason::Evicted),
        "activation (returned {activated}) undid the eviction"
    );
    assert!(!owner.activate(), "a draining connection activated again");
    drop(owner);
    assert_capacity_returned(&registry);
}

/// A close request while the owner waits for one (the owner's `select!` arm): the owner
/// is always woken. A lost wakeup leaves the owner blocked forever, which the checkers
/// report as a deadlock.
pub fn close_request_wakes_waiting_owner(requesters: usize) {
    let (registry, owner) = active_connection(1);
    let id = owner.id();
    let handles = spawn_each(&registry, requesters, move |n, registry| {
        (reason_of(n), registry.request_close(id, reason_of(n)))
    });
    let woken_for = block_on(owner.close_request());
    let granted: Vec<CloseReason> = handles
        .into_iter()
        .map(|h| h.join().unwrap())
        .filter(|(_, outcome)| *outcome == CloseRequest::Requested)
        .map(|(reason, _)| reason)
        .collect();
    assert_eq!(
        granted,
        vec![woken_for],
        "woken for a request that did not win"
    );
    drop(owner);
    assert_capacity_returned(&registry);
}

/// Connection loops and a broadcaster kicking what it has seen: `loops` threads each run
/// `rounds` connections (even rounds activate and finish after looking for a request, odd
/// rounds drop without finishing, as a handler that returns early or unwinds does) while
/// the broadcaster kicks every id published so far, `kick_passes` times. Afterwards the
/// count is 0, admissions balance releases, and the whole capacity can be admitted again.
pub fn loops_and_kicker_leave_registry_empty(loops: usize, rounds: usize, kick_passes: usize) {
    let registry = Registry::new(loops);
    let published: Arc<Mutex<Vec<ConnId>>> = Arc::new(Mutex::new(Vec::new()));
    let handles: Vec<_> = (0..loops)
        .map(|_| {
            let registry = Arc::clone(&registry);
            let published = Arc::clone(&published);
            thread::spawn(move || {
                for round in 0..rounds {
                    // One connection per loop at a time and `loops` slots: never at capacity.
                    let owner = registry.try_admit(0).expect("a slot per loop");
                    published.lock().unwrap().push(owner.id());
                    if round % 2 == 0 {
                        owner.activate();
                        let _reason = owner.close_requested();
                    }
                    drop(owner);
                }
            })
        })
        .collect();
    let kicker = {
        let registry = Arc::clone(&registry);
        let published = Arc::clone(&published);
        thread::spawn(move || {
            for _ in 0..kick_passes {
                let seen: Vec<ConnId> = published.lock().unwrap().clone();
                for id in seen {
                    registry.request_close(id, CloseReason::Kicked);
                }
            }
        })
    };
    for handle in handles {
        handle.join().unwrap();
    }
    kicker.join().unwrap();
    let stats = registry.stats();
    assert_eq!(stats.admitted_total, (loops * rounds) as u64, "{stats:?}");
    assert_capacity_returned(&registry);
}

/// Deliveries racing a consumer's teardown: `senders` broadcaster threads offer
/// `items_per_sender` (≥ 1) items each to a mailbox of `capacity`, while the owner waits
/// for one item and closes. Every accepted item is either received or handed back by `close`,
/// exactly once and in each sender's order; every refused one is handed back to its sender.
pub fn delivery_during_drain_is_flushed_or_refused(
    capacity: usize,
    senders: usize,
    items_per_sender: usize,
) {
    let mailbox: Arc<Mailbox<(usize, usize)>> = Arc::new(Mailbox::new(capacity));
    let handles: Vec<_> = (0..senders)
        .map(|sender| {
            let mailbox = Arc::clone(&mailbox);
            thread::spawn(move || {
                let mut accepted = Vec::new();
                for n in 0..items_per_sender {
                    match mailbox.offer((sender, n)) {
                        Offer::Accepted => accepted.push((sender, n)),
                        Offer::Full(item) | Offer::Closed(item) => {
                            assert_eq!(item, (sender, n), "a refusal handed back another item")
                        }
                    }
                }
                accepted
            })
        })
        .collect();
    // The owner: wait for one item as the socket writer does (the first offer into an open,
    // empty mailbox is always accepted, so this returns unless a wakeup is lost), then tear
    // down. `close` hands back the undelivered, which the owner flushes (here: collects).
    let first = block_on(mailbox.recv()).expect("the mailbox is open, so recv waits for an item");
    let mut delivered = vec![first];
    delivered.extend(mailbox.close());
    let mut accepted: Vec<(usize, usize)> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    for sender in 0..senders {
        let sent: Vec<_> = accepted.iter().filter(|(s, _)| *s == sender).collect();
        let got: Vec<_> = delivered.iter().filter(|(s, _)| *s == sender).collect();
        assert_eq!(
            got, sent,
            "sender {sender}: accepted items were lost, repeated or reordered"
        );
    }
    accepted.sort_unstable();
    delivered.sort_unstable();
    assert_eq!(delivered, accepted);
    assert!(mailbox.try_recv().is_none(), "an item arrived after close");
    assert_eq!(mailbox.offer((senders, 0)), Offer::Closed((senders, 0)));
}

/// An eviction aimed at a connection that finishes at the same moment: the request either
/// takes effect on the victim or finds it stale; either way the victim's id is stale
/// afterwards, the count is exact, and the next occupant is untouched.
pub fn eviction_victim_finishing_concurrently(evictors: usize) {
    let (registry, victim) = active_connection(1);
    let id = victim.id();
    let handles = spawn_each(&registry, evictors, move |_, registry| {
        registry.request_close(id, CloseReason::Evicted)
    });
    drop(victim);
    let outcomes: Vec<CloseRequest> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(
        outcomes
            .iter()
            .filter(|outcome| **outcome == CloseRequest::Requested)
            .count()
            <= 1,
        "several evictions took effect: {outcomes:?}"
    );
    assert_eq!(
        registry.phase(id),
        None,
        "the finished victim {id} still resolves"
    );
    let stats = registry.stats();
    assert_eq!((stats.open, stats.released_total), (0, 1), "{stats:?}");
    let next = registry.try_admit(0).expect("the victim's slot is free");
    assert_eq!(
        registry.request_close(id, CloseReason::Evicted),
        CloseRequest::Stale
    );
    assert_eq!(
        next.phase(),
        Phase::Accepted,
        "the next occupant was touched"
    );
    drop(next);
    assert_capacity_returned(&registry);
}
