//! The same models as the loom suite, with more threads and larger parameters than loom
//! can explore exhaustively, each under shuttle's random scheduler and its PCT scheduler
//! (probabilistic concurrency testing: finds any bug of depth ≤ `PCT_DEPTH` with a known
//! probability per iteration). A failure prints the schedule that found it.

use loom_tests::models;

/// Schedules tried per scheduler and model.
const ITERATIONS: usize = 2_000;
/// Bug depth PCT targets (ordering constraints between threads).
const PCT_DEPTH: usize = 3;

fn randomly(model: impl Fn() + Send + Sync + Clone + 'static) {
    shuttle::check_random(model.clone(), ITERATIONS);
    shuttle::check_pct(model, ITERATIONS, PCT_DEPTH);
}

#[test]
fn stale_id_never_reaches_next_occupant() {
    randomly(|| models::stale_id_never_reaches_next_occupant(4));
}

#[test]
fn one_close_among_eof_kick_and_reaper() {
    randomly(|| models::one_close_among_eof_kick_and_reaper(6));
}

#[test]
fn concurrent_admits_never_exceed_max() {
    randomly(|| models::concurrent_admits_never_exceed_max(3, 8));
}

#[test]
fn admit_during_shutdown_is_refused_or_draining() {
    randomly(|| models::admit_during_shutdown_is_refused_or_draining(4));
}

#[test]
fn eviction_never_resurrected_by_activation() {
    randomly(|| models::eviction_never_resurrected_by_activation(4));
}

#[test]
fn close_request_wakes_waiting_owner() {
    randomly(|| models::close_request_wakes_waiting_owner(4));
}

#[test]
fn loops_and_kicker_leave_registry_empty() {
    randomly(|| models::loops_and_kicker_leave_registry_empty(4, 4, 3));
}

#[test]
fn delivery_during_drain_is_flushed_or_refused() {
    randomly(|| models::delivery_during_drain_is_flushed_or_refused(3, 3, 4));
}

#[test]
fn eviction_victim_finishing_concurrently() {
    randomly(|| models::eviction_victim_finishing_concurrently(4));
}
