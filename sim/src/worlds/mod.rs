//! The worlds a seed runs in, and the seam the harness runs them through. Everything above
//! the [`Engine`] seam (the harness, replay, sweep, shrink) is plain Rust over [`SeedRun`]s,
//! so it is tested with a fake engine under ordinary `cargo test`.
//!
//! Three worlds, each with its engine beside it: `madsim` (the simulation build,
//! `--cfg madsim`) for the scenarios that name `engine = "madsim"` (the default),
//! `turmoil` (ordinary builds) for those that name `engine = "turmoil"`, and `real`
//! (ordinary builds, `run --real`) for any scenario a real loopback can play.
//! [`for_scenario`] picks the simulated engine a scenario asks for, or says which build
//! has it.

#[cfg(madsim)]
pub mod madsim;
#[cfg(not(madsim))]
pub mod real;
#[cfg(not(madsim))]
pub mod turmoil;

use std::time::Duration;

use crate::actors::relay_host::{quiet_injected_panics, ConnWatch};
use crate::logs::{LogCapture, LogSettings};
use crate::oracle::{self, Verdict, Violation};
use crate::scenario::{EngineName, Scenario};
use crate::trace::{Event, Trace};

/// Everything one seed of one (resolved) scenario produced.
#[derive(Clone, Debug)]
pub struct SeedRun {
    /// The trace, in order.
    pub trace: Trace,
    /// Oracle violations, in oracle order.
    pub violations: Vec<Violation>,
    /// The verdict against the scenario's expectation.
    pub verdict: Verdict,
    /// Wall-clock time the run took.
    pub wall: Duration,
    /// Captured log text, when logs were asked for.
    pub logs: Option<String>,
    /// The relay's reachability probes this run reached, by name, with how often (madsim
    /// only; see `relay::rt::probe`). Not part of the trace, so not of its hash.
    pub reached: Reached,
}

/// Reachability probe name → times reached (only probes reached at least once).
pub type Reached = std::collections::BTreeMap<&'static str, u64>;

/// Runs seeds. `Sync` so a sweep can run seeds on several threads.
pub trait Engine: Sync {
    /// Short name, shown in reports and SCENARIOS.md.
    fn name(&self) -> &'static str;

    /// Whether a seed replays to the same trace (everything but real mode). A run that is
    /// not deterministic is never re-run behind the user's back, and its failures say how
    /// to run it again rather than how to replay it.
    fn deterministic(&self) -> bool {
        true
    }

    /// Run one seed of `scenario` (already swarm-resolved) and judge it; capture logs with
    /// `logs` if given. Capturing logs must not change the trace.
    fn run(&self, scenario: &Scenario, seed: u64, logs: Option<&LogSettings>) -> SeedRun;
}

/// The engine this build runs `scenario` on, or why it cannot (with the command that can).
pub fn for_scenario(scenario: &Scenario) -> Result<&'static dyn Engine, String> {
    match scenario.engine {
        #[cfg(madsim)]
        EngineName::Madsim => Ok(&madsim::Madsim),
        #[cfg(not(madsim))]
        EngineName::Turmoil => Ok(&turmoil::Turmoil),
        #[cfg(not(madsim))]
        EngineName::Madsim => Err(format!(
            "scenario {:?} runs on madsim, which this build does not have; use `cargo sim <command> …` \
             (it builds with --cfg madsim), e.g. `cargo sim run scenarios/churn_max_connections.toml --seed 1`",
            scenario.name
        )),
        #[cfg(madsim)]
        EngineName::Turmoil => Err(format!(
            "scenario {:?} runs on turmoil, which the simulation build does not have; use an ordinary \
             build: `cargo run --release -p windtunnel -- <command> …`",
            scenario.name
        )),
    }
}

/// The text of a caught panic's payload.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "non-string panic payload".to_owned())
}

/// The monitor's `conn_accounting` watch for `scenario`, if it has one, judging whether
/// the relay has settled with the oracle itself.
pub fn conn_watch(scenario: &Scenario) -> Option<ConnWatch> {
    ConnWatch::of(scenario, |records, churn_end_us, deadline_us| {
        oracle::conn_accounting(records, churn_end_us, deadline_us).is_some()
    })
}

/// Judge a finished run's `trace`: a world that failed (`failure`: a panic or an engine
/// error) gets it recorded as a panic at the last record's time, then every oracle runs.
pub fn judge(
    scenario: &Scenario,
    mut trace: Trace,
    failure: Option<String>,
) -> (Trace, Vec<Violation>, Verdict) {
    if let Some(message) = failure {
        let t_us = trace.records().last().map_or(0, |r| r.t_us);
        trace.push(t_us, "world", Event::Panic { message });
    }
    let violations = oracle::check(scenario, &trace);
    let verdict = oracle::verdict(scenario.expect, &violations);
    (trace, violations, verdict)
}

/// Run one seed of a world on a fresh OS thread named `windtunnel-<world>-seed-<seed>`,
/// with the caller's log subscriber, or a capture of the run's logs when `logs` is given.
/// Log text the world returns itself (real mode: the relay process's output) follows the
/// captured lines.
///
/// A fresh thread makes every run a first run: the actors' RNG and the relay's task census
/// are per thread, and under madsim the thread-locals seeded once per thread from
/// `getrandom` (rand's `ThreadRng`, std's `RandomState` keys) draw from madsim's seeded RNG
/// the first time they are used, so on a reused thread a later run would skip those draws
/// and diverge from the same seed's first run.
pub fn on_fresh_thread(
    world: &str,
    scenario: &Scenario,
    seed: u64,
    logs: Option<&LogSettings>,
    run: impl FnOnce(&Scenario, u64) -> SeedRun + Send + 'static,
) -> SeedRun {
    quiet_injected_panics();
    let capture = logs.map(LogCapture::new);
    let dispatch = match &capture {
        Some(capture) => capture.dispatch().clone(),
        None => tracing::dispatcher::get_default(Clone::clone),
    };
    let scenario = scenario.clone();
    #[allow(clippy::disallowed_methods)] // the harness's own thread, outside any simulation
    let runner = std::thread::Builder::new()
        .name(format!("windtunnel-{world}-seed-{seed}"))
        .spawn(move || tracing::dispatcher::with_default(&dispatch, || run(&scenario, seed)))
        .expect("cannot start a world's thread");
    let mut outcome = runner
        .join()
        .expect("a world's thread reports its own failures");
    if let Some(capture) = capture {
        let captured = capture.finish();
        outcome.logs = Some(match outcome.logs.take() {
            Some(own) => format!("{captured}{own}"),
            None => captured,
        });
    }
    outcome
}
