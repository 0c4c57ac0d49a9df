//! Sequential unit tests of the registry's contract. Concurrency is covered by `loom-tests/`.

use super::*;
use std::task::{Wake, Waker};

struct CountingWaker(std::sync::atomic::AtomicUsize);

impl Wake for CountingWaker {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

fn poll_close(owner: &ConnOwner, waker: &Waker) -> Poll<CloseReason> {
    let mut future = owner.close_request();
    Pin::new(&mut future).poll(&mut Context::from_waker(waker))
}

#[test]
fn admits_up_to_max_then_refuses_and_counts() {
    let registry = Registry::new(2);
    let a = registry.try_admit(0).unwrap();
    let _b = registry.try_admit(0).unwrap();
    assert_eq!(registry.try_admit(0).unwrap_err(), AdmitError::AtCapacity);
    drop(a);
    let _c = registry.try_admit(0).unwrap();
    let stats = registry.stats();
    assert_eq!(stats.open, 2);
    assert_eq!(stats.high_water, 2);
    assert_eq!(stats.admitted_total, 3);
    assert_eq!(stats.released_total, 1);
    assert_eq!(stats.refused_at_capacity_total, 1);
}

#[test]
fn stale_id_cannot_close_the_next_occupant() {
    let registry = Registry::new(1);
    let first = registry.try_admit(0).unwrap();
    let stale = first.id();
    drop(first);
    let second = registry.try_admit(0).unwrap();
    assert_eq!(second.id().index(), stale.index());
    assert_ne!(second.id().generation(), stale.generation());
    assert_eq!(
        registry.request_close(stale, CloseReason::Kicked),
        CloseRequest::Stale
    );
    assert_eq!(second.phase(), Phase::Accepted);
    assert_eq!(registry.phase(stale), None);
}

#[test]
fn first_close_request_wins_and_wakes_the_owner_once() {
    let registry = Registry::new(1);
    let owner = registry.try_admit(0).unwrap();
    assert!(owner.activate());
    let counter = Arc::new(CountingWaker(Default::default()));
    let waker = Waker::from(Arc::clone(&counter));
    assert_eq!(poll_close(&owner, &waker), Poll::Pending);
    assert_eq!(
        registry.request_close(owner.id(), CloseReason::Kicked),
        CloseRequest::Requested
    );
    assert_eq!(
        registry.request_close(owner.id(), CloseReason::Idle),
        CloseRequest::AlreadyClosing
    );
    assert_eq!(counter.0.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(poll_close(&owner, &waker), Poll::Ready(CloseReason::Kicked));
    assert!(
        !owner.activate(),
        "a draining connection never becomes active again"
    );
}

#[test]
fn shutdown_requests_close_of_all_and_refuses_new_admissions() {
    let registry = Registry::new(3);
    let a = registry.try_admit(0).unwrap();
    let b = registry.try_admit(0).unwrap();
    assert!(b.activate());
    assert_eq!(registry.begin_shutdown(), 2);
    assert_eq!(a.close_requested(), Some(CloseReason::Shutdown));
    assert_eq!(b.close_requested(), Some(CloseReason::Shutdown));
    assert_eq!(registry.try_admit(0).unwrap_err(), AdmitError::ShuttingDown);
    drop((a, b));
    assert_eq!(registry.open(), 0);
}

#[test]
fn idle_reaper_only_touches_quiet_connections() {
    let registry = Registry::new(2);
    let quiet = registry.try_admit(1_000).unwrap();
    let busy = registry.try_admit(1_000).unwrap();
    busy.touch(9_000);
    assert_eq!(registry.reap_idle(10_000, 5_000), 1);
    assert_eq!(quiet.close_requested(), Some(CloseReason::Idle));
    assert_eq!(busy.close_requested(), None);
}

/// Readers see admitted = released + open in every reading while four threads admit,
/// hold and release connections (a relay under churn: the counters move one at a time, so
/// a single read of them is torn now and then; without re-reading this fails at once).
/// Threads that do nothing but admit and release keep an operation in flight nearly all
/// the time, and `stats` gives up after `STATS_READ_ATTEMPTS` readings: that is the limit.
#[cfg(not(feature = "shuttle"))]
#[test]
fn stats_read_during_churn_always_balance() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let registry = Registry::new(8);
    let stop = Arc::new(AtomicBool::new(false));
    let churners: Vec<_> = (0..4)
        .map(|_| {
            let registry = Arc::clone(&registry);
            let stop = Arc::clone(&stop);
            #[allow(clippy::disallowed_methods)] // a plain unit test: real threads are the point
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let owner = registry.try_admit(0);
                    std::thread::sleep(std::time::Duration::from_micros(20));
                    drop(owner);
                }
            })
        })
        .collect();
    let mut readings = 0u64;
    loop {
        let stats = registry.stats();
        assert_eq!(
            stats.admitted_total,
            stats.released_total + stats.open as u64,
            "unbalanced reading {stats:?}"
        );
        readings += 1;
        if stats.admitted_total >= 10_000 {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for churner in churners {
        churner.join().unwrap();
    }
    assert!(readings > 1_000, "only {readings} readings");
}
