//! Engines: what actually runs one seed of a scenario. Everything above this seam (the
//! harness, replay, sweep, shrink) is plain Rust over [`SeedRun`]s, so it is tested with a
//! fake engine under ordinary `cargo test`; only [`Madsim`] needs the simulation build.
//!
//! Two engines: [`Madsim`] (the simulation build, `--cfg madsim`) for the scenarios that
//! name `engine = "madsim"` (the default), and [`Turmoil`] (ordinary builds) for those
//! that name `engine = "turmoil"`. [`for_scenario`] picks the one a scenario asks for, or
//! says which build has it.

use std::time::Duration;

use crate::logs::LogSettings;
use crate::oracle::{Verdict, Violation};
use crate::scenario::{EngineName, Scenario};
use crate::trace::Trace;

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

/// The madsim world (`crate::world`): the unmodified relay on simulated nodes.
#[cfg(madsim)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Madsim;

#[cfg(madsim)]
impl Engine for Madsim {
    fn name(&self) -> &'static str {
        "madsim"
    }

    fn run(&self, scenario: &Scenario, seed: u64, logs: Option<&LogSettings>) -> SeedRun {
        let capture = logs.map(crate::logs::LogCapture::new);
        let outcome = match &capture {
            // `world::run` carries the caller's dispatcher onto its simulation thread.
            Some(capture) => tracing::dispatcher::with_default(capture.dispatch(), || {
                crate::world::run(scenario, seed)
            }),
            None => crate::world::run(scenario, seed),
        };
        SeedRun {
            trace: outcome.trace,
            violations: outcome.violations,
            verdict: outcome.verdict,
            wall: outcome.wall,
            logs: capture.map(crate::logs::LogCapture::finish),
            reached: outcome.reached,
        }
    }
}

/// The turmoil world (`crate::turmoil_world`): the unmodified relay on turmoil's hosts.
#[cfg(not(madsim))]
#[derive(Clone, Copy, Debug, Default)]
pub struct Turmoil;

#[cfg(not(madsim))]
impl Engine for Turmoil {
    fn name(&self) -> &'static str {
        "turmoil"
    }

    fn run(&self, scenario: &Scenario, seed: u64, logs: Option<&LogSettings>) -> SeedRun {
        crate::turmoil_world::run(scenario, seed, logs)
    }
}

/// The engine this build runs `scenario` on, or why it cannot (with the command that can).
pub fn for_scenario(scenario: &Scenario) -> Result<&'static dyn Engine, String> {
    match scenario.engine {
        #[cfg(madsim)]
        EngineName::Madsim => Ok(&Madsim),
        #[cfg(not(madsim))]
        EngineName::Turmoil => Ok(&Turmoil),
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
