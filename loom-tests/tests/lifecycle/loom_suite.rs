//! Every model in `loom_tests::models`, explored exhaustively by loom: no preemption
//! bound, no duration or permutation limit (loom stops silently at those, which would turn
//! a gate into a sample). Each test prints its model's execution count and wall time;
//! `ci/loom.sh` collects them.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Instant;

use loom_tests::models;

/// Reports one model's run when it ends, passed or failed: how many executions loom ran
/// (for a failure, the execution that found the bug) and the wall time.
struct Tally {
    name: &'static str,
    executions: Arc<AtomicUsize>,
    started: Instant,
}

impl Drop for Tally {
    fn drop(&mut self) {
        let executions = self.executions.load(Relaxed);
        let seconds = self.started.elapsed().as_secs_f64();
        if std::thread::panicking() {
            eprintln!(
                "loom model {}: FAILED in execution {executions} after {seconds:.2}s",
                self.name
            );
        } else {
            eprintln!(
                "loom model {}: {executions} executions in {seconds:.2}s (exhaustive)",
                self.name
            );
        }
    }
}

/// Run `model` in every interleaving loom can produce, then report how many there were.
fn exhaustively(name: &'static str, model: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = None;
    builder.max_duration = None;
    builder.max_permutations = None;
    builder.checkpoint_file = None;
    let tally = Tally {
        name,
        executions: Arc::new(AtomicUsize::new(0)),
        // Wall time of the checker itself, reported, never asserted.
        #[allow(clippy::disallowed_methods)]
        started: Instant::now(),
    };
    let counter = Arc::clone(&tally.executions);
    builder.check(move || {
        counter.fetch_add(1, Relaxed);
        model();
    });
    assert!(
        tally.executions.load(Relaxed) > 1,
        "{name} explored a single interleaving: the model has no concurrency"
    );
}

#[test]
fn stale_id_never_reaches_next_occupant() {
    exhaustively("stale_id_never_reaches_next_occupant", || {
        models::stale_id_never_reaches_next_occupant(2)
    });
}

#[test]
fn one_close_among_eof_kick_and_reaper() {
    exhaustively("one_close_among_eof_kick_and_reaper", || {
        models::one_close_among_eof_kick_and_reaper(2)
    });
}

#[test]
fn concurrent_admits_never_exceed_max() {
    exhaustively("concurrent_admits_never_exceed_max", || {
        models::concurrent_admits_never_exceed_max(1, 2)
    });
}

#[test]
fn admit_during_shutdown_is_refused_or_draining() {
    exhaustively("admit_during_shutdown_is_refused_or_draining", || {
        models::admit_during_shutdown_is_refused_or_draining(1)
    });
}

#[test]
fn eviction_never_resurrected_by_activation() {
    exhaustively("eviction_never_resurrected_by_activation", || {
        models::eviction_never_resurrected_by_activation(2)
    });
}

#[test]
fn close_request_wakes_waiting_owner() {
    exhaustively("close_request_wakes_waiting_owner", || {
        models::close_request_wakes_waiting_owner(2)
    });
}

#[test]
fn loops_and_kicker_leave_registry_empty() {
    exhaustively("loops_and_kicker_leave_registry_empty", || {
        models::loops_and_kicker_leave_registry_empty(1, 3, 1)
    });
}

#[test]
fn delivery_during_drain_is_flushed_or_refused() {
    exhaustively("delivery_during_drain_is_flushed_or_refused", || {
        models::delivery_during_drain_is_flushed_or_refused(2, 2, 2)
    });
}

#[test]
fn eviction_victim_finishing_concurrently() {
    exhaustively("eviction_victim_finishing_concurrently", || {
        models::eviction_victim_finishing_concurrently(2)
    });
}
